"""Multipart uploads into an ``format = "s3ec-v3"`` bucket, read back by the official client.

Real TLS, real moto S3 + KMS, the official ``s3_encryption`` client reading straight from the
backend. An S3EC body is one GCM stream: parts must come in order to the process that created
the upload, and everything else is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from proxy.crypto import s3ec
from proxy.crypto.upload_id import UploadId
from proxy.s3.errors import S3Error
from proxy.store import s3ec_uploads
from tests.conftest import Stack, backend_client, start_stack
from tests.integration.s3ec_support import kms_config, official, start_kms_stack

MiB = 1024 * 1024
BUCKET = "s3ec-mp"


RULES = f'\n[[buckets]]\nname = "{BUCKET}"\nformat = "s3ec-v3"\n'


@pytest.fixture(scope="module")
def mp_stack(
    moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    st, key_id = start_kms_stack(tmp_path_factory.mktemp("s3ecmp"), moto_url, tls_files, rules=RULES, buckets=(BUCKET,))
    yield st, key_id
    st.gate.stop()


def _upload(s3: Any, key: str, parts: list[bytes]) -> str:
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key=key, Metadata={"who": "mp"})["UploadId"]
    done = []
    for n, data in enumerate(parts, 1):
        etag = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=n, Body=data)["ETag"]
        done.append({"PartNumber": n, "ETag": etag})
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload={"Parts": done})
    return uid


@pytest.mark.parametrize(
    "sizes",
    [[0], [17], [5 * MiB, 5 * MiB + 3, 1], [5 * MiB + 1, 5 * MiB]],
    ids=["empty", "one-small-part", "small-last-part-carries-tag", "tag-as-extra-part"],
)
def test_multipart_object_reads_with_official_client(
    mp_stack: tuple[Stack, str], moto_url: str, sizes: list[int]
) -> None:
    st, key_id = mp_stack
    parts = [os.urandom(n) for n in sizes]
    data = b"".join(parts)
    key = "mp-" + "-".join(map(str, sizes))
    _upload(st.client(), key, parts)
    context = s3ec.name_context(BUCKET, key)
    got = official(moto_url, key_id).get_object(Bucket=BUCKET, Key=key, EncryptionContext=context)
    assert got["Body"].read() == data
    assert got["Metadata"].get("who") == "mp"
    assert st.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
    assert backend_client(moto_url).head_object(Bucket=BUCKET, Key=key)["ContentLength"] == len(data) + 16


def test_parallel_transfer_manager_upload(mp_stack: tuple[Stack, str], moto_url: str) -> None:
    """boto3's transfer manager sends parts from several threads: early parts wait their turn."""
    st, key_id = mp_stack
    data = os.urandom(3 * 5 * MiB + 123)
    cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)
    st.client().upload_fileobj(io.BytesIO(data), BUCKET, "parallel", Config=cfg)
    assert (
        official(moto_url, key_id)
        .get_object(Bucket=BUCKET, Key="parallel", EncryptionContext=s3ec.name_context(BUCKET, "parallel"))["Body"]
        .read()
        == data
    )


def test_latest_part_can_be_sent_again(mp_stack: tuple[Stack, str], moto_url: str) -> None:
    st, key_id = mp_stack
    s3 = st.client()
    first, second = os.urandom(5 * MiB), os.urandom(1000)
    retry = second  # only unchanged: see test_a_part_sent_again_with_other_bytes_is_refused
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="retry")["UploadId"]
    e1 = s3.upload_part(Bucket=BUCKET, Key="retry", UploadId=uid, PartNumber=1, Body=first)["ETag"]
    s3.upload_part(Bucket=BUCKET, Key="retry", UploadId=uid, PartNumber=2, Body=second)
    e2 = s3.upload_part(Bucket=BUCKET, Key="retry", UploadId=uid, PartNumber=2, Body=retry)["ETag"]
    parts = [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="retry", UploadId=uid, MultipartUpload={"Parts": parts})
    assert (
        official(moto_url, key_id)
        .get_object(Bucket=BUCKET, Key="retry", EncryptionContext=s3ec.name_context(BUCKET, "retry"))["Body"]
        .read()
        == first + retry
    )


def _code(err: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    return err.value.response["Error"]["Code"], err.value.response["Error"]["Message"]


def test_out_of_order_parts_are_refused(mp_stack: tuple[Stack, str], monkeypatch: pytest.MonkeyPatch) -> None:
    st, _ = mp_stack
    monkeypatch.setattr(s3ec_uploads, "PART_ORDER_WAIT", 0.3)
    s3 = st.client()
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="order")["UploadId"]
    with pytest.raises(ClientError) as err:
        s3.upload_part(Bucket=BUCKET, Key="order", UploadId=uid, PartNumber=2, Body=b"x" * 100)
    code, message = _code(err)
    assert code == "InvalidPartOrder" and "1, 2, 3" in message
    e1 = s3.upload_part(Bucket=BUCKET, Key="order", UploadId=uid, PartNumber=1, Body=os.urandom(5 * MiB))["ETag"]
    s3.upload_part(Bucket=BUCKET, Key="order", UploadId=uid, PartNumber=2, Body=os.urandom(5 * MiB))
    with pytest.raises(ClientError) as err:  # an earlier part, once a later one is stored
        s3.upload_part(Bucket=BUCKET, Key="order", UploadId=uid, PartNumber=1, Body=b"y")
    assert _code(err)[0] == "InvalidPartOrder"
    with pytest.raises(ClientError) as err:  # completing with a part left out
        s3.complete_multipart_upload(
            Bucket=BUCKET, Key="order", UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}]}
        )
    code, message = _code(err)
    assert code == "InvalidPart" and "parts 1 to 2" in message
    s3.upload_part(Bucket=BUCKET, Key="order", UploadId=uid, PartNumber=3, Body=b"small")
    with pytest.raises(ClientError) as err:  # a part under 5 MiB was the last one
        s3.upload_part(Bucket=BUCKET, Key="order", UploadId=uid, PartNumber=4, Body=b"more")
    code, message = _code(err)
    assert code == "InvalidPartOrder" and "last part" in message
    s3.abort_multipart_upload(Bucket=BUCKET, Key="order", UploadId=uid)
    assert not backend_client(st.backend_url).list_multipart_uploads(Bucket=BUCKET, Prefix="order").get("Uploads")
    with pytest.raises(ClientError) as err:
        s3.upload_part(Bucket=BUCKET, Key="order", UploadId=uid, PartNumber=1, Body=b"z")
    assert _code(err)[0] == "NoSuchUpload"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key="order")  # nothing unreadable was ever completed


def test_parts_to_another_process_are_refused(
    mp_stack: tuple[Stack, str], moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    st, key_id = mp_stack
    other = start_stack(tmp_path, moto_url, tls_files, kms=kms_config(moto_url, key_id), extra=RULES)
    try:
        uid = st.client().create_multipart_upload(Bucket=BUCKET, Key="elsewhere")["UploadId"]
        assert uid.startswith(s3ec_uploads.UPLOAD_PREFIX)
        s3 = other.client()
        with pytest.raises(ClientError) as err:
            s3.upload_part(Bucket=BUCKET, Key="elsewhere", UploadId=uid, PartNumber=1, Body=b"data")
        code, message = _code(err)
        assert code == "NoSuchUpload" and "another replica" in message and "restarted" in message
        with pytest.raises(ClientError) as err:
            s3.complete_multipart_upload(
                Bucket=BUCKET,
                Key="elsewhere",
                UploadId=uid,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": "x"}]},
            )
        assert _code(err)[0] == "NoSuchUpload"
        # Any process can list and abort: it checks the id by unwrapping the data key it carries
        # (here with KMS); the backend's id, as s3ec-v3 ids used to be made, is no upload.
        assert s3.list_parts(Bucket=BUCKET, Key="elsewhere", UploadId=uid)["UploadId"] == uid
        backend_id = UploadId.decode(uid).backend_id
        with pytest.raises(ClientError) as err:
            s3.abort_multipart_upload(Bucket=BUCKET, Key="elsewhere", UploadId=s3ec_uploads.UPLOAD_PREFIX + backend_id)
        assert _code(err)[0] == "NoSuchUpload"
        s3.abort_multipart_upload(Bucket=BUCKET, Key="elsewhere", UploadId=uid)
    finally:
        other.gate.stop()


def test_complete_if_none_match(mp_stack: tuple[Stack, str]) -> None:
    st, _ = mp_stack
    s3 = st.client()
    s3.put_object(Bucket=BUCKET, Key="taken", Body=b"already here")
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="taken")["UploadId"]
    etag = s3.upload_part(Bucket=BUCKET, Key="taken", UploadId=uid, PartNumber=1, Body=b"late")["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="taken", UploadId=uid, MultipartUpload=parts, IfNoneMatch="*")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=BUCKET, Key="taken")["Body"].read() == b"already here"


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _backend_parts(moto_url: str, key: str, uid: str) -> list[dict[str, Any]]:
    backend_id = UploadId.decode(uid).backend_id
    parts: list[dict[str, Any]] = backend_client(moto_url).list_parts(Bucket=BUCKET, Key=key, UploadId=backend_id)[
        "Parts"
    ]
    return parts


def _md5(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def test_a_part_sent_again_with_other_bytes_is_refused(mp_stack: tuple[Stack, str], moto_url: str) -> None:
    """Part 2 is stored, then sent again with other bytes. Encrypting those at the same AES-CTR
    counters would leave the backend two ciphertexts whose XOR is the plaintexts' XOR."""
    st, _ = mp_stack
    s3, key = st.client(), "resent"
    first, a, b = os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(5 * MiB)
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=1, Body=first)
    s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=2, Body=a)
    stored_first = _backend_parts(moto_url, key, uid)[1]["ETag"]  # MD5 of part 2's first ciphertext
    refusal = None
    try:
        s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=2, Body=b)
    except ClientError as exc:
        refusal = exc.response["Error"]
    done = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in _backend_parts(moto_url, key, uid)]
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload={"Parts": done})
    stored = backend_client(moto_url).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    plain = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    final, final_plain = stored[5 * MiB : 10 * MiB], plain[5 * MiB : 10 * MiB]
    # Had part 2 been re-encrypted with b, the backend's first ciphertext of it would be
    # final ^ a ^ b: the two XOR to a ^ b (a two-time pad).
    assert final_plain == a or _md5(_xor(final, _xor(a, b))) != stored_first, "keystream reused for part 2"
    assert refusal is not None and refusal["Code"] == "InvalidRequest"
    assert "part 2 was already sent with other bytes" in refusal["Message"]
    assert "restart the upload" in refusal["Message"]
    assert plain == first + a and _md5(final) == stored_first


def test_a_part_whose_answer_was_lost_is_taken_again_only_unchanged(
    mp_stack: tuple[Stack, str], moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backend stores part 2, then its answer is lost: the part's ciphertext left, so only
    the same bytes may follow it."""
    st, _ = mp_stack
    s3, key = st.client(), "lost-answer"
    first, a, b = os.urandom(5 * MiB), os.urandom(1000), os.urandom(1000)
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    e1 = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=1, Body=first)["ETag"]
    real, calls = s3ec_uploads.put_stream, []

    async def lost(*args: Any, **kw: Any) -> Any:
        calls.append(await real(*args, **kw))
        raise S3Error("InternalError", "the backend's answer was lost", 500)

    monkeypatch.setattr(s3ec_uploads, "put_stream", lost)
    with pytest.raises(ClientError) as err:  # boto3 may retry a 500 itself: with the same bytes
        s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=2, Body=a)
    assert _code(err)[0] == "InternalError" and calls
    monkeypatch.setattr(s3ec_uploads, "put_stream", real)
    stored_first = _backend_parts(moto_url, key, uid)[1]["ETag"]  # part 2 (with the tag) reached the backend
    with pytest.raises(ClientError) as err:
        s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=2, Body=b)
    code, message = _code(err)
    assert code == "InvalidRequest" and "part 2 was already sent with other bytes" in message
    assert _backend_parts(moto_url, key, uid)[1]["ETag"] == stored_first  # nothing else reached it
    e2 = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=2, Body=a)["ETag"]
    parts = [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == first + a
    stored = backend_client(moto_url).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert _md5(stored[5 * MiB :]) == stored_first


SOURCES = "s3ec-mp-sources"


def test_a_copied_part_is_taken_again_only_from_the_same_bytes(mp_stack: tuple[Stack, str]) -> None:
    st, _ = mp_stack
    s3, key = st.client(), "copied"
    first, x, y = os.urandom(5 * MiB), os.urandom(3000), os.urandom(3000)
    backend_client(st.backend_url).create_bucket(Bucket=SOURCES)  # sealgate's format: copies read it
    s3.put_object(Bucket=SOURCES, Key="copy-src", Body=x)
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    e1 = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=1, Body=first)["ETag"]
    source = {"Bucket": SOURCES, "Key": "copy-src"}
    s3.upload_part_copy(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=2, CopySource=source)
    s3.put_object(Bucket=SOURCES, Key="copy-src", Body=y)  # the source changed since
    with pytest.raises(ClientError) as err:
        s3.upload_part_copy(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=2, CopySource=source)
    assert _code(err)[0] == "InvalidRequest"
    s3.put_object(Bucket=SOURCES, Key="copy-src", Body=x)
    e2 = s3.upload_part_copy(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=2, CopySource=source)
    parts = [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2["CopyPartResult"]["ETag"]}]
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == first + x


def test_after_a_failed_complete_the_upload_ends_where_its_tag_was_sent(
    mp_stack: tuple[Stack, str], moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backend refused the Complete after the GCM tag was uploaded as part 2: a longer
    stream would need a second tag under the same nonce, which gives away the authentication key."""
    st, _ = mp_stack
    s3, key = st.client(), "complete-failed"
    first = os.urandom(5 * MiB)
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    e1 = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=1, Body=first)["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": e1}]}
    monkeypatch.setattr(s3ec_uploads, "complete_document", lambda listed: b"<not a part list")
    with pytest.raises(ClientError):
        s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload=parts)
    monkeypatch.undo()
    assert [p["Size"] for p in _backend_parts(moto_url, key, uid)] == [5 * MiB, 16]  # the tag left
    with pytest.raises(ClientError) as err:
        s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=2, Body=b"more")
    code, message = _code(err)
    assert code == "InvalidRequest" and "GCM tag" in message and f"{5 * MiB} bytes" in message
    assert s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=1, Body=first)["ETag"] == e1
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload=parts)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == first


def test_a_retried_complete_answers_as_the_first(mp_stack: tuple[Stack, str]) -> None:
    """A client that lost the answer to its Complete and sends it again gets the same answer
    (issue 18), not NoSuchUpload; an upload whose object was replaced since still gets it."""
    st, _ = mp_stack
    s3 = st.client()
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="again")["UploadId"]
    etag = s3.upload_part(Bucket=BUCKET, Key="again", UploadId=uid, PartNumber=1, Body=b"only part")["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
    first = s3.complete_multipart_upload(Bucket=BUCKET, Key="again", UploadId=uid, MultipartUpload=parts)
    again = s3.complete_multipart_upload(Bucket=BUCKET, Key="again", UploadId=uid, MultipartUpload=parts)
    assert again["ETag"] == first["ETag"]
    assert s3.get_object(Bucket=BUCKET, Key="again")["Body"].read() == b"only part"
    s3.put_object(Bucket=BUCKET, Key="again", Body=b"replaced")
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="again", UploadId=uid, MultipartUpload=parts)
    assert _code(err)[0] == "NoSuchUpload"
