"""`sealgate rewrap` and `sealgate copy` under a key whose readers require sender signatures: what
they write is signed by the keyring's signing key, and without one they write nothing the
readers would refuse (docs/FORMAT.md §3a)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from proxy.cli import main
from tests.conftest import PASSPHRASE, Stack, backend_client, free_port, make_keyring, multipart_put, start_stack
from tests.conftest import write_config as write_cfg

MiB = 1024 * 1024
BUCKET = "sg-tools"
RESUME = "sg-tools-resume"


def _setup(
    tmp_path: Path, moto_url: str, tls_files: dict[str, Path], bucket: str = BUCKET
) -> tuple[Stack, Path, Path, bytes]:
    """A gateway whose keyring signs; key "default" trusts every writer, "key2" only that signer.
    Returns the stack, its config, a config whose keyring is the same without a signing key, and
    the multipart object's body ("obj/mp"; "obj/one" is a single object)."""
    from proxy.kms.keystore import LocalKeyStore

    ring = tmp_path / "keyring"
    make_keyring(ring)
    store = LocalKeyStore.open(ring, PASSPHRASE.encode())
    store.create_key("key2")
    store.create_asymmetric_key("gw-sign", "ed25519-signing")
    store.save()
    signer = store.public_key_pem("gw-sign").decode().strip()
    policy = (
        '\n[[keys]]\nid = "default"\nencrypt = ["tester"]\ndecrypt = ["tester"]\n'
        f'\n[[keys]]\nid = "key2"\nencrypt = ["tester"]\ndecrypt = ["tester"]\ntrusted_signers = ["{signer}"]\n'
    )
    st = start_stack(tmp_path, moto_url, tls_files, extra=policy)
    nosign = tmp_path / "nosign"
    nosign.mkdir()
    shutil.copy(ring, nosign / "keyring")
    shutil.copy(ring.with_name("keyring.pass"), nosign / "keyring.pass")
    other = LocalKeyStore.open(nosign / "keyring", PASSPHRASE.encode())
    other.set_enabled("gw-sign", False)
    other.save()
    nosign_cfg = write_cfg(nosign, backend=moto_url, tls=tls_files, port=free_port(), extra=policy)
    s3 = st.client()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="obj/one", Body=b"one" * 1000)
    body = multipart_put(s3, bucket, "obj/mp", [os.urandom(5 * MiB), b"tail"])
    return st, tmp_path / "sealgate.toml", nosign_cfg, body


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _rewrap(cfg: Path, to_key: str, prefix: str = "obj/", bucket: str = BUCKET) -> Any:
    return _run("rewrap", "--config", str(cfg), "--bucket", bucket, "--prefix", prefix, "--to-key", to_key)


def _copy(cfg: Path) -> Any:
    """`sealgate copy` of the whole obj/ prefix into sg-tools-dst under key2."""
    dst = ["s3://sg-tools-dst/c/", "--to-key", "key2"]
    return _run("copy", "--config", str(cfg), "--recursive", f"s3://{BUCKET}/obj/", *dst)


def _records(raw: Any, key: str, bucket: str = BUCKET) -> dict[str, tuple[bytes, dict[str, str]]]:
    prefix = f".sealgate/mp/{hashlib.sha256(key.encode()).hexdigest()}/"
    out = {}
    for item in raw.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        obj = raw.get_object(Bucket=bucket, Key=item["Key"])
        out[item["Key"]] = (obj["Body"].read(), obj["Metadata"])
    return out


def _refused(s3: Any, bucket: str, key: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def test_rewrap_and_copy_sign_or_write_nothing(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    st, cfg, nosign, mp_body = _setup(tmp_path, moto_url, tls_files)
    try:
        s3, raw = st.client(), backend_client(moto_url)
        s3.create_bucket(Bucket="sg-tools-dst")
        # An unsigned object under "default", which trusts every writer: served.
        s3.put_object(Bucket=BUCKET, Key="obj/bare", Body=b"one" * 1000)
        bare = raw.get_object(Bucket=BUCKET, Key="obj/bare")
        meta = {k: v for k, v in bare["Metadata"].items() if k != "sg-sig"}
        raw.put_object(Bucket=BUCKET, Key="obj/bare", Body=bare["Body"].read(), Metadata=meta)
        bodies = {"one": b"one" * 1000, "bare": b"one" * 1000, "mp": mp_body}
        for name, body in bodies.items():
            assert s3.get_object(Bucket=BUCKET, Key=f"obj/{name}")["Body"].read() == body

        # Without a signing key: the single object keeps its signature, which key2's readers trust;
        # the unsigned one and the multipart one (whose moved manifest must be signed) are skipped.
        before = {k: raw.head_object(Bucket=BUCKET, Key=f"obj/{k}")["Metadata"] for k in ("bare", "mp")}
        r = _rewrap(nosign, "key2")
        assert r.exit_code == 1 and "rewrapped 1" in r.output.lower() and "2 skipped" in r.output, r.output
        assert r.output.count("trusted_signers") == 2, r.output
        assert {k: raw.head_object(Bucket=BUCKET, Key=f"obj/{k}")["Metadata"] for k in before} == before
        assert raw.head_object(Bucket=BUCKET, Key="obj/one")["Metadata"]["sg-kr"].startswith("local:key2:")
        r = _copy(nosign)
        assert r.exit_code == 1 and "3 skipped" in r.output and "trusted_signers" in r.output, r.output
        assert raw.list_objects_v2(Bucket="sg-tools-dst").get("KeyCount", 0) == 0
        for name, body in bodies.items():
            assert s3.get_object(Bucket=BUCKET, Key=f"obj/{name}")["Body"].read() == body

        # With it, both sign what they write, and every object still reads under key2.
        r = _rewrap(cfg, "key2")
        assert r.exit_code == 0 and "rewrapped 2" in r.output.lower() and "0 skipped" in r.output, r.output
        for name, body in bodies.items():
            head = raw.head_object(Bucket=BUCKET, Key=f"obj/{name}")["Metadata"]
            signed = _records(raw, "obj/mp").popitem()[1][1] if name == "mp" else head  # the record's, for mp
            assert head["sg-kr"].startswith("local:key2:") and "sg-sig" in signed
            assert s3.get_object(Bucket=BUCKET, Key=f"obj/{name}")["Body"].read() == body
        r = _copy(cfg)
        assert r.exit_code == 0 and "copied 3" in r.output.lower() and "0 skipped" in r.output, r.output
        for name, body in bodies.items():
            assert raw.head_object(Bucket="sg-tools-dst", Key=f"c/{name}")["Metadata"]["sg-kr"].startswith(
                "local:key2:"
            )
            assert s3.get_object(Bucket="sg-tools-dst", Key=f"c/{name}")["Body"].read() == body

        # What key2's readers refuse is neither moved to a key that trusts every writer nor signed anew.
        stored = raw.get_object(Bucket=BUCKET, Key="obj/one")
        meta = {k: v for k, v in stored["Metadata"].items() if k != "sg-sig"}
        raw.put_object(Bucket=BUCKET, Key="obj/one", Body=stored["Body"].read(), Metadata=meta)
        _refused(s3, BUCKET, "obj/one")
        r = _rewrap(cfg, "default", "obj/one")
        assert r.exit_code == 1 and "sender signature" in r.output, r.output
        assert raw.head_object(Bucket=BUCKET, Key="obj/one")["Metadata"] == meta
        _refused(s3, BUCKET, "obj/one")
    finally:
        st.gate.stop()


def test_resumed_rewrap_signs_the_moved_manifest(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    st, cfg, nosign, mp_body = _setup(tmp_path, moto_url, tls_files, RESUME)
    try:
        s3, raw = st.client(), backend_client(moto_url)
        ((old_name, (old_body, old_meta)),) = _records(raw, "obj/mp", RESUME).items()
        assert "sg-sig" in old_meta
        r = _rewrap(cfg, "key2", bucket=RESUME)
        assert r.exit_code == 0 and "0 skipped" in r.output, r.output
        (new_name,) = _records(raw, "obj/mp", RESUME)
        assert s3.get_object(Bucket=RESUME, Key="obj/mp")["Body"].read() == mp_body

        # A run killed between the object's copy and its manifest: the object under key2, its
        # manifest (as the writing gateway signed it) still under the previous ETag.
        raw.delete_object(Bucket=RESUME, Key=new_name)
        raw.put_object(Bucket=RESUME, Key=old_name, Body=old_body, Metadata=old_meta)
        _refused(s3, RESUME, "obj/mp")

        # Without a signing key the re-run cannot sign the moved record: it says so, moves nothing.
        r = _rewrap(nosign, "key2", bucket=RESUME)
        assert r.exit_code == 1 and "trusted_signers" in r.output, r.output
        assert list(_records(raw, "obj/mp", RESUME)) == [old_name]
        # A stale record without a trusted signature is not signed anew (it could be anyone's).
        unsigned = {k: v for k, v in old_meta.items() if k != "sg-sig"}
        raw.put_object(Bucket=RESUME, Key=old_name, Body=old_body, Metadata=unsigned)
        r = _rewrap(cfg, "key2", bucket=RESUME)
        assert r.exit_code == 1 and "sender signature" in r.output, r.output
        assert list(_records(raw, "obj/mp", RESUME)) == [old_name]
        _refused(s3, RESUME, "obj/mp")

        raw.put_object(Bucket=RESUME, Key=old_name, Body=old_body, Metadata=old_meta)
        r = _rewrap(cfg, "key2", bucket=RESUME)
        assert r.exit_code == 0 and "rewrapped 1" in r.output.lower() and "0 skipped" in r.output, r.output
        ((name, (_, meta)),) = _records(raw, "obj/mp", RESUME).items()
        assert name == new_name and "sg-sig" in meta
        assert s3.get_object(Bucket=RESUME, Key="obj/mp")["Body"].read() == mp_body
    finally:
        st.gate.stop()


def test_a_gateway_that_cannot_sign_writes_nothing_its_readers_would_refuse(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """Under a key whose readers require a trusted signer, a PUT, a CopyObject or a multipart
    upload through a gateway whose keyring holds none of those signing keys is refused before
    anything is stored (it would be stored but never served)."""
    from proxy.kms.keystore import LocalKeyStore

    ring = tmp_path / "keyring"
    make_keyring(ring)
    store = LocalKeyStore.open(ring, PASSPHRASE.encode())
    store.create_key("key2")
    store.create_asymmetric_key("gw-sign", "ed25519-signing")
    store.save()
    signer = store.public_key_pem("gw-sign").decode().strip()
    store = LocalKeyStore.open(ring, PASSPHRASE.encode())
    store.set_enabled("gw-sign", False)
    store.save()
    run = os.urandom(3).hex()
    src, dst = f"sg-src-{run}", f"sg-needs-sig-{run}"
    extra = (
        f'\n[[buckets]]\nname = "{dst}"\nkey = "key2"\n'
        '\n[[keys]]\nid = "default"\nencrypt = ["tester"]\ndecrypt = ["tester"]\n'
        f'\n[[keys]]\nid = "key2"\nencrypt = ["tester"]\ndecrypt = ["tester"]\ntrusted_signers = ["{signer}"]\n'
    )
    st = start_stack(tmp_path, moto_url, tls_files, extra=extra)
    try:
        s3, raw = st.client(), backend_client(moto_url)
        s3.create_bucket(Bucket=src)
        s3.create_bucket(Bucket=dst)
        s3.put_object(Bucket=src, Key="doc", Body=b"under the default key")
        calls = [
            lambda: s3.put_object(Bucket=dst, Key="doc", Body=b"x" * 1000),
            lambda: s3.copy_object(Bucket=dst, Key="doc", CopySource={"Bucket": src, "Key": "doc"}),
            lambda: s3.create_multipart_upload(Bucket=dst, Key="mp"),
        ]
        for call in calls:
            with pytest.raises(ClientError) as err:
                call()
            assert err.value.response["Error"]["Code"] == "InvalidRequest"
            assert "trusted_signers" in err.value.response["Error"]["Message"]
        assert raw.list_objects_v2(Bucket=dst).get("KeyCount", 0) == 0
        assert raw.list_multipart_uploads(Bucket=dst).get("Uploads", []) == []
        assert s3.get_object(Bucket=src, Key="doc")["Body"].read() == b"under the default key"
    finally:
        st.gate.stop()
