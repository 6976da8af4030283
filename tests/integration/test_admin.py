"""Admin endpoints: key metadata and rotation over SigV4, only for identities with `admin` rights."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from defusedxml import ElementTree

from proxy.audit import verify_file
from tests.conftest import PASSPHRASE, backend_client, start_stack
from tests.signing import send, sign

ADMIN = ("SGKEYADMIN0000000001", "keyadmin-secret-00000001")

#: A client "keyadmin" with `admin` on the default key (which "tester" may use).
ADMIN_EXTRA = f"""
[[clients]]
name = "keyadmin"
access_key_id = "{ADMIN[0]}"
secret_access_key = "{ADMIN[1]}"

[[keys]]
id = "default"
encrypt = ["tester"]
decrypt = ["tester"]
admin = ["keyadmin"]
"""

EXTRA = (
    ADMIN_EXTRA
    + """
[audit]
path = "{audit}"
"""
)


def _call(st_url: str, ca: Path, method: str, path: str, creds: tuple[str, str] | None = None) -> tuple[int, bytes]:
    url = st_url + path
    headers = sign(method, url, {}, akid=creds[0], secret=creds[1]) if creds else sign(method, url, {})
    resp = send(ca, method, url, headers)
    return resp.status, resp.data


def test_admin_rotates_and_non_admin_is_refused(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    from proxy.kms.keystore import LocalKeyStore

    audit = tmp_path / "audit.jsonl"
    st = start_stack(tmp_path, moto_url, tls_files, extra=EXTRA.format(audit=audit))
    try:
        s3, raw = st.client(), backend_client(moto_url)
        s3.create_bucket(Bucket="admin-rot")
        s3.put_object(Bucket="admin-rot", Key="before", Body=b"old version")
        assert raw.head_object(Bucket="admin-rot", Key="before")["Metadata"]["sg-kr"] == "local:default:1"

        # A client that may encrypt and decrypt, but not administer: 403, and nothing rotated.
        status, body = _call(st.gate.url, st.ca_path, "POST", "/-/keys/default/rotate")
        assert status == 403
        assert ElementTree.fromstring(body).findtext("Code") == "AccessDenied"
        assert LocalKeyStore.open(tmp_path / "keyring", PASSPHRASE.encode()).list_keys()[0].versions == 1
        # Nor list keys: it may administer none, so it is refused outright.
        status, body = _call(st.gate.url, st.ca_path, "GET", "/-/keys")
        assert status == 403
        assert ElementTree.fromstring(body).findtext("Code") == "AccessDenied"
        # Unsigned or wrongly signed requests never reach the handler.
        assert send(st.ca_path, "GET", st.gate.url + "/-/keys", {}).status == 403
        assert _call(st.gate.url, st.ca_path, "GET", "/-/keys", (ADMIN[0], "wrong-secret-0000000000"))[0] == 403
        # A body (sized or chunked) is refused before anything happens.
        url = st.gate.url + "/-/keys/default/rotate"
        for body in (b"x", iter([b"x"])):
            resp = send(st.ca_path, "POST", url, sign("POST", url, {}, akid=ADMIN[0], secret=ADMIN[1]), body)
            assert resp.status == 400, resp.data
        # The admin may not administer a key it has no grant on (or that does not exist).
        assert _call(st.gate.url, st.ca_path, "POST", "/-/keys/other/rotate", ADMIN)[0] == 403

        status, body = _call(st.gate.url, st.ca_path, "GET", "/-/keys", ADMIN)
        assert status == 200
        (key,) = json.loads(body)["keys"]
        assert (key["id"], key["versions"], key["current_version"]) == ("default", 1, 1)
        status, body = _call(st.gate.url, st.ca_path, "POST", "/-/keys/default/rotate", ADMIN)
        assert status == 200, body
        assert json.loads(body)["key"]["current_version"] == 2
        assert b"material" not in body

        time.sleep(1.1)  # every process on the keyring file picks up new versions within a second
        s3.put_object(Bucket="admin-rot", Key="after", Body=b"new version")
        assert raw.head_object(Bucket="admin-rot", Key="after")["Metadata"]["sg-kr"] == "local:default:2"
        assert s3.get_object(Bucket="admin-rot", Key="before")["Body"].read() == b"old version"
        assert s3.get_object(Bucket="admin-rot", Key="after")["Body"].read() == b"new version"

        # Concurrent rotations each get a version of their own: none is lost or made twice.
        with ThreadPoolExecutor(5) as pool:
            answers = list(
                pool.map(lambda _: _call(st.gate.url, st.ca_path, "POST", "/-/keys/default/rotate", ADMIN), range(5))
            )
        assert [status for status, _ in answers] == [200] * 5
        assert sorted(json.loads(body)["key"]["current_version"] for _, body in answers) == [3, 4, 5, 6, 7]
        assert LocalKeyStore.open(tmp_path / "keyring", PASSPHRASE.encode()).list_keys()[0].versions == 7
    finally:
        st.gate.stop()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    admin_ops = [
        (r["operation"], r["outcome"], r["identity"], r["key_id"], r["key_version"])
        for r in records
        if r["operation"] in ("rotate", "list-keys")
    ]
    admin_ops[5:] = sorted(admin_ops[5:])  # the concurrent rotations, in any order
    assert admin_ops == [
        ("rotate", "denied", "tester", "default", None),
        ("list-keys", "denied", "tester", None, None),
        ("rotate", "denied", "keyadmin", "other", None),
        ("list-keys", "allowed", "keyadmin", None, None),
        ("rotate", "allowed", "keyadmin", "default", "local:default:2"),
        *sorted(("rotate", "allowed", "keyadmin", "default", f"local:default:{v}") for v in range(3, 8)),
    ]
    assert all(r["request_id"] and r["source"] for r in records if r["operation"] == "rotate")
    assert verify_file(audit).ok


def _code(body: bytes) -> str | None:
    return ElementTree.fromstring(body).findtext("Code")


def test_admin_requests_derive_no_keyring_key(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    """scrypt (tens of ms of CPU) runs at start-up only: never for a refusal, nor per admin call."""
    from proxy.kms import keystore
    from proxy.kms.keystore import LocalKeyStore

    st = start_stack(tmp_path, moto_url, tls_files, extra=EXTRA.format(audit=tmp_path / "audit.jsonl"))
    try:
        url, ca = st.gate.url, st.ca_path
        s3, raw = st.client(), backend_client(moto_url)
        s3.create_bucket(Bucket="admin-cost")
        started = keystore.derivations
        # "tester" may encrypt and decrypt but administers nothing: refused from the config alone.
        for _ in range(20):
            status, body = _call(url, ca, "GET", "/-/keys")
            assert (status, _code(body)) == (403, "AccessDenied")
        for _ in range(5):
            status, body = _call(url, ca, "POST", "/-/keys/default/rotate")
            assert (status, _code(body)) == (403, "AccessDenied")
        assert keystore.derivations == started

        for _ in range(20):
            status, body = _call(url, ca, "GET", "/-/keys", ADMIN)
            assert status == 200 and [k["versions"] for k in json.loads(body)["keys"]] == [1]
        status, body = _call(url, ca, "POST", "/-/keys/default/rotate", ADMIN)
        assert status == 200 and json.loads(body)["key"]["current_version"] == 2
        assert keystore.derivations - started <= 1
        # The rotating process seals under the new version at once.
        s3.put_object(Bucket="admin-cost", Key="v2", Body=b"two")
        assert raw.head_object(Bucket="admin-cost", Key="v2")["Metadata"]["sg-kr"] == "local:default:2"

        # Another process (`sealgate keys rotate`) changes the file: listings show it at once,
        # new objects use it within a second, and still no key is derived here for it.
        other = LocalKeyStore.open(tmp_path / "keyring", PASSPHRASE.encode())
        other.rotate_key("default")
        other.save()
        mark = keystore.derivations
        status, body = _call(url, ca, "GET", "/-/keys", ADMIN)
        assert status == 200 and json.loads(body)["keys"][0]["current_version"] == 3
        time.sleep(1.1)
        s3.put_object(Bucket="admin-cost", Key="v3", Body=b"three")
        assert raw.head_object(Bucket="admin-cost", Key="v3")["Metadata"]["sg-kr"] == "local:default:3"
        status, body = _call(url, ca, "POST", "/-/keys/default/rotate", ADMIN)
        assert status == 200 and json.loads(body)["key"]["current_version"] == 4
        assert keystore.derivations == mark
        assert s3.get_object(Bucket="admin-cost", Key="v2")["Body"].read() == b"two"
    finally:
        st.gate.stop()
    assert LocalKeyStore.open(tmp_path / "keyring", PASSPHRASE.encode()).list_keys()[0].versions == 4


def test_unknown_access_key_is_refused_first(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    """An access key id sealgate does not know gets InvalidAccessKeyId before any backend or keyring call."""
    from proxy.kms import keystore

    audit = tmp_path / "audit.jsonl"
    stranger = ("SGUNKNOWNCLIENT00001", "unknown-client-secret-0001")
    st = start_stack(tmp_path, moto_url, tls_files, extra=EXTRA.format(audit=audit))
    try:
        url, ca = st.gate.url, st.ca_path
        raw = backend_client(moto_url)
        st.client().create_bucket(Bucket="admin-known")
        started = keystore.derivations
        for method, path in (
            ("PUT", "/admin-stranger"),
            ("PUT", "/admin-known/k"),
            ("GET", "/admin-known/k"),
            ("HEAD", "/admin-known"),
            ("GET", "/-/keys"),
            ("POST", "/-/keys/default/rotate"),
        ):
            status, body = _call(url, ca, method, path, stranger)
            assert status == 403, (method, path)
            assert method == "HEAD" or _code(body) == "InvalidAccessKeyId", (method, path, body)
        assert keystore.derivations == started
    finally:
        st.gate.stop()
    assert "admin-stranger" not in {b["Name"] for b in raw.list_buckets()["Buckets"]}
    assert raw.list_objects_v2(Bucket="admin-known").get("KeyCount") == 0
    # No key was used (no generate, wrap or decrypt), nothing rotated or listed.
    operations = {json.loads(line)["operation"] for line in audit.read_text().splitlines()}
    assert not operations & {"generate", "wrap", "decrypt", "rotate", "list-keys"}
