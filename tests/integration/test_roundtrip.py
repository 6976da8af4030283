"""Round trips through sealgate over real TLS, with what the backend stores checked directly."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.conftest import Stack

SEG = 64 * 1024
SIZES = [0, 1, SEG - 1, SEG, SEG + 1, 10 * 1024 * 1024 + 3]


def pattern(n: int) -> bytes:
    """Recognisable plaintext: a repeated marker that must never appear on the backend."""
    unit = b"SEALGATE-PLAINTEXT-MARKER-"
    return (unit * (n // len(unit) + 1))[:n]


@pytest.mark.parametrize("when_required", [False, True], ids=["aws-chunked", "when_required"])
@pytest.mark.parametrize("size", SIZES)
def test_put_get_round_trip(stack: Stack, bucket: str, size: int, when_required: bool) -> None:
    s3 = stack.client(when_required=when_required)
    data = os.urandom(size // 2) + pattern(size - size // 2)
    put = s3.put_object(Bucket=bucket, Key=f"obj-{size}", Body=data, ContentType="application/x-test")
    got = s3.get_object(Bucket=bucket, Key=f"obj-{size}")
    assert got["Body"].read() == data
    assert got["ContentLength"] == size
    assert got["ContentType"] == "application/x-test"
    assert got["ETag"] == put["ETag"]
    head = s3.head_object(Bucket=bucket, Key=f"obj-{size}")
    assert head["ContentLength"] == size
    assert head["ETag"] == put["ETag"]
    # What the backend holds is ciphertext of the right, larger size.
    raw = stack.backend().get_object(Bucket=bucket, Key=f"obj-{size}")["Body"].read()
    assert len(raw) > size
    if size >= 26:
        assert b"SEALGATE-PLAINTEXT-MARKER-" not in raw


def test_listing_shows_plaintext_sizes(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    sizes = {"a": 0, "b": 5, "dir/c": SEG + 7}
    for k, n in sizes.items():
        s3.put_object(Bucket=bucket, Key=k, Body=os.urandom(n))
    listed = s3.list_objects_v2(Bucket=bucket)
    assert {o["Key"]: o["Size"] for o in listed["Contents"]} == sizes
    for o in listed["Contents"]:
        # Never a bare 32-hex ETag that a sync tool could compare with its local MD5.
        assert "-" in o["ETag"]
    v1 = s3.list_objects(Bucket=bucket, Prefix="dir/")
    assert [(o["Key"], o["Size"]) for o in v1["Contents"]] == [("dir/c", SEG + 7)]
    delim = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in delim["CommonPrefixes"]] == ["dir/"]


def test_content_md5_gives_plaintext_md5_etag(stack: Stack, bucket: str) -> None:
    s3 = stack.client(when_required=True)
    data = os.urandom(1000)
    import base64

    md5 = hashlib.md5(data).digest()
    put = s3.put_object(Bucket=bucket, Key="m", Body=data, ContentMD5=base64.b64encode(md5).decode())
    assert put["ETag"] == f'"{md5.hex()}"'
    assert s3.head_object(Bucket=bucket, Key="m")["ETag"] == put["ETag"]
    assert s3.get_object(Bucket=bucket, Key="m")["ETag"] == put["ETag"]


def test_metadata_is_sealed_and_returned(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="meta", Body=b"x", Metadata={"secret-note": "launch codes 1234"})
    assert s3.head_object(Bucket=bucket, Key="meta")["Metadata"] == {"secret-note": "launch codes 1234"}
    assert s3.get_object(Bucket=bucket, Key="meta")["Metadata"] == {"secret-note": "launch codes 1234"}
    raw = stack.backend().head_object(Bucket=bucket, Key="meta")
    flat = repr(raw["Metadata"])
    assert "launch codes" not in flat and "secret-note" not in flat


def test_delete_and_missing(stack: Stack, bucket: str) -> None:
    from botocore.exceptions import ClientError

    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="gone", Body=b"bye")
    s3.delete_object(Bucket=bucket, Key="gone")
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="gone")
    assert err.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket=bucket, Key="gone")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_buckets(stack: Stack) -> None:
    from botocore.exceptions import ClientError

    s3 = stack.client()
    s3.create_bucket(Bucket="bucket-ops-test")
    assert "bucket-ops-test" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket="bucket-ops-test")
    s3.delete_bucket(Bucket="bucket-ops-test")
    with pytest.raises(ClientError) as err:
        s3.head_bucket(Bucket="bucket-ops-test")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_ranges(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    data = os.urandom(3 * SEG + 100)
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    for rng, (a, b) in {
        "bytes=0-0": (0, 1),
        f"bytes={SEG - 5}-{SEG + 5}": (SEG - 5, SEG + 6),
        f"bytes={2 * SEG}-": (2 * SEG, len(data)),
        "bytes=-10": (len(data) - 10, len(data)),
        f"bytes=-{2 * SEG}": (len(data) - 2 * SEG, len(data)),
        "bytes=5-999999999": (5, len(data)),
    }.items():
        got = s3.get_object(Bucket=bucket, Key="r", Range=rng)
        assert got["Body"].read() == data[a:b], rng
        assert got["ContentRange"] == f"bytes {a}-{b - 1}/{len(data)}"
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="r", Range=f"bytes={len(data)}-")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_conditional_get(stack: Stack, bucket: str) -> None:
    from botocore.exceptions import ClientError

    s3 = stack.client()
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"hello")["ETag"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"hello"
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0123"')
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304


def test_unsupported_operation_is_not_forwarded(stack: Stack, bucket: str) -> None:
    from botocore.exceptions import ClientError

    s3 = stack.client()
    with pytest.raises(ClientError) as err:
        s3.get_bucket_website(Bucket=bucket)
    assert err.value.response["Error"]["Code"] == "NotImplemented"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501


def test_unencrypted_objects_refused(stack: Stack, bucket: str) -> None:
    from botocore.exceptions import ClientError

    stack.backend().put_object(Bucket=bucket, Key="plain", Body=b"not sealed")
    with pytest.raises(ClientError) as err:
        stack.client().get_object(Bucket=bucket, Key="plain")
    assert err.value.response["Error"]["Code"] == "InvalidObjectState"


def test_health(stack: Stack) -> None:
    import urllib3

    http = urllib3.PoolManager(ca_certs=str(stack.ca_path))
    r = http.request("GET", stack.gate.url + "/-/healthz")
    assert r.status == 200 and r.data == b"ok\n"


def test_readyz_and_metrics(stack: Stack, bucket: str) -> None:
    import urllib3

    http = urllib3.PoolManager(ca_certs=str(stack.ca_path))
    r = http.request("GET", stack.gate.url + "/-/readyz")
    assert r.status == 200 and r.data == b"ready\n"
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="metered", Body=b"m" * 1000)
    got = s3.get_object(Bucket=bucket, Key="metered")
    assert got["ResponseMetadata"]["HTTPHeaders"].get("x-amz-request-id")  # streamed responses too
    got["Body"].read()
    text = http.request("GET", stack.gate.url + "/-/metrics").data.decode()
    assert 'sealgate_requests_total{operation="PutObject",status="200"}' in text
    assert 'sealgate_requests_total{operation="GetObject",status="200"}' in text
    assert 'sealgate_keyring_calls_total{operation="generate",outcome="ok"}' in text
    assert "sealgate_request_seconds_bucket" in text
    # The connection asking for the metrics is open while they are rendered.
    open_now = [line for line in text.splitlines() if line.startswith("sealgate_connections_open ")]
    assert open_now and float(open_now[0].split()[1]) >= 1


def test_readyz_reports_backend_down(tls_files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import urllib3

    from tests.conftest import free_port, start_stack

    st = start_stack(tmp_path, f"http://127.0.0.1:{free_port()}", tls_files)
    try:
        r = urllib3.PoolManager(ca_certs=str(st.ca_path)).request("GET", st.gate.url + "/-/readyz")
        assert r.status == 503 and b"backend" in r.data
    finally:
        st.gate.stop()
