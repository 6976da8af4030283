"""Key policies: who may encrypt and decrypt with which key, checked before any KMS call."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import client_for, start_stack

WRITER = ("SGWRITER000000000001", "writer-secret-0000000001")
READER = ("SGREADER000000000001", "reader-secret-0000000001")

POLICY = f"""
[[clients]]
name = "writer"
access_key_id = "{WRITER[0]}"
secret_access_key = "{WRITER[1]}"
groups = ["uploaders"]

[[clients]]
name = "reader"
access_key_id = "{READER[0]}"
secret_access_key = "{READER[1]}"

[[keys]]
id = "default"
encrypt = ["tester", "group:uploaders"]
decrypt = ["tester", "reader"]

[[buckets]]
name = "secret-*"
key = "restricted"
"""


def test_policy(moto_url: str, tls_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    st = start_stack(tmp_path, moto_url, tls_files, extra=POLICY)
    try:
        admin = st.client()
        writer = client_for(st.gate.url, st.ca_path, akid=WRITER[0], secret=WRITER[1])
        reader = client_for(st.gate.url, st.ca_path, akid=READER[0], secret=READER[1])
        admin.create_bucket(Bucket="pol")
        writer.put_object(Bucket="pol", Key="w", Body=b"by writer")  # group:uploaders may encrypt
        assert reader.get_object(Bucket="pol", Key="w")["Body"].read() == b"by writer"
        with pytest.raises(ClientError) as err:
            writer.get_object(Bucket="pol", Key="w")  # may encrypt, not decrypt
        assert err.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(ClientError) as err:
            reader.put_object(Bucket="pol", Key="r", Body=b"x")
        assert err.value.response["Error"]["Code"] == "AccessDenied"
        # A key with no [[keys]] entry may not be used by anyone (default deny).
        admin.create_bucket(Bucket="secret-x")
        with pytest.raises(ClientError) as err:
            admin.put_object(Bucket="secret-x", Key="k", Body=b"x")
        assert err.value.response["Error"]["Code"] == "AccessDenied"
        assert any("policy denied" in r.getMessage() for r in caplog.records)
    finally:
        st.gate.stop()
