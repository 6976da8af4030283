"""The documents of the access settings sealgate keeps for a bucket (public access block,
ownership controls, policy status) and the ACL rules they impose on requests: pure, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from proxy.s3.errors import S3Error
from proxy.s3.xml import S3_NS, child_text, document, iter_named, local_name, parse_client

#: PutPublicAccessBlock's four switches, in S3's order.
PAB_FIELDS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
#: The values of ObjectOwnership.
OWNERSHIP_VALUES = ("BucketOwnerEnforced", "BucketOwnerPreferred", "ObjectWriter")
#: Canned ACLs that make a bucket or object public (AWS's list for BlockPublicAcls).
PUBLIC_CANNED_ACLS = frozenset({"public-read", "public-read-write", "authenticated-read"})
_PUBLIC_GROUPS = (
    "http://acs.amazonaws.com/groups/global/AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
)
_GRANT_HEADERS = (
    "x-amz-grant-full-control",
    "x-amz-grant-read",
    "x-amz-grant-read-acp",
    "x-amz-grant-write",
    "x-amz-grant-write-acp",
)


@dataclass(frozen=True)
class PublicAccessBlock:
    """A bucket's public access block (all four off when it has none)."""

    block_public_acls: bool = False
    ignore_public_acls: bool = False
    block_public_policy: bool = False
    restrict_public_buckets: bool = False

    def values(self) -> tuple[bool, ...]:
        """The four switches in `PAB_FIELDS` order."""
        return (self.block_public_acls, self.ignore_public_acls, self.block_public_policy, self.restrict_public_buckets)

    def to_xml(self) -> bytes:
        """The GetPublicAccessBlock answer."""
        fields = [(name, "true" if on else "false") for name, on in zip(PAB_FIELDS, self.values(), strict=True)]
        return document("PublicAccessBlockConfiguration", fields)


def _flag(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise S3Error("MalformedXML", f"{name} must be true or false", 400)
    return value == "true"


def parse_public_access_block(body: bytes) -> PublicAccessBlock:
    """A PutPublicAccessBlock document (missing switches are off, as in S3)."""
    root = parse_client(body)
    if local_name(root.tag) != "PublicAccessBlockConfiguration":
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate", 400)
    present = {local_name(el.tag): el.text or "" for el in root}
    unknown = sorted(set(present) - set(PAB_FIELDS))
    if unknown:
        raise S3Error("MalformedXML", f"unknown element {unknown[0]} in PublicAccessBlockConfiguration", 400)
    flags = [_flag(present[name], name) if name in present else False for name in PAB_FIELDS]
    return PublicAccessBlock(*flags)


def parse_ownership_controls(body: bytes) -> str:
    """The ObjectOwnership of a PutBucketOwnershipControls document (one rule, as S3 takes)."""
    root = parse_client(body)
    rules = list(iter_named(root, "Rule"))
    if local_name(root.tag) != "OwnershipControls" or len(rules) != 1:
        raise S3Error("MalformedXML", "OwnershipControls takes exactly one Rule", 400)
    return check_ownership(child_text(rules[0], "ObjectOwnership"))


def check_ownership(value: str) -> str:
    """An ObjectOwnership value (header or document), or S3's error."""
    if value not in OWNERSHIP_VALUES:
        raise S3Error("InvalidArgument", f"ObjectOwnership must be one of {', '.join(OWNERSHIP_VALUES)}", 400)
    return value


def ownership_xml(value: str) -> bytes:
    """The GetBucketOwnershipControls answer."""
    rule = f"<Rule><ObjectOwnership>{check_ownership(value)}</ObjectOwnership></Rule>"
    head = f'<?xml version="1.0" encoding="UTF-8"?>\n<OwnershipControls xmlns="{S3_NS}">'
    return f"{head}{rule}</OwnershipControls>".encode()


def policy_status_xml(public: bool) -> bytes:
    """The GetBucketPolicyStatus answer."""
    return document("PolicyStatus", [("IsPublic", "true" if public else "false")])


def _grants_public(value: str) -> bool:
    return any(group in value for group in _PUBLIC_GROUPS)


def public_acl_in(headers: Mapping[str, str], body: bytes = b"") -> bool:
    """Whether a request sets a public ACL: a public canned ACL, a grant header or an
    AccessControlPolicy document granting AllUsers or AuthenticatedUsers."""
    if headers.get("x-amz-acl", "").strip().lower() in PUBLIC_CANNED_ACLS:
        return True
    if any(_grants_public(headers.get(name, "")) for name in _GRANT_HEADERS):
        return True
    return bool(body) and _grants_public(body.decode("utf-8", "replace"))


def sets_acl(headers: Mapping[str, str], body: bytes = b"") -> bool:
    """Whether a request sets any ACL other than bucket-owner-full-control (what a bucket with
    ObjectOwnership BucketOwnerEnforced refuses)."""
    canned = headers.get("x-amz-acl")
    if canned is not None and canned.strip().lower() != "bucket-owner-full-control":
        return True
    if any(name in headers for name in _GRANT_HEADERS):
        return True
    return bool(body) and b"Grant" in body and not _owner_full_control_only(body)


def _owner_full_control_only(body: bytes) -> bool:
    root = parse_client(body)
    permissions = [child_text(grant, "Permission") for grant in iter_named(root, "Grant")]
    return permissions == ["FULL_CONTROL"]


def acls_not_supported() -> S3Error:
    """What a bucket with BucketOwnerEnforced answers a request that sets an ACL."""
    return S3Error("AccessControlListNotSupported", "The bucket does not allow ACLs", 400)
