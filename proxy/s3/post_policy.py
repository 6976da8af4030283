"""POST Object policies: parse the form's signed policy document, check its signature (SigV4 or
SigV2) and its conditions, as S3 does. Pure, no I/O.

The rules are S3's ("Creating a POST policy", sigv4-HTTPPOSTConstructPolicy): the policy is
base64 JSON with an ``expiration`` and ``conditions``; a condition is an exact match
(``{"acl": "public-read"}`` or ``["eq", "$acl", "public-read"]``), a prefix
(``["starts-with", "$key", "user/"]``) or ``["content-length-range", min, max]``; every form
field but a few must be named by a condition; the ``bucket`` condition is checked against the
bucket the form is posted to. Field names are case-insensitive, values are not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from multidict import CIMultiDict

from proxy.s3.errors import S3Error
from proxy.s3.headers import CONTENT_HEADERS, META_PREFIX, STORED_HEADERS
from proxy.s3.sigv4 import ALGORITHM, ClientCredentials, parse_credential, signing_key
from proxy.s3.xml import child_text, iter_named, local_name, parse_client

#: Fields no condition has to name (besides ``x-ignore-*``): the signature's own and the file.
EXEMPT_V4 = frozenset({"policy", "x-amz-signature", "file"})
EXEMPT_V2 = frozenset({"policy", "signature", "awsaccesskeyid", "file"})
IGNORE_PREFIX = "x-ignore-"
#: Fields whose conditions may only be exact matches (the signature's scope and the bucket).
_EXACT_ONLY = frozenset({"bucket", "success_action_status", "x-amz-algorithm", "x-amz-credential", "x-amz-date"})
_DATE_RE = re.compile(r"^\d{8}T\d{6}Z$")
_DIGITS = re.compile(r"^[0-9]{1,19}$")


@dataclass(frozen=True)
class Condition:
    """One ``eq`` or ``starts-with`` condition on a form field (name lower case, without ``$``)."""

    op: str
    field: str
    value: str

    def describe(self) -> str:
        """The condition as S3 quotes it in its error message."""
        return json.dumps([self.op, "$" + self.field, self.value])


@dataclass(frozen=True)
class PostPolicy:
    """A parsed policy document."""

    expiration: datetime
    conditions: tuple[Condition, ...]
    #: (min, max) bytes of the file, inclusive, if the policy limits it.
    length_range: tuple[int, int] | None


@dataclass(frozen=True)
class Signer:
    """Who signed a form's policy, and when (SigV4's x-amz-date; None for SigV2)."""

    credentials: ClientCredentials
    signed_at: datetime | None


def policy_denied(detail: str) -> S3Error:
    """S3's AccessDenied for a form its policy does not allow."""
    return S3Error("AccessDenied", f"Invalid according to Policy: {detail}", 403)


def _invalid_policy(detail: str) -> S3Error:
    return S3Error("InvalidPolicyDocument", f"Invalid Policy: {detail}", 400)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "conditions" (or "expiration") keys would leave it to the JSON parser which one counts.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _invalid_policy(f"Duplicate key {k!r}.")
        out[k] = v
    return out


def _decode(policy_b64: str) -> dict[str, Any]:
    try:
        raw = base64.b64decode(policy_b64.strip(), validate=True)
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (binascii.Error, ValueError, RecursionError):
        raise _invalid_policy("Invalid JSON.") from None
    if not isinstance(doc, dict):
        raise _invalid_policy("Invalid JSON.")
    return doc


def _expiration(value: object) -> datetime:
    if not isinstance(value, str):
        raise _invalid_policy("Policy missing expiration.")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise _invalid_policy(f"Invalid 'expiration' value: '{value[:64]}'") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _length(value: object) -> int:
    if isinstance(value, bool):
        raise _invalid_policy("Invalid content-length-range.")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and _DIGITS.match(value.strip()):
        return int(value.strip())
    raise _invalid_policy("Invalid content-length-range.")


def _condition(item: object) -> Condition | tuple[int, int]:
    """One entry of ``conditions``: a Condition, or a content-length-range (min, max)."""
    if isinstance(item, dict):
        if len(item) != 1:
            raise _invalid_policy("Each condition object must name exactly one field.")
        ((name, value),) = item.items()
        if not isinstance(value, str):
            raise _invalid_policy(f"Condition value of '{name[:64]}' must be a string.")
        return Condition("eq", name.lower().removeprefix("$"), value)
    if not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str):
        raise _invalid_policy("Invalid condition; expected an object or a list of three.")
    op = item[0].lower()
    if op == "content-length-range":
        low, high = _length(item[1]), _length(item[2])
        if low > high:
            raise _invalid_policy("Invalid content-length-range.")
        return low, high
    if op not in ("eq", "starts-with"):
        raise _invalid_policy(f"Unknown condition operator '{item[0][:32]}'.")
    name, value = item[1], item[2]
    if not isinstance(name, str) or not name.startswith("$") or not isinstance(value, str):
        raise _invalid_policy('Invalid condition; expected [op, "$field", "value"].')
    return Condition(op, name[1:].lower(), value)


def parse_policy(policy_b64: str) -> PostPolicy:
    """The policy document of a form's ``policy`` field; InvalidPolicyDocument if it is not one."""
    doc = _decode(policy_b64)
    expiration = _expiration(doc.get("expiration"))
    items = doc.get("conditions")
    if not isinstance(items, list):
        raise _invalid_policy("Policy missing conditions.")
    conditions: list[Condition] = []
    length_range: tuple[int, int] | None = None
    for item in items:
        parsed = _condition(item)
        if isinstance(parsed, Condition):
            conditions.append(parsed)
        elif length_range is None:
            length_range = parsed
        else:  # several ranges: all must hold, so their intersection is the one
            length_range = (max(length_range[0], parsed[0]), min(length_range[1], parsed[1]))
    return PostPolicy(expiration, tuple(conditions), length_range)


def _matches(cond: Condition, value: str | None) -> bool:
    if value is None:
        return False
    if cond.op == "eq":
        return value == cond.value
    if cond.field == "content-type":
        # S3 checks each of a comma-separated list of types.
        return all(part.strip().startswith(cond.value) for part in value.split(","))
    return value.startswith(cond.value)


def check_conditions(policy: PostPolicy, fields: Mapping[str, str], bucket: str, exempt: frozenset[str]) -> None:
    """AccessDenied ("Invalid according to Policy: ...") unless every condition holds and every
    field the form carries is named by one. `fields` are the form's fields before the file, by
    lower-case name, with ``${filename}`` expanded (`expand_filename`); the bucket is the one the
    form was posted to."""
    values = dict(fields)
    if "bucket" in values and values["bucket"] != bucket:
        raise policy_denied("Bucket field does not match the bucket posted to.")
    values["bucket"] = bucket
    covered = {"bucket"}
    for cond in policy.conditions:
        if cond.op == "starts-with" and cond.field in _EXACT_ONLY:
            raise policy_denied(f"Policy Condition failed: {cond.describe()}")
        if not _matches(cond, values.get(cond.field)):
            raise policy_denied(f"Policy Condition failed: {cond.describe()}")
        covered.add(cond.field)
    ignored = {name[len(IGNORE_PREFIX) :] for name in fields if name.startswith(IGNORE_PREFIX)}
    extra = sorted(
        name
        for name in fields
        if name not in covered and name not in exempt and not name.startswith(IGNORE_PREFIX) and name not in ignored
    )
    if extra:
        raise policy_denied("Extra input fields: " + ", ".join(extra))


def check_expiration(policy: PostPolicy, signer: Signer, now: datetime, *, max_seconds: int, skew: timedelta) -> None:
    """AccessDenied once the policy has expired, or when it would last longer than the server lets
    a presigned request last (from its SigV4 signing time; from now for SigV2)."""
    if now >= policy.expiration:
        raise policy_denied("Policy expired.")
    start = signer.signed_at if signer.signed_at is not None else now
    if policy.expiration > start + skew + timedelta(seconds=max_seconds):
        raise policy_denied(f"Policy expiration must be at most {max_seconds} seconds after it was signed.")
    if signer.signed_at is not None and signer.signed_at > now + skew:
        raise policy_denied("Policy is not valid yet (x-amz-date is in the future).")


def check_length(policy: PostPolicy, size: int) -> None:
    """EntityTooSmall / EntityTooLarge when the file's size is outside content-length-range."""
    if policy.length_range is None:
        return
    low, high = policy.length_range
    if size < low:
        raise S3Error(
            "EntityTooSmall",
            "Your proposed upload is smaller than the minimum allowed size",
            400,
            extra={"ProposedSize": str(size), "MinSizeAllowed": str(low)},
        )
    if size > high:
        raise S3Error(
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed size",
            400,
            extra={"ProposedSize": str(size), "MaxSizeAllowed": str(high)},
        )


def expand_filename(fields: Mapping[str, str], filename: str | None) -> dict[str, str]:
    """The fields with ``${filename}`` replaced by the file's name (without any path a browser
    sent; empty without one), as S3 expands every field before it checks the policy."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    return {k: v.replace("${filename}", name) for k, v in fields.items()}


def missing_field(name: str) -> S3Error:
    """S3's answer to a form without a field it needs (or with it after the file)."""
    return S3Error(
        "InvalidArgument",
        f"Bucket POST must contain a field named '{name}'.  If it is specified, please check the order of the fields.",
        400,
        extra={"ArgumentName": name},
    )


def _required(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name)
    if value is None:
        raise missing_field(name)
    return value


def _unknown_key() -> S3Error:
    return S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.", 403)


def _mismatch() -> S3Error:
    return S3Error(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
        403,
    )


def _signed_at(fields: Mapping[str, str], scope_date: str) -> datetime:
    text = _required(fields, "x-amz-date")
    try:
        if not _DATE_RE.match(text):
            raise ValueError(text)
        when = datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise S3Error("InvalidArgument", "x-amz-date must be in ISO 8601 basic format.", 400) from None
    if text[:8] != scope_date:
        raise S3Error("InvalidArgument", "The credential date does not match x-amz-date.", 400)
    return when


def verify_signature(fields: Mapping[str, str], lookup: Callable[[str], ClientCredentials | None]) -> Signer:
    """Who signed the form's ``policy`` (fields by lower-case name): SigV4 (``x-amz-signature``:
    hex HMAC-SHA256 of the base64 policy under the SigV4 signing key) or SigV2 (``signature``:
    base64 HMAC-SHA1 under the secret key). AccessDenied for a form with no policy (sealgate
    serves no anonymous uploads)."""
    if "policy" not in fields:
        raise S3Error("AccessDenied", "Anonymous access is not allowed; sign the form's policy with SigV4.", 403)
    policy_b64 = fields["policy"]
    if "x-amz-signature" in fields or "x-amz-algorithm" in fields or "x-amz-credential" in fields:
        if _required(fields, "x-amz-algorithm") != ALGORITHM:
            raise S3Error("InvalidArgument", "Only AWS4-HMAC-SHA256 is supported as x-amz-algorithm.", 400)
        akid, scope_date, region, service = parse_credential(_required(fields, "x-amz-credential"), query=False)
        signed_at = _signed_at(fields, scope_date)
        creds = lookup(akid)
        if creds is None:
            raise _unknown_key()
        key = signing_key(creds.secret_access_key, scope_date, region, service)
        expected = hmac.digest(key, policy_b64.encode(), "sha256").hex()
        if not hmac.compare_digest(expected, _required(fields, "x-amz-signature").strip().lower()):
            raise _mismatch()
        return Signer(creds, signed_at)
    if "signature" in fields or "awsaccesskeyid" in fields:
        creds = lookup(_required(fields, "awsaccesskeyid"))
        if creds is None:
            raise _unknown_key()
        digest = hmac.digest(creds.secret_access_key.encode(), policy_b64.encode(), hashlib.sha1)
        if not hmac.compare_digest(base64.b64encode(digest).decode(), _required(fields, "signature").strip()):
            raise _mismatch()
        return Signer(creds, None)
    raise missing_field("x-amz-signature")


def exempt_fields(fields: Mapping[str, str]) -> frozenset[str]:
    """The fields no condition has to name, for the form's signature version."""
    return EXEMPT_V4 if "x-amz-signature" in fields else EXEMPT_V2


#: Form fields stored as the object's properties, by lower-case name, with the header name
#: PutObject takes them as (``acl`` and ``tagging`` are PutObject's x-amz-acl and x-amz-tagging).
_PROPERTY_FIELDS = {
    **{name.lower(): name for name in CONTENT_HEADERS},
    **{name: name for name in STORED_HEADERS if name.startswith("x-amz-")},
    "acl": "x-amz-acl",
}
#: SSE-C: refused as on every other write (sealgate would serve the object without that key).
_SSE_C_PREFIX = "x-amz-server-side-encryption-customer-"


def tagging_header(document: str) -> str:
    """A form's ``tagging`` field (a ``<Tagging><TagSet><Tag>`` XML document) as the URL-encoded
    x-amz-tagging header PutObject takes."""
    root = parse_client(document.encode())
    if local_name(root.tag) != "Tagging":
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate", 400)
    tags = [(child_text(tag, "Key"), child_text(tag, "Value")) for tag in iter_named(root, "Tag")]
    return urlencode(tags, quote_via=quote)


def object_headers(fields: Mapping[str, str]) -> CIMultiDict[str]:
    """The request headers a PutObject of the same object would carry (user metadata, content
    properties, ACL, tags, storage class, Object Lock, SSE), from the form's fields."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in fields.items():
        if name.startswith(_SSE_C_PREFIX):
            raise S3Error(
                "NotImplemented",
                "sealgate encrypts every object with its own keys; customer-provided keys (SSE-C) are not supported",
                501,
            )
        if name.startswith(META_PREFIX):
            out[name] = value
        elif name == "tagging":
            out["x-amz-tagging"] = tagging_header(value)
        elif name in _PROPERTY_FIELDS:
            out[_PROPERTY_FIELDS[name]] = value
    return out
