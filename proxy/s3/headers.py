"""S3 header names sealgate handles by list, and the ETag's quoting. Pure."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import quote

from proxy.crypto import format as sg_format
from proxy.crypto import s3ec
from proxy.s3.errors import S3Error

#: The prefix of user-metadata headers.
META_PREFIX = "x-amz-meta-"

#: S3 Object Lock: settings of the stored object (its version), enforced by the backend.
LOCK_HEADERS = (
    "x-amz-object-lock-mode",
    "x-amz-object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold",
)
#: Lets a client allowed to do so delete or shorten a version under governance-mode retention.
BYPASS_GOVERNANCE = "x-amz-bypass-governance-retention"
#: The standard content properties of an object (not secret: stored as the client sent them).
CONTENT_HEADERS = (
    "Content-Type",
    "Cache-Control",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Expires",
)
#: Request headers stored with the object as they are (S3 object properties); Content-Encoding
#: is stored too, without aws-chunked (see `proxy.store.objects.stored_headers`).
#: Canned and explicit ACLs: the backend keeps them (they govern access to the ciphertext there).
ACL_HEADERS = (
    "x-amz-acl",
    "x-amz-grant-full-control",
    "x-amz-grant-read",
    "x-amz-grant-read-acp",
    "x-amz-grant-write",
    "x-amz-grant-write-acp",
)
#: Server-side encryption the client asks the backend for as well (SSE-S3, SSE-KMS), and that
#: the backend reports back; sealgate's own encryption happens either way.
SSE_HEADERS = (
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-context",
    "x-amz-server-side-encryption-bucket-key-enabled",
)
STORED_HEADERS = (
    *LOCK_HEADERS,
    *ACL_HEADERS,
    *SSE_HEADERS,
    "Content-Type",
    "Cache-Control",
    "Content-Disposition",
    "Content-Language",
    "Expires",
    "x-amz-storage-class",
    "x-amz-tagging",
    "x-amz-website-redirect-location",
)
#: Backend response headers relayed to the client on GET and HEAD.
RELAYED_HEADERS = (
    *CONTENT_HEADERS,
    "Last-Modified",
    "x-amz-storage-class",
    "x-amz-version-id",
    "x-amz-delete-marker",
    "x-amz-tagging-count",
    "x-amz-website-redirect-location",
    *LOCK_HEADERS,
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-bucket-key-enabled",
)
#: What the backend reports of its own encryption in a write's answer, relayed as it is.
SSE_ANSWER_HEADERS = (
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-bucket-key-enabled",
)
#: What a write's answer relays of the backend's: the version id and its own encryption.
WRITE_ANSWER_HEADERS = ("x-amz-version-id", *SSE_ANSWER_HEADERS)
#: Properties an operator tool carries over when it rewrites an object in place.
CARRIED_HEADERS = (*CONTENT_HEADERS, "x-amz-storage-class", "x-amz-website-redirect-location")
#: Version ids a copy's answer carries in a versioned bucket (the copy's, the source's).
VERSION_HEADERS = ("x-amz-version-id", "x-amz-copy-source-version-id")


def etag_value(raw: str) -> str:
    """An ETag as S3 compares it: without surrounding whitespace and quotes."""
    return raw.strip().strip('"')


def quoted(etag: str) -> str:
    """An ETag in the quoted form S3's headers and documents show."""
    return f'"{etag_value(etag)}"'


def meta_headers(fields: Mapping[str, str]) -> dict[str, str]:
    """``x-amz-meta-*`` headers of metadata `fields` (names without the prefix)."""
    return {f"{META_PREFIX}{k}": v for k, v in fields.items()}


def picked(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The headers among `names` that `headers` has."""
    return {n: headers[n] for n in names if n in headers}


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's ``x-amz-meta-*`` headers, by name without the prefix (lower case)."""
    meta: dict[str, str] = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname.startswith(META_PREFIX):
            meta[lname[len(META_PREFIX) :]] = value
    return meta


#: User-metadata names (without the prefix, lower case) that sealgate or the S3 Encryption Client
#: write into an object's metadata: a client's entry under one of them would be read back as an
#: envelope field. ``sg-`` is sealgate's whole namespace (envelope, manifest records, signatures).
RESERVED_META_PREFIX = "sg-"
RESERVED_META_NAMES = frozenset(
    {*sg_format.ALL_META, *s3ec.ALL_META, "x-amz-unencrypted-content-length", "x-amz-crypto-instr-file"}
)


def reserved_metadata(headers: Mapping[str, str]) -> list[str]:
    """The client's ``x-amz-meta-*`` names (lower case, without the prefix) that sealgate
    reserves, sorted; compared case-insensitively."""
    names = user_metadata(headers)
    return sorted(n for n in names if n.startswith(RESERVED_META_PREFIX) or n in RESERVED_META_NAMES)


def refuse_reserved_metadata(headers: Mapping[str, str]) -> None:
    """Raise 400 InvalidArgument if the client's user metadata uses a name sealgate reserves."""
    clash = reserved_metadata(headers)
    if clash:
        names = ", ".join(f"{META_PREFIX}{n}" for n in clash)
        raise S3Error(
            "InvalidArgument",
            f"{names} is reserved by sealgate (its own and the S3 Encryption Client's object metadata); "
            "use another metadata name",
            400,
        )


def _ascii(name: str, value: str) -> str:
    """A header value the backend can take: non-ASCII text as S3 stores it, RFC 2047 encoded
    (percent-encoded in x-amz-tagging, a URL query); InvalidArgument for bytes that are not UTF-8."""
    if value.isascii():
        return value
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:  # aiohttp keeps bytes that are not UTF-8 as surrogates
        raise S3Error("InvalidArgument", f"the {name} header is not UTF-8 text", 400) from None
    if name == "x-amz-tagging":
        return quote(value, safe="=&%+-_.~/:@ ")
    return f"=?UTF-8?B?{base64.b64encode(raw).decode()}?="


def stored_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's content headers that the backend keeps as object properties (its
    Content-Encoding without aws-chunked, which only framed the upload), in ASCII."""
    out = {name: _ascii(name, headers[name]) for name in STORED_HEADERS if name in headers}
    encoding = [
        t.strip()
        for t in headers.get("Content-Encoding", "").split(",")
        if t.strip() and t.strip().lower() != "aws-chunked"
    ]
    if encoding:
        out["Content-Encoding"] = _ascii("Content-Encoding", ",".join(encoding))
    return out
