"""`sealgate audit verify`: exit 0 on an intact chain, 1 on a tampered one, 2 when it cannot check."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.audit import AuditContext, AuditLog, AuditRecord
from proxy.tools.audit import audit_group

HMAC_KEY = b"audit-hmac-key-0123456789abcdef"
CTX = AuditContext(identity="alice", source="203.0.113.7:50123", request_id="REQ1", bucket="b1", object_key="k1")


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


def test_cli_verify_ok(log_path: Path) -> None:
    records = write_records(log_path, 3)
    result = CliRunner().invoke(audit_group, ["verify", str(log_path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["OK: 3 records", f"last hash: {records[-1].hash}"]


def test_cli_verify_tampered(log_path: Path) -> None:
    write_records(log_path, 3)
    log_path.write_bytes(log_path.read_bytes().replace(b'"obj-1"', b'"obj-7"'))
    result = CliRunner().invoke(audit_group, ["verify", str(log_path)])
    assert result.exit_code == 1
    assert result.output.startswith("TAMPERED at line 2: ")


def test_cli_verify_hmac(log_path: Path) -> None:
    write_records(log_path, 2, HMAC_KEY)
    runner = CliRunner()
    ok = runner.invoke(
        audit_group, ["verify", str(log_path), "--hmac-key-env", "AUDIT_KEY"], env={"AUDIT_KEY": HMAC_KEY.decode()}
    )
    assert ok.exit_code == 0 and ok.output.startswith("OK: 2 records")
    keyless = runner.invoke(audit_group, ["verify", str(log_path)])
    assert keyless.exit_code == 1 and keyless.output.startswith("TAMPERED at line 1: ")
    unset = runner.invoke(audit_group, ["verify", str(log_path), "--hmac-key-env", "AUDIT_KEY"], env={"AUDIT_KEY": ""})
    assert unset.exit_code == 2 and "AUDIT_KEY" in unset.output


def test_cli_verify_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(audit_group, ["verify", str(tmp_path / "absent.jsonl")])
    assert result.exit_code == 2
