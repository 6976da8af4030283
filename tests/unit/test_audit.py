"""The audit log: hash chain, tamper detection, resuming, the auditing keyring and `audit verify`."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from proxy.audit import (
    ALG_HMAC_SHA256,
    ALG_SHA256,
    GENESIS,
    AuditContext,
    AuditError,
    AuditLog,
    AuditRecord,
    audit_context,
    verify_file,
)

HMAC_KEY = b"audit-hmac-key-0123456789abcdef"
CTX = AuditContext(identity="alice", source="203.0.113.7:50123", request_id="REQ1", bucket="b1", object_key="k1")
FIELDS = [
    "time",
    "seq",
    "alg",
    "operation",
    "outcome",
    "reason",
    "identity",
    "source",
    "key_id",
    "key_version",
    "bucket",
    "object_key",
    "request_id",
    "prev",
    "hash",
]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


def write_records(path: Path, n: int, hmac_key: bytes | None = None) -> list[AuditRecord]:
    with AuditLog(path, hmac_key=hmac_key) as log:
        return [
            log.record(
                "decrypt" if i % 2 else "generate",
                "allowed",
                key_id="default",
                key_version="local:default:1",
                object_key=f"obj-{i}",
                context=CTX,
            )
            for i in range(n)
        ]


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def seal(doc: dict[str, Any], hmac_key: bytes | None = None) -> bytes:
    """What a forger writes: `doc` with a freshly computed hash (SHA-256, or HMAC under `hmac_key`)."""
    body = {k: v for k, v in doc.items() if k != "hash"}
    data = canonical(body)[:-1]
    digest = hmac.new(hmac_key, data, hashlib.sha256) if hmac_key else hashlib.sha256(data)
    return canonical({**body, "hash": digest.hexdigest()})


def edited(value: Any) -> Any:
    if isinstance(value, int):
        return value + 10
    if value is None:
        return "x"
    if value == ALG_SHA256:
        return ALG_HMAC_SHA256
    if len(value) == 64:
        return ("1" if value[0] == "0" else "0") + value[1:]
    return value + "x"


# --- writing and the chain -------------------------------------------------------------


def test_chain_verifies(log_path: Path) -> None:
    records = write_records(log_path, 5)
    result = verify_file(log_path)
    assert result.ok and result.count == 5 and result.bad_line is None and result.reason is None
    assert result.last_hash == records[-1].hash
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev == GENESIS
    assert all(b.prev == a.hash for a, b in zip(records, records[1:], strict=False))
    docs = [json.loads(line) for line in read_lines(log_path)]
    assert docs[2] == {
        "time": records[2].time,
        "seq": 3,
        "alg": "sha256",
        "operation": "generate",
        "outcome": "allowed",
        "reason": None,
        "identity": "alice",
        "source": "203.0.113.7:50123",
        "key_id": "default",
        "key_version": "local:default:1",
        "bucket": "b1",
        "object_key": "obj-2",
        "request_id": "REQ1",
        "prev": records[1].hash,
        "hash": records[2].hash,
    }


def test_hash_is_sha256_over_canonical_record_without_hash(log_path: Path) -> None:
    write_records(log_path, 1)
    doc = json.loads(read_lines(log_path)[0])
    body = {k: v for k, v in doc.items() if k != "hash"}
    assert doc["hash"] == hashlib.sha256(canonical(body)[:-1]).hexdigest()


def test_record_has_only_the_audit_fields() -> None:
    assert [f.name for f in fields(AuditRecord)] == FIELDS


def test_empty_file_verifies(log_path: Path) -> None:
    log_path.write_bytes(b"")
    result = verify_file(log_path)
    assert result.ok and result.count == 0 and result.last_hash == GENESIS


def test_time_is_rfc3339_utc(log_path: Path) -> None:
    clock = datetime(2025, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)
    with AuditLog(log_path, clock=lambda: clock) as log:
        rec = log.record("rotate", "allowed", key_id="default")
    assert rec.time == "2025-03-04T05:06:07.891Z"


def test_context_comes_from_the_context_var(log_path: Path) -> None:
    token = audit_context.set(CTX)
    try:
        with AuditLog(log_path) as log:
            rec = log.record("decrypt", "denied", reason="policy", key_id="default", object_key="other")
    finally:
        audit_context.reset(token)
    assert (rec.identity, rec.source, rec.request_id, rec.bucket, rec.object_key) == (
        "alice",
        "203.0.113.7:50123",
        "REQ1",
        "b1",
        "other",
    )
    assert (rec.outcome, rec.reason) == ("denied", "policy")
    with AuditLog(log_path) as log:
        rec = log.record("rotate", "allowed", key_id="default")
    assert rec.identity is None and rec.request_id is None


def test_rejects_bad_operation_and_outcome(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        with pytest.raises(ValueError, match="invalid audit operation 'Decrypt Key'"):
            log.record("Decrypt Key", "allowed")
        with pytest.raises(ValueError, match="invalid audit outcome 'maybe'"):
            log.record("decrypt", "maybe")  # type: ignore[arg-type]
    assert log_path.read_bytes() == b""


def test_long_fields_are_capped(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        rec = log.record("decrypt", "error", key_version="local:" + "x" * 10_000)
    assert rec.key_version is not None and len(rec.key_version) == 2048
    assert verify_file(log_path).ok


def test_file_is_private(log_path: Path) -> None:
    write_records(log_path, 1)
    assert log_path.stat().st_mode & 0o077 == 0


# --- tampering -------------------------------------------------------------------------


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("index", [0, 2, 4])
def test_editing_any_field_of_any_line_is_detected(log_path: Path, field: str, index: int) -> None:
    write_records(log_path, 5)
    lines = read_lines(log_path)
    doc = json.loads(lines[index])
    doc[field] = edited(doc[field])
    lines[index] = canonical(doc)
    write_lines(log_path, lines)
    result = verify_file(log_path)
    assert not result.ok
    assert (result.bad_line, result.count) == (index + 1, index)


def test_edit_with_recomputed_hash_breaks_the_next_link(log_path: Path) -> None:
    write_records(log_path, 5)
    lines = read_lines(log_path)
    doc = json.loads(lines[1])
    doc["identity"] = "mallory"
    lines[1] = seal(doc)
    write_lines(log_path, lines)
    result = verify_file(log_path)
    assert (result.ok, result.bad_line) == (False, 3)
    assert result.reason is not None and "prev" in result.reason


def test_non_canonical_spelling_is_detected(log_path: Path) -> None:
    write_records(log_path, 3)
    lines = read_lines(log_path)
    lines[1] = lines[1].replace(b'"seq":', b'"seq": ', 1)
    write_lines(log_path, lines)
    result = verify_file(log_path)
    assert (result.ok, result.bad_line) == (False, 2)
    assert result.reason is not None and "canonical" in result.reason


@pytest.mark.parametrize("index", [0, 2, 3])
def test_deleted_line_is_detected(log_path: Path, index: int) -> None:
    write_records(log_path, 5)
    lines = read_lines(log_path)
    del lines[index]
    write_lines(log_path, lines)
    result = verify_file(log_path)
    assert (result.ok, result.bad_line, result.count) == (False, index + 1, index)


@pytest.mark.parametrize("index", [0, 2, 3])
def test_swapped_lines_are_detected(log_path: Path, index: int) -> None:
    write_records(log_path, 5)
    lines = read_lines(log_path)
    lines[index], lines[index + 1] = lines[index + 1], lines[index]
    write_lines(log_path, lines)
    result = verify_file(log_path)
    assert (result.ok, result.bad_line) == (False, index + 1)


@pytest.mark.parametrize("keep", [0, 1, 40])
def test_truncated_last_line_is_detected(log_path: Path, keep: int) -> None:
    write_records(log_path, 4)
    lines = read_lines(log_path)
    lines[-1] = lines[-1][:keep] if keep else lines[-1][:-1]  # keep=0: only the newline is gone
    write_lines(log_path, lines)
    result = verify_file(log_path)
    assert (result.ok, result.bad_line, result.count) == (False, 4, 3)


def test_dropping_whole_last_lines_needs_an_anchor(log_path: Path) -> None:
    records = write_records(log_path, 4)
    write_lines(log_path, read_lines(log_path)[:3])
    result = verify_file(log_path)
    # The file alone cannot show this; the count and last hash kept elsewhere do.
    assert result.ok and result.count == 3 and result.last_hash != records[-1].hash


def test_inserted_copy_of_a_line_is_detected(log_path: Path) -> None:
    write_records(log_path, 4)
    lines = read_lines(log_path)
    lines.insert(2, lines[0])
    write_lines(log_path, lines)
    assert (verify_file(log_path).ok, verify_file(log_path).bad_line) == (False, 3)


def test_inserted_forged_line_is_detected(log_path: Path) -> None:
    write_records(log_path, 4)
    lines = read_lines(log_path)
    prev = json.loads(lines[1])
    forged = {**prev, "seq": prev["seq"] + 1, "prev": prev["hash"], "operation": "decrypt", "identity": "mallory"}
    lines.insert(2, seal(forged))
    write_lines(log_path, lines)
    result = verify_file(log_path)
    # The forged line links correctly; the line after it no longer does.
    assert (result.ok, result.bad_line, result.count) == (False, 4, 3)


def test_garbage_lines_are_detected(log_path: Path) -> None:
    write_records(log_path, 2)
    for junk in (b"\n", b"not json\n", b"[1,2]\n", b'{"seq":3}\n', b"[" * 100_000 + b"\n"):
        write_lines(log_path, [*read_lines(log_path)[:2], junk])
        result = verify_file(log_path)
        assert (result.ok, result.bad_line) == (False, 3), junk[:20]


# --- HMAC chain ------------------------------------------------------------------------


def test_hmac_chain_verifies_only_with_its_key(log_path: Path) -> None:
    records = write_records(log_path, 4, HMAC_KEY)
    assert all(r.alg == ALG_HMAC_SHA256 for r in records)
    assert verify_file(log_path, HMAC_KEY).ok
    without = verify_file(log_path)
    assert (without.ok, without.bad_line) == (False, 1)
    assert without.reason is not None and "HMAC" in without.reason
    wrong = verify_file(log_path, b"another-key-0123456789")
    assert (wrong.ok, wrong.bad_line) == (False, 1)


def test_hmac_chain_cannot_be_recomputed_without_the_key(log_path: Path) -> None:
    write_records(log_path, 4, HMAC_KEY)
    lines = read_lines(log_path)
    docs = [json.loads(line) for line in lines]
    docs[2]["identity"] = "mallory"

    # Keep alg, recompute with SHA-256 from the edit on: the edited line fails.
    prev = docs[1]["hash"]
    for i in range(2, 4):
        lines[i] = seal({**docs[i], "prev": prev})
        prev = json.loads(lines[i])["hash"]
    write_lines(log_path, lines)
    assert (verify_file(log_path, HMAC_KEY).ok, verify_file(log_path, HMAC_KEY).bad_line) == (False, 3)

    # Rewrite the whole file as a plain SHA-256 chain: it verifies without a key, not with it.
    prev = GENESIS
    for i, doc in enumerate(docs):
        lines[i] = seal({**doc, "alg": ALG_SHA256, "prev": prev})
        prev = json.loads(lines[i])["hash"]
    write_lines(log_path, lines)
    assert verify_file(log_path).ok
    result = verify_file(log_path, HMAC_KEY)
    assert (result.ok, result.bad_line) == (False, 1)


def test_hmac_forged_line_appended_is_detected(log_path: Path) -> None:
    write_records(log_path, 3, HMAC_KEY)
    lines = read_lines(log_path)
    last = json.loads(lines[-1])
    lines.append(seal({**last, "seq": 4, "prev": last["hash"], "identity": "mallory"}, b"guessed-key-0123456789"))
    write_lines(log_path, lines)
    result = verify_file(log_path, HMAC_KEY)
    assert (result.ok, result.bad_line, result.count) == (False, 4, 3)


def test_short_hmac_key_is_refused(log_path: Path) -> None:
    with pytest.raises(ValueError, match="at least"):
        AuditLog(log_path, hmac_key=b"short")


# --- reopening -------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, HMAC_KEY])
def test_reopen_continues_the_chain(log_path: Path, key: bytes | None) -> None:
    first = write_records(log_path, 3, key)
    second = write_records(log_path, 2, key)
    assert [r.seq for r in second] == [4, 5]
    assert second[0].prev == first[-1].hash
    result = verify_file(log_path, key)
    assert result.ok and result.count == 5


def test_reopen_reads_only_the_tail(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_records(log_path, 1000)
    size = log_path.stat().st_size
    read = 0
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        nonlocal read
        data = real_pread(fd, n, offset)
        read += len(data)
        return data

    monkeypatch.setattr(os, "pread", counting_pread)
    with AuditLog(log_path) as log:
        assert log.seq == 1000
    assert 0 < read <= 8192 < size


@pytest.mark.parametrize(
    ("written_with", "opened_with"), [(None, HMAC_KEY), (HMAC_KEY, None), (HMAC_KEY, b"another-key-0123456789")]
)
def test_reopen_refuses_a_differently_keyed_chain(
    log_path: Path, written_with: bytes | None, opened_with: bytes | None
) -> None:
    write_records(log_path, 2, written_with)
    with pytest.raises(AuditError, match="cannot continue"):
        AuditLog(log_path, hmac_key=opened_with)


@pytest.mark.parametrize("damage", ["truncate", "edit", "not-audit"])
def test_reopen_refuses_a_damaged_tail(log_path: Path, damage: str) -> None:
    write_records(log_path, 3)
    data = log_path.read_bytes()
    if damage == "truncate":
        log_path.write_bytes(data[:-10])
    elif damage == "edit":
        log_path.write_bytes(data.replace(b'"obj-2"', b'"obj-9"'))
    else:
        log_path.write_bytes(b"hello\n")
    with pytest.raises(AuditError, match="cannot continue"):
        AuditLog(log_path)
    assert not verify_file(log_path).ok


def test_second_writer_is_refused(log_path: Path) -> None:
    with AuditLog(log_path), pytest.raises(AuditError, match="in use"):
        AuditLog(log_path)
    with AuditLog(log_path) as log:  # the lock went with close()
        log.record("rotate", "allowed")


def test_write_after_close_fails(log_path: Path) -> None:
    log = AuditLog(log_path)
    log.close()
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.record("rotate", "allowed")


@pytest.mark.parametrize("short_write", [True, False])
def test_failed_write_leaves_no_partial_line(
    log_path: Path, monkeypatch: pytest.MonkeyPatch, short_write: bool
) -> None:
    real_write = os.write
    calls = 0

    def flaky_write(fd: int, data: bytes) -> int:
        # Either a short write and then ENOSPC, or ENOSPC after bytes went out unreported.
        nonlocal calls
        calls += 1
        if calls == 1:
            n = real_write(fd, data[:20])
            if short_write:
                return n
            raise OSError(28, "No space left on device")
        if calls == 2 and short_write:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    with AuditLog(log_path) as log:
        log.record("generate", "allowed")
        monkeypatch.setattr(os, "write", flaky_write)
        with pytest.raises(AuditError, match="No space"):
            log.record("generate", "allowed")
        log.record("decrypt", "allowed")
    result = verify_file(log_path)
    assert result.ok and result.count == 2
