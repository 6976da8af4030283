"""The metadata documents of `sealgate encrypt` / `decrypt`: ``--meta`` options, the JSON that
carries an object's ``x-amz-meta-*`` headers (as encrypt writes it, or as the AWS CLI and boto3
show it), and the envelope in it."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from proxy.crypto.format import Envelope, is_sealgate_object
from proxy.s3.headers import META_PREFIX, etag_value
from proxy.store.objects import MAX_USER_METADATA
from proxy.store.records import record_key
from proxy.tools.offline.files import OfflineError

#: S3 refuses a PUT whose user metadata (names without prefix plus values, UTF-8) exceeds this.
MAX_BACKEND_METADATA = 2048
# HTTP token characters, lower case: what S3 accepts as a metadata name.
_META_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def backend_metadata_size(meta: Mapping[str, str]) -> int:
    """What S3 counts against its metadata limit: names without prefix plus values, UTF-8."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())


def parse_user_metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    """``NAME=VALUE`` options to a user-metadata map (names lower-cased, as S3 stores them)."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().lower()
        if name.startswith(META_PREFIX):
            name = name[len(META_PREFIX) :]
        if not sep or not _META_NAME.fullmatch(name):
            raise OfflineError(f"--meta {pair!r}: give NAME=VALUE with a metadata name of letters, digits, '-', '_'")
        if not _PRINTABLE_ASCII.fullmatch(value):
            raise OfflineError(f"--meta {name}: S3 metadata values are printable US-ASCII")
        out[name] = value
    if backend_metadata_size(out) > MAX_USER_METADATA:
        raise OfflineError(f"user metadata exceeds {MAX_USER_METADATA} bytes (names plus values)")
    return out


def parse_metadata_document(raw: bytes) -> tuple[dict[str, str], str | None]:
    """The backend user metadata (names lower-case, without ``x-amz-meta-``) and, when the
    document carries one, the backend ETag (unquoted).

    Accepted: a JSON object of ``x-amz-meta-*`` headers; boto3's ``Metadata`` dict (names
    without prefix); or a whole ``aws s3api get-object`` / ``head-object`` / boto3 response,
    whose ``Metadata`` and ``ETag`` are used.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise OfflineError("the metadata file is not valid JSON") from None
    if not isinstance(doc, dict):
        raise OfflineError("the metadata file is not a JSON object")
    etag: str | None = None
    if isinstance(doc.get("Metadata"), dict):
        raw_etag = doc.get("ETag")
        if isinstance(raw_etag, str) and raw_etag.strip('" '):
            etag = etag_value(raw_etag)
        doc = doc["Metadata"]
    meta: dict[str, str] = {}
    for name, value in doc.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise OfflineError(f"the metadata file's entry {name!r} is not a string")
        lname = name.lower()
        if lname.startswith(META_PREFIX):
            lname = lname[len(META_PREFIX) :]
        meta[lname] = value
    return meta, etag


def metadata_headers(env: Envelope) -> dict[str, str]:
    """The backend ``x-amz-meta-*`` headers of an envelope, as ``encrypt`` writes them."""
    return {f"{META_PREFIX}{k}": v for k, v in env.to_metadata().items()}


def manifest_key(object_key: str, backend_etag: str) -> str:
    """Backend key of a multipart object's sealed manifest (docs/FORMAT.md §6a)."""
    return record_key(object_key, backend_etag)


def parse_envelope(meta: Mapping[str, str]) -> Envelope:
    """The envelope in backend user metadata (names without prefix)."""
    if not is_sealgate_object(meta):
        raise OfflineError("the metadata has no x-amz-meta-sg-v: this is not a sealgate object")
    return Envelope.from_metadata(meta)
