"""Failures lose nothing and leak nothing: KMS down, backend down, client gone mid-upload."""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Stack, backend_client, free_port, start_stack
from tests.signing import sign


def test_kms_down_fails_closed(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    kms = (
        f'provider = "aws-kms"\nregion = "us-east-1"\nendpoint = "{dead}"\ndefault_key = "alias/none"\n'
        'access_key_id = "testing"\nsecret_access_key = "testing"\n'
    )
    st = start_stack(tmp_path, moto_url, tls_files, kms=kms)
    try:
        backend_client(moto_url).create_bucket(Bucket="kms-down")
        s3 = st.client()
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket="kms-down", Key="k", Body=b"secret data")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        with pytest.raises(ClientError) as err:
            backend_client(moto_url).head_object(Bucket="kms-down", Key="k")
        assert err.value.response["Error"]["Code"] == "404"  # never written, not merely unreadable
    finally:
        st.gate.stop()


def test_aws_kms_round_trip(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    import boto3

    kms_client = boto3.client(
        "kms",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    key_id = kms_client.create_key()["KeyMetadata"]["KeyId"]
    kms = (
        f'provider = "aws-kms"\nregion = "us-east-1"\nendpoint = "{moto_url}"\n'
        f'default_key = "{key_id}"\naccess_key_id = "testing"\nsecret_access_key = "testing"\n'
    )
    st = start_stack(tmp_path, moto_url, tls_files, kms=kms)
    try:
        s3 = st.client()
        s3.create_bucket(Bucket="kms-rt")
        data = os.urandom(200_000)
        s3.put_object(Bucket="kms-rt", Key="k", Body=data)
        assert s3.get_object(Bucket="kms-rt", Key="k")["Body"].read() == data
        meta = backend_client(moto_url).head_object(Bucket="kms-rt", Key="k")["Metadata"]
        assert key_id in meta["sg-kr"]
        # Moving the object on the backend: KMS refuses the context of the new name.
        raw = backend_client(moto_url).get_object(Bucket="kms-rt", Key="k")
        backend_client(moto_url).put_object(
            Bucket="kms-rt", Key="moved", Body=raw["Body"].read(), Metadata=raw["Metadata"]
        )
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket="kms-rt", Key="moved")["Body"].read()
        assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"  # not a 503 or a NoSuchKey
        # A copy through sealgate re-wraps the data key with KMS Encrypt for the new name.
        s3.copy_object(Bucket="kms-rt", Key="copied", CopySource={"Bucket": "kms-rt", "Key": "k"})
        assert s3.get_object(Bucket="kms-rt", Key="copied")["Body"].read() == data
    finally:
        st.gate.stop()


def test_backend_down(tls_files: dict[str, Path], tmp_path: Path) -> None:
    st = start_stack(tmp_path, f"http://127.0.0.1:{free_port()}", tls_files)
    try:
        with pytest.raises(ClientError) as err:
            st.client().put_object(Bucket="nobackend", Key="k", Body=b"x")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] in (502, 503)
        with pytest.raises(ClientError) as err:
            st.client().get_object(Bucket="nobackend", Key="k")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] in (502, 503)
    finally:
        st.gate.stop()


def test_client_disconnect_mid_upload_stores_nothing(stack: Stack, bucket: str) -> None:
    port = stack.gate.running.tls_port
    url = f"https://localhost:{port}/{bucket}/half"
    total = 3 * 1024 * 1024
    h = sign("PUT", url, {"Content-Length": str(total), "Host": f"localhost:{port}"})
    ctx = ssl.create_default_context(cafile=str(stack.ca_path))
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        head = f"PUT /{bucket}/half HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        tls.sendall(head.encode())
        tls.sendall(os.urandom(total // 2))
        time.sleep(0.5)
    time.sleep(1.0)
    with pytest.raises(ClientError) as err:
        stack.backend().head_object(Bucket=bucket, Key="half")
    assert err.value.response["Error"]["Code"] == "404"  # never written, not merely unreadable
    # and sealgate still serves
    stack.client().put_object(Bucket=bucket, Key="after", Body=b"fine")
    assert stack.client().get_object(Bucket=bucket, Key="after")["Body"].read() == b"fine"


def test_no_data_key_or_plaintext_on_backend(stack: Stack, bucket: str) -> None:
    import asyncio
    import base64

    from proxy.crypto.format import Envelope, encryption_context
    from proxy.kms.keystore import LocalKeyStore
    from proxy.kms.local import LocalKeyring
    from tests.conftest import PASSPHRASE

    data = b"TOP-SECRET-PAYLOAD " * 5000
    stack.client().put_object(Bucket=bucket, Key="secret", Body=data, Metadata={"x": "hidden-value"})
    obj = stack.backend().get_object(Bucket=bucket, Key="secret")
    body = obj["Body"].read()
    meta = obj["Metadata"]
    env = Envelope.from_metadata(meta)
    store = LocalKeyStore.open(stack.dir / "keyring", PASSPHRASE.encode())
    dk = asyncio.run(
        LocalKeyring(store).decrypt_data_key(env.key_ref, env.wrapped_key, encryption_context(bucket, "secret"))
    )
    everything = body + repr(meta).encode()
    for needle in (b"TOP-SECRET", dk, base64.b64encode(dk), dk.hex().encode(), b"hidden-value"):
        assert needle not in everything


def test_logs_hold_no_secrets(stack: Stack, bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from tests.conftest import BACKEND_SECRET, CLIENT_SECRET, PASSPHRASE, client_for

    caplog.set_level(logging.DEBUG)
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="logged", Body=b"LOGGED-PLAINTEXT", Metadata={"m": "LOGGED-META"})
    s3.get_object(Bucket=bucket, Key="logged")["Body"].read()
    with pytest.raises(ClientError) as err:
        client_for(stack.gate.url, stack.ca_path, secret="wrong-secret-wrong-secret-0").get_object(
            Bucket=bucket, Key="logged"
        )
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("sealgate", "proxy", "aiohttp")))
    assert "logged" in text  # the access log is there ...
    for secret in (CLIENT_SECRET, BACKEND_SECRET, PASSPHRASE, "LOGGED-PLAINTEXT", "LOGGED-META"):
        assert secret not in text  # ... and holds none of these


def test_plain_http_listener_only_when_asked(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import urllib3

    from tests.conftest import SealgateThread, write_config

    plain = free_port()
    cfg = write_config(
        tmp_path,
        backend=moto_url,
        tls=tls_files,
        port=free_port(),
        server_extra=f'plain_http_listen = "127.0.0.1:{plain}"',
    )
    caplog.set_level(logging.WARNING)
    gate = SealgateThread(cfg).start()
    try:
        assert gate.running.plain_port == plain
        r = urllib3.PoolManager().request("GET", f"http://127.0.0.1:{plain}/-/healthz")
        assert r.status == 200
        assert any("plain-HTTP listener" in rec.getMessage() for rec in caplog.records)
    finally:
        gate.stop()


def test_stalled_upload_is_cut_off_and_stores_nothing(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    from tests.conftest import SealgateThread, write_config

    cfg = write_config(
        tmp_path, backend=moto_url, tls=tls_files, port=free_port(), server_extra="body_stall_timeout_seconds = 1"
    )
    gate = SealgateThread(cfg).start()
    try:
        port = gate.running.tls_port
        backend_client(moto_url).create_bucket(Bucket="stall")
        h = sign("PUT", f"https://localhost:{port}/stall/k", {"Content-Length": "100000", "Host": f"localhost:{port}"})
        ctx = ssl.create_default_context(cafile=str(tls_files["ca"]))
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(
                ("PUT /stall/k HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode()
            )
            tls.sendall(b"x" * 1000)
            tls.settimeout(10)
            answer = tls.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400") and b"RequestTimeout" in answer
        with pytest.raises(ClientError) as err:
            backend_client(moto_url).head_object(Bucket="stall", Key="k")
        assert err.value.response["Error"]["Code"] == "404"  # never written, not merely unreadable
    finally:
        gate.stop()


def test_oversized_headers_refused(stack: Stack) -> None:
    import urllib3

    http = urllib3.PoolManager(ca_certs=str(stack.ca_path), retries=False)
    r = http.request("GET", stack.gate.url + "/-/healthz", headers={"X-Big": "a" * 20000})
    assert r.status in (400, 431)
    assert http.request("GET", stack.gate.url + "/-/healthz").status == 200


async def test_backend_credentials_from_the_default_chain(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.store.backend import Backend, BackendSettings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "chainkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chainsecret")
    backend = Backend(BackendSettings(endpoint=moto_url, region="us-east-1", ssl=False))
    await backend.start()
    try:
        resp = await backend.request("GET", None)
        assert resp.status == 200
        assert "Credential=chainkey/" in dict(resp.raw.request_headers)["Authorization"]
        resp.release()
    finally:
        await backend.close()
