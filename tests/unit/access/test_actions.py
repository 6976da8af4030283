"""The action table: every routed operation maps to AWS's action, with the extra ones its headers add."""

from __future__ import annotations

import itertools

import pytest
from multidict import CIMultiDict

from proxy.access.actions import OPERATION_ACTIONS, Need, delete_need, needs
from proxy.access.policy import KNOWN_S3_ACTIONS
from proxy.s3.errors import S3Error
from proxy.s3.routing import OPERATIONS, route

_SUBRESOURCES = [
    "",
    "acl",
    "attributes",
    "encryption",
    "lifecycle",
    "cors",
    "uploads",
    "uploadId=x",
    "uploadId=x&partNumber=1",
    "tagging",
    "retention",
    "legal-hold",
    "versioning",
    "object-lock",
    "location",
    "versions",
    "delete",
    "list-type=2",
    "versionId=v1",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "ownershipControls",
]


def test_every_operation_the_router_serves_has_an_action() -> None:
    assert set(OPERATION_ACTIONS) == set(OPERATIONS)
    assert set(OPERATION_ACTIONS.values()) <= KNOWN_S3_ACTIONS


def test_every_routed_request_has_needs() -> None:
    """Drive the router over methods x paths x sub-resources: whatever it routes has an action."""
    seen = set()
    for method, path, sub, copy in itertools.product(
        ["GET", "PUT", "POST", "DELETE", "HEAD"], ["/", "/bkt", "/bkt/k"], _SUBRESOURCES, [False, True]
    ):
        query = dict(p.partition("=")[::2] for p in sub.split("&") if p)
        headers = CIMultiDict(
            {"x-amz-copy-source": "src/key"} if copy else {"Content-Type": "multipart/form-data; boundary=b"}
        )
        try:
            r = route(method, path, query, "localhost", headers=headers)
        except S3Error:
            continue
        seen.add(r.operation)
        got = needs(r.operation, r.bucket, r.key, query, headers)
        if r.operation != "DeleteObjects":
            assert got and got[0].action == OPERATION_ACTIONS[r.operation] or "Version" in got[0].action
    assert seen == set(OPERATIONS)


def _needs(
    op: str, bucket: str | None = "b", key: str | None = "k", query=None, **headers: str
) -> list[tuple[str, str]]:
    h = CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})
    return [(n.action, n.resource) for n in needs(op, bucket, key, query or {}, h)]


def test_object_reads_and_versions() -> None:
    assert _needs("GetObject") == [("s3:GetObject", "arn:aws:s3:::b/k")]
    assert _needs("HeadObject", query={"versionId": "v"}) == [("s3:GetObjectVersion", "arn:aws:s3:::b/k")]
    assert _needs("DeleteObject", query={"versionId": "v"}) == [("s3:DeleteObjectVersion", "arn:aws:s3:::b/k")]
    assert _needs("PutObjectTagging", query={"versionId": "v"}) == [("s3:PutObjectVersionTagging", "arn:aws:s3:::b/k")]
    n = needs("GetObject", "b", "k", {"versionId": "v"}, CIMultiDict())[0]
    assert n.context["s3:versionid"] == "v"


def test_copies_need_the_source_too() -> None:
    assert _needs("CopyObject", x_amz_copy_source="/src/a%20b?versionId=3") == [
        ("s3:PutObject", "arn:aws:s3:::b/k"),
        ("s3:GetObjectVersion", "arn:aws:s3:::src/a b"),
    ]
    assert _needs("UploadPartCopy", query={"uploadId": "u", "partNumber": "1"}, x_amz_copy_source="src/x") == [
        ("s3:PutObject", "arn:aws:s3:::b/k"),
        ("s3:GetObject", "arn:aws:s3:::src/x"),
    ]
    with pytest.raises(S3Error) as err:
        _needs("CopyObject", x_amz_copy_source="nokey")
    assert err.value.code == "InvalidArgument"
    # A copy that sets tags needs the tagging action too, as a PutObject does.
    assert ("s3:PutObjectTagging", "arn:aws:s3:::b/k") in _needs(
        "CopyObject", x_amz_copy_source="s/k", x_amz_tagging="a=b"
    )


def test_headers_that_add_actions() -> None:
    assert ("s3:PutObjectTagging", "arn:aws:s3:::b/k") in _needs("PutObject", x_amz_tagging="a=b")
    assert ("s3:PutObjectRetention", "arn:aws:s3:::b/k") in _needs(
        "CreateMultipartUpload", x_amz_object_lock_mode="GOVERNANCE"
    )
    assert ("s3:PutObjectLegalHold", "arn:aws:s3:::b/k") in _needs("PutObject", x_amz_object_lock_legal_hold="ON")
    bypass = ("s3:BypassGovernanceRetention", "arn:aws:s3:::b/k")
    assert bypass in _needs("DeleteObject", x_amz_bypass_governance_retention="true")
    assert bypass in _needs("PutObjectRetention", x_amz_bypass_governance_retention="True")
    assert bypass not in _needs("DeleteObject", x_amz_bypass_governance_retention="false")
    assert _needs("DeleteObjects", key=None, x_amz_bypass_governance_retention="true") == [
        ("s3:BypassGovernanceRetention", "arn:aws:s3:::b")
    ]
    assert _needs("DeleteObjects", key=None) == []
    assert ("s3:PutBucketObjectLockConfiguration", "arn:aws:s3:::b") in _needs(
        "CreateBucket", key=None, x_amz_bucket_object_lock_enabled="true"
    )


def test_bucket_and_service_resources() -> None:
    assert _needs("ListBuckets", bucket=None, key=None) == [("s3:ListAllMyBuckets", "arn:aws:s3:::*")]
    assert _needs("HeadBucket", key=None) == [("s3:ListBucket", "arn:aws:s3:::b")]
    n = needs("ListObjectsV2", "b", None, {"prefix": "home/", "delimiter": "/", "max-keys": "5"}, CIMultiDict())[0]
    assert dict(n.context) == {"s3:prefix": "home/", "s3:delimiter": "/", "s3:max-keys": "5"}
    assert "s3:prefix" not in needs("ListObjects", "b", None, {}, CIMultiDict())[0].context


def test_delete_need() -> None:
    assert delete_need("b", "k", None) == Need("s3:DeleteObject", "b", "k", {})
    assert delete_need("b", "k", "v").action == "s3:DeleteObjectVersion"
