"""Verify the SigV4 signatures of client requests (header-signed, presigned, signed chunks).

Pure code. The signing-key derivation and string-to-sign follow botocore's signer (the tests use
botocore itself as the oracle); the canonical request is rebuilt from what arrived on the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit

from botocore.auth import HmacV1Auth, HmacV1QueryAuth
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials
from multidict import MultiMapping

from proxy.s3.errors import S3Error
from proxy.s3.routing import LIST_PARAMS, PAGING_PARAMS, bucket_from_host

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
_PAYLOAD_VALUES = {UNSIGNED_PAYLOAD, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER}
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,\s*Signature=([0-9a-fA-F]{64})\s*$"
)
_DATE_RE = re.compile(r"^\d{8}T\d{6}Z$")
_INT_RE = re.compile(r"^-?[0-9]+$")
_V2_EXPIRES_RE = re.compile(r"^[0-9]{1,12}$")
#: SigV4's own ceiling on X-Amz-Expires (seven days); S3 refuses longer presigned URLs.
SIGV4_MAX_EXPIRES = 604800
#: x-amz-* headers that may be left out of SignedHeaders: the signature covers their values anyway
#: (the payload hash is the canonical request's last line; the date is in the string to sign).
_IMPLICITLY_SIGNED = {"x-amz-content-sha256"}
_IMPLICITLY_SIGNED_WITH_HEADER_AUTH = {"x-amz-content-sha256", "x-amz-date"}


@dataclass(frozen=True)
class ClientCredentials:
    """Credentials sealgate issued to one client."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    identity: str


@dataclass(frozen=True)
class VerifiedRequest:
    """A request whose signature checked out, with what later checks need."""

    identity: str
    access_key_id: str
    payload_hash: str
    amz_date: str
    scope: str
    signing_key: bytes = field(repr=False)
    seed_signature: str
    presigned: bool

    @classmethod
    def without_payload_signature(cls, creds: ClientCredentials) -> VerifiedRequest:
        """A request signed by a scheme that covers no body hash and no chunk signatures
        (a SigV2 presigned URL, a signed POST form): its body is taken unsigned."""
        return cls(creds.identity, creds.access_key_id, UNSIGNED_PAYLOAD, "", "", b"", "", True)


@lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """kSigning = HMAC chain over date, region, service, "aws4_request"."""
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def _hmac_hex(key: bytes, msg: str) -> str:
    return hmac.digest(key, msg.encode(), "sha256").hex()  # one-shot: no HMAC object per request


def _denied(message: str = "Access Denied") -> S3Error:
    return S3Error("AccessDenied", message, 403)


def _uri_encode(text: str) -> str:
    return quote(text, safe="-_.~")


def canonical_query(raw_query: str, *, exclude: str | None = None) -> str:
    """Sorted, uniformly encoded query parameters (a bare ``key`` counts as ``key=``)."""
    pairs: list[tuple[str, str]] = []
    if raw_query:
        for item in raw_query.split("&"):
            if not item:
                continue
            k, _, v = item.partition("=")
            k = unquote(k)
            if exclude is not None and k == exclude:
                continue
            pairs.append((_uri_encode(k), _uri_encode(unquote(v))))
    pairs.sort()
    return "&".join(f"{k}={v}" for k, v in pairs)


def _canonical_headers(headers: MultiMapping[str], names: list[str]) -> str:
    lines = []
    for name in names:
        values = headers.getall(name, [])
        if not values:
            raise S3Error("SignatureDoesNotMatch", f"signed header {name} is missing", 403)
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}")
    return "\n".join(lines) + "\n"


def _candidate_uris(raw_path: str) -> list[str]:
    """The path as sent; and S3's own form (each byte encoded once) for clients that sent less."""
    reencoded = quote(unquote(raw_path), safe="/~")
    return [raw_path] if reencoded == raw_path else [raw_path, reencoded]


def parse_credential(credential: str, query: bool) -> tuple[str, str, str, str]:
    """(access key id, date, region, service) of a SigV4 credential scope ``AKID/date/region/s3/aws4_request``."""
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        code = "AuthorizationQueryParametersError" if query else "AuthorizationHeaderMalformed"
        raise S3Error(code, "The credential is malformed; expected AKID/date/region/service/aws4_request.", 400)
    return parts[0], parts[1], parts[2], parts[3]


def _parse_amz_date(text: str | None, query: bool) -> datetime:
    if text is None or not _DATE_RE.match(text):
        if query:
            raise S3Error("AuthorizationQueryParametersError", "X-Amz-Date must be in ISO 8601 basic format.", 400)
        raise _denied("AWS authentication requires a valid Date or x-amz-date header")
    try:
        # Slicing, not strptime: strptime was a visible share of a small request's CPU.
        return datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[9:11]),
            int(text[11:13]),
            int(text[13:15]),
            tzinfo=UTC,
        )
    except ValueError:
        # Digits in the right places but no such time (month 13, second 61).
        if query:
            raise S3Error(
                "AuthorizationQueryParametersError", "X-Amz-Date must be in ISO 8601 basic format.", 400
            ) from None
        raise _denied("AWS authentication requires a valid Date or x-amz-date header") from None


def _presigned_lifetime(text: str, limit: int) -> int:
    """X-Amz-Expires as seconds, refused as S3 does when out of range (403, as S3 answers)."""
    if not _INT_RE.match(text):
        raise S3Error("AuthorizationQueryParametersError", "X-Amz-Expires should be a number", 400)
    if text.startswith("-"):
        raise S3Error("AuthorizationQueryParametersError", "X-Amz-Expires must be non-negative", 403)
    seconds = int(text) if len(text) <= 12 else limit + 1  # no int() of a megabyte of digits
    if seconds > limit:
        if limit == SIGV4_MAX_EXPIRES:
            message = (
                "X-Amz-Expires must be less than a week (in seconds); that is, the given X-Amz-Expires "
                "must be less than 604800 seconds"
            )
        else:
            message = f"X-Amz-Expires must be at most {limit} seconds on this server"
        raise S3Error("AuthorizationQueryParametersError", message, 403)
    return seconds


def _check_all_amz_headers_signed(headers: MultiMapping[str], signed: set[str]) -> None:
    """S3's rule: every x-amz-* header present is one the signature covers, else AccessDenied.

    Otherwise whoever holds a presigned PUT could add x-amz-copy-source (and copy any object the
    signer may read), Object Lock, tagging or metadata headers the signer never agreed to.
    """
    unsigned = sorted({n.lower() for n in headers if n.lower().startswith("x-amz-")} - signed)
    if unsigned:
        raise S3Error(
            "AccessDenied",
            "There were headers present in the request which were not signed",
            403,
            extra={"HeadersNotSigned": ", ".join(unsigned)},
        )


class _SignedParts(NamedTuple):
    """What a SigV4 request says about its signature, read from its Authorization header or
    from its query (presigned). A NamedTuple: made on every request, and cheaper than a frozen
    dataclass."""

    credential: str
    signed_names: str
    signature: str
    amz_date: str | None
    #: Seconds a presigned URL lasts; 0 for a header-signed request.
    expires_in: int
    payload_hash: str
    presigned: bool


#: The identity of an unsigned request (never a client name: those cannot hold parentheses).
ANONYMOUS = "(anonymous)"
_SIGNING_PARAMS = ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Algorithm", "Signature", "AWSAccessKeyId")


def is_unsigned(raw_path_and_query: str, headers: MultiMapping[str]) -> bool:
    """Whether a request carries no signature at all (no Authorization, no signing query parameter)."""
    if "Authorization" in headers:
        return False
    raw_query = raw_path_and_query.partition("?")[2]
    names = {unquote(p.partition("=")[0]) for p in raw_query.split("&") if p}
    return not names.intersection(_SIGNING_PARAMS)


def anonymous_request(headers: MultiMapping[str]) -> VerifiedRequest:
    """What an unsigned request is taken as where anonymous requests are served: a body hash it
    names is still checked, an aws-chunked body may not claim chunk signatures."""
    payload = headers.get("x-amz-content-sha256", UNSIGNED_PAYLOAD)
    if payload in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER) or not (
        payload in (UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_TRAILER) or _HEX64.match(payload)
    ):
        raise S3Error("InvalidArgument", "an unsigned request cannot carry this x-amz-content-sha256", 400)
    return VerifiedRequest(ANONYMOUS, "", payload, "", "", b"", "", False)


def verify_request(
    method: str,
    raw_path_and_query: str,
    headers: MultiMapping[str],
    lookup: Callable[[str], ClientCredentials | None],
    now: datetime,
    *,
    max_skew: timedelta = timedelta(minutes=15),
    virtual_host_domains: Sequence[str] = ("localhost",),
    presign_max_seconds: int = SIGV4_MAX_EXPIRES,
) -> VerifiedRequest:
    """Check a request's signature (SigV4, or a SigV2 presigned URL); S3Error with S3's code when
    anything is off.

    `virtual_host_domains` must be the ones the request is routed with: a SigV2 signature covers
    the bucket, which virtual-hosted requests name in the Host. Presigned URLs may last at most
    `presign_max_seconds` (and SigV4 ones never more than seven days).
    """
    raw_path, _, raw_query = raw_path_and_query.partition("?")
    auth = headers.get("Authorization")
    query_params = {unquote(k): unquote(v) for k, _, v in (p.partition("=") for p in raw_query.split("&") if p)}
    if auth is None and "Signature" in query_params and "AWSAccessKeyId" in query_params:
        bucket = bucket_from_host(headers.get("Host", ""), virtual_host_domains)
        return _verify_presigned_v2(
            method, raw_path_and_query, bucket, headers, query_params, lookup, now, presign_max_seconds, max_skew
        )
    if auth is not None:
        parts = _header_auth(auth, headers)
    elif "X-Amz-Signature" in query_params:
        parts = _query_auth(query_params, headers, min(presign_max_seconds, SIGV4_MAX_EXPIRES))
    elif "X-Amz-Credential" in query_params or "X-Amz-Algorithm" in query_params:
        raise S3Error("AuthorizationQueryParametersError", "Query-string authentication requires X-Amz-Signature.", 400)
    else:
        raise _denied("Anonymous access is not allowed; sign requests with SigV4.")

    akid, scope_date, region, service = parse_credential(parts.credential, parts.presigned)
    creds = lookup(akid)
    if creds is None:
        raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.", 403)
    when = _parse_amz_date(parts.amz_date, parts.presigned)
    amz_date = parts.amz_date
    assert amz_date is not None  # _parse_amz_date refuses None
    if scope_date != amz_date[:8]:
        code = "AuthorizationQueryParametersError" if parts.presigned else "AuthorizationHeaderMalformed"
        raise S3Error(code, "The credential date does not match the request date.", 400)
    _check_time(parts, when, now, max_skew)
    scope = f"{scope_date}/{region}/{service}/aws4_request"
    key = signing_key(creds.secret_access_key, scope_date, region, service)
    _check_signature(method, raw_path, raw_query, headers, parts, amz_date, scope, key)
    return VerifiedRequest(
        identity=creds.identity,
        access_key_id=akid,
        payload_hash=parts.payload_hash,
        amz_date=amz_date,
        scope=scope,
        signing_key=key,
        seed_signature=parts.signature.lower(),
        presigned=parts.presigned,
    )


def _header_auth(auth: str, headers: MultiMapping[str]) -> _SignedParts:
    """The signature parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` request."""
    m = _AUTH_RE.match(auth.strip())
    if not m:
        if not auth.startswith(ALGORITHM):
            raise S3Error("InvalidRequest", "Only AWS4-HMAC-SHA256 signatures are supported.", 400)
        raise S3Error("AuthorizationHeaderMalformed", "The authorization header is malformed.", 400)
    payload = headers.get("x-amz-content-sha256")
    if payload is None:
        raise S3Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256", 400)
    if payload not in _PAYLOAD_VALUES and not _HEX64.match(payload):
        raise S3Error("InvalidArgument", "x-amz-content-sha256 must be a SHA-256 or a known payload type", 400)
    return _SignedParts(
        credential=m.group(1),
        signed_names=m.group(2),
        signature=m.group(3),
        amz_date=headers.get("x-amz-date"),
        expires_in=0,
        payload_hash=payload,
        presigned=False,
    )


def _presigned_payload(value: str | None) -> str:
    if value is None:
        return UNSIGNED_PAYLOAD
    if value not in _PAYLOAD_VALUES and not _HEX64.match(value):
        raise S3Error("InvalidArgument", "X-Amz-Content-Sha256 must be a SHA-256 or a known payload type", 400)
    return value


def _query_auth(params: dict[str, str], headers: MultiMapping[str], max_seconds: int) -> _SignedParts:
    """The signature parts of a SigV4 presigned URL (``X-Amz-*`` query parameters)."""
    if params.get("X-Amz-Algorithm") != ALGORITHM:
        raise S3Error("AuthorizationQueryParametersError", "X-Amz-Algorithm must be AWS4-HMAC-SHA256.", 400)
    return _SignedParts(
        credential=params.get("X-Amz-Credential", ""),
        signed_names=params.get("X-Amz-SignedHeaders", ""),
        signature=params.get("X-Amz-Signature", ""),
        amz_date=params.get("X-Amz-Date"),
        expires_in=_presigned_lifetime(params.get("X-Amz-Expires", ""), max_seconds),
        # The SDKs that presign a payload hash put it in the query (signed, like the rest of it).
        payload_hash=_presigned_payload(headers.get("x-amz-content-sha256") or params.get("X-Amz-Content-Sha256")),
        presigned=True,
    )


def _check_time(parts: _SignedParts, when: datetime, now: datetime, max_skew: timedelta) -> None:
    """A presigned URL within its lifetime; a header-signed request within `max_skew` of now."""
    if parts.presigned:
        if parts.expires_in == 0 or now > when + timedelta(seconds=parts.expires_in):
            raise _denied("Request has expired")
        if when > now + max_skew:
            raise _denied("Request is not valid yet")
    elif abs(now - when) > max_skew:
        raise S3Error(
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
            403,
        )


def _canonical_request(
    method: str, uri: str, cquery: str, canon_headers: str, signed_names: str, payload_hash: str
) -> str:
    return "\n".join([method.upper(), uri, cquery, canon_headers, signed_names, payload_hash])


def _string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])


def _check_signature(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: MultiMapping[str],
    parts: _SignedParts,
    amz_date: str,
    scope: str,
    key: bytes,
) -> None:
    """SignatureDoesNotMatch unless the signature is over this request (the path as sent, or in
    S3's encoding), and AccessDenied if it leaves an x-amz-* header out."""
    names = parts.signed_names.split(";")
    if "host" not in names or names != sorted(names):
        code = "AuthorizationQueryParametersError" if parts.presigned else "AuthorizationHeaderMalformed"
        raise S3Error(code, "SignedHeaders must be sorted and include host.", 400)
    canon_headers = _canonical_headers(headers, names)
    cquery = canonical_query(raw_query, exclude="X-Amz-Signature" if parts.presigned else None)
    for uri in _candidate_uris(raw_path):
        canonical = _canonical_request(method, uri, cquery, canon_headers, parts.signed_names, parts.payload_hash)
        if hmac.compare_digest(_hmac_hex(key, _string_to_sign(amz_date, scope, canonical)), parts.signature.lower()):
            exempt = _IMPLICITLY_SIGNED if parts.presigned else _IMPLICITLY_SIGNED_WITH_HEADER_AUTH
            _check_all_amz_headers_signed(headers, {*(n.lower() for n in names), *exempt})
            return
    raise S3Error(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
        403,
    )


class ChunkSignatureVerifier:
    """Checks the chain of chunk signatures of STREAMING-AWS4-HMAC-SHA256-PAYLOAD bodies."""

    def __init__(self, verified: VerifiedRequest) -> None:
        self._v = verified
        self._previous = verified.seed_signature

    def _check(self, sts: str, signature: str) -> None:
        expected = _hmac_hex(self._v.signing_key, sts)
        if not hmac.compare_digest(expected, signature.lower()):
            raise S3Error(
                "SignatureDoesNotMatch",
                "The chunk signature we calculated does not match the signature you provided.",
                403,
            )
        self._previous = expected

    def chunk(self, signature: str, data_sha256_hex: str) -> None:
        """Verify one chunk's signature (the final empty chunk included)."""
        sts = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                self._v.amz_date,
                self._v.scope,
                self._previous,
                EMPTY_SHA256,
                data_sha256_hex,
            ]
        )
        self._check(sts, signature)

    def trailer(self, signature: str, trailer_lines: str) -> None:
        """Verify the trailer signature over the trailer header lines ("name:value\\n" each)."""
        sts = "\n".join(
            [
                "AWS4-HMAC-SHA256-TRAILER",
                self._v.amz_date,
                self._v.scope,
                self._previous,
                hashlib.sha256(trailer_lines.encode()).hexdigest(),
            ]
        )
        self._check(sts, signature)


def chunk_verifier_for(verified: VerifiedRequest) -> ChunkSignatureVerifier | None:
    """A chunk-signature verifier when the payload is signed per chunk, else None."""
    if verified.payload_hash in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER):
        return ChunkSignatureVerifier(verified)
    return None


def check_payload_hash(verified: VerifiedRequest, sha256_hex: str) -> None:
    """XAmzContentSHA256Mismatch unless a signed hex payload hash equals what arrived."""
    if _HEX64.match(verified.payload_hash) and not hmac.compare_digest(verified.payload_hash.lower(), sha256_hex):
        raise S3Error(
            "XAmzContentSHA256Mismatch",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
            400,
        )


#: Query parameters a SigV2 signature covers (its "sub-resources"): botocore's list, plus those
#: sealgate routes on that botocore leaves out. Without them `&legal-hold` appended to a presigned
#: PUT would turn it into PutObjectLegalHold under the same signature.
V2_SIGNED_PARAMS = frozenset({*HmacV1Auth.QSAOfInterest, "retention", "legal-hold"})
#: Parameters a SigV2 signature does not cover and that may still be sent: its own, and those
#: that only select or page through a listing (unsigned on S3 too). Any other parameter is
#: refused, so a parameter sealgate comes to route on is never left outside the signature.
V2_UNSIGNED_PARAMS = frozenset(
    {
        "AWSAccessKeyId",
        "Signature",
        "Expires",
        "x-id",
        *LIST_PARAMS,
        *PAGING_PARAMS,
    }
)


class _V2QueryVerifier(HmacV1QueryAuth):  # type: ignore[misc]
    """botocore's SigV2 query signer with the expiry taken from the request, not the clock, and
    every parameter sealgate routes on in the signed resource."""

    QSAOfInterest = sorted(V2_SIGNED_PARAMS)

    def __init__(self, credentials: Credentials, expires: str) -> None:
        super().__init__(credentials)
        self._expires_text = expires

    def _get_date(self) -> str:
        return self._expires_text


def _v2_query(raw_query: str) -> str:
    """The query with each parameter name decoded, as routing sees it: botocore matches the
    names as they are written, so ``legal%2Dhold`` would otherwise be routed yet left unsigned."""
    items = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = unquote(name)
        if name not in V2_SIGNED_PARAMS and name not in V2_UNSIGNED_PARAMS:
            raise _denied(f"Query-string authentication version 2 does not sign the parameter {name!r}; use SigV4")
        items.append(name + sep + value)
    return "&".join(items)


def _verify_presigned_v2(
    method: str,
    raw_path_and_query: str,
    host_bucket: str | None,
    headers: MultiMapping[str],
    params: dict[str, str],
    lookup: Callable[[str], ClientCredentials | None],
    now: datetime,
    max_seconds: int,
    max_skew: timedelta,
) -> VerifiedRequest:
    """Presigned URLs in the older SigV2 form, which boto3 still makes for custom endpoints.

    The signed resource is ``/bucket/key`` whichever addressing style the request uses, taken
    from the bucket the request is routed to (`host_bucket` when virtual-hosted), so a URL
    signed for one bucket does not open the same path in another.
    """
    expires = params.get("Expires", "")
    if not _V2_EXPIRES_RE.match(expires):
        raise S3Error("AccessDenied", "Query-string authentication requires Expires", 403)
    creds = lookup(params["AWSAccessKeyId"])
    if creds is None:
        raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.", 403)
    if now.timestamp() > int(expires):
        raise _denied("Request has expired")
    # Expires is a moment, set by the signer's clock: allow for its skew.
    if int(expires) > (now + max_skew).timestamp() + max_seconds:
        raise S3Error(
            "AuthorizationQueryParametersError",
            f"Expires must be at most {max_seconds} seconds from now",
            403,
        )
    raw_path, _, raw_query = raw_path_and_query.partition("?")
    if not raw_path.startswith("/"):
        raise _denied("Query-string authentication requires an absolute path")
    resource = raw_path if host_bucket is None else "/" + host_bucket + raw_path
    resources = [resource]
    bucket_only = resource[1:].removesuffix("/")
    if bucket_only and "/" not in bucket_only:
        # The bucket itself: botocore signs "/bucket/", others "/bucket"; both are routed the same
        # (not "/bucket//", which is the object named "/").
        resources = ["/" + bucket_only + "/", "/" + bucket_only]
    signed = HTTPHeaders()
    for name in ("Content-MD5", "Content-Type"):
        value = headers.get(name)
        if value is not None:
            signed[name] = value
    for name, value in headers.items():
        if name.lower().startswith("x-amz-"):
            signed.add_header(name.lower(), value)
    verifier = _V2QueryVerifier(Credentials(creds.access_key_id, creds.secret_access_key), expires)
    query = _v2_query(raw_query)
    for candidate in resources:
        split = urlsplit("https://host" + candidate + "?" + query)
        expected = verifier.sign_string(verifier.canonical_string(method, split, signed))
        if hmac.compare_digest(expected, params["Signature"]):
            break
    else:
        raise S3Error(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
            403,
        )
    return VerifiedRequest.without_payload_signature(creds)
