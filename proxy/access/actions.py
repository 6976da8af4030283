"""Which IAM actions on which resources each S3 operation needs: pure, no I/O.

The mapping is AWS's (the "Actions, resources, and condition keys for Amazon S3" reference and
each operation's "Permissions" section): one primary action per routed operation, plus the
actions a request's headers add (a copy's source, tags, Object Lock settings, the governance
bypass). `needs` turns one routed request into every `Need` that must be allowed; the server
checks them all before it makes any backend or keyring call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.s3.routing import parse_copy_source

#: The primary action of every operation the router serves (README "Access control" table).
OPERATION_ACTIONS: Mapping[str, str] = {
    "ListBuckets": "s3:ListAllMyBuckets",
    "CreateBucket": "s3:CreateBucket",
    "DeleteBucket": "s3:DeleteBucket",
    "HeadBucket": "s3:ListBucket",
    "GetBucketLocation": "s3:GetBucketLocation",
    "ListObjects": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "ListObjectVersions": "s3:ListBucketVersions",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "DeleteObjects": "s3:DeleteObject",
    "GetBucketVersioning": "s3:GetBucketVersioning",
    "PutBucketVersioning": "s3:PutBucketVersioning",
    "GetObjectLockConfiguration": "s3:GetBucketObjectLockConfiguration",
    "PutObjectLockConfiguration": "s3:PutBucketObjectLockConfiguration",
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "DeleteObject": "s3:DeleteObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts",
    "GetObjectTagging": "s3:GetObjectTagging",
    "PutObjectTagging": "s3:PutObjectTagging",
    "DeleteObjectTagging": "s3:DeleteObjectTagging",
    "GetObjectRetention": "s3:GetObjectRetention",
    "PutObjectRetention": "s3:PutObjectRetention",
    "GetObjectLegalHold": "s3:GetObjectLegalHold",
    "PutObjectLegalHold": "s3:PutObjectLegalHold",
    "CopyObject": "s3:PutObject",  # and s3:GetObject on the source
    "UploadPartCopy": "s3:PutObject",  # likewise
    "GetBucketTagging": "s3:GetBucketTagging",
    "PutBucketTagging": "s3:PutBucketTagging",
    "DeleteBucketTagging": "s3:PutBucketTagging",
    "GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "DeleteBucketEncryption": "s3:PutEncryptionConfiguration",
    "GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
    "DeleteBucketLifecycle": "s3:PutLifecycleConfiguration",
    "GetBucketCors": "s3:GetBucketCORS",
    "PutBucketCors": "s3:PutBucketCORS",
    "DeleteBucketCors": "s3:PutBucketCORS",
    "GetBucketAcl": "s3:GetBucketAcl",
    "PutBucketAcl": "s3:PutBucketAcl",
    "GetObjectAcl": "s3:GetObjectAcl",
    "PutObjectAcl": "s3:PutObjectAcl",
    "GetObjectAttributes": "s3:GetObjectAttributes",
    "GetBucketPolicy": "s3:GetBucketPolicy",
    "PutBucketPolicy": "s3:PutBucketPolicy",
    "DeleteBucketPolicy": "s3:DeleteBucketPolicy",
    "GetBucketPolicyStatus": "s3:GetBucketPolicyStatus",
    "GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "DeletePublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "GetBucketOwnershipControls": "s3:GetBucketOwnershipControls",
    "PutBucketOwnershipControls": "s3:PutBucketOwnershipControls",
    "DeleteBucketOwnershipControls": "s3:PutBucketOwnershipControls",
    "PostObject": "s3:PutObject",  # the form's key; plus what its fields add, as PutObject's headers
}

#: Actions that destroy or unprotect data: audited when allowed, not only when refused.
DESTRUCTIVE: frozenset[str] = frozenset(
    {
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
        "s3:DeleteBucket",
        "s3:AbortMultipartUpload",
        "s3:PutBucketVersioning",
        "s3:PutBucketObjectLockConfiguration",
        "s3:PutObjectRetention",
        "s3:PutObjectLegalHold",
        "s3:BypassGovernanceRetention",
        "s3:DeleteObjectTagging",
        "s3:DeleteObjectVersionTagging",
        "s3:PutLifecycleConfiguration",
        "s3:PutBucketAcl",
        "s3:PutObjectAcl",
        "s3:PutObjectVersionAcl",
        "s3:PutEncryptionConfiguration",
        # Who may do what: changes to access are audited like deletes.
        "s3:PutBucketPolicy",
        "s3:DeleteBucketPolicy",
        "s3:PutBucketPublicAccessBlock",
        "s3:PutBucketOwnershipControls",
    }
)

#: With a versionId, these operations act on one version and AWS checks the *Version action.
_VERSIONED = {
    "s3:GetObject": "s3:GetObjectVersion",
    "s3:DeleteObject": "s3:DeleteObjectVersion",
    "s3:GetObjectTagging": "s3:GetObjectVersionTagging",
    "s3:PutObjectTagging": "s3:PutObjectVersionTagging",
    "s3:DeleteObjectTagging": "s3:DeleteObjectVersionTagging",
    "s3:GetObjectAcl": "s3:GetObjectVersionAcl",
    "s3:PutObjectAcl": "s3:PutObjectVersionAcl",
    "s3:GetObjectAttributes": "s3:GetObjectVersionAttributes",
}

_LIST_KEYS = {"prefix": "s3:prefix", "delimiter": "s3:delimiter", "max-keys": "s3:max-keys"}
_LISTINGS = {"ListObjects", "ListObjectsV2", "ListObjectVersions"}
_WRITES = {"PutObject", "CreateMultipartUpload", "CopyObject", "PostObject"}
_COPIES = {"CopyObject", "UploadPartCopy"}
BYPASS_HEADER = "x-amz-bypass-governance-retention"


@dataclass(frozen=True)
class Need:
    """One action on one resource that must be allowed, with its request's condition keys."""

    action: str
    bucket: str | None
    key: str | None = None
    #: Condition keys this request sets (lower-case names), beyond the caller's own.
    context: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)

    @property
    def resource(self) -> str:
        """The resource's ARN: ``arn:aws:s3:::bucket[/key]`` (``arn:aws:s3:::*`` for the service)."""
        if self.bucket is None:
            return "arn:aws:s3:::*"
        if self.key is None:
            return f"arn:aws:s3:::{self.bucket}"
        return f"arn:aws:s3:::{self.bucket}/{self.key}"


def object_need(action: str, bucket: str, key: str, version_id: str | None, **context: str | tuple[str, ...]) -> Need:
    """`action` on one object (the *Version form and ``s3:versionid`` when a version is named)."""
    ctx: dict[str, str | tuple[str, ...]] = dict(context)
    if version_id is not None:
        action = _VERSIONED.get(action, action)
        ctx["s3:versionid"] = version_id
    return Need(action, bucket, key, ctx)


def delete_need(bucket: str, key: str, version_id: str | None) -> Need:
    """What deleting one object (or one version of it) needs; DeleteObjects asks it per key."""
    return object_need("s3:DeleteObject", bucket, key, version_id)


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


def needs(
    operation: str,
    bucket: str | None,
    key: str | None,
    query: Mapping[str, str],
    headers: Mapping[str, str],
) -> tuple[Need, ...]:
    """Everything one routed request needs allowed (KeyError for an operation with no action).

    DeleteObjects needs nothing here: its keys are in the body, and each is checked as
    `delete_need` once the body is read (as on S3, a refused key is that key's error)."""
    action = OPERATION_ACTIONS[operation]
    if operation == "DeleteObjects":
        assert bucket is not None
        out = [Need("s3:BypassGovernanceRetention", bucket)] if _is_true(headers.get(BYPASS_HEADER)) else []
        return tuple(out)
    ctx: dict[str, str | tuple[str, ...]] = {}
    acl = headers.get("x-amz-acl")
    if acl is not None:
        ctx["s3:x-amz-acl"] = acl
    for name in ("x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id"):
        if name in headers and operation in _WRITES:
            ctx[f"s3:{name}"] = headers[name]
    if operation in _LISTINGS:
        ctx.update({name: query[param] for param, name in _LIST_KEYS.items() if param in query})
    if bucket is None or key is None:
        out = [Need(action, bucket, None, ctx)]
        if operation == "CreateBucket" and _is_true(headers.get("x-amz-bucket-object-lock-enabled")):
            out += [Need("s3:PutBucketObjectLockConfiguration", bucket), Need("s3:PutBucketVersioning", bucket)]
        if operation == "CreateBucket" and "x-amz-object-ownership" in headers:
            out.append(Need("s3:PutBucketOwnershipControls", bucket))
        return tuple(out)
    version = query.get("versionId")
    out = [object_need(action, bucket, key, version if operation not in _WRITES else None, **ctx)]
    if operation in _COPIES:
        src_bucket, src_key, src_version = parse_copy_source(headers.get("x-amz-copy-source", ""))
        out.append(object_need("s3:GetObject", src_bucket, src_key, src_version))
    if operation in _WRITES:
        if "x-amz-tagging" in headers:
            out.append(Need("s3:PutObjectTagging", bucket, key))
        if "x-amz-object-lock-mode" in headers or "x-amz-object-lock-retain-until-date" in headers:
            out.append(Need("s3:PutObjectRetention", bucket, key))
        if "x-amz-object-lock-legal-hold" in headers:
            out.append(Need("s3:PutObjectLegalHold", bucket, key))
    if operation in ("DeleteObject", "PutObjectRetention") and _is_true(headers.get(BYPASS_HEADER)):
        out.append(Need("s3:BypassGovernanceRetention", bucket, key))
    return tuple(out)


def need_for(action: str, resource: str, context: Mapping[str, str | tuple[str, ...]] | None = None) -> Need:
    """A need from an action and an ARN (``arn:aws:s3:::bucket[/key]``, ``arn:aws:s3:::*``) or the
    short ``bucket[/key]`` form, for `sealgate policy check`; ValueError if it is neither."""
    name = resource[len("arn:aws:s3:::") :] if resource.startswith("arn:aws:s3:::") else resource
    if resource.startswith("arn:") and not resource.startswith("arn:aws:s3:::"):
        raise ValueError(f"not an S3 resource ARN: {resource}")
    if name in ("*", ""):
        return Need(action, None, None, dict(context or {}))
    bucket, sep, key = name.partition("/")
    return Need(action, bucket, key if sep else None, dict(context or {}))
