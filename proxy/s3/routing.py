"""Map an HTTP request to an S3 operation, bucket and key: pure, no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from proxy.s3.errors import S3Error

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")

#: Subresources that select an operation other than the plain object/bucket one.
_BUCKET_GET_OPS = {
    "location": "GetBucketLocation",
    "versions": "ListObjectVersions",
    "uploads": "ListMultipartUploads",
}


#: Every operation `route` can answer with (the access-control table must cover each).
OPERATIONS: frozenset[str] = frozenset(
    {
        "ListBuckets",
        "CreateBucket",
        "DeleteBucket",
        "HeadBucket",
        "GetBucketLocation",
        "ListObjects",
        "ListObjectsV2",
        "ListObjectVersions",
        "ListMultipartUploads",
        "DeleteObjects",
        "GetBucketVersioning",
        "PutBucketVersioning",
        "GetObjectLockConfiguration",
        "PutObjectLockConfiguration",
        "PutObject",
        "GetObject",
        "HeadObject",
        "DeleteObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
        "ListParts",
        "GetObjectTagging",
        "PutObjectTagging",
        "DeleteObjectTagging",
        "GetObjectRetention",
        "PutObjectRetention",
        "GetObjectLegalHold",
        "PutObjectLegalHold",
    }
)


@dataclass(frozen=True)
class Route:
    """What a request asks for."""

    operation: str
    bucket: str | None
    key: str | None


def split_host(host: str) -> str:
    """The host name without the port (IPv6 literals keep their brackets)."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def bucket_from_host(host: str, virtual_domains: Sequence[str]) -> str | None:
    """The bucket of a virtual-hosted-style request (``bucket.domain``), if the host is one."""
    name = split_host(host).lower()
    for domain in virtual_domains:
        suffix = "." + domain.lower()
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def valid_bucket_name(name: str) -> bool:
    """Loose S3 bucket-name check (legacy names with capitals are refused by S3 too)."""
    return bool(_BUCKET_RE.match(name)) and ".." not in name


def route(
    method: str,
    raw_path: str,
    query: Mapping[str, str],
    host: str,
    virtual_domains: Sequence[str] = ("localhost",),
) -> Route:
    """The operation for a request; S3Error(NotImplemented) for what sealgate does not serve.

    `raw_path` is the URL-encoded path without the query; keys are decoded exactly once, so
    ``a%2Fb`` and ``a/b`` are the same key, as on S3.
    """
    bucket = bucket_from_host(host, virtual_domains)
    path = raw_path
    if bucket is None:
        if not path.startswith("/"):
            raise S3Error("InvalidRequest", "request path must be absolute")
        rest = path[1:]
        if not rest:
            bucket_part, key_part = "", None
        elif "/" in rest:
            bucket_part, key_part = rest.split("/", 1)
        else:
            bucket_part, key_part = rest, None
        bucket = unquote(bucket_part) or None
        key = unquote(key_part) if key_part else None
    else:
        key = unquote(path[1:]) if len(path) > 1 else None
    if bucket is not None and not valid_bucket_name(bucket):
        raise S3Error("InvalidBucketName", "The specified bucket is not valid.", resource=bucket)
    if key is not None and len(key.encode()) > 1024:
        raise S3Error("KeyTooLongError", "Your key is too long", 400)
    op = _operation(method, bucket, key, query)
    assert op in OPERATIONS, op
    return Route(op, bucket, key)


#: The parameters of ListObjects and ListObjectsV2 (passed on to the backend as they are).
LIST_PARAMS = (
    "list-type",
    "prefix",
    "delimiter",
    "max-keys",
    "continuation-token",
    "start-after",
    "fetch-owner",
    "encoding-type",
    "marker",
)

#: Paging through version, upload and part listings.
PAGING_PARAMS = (
    "key-marker",
    "version-id-marker",
    "max-uploads",
    "upload-id-marker",
    "max-parts",
    "part-number-marker",
)

# Query parameters that do not change the operation (they tune it).
_NEUTRAL = {
    *LIST_PARAMS,
    "versionId",
    "partNumber",
    "response-content-type",
    "response-content-language",
    "response-expires",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "x-id",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "AWSAccessKeyId",
    "Signature",
    "Expires",
    "x-amz-checksum-mode",
    *PAGING_PARAMS,
}


def _operation(method: str, bucket: str | None, key: str | None, query: Mapping[str, str]) -> str:
    subresources = [q for q in query if q not in _NEUTRAL]
    if bucket is None:
        if method == "GET" and not subresources:
            return "ListBuckets"
        raise S3Error("NotImplemented", f"{method} on the service is not implemented by sealgate")
    if key is None:
        if subresources:
            if method == "GET" and len(subresources) == 1 and subresources[0] in _BUCKET_GET_OPS:
                op = _BUCKET_GET_OPS[subresources[0]]
                if op in ("GetBucketLocation", "ListMultipartUploads", "ListObjectVersions"):
                    return op
            if method == "POST" and subresources == ["delete"]:
                return "DeleteObjects"
            if subresources == ["versioning"] and method in ("GET", "PUT"):
                return "GetBucketVersioning" if method == "GET" else "PutBucketVersioning"
            if subresources == ["object-lock"] and method in ("GET", "PUT"):
                return "GetObjectLockConfiguration" if method == "GET" else "PutObjectLockConfiguration"
            raise S3Error(
                "NotImplemented",
                f"bucket subresource {'/'.join(sorted(subresources))} is not implemented by sealgate",
            )
        if method == "GET":
            return "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
        ops = {"PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket"}
        if method in ops:
            return ops[method]
        raise S3Error("MethodNotAllowed", f"{method} is not allowed on a bucket", 405)
    if subresources == ["uploads"] and method == "POST":
        return "CreateMultipartUpload"
    if subresources == ["uploadId"]:
        ops = {
            "PUT": "UploadPart",
            "POST": "CompleteMultipartUpload",
            "DELETE": "AbortMultipartUpload",
            "GET": "ListParts",
        }
        if method in ops:
            if method == "PUT" and "partNumber" not in query:
                raise S3Error("InvalidArgument", "UploadPart needs partNumber", 400)
            return ops[method]
    if subresources == ["tagging"]:
        ops = {"GET": "GetObjectTagging", "PUT": "PutObjectTagging", "DELETE": "DeleteObjectTagging"}
        if method in ops:
            return ops[method]
    if subresources == ["retention"] and method in ("GET", "PUT"):
        return "GetObjectRetention" if method == "GET" else "PutObjectRetention"
    if subresources == ["legal-hold"] and method in ("GET", "PUT"):
        return "GetObjectLegalHold" if method == "GET" else "PutObjectLegalHold"
    if subresources:
        raise S3Error(
            "NotImplemented",
            f"object subresource {'/'.join(sorted(subresources))} is not implemented by sealgate",
        )
    ops = {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}
    if method in ops:
        return ops[method]
    raise S3Error("MethodNotAllowed", f"{method} is not allowed on an object", 405)


def parse_copy_source(value: str) -> tuple[str, str, str | None]:
    """(bucket, key, version id) from an x-amz-copy-source header."""
    path, _, query = value.partition("?")
    path = unquote(path).lstrip("/")
    bucket, sep, key = path.partition("/")
    if not bucket or not sep or not key:
        raise S3Error(
            "InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey", 400
        )
    version = None
    if query.startswith("versionId="):
        version = unquote(query[len("versionId=") :])
    return bucket, key, version
