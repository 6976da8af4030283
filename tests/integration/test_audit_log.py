"""The audit log as a user checks it: allowed and denied key uses recorded, tampering found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import CLIENT_SECRET, PASSPHRASE, client_for, start_stack


def test_audit_records_and_verify(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    extra = f"""
[audit]
path = "{log_path}"

[[clients]]
name = "writer"
access_key_id = "SGWRITER000000000009"
secret_access_key = "writer-secret-0000000009"

[[keys]]
id = "default"
encrypt = ["tester", "writer"]
decrypt = ["tester"]
"""
    st = start_stack(tmp_path, moto_url, tls_files, extra=extra)
    try:
        s3 = st.client()
        s3.create_bucket(Bucket="audited")
        s3.put_object(Bucket="audited", Key="doc", Body=b"AUDITED-PLAINTEXT")
        assert s3.get_object(Bucket="audited", Key="doc")["Body"].read() == b"AUDITED-PLAINTEXT"
        writer = client_for(st.gate.url, st.ca_path, akid="SGWRITER000000000009", secret="writer-secret-0000000009")
        with pytest.raises(ClientError) as err:
            writer.get_object(Bucket="audited", Key="doc")
        assert err.value.response["Error"]["Code"] == "AccessDenied"  # may encrypt under the key, not decrypt
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    finally:
        st.gate.stop()
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    ops = {(r["operation"], r["outcome"], r["identity"]) for r in records}
    assert ("generate", "allowed", "tester") in ops
    assert ("decrypt", "allowed", "tester") in ops
    assert ("decrypt", "denied", "writer") in ops
    assert all(r["bucket"] == "audited" and r["object_key"] == "doc" for r in records)
    text = log_path.read_text()
    for secret in ("AUDITED-PLAINTEXT", CLIENT_SECRET, PASSPHRASE):
        assert secret not in text

    verify = [sys.executable, "-m", "proxy.cli", "audit", "verify", str(log_path)]
    ok = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and f"OK: {len(records)} records" in ok.stdout
    lines = log_path.read_text().splitlines()
    lines[1] = (
        lines[1].replace('"allowed"', '"denied"', 1)
        if '"allowed"' in lines[1]
        else lines[1].replace('"denied"', '"allowed"', 1)
    )
    log_path.write_text("\n".join(lines) + "\n")
    bad = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "TAMPERED at line 2" in bad.stdout
