"""The secret files a local keyring reads and writes: private (mode 0600, or a mounted secret
only the process's group can read), read through the opened descriptor, written atomically."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


class KeyringFileError(Exception):
    """The keyring file or passphrase cannot be used; the message says which and why."""


def _mounted_secret(st: os.stat_result) -> bool:
    """Owned by another user, readable by a group of this process only, changeable by nobody:
    a Kubernetes Secret mounted with ``fsGroup`` and ``defaultMode: 0440``, to a non-root user."""
    mine = st.st_gid == os.getegid() or st.st_gid in os.getgroups()
    return not st.st_mode & 0o037 and st.st_uid != os.geteuid() and mine


def check_private(path: Path, fd: int, what: str) -> None:
    """Refuse a secret file that anyone but its owner (or a mounted secret's group) can read or change."""
    st = os.fstat(fd)
    if st.st_mode & 0o077 and not _mounted_secret(st):
        raise KeyringFileError(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o} and is accessible by group or others; run "
            f"`chmod 600 {path}` (a Kubernetes Secret: mount it with the pod's fsGroup and defaultMode 0440)"
        )


def read_private(path: Path, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyringFileError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise KeyringFileError(f"cannot open {what} {path}: {e.strerror}") from None
    # Check the opened file, not the path, so a swap between check and read cannot win.
    with os.fdopen(fd, "rb") as f:
        check_private(path, f.fileno(), what)
        return f.read()


def passphrase_from(env: str | None, file: Path | None) -> bytes:
    """The keyring passphrase from environment variable `env`, else from `file`.

    One trailing newline is stripped from a file. The file must be private (mode 0600).
    """
    if env:
        value = os.environ.get(env)
        if value:
            return value.encode()
    if file is not None:
        data = read_private(file, "passphrase file")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        if data:
            return data
        raise KeyringFileError(f"passphrase file {file} is empty")
    sources = []
    if env:
        sources.append(f"environment variable {env} is unset or empty")
    if file is None:
        sources.append("no passphrase file is configured")
    raise KeyringFileError("no keyring passphrase: " + "; ".join(sources))


def write_atomic(path: Path, data: bytes, *, exclusive: bool) -> None:
    """Write `data` to `path` with mode 0600 so readers see the old or new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            # The umask can only remove bits, but be explicit: this file is a secret.
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            # link() fails if `path` exists, unlike replace(): create must never clobber.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyringFileError(f"keyring file {path} already exists") from None
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
