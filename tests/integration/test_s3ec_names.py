"""S3EC objects and their names (issue 17): what sealgate writes in the S3EC format is bound to
its bucket and key, and what it did not write is served only where a bucket says so.

Every attack tampers on the backend directly (a client straight to moto), as someone with
write access to the storage would."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from s3_encryption.exceptions import S3EncryptionClientError

from proxy.crypto import s3ec
from tests.conftest import Stack, backend_client
from tests.integration.s3ec_support import official, start_kms_stack

V3, V3B = "names-v3", "names-v3b"  # format = "s3ec-v3", same master key
PLAIN = "names-plain"  # sealgate's own format, same master key
OPTIN = "names-optin"  # sealgate's format, s3ec_unbound_reads = true
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def names(
    moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    rules = (
        f'\n[[buckets]]\nname = "{V3}"\nformat = "s3ec-v3"\n'
        f'\n[[buckets]]\nname = "{V3B}"\nformat = "s3ec-v3"\n'
        f'\n[[buckets]]\nname = "{OPTIN}"\ns3ec_unbound_reads = true\n'
    )
    st, key_id = start_kms_stack(
        tmp_path_factory.mktemp("s3ec-names"), moto_url, tls_files, rules=rules, buckets=(V3, V3B, PLAIN, OPTIN)
    )
    yield st, key_id
    st.gate.stop()


def _refused(st: Stack, bucket: str, key: str) -> None:
    """GET, ranged GET and HEAD of `bucket`/`key` all fail as a moved sealgate object does."""
    s3 = st.client()
    for kwargs in ({}, {"Range": "bytes=0-9"}):
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket=bucket, Key=key, **kwargs)
        assert err.value.response["Error"]["Code"] == "ObjectIntegrityError", (bucket, key, kwargs)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket=bucket, Key=key)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def _copy(url: str, src: tuple[str, str], dst: tuple[str, str]) -> None:
    backend_client(url).copy_object(Bucket=dst[0], Key=dst[1], CopySource={"Bucket": src[0], "Key": src[1]})


def test_the_kms_context_names_the_object(names: tuple[Stack, str], moto_url: str) -> None:
    st, _ = names
    st.client().put_object(Bucket=V3, Key="ctx/é x%", Body=b"hello")
    meta = backend_client(moto_url).head_object(Bucket=V3, Key="ctx/é x%")["Metadata"]
    assert s3ec.parse(meta).context == {
        "sealgate:bucket": V3,
        "sealgate:key": "ctx/%C3%A9%20x%25",
        "aws:x-amz-cek-alg": "115",
    }


@pytest.mark.parametrize("dst", [(V3, "other"), (V3B, "orig"), (PLAIN, "orig"), (OPTIN, "orig")])
def test_a_moved_sealgate_object_is_refused(names: tuple[Stack, str], moto_url: str, dst: tuple[str, str]) -> None:
    st, _ = names
    data = os.urandom(50_000)
    src = (V3, f"orig-{dst[0]}-{dst[1]}")
    st.client().put_object(Bucket=src[0], Key=src[1], Body=data)
    dst = (dst[0], src[1] if dst[1] == "orig" else dst[1])
    _copy(moto_url, src, dst)
    _refused(st, *dst)
    got = st.client().get_object(Bucket=src[0], Key=src[1], Range="bytes=100-199")
    assert got["Body"].read() == data[100:200]
    assert st.client().get_object(Bucket=src[0], Key=src[1])["Body"].read() == data


def test_a_moved_multipart_object_is_refused(names: tuple[Stack, str], moto_url: str) -> None:
    st, _ = names
    data = os.urandom(5 * MiB + 11)
    cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=1)
    st.client().upload_fileobj(io.BytesIO(data), V3, "mp/orig", Config=cfg)
    for dst in ((V3, "mp/other"), (PLAIN, "mp/orig")):
        _copy(moto_url, (V3, "mp/orig"), dst)
        _refused(st, *dst)
    assert st.client().get_object(Bucket=V3, Key="mp/orig")["Body"].read() == data


def test_the_official_client_reads_with_the_name_as_context(names: tuple[Stack, str], moto_url: str) -> None:
    st, key_id = names
    data = os.urandom(20_000)
    key = "official/ü"
    st.client().put_object(Bucket=V3, Key=key, Body=data)
    context = {"sealgate:bucket": V3, "sealgate:key": "official/%C3%BC"}
    assert context == s3ec.name_context(V3, key)
    assert official(moto_url, key_id).get_object(Bucket=V3, Key=key, EncryptionContext=context)["Body"].read() == data
    # Without it, or with another name, the official client refuses the object too.
    for wrong in ({}, s3ec.name_context(V3, "official/other")):
        with pytest.raises(S3EncryptionClientError):
            official(moto_url, key_id).get_object(Bucket=V3, Key=key, EncryptionContext=wrong)


@pytest.mark.parametrize("v2", [False, True], ids=["v3", "v2"])
def test_foreign_objects_only_where_a_bucket_allows_them(names: tuple[Stack, str], moto_url: str, v2: bool) -> None:
    st, key_id = names
    data = os.urandom(30_000)
    key = f"foreign-{v2}"
    for bucket in (V3, PLAIN, OPTIN):
        official(moto_url, key_id, v2=v2).put_object(Bucket=bucket, Key=key, Body=data)
    s3 = st.client()
    for bucket in (V3, OPTIN):
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
        assert s3.get_object(Bucket=bucket, Key=key, Range="bytes=10-19")["Body"].read() == data[10:20]
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(data)
    for kwargs in ({}, {"Range": "bytes=0-9"}):
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket=PLAIN, Key=key, **kwargs)
        assert err.value.response["Error"]["Code"] == "InvalidObjectState"
        assert "s3ec_unbound_reads" in err.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket=PLAIN, Key=key)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # A foreign object with a context of its own is no more bound: still refused in PLAIN.
    official(moto_url, key_id, v2=v2).put_object(
        Bucket=PLAIN, Key=key + "-ctx", Body=data, EncryptionContext={"a": "b"}
    )
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=PLAIN, Key=key + "-ctx")
    assert err.value.response["Error"]["Code"] == "InvalidObjectState"


def test_a_forged_name_in_the_context_does_not_open(names: tuple[Stack, str], moto_url: str) -> None:
    """Rewriting x-amz-t to name the new place changes the KMS context: the key no longer opens."""
    st, _ = names
    st.client().put_object(Bucket=V3, Key="forge/a", Body=b"secret")
    raw = backend_client(moto_url)
    obj = raw.get_object(Bucket=V3, Key="forge/a")
    meta = dict(obj["Metadata"])
    meta[s3ec.META_V3_CONTEXT] = meta[s3ec.META_V3_CONTEXT].replace("forge/a", "forge/b")
    raw.put_object(Bucket=V3, Key="forge/b", Body=obj["Body"].read(), Metadata=meta)
    with pytest.raises(ClientError) as err:
        st.client().get_object(Bucket=V3, Key="forge/b")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 400
    assert b"secret" not in repr(err.value.response).encode()
