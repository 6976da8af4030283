"""A shared keyring object's copy, handed by the first process to a worker that replaces a dead
one (proxy/server/workers.py).

A replacement is a fresh interpreter that reads its config and opens its keyring itself. While
the keyring object cannot be read (deleted, the backend unreachable) that open would fail, and
the dead worker's slot would stay empty until the object is back, although the other workers
serve on with the copy they loaded. So the first process hands over its copy: the object's bytes
as last read or saved, still sealed under the passphrase's key, and their ETag, in an unlinked
temporary file the replacement inherits (its descriptor number in `ENV`). The replacement opens
that copy, with its own passphrase, only when its own read of the object fails, and then says
it is not ready as the others do (proxy/kms/keyring_watch.py) until the object can be read, for
as long as the first process has seen the object fail (the copy carries when that began, on
``time.monotonic()``'s clock: CLOCK_MONOTONIC, the same for every process of a host).

The copy is what is stored on the backend: no key material leaves a process unsealed.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import BinaryIO, NamedTuple

#: The environment variable naming the inherited descriptor of the copy.
ENV = "SEALGATE_KEYRING_COPY_FD"

#: No keyring is anywhere near this size; a larger copy is not read.
_MAX_BYTES = 64 << 20


class KeyringCopy(NamedTuple):
    """A process's copy of a keyring object."""

    location: str  #: the object, as ``kms.keyring`` names it
    sealed: bytes  #: its bytes as last read or saved (sealed under the passphrase's key)
    etag: str | None  #: their ETag
    failing_since: float | None = None  #: since when (monotonic) the object cannot be read


def write_copy(copy: KeyringCopy) -> BinaryIO:
    """An unlinked temporary file holding `copy`, positioned at its start, for a replacement to
    inherit (pass its descriptor and `ENV`)."""
    f = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it once the child has it
    meta = {"location": copy.location, "etag": copy.etag, "failing_since": copy.failing_since}
    f.write(json.dumps(meta).encode() + b"\n" + copy.sealed)
    f.flush()
    f.seek(0)
    return f


def read_copy(location: str) -> KeyringCopy | None:
    """The copy of the keyring object at `location` handed to this process, or None if none was
    (or it is of another object, or unreadable). Taken once: the descriptor is closed and `ENV`
    removed."""
    fd_text = os.environ.pop(ENV, None)
    if fd_text is None or not fd_text.isdigit():
        return None
    try:
        with os.fdopen(int(fd_text), "rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except OSError:
        return None
    head, sep, sealed = data.partition(b"\n")
    if not sep or len(data) > _MAX_BYTES:
        return None
    try:
        meta = json.loads(head)
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("location") != location:
        return None
    etag, since = meta.get("etag"), meta.get("failing_since")
    return KeyringCopy(
        location,
        sealed,
        etag if isinstance(etag, str) else None,
        float(since) if isinstance(since, (int, float)) and not isinstance(since, bool) else None,
    )
