"""Identity policies over real TLS: a full-access client, an upload-only gateway, a read-only
analyst, per-user home prefixes and a client without rights, for every operation family.

Allowed works; refused is 403 AccessDenied with nothing changed on the backend (checked there
directly) and a "denied" line in the audit log; allowed destructive actions are audited too."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Stack, backend_client, start_stack
from tests.signing import sign

GATEWAY = ("SGGATEWAY00000000001", "gateway-secret-00000001")
ANALYST = ("SGANALYST00000000001", "analyst-secret-00000001")
NOBODY = ("SGNOBODY000000000001", "nobody-secret-000000001")
ALICE = ("SGALICE0000000000001", "alice-secret-0000000001")
BOB = ("SGBOB000000000000001", "bob-secret-000000000001")

RUN = f"{os.getpid()}-{os.urandom(2).hex()}"
UPLOADS = f"uploads-{RUN}"
DATA = f"data-{RUN}"
HOME = f"home-{RUN}"
LEGACY = f"legacy-{RUN}"


def _client(name: str, creds: tuple[str, str], groups: str = "") -> str:
    return f'[[clients]]\nname = "{name}"\naccess_key_id = "{creds[0]}"\nsecret_access_key = "{creds[1]}"\n{groups}\n'


def _policy(name: str, principals: str, statements: list[dict[str, Any]]) -> str:
    doc = json.dumps({"Version": "2012-10-17", "Statement": statements})
    return f"[[policies]]\nname = \"{name}\"\nprincipals = {principals}\ndocument = '''{doc}'''\n"


def config_extra(audit: Path) -> str:
    return (
        _client("gateway", GATEWAY, 'groups = ["uploaders"]')
        + _client("analyst", ANALYST)
        + _client("nobody", NOBODY)
        + _client("alice", ALICE, 'groups = ["staff"]')
        + _client("bob", BOB, 'groups = ["staff"]')
        + f'\n[[buckets]]\nname = "{LEGACY}"\nallow_unencrypted_reads = true\n'
        + 'unencrypted_before = "2100-01-01T00:00:00Z"\n'
        + _policy("full-access", '["tester"]', [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}])
        + _policy(
            "uploads-write-only",
            '["group:uploaders"]',
            [{"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": [f"arn:aws:s3:::{UPLOADS}/*"]}],
        )
        + _policy(
            "analytics-read-only",
            '["analyst"]',
            [
                {
                    "Sid": "Read",
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:ListBucket"],
                    "Resource": [f"arn:aws:s3:::{DATA}", f"arn:aws:s3:::{DATA}/*", f"arn:aws:s3:::{LEGACY}/*"],
                },
                {"Sid": "NoSecrets", "Effect": "Deny", "Action": "s3:*", "Resource": f"arn:aws:s3:::{DATA}/secret/*"},
            ],
        )
        + _policy(
            "home-prefixes",
            '["group:staff"]',
            [
                {
                    "Sid": "OwnObjects",
                    "Effect": "Allow",
                    "Action": "s3:*Object",
                    "Resource": f"arn:aws:s3:::{HOME}/home/${{aws:username}}/*",
                },
                {
                    "Sid": "ListOwnPrefix",
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": f"arn:aws:s3:::{HOME}",
                    "Condition": {"StringLike": {"s3:prefix": "home/${aws:username}/*"}},
                },
            ],
        )
        + '\n[[keys]]\nid = "default"\nencrypt = ["tester", "group:uploaders", "group:staff"]\n'
        + 'decrypt = ["tester", "analyst", "group:staff"]\n'
        + f'\n[audit]\npath = "{audit}"\n'
    )


@pytest.fixture(scope="module")
def st(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("access")
    s = start_stack(d, moto_url, tls_files, extra=config_extra(d / "audit.jsonl"))
    admin = s.client()
    for b in (UPLOADS, DATA, HOME):
        admin.create_bucket(Bucket=b)
    backend_client(moto_url).create_bucket(Bucket=LEGACY)
    yield s
    s.gate.stop()


def as_(st: Stack, creds: tuple[str, str]) -> Any:
    return st.client(akid=creds[0], secret=creds[1])


def denied(call: Any, *args: Any, **kw: Any) -> None:
    with pytest.raises(ClientError) as err:
        call(*args, **kw)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # A HEAD answer has no body, so botocore shows its status as the code.
    assert err.value.response["Error"]["Code"] in ("AccessDenied", "403")


def audit_lines(st: Stack) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (st.dir / "audit.jsonl").read_text().splitlines()]


def last_audit(st: Stack, identity: str, operation: str) -> dict[str, Any]:
    lines = [r for r in audit_lines(st) if r["identity"] == identity and r["operation"] == operation]
    assert lines, f"no audit line for {identity} {operation}"
    return lines[-1]


def stored_keys(st: Stack, bucket: str) -> list[str]:
    return [o["Key"] for o in st.backend().list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_objects_reads_and_writes(st: Stack) -> None:
    admin, gw, nobody, analyst = st.client(), as_(st, GATEWAY), as_(st, NOBODY), as_(st, ANALYST)
    gw.put_object(Bucket=UPLOADS, Key="in/a.txt", Body=b"from the gateway")
    assert admin.get_object(Bucket=UPLOADS, Key="in/a.txt")["Body"].read() == b"from the gateway"
    # The upload-only gateway may not read back, list, overwrite elsewhere or delete.
    denied(gw.get_object, Bucket=UPLOADS, Key="in/a.txt")
    denied(gw.head_object, Bucket=UPLOADS, Key="in/a.txt")
    denied(gw.list_objects_v2, Bucket=UPLOADS)
    denied(gw.put_object, Bucket=DATA, Key="x", Body=b"elsewhere")
    denied(gw.delete_object, Bucket=UPLOADS, Key="in/a.txt")
    assert stored_keys(st, DATA) == [] and "in/a.txt" in stored_keys(st, UPLOADS)
    rec = last_audit(st, "gateway", "s3:DeleteObject")
    assert (rec["outcome"], rec["bucket"], rec["object_key"]) == ("denied", UPLOADS, "in/a.txt")
    # A client named by no policy may do nothing at all.
    denied(nobody.put_object, Bucket=UPLOADS, Key="in/b.txt", Body=b"x")
    denied(nobody.get_object, Bucket=UPLOADS, Key="in/a.txt")
    denied(nobody.list_buckets)
    assert "in/b.txt" not in stored_keys(st, UPLOADS)
    assert last_audit(st, "nobody", "s3:ListAllMyBuckets")["outcome"] == "denied"
    # The analyst reads and lists, and its explicit Deny wins over its Allow.
    admin.put_object(Bucket=DATA, Key="report.csv", Body=b"a,b\n1,2\n")
    admin.put_object(Bucket=DATA, Key="secret/plan.txt", Body=b"classified")
    assert analyst.get_object(Bucket=DATA, Key="report.csv")["Body"].read() == b"a,b\n1,2\n"
    assert [o["Key"] for o in analyst.list_objects_v2(Bucket=DATA)["Contents"]] == ["report.csv", "secret/plan.txt"]
    denied(analyst.get_object, Bucket=DATA, Key="secret/plan.txt")
    assert "NoSecrets" in last_audit(st, "analyst", "s3:GetObject")["reason"]
    denied(analyst.put_object, Bucket=DATA, Key="report.csv", Body=b"changed")
    assert admin.get_object(Bucket=DATA, Key="report.csv")["Body"].read() == b"a,b\n1,2\n"


def test_copies_need_read_on_the_source(st: Stack) -> None:
    admin, gw = st.client(), as_(st, GATEWAY)
    admin.put_object(Bucket=DATA, Key="private.txt", Body=b"not for the gateway")
    # PutObject on the destination is not enough: a copy reads its source.
    denied(gw.copy_object, Bucket=UPLOADS, Key="stolen.txt", CopySource={"Bucket": DATA, "Key": "private.txt"})
    assert "stolen.txt" not in stored_keys(st, UPLOADS)
    assert last_audit(st, "gateway", "s3:GetObject")["object_key"] == "private.txt"
    admin.copy_object(Bucket=UPLOADS, Key="copied.txt", CopySource={"Bucket": DATA, "Key": "private.txt"})
    assert admin.get_object(Bucket=UPLOADS, Key="copied.txt")["Body"].read() == b"not for the gateway"


def test_deletes(st: Stack) -> None:
    admin, nobody = st.client(), as_(st, NOBODY)
    for k in ("d1", "d2", "d3"):
        admin.put_object(Bucket=DATA, Key=f"del/{k}", Body=b"keep me")
    objects = [{"Key": "del/d1"}, {"Key": "del/d2", "ETag": '"00000000000000000000000000000000"'}]
    out = nobody.delete_objects(Bucket=DATA, Delete={"Objects": objects})
    # Each key refused on its own, before its ETag was even looked at (no PreconditionFailed).
    assert sorted((e["Key"], e["Code"]) for e in out["Errors"]) == [
        ("del/d1", "AccessDenied"),
        ("del/d2", "AccessDenied"),
    ]
    assert not out.get("Deleted")
    assert {"del/d1", "del/d2", "del/d3"} <= set(stored_keys(st, DATA))
    # The full-access client deletes; its allowed delete is audited.
    out = admin.delete_objects(Bucket=DATA, Delete={"Objects": [{"Key": "del/d1"}, {"Key": "del/d2"}]})
    assert sorted(d["Key"] for d in out["Deleted"]) == ["del/d1", "del/d2"]
    admin.delete_object(Bucket=DATA, Key="del/d3")
    assert not {"del/d1", "del/d2", "del/d3"} & set(stored_keys(st, DATA))
    allowed = [r for r in audit_lines(st) if r["identity"] == "tester" and r["operation"] == "s3:DeleteObject"]
    assert {r["object_key"] for r in allowed if r["outcome"] == "allowed"} >= {"del/d1", "del/d2", "del/d3"}


def test_multipart_uploads(st: Stack) -> None:
    admin, nobody = st.client(), as_(st, NOBODY)
    uid = admin.create_multipart_upload(Bucket=DATA, Key="big")["UploadId"]
    part = admin.upload_part(Bucket=DATA, Key="big", UploadId=uid, PartNumber=1, Body=b"p" * 1000)
    denied(nobody.list_multipart_uploads, Bucket=DATA)
    denied(nobody.list_parts, Bucket=DATA, Key="big", UploadId=uid)
    denied(nobody.upload_part, Bucket=DATA, Key="big", UploadId=uid, PartNumber=2, Body=b"evil")
    denied(nobody.abort_multipart_upload, Bucket=DATA, Key="big", UploadId=uid)
    denied(
        nobody.complete_multipart_upload,
        Bucket=DATA,
        Key="big",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    uploads = st.backend().list_multipart_uploads(Bucket=DATA).get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["big"]
    assert last_audit(st, "nobody", "s3:AbortMultipartUpload")["outcome"] == "denied"
    admin.complete_multipart_upload(
        Bucket=DATA, Key="big", UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    )
    assert admin.get_object(Bucket=DATA, Key="big")["Body"].read() == b"p" * 1000


def test_buckets_and_their_settings(st: Stack) -> None:
    admin, nobody, analyst = st.client(), as_(st, NOBODY), as_(st, ANALYST)
    victim = f"victim-{RUN}"
    admin.create_bucket(Bucket=victim)
    denied(nobody.delete_bucket, Bucket=victim)
    denied(nobody.put_bucket_versioning, Bucket=victim, VersioningConfiguration={"Status": "Enabled"})
    denied(nobody.create_bucket, Bucket=f"new-{RUN}")
    denied(nobody.head_bucket, Bucket=victim)
    denied(analyst.get_bucket_versioning, Bucket=DATA)
    raw = st.backend()
    raw.head_bucket(Bucket=victim)
    assert "Status" not in raw.get_bucket_versioning(Bucket=victim)
    assert f"new-{RUN}" not in [b["Name"] for b in raw.list_buckets()["Buckets"]]
    assert last_audit(st, "nobody", "s3:PutBucketVersioning")["outcome"] == "denied"
    assert last_audit(st, "nobody", "s3:DeleteBucket")["bucket"] == victim
    admin.put_bucket_versioning(Bucket=victim, VersioningConfiguration={"Status": "Enabled"})
    assert last_audit(st, "tester", "s3:PutBucketVersioning")["outcome"] == "allowed"
    admin.delete_bucket(Bucket=victim)
    assert last_audit(st, "tester", "s3:DeleteBucket")["outcome"] == "allowed"


def test_tags_retention_and_legal_holds(st: Stack) -> None:
    admin, nobody = st.client(), as_(st, NOBODY)
    locked = f"locked-{RUN}"
    admin.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    until = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    v = admin.put_object(
        Bucket=locked, Key="rec", Body=b"record", ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until
    )["VersionId"]
    admin.put_object_tagging(Bucket=locked, Key="rec", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
    denied(nobody.put_object_tagging, Bucket=locked, Key="rec", Tagging={"TagSet": [{"Key": "k", "Value": "evil"}]})
    denied(nobody.delete_object_tagging, Bucket=locked, Key="rec")
    denied(nobody.get_object_tagging, Bucket=locked, Key="rec")
    denied(nobody.put_object_legal_hold, Bucket=locked, Key="rec", VersionId=v, LegalHold={"Status": "ON"})
    denied(
        nobody.put_object_retention,
        Bucket=locked,
        Key="rec",
        VersionId=v,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until},
        BypassGovernanceRetention=True,
    )
    denied(nobody.delete_object, Bucket=locked, Key="rec", VersionId=v, BypassGovernanceRetention=True)
    raw = st.backend()
    assert raw.get_object_tagging(Bucket=locked, Key="rec")["TagSet"] == [{"Key": "k", "Value": "v"}]
    assert raw.head_object(Bucket=locked, Key="rec", VersionId=v).get("ObjectLockLegalHoldStatus") != "ON"
    assert last_audit(st, "nobody", "s3:DeleteObjectVersion")["outcome"] == "denied"
    # A bypass needs s3:BypassGovernanceRetention as well, and is audited when allowed.
    admin.delete_object(Bucket=locked, Key="rec", VersionId=v, BypassGovernanceRetention=True)
    assert last_audit(st, "tester", "s3:BypassGovernanceRetention")["outcome"] == "allowed"


def test_home_prefixes_with_username_variable(st: Stack) -> None:
    alice, bob = as_(st, ALICE), as_(st, BOB)
    alice.put_object(Bucket=HOME, Key="home/alice/notes.txt", Body=b"alice's")
    bob.put_object(Bucket=HOME, Key="home/bob/notes.txt", Body=b"bob's")
    assert alice.get_object(Bucket=HOME, Key="home/alice/notes.txt")["Body"].read() == b"alice's"
    denied(alice.get_object, Bucket=HOME, Key="home/bob/notes.txt")
    denied(alice.put_object, Bucket=HOME, Key="home/bob/notes.txt", Body=b"overwritten")
    denied(alice.delete_object, Bucket=HOME, Key="home/bob/notes.txt")
    listed = alice.list_objects_v2(Bucket=HOME, Prefix="home/alice/")["Contents"]
    assert [o["Key"] for o in listed] == ["home/alice/notes.txt"]
    denied(alice.list_objects_v2, Bucket=HOME, Prefix="home/bob/")
    denied(alice.list_objects_v2, Bucket=HOME)
    assert bob.get_object(Bucket=HOME, Key="home/bob/notes.txt")["Body"].read() == b"bob's"


def test_migration_buckets_obey_policies(st: Stack) -> None:
    st.backend().put_object(Bucket=LEGACY, Key="old.txt", Body=b"written before sealgate")
    assert as_(st, ANALYST).get_object(Bucket=LEGACY, Key="old.txt")["Body"].read() == b"written before sealgate"
    denied(as_(st, NOBODY).get_object, Bucket=LEGACY, Key="old.txt")
    denied(as_(st, GATEWAY).get_object, Bucket=LEGACY, Key="old.txt")


def test_without_policies_everything_is_allowed_and_start_up_says_so(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="sealgate"):
        s = start_stack(tmp_path, moto_url, tls_files, extra=_client("other", NOBODY))
    try:
        other = as_(s, NOBODY)
        other.create_bucket(Bucket=f"open-{RUN}")
        other.put_object(Bucket=f"open-{RUN}", Key="k", Body=b"v")
        other.delete_object(Bucket=f"open-{RUN}", Key="k")
        other.delete_bucket(Bucket=f"open-{RUN}")
    finally:
        s.gate.stop()
    warnings = [r.getMessage() for r in caplog.records if "no [[policies]]" in r.getMessage()]
    assert len(warnings) == 1 and "every client may do every S3 operation" in warnings[0]


def test_refused_before_100_continue(st: Stack) -> None:
    """A refused upload is answered before the client sends its body (Expect: 100-continue)."""
    port = st.gate.running.tls_port
    body = b"x" * 1000
    headers = {"Host": f"localhost:{port}", "Content-Length": str(len(body)), "Expect": "100-continue"}
    url = f"https://localhost:{port}/{DATA}/early"
    signed = sign(
        "PUT", url, headers, payload_hash=hashlib.sha256(body).hexdigest(), akid=GATEWAY[0], secret=GATEWAY[1]
    )
    ctx = ssl.create_default_context(cafile=str(st.ca_path))
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(
            (f"PUT /{DATA}/early HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in signed.items()) + "\r\n").encode()
        )
        tls.settimeout(10)
        first = tls.recv(65536)
    assert first.startswith(b"HTTP/1.1 403") and b"AccessDenied" in first
    assert "early" not in stored_keys(st, DATA)
