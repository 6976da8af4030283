"""Listing pages as they would be without sealgate's records: a bucket holding open uploads and
multipart objects (records under ``.sealgate/``, hidden from clients) is paged through with
every max-keys, V1 and V2, with and without a delimiter, on moto and on `rclone serve s3`; the
pages are those the same backend gives for a twin bucket with the same keys and no records (for
V2, and V1 without a delimiter, exactly max-keys entries until the last, as S3 pages; moto
answers a V1 listing with a delimiter in its own way, and sealgate's pages follow it)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, backend_client, multipart_put, start_stack

RCLONE = {"akid": "rcloneaccess", "secret": "rclonesecret0123456789"}
# Before the reserved prefix ('!', '-' < '.'), after it ('U', 'a', ...), and in prefixes.
KEYS = ["!first", "-dash", "Upper", "a", "b/c", "b/d", "mp-done", "z/y", "zz"]


@pytest.fixture(scope="module", params=["moto", "rclone-serve-s3"])
def filled(
    request: pytest.FixtureRequest, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str, Any]]:
    """A sealgate, a bucket with KEYS and five of sealgate's records, a raw backend client, and
    the twin bucket on the backend (KEYS, written there directly)."""
    d = tmp_path_factory.mktemp("pages")
    if request.param == "moto":
        url, creds = request.getfixturevalue("moto_url"), {}
        st = start_stack(d, url, tls_files)
    else:
        url, creds = request.getfixturevalue("rclone_s3"), RCLONE
        extra = "multipart_etag_suffix = false"
        st = start_stack(
            d, url, tls_files, backend_akid=RCLONE["akid"], backend_secret=RCLONE["secret"], backend_extra=extra
        )
    s3 = st.client()
    bucket = f"pages-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    for key in KEYS:
        if key != "mp-done":
            s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    multipart_put(s3, bucket, "mp-done", [os.urandom(100)])
    for i in range(3):
        s3.create_multipart_upload(Bucket=bucket, Key=f"open-{i}")
    raw = backend_client(url, **creds)
    raw.create_bucket(Bucket=f"{bucket}-twin")
    for key in KEYS:
        raw.put_object(Bucket=f"{bucket}-twin", Key=key, Body=b"x")
    try:
        yield st, bucket, raw
    finally:
        st.gate.stop()


def _expected(delimiter: str | None) -> list[str]:
    """The entries S3 would list (keys, and common prefixes for a delimiter), in byte order."""
    entries = {k.split(delimiter)[0] + delimiter if delimiter and delimiter in k else k for k in KEYS}
    return sorted(entries, key=lambda e: e.encode())


def _pages(s3: Any, bucket: str, v2: bool, max_keys: int, delimiter: str | None) -> list[list[str]]:
    """Every page's entries, followed as a client follows them (token, NextMarker or last key)."""
    pages: list[list[str]] = []
    kw: dict[str, Any] = {"Bucket": bucket, "MaxKeys": max_keys, **({"Delimiter": delimiter} if delimiter else {})}
    while True:
        page = (s3.list_objects_v2 if v2 else s3.list_objects)(**kw)
        keys = [o["Key"] for o in page.get("Contents", [])]
        prefixes = [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        pages.append(sorted(keys + prefixes, key=lambda e: e.encode()))
        if v2:
            assert page["KeyCount"] == len(keys) + len(prefixes)
        if not page["IsTruncated"]:
            return pages
        assert len(pages) < 50, pages
        if v2:
            kw["ContinuationToken"] = page["NextContinuationToken"]
        else:
            kw["Marker"] = page.get("NextMarker") or keys[-1]


def test_the_bucket_holds_sealgate_records_that_sort_among_the_keys(filled: tuple[Stack, str, Any]) -> None:
    """The premise: the backend lists the records between the clients' keys."""
    _, bucket, raw = filled
    stored = [o["Key"] for o in raw.list_objects_v2(Bucket=bucket)["Contents"]]
    records = [k for k in stored if k.startswith(".sealgate/")]
    assert len(records) >= 4, stored
    assert stored.index(records[0]) == 2  # after "!first" and "-dash"


@pytest.mark.parametrize("delimiter", [None, "/"])
@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
def test_every_page_is_as_full_as_without_the_records(
    filled: tuple[Stack, str, Any], v2: bool, delimiter: str | None, request: pytest.FixtureRequest
) -> None:
    st, bucket, raw = filled
    s3 = st.client()
    want = _expected(delimiter)
    for max_keys in range(1, len(want) + 2):
        through = _pages(s3, bucket, v2, max_keys, delimiter)
        assert through == _pages(raw, f"{bucket}-twin", v2, max_keys, delimiter), max_keys
        if v2 or not delimiter or "moto" not in request.node.callspec.id:
            assert through == [want[i : i + max_keys] for i in range(0, len(want), max_keys)], max_keys


def test_version_listing_pages_reach_every_version_and_are_filled(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """A versioned bucket whose records have versions and delete markers of their own (an upload
    completed, one aborted, one open): at any max-keys, following NextKeyMarker and
    NextVersionIdMarker through sealgate lists every version and delete marker of the clients'
    keys once and none of sealgate's; from max-keys 4 (the records take fewer requests to pass
    than a page may make) the pages equal those of a twin bucket without records."""
    st = start_stack(tmp_path, moto_url, tls_files)
    try:
        s3, raw = st.client(), backend_client(moto_url)
        bucket = f"vpages-{uuid.uuid4().hex[:10]}"
        twin = f"{bucket}-twin"
        s3.create_bucket(Bucket=bucket)
        raw.create_bucket(Bucket=twin)
        for c, b in ((s3, bucket), (raw, twin)):
            c.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
            for key in ("!first", "-dash", "a", "a", "b", "gone"):
                c.put_object(Bucket=b, Key=key, Body=b"x")
            c.delete_object(Bucket=b, Key="gone")
        multipart_put(s3, bucket, "mp", [b"p" * 100])
        raw.put_object(Bucket=twin, Key="mp", Body=b"x")
        aborted = s3.create_multipart_upload(Bucket=bucket, Key="aborted")["UploadId"]
        s3.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=aborted)
        s3.create_multipart_upload(Bucket=bucket, Key="open")
        stored = raw.list_object_versions(Bucket=bucket)
        want = sorted(
            (v["Key"], v["VersionId"])
            for v in [*stored.get("Versions", []), *stored.get("DeleteMarkers", [])]
            if not v["Key"].startswith(".sealgate/")
        )
        assert len(want) == 8 and len(stored.get("Versions", [])) + len(stored.get("DeleteMarkers", [])) > 10
        for max_keys in (1, 2, 3, 5, 1000):
            seen = []
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, MaxKeys=max_keys):
                seen += [
                    (v["Key"], v["VersionId"]) for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
                ]
            assert sorted(seen) == want, max_keys
        for max_keys in range(4, 10):
            assert _version_pages(s3, bucket, max_keys) == _version_pages(raw, twin, max_keys), max_keys
    finally:
        st.gate.stop()


def _version_pages(s3: Any, bucket: str, max_keys: int) -> list[list[tuple[str, bool]]]:
    """Every ListObjectVersions page as (key, is a delete marker), followed by its markers."""
    pages: list[list[tuple[str, bool]]] = []
    kw: dict[str, Any] = {"Bucket": bucket, "MaxKeys": max_keys}
    while True:
        page = s3.list_object_versions(**kw)
        entries = [(v["Key"], False) for v in page.get("Versions", [])]
        entries += [(m["Key"], True) for m in page.get("DeleteMarkers", [])]
        pages.append(sorted(entries, key=lambda e: e[0].encode()))
        if not page["IsTruncated"]:
            return pages
        assert len(pages) < 60, pages
        kw["KeyMarker"], kw["VersionIdMarker"] = page["NextKeyMarker"], page["NextVersionIdMarker"]
