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

EXTRA = f"""
[[clients]]
name = "keyadmin"
access_key_id = "{ADMIN[0]}"
secret_access_key = "{ADMIN[1]}"

[[keys]]
id = "default"
encrypt = ["tester"]
decrypt = ["tester"]
admin = ["keyadmin"]

[audit]
path = "{{audit}}"
"""


def _call(st_url: str, ca: Path, method: str, path: str, creds: tuple[str, str] | None = None) -> tuple[int, bytes]:
    url = st_url + path
    headers = sign(method, url, {}, akid=creds[0], secret=creds[1]) if creds else sign(method, url, {})
    resp = send(ca, method, url, headers)
    return resp.status, resp.data


def test_admin_rotates_and_non_admin_is_refused(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    from proxy.kms.local import LocalKeyStore

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
        status, body = _call(st.gate.url, st.ca_path, "GET", "/-/keys")
        assert status == 200 and json.loads(body) == {"keys": []}
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
        ("list-keys", "allowed", "tester", None, None),
        ("rotate", "denied", "keyadmin", "other", None),
        ("list-keys", "allowed", "keyadmin", None, None),
        ("rotate", "allowed", "keyadmin", "default", "local:default:2"),
        *sorted(("rotate", "allowed", "keyadmin", "default", f"local:default:{v}") for v in range(3, 8)),
    ]
    assert all(r["request_id"] and r["source"] for r in records if r["operation"] == "rotate")
    assert verify_file(audit).ok
