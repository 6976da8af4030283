"""S3EC objects under the local keyring, through the proxy: AES/GCM key wrapping (written in
s3ec-v3 buckets, read back by sealgate and by the official client's decrypt pipeline) and
RSA-OAEP-SHA1-wrapped objects (read, as the Java client writes them)."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.crypto import s3ec
from proxy.kms.keystore import LocalKeyStore
from tests.conftest import PASSPHRASE, Stack, backend_client, make_keyring, start_stack
from tests.integration.test_s3ec_format import (
    S3EncryptionClient,
    S3EncryptionClientConfig,
    S3EncryptionClientError,
    _TestAesKeyring,
)

RULES = """
[[buckets]]
name = "s3ec-local"
format = "s3ec-v3"

[[buckets]]
name = "s3ec-rsa"
key = "rsa"
s3ec_unbound_reads = true

[[buckets]]
name = "s3ec-local2"
format = "s3ec-v3"

[[buckets]]
name = "s3ec-rsa-off"
key = "rsa"
"""
# "s3ec-plain" has no rule: sealgate's format, under the same default key as "s3ec-local".


@pytest.fixture(scope="module")
def st(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("s3ec-local")
    make_keyring(d / "keyring")
    store = LocalKeyStore.open(d / "keyring", PASSPHRASE.encode())
    store.create_asymmetric_key("rsa", "rsa-3072")
    store.save()
    stack = start_stack(d, moto_url, tls_files, extra=RULES)
    for bucket in ("s3ec-local", "s3ec-rsa", "s3ec-local2", "s3ec-plain", "s3ec-rsa-off"):
        stack.client().create_bucket(Bucket=bucket)
    yield stack
    stack.gate.stop()


def _store(st: Stack) -> LocalKeyStore:
    return LocalKeyStore.open(st.dir / "keyring", PASSPHRASE.encode())


def _kek(st: Stack, version: int | None = None) -> bytes:
    store = _store(st)
    if version is None:
        current = store.current("default")
        assert current is not None
        return current[1]
    material = store.material("default", version)
    assert material is not None
    return material


def _causes(exc: BaseException | None, kind: type[BaseException]) -> bool:
    """Whether `exc` is, or was raised from, a `kind` (the official client wraps what it meets)."""
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _official_read(st: Stack, bucket: str, key: str, kek: bytes) -> bytes:
    """The official client's decrypt pipeline, straight from the backend (AES/GCM unwrapping
    plugged in: the Python client ships no AES keyring)."""
    config = S3EncryptionClientConfig(keyring=_TestAesKeyring(kek))
    client = S3EncryptionClient(wrapped_s3_client=backend_client(st.backend_url), config=config)
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


@pytest.mark.parametrize("size", [0, 17, 1024 * 1024 + 1])
def test_aes_gcm_objects_written_through_sealgate(st: Stack, size: int) -> None:
    data = os.urandom(size)
    key = f"aes/{size}"
    st.client().put_object(Bucket="s3ec-local", Key=key, Body=data, Metadata={"note": "kept"})
    meta = backend_client(st.backend_url).head_object(Bucket="s3ec-local", Key=key)["Metadata"]
    assert meta["x-amz-w"] == "02" and meta["x-amz-c"] == "115" and "x-amz-t" not in meta
    got = st.client().get_object(Bucket="s3ec-local", Key=key)
    assert got["Body"].read() == data and got["Metadata"]["note"] == "kept"
    assert _official_read(st, "s3ec-local", key, _kek(st)) == data
    # Under another key the official pipeline fails in the AES/GCM unwrap, not anywhere else.
    with pytest.raises(S3EncryptionClientError) as err:
        _official_read(st, "s3ec-local", key, os.urandom(32))
    assert _causes(err.value, InvalidTag)


def test_aes_gcm_objects_survive_rotation(st: Stack) -> None:
    s3 = st.client()
    s3.put_object(Bucket="s3ec-local", Key="rot/old", Body=b"before")
    old = _kek(st)
    store = _store(st)
    store.rotate_key("default")
    store.save()
    time.sleep(1.1)  # the running keyring looks at its file at most once a second
    s3.put_object(Bucket="s3ec-local", Key="rot/new", Body=b"after")
    assert _official_read(st, "s3ec-local", "rot/new", _kek(st)) == b"after"
    assert _kek(st) != old
    # S3EC records no key version: sealgate tries each version of the bucket's key.
    assert s3.get_object(Bucket="s3ec-local", Key="rot/old")["Body"].read() == b"before"
    assert s3.get_object(Bucket="s3ec-local", Key="rot/new")["Body"].read() == b"after"


def test_aes_gcm_multipart_through_sealgate(st: Stack) -> None:
    data = os.urandom(6 * 1024 * 1024 + 5)
    cfg = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=1)
    st.client().upload_fileobj(io.BytesIO(data), "s3ec-local", "mp/obj", Config=cfg)
    assert st.client().get_object(Bucket="s3ec-local", Key="mp/obj")["Body"].read() == data
    assert _official_read(st, "s3ec-local", "mp/obj", _kek(st)) == data


def test_tampered_aes_gcm_wrapped_key_releases_nothing(st: Stack) -> None:
    raw = backend_client(st.backend_url)
    st.client().put_object(Bucket="s3ec-local", Key="tamper", Body=b"SECRET-PLAINTEXT")
    obj = raw.get_object(Bucket="s3ec-local", Key="tamper")
    meta = dict(obj["Metadata"])
    wrapped = bytearray(base64.b64decode(meta["x-amz-3"]))
    wrapped[20] ^= 1
    meta["x-amz-3"] = base64.b64encode(bytes(wrapped)).decode()
    raw.put_object(Bucket="s3ec-local", Key="tamper", Body=obj["Body"].read(), Metadata=meta)
    with pytest.raises(ClientError) as err:
        st.client().get_object(Bucket="s3ec-local", Key="tamper")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 400
    assert "SECRET" not in json.dumps(err.value.response, default=str)


def test_moved_aes_gcm_objects_are_refused(st: Stack) -> None:
    """AES/GCM wrapping authenticates no name, so sealgate binds it in the V3 message id (which
    the key commitment covers): a copy made on the backend is refused under any other name."""
    data = os.urandom(70_000)
    s3, raw = st.client(), backend_client(st.backend_url)
    s3.put_object(Bucket="s3ec-local", Key="bound/a", Body=data)
    targets = [("s3ec-local", "bound/b"), ("s3ec-local2", "bound/a"), ("s3ec-plain", "bound/a")]
    for bucket, key in targets:
        raw.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": "s3ec-local", "Key": "bound/a"})
        for call in (s3.get_object, s3.head_object):
            with pytest.raises(ClientError) as err:
                call(Bucket=bucket, Key=key)
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500, (bucket, key)
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-9")
        assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"
    # The original reads, whole and ranged; S3EC clients still read it (the message id is opaque to them).
    assert s3.get_object(Bucket="s3ec-local", Key="bound/a")["Body"].read() == data
    assert s3.get_object(Bucket="s3ec-local", Key="bound/a", Range="bytes=5-9")["Body"].read() == data[5:10]
    assert _official_read(st, "s3ec-local", "bound/a", _kek(st)) == data
    # Multipart objects are bound the same way.
    cfg = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=1)
    big = os.urandom(5 * 1024 * 1024 + 7)
    s3.upload_fileobj(io.BytesIO(big), "s3ec-local", "bound/mp", Config=cfg)
    raw.copy_object(Bucket="s3ec-local", Key="bound/mp2", CopySource={"Bucket": "s3ec-local", "Key": "bound/mp"})
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="s3ec-local", Key="bound/mp2")
    assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"
    assert s3.get_object(Bucket="s3ec-local", Key="bound/mp")["Body"].read() == big


def test_unbound_rsa_objects_only_where_allowed(st: Stack) -> None:
    """An RSA-OAEP-SHA1 object (written by another S3EC: no name bound) is served from a bucket
    that opts in (``s3ec-rsa``), refused from one that does not."""
    data = os.urandom(1000)
    _java_style_rsa_v2(st, "foreign", data)
    assert st.client().get_object(Bucket="s3ec-rsa", Key="foreign")["Body"].read() == data
    raw = backend_client(st.backend_url)
    raw.copy_object(Bucket="s3ec-rsa-off", Key="foreign", CopySource={"Bucket": "s3ec-rsa", "Key": "foreign"})
    with pytest.raises(ClientError) as err:
        st.client().get_object(Bucket="s3ec-rsa-off", Key="foreign")
    assert err.value.response["Error"]["Code"] == "InvalidObjectState"
    assert "s3ec_unbound_reads" in err.value.response["Error"]["Message"]


def _java_style_rsa_v2(st: Stack, key: str, data: bytes, *, cipher_name: str = s3ec.CEK_ALG_V2) -> None:
    """An S3EC V2 object as the Java client's RsaOaepKeyring writes it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    public: Any = load_pem_public_key(_store(st).public_key_pem("rsa"))
    data_key, iv = os.urandom(32), os.urandom(12)
    pseudo = bytes([32]) + data_key + cipher_name.encode()
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    meta = {
        "x-amz-key-v2": base64.b64encode(public.encrypt(pseudo, oaep)).decode(),
        "x-amz-wrap-alg": "RSA-OAEP-SHA1",
        "x-amz-cek-alg": "AES/GCM/NoPadding",
        "x-amz-iv": base64.b64encode(iv).decode(),
        "x-amz-tag-len": "128",
        "x-amz-matdesc": "{}",
    }
    body = AESGCM(data_key).encrypt(iv, data, None)
    backend_client(st.backend_url).put_object(Bucket="s3ec-rsa", Key=key, Body=body, Metadata=meta)


def test_rsa_oaep_sha1_objects_read_through_sealgate(st: Stack) -> None:
    data = os.urandom(100_000)
    _java_style_rsa_v2(st, "rsa/ok", data)
    assert st.client().get_object(Bucket="s3ec-rsa", Key="rsa/ok")["Body"].read() == data
    assert st.client().head_object(Bucket="s3ec-rsa", Key="rsa/ok")["ContentLength"] == len(data)
    # The pseudo data key names the content cipher; another name is refused.
    _java_style_rsa_v2(st, "rsa/other-cipher", data, cipher_name="AES/CBC/PKCS5Padding")
    with pytest.raises(ClientError) as err:
        st.client().get_object(Bucket="s3ec-rsa", Key="rsa/other-cipher")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 400


def test_local_key_use_that_cannot_be_audited_does_not_happen(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    from proxy.server.app import GATEWAY

    audit_path = tmp_path / "audit.jsonl"
    stack = start_stack(tmp_path, moto_url, tls_files, extra=RULES + f'\n[audit]\npath = "{audit_path}"\n')
    try:
        s3 = stack.client()
        s3.create_bucket(Bucket="s3ec-local")
        s3.put_object(Bucket="s3ec-local", Key="seen", Body=b"audited")
        lines = [json.loads(line) for line in audit_path.read_text().splitlines()]
        assert any(r.get("reason") == "s3ec AES/GCM" and r.get("operation") == "generate" for r in lines), lines
        # The audit log fails (here: closed under the running gateway): no more key uses.
        stack.gate.running.runner.app[GATEWAY].audit.close()
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket="s3ec-local", Key="unseen", Body=b"x")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        with pytest.raises(ClientError):
            backend_client(moto_url).head_object(Bucket="s3ec-local", Key="unseen")
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket="s3ec-local", Key="seen")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        stack.gate.stop()


def test_keys_that_require_sender_signatures_take_no_s3ec_objects(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """S3EC objects carry no sender signature, so under a key whose readers require one
    ([[keys]] trusted_signers) none is served, and sealgate writes none."""
    from proxy.crypto.signing import generate_seed, public_key, public_text
    from proxy.server.run import reload_config

    rule = '\n[[buckets]]\nname = "s3ec-signed"\nformat = "s3ec-v3"\n'
    open_keys = '\n[[keys]]\nid = "default"\nencrypt = ["tester"]\ndecrypt = ["tester"]\n'
    st = start_stack(tmp_path, moto_url, tls_files, extra=rule + open_keys)
    try:
        s3, raw = st.client(), backend_client(moto_url)
        s3.create_bucket(Bucket="s3ec-signed")
        s3.put_object(Bucket="s3ec-signed", Key="old", Body=b"written before signatures were required")
        assert s3.get_object(Bucket="s3ec-signed", Key="old")["Body"].read().startswith(b"written")
        signer = public_text(public_key(generate_seed()))
        cfg = tmp_path / "sealgate.toml"
        cfg.write_text(
            cfg.read_text().replace('decrypt = ["tester"]\n', f'decrypt = ["tester"]\ntrusted_signers = ["{signer}"]\n')
        )
        assert reload_config(st.gate.running, cfg)
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket="s3ec-signed", Key="old")
        assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket="s3ec-signed", Key="new", Body=b"x")
        assert err.value.response["Error"]["Code"] == "InvalidRequest"
        assert "trusted_signers" in err.value.response["Error"]["Message"]
        assert [o["Key"] for o in raw.list_objects_v2(Bucket="s3ec-signed").get("Contents", [])] == ["old"]
    finally:
        st.gate.stop()
