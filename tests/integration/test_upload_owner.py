"""Uploads belong to those who may write under their key, in both formats (sealgate's and s3ec-v3).

Continuing an upload (UploadPart, UploadPartCopy, ListParts, CompleteMultipartUpload,
AbortMultipartUpload) takes the full upload id CreateMultipartUpload gave (authenticated, bound
to the object) and the key policy's ``encrypt`` right on its key. The backend's id, which the
backend's own listing shows, continues nothing; ListMultipartUploads through sealgate shows the
ids that do. Real TLS, moto behind, a local keyring with a key policy.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy.crypto.format import FormatError
from proxy.crypto.upload_id import PREFIX, S3EC_PREFIX, UploadId
from tests.conftest import Stack, backend_client, client_for, start_stack

MiB = 1024 * 1024
COLLEAGUE = ("SGCOLLEAGUE000000001", "colleague-secret-000000001")
INTRUDER = ("SGINTRUDER0000000001", "intruder-secret-0000000001")
SG, S3EC = "owner-sg", "owner-s3ec"

EXTRA = f"""
[[clients]]
name = "colleague"
access_key_id = "{COLLEAGUE[0]}"
secret_access_key = "{COLLEAGUE[1]}"

[[clients]]
name = "intruder"
access_key_id = "{INTRUDER[0]}"
secret_access_key = "{INTRUDER[1]}"

[[keys]]
id = "default"
encrypt = ["tester", "colleague"]
decrypt = ["tester", "colleague", "intruder"]

[[buckets]]
name = "{S3EC}"
format = "s3ec-v3"
"""


@pytest.fixture(scope="module")
def st(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("owner"), moto_url, tls_files, extra=EXTRA)
    for bucket in (SG, S3EC):
        stack.client().create_bucket(Bucket=bucket)
        # The intruder may read (decrypt) this, so only the upload's own check can stop its copy.
        stack.client().put_object(Bucket=bucket, Key="source", Body=b"attacker's payload " * 100)
    yield stack
    stack.gate.stop()


def _client(st: Stack, who: tuple[str, str]) -> Any:
    return client_for(st.gate.url, st.ca_path, akid=who[0], secret=who[1])


def _code(call: Callable[[], object]) -> str:
    with pytest.raises(ClientError) as err:
        call()
    return str(err.value.response["Error"]["Code"])


def _continue_all(s3: Any, bucket: str, key: str, upload_id: str, etag: str) -> dict[str, str]:
    """The error code of each way to continue the upload (each one must fail)."""
    ops: dict[str, Callable[[], object]] = {
        "UploadPart": lambda: s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=2, Body=b"attacker's payload"
        ),
        "UploadPartCopy": lambda: s3.upload_part_copy(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=2, CopySource={"Bucket": bucket, "Key": "source"}
        ),
        "ListParts": lambda: s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id),
        "Complete": lambda: s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}
        ),
        "Abort": lambda: s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id),
    }
    return {name: _code(op) for name, op in ops.items()}


def _forge(text: str, **fields: Any) -> str:
    """`text` with some fields changed and its MAC kept, as a client could make it."""
    uid = replace(UploadId.decode(text), **fields)
    body = b"".join(
        struct.pack(">H", len(item)) + item
        for item in (uid.backend_id.encode(), uid.key_ref.encode(), uid.wrapped_key, uid.sealed_key)
    )
    return uid.prefix + base64.urlsafe_b64encode(body + uid.salt + uid.mac).decode().rstrip("=")


def _parses(text: str) -> bool:
    try:
        UploadId.decode(text)
    except FormatError:
        return False
    return True


def _backend_parts(st: Stack, bucket: str, key: str, backend_id: str) -> list[tuple[int, str, int]]:
    parts = backend_client(st.backend_url).list_parts(Bucket=bucket, Key=key, UploadId=backend_id).get("Parts", [])
    return [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts]


def _backend_id(st: Stack, bucket: str, key: str) -> str:
    ups = backend_client(st.backend_url).list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    [up] = [u for u in ups if u["Key"] == key]
    return str(up["UploadId"])


@pytest.mark.parametrize("bucket", [SG, S3EC])
def test_nobody_else_continues_an_upload(st: Stack, bucket: str) -> None:
    """The attack: another client appends its bytes to the victim's upload and completes it."""
    owner, colleague, intruder = st.client(), _client(st, COLLEAGUE), _client(st, INTRUDER)
    key = "victim"
    uid = owner.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    assert uid.startswith(PREFIX if bucket == SG else S3EC_PREFIX)
    part1 = os.urandom(5 * MiB)
    etag = owner.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=1, Body=part1)["ETag"]
    backend_id = _backend_id(st, bucket, key)
    before = _backend_parts(st, bucket, key, backend_id)

    # Without the encrypt right on the upload's key, even the full id continues nothing.
    assert set(_continue_all(intruder, bucket, key, uid, etag).values()) == {"AccessDenied"}
    # The backend's id (as its listing shows it, bare or as s3ec-v3 ids used to be made), an id
    # whose fields were swapped for the victim's, or the victim's id moved to another object:
    # not an upload, for anyone.
    own = colleague.create_multipart_upload(Bucket=bucket, Key="mine")["UploadId"]
    forged = [
        backend_id,
        S3EC_PREFIX + backend_id,
        _forge(own, backend_id=backend_id),
        _forge(uid, salt=bytes(32)),
        _forge(uid, wrapped_key=b"another wrapped key"),
    ]
    for upload_id in forged:
        assert set(_continue_all(colleague, bucket, key, upload_id, etag).values()) == {"NoSuchUpload"}, upload_id
        # The key right is checked first, on the key the id names (one it may not use here).
        expected = "AccessDenied" if _parses(upload_id) else "NoSuchUpload"
        assert set(_continue_all(intruder, bucket, key, upload_id, etag).values()) == {expected}, upload_id
    assert set(_continue_all(colleague, bucket, "mine", uid, etag).values()) == {"NoSuchUpload"}

    assert _backend_parts(st, bucket, key, backend_id) == before
    # The upload is the victim's still: it completes with the victim's bytes only.
    owner.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}
    )
    assert owner.get_object(Bucket=bucket, Key=key)["Body"].read() == part1
    colleague.abort_multipart_upload(Bucket=bucket, Key="mine", UploadId=own)


@pytest.mark.parametrize("bucket", [SG, S3EC])
def test_anyone_who_may_write_under_the_key_may_continue(st: Stack, bucket: str) -> None:
    """The rule is the key policy's: a client with encrypt on the key and the full id may."""
    owner, colleague = st.client(), _client(st, COLLEAGUE)
    uid = owner.create_multipart_upload(Bucket=bucket, Key="shared")["UploadId"]
    etag = colleague.upload_part(Bucket=bucket, Key="shared", UploadId=uid, PartNumber=1, Body=b"together")["ETag"]
    assert [p["PartNumber"] for p in colleague.list_parts(Bucket=bucket, Key="shared", UploadId=uid)["Parts"]] == [1]
    owner.complete_multipart_upload(
        Bucket=bucket, Key="shared", UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}
    )
    assert colleague.get_object(Bucket=bucket, Key="shared")["Body"].read() == b"together"


@pytest.mark.parametrize("bucket", [SG, S3EC])
def test_listed_ids_continue_the_upload(st: Stack, bucket: str) -> None:
    s3 = st.client()
    key = "listed/a b+c ✓"  # listed URL-encoded (boto3 asks for encoding-type=url)
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    raw = backend_client(st.backend_url).create_multipart_upload(Bucket=bucket, Key="listed/by-backend")["UploadId"]
    listed = {u["Key"]: u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix="listed/")["Uploads"]}
    # An upload sealgate did not make (or made before upload records) shows the backend's id.
    assert listed == {key: uid, "listed/by-backend": raw}
    first = os.urandom(5 * MiB)
    e1 = s3.upload_part(Bucket=bucket, Key=key, UploadId=listed[key], PartNumber=1, Body=first)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key=key, UploadId=listed[key], PartNumber=2, Body=b"end")["ETag"]
    got = s3.list_parts(Bucket=bucket, Key=key, UploadId=listed[key])
    assert got["UploadId"] == uid and [p["PartNumber"] for p in got["Parts"]] == [1, 2]
    parts = [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=listed[key], MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == first + b"end"
    # The record is gone with the upload, and was never listed as an object.
    left = backend_client(st.backend_url).list_objects_v2(Bucket=bucket, Prefix=".sealgate/up/").get("Contents", [])
    assert left == []
    assert all(not o["Key"].startswith(".sealgate/") for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
    backend_client(st.backend_url).abort_multipart_upload(Bucket=bucket, Key="listed/by-backend", UploadId=raw)


@pytest.mark.parametrize("bucket", [SG, S3EC])
def test_listing_pages_by_client_ids(st: Stack, bucket: str) -> None:
    s3 = st.client()
    made = [s3.create_multipart_upload(Bucket=bucket, Key=f"pages/{n}")["UploadId"] for n in range(3)]
    seen: list[str] = []
    kw: dict[str, str] = {}
    while True:
        page = s3.list_multipart_uploads(Bucket=bucket, Prefix="pages/", MaxUploads=2, **kw)
        seen += [u["UploadId"] for u in page.get("Uploads", [])]
        if not page.get("IsTruncated"):
            break
        assert page["NextUploadIdMarker"] in made
        kw = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}
    assert seen == made
    for n, upload_id in enumerate(made):
        s3.abort_multipart_upload(Bucket=bucket, Key=f"pages/{n}", UploadId=upload_id)
    assert not s3.list_multipart_uploads(Bucket=bucket, Prefix="pages/").get("Uploads")
    assert not backend_client(st.backend_url).list_objects_v2(Bucket=bucket, Prefix=".sealgate/up/").get("Contents")


@pytest.mark.parametrize("bucket", [SG, S3EC])
def test_tampered_id_is_no_such_upload(st: Stack, bucket: str) -> None:
    s3 = st.client()
    uid = s3.create_multipart_upload(Bucket=bucket, Key="tampered")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="tampered", UploadId=uid, PartNumber=1, Body=b"x")["ETag"]
    prefix = PREFIX if bucket == SG else S3EC_PREFIX
    raw = bytearray(base64.urlsafe_b64decode(uid[len(prefix) :] + "=" * (-len(uid[len(prefix) :]) % 4)))
    for i in (0, len(raw) // 2, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[i] ^= 0x40
        bad = prefix + base64.urlsafe_b64encode(bytes(flipped)).decode().rstrip("=")
        with pytest.raises(ClientError) as err:
            s3.upload_part(Bucket=bucket, Key="tampered", UploadId=bad, PartNumber=1, Body=b"y")
        assert err.value.response["Error"]["Code"] == "NoSuchUpload"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert set(_continue_all(s3, bucket, "tampered", bad, etag).values()) == {"NoSuchUpload"}
    assert _code(lambda: s3.list_parts(Bucket=bucket, Key="tampered", UploadId=uid[:-4])) == "NoSuchUpload"
    s3.abort_multipart_upload(Bucket=bucket, Key="tampered", UploadId=uid)


def test_s3ec_upload_aborts_and_lists_on_another_process(
    st: Stack, moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """Another process (same keyring) checks an s3ec-v3 id by unwrapping the data key it carries."""
    uid = st.client().create_multipart_upload(Bucket=S3EC, Key="elsewhere")["UploadId"]
    st.client().upload_part(Bucket=S3EC, Key="elsewhere", UploadId=uid, PartNumber=1, Body=b"one")
    for name in ("keyring", "keyring.pass"):
        (tmp_path / name).write_bytes((st.dir / name).read_bytes())
        (tmp_path / name).chmod(0o600)
    other = start_stack(tmp_path, moto_url, tls_files, extra=EXTRA)
    try:
        s3 = other.client()
        assert [p["PartNumber"] for p in s3.list_parts(Bucket=S3EC, Key="elsewhere", UploadId=uid)["Parts"]] == [1]
        assert _code(lambda: s3.list_parts(Bucket=S3EC, Key="elsewhere", UploadId=_forge(uid, salt=bytes(32)))) == (
            "NoSuchUpload"
        )
        intruder = client_for(other.gate.url, other.ca_path, akid=INTRUDER[0], secret=INTRUDER[1])
        assert _code(lambda: intruder.abort_multipart_upload(Bucket=S3EC, Key="elsewhere", UploadId=uid)) == (
            "AccessDenied"
        )
        s3.abort_multipart_upload(Bucket=S3EC, Key="elsewhere", UploadId=uid)
    finally:
        other.gate.stop()
    assert not st.client().list_multipart_uploads(Bucket=S3EC, Prefix="elsewhere").get("Uploads")
