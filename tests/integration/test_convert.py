"""`sealgate convert`: objects move between sealgate's format and S3EC V3, both ways, resumably.

Real TLS, real moto S3 + KMS, the real CLI command, and the official ``s3_encryption`` client
writing S3EC objects and reading converted ones straight from the backend.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from proxy.cli import main
from proxy.crypto import s3ec
from proxy.crypto.s3ec_streams import DEFAULT_VERIFY_LIMIT
from tests.conftest import Stack, backend_client, start_stack
from tests.integration.s3ec_support import official, start_kms_stack

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def kms_stack(
    moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    rules = (
        '\n[[buckets]]\nname = "convert-if"\ns3ec_instruction_files = true\n'
        '\n[[buckets]]\nname = "convert-delayed"\ns3ec_delayed_authentication = true\n'
        # The official client's own V3 objects stay as they are, bound to no name (issue 17).
        '\n[[buckets]]\nname = "convert-mixed"\ns3ec_unbound_reads = true\n'
    )
    st, key_id = start_kms_stack(tmp_path_factory.mktemp("convert"), moto_url, tls_files, rules=rules)
    yield st, key_id
    st.gate.stop()


def run_convert(st: Stack, bucket: str, to: str, *extra: str) -> Any:
    args = ["convert", "--config", str(st.dir / "sealgate.toml"), "--bucket", bucket, "--to", to, *extra]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _format(raw: Any, bucket: str, key: str) -> str:
    meta = raw.head_object(Bucket=bucket, Key=key)["Metadata"]
    if "x-amz-c" in meta:
        return "s3ec-v3"
    if "x-amz-key-v2" in meta:
        return "s3ec-v2"
    return "sealgate" if any(k.startswith("sg-") for k in meta) else "plain"


def test_convert_mixed_objects_both_ways_interrupted_and_resumed(kms_stack: tuple[Stack, str], moto_url: str) -> None:
    st, key_id = kms_stack
    bucket = "convert-mixed"
    raw = backend_client(moto_url)
    raw.create_bucket(Bucket=bucket)
    s3 = st.client()
    bodies: dict[str, bytes] = {}
    for i, size in enumerate([0, 1, 16, 17, 1000, 70_000, MiB + 1, 3]):
        key = f"d/sg-{i}"
        bodies[key] = os.urandom(size)
        s3.put_object(Bucket=bucket, Key=key, Body=bodies[key], Metadata={"n": str(i)}, ContentType="text/x-test")
    # A multipart sealgate object: its manifest goes away with it.
    parts = [os.urandom(5 * MiB), b"tail"]
    uid = s3.create_multipart_upload(Bucket=bucket, Key="d/sg-mp")["UploadId"]
    done = [
        {
            "PartNumber": n,
            "ETag": s3.upload_part(Bucket=bucket, Key="d/sg-mp", UploadId=uid, PartNumber=n, Body=p)["ETag"],
        }
        for n, p in enumerate(parts, 1)
    ]
    s3.complete_multipart_upload(Bucket=bucket, Key="d/sg-mp", UploadId=uid, MultipartUpload={"Parts": done})
    bodies["d/sg-mp"] = b"".join(parts)
    for i, size in enumerate([0, 1, 17, 4096, 100_000, 12]):
        key = f"d/ec3-{i}"
        bodies[key] = os.urandom(size)
        official(moto_url, key_id).put_object(Bucket=bucket, Key=key, Body=bodies[key], Metadata={"n": str(i)})
    for i in range(3):
        key = f"d/ec2-{i}"
        bodies[key] = os.urandom(100 * i + 5)
        official(moto_url, key_id, v2=True).put_object(Bucket=bucket, Key=key, Body=bodies[key])
    raw.put_object_tagging(Bucket=bucket, Key="d/sg-3", Tagging={"TagSet": [{"Key": "team", "Value": "a b"}]})
    raw.put_object(Bucket=bucket, Key="d/plain", Body=b"never encrypted")
    assert len(bodies) == 18

    # To S3EC V3, interrupted after 4 objects, then resumed.
    first = run_convert(st, bucket, "s3ec-v3", "--limit", "4", "--no-progress")
    assert first.exit_code == 0, first.output
    assert "converted 4 objects" in first.output and "stopped after --limit 4" in first.output
    formats = [_format(raw, bucket, k) for k in bodies]
    assert formats.count("s3ec-v3") == 6 + 4, formats
    second = run_convert(st, bucket, "s3ec-v3", "--progress")
    assert second.exit_code == 0, second.output
    # 9 sealgate + 3 V2 objects in all, 4 of them in the first run; 6 V3 + 4 already done.
    assert "converted 8 objects" in second.output and "10 already s3ec-v3" in second.output, second.output
    assert "skipped d/plain: not encrypted" in second.output
    for key, data in bodies.items():
        assert _format(raw, bucket, key) == "s3ec-v3"
        # What sealgate wrote names itself in the KMS context (docs/INTEROP.md).
        context = {} if key.startswith("d/ec3-") else s3ec.name_context(bucket, key)
        got = official(moto_url, key_id).get_object(Bucket=bucket, Key=key, EncryptionContext=context)
        assert got["Body"].read() == data, key
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    context = s3ec.name_context(bucket, "d/sg-2")
    assert (
        official(moto_url, key_id).get_object(Bucket=bucket, Key="d/sg-2", EncryptionContext=context)["Metadata"]["n"]
        == "2"
    )
    assert raw.head_object(Bucket=bucket, Key="d/sg-2")["ContentType"] == "text/x-test"
    assert raw.get_object_tagging(Bucket=bucket, Key="d/sg-3")["TagSet"] == [{"Key": "team", "Value": "a b"}]
    assert not raw.list_objects_v2(Bucket=bucket, Prefix=".sealgate/").get("Contents")
    again = run_convert(st, bucket, "s3ec-v3", "--no-progress")
    assert "converted 0 objects" in again.output and "18 already" in again.output

    # And back to sealgate's format, interrupted once more.
    back = run_convert(st, bucket, "sealgate", "--limit", "9", "--no-progress")
    assert "converted 9 objects" in back.output
    back = run_convert(st, bucket, "sealgate", "--no-progress")
    assert back.exit_code == 0 and "converted 9 objects" in back.output and "9 already sealgate" in back.output
    for key, data in bodies.items():
        assert _format(raw, bucket, key) == "sealgate"
        if len(data) >= 16:
            assert data not in raw.get_object(Bucket=bucket, Key=key)["Body"].read()
        got = s3.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == data, key
    got = s3.get_object(Bucket=bucket, Key="d/ec3-4")
    assert got["Metadata"] == {"n": "4"}
    assert s3.head_object(Bucket=bucket, Key="d/sg-1")["ContentType"] == "text/x-test"
    assert raw.get_object(Bucket=bucket, Key="d/plain")["Body"].read() == b"never encrypted"


def test_tampered_object_is_reported_and_left_as_it_was(kms_stack: tuple[Stack, str], moto_url: str) -> None:
    st, key_id = kms_stack
    bucket = "convert-tampered"
    raw = backend_client(moto_url)
    raw.create_bucket(Bucket=bucket)
    good, bad = os.urandom(3000), os.urandom(200_000)
    official(moto_url, key_id).put_object(Bucket=bucket, Key="good", Body=good)
    official(moto_url, key_id).put_object(Bucket=bucket, Key="bad", Body=bad)
    stored = raw.get_object(Bucket=bucket, Key="bad")
    body = bytearray(stored["Body"].read())
    body[-1] ^= 1  # the GCM tag: detected only after every plaintext byte went by
    raw.put_object(Bucket=bucket, Key="bad", Body=bytes(body), Metadata=stored["Metadata"])
    result = run_convert(st, bucket, "sealgate", "--no-progress")
    assert result.exit_code == 1
    assert "converted 1 objects" in result.output and "failed bad:" in result.output
    assert raw.get_object(Bucket=bucket, Key="bad")["Body"].read() == bytes(body)
    assert _format(raw, bucket, "bad") == "s3ec-v3"
    assert st.client().get_object(Bucket=bucket, Key="good")["Body"].read() == good


def test_local_keyring_converts_with_aes_gcm(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    """With the local keyring, s3ec-v3 objects are wrapped with AES/GCM under the bucket's key."""
    st = start_stack(tmp_path, moto_url, tls_files)
    try:
        s3, raw = st.client(), backend_client(moto_url)
        s3.create_bucket(Bucket="convert-local")
        data = os.urandom(70_000)
        s3.put_object(Bucket="convert-local", Key="k", Body=data)
        result = run_convert(st, "convert-local", "s3ec-v3", "--no-progress")
        assert result.exit_code == 0, result.output
        assert _format(raw, "convert-local", "k") == "s3ec-v3"
        assert raw.head_object(Bucket="convert-local", Key="k")["Metadata"]["x-amz-w"] == "02"
        assert s3.get_object(Bucket="convert-local", Key="k")["Body"].read() == data
        assert run_convert(st, "convert-local", "sealgate", "--no-progress").exit_code == 0
        assert _format(raw, "convert-local", "k") == "sealgate"
        assert s3.get_object(Bucket="convert-local", Key="k")["Body"].read() == data
    finally:
        st.gate.stop()


def _move_to_instruction_file(raw: Any, bucket: str, key: str) -> None:
    """Rewrite an official object so that its envelope is in KEY.instruction (V3 keeps c/d/i):
    the official Python client reads such objects but does not write them."""
    obj = raw.get_object(Bucket=bucket, Key=key)
    meta = obj["Metadata"]
    keep = s3ec.V3_OBJECT_ONLY if s3ec.detect(meta) == s3ec.FORMAT_V3 else frozenset()
    moved = {k: v for k, v in meta.items() if k in s3ec.ALL_META and k not in keep}
    raw.put_object(
        Bucket=bucket, Key=key, Body=obj["Body"].read(), Metadata={k: v for k, v in meta.items() if k not in moved}
    )
    raw.put_object(Bucket=bucket, Key=key + s3ec.INSTRUCTION_SUFFIX, Body=json.dumps(moved).encode())


@pytest.mark.parametrize("bucket", ["convert-if", "convert-noif"])
def test_instruction_file_objects_convert_with_their_file(
    kms_stack: tuple[Stack, str], moto_url: str, bucket: str
) -> None:
    st, key_id = kms_stack
    raw = backend_client(moto_url)
    raw.create_bucket(Bucket=bucket)
    v3, v2 = os.urandom(40_000), os.urandom(333)
    official(moto_url, key_id).put_object(Bucket=bucket, Key="a-v3", Body=v3, Metadata={"m": "3"})
    official(moto_url, key_id, v2=True).put_object(Bucket=bucket, Key="b-v2", Body=v2)
    for key in ("a-v3", "b-v2"):
        _move_to_instruction_file(raw, bucket, key)
    result = run_convert(st, bucket, "sealgate", "--no-progress")
    assert result.exit_code == 0, result.output
    s3 = st.client()
    got = s3.get_object(Bucket=bucket, Key="a-v3")
    assert got["Body"].read() == v3 and got["Metadata"] == {"m": "3"}
    left = {o["Key"] for o in raw.list_objects_v2(Bucket=bucket)["Contents"]}
    if bucket == "convert-if":
        # V1/V2 instruction files are looked for only where the bucket rule asks for them.
        assert "converted 2 objects" in result.output
        assert s3.get_object(Bucket=bucket, Key="b-v2")["Body"].read() == v2
        assert left == {"a-v3", "b-v2"}
    else:
        assert "converted 1 objects" in result.output
        assert "skipped b-v2: has an S3EC instruction file" in result.output
        assert left == {"a-v3", "b-v2", "b-v2.instruction"}


def _stored(raw: Any, bucket: str, key: str) -> tuple[bytes, dict[str, str], str]:
    got = raw.get_object(Bucket=bucket, Key=key)
    return got["Body"].read(), got["Metadata"], got["ETag"]


def test_what_s3ec_v3_could_not_serve_is_skipped_and_left_as_it_was(
    kms_stack: tuple[Stack, str], moto_url: str, tmp_path: Path
) -> None:
    """Above the verify-first limit sealgate refuses S3EC objects (no delayed authentication in
    this bucket), and user metadata named like an envelope field would be misread: both stay
    sealgate objects, byte for byte, and keep reading; the rest converts."""
    st, _ = kms_stack
    bucket = "convert-big"
    raw = backend_client(moto_url)
    raw.create_bucket(Bucket=bucket)
    s3 = st.client()
    big, small, odd = os.urandom(DEFAULT_VERIFY_LIMIT + 1), os.urandom(70_000), os.urandom(500)
    s3.put_object(Bucket=bucket, Key="big", Body=big)
    s3.put_object(Bucket=bucket, Key="small", Body=small, Metadata={"n": "1"})
    # The proxy refuses such names now (issue 24); an object stored before it could have one, as
    # one made with `sealgate encrypt` and put on the backend still can.
    src, ct = tmp_path / "clash", tmp_path / "clash.ct"
    src.write_bytes(odd)
    cfg = str(st.dir / "sealgate.toml")
    args = ["encrypt", "--config", cfg, "--bucket", bucket, "--object-key", "clash", "--meta", "x-amz-iv=mine"]
    made = CliRunner().invoke(main, [*args, str(src), str(ct)], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    headers = json.loads((tmp_path / "clash.ct.meta.json").read_text())
    raw.put_object(
        Bucket=bucket,
        Key="clash",
        Body=ct.read_bytes(),
        Metadata={k.removeprefix("x-amz-meta-"): v for k, v in headers.items()},
    )
    before = {k: _stored(raw, bucket, k) for k in ("big", "clash")}

    result = run_convert(st, bucket, "s3ec-v3", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "converted 1 objects" in result.output and "2 skipped, 0 failed" in result.output, result.output
    assert (
        f"skipped big: not converted, left as it was: {len(big)} bytes is above the S3EC verify-first limit"
        in result.output
    )
    assert "s3ec_delayed_authentication = true" in result.output
    assert "skipped clash: not converted, left as it was: its user metadata x-amz-iv" in result.output
    for key, stored in before.items():
        assert _stored(raw, bucket, key) == stored, key
        assert _format(raw, bucket, key) == "sealgate"
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == big
    got = s3.get_object(Bucket=bucket, Key="clash")
    assert got["Body"].read() == odd and got["Metadata"] == {"x-amz-iv": "mine"}
    assert _format(raw, bucket, "small") == "s3ec-v3"
    assert s3.get_object(Bucket=bucket, Key="small")["Body"].read() == small
    # Run again: the same two are skipped again, nothing else is touched.
    again = run_convert(st, bucket, "s3ec-v3", "--no-progress")
    assert "converted 0 objects" in again.output and "1 already s3ec-v3, 2 skipped" in again.output, again.output


def test_large_objects_convert_where_the_bucket_allows_delayed_authentication(
    kms_stack: tuple[Stack, str], moto_url: str
) -> None:
    st, _ = kms_stack
    bucket = "convert-delayed"
    raw = backend_client(moto_url)
    raw.create_bucket(Bucket=bucket)
    s3 = st.client()
    big = os.urandom(DEFAULT_VERIFY_LIMIT + 1)
    s3.put_object(Bucket=bucket, Key="big", Body=big)
    result = run_convert(st, bucket, "s3ec-v3", "--no-progress")
    assert result.exit_code == 0 and "converted 1 objects" in result.output, result.output
    assert _format(raw, bucket, "big") == "s3ec-v3"
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == big


def test_keys_this_config_cannot_decrypt_are_neither_read_nor_written(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """An encrypt-only key (the keyring holds only its public half, or `mode = "encrypt-only"`)
    would give an object this config cannot serve back: convert neither writes under one nor
    reads under one, and the objects stay as they were."""
    from proxy.kms.keystore import LocalKeyStore
    from tests.conftest import PASSPHRASE, make_keyring

    st = start_stack(tmp_path, moto_url, tls_files)
    try:
        s3, raw = st.client(), backend_client(moto_url)
        s3.create_bucket(Bucket="convert-eo")
        data = os.urandom(5000)
        s3.put_object(Bucket="convert-eo", Key="k", Body=data)
        before = _stored(raw, "convert-eo", "k")
        pair_ring = tmp_path / "pair" / "keyring"
        pair_ring.parent.mkdir()
        make_keyring(pair_ring)
        pair = LocalKeyStore.open(pair_ring, PASSPHRASE.encode())
        pair.create_asymmetric_key("drop", "rsa-3072")
        ring = LocalKeyStore.open(tmp_path / "keyring", PASSPHRASE.encode())
        ring.import_asymmetric_key("drop", pair.public_key_pem("drop"))
        ring.save()
        base = (st.dir / "sealgate.toml").read_text()
        configs = {
            "public-only": base + '\n[[buckets]]\nname = "convert-eo"\nkey = "drop"\n',
            "mode": base + '\n[[keys]]\nid = "default"\nmode = "encrypt-only"\n',
        }
        for name, text in configs.items():
            path = tmp_path / f"{name}.toml"
            path.write_text(text)
            for to in ("s3ec-v3", "sealgate"):
                args = ["convert", "--config", str(path), "--bucket", "convert-eo", "--to", to, "--no-progress"]
                result = CliRunner().invoke(main, args, catch_exceptions=False)
                assert result.exit_code == 0, result.output
                if to == "sealgate":
                    assert "1 already sealgate" in result.output, result.output
                    continue
                assert "converted 0 objects" in result.output and "1 skipped" in result.output, result.output
                if name == "public-only":
                    why = "it would be written under the bucket's key 'drop', which this config encrypts under"
                else:
                    why = "its key 'local:default:1' is encrypt-only in this config"
                assert f"skipped k: not converted, left as it was: {why}" in result.output, result.output
                assert _stored(raw, "convert-eo", "k") == before
        assert s3.get_object(Bucket="convert-eo", Key="k")["Body"].read() == data
    finally:
        st.gate.stop()


def test_keys_that_require_a_signature_this_config_cannot_give(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """Under a key whose readers trust only signers this config does not hold, a converted
    sealgate object would be refused as unsigned: convert skips it, and the S3EC object stays."""
    from proxy.crypto import signing

    rule = '\n[[buckets]]\nname = "convert-sig"\nformat = "s3ec-v3"\n'
    st = start_stack(tmp_path, moto_url, tls_files, extra=rule)
    try:
        s3, raw = st.client(), backend_client(moto_url)
        s3.create_bucket(Bucket="convert-sig")
        data = os.urandom(3000)
        s3.put_object(Bucket="convert-sig", Key="k", Body=data)
        assert _format(raw, "convert-sig", "k") == "s3ec-v3"
        before = _stored(raw, "convert-sig", "k")
        stranger = signing.public_text(signing.public_key(signing.generate_seed()))
        path = tmp_path / "signed.toml"
        path.write_text(
            (st.dir / "sealgate.toml").read_text() + f'\n[[keys]]\nid = "default"\ntrusted_signers = ["{stranger}"]\n'
        )
        args = ["convert", "--config", str(path), "--bucket", "convert-sig", "--to", "sealgate", "--no-progress"]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "converted 0 objects" in result.output and "1 skipped" in result.output, result.output
        why = "objects under the bucket's key 'default' are served only if one of its trusted_signers signed them"
        assert f"skipped k: not converted, left as it was: {why}" in result.output, result.output
        assert _stored(raw, "convert-sig", "k") == before
        assert s3.get_object(Bucket="convert-sig", Key="k")["Body"].read() == data
    finally:
        st.gate.stop()


def test_the_verify_first_limit_is_the_one_the_config_serves_with(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """`server.verify_first_memory_bytes` below 64 MiB lowers the verify-first limit the proxy
    serves S3EC objects with, and convert's with it."""
    st = start_stack(tmp_path, moto_url, tls_files, server_extra="verify_first_memory_bytes = 100000")
    try:
        s3, raw = st.client(), backend_client(moto_url)
        s3.create_bucket(Bucket="convert-budget")
        over, under = os.urandom(100_001), os.urandom(100_000)
        s3.put_object(Bucket="convert-budget", Key="over", Body=over)
        s3.put_object(Bucket="convert-budget", Key="under", Body=under)
        before = _stored(raw, "convert-budget", "over")
        result = run_convert(st, "convert-budget", "s3ec-v3", "--no-progress")
        assert result.exit_code == 0, result.output
        assert "converted 1 objects" in result.output and "1 skipped" in result.output, result.output
        why = "100001 bytes is above the S3EC verify-first limit (100000 bytes"
        assert f"skipped over: not converted, left as it was: {why}" in result.output, result.output
        assert _stored(raw, "convert-budget", "over") == before
        assert s3.get_object(Bucket="convert-budget", Key="over")["Body"].read() == over
        assert _format(raw, "convert-budget", "under") == "s3ec-v3"
        assert s3.get_object(Bucket="convert-budget", Key="under")["Body"].read() == under
    finally:
        st.gate.stop()


def test_s3ec_objects_bound_to_no_name_are_bound_where_the_bucket_would_not_serve_them(
    kms_stack: tuple[Stack, str], moto_url: str
) -> None:
    """The official client's V3 objects are bound to no name, and a bucket without
    s3ec_unbound_reads does not serve them: --to s3ec-v3 does not count them as done but binds
    them, so they read; one moved on the backend from another name fails and is left as it was."""
    st, key_id = kms_stack
    bucket = "convert-unbound"
    raw = backend_client(moto_url)
    raw.create_bucket(Bucket=bucket)
    s3 = st.client()
    data, moved = os.urandom(4000), os.urandom(300)
    s3.put_object(Bucket=bucket, Key="mine", Body=moved)
    assert run_convert(st, bucket, "s3ec-v3", "--no-progress").exit_code == 0
    raw.copy_object(Bucket=bucket, Key="moved", CopySource={"Bucket": bucket, "Key": "mine"})
    official(moto_url, key_id).put_object(Bucket=bucket, Key="ec", Body=data)
    before = _stored(raw, bucket, "moved")
    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key="ec")
    result = run_convert(st, bucket, "s3ec-v3", "--no-progress")
    assert "converted 1 objects" in result.output and "1 already s3ec-v3" in result.output, result.output
    assert "failed moved: ObjectIntegrityError" in result.output and result.exit_code == 1, result.output
    assert s3.get_object(Bucket=bucket, Key="ec")["Body"].read() == data
    context = s3ec.name_context(bucket, "ec")
    got = official(moto_url, key_id).get_object(Bucket=bucket, Key="ec", EncryptionContext=context)
    assert got["Body"].read() == data
    assert _stored(raw, bucket, "moved") == before
