"""sealgate with its master keys on a PKCS#11 token (SoftHSM2), end to end over TLS with boto3:
keys made and rotated with `sealgate keys`, context binding, failing closed, and rewrap between
the local keyring and the token without re-encrypting bodies."""

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
from tests.unit.kms.hsm_support import SoftHsm, needs_softhsm, softhsm

pytestmark = needs_softhsm

PIN_ENV = "SEALGATE_TEST_PKCS11_PIN"


def kms_section(hsm: SoftHsm, token: str = "sg-e2e", key: str = "sealgate-master", pin_env: str = PIN_ENV) -> str:
    return (
        f'provider = "pkcs11"\npkcs11_module = "{hsm.module}"\npkcs11_token_label = "{token}"\n'
        f'pkcs11_pin_env = "{pin_env}"\ndefault_key = "{key}"\n'
    )


@pytest.fixture(scope="module")
def hsm() -> Iterator[SoftHsm]:
    found = softhsm()
    os.environ[PIN_ENV] = found.pin
    os.environ["SEALGATE_TEST_WRONG_PIN"] = "0000-wrong"
    yield found
    os.environ.pop(PIN_ENV, None)
    os.environ.pop("SEALGATE_TEST_WRONG_PIN", None)


def sealgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=120)


def readyz(st: Stack) -> tuple[int, bytes]:
    r = urllib3.PoolManager(ca_certs=str(st.ca_path)).request("GET", st.gate.url + "/-/readyz")
    return r.status, r.data


@pytest.fixture(scope="module")
def token_stack(
    hsm: SoftHsm, moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("pkcs11")
    # Object-scoped data keys (no cache): each wrapped key is bound to its object's name by the token.
    cfg = write_config(
        d, backend=moto_url, tls=tls_files, port=free_port(), kms=kms_section(hsm) + "[kms.cache]\nenabled = false\n"
    )
    r = sealgate("keys", "create", "sealgate-master", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "created key sealgate-master on PKCS#11 token sg-e2e: now version 1" in r.stdout
    st = start_stack(d, moto_url, tls_files, kms=kms_section(hsm) + "[kms.cache]\nenabled = false\n")
    yield st
    st.gate.stop()


def test_objects_sealed_by_the_token_and_rotation(token_stack: Stack) -> None:
    st = token_stack
    s3 = st.client()
    s3.create_bucket(Bucket="hsm-a")
    body = os.urandom(200_000)
    s3.put_object(Bucket="hsm-a", Key="one", Body=body)
    assert s3.get_object(Bucket="hsm-a", Key="one")["Body"].read() == body
    meta = st.backend().head_object(Bucket="hsm-a", Key="one")["Metadata"]
    assert meta["sg-kr"] == "pkcs11:sealgate-master:1"
    assert readyz(st) == (200, b"ready\n")

    r = sealgate("keys", "rotate", "sealgate-master", "--config", str(st.dir / "sealgate.toml"))
    assert r.returncode == 0, r.stderr
    assert "now version 2" in r.stdout
    s3.put_object(Bucket="hsm-a", Key="two", Body=b"after rotation")
    assert st.backend().head_object(Bucket="hsm-a", Key="two")["Metadata"]["sg-kr"] == "pkcs11:sealgate-master:2"
    assert s3.get_object(Bucket="hsm-a", Key="one")["Body"].read() == body  # version 1 still unwraps
    listed = sealgate("keys", "list", "--config", str(st.dir / "sealgate.toml"))
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("sealgate-master"))
    assert row.split()[1:3] == ["1,2", "2"]
    listed = sealgate("keys", "list", "--config", str(st.dir / "sealgate.toml"), "--json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    (key,) = [k for k in document["keys"] if k["id"] == "sealgate-master"]
    assert document["provider"] == "pkcs11" and (key["versions"], key["current_version"]) == ([1, 2], 2)
    assert (key["encrypts"], key["decrypts"]) == (True, True)
    assert sealgate("keys", "rotate", "--due", "--config", str(st.dir / "sealgate.toml")).returncode == 2


def test_a_wrapped_key_moved_to_another_object_does_not_unwrap(token_stack: Stack) -> None:
    st = token_stack
    s3 = st.client()
    s3.create_bucket(Bucket="hsm-b")
    data = os.urandom(5000)
    s3.put_object(Bucket="hsm-b", Key="a", Body=data)
    raw = st.backend()
    obj = raw.get_object(Bucket="hsm-b", Key="a")
    # The whole object, body and envelope, stored under another name: the token's GCM tag over
    # the encryption context (which names the object) fails.
    raw.put_object(Bucket="hsm-b", Key="moved", Body=obj["Body"].read(), Metadata=obj["Metadata"])
    assert_refused(st, "hsm-b", "moved", data)
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="hsm-b", Key="moved")
    assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"
    # A reference naming a key the token does not have: a key that may not be used here.
    meta = {**obj["Metadata"], "sg-kr": "pkcs11:other-key:1"}
    raw.put_object(Bucket="hsm-b", Key="a", Body=raw.get_object(Bucket="hsm-b", Key="a")["Body"].read(), Metadata=meta)
    assert_refused(st, "hsm-b", "a", data, "AccessDenied")


@pytest.mark.parametrize(
    ("case", "token", "pin_env", "status", "code"),
    [
        ("wrong pin", "sg-pin", "SEALGATE_TEST_WRONG_PIN", 403, "AccessDenied"),
        ("no such token", "no-such-token", PIN_ENV, 503, "ServiceUnavailable"),
    ],
)
def test_fails_closed_and_readyz_says_so(
    hsm: SoftHsm,
    moto_url: str,
    tls_files: dict[str, Path],
    tmp_path: Path,
    case: str,
    token: str,
    pin_env: str,
    status: int,
    code: str,
) -> None:
    st = start_stack(tmp_path, moto_url, tls_files, kms=kms_section(hsm, token=token, pin_env=pin_env))
    try:
        ready, text = readyz(st)
        assert ready == 503 and b"PKCS#11 token" in text
        assert b"0000-wrong" not in text and hsm.pin.encode() not in text
        s3 = st.client()
        s3.create_bucket(Bucket="hsm-fail")
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket="hsm-fail", Key="k", Body=b"secret")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        assert err.value.response["Error"]["Code"] == code
        assert "Contents" not in backend_client(moto_url).list_objects_v2(Bucket="hsm-fail")  # nothing stored
    finally:
        st.gate.stop()


def test_an_unset_pin_variable_is_a_one_line_error(
    hsm: SoftHsm, moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path, backend=moto_url, tls=tls_files, port=free_port(), kms=kms_section(hsm, pin_env="SEALGATE_NO_PIN")
    )
    r = sealgate("keys", "list", "--config", str(cfg))
    assert r.returncode == 2 and "environment variable SEALGATE_NO_PIN is unset" in r.stderr


def test_rewrap_from_local_to_the_token_and_back(
    hsm: SoftHsm, token_stack: Stack, moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    st = start_stack(tmp_path, moto_url, tls_files)  # a local keyring with key "default"
    local_kms = (
        f'provider = "local"\nkeyring = "{tmp_path / "keyring"}"\npassphrase_file = "{tmp_path / "keyring"}.pass"\n'
        'default_key = "default"\n'
    )
    to_token = tmp_path / "to-token"
    to_token.mkdir()
    to_local = tmp_path / "to-local"
    to_local.mkdir()
    try:
        s3 = st.client()
        s3.create_bucket(Bucket="hsm-move")
        bodies = {f"o/{i}": os.urandom(1000 + i) for i in range(5)}
        for k, v in bodies.items():
            s3.put_object(Bucket="hsm-move", Key=k, Body=v)
        raw = backend_client(moto_url)
        digest = {
            k: hashlib.sha256(raw.get_object(Bucket="hsm-move", Key=k)["Body"].read()).hexdigest() for k in bodies
        }

        token_cfg = write_config(
            to_token,
            backend=moto_url,
            tls=tls_files,
            port=free_port(),
            kms=kms_section(hsm) + "[kms.previous]\n" + local_kms,
        )
        r = sealgate("rewrap", "--config", str(token_cfg), "--bucket", "hsm-move", "--to-key", "sealgate-master")
        assert r.returncode == 0, r.stdout + r.stderr
        for k in bodies:
            obj = raw.get_object(Bucket="hsm-move", Key=k)
            assert obj["Metadata"]["sg-kr"].startswith("pkcs11:sealgate-master:")
            assert hashlib.sha256(obj["Body"].read()).hexdigest() == digest[k]  # bodies untouched
        # The token's sealgate reads them (its config has no previous keyring).
        for k, v in bodies.items():
            assert token_stack.client().get_object(Bucket="hsm-move", Key=k)["Body"].read() == v

        back_cfg = write_config(
            to_local,
            backend=moto_url,
            tls=tls_files,
            port=free_port(),
            kms=local_kms + "[kms.previous]\n" + kms_section(hsm),
        )
        r = sealgate("rewrap", "--config", str(back_cfg), "--bucket", "hsm-move", "--to-key", "default")
        assert r.returncode == 0, r.stdout + r.stderr
        for k, v in bodies.items():
            obj = raw.get_object(Bucket="hsm-move", Key=k)
            assert obj["Metadata"]["sg-kr"] == "local:default:1"
            assert hashlib.sha256(obj["Body"].read()).hexdigest() == digest[k]
            assert s3.get_object(Bucket="hsm-move", Key=k)["Body"].read() == v
    finally:
        st.gate.stop()
