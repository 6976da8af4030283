"""`sealgate copy`: objects into another bucket under another key, bodies copied by the backend."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from proxy.audit import verify_file
from proxy.cli import main
from tests.conftest import PASSPHRASE, backend_client, multipart_put, start_stack

MiB = 1024 * 1024

POLICY = """
[[clients]]
name = "limited"
access_key_id = "SGLIMITED00000000001"
secret_access_key = "limited-secret-000000001"

[[keys]]
id = "default"
encrypt = ["tester"]
decrypt = ["tester", "limited"]

[[keys]]
id = "key2"
encrypt = ["tester"]
decrypt = ["tester"]
"""


def _snapshot(raw: Any, bucket: str, prefix: str = "") -> dict[str, tuple[str, dict[str, str]]]:
    """Every stored object (sealgate's own records too): body digest and metadata."""
    out = {}
    for item in raw.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        obj = raw.get_object(Bucket=bucket, Key=item["Key"])
        out[item["Key"]] = (hashlib.sha256(obj["Body"].read()).hexdigest(), obj["Metadata"])
    return out


def _copy(cfg: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["copy", "--config", str(cfg), *args], catch_exceptions=False)


def test_copy_to_another_bucket_under_another_key(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    from proxy.kms.keystore import LocalKeyStore

    audit = tmp_path / "audit.jsonl"
    st = start_stack(tmp_path, moto_url, tls_files, extra=POLICY + f'[audit]\npath = "{audit}"\n')
    cfg = tmp_path / "sealgate.toml"
    try:
        store = LocalKeyStore.open(tmp_path / "keyring", PASSPHRASE.encode())
        store.create_key("key2")
        store.save()
        s3, raw = st.client(), backend_client(moto_url)
        for b in ("cp-src", "cp-dst", "cp-refused"):
            s3.create_bucket(Bucket=b)
        single = os.urandom(70_000)
        s3.put_object(Bucket="cp-src", Key="a/one", Body=single, ContentType="image/png")
        parts = [os.urandom(5 * MiB), b"tail"]
        multipart_put(s3, "cp-src", "a/mp", parts)
        bodies = {"one": single, "mp": b"".join(parts)}
        before = _snapshot(raw, "cp-src")

        # Refused by the keyring (no such key) and by the key policy: nothing is written.
        r = _copy(cfg, "s3://cp-src/a/one", "s3://cp-refused/x", "--to-key", "no-such-key")
        assert r.exit_code == 1 and "1 skipped" in r.output, r.output
        r = _copy(cfg, "--recursive", "s3://cp-src/a/", "s3://cp-refused/b/", "--to-key", "key2", "--as", "limited")
        assert r.exit_code == 1 and "2 skipped" in r.output and "may not encrypt" in r.output, r.output
        assert raw.list_objects_v2(Bucket="cp-refused").get("KeyCount", 0) == 0
        assert s3.list_multipart_uploads(Bucket="cp-refused").get("Uploads", []) == []

        # One object by name, then the whole prefix (the single one is recognised as done).
        r = _copy(cfg, "s3://cp-src/a/one", "s3://cp-dst/b/", "--to-key", "key2")  # to b/one
        assert r.exit_code == 0 and "copied 1 objects" in r.output, r.output
        r = _copy(cfg, "--recursive", "s3://cp-src/a/", "s3://cp-dst/b/", "--to-key", "key2")
        assert r.exit_code == 0 and "copied 1 objects" in r.output and "1 already copied" in r.output, r.output
        r = _copy(cfg, "--recursive", "s3://cp-src/a/", "s3://cp-dst/b/", "--to-key", "key2")
        assert r.exit_code == 0 and "copied 0 objects" in r.output and "2 already copied" in r.output, r.output

        assert _snapshot(raw, "cp-src") == before  # the source is untouched, its manifest too
        for name, body in bodies.items():
            copied = raw.get_object(Bucket="cp-dst", Key=f"b/{name}")
            assert copied["Metadata"]["sg-kr"].startswith("local:key2:")
            digest = hashlib.sha256(copied["Body"].read()).hexdigest()
            assert digest == before[f"a/{name}"][0]  # the backend copied the ciphertext
            assert s3.get_object(Bucket="cp-dst", Key=f"b/{name}")["Body"].read() == body
        assert s3.head_object(Bucket="cp-dst", Key="b/one")["ContentType"] == "image/png"
        assert raw.list_objects_v2(Bucket="cp-dst", Prefix=".sealgate/mp/")["KeyCount"] == 1

        # The old key disabled: the copies still read, the originals no longer do.
        store = LocalKeyStore.open(tmp_path / "keyring", PASSPHRASE.encode())
        store.set_enabled("default", False)
        store.save()
        time.sleep(1.1)
        for name, body in bodies.items():
            assert s3.get_object(Bucket="cp-dst", Key=f"b/{name}")["Body"].read() == body
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket="cp-src", Key="a/one")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    finally:
        st.gate.stop()

    # Every key use and refusal of the copy runs is audited, in a file of their own.
    tool_log = audit.with_name(audit.name + ".copy")
    assert verify_file(tool_log).ok
    records = [json.loads(line) for line in tool_log.read_text().splitlines()]
    denied = {
        (r["operation"], r["identity"], r["key_id"], r["object_key"]) for r in records if r["outcome"] != "allowed"
    }
    assert denied == {
        ("wrap", records[0]["identity"], "no-such-key", "x"),
        ("encrypt", "limited", "key2", "b/one"),
        ("encrypt", "limited", "key2", "b/mp"),
    }
    wraps = [(r["bucket"], r["object_key"], r["key_version"]) for r in records if r["operation"] == "wrap"]
    # Three runs over b/one, two over b/mp: a finished copy is recognised after the wrap.
    assert sorted(w[:2] for w in wraps if w[2]) == [("cp-dst", "b/mp")] * 2 + [("cp-dst", "b/one")] * 3
    assert all(w[2].startswith("local:key2:") for w in wraps if w[2])
    assert all(r["identity"].startswith("operator:") for r in records if r["identity"] != "limited")
    assert all(r["request_id"] and r["source"] == "sealgate copy" for r in records)


def test_bad_arguments(tmp_path: Path, moto_url: str, tls_files: dict[str, Path]) -> None:
    from tests.conftest import free_port, write_config

    cfg = write_config(tmp_path, backend=moto_url, tls=tls_files, port=free_port())
    r = _copy(cfg, "cp-src/a", "s3://cp-dst/b", "--to-key", "default")
    assert r.exit_code == 2 and "s3://bucket/key" in r.output
    r = _copy(cfg, "s3://cp-src", "s3://cp-dst/b", "--to-key", "default")
    assert r.exit_code == 2 and "--recursive" in r.output


def test_copy_as_a_client_obeys_its_policies(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    """`--as` applies the client's [[policies]] too: a copy reads its source and writes its
    destination, and a client allowed only the write copies nothing."""
    doc = (
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:PutObject",'
        ' "Resource": "arn:aws:s3:::cpp-dst/*"}]}'
    )
    full = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'
    extra = (
        POLICY.split("[[keys]]")[0]
        + f'[[policies]]\nname = "writer"\nprincipals = ["limited"]\ndocument = \'{doc}\'\n'
        + f'[[policies]]\nname = "all"\nprincipals = ["tester"]\ndocument = \'{full}\'\n'
    )
    st = start_stack(tmp_path, moto_url, tls_files, extra=extra)
    cfg = tmp_path / "sealgate.toml"
    try:
        s3, raw = st.client(), backend_client(moto_url)
        for b in ("cpp-src", "cpp-dst"):
            s3.create_bucket(Bucket=b)
        s3.put_object(Bucket="cpp-src", Key="doc", Body=b"the source")
        r = _copy(cfg, "s3://cpp-src/doc", "s3://cpp-dst/doc", "--to-key", "default", "--as", "limited")
        assert r.exit_code == 1 and "Access Denied" in r.output, r.output
        assert raw.list_objects_v2(Bucket="cpp-dst").get("KeyCount", 0) == 0
        r = _copy(cfg, "s3://cpp-src/doc", "s3://cpp-dst/doc", "--to-key", "default", "--as", "tester")
        assert r.exit_code == 0, r.output
        assert s3.get_object(Bucket="cpp-dst", Key="doc")["Body"].read() == b"the source"
    finally:
        st.gate.stop()
