"""The audit log: one hash-chained JSON line per use of a master key, per refused request and
per allowed destructive action (deletes, aborts, versioning, retention, legal holds, bypasses).

Record format
-------------
Each line is one JSON object in canonical form (keys sorted, ``separators=(",", ":")``,
ASCII only, ``\\n`` at the end) with exactly these fields::

    time         RFC 3339 UTC, milliseconds ("2025-01-01T00:00:00.000Z")
    seq          1 for the first line of a file, then +1 per line
    alg          "sha256" or "hmac-sha256": how `hash` is computed
    operation    generate, decrypt, wrap, rewrap, rotate, ... (what was attempted), or an S3
                 action (s3:DeleteObject, ...) for an access decision
    outcome      "allowed", "denied" or "error"
    reason       null, or a short reason for denied/error (e.g. the KeyringError code)
    identity     the client identity ([[clients]] name), or null
    source       the client address, or null
    key_id       the master key id, or null
    key_version  the key reference (names key and version), or null
    bucket       the bucket, or null
    object_key   the object key, or null
    request_id   the request id (x-amz-request-id), or null
    prev         `hash` of the previous line; 64 zeros on the first line
    hash         hex digest over the canonical JSON of all the other fields (incl. prev)

With ``alg = "sha256"`` the digest is SHA-256: it detects an edited, deleted, inserted or
reordered line, but someone who can write the file can recompute the whole chain. With
``alg = "hmac-sha256"`` it is HMAC-SHA256 under a secret key from the config, which an editor of
the file does not have. Neither detects lines cut off the *end* of the file; compare
`VerifyResult.count` / `last_hash` with a copy kept elsewhere for that.

A record never holds a key, a secret or plaintext: `AuditRecord` has only the fields above and
`proxy.kms.audited.AuditingKeyring` passes it no key material and no encryption context beyond
bucket and key. Uses served from the data-key cache (no keyring call) are recorded too, with
reason "cached" (`proxy.kms.audited.record_cache_hit`), so there is one line per key use, not
only per KMS call. `sealgate audit verify` (proxy/tools/audit.py) checks a file's chain.

One writer per file
-------------------
Each file has exactly one writing process: the chain (`seq`, `prev`) lives in that process's
memory, so two processes appending to one file would fork the chain. `AuditLog` takes an
exclusive ``flock`` on its file and refuses a file another process holds. With several worker
processes, give each its own file (e.g. ``audit.w<N>.jsonl`` or ``audit-<pid>.jsonl``) and open
the log after forking. A line is written with one ``os.write`` on an ``O_APPEND`` descriptor
(no fsync per line): a few hundred bytes into the page cache, which does not stall the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

ALG_SHA256: Final = "sha256"
ALG_HMAC_SHA256: Final = "hmac-sha256"
#: `prev` of the first line of a file.
GENESIS: Final = "0" * 64
#: Shortest accepted HMAC key: a config secret shorter than this is a mistake.
MIN_HMAC_KEY = 16
#: No audit line is anywhere near this long; a longer one is not an audit line.
MAX_LINE = 64 * 1024

Outcome = Literal["allowed", "denied", "error"]
_OUTCOMES: Final = frozenset({"allowed", "denied", "error"})
#: Key operations (generate, decrypt, ...) and the S3 actions access decisions are about (s3:DeleteObject).
_OPERATION = re.compile(r"[a-z][a-z0-9_-]{0,31}|s3:[A-Za-z]{1,48}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Object keys are at most 1024 bytes, but key_ref comes from object metadata on the backend:
# bound every free-form field so a hostile value cannot bloat the log.
_MAX_FIELD = 2048


class AuditError(Exception):
    """The audit log cannot be opened or written."""


@dataclass(frozen=True)
class AuditContext:
    """Who is asking, for the records of this request; the server sets it per request."""

    identity: str | None = None
    source: str | None = None
    request_id: str | None = None
    bucket: str | None = None
    object_key: str | None = None


#: The context of code that sets none (background tasks): every field null.
NO_CONTEXT: Final = AuditContext()

#: The current request's audit context (each aiohttp request runs in its own task, so a value
#: set in a middleware stays with that request).
audit_context: ContextVar[AuditContext] = ContextVar("sealgate_audit_context", default=NO_CONTEXT)


@dataclass(frozen=True)
class AuditRecord:
    """One line of the audit log (see the module doc); holds no key material by construction."""

    time: str
    seq: int
    alg: str
    operation: str
    outcome: str
    reason: str | None
    identity: str | None
    source: str | None
    key_id: str | None
    key_version: str | None
    bucket: str | None
    object_key: str | None
    request_id: str | None
    prev: str
    hash: str

    def body(self) -> dict[str, Any]:
        """All fields but `hash`: what `hash` is computed over."""
        doc = asdict(self)
        del doc["hash"]
        return doc

    def to_line(self) -> bytes:
        """The record as written: canonical JSON and a newline."""
        return _canonical(asdict(self)) + b"\n"


_FIELDS: Final = frozenset(f.name for f in fields(AuditRecord))
_OPTIONAL: Final = ("reason", "identity", "source", "key_id", "key_version", "bucket", "object_key", "request_id")


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _digest(alg: str, hmac_key: bytes | None, body: Mapping[str, Any]) -> str:
    data = _canonical(body)
    if alg == ALG_HMAC_SHA256:
        if hmac_key is None:
            raise ValueError("hmac-sha256 needs a key")
        return hmac.new(hmac_key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def _check_hmac_key(hmac_key: bytes | None) -> None:
    if hmac_key is not None and len(hmac_key) < MIN_HMAC_KEY:
        raise ValueError(f"the audit HMAC key must be at least {MIN_HMAC_KEY} bytes")


def _timestamp(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _cap(value: str | None) -> str | None:
    if value is None or len(value) <= _MAX_FIELD:
        return value
    return value[: _MAX_FIELD - 3] + "..."


class _Bad(Exception):
    """A line fails verification; the message says why."""


def _parse_line(raw: bytes) -> AuditRecord:
    """The record on `raw` (one line incl. newline), checked for shape and canonical form."""
    if not raw.endswith(b"\n"):
        raise _Bad("incomplete last line (no newline): the file was truncated or a write was cut short")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise _Bad("not valid JSON") from None
    if not isinstance(doc, dict):
        raise _Bad("not a JSON object")
    if doc.keys() != _FIELDS:
        missing = sorted(_FIELDS - doc.keys())
        extra = sorted(doc.keys() - _FIELDS)
        raise _Bad(f"wrong fields (missing {missing}, unexpected {extra})")
    seq = doc["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise _Bad("seq is not a positive integer")
    for name in ("time", "alg", "operation", "outcome", "prev", "hash"):
        if not isinstance(doc[name], str):
            raise _Bad(f"{name} is not a string")
    for name in _OPTIONAL:
        if doc[name] is not None and not isinstance(doc[name], str):
            raise _Bad(f"{name} is neither a string nor null")
    if doc["alg"] not in (ALG_SHA256, ALG_HMAC_SHA256):
        raise _Bad(f"unknown alg {doc['alg'][:40]!r}")
    if not _HEX64.fullmatch(doc["prev"]) or not _HEX64.fullmatch(doc["hash"]):
        raise _Bad("prev or hash is not 64 lowercase hex digits")
    record = AuditRecord(**doc)
    # Only one byte string is a valid line for a record: any other spelling was edited.
    if record.to_line() != raw:
        raise _Bad("not in canonical form (the line was edited)")
    return record


def _check_hash(record: AuditRecord, hmac_key: bytes | None) -> None:
    if hmac_key is not None and record.alg != ALG_HMAC_SHA256:
        raise _Bad(f"alg is {record.alg!r} but an HMAC key was given: the chain may have been recomputed")
    if hmac_key is None and record.alg == ALG_HMAC_SHA256:
        raise _Bad("the record is HMAC-chained: verify it with the HMAC key")
    expected = _digest(record.alg, hmac_key, record.body())
    if not hmac.compare_digest(expected, record.hash):
        raise _Bad("hash does not match the record (the line was edited)")


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of `verify_file`."""

    ok: bool
    #: Records that verified (all of them when ok, those before the bad line otherwise).
    count: int
    #: 1-based number of the first bad line, None when ok.
    bad_line: int | None = None
    reason: str | None = None
    #: `hash` of the last good record (GENESIS if none): compare it with a copy kept elsewhere
    #: to detect lines cut off the end.
    last_hash: str = GENESIS


def verify_file(path: Path | str, hmac_key: bytes | None = None) -> VerifyResult:
    """Check the chain of audit file `path`; with `hmac_key`, every line must be HMAC-chained.

    Reads the file line by line, so files of any size verify in bounded memory.
    """
    _check_hmac_key(hmac_key)
    prev, count = GENESIS, 0
    with open(path, "rb") as f:
        lineno = 0
        while raw := f.readline(MAX_LINE + 1):
            lineno += 1
            try:
                if len(raw) > MAX_LINE:
                    raise _Bad(f"line longer than {MAX_LINE} bytes")
                record = _parse_line(raw)
                _check_hash(record, hmac_key)
                if record.seq != count + 1:
                    raise _Bad(
                        f"seq {record.seq} where {count + 1} was expected (a line was deleted, inserted or moved)"
                    )
                if record.prev != prev:
                    raise _Bad("prev is not the previous line's hash (a line was deleted, inserted or moved)")
            except _Bad as exc:
                return VerifyResult(False, count, lineno, str(exc), prev)
            prev, count = record.hash, count + 1
    return VerifyResult(True, count, None, None, prev)


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise AuditError("the audit file shrank while it was being read")
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _last_line(fd: int, size: int) -> bytes:
    """The last line of a non-empty file (with its newline, if any), reading only the tail."""
    tail = b""
    pos = size
    while pos > 0:
        start = max(0, pos - 4096)
        tail = _pread_exact(fd, pos - start, start) + tail
        pos = start
        # The newline that ends the line before the last one.
        cut = tail.rfind(b"\n", 0, len(tail) - 1)
        if cut >= 0:
            return tail[cut + 1 :]
        if len(tail) > MAX_LINE:
            break
    return tail


class AuditLog:
    """Appends hash-chained audit records to one file, continuing the chain already in it.

    Opening takes an exclusive lock on the file (one writing process per file: see the module
    doc). Thread-safe within the process. Use as a context manager or call `close`.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        hmac_key: bytes | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """Open (or create, mode 0600) `path` for appending; with `hmac_key` records are HMAC-chained.

        Raises AuditError when the file cannot be opened, is held by another process, or its
        last line is not a valid record under this configuration (the chain must not be extended
        from a damaged or differently keyed tail: move such a file aside and start a new one).
        """
        _check_hmac_key(hmac_key)
        self.path = Path(path)
        self.alg: str = ALG_SHA256 if hmac_key is None else ALG_HMAC_SHA256
        self._hmac_key = hmac_key
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._broken: str | None = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AuditError(
                    f"audit log {self.path} is in use by another process; give each process its own file"
                ) from None
            self._size = os.fstat(fd).st_size
            self.seq, self.last_hash = self._resume(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def _resume(self, fd: int) -> tuple[int, str]:
        if self._size == 0:
            return 0, GENESIS
        raw = _last_line(fd, self._size)
        try:
            if len(raw) > MAX_LINE:
                raise _Bad("its last line is too long")
            record = _parse_line(raw)
            if record.alg != self.alg:
                raise _Bad(f"it is chained with {record.alg} but the log is configured for {self.alg}")
            _check_hash(record, self._hmac_key)
        except _Bad as exc:
            raise AuditError(
                f"cannot continue audit log {self.path}: {exc}; run `sealgate audit verify` on it and move it aside"
            ) from None
        return record.seq, record.hash

    def record(
        self,
        operation: str,
        outcome: Outcome,
        *,
        reason: str | None = None,
        key_id: str | None = None,
        key_version: str | None = None,
        bucket: str | None = None,
        object_key: str | None = None,
        context: AuditContext | None = None,
    ) -> AuditRecord:
        """Append one record and return it. Identity, source and request id come from `context`
        (default: the current `audit_context`), as do bucket and object key unless given here."""
        if not _OPERATION.fullmatch(operation):
            raise ValueError(f"invalid audit operation {operation[:40]!r}")
        if outcome not in _OUTCOMES:
            raise ValueError(f"invalid audit outcome {outcome!r}")
        ctx = context if context is not None else audit_context.get()
        with self._lock:
            if self._fd is None:
                raise AuditError(f"audit log {self.path} is closed")
            if self._broken is not None:
                raise AuditError(f"audit log {self.path} is unusable: {self._broken}")
            body: dict[str, Any] = {
                "time": _timestamp(self._clock()),
                "seq": self.seq + 1,
                "alg": self.alg,
                "operation": operation,
                "outcome": outcome,
                "reason": _cap(reason),
                "identity": _cap(ctx.identity),
                "source": _cap(ctx.source),
                "key_id": _cap(key_id),
                "key_version": _cap(key_version),
                "bucket": _cap(bucket if bucket is not None else ctx.bucket),
                "object_key": _cap(object_key if object_key is not None else ctx.object_key),
                "request_id": _cap(ctx.request_id),
                "prev": self.last_hash,
            }
            rec = AuditRecord(**body, hash=_digest(self.alg, self._hmac_key, body))
            self._append(self._fd, rec.to_line())
            self.seq, self.last_hash = rec.seq, rec.hash
            return rec

    def _append(self, fd: int, line: bytes) -> None:
        written = 0
        try:
            while written < len(line):
                written += os.write(fd, line[written:])
        except OSError as exc:
            # Take back a partial line, or every later line would follow a broken one.
            try:
                if os.fstat(fd).st_size != self._size:
                    os.ftruncate(fd, self._size)
            except OSError as again:
                self._broken = f"a partial line could not be removed ({again.strerror})"
            raise AuditError(f"cannot write audit log {self.path}: {exc.strerror}") from None
        self._size += written

    def close(self) -> None:
        """Flush to disk and release the file (and its lock)."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            try:
                with contextlib.suppress(OSError):
                    os.fsync(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, alg={self.alg!r}, seq={self.seq})"
