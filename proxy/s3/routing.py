"""Map an HTTP request to an S3 operation, bucket and key: pure, no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote

from proxy.s3.checksums import ALGORITHMS
from proxy.s3.errors import S3Error

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")


class Op(StrEnum):
    """Every operation `route` can answer with (the access-control table must cover each)."""

    LIST_BUCKETS = "ListBuckets"
    CREATE_BUCKET = "CreateBucket"
    DELETE_BUCKET = "DeleteBucket"
    HEAD_BUCKET = "HeadBucket"
    GET_BUCKET_LOCATION = "GetBucketLocation"
    LIST_OBJECTS = "ListObjects"
    LIST_OBJECTS_V2 = "ListObjectsV2"
    LIST_OBJECT_VERSIONS = "ListObjectVersions"
    LIST_MULTIPART_UPLOADS = "ListMultipartUploads"
    DELETE_OBJECTS = "DeleteObjects"
    GET_BUCKET_VERSIONING = "GetBucketVersioning"
    PUT_BUCKET_VERSIONING = "PutBucketVersioning"
    GET_OBJECT_LOCK_CONFIGURATION = "GetObjectLockConfiguration"
    PUT_OBJECT_LOCK_CONFIGURATION = "PutObjectLockConfiguration"
    PUT_OBJECT = "PutObject"
    GET_OBJECT = "GetObject"
    HEAD_OBJECT = "HeadObject"
    DELETE_OBJECT = "DeleteObject"
    CREATE_MULTIPART_UPLOAD = "CreateMultipartUpload"
    UPLOAD_PART = "UploadPart"
    COMPLETE_MULTIPART_UPLOAD = "CompleteMultipartUpload"
    ABORT_MULTIPART_UPLOAD = "AbortMultipartUpload"
    LIST_PARTS = "ListParts"
    GET_OBJECT_TAGGING = "GetObjectTagging"
    PUT_OBJECT_TAGGING = "PutObjectTagging"
    DELETE_OBJECT_TAGGING = "DeleteObjectTagging"
    GET_OBJECT_RETENTION = "GetObjectRetention"
    PUT_OBJECT_RETENTION = "PutObjectRetention"
    GET_OBJECT_LEGAL_HOLD = "GetObjectLegalHold"
    PUT_OBJECT_LEGAL_HOLD = "PutObjectLegalHold"
    COPY_OBJECT = "CopyObject"
    UPLOAD_PART_COPY = "UploadPartCopy"
    GET_BUCKET_TAGGING = "GetBucketTagging"
    PUT_BUCKET_TAGGING = "PutBucketTagging"
    DELETE_BUCKET_TAGGING = "DeleteBucketTagging"
    GET_BUCKET_ENCRYPTION = "GetBucketEncryption"
    PUT_BUCKET_ENCRYPTION = "PutBucketEncryption"
    DELETE_BUCKET_ENCRYPTION = "DeleteBucketEncryption"
    GET_BUCKET_LIFECYCLE = "GetBucketLifecycleConfiguration"
    PUT_BUCKET_LIFECYCLE = "PutBucketLifecycleConfiguration"
    DELETE_BUCKET_LIFECYCLE = "DeleteBucketLifecycle"
    GET_BUCKET_CORS = "GetBucketCors"
    PUT_BUCKET_CORS = "PutBucketCors"
    DELETE_BUCKET_CORS = "DeleteBucketCors"
    GET_BUCKET_ACL = "GetBucketAcl"
    PUT_BUCKET_ACL = "PutBucketAcl"
    GET_OBJECT_ACL = "GetObjectAcl"
    PUT_OBJECT_ACL = "PutObjectAcl"
    GET_OBJECT_ATTRIBUTES = "GetObjectAttributes"
    GET_BUCKET_POLICY = "GetBucketPolicy"
    PUT_BUCKET_POLICY = "PutBucketPolicy"
    DELETE_BUCKET_POLICY = "DeleteBucketPolicy"
    GET_BUCKET_POLICY_STATUS = "GetBucketPolicyStatus"
    GET_PUBLIC_ACCESS_BLOCK = "GetPublicAccessBlock"
    PUT_PUBLIC_ACCESS_BLOCK = "PutPublicAccessBlock"
    DELETE_PUBLIC_ACCESS_BLOCK = "DeletePublicAccessBlock"
    GET_BUCKET_OWNERSHIP_CONTROLS = "GetBucketOwnershipControls"
    PUT_BUCKET_OWNERSHIP_CONTROLS = "PutBucketOwnershipControls"
    DELETE_BUCKET_OWNERSHIP_CONTROLS = "DeleteBucketOwnershipControls"
    POST_OBJECT = "PostObject"


#: Every operation `route` can answer with.
OPERATIONS: frozenset[Op] = frozenset(Op)


@dataclass(frozen=True)
class Route:
    """What a request asks for."""

    operation: Op
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
    headers: Mapping[str, str] | None = None,
) -> Route:
    """The operation for a request; S3Error(NotImplemented) for what sealgate does not serve.

    `raw_path` is the URL-encoded path without the query; keys are decoded exactly once, so
    ``a%2Fb`` and ``a/b`` are the same key, as on S3. `headers` (case-insensitive) tell a copy
    (``x-amz-copy-source``) from an upload: CopyObject and UploadPartCopy are decided here.
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
    return Route(_operation(method, bucket, key, query, headers or {}), bucket, key)


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
#: Checksums a presigned URL may carry in its query (the body must match, as with the headers).
QUERY_CHECKSUMS = tuple(f"x-amz-checksum-{a}" for a in ALGORITHMS)

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
    # What presigning SDKs (the JavaScript SDK v3) put in the query: checked like their headers.
    "X-Amz-Content-Sha256",
    "x-amz-sdk-checksum-algorithm",
    *QUERY_CHECKSUMS,
    *PAGING_PARAMS,
}


#: (method, sub-resource) -> operation, on a bucket and on an object (None: no sub-resource).
_BUCKET_OPS: Mapping[tuple[str, str | None], Op] = {
    ("GET", None): Op.LIST_OBJECTS,  # or V2, by list-type
    ("PUT", None): Op.CREATE_BUCKET,
    ("DELETE", None): Op.DELETE_BUCKET,
    ("HEAD", None): Op.HEAD_BUCKET,
    ("GET", "location"): Op.GET_BUCKET_LOCATION,
    ("GET", "versions"): Op.LIST_OBJECT_VERSIONS,
    ("GET", "uploads"): Op.LIST_MULTIPART_UPLOADS,
    ("POST", None): Op.POST_OBJECT,  # a browser form upload, if multipart/form-data
    ("POST", "delete"): Op.DELETE_OBJECTS,
    ("GET", "versioning"): Op.GET_BUCKET_VERSIONING,
    ("PUT", "versioning"): Op.PUT_BUCKET_VERSIONING,
    ("GET", "object-lock"): Op.GET_OBJECT_LOCK_CONFIGURATION,
    ("PUT", "object-lock"): Op.PUT_OBJECT_LOCK_CONFIGURATION,
    ("GET", "tagging"): Op.GET_BUCKET_TAGGING,
    ("PUT", "tagging"): Op.PUT_BUCKET_TAGGING,
    ("DELETE", "tagging"): Op.DELETE_BUCKET_TAGGING,
    ("GET", "encryption"): Op.GET_BUCKET_ENCRYPTION,
    ("PUT", "encryption"): Op.PUT_BUCKET_ENCRYPTION,
    ("DELETE", "encryption"): Op.DELETE_BUCKET_ENCRYPTION,
    ("GET", "lifecycle"): Op.GET_BUCKET_LIFECYCLE,
    ("PUT", "lifecycle"): Op.PUT_BUCKET_LIFECYCLE,
    ("DELETE", "lifecycle"): Op.DELETE_BUCKET_LIFECYCLE,
    ("GET", "cors"): Op.GET_BUCKET_CORS,
    ("PUT", "cors"): Op.PUT_BUCKET_CORS,
    ("DELETE", "cors"): Op.DELETE_BUCKET_CORS,
    ("GET", "acl"): Op.GET_BUCKET_ACL,
    ("PUT", "acl"): Op.PUT_BUCKET_ACL,
    ("GET", "policy"): Op.GET_BUCKET_POLICY,
    ("PUT", "policy"): Op.PUT_BUCKET_POLICY,
    ("DELETE", "policy"): Op.DELETE_BUCKET_POLICY,
    ("GET", "policyStatus"): Op.GET_BUCKET_POLICY_STATUS,
    ("GET", "publicAccessBlock"): Op.GET_PUBLIC_ACCESS_BLOCK,
    ("PUT", "publicAccessBlock"): Op.PUT_PUBLIC_ACCESS_BLOCK,
    ("DELETE", "publicAccessBlock"): Op.DELETE_PUBLIC_ACCESS_BLOCK,
    ("GET", "ownershipControls"): Op.GET_BUCKET_OWNERSHIP_CONTROLS,
    ("PUT", "ownershipControls"): Op.PUT_BUCKET_OWNERSHIP_CONTROLS,
    ("DELETE", "ownershipControls"): Op.DELETE_BUCKET_OWNERSHIP_CONTROLS,
}
_OBJECT_OPS: Mapping[tuple[str, str | None], Op] = {
    ("PUT", None): Op.PUT_OBJECT,  # or CopyObject, by x-amz-copy-source
    ("GET", None): Op.GET_OBJECT,
    ("HEAD", None): Op.HEAD_OBJECT,
    ("DELETE", None): Op.DELETE_OBJECT,
    ("POST", "uploads"): Op.CREATE_MULTIPART_UPLOAD,
    ("PUT", "uploadId"): Op.UPLOAD_PART,  # or UploadPartCopy, by x-amz-copy-source
    ("POST", "uploadId"): Op.COMPLETE_MULTIPART_UPLOAD,
    ("DELETE", "uploadId"): Op.ABORT_MULTIPART_UPLOAD,
    ("GET", "uploadId"): Op.LIST_PARTS,
    ("GET", "tagging"): Op.GET_OBJECT_TAGGING,
    ("PUT", "tagging"): Op.PUT_OBJECT_TAGGING,
    ("DELETE", "tagging"): Op.DELETE_OBJECT_TAGGING,
    ("GET", "retention"): Op.GET_OBJECT_RETENTION,
    ("PUT", "retention"): Op.PUT_OBJECT_RETENTION,
    ("GET", "legal-hold"): Op.GET_OBJECT_LEGAL_HOLD,
    ("PUT", "legal-hold"): Op.PUT_OBJECT_LEGAL_HOLD,
    ("GET", "acl"): Op.GET_OBJECT_ACL,
    ("PUT", "acl"): Op.PUT_OBJECT_ACL,
    ("GET", "attributes"): Op.GET_OBJECT_ATTRIBUTES,
}
_COPIES = {Op.PUT_OBJECT: Op.COPY_OBJECT, Op.UPLOAD_PART: Op.UPLOAD_PART_COPY}


def _operation(
    method: str, bucket: str | None, key: str | None, query: Mapping[str, str], headers: Mapping[str, str]
) -> Op:
    subresources = [q for q in query if q not in _NEUTRAL]
    if bucket is None:
        if method == "GET" and not subresources:
            return Op.LIST_BUCKETS
        raise S3Error("NotImplemented", f"{method} on the service is not implemented by sealgate")
    where, table = ("a bucket", _BUCKET_OPS) if key is None else ("an object", _OBJECT_OPS)
    op = table.get((method, subresources[0] if subresources else None)) if len(subresources) < 2 else None
    if op is None:
        if subresources:
            raise S3Error(
                "NotImplemented",
                f"{where.split()[1]} subresource {'/'.join(sorted(subresources))} is not implemented by sealgate",
            )
        raise S3Error(
            "MethodNotAllowed", f"{method} is not allowed on {'a bucket' if key is None else 'an object'}", 405
        )
    if op is Op.POST_OBJECT and not headers.get("Content-Type", "").lower().startswith("multipart/form-data"):
        raise S3Error("MethodNotAllowed", "POST is not allowed on a bucket", 405)
    if op is Op.LIST_OBJECTS and query.get("list-type") == "2":
        return Op.LIST_OBJECTS_V2
    if op is Op.UPLOAD_PART and "partNumber" not in query:
        raise S3Error("InvalidArgument", "UploadPart needs partNumber", 400)
    if op in _COPIES and "x-amz-copy-source" in headers:
        return _COPIES[op]
    return op


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
