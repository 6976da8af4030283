"""sealgate with its master keys in a KMIP key manager (PyKMIP's server, mutual TLS), end to end
over TLS with boto3: keys made and rotated with `sealgate keys`, context binding, the key
manager going away (503, readyz not ready), and rewrap from the local keyring into it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from botocore.exceptions import ClientError

from tests.conftest import Stack, backend_client, free_port, start_stack, write_config
from tests.integration.test_tamper import assert_refused
from tests.unit.kms.hsm_support import KmipServer, needs_pykmip, start_kmip_server

pytestmark = needs_pykmip


def kms_section(server: KmipServer, key: str = "sealgate-master") -> str:
    return (
        f'provider = "kmip"\nendpoint = "{server.endpoint}"\nkmip_ca = "{server.ca}"\n'
        f'kmip_client_cert = "{server.client_cert}"\nkmip_client_key = "{server.client_key}"\n'
        f'default_key = "{key}"\ntimeout_seconds = 5\n'
    )


def sealgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=120)


def readyz(st: Stack) -> tuple[int, bytes]:
    r = urllib3.PoolManager(ca_certs=str(st.ca_path)).request("GET", st.gate.url + "/-/readyz")
    return r.status, r.data


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmipServer]:
    s = start_kmip_server(tmp_path_factory.mktemp("kmip-e2e"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def kmip_stack(
    server: KmipServer, moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("kmip-stack")
    kms = kms_section(server) + "[kms.cache]\nenabled = false\n"
    cfg = write_config(d, backend=moto_url, tls=tls_files, port=free_port(), kms=kms)
    r = sealgate("keys", "create", "sealgate-master", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "created key sealgate-master in the KMIP key manager" in r.stdout
    st = start_stack(d, moto_url, tls_files, kms=kms)
    yield st
    st.gate.stop()


def test_objects_sealed_by_the_key_manager_and_rotation(kmip_stack: Stack) -> None:
    st = kmip_stack
    s3 = st.client()
    s3.create_bucket(Bucket="kmip-a")
    body = os.urandom(150_000)
    s3.put_object(Bucket="kmip-a", Key="one", Body=body)
    assert s3.get_object(Bucket="kmip-a", Key="one")["Body"].read() == body
    first = st.backend().head_object(Bucket="kmip-a", Key="one")["Metadata"]["sg-kr"]
    assert first.startswith("kmip:sealgate-master:")
    assert readyz(st) == (200, b"ready\n")

    cfg = str(st.dir / "sealgate.toml")
    r = sealgate("keys", "rotate", "sealgate-master", "--config", cfg)
    assert r.returncode == 0, r.stderr
    s3.put_object(Bucket="kmip-a", Key="two", Body=b"after rotation")
    second = st.backend().head_object(Bucket="kmip-a", Key="two")["Metadata"]["sg-kr"]
    assert second.startswith("kmip:sealgate-master:") and second != first
    assert r.stdout.strip().endswith(second.rsplit(":", 1)[1])
    assert s3.get_object(Bucket="kmip-a", Key="one")["Body"].read() == body  # the older object still unwraps
    listed = sealgate("keys", "list", "--config", cfg)
    assert listed.returncode == 0, listed.stderr
    uids = [line.split()[1] for line in listed.stdout.splitlines()[1:]]
    assert uids == [second.rsplit(":", 1)[1], first.rsplit(":", 1)[1]]
    listed = sealgate("keys", "list", "--config", cfg, "--json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert document["provider"] == "kmip" and [k["unique_id"] for k in document["keys"]] == uids
    assert {(k["id"], k["active"], k["encrypts"], k["decrypts"]) for k in document["keys"]} == {
        ("sealgate-master", True, True, True)
    }


def test_a_wrapped_key_moved_to_another_object_does_not_unwrap(kmip_stack: Stack) -> None:
    st = kmip_stack
    s3 = st.client()
    s3.create_bucket(Bucket="kmip-b")
    data = os.urandom(5000)
    s3.put_object(Bucket="kmip-b", Key="a", Body=data)
    raw = st.backend()
    obj = raw.get_object(Bucket="kmip-b", Key="a")
    raw.put_object(Bucket="kmip-b", Key="moved", Body=obj["Body"].read(), Metadata=obj["Metadata"])
    assert_refused(st, "kmip-b", "moved", data)
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="kmip-b", Key="moved")
    assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"


def test_key_manager_down_is_503_and_not_ready(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    server = start_kmip_server(tmp_path / "kmip")
    kms = kms_section(server) + "[kms.cache]\nenabled = false\n"
    cfg = write_config(tmp_path, backend=moto_url, tls=tls_files, port=free_port(), kms=kms)
    try:
        assert sealgate("keys", "create", "sealgate-master", "--config", str(cfg)).returncode == 0
    except BaseException:
        server.stop()
        raise
    st = start_stack(tmp_path, moto_url, tls_files, kms=kms)
    try:
        s3 = st.client()
        s3.create_bucket(Bucket="kmip-down")
        s3.put_object(Bucket="kmip-down", Key="k", Body=b"before")
        server.stop()
        ready, text = readyz(st)
        assert ready == 503 and b"KMIP" in text
        for call in (
            lambda: s3.get_object(Bucket="kmip-down", Key="k"),
            lambda: s3.put_object(Bucket="kmip-down", Key="new", Body=b"x"),
        ):
            with pytest.raises(ClientError) as err:
                call()
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert err.value.response["Error"]["Code"] == "ServiceUnavailable"
    finally:
        st.gate.stop()
        server.stop()


def test_rewrap_from_local_into_the_key_manager(
    server: KmipServer, kmip_stack: Stack, moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    st = start_stack(tmp_path, moto_url, tls_files)  # a local keyring with key "default"
    local_kms = (
        f'provider = "local"\nkeyring = "{tmp_path / "keyring"}"\npassphrase_file = "{tmp_path / "keyring"}.pass"\n'
        'default_key = "default"\n'
    )
    (tmp_path / "to-kmip").mkdir()
    try:
        s3 = st.client()
        s3.create_bucket(Bucket="kmip-move")
        bodies = {f"o/{i}": os.urandom(700 + i) for i in range(4)}
        for k, v in bodies.items():
            s3.put_object(Bucket="kmip-move", Key=k, Body=v)
        raw = backend_client(moto_url)
        digest = {
            k: hashlib.sha256(raw.get_object(Bucket="kmip-move", Key=k)["Body"].read()).hexdigest() for k in bodies
        }
        cfg = write_config(
            tmp_path / "to-kmip",
            backend=moto_url,
            tls=tls_files,
            port=free_port(),
            kms=kms_section(server) + "[kms.previous]\n" + local_kms,
        )
        r = sealgate("rewrap", "--config", str(cfg), "--bucket", "kmip-move", "--to-key", "sealgate-master")
        assert r.returncode == 0, r.stdout + r.stderr
        for k, v in bodies.items():
            obj = raw.get_object(Bucket="kmip-move", Key=k)
            assert obj["Metadata"]["sg-kr"].startswith("kmip:sealgate-master:")
            assert hashlib.sha256(obj["Body"].read()).hexdigest() == digest[k]
            assert kmip_stack.client().get_object(Bucket="kmip-move", Key=k)["Body"].read() == v
    finally:
        st.gate.stop()
