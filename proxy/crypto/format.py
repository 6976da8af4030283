"""The sealgate envelope format, version 1: metadata fields, key derivation and length maths.

Pure functions and values only; docs/FORMAT.md is the prose specification of what is here.

An object body is one or more *streams*. A stream is the plaintext followed by a 16-byte
digest slot, cut into segments of `segment_size` bytes (the last one shorter, never empty),
each sealed with AES-256-GCM under a per-stream key. The nonce of segment i is
``00 00 00 00 00 00 00 ‖ uint32_be(i) ‖ last`` where ``last`` is 1 for the final segment and 0
otherwise (the STREAM construction): reordering, dropping, truncating or splicing segments
fails authentication. A single PUT stores exactly one stream (stream number 0).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION: Final = "1"
TAG_SIZE: Final = 16
DIGEST_SLOT: Final = 16
SALT_SIZE: Final = 32
COMMIT_SIZE: Final = 32
DATA_KEY_SIZE: Final = 32
DEFAULT_SEGMENT_SIZE: Final = 64 * 1024
MIN_SEGMENT_SIZE: Final = 4 * 1024
MAX_SEGMENT_SIZE: Final = 4 * 1024 * 1024
#: Segment indexes are 32-bit: at 64 KiB that is 256 TiB per stream, far above S3's 5 TiB.
MAX_SEGMENTS: Final = 2**32

#: Backend user-metadata names (without the ``x-amz-meta-`` prefix S3 adds).
META_VERSION: Final = "sg-v"
META_LAYOUT: Final = "sg-layout"
META_KEY_REF: Final = "sg-kr"
META_WRAPPED_KEY: Final = "sg-dk"
META_SALT: Final = "sg-salt"
META_COMMITMENT: Final = "sg-cm"
META_SEGMENT_SIZE: Final = "sg-seg"
META_SEALED: Final = "sg-m"
#: Present (value "bucket") when the data key is wrapped for the bucket only (a cached, shared
#: data key); the object's name is then bound by the name tag instead.
META_SCOPE: Final = "sg-scope"
META_NAME_TAG: Final = "sg-nt"
#: Optional: the writer's Ed25519 signature over what commits the object (crypto/signing.py).
#: Readers of keys that list trusted signers require it; other readers ignore it.
META_SIGNATURE: Final = "sg-sig"
SCOPE_OBJECT: Final = "object"
SCOPE_BUCKET: Final = "bucket"
ALL_META: Final = (
    META_VERSION,
    META_LAYOUT,
    META_KEY_REF,
    META_WRAPPED_KEY,
    META_SALT,
    META_COMMITMENT,
    META_SEGMENT_SIZE,
    META_SEALED,
    META_SCOPE,
    META_NAME_TAG,
    META_SIGNATURE,
)

LAYOUT_SINGLE: Final = "single"
LAYOUT_MULTIPART: Final = "multipart"
LAYOUTS: Final = (LAYOUT_SINGLE, LAYOUT_MULTIPART)

#: Every part of a multipart object starts with this 32-byte header (in the clear; it is bound
#: to the part's key, so altering it fails authentication):
#: magic "SGP1" ‖ uint32_be(part number) ‖ uint64_be(plaintext length) ‖ 16-byte random salt.
PART_MAGIC: Final = b"SGP1"
PART_HEADER: Final = struct.Struct(">4sIQ16s")
PART_HEADER_SIZE: Final = PART_HEADER.size

#: Encryption-context entries that bind a wrapped data key to one bucket and object key.
CONTEXT_BUCKET: Final = "sealgate:bucket"
CONTEXT_KEY: Final = "sealgate:key"

_INFO_COMMIT: Final = b"sealgate/1/commit"
_INFO_META: Final = b"sealgate/1/meta"
_INFO_STREAM: Final = b"sealgate/1/stream"
_META_AAD: Final = b"sealgate/1/meta"
_INFO_PART: Final = b"sealgate/1/part"
_INFO_NAME: Final = b"sealgate/1/name"
_INFO_MANIFEST: Final = b"sealgate/1/manifest"
_INFO_PART_ETAG: Final = b"sealgate/1/part-etag"
_INFO_UPLOAD_ID: Final = b"sealgate/1/upload-id"


class FormatError(Exception):
    """Metadata or a body that is not a valid sealgate v1 object."""


class IntegrityError(FormatError):
    """Authentication failed: the stored object was altered, truncated, moved or swapped."""


def encryption_context(bucket: str, key: str, scope: str = SCOPE_OBJECT) -> dict[str, str]:
    """The context a data key is wrapped under: it names the object, so moved bodies fail
    (or, for a data key shared by several objects of a bucket, the bucket alone)."""
    if scope == SCOPE_BUCKET:
        return {CONTEXT_BUCKET: bucket}
    return {CONTEXT_BUCKET: bucket, CONTEXT_KEY: key}


def name_tag(data_key: bytes, salt: bytes, bucket: str, key: str) -> bytes:
    """Binds an object to its name when its data key is bucket-scoped."""
    msg = b"".join(struct.pack(">I", len(x)) + x for x in (bucket.encode(), key.encode()))
    return hmac.new(_hkdf(data_key, salt, _INFO_NAME), msg, sha256).digest()


def _hkdf(data_key: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(data_key)


def commitment(data_key: bytes, salt: bytes) -> bytes:
    """Key commitment: a value that only this data key yields, checked before any decryption."""
    return _hkdf(data_key, salt, _INFO_COMMIT, COMMIT_SIZE)


def stream_key(data_key: bytes, salt: bytes, stream_number: int, stream_salt: bytes = b"") -> bytes:
    """The AES-256-GCM key of one stream (stream 0 for a single PUT; part numbers later)."""
    info = _INFO_STREAM + struct.pack(">I", stream_number) + stream_salt
    return _hkdf(data_key, salt, info)


def part_key(data_key: bytes, salt: bytes, header: bytes) -> bytes:
    """The AES-256-GCM key of one multipart part, bound to its whole header."""
    return _hkdf(data_key, salt, _INFO_PART + header)


def _part_md5_context(data_key: bytes, salt: bytes, number: int, backend_etag: str) -> tuple[bytes, bytes]:
    etag = backend_etag.encode()
    return _hkdf(data_key, salt, _INFO_PART_ETAG), struct.pack(">IH", number, len(etag)) + etag


def seal_part_md5(data_key: bytes, salt: bytes, number: int, backend_etag: str, md5: bytes) -> bytes:
    """The plaintext MD5 of the part stored as `number` with this backend ETag, sealed (and so
    bound to both) for the record that lets CompleteMultipartUpload check part ETags: the
    backend never sees a digest of the plaintext."""
    key, aad = _part_md5_context(data_key, salt, number, backend_etag)
    return seal_blob(key, md5, aad)


def open_part_md5(data_key: bytes, salt: bytes, number: int, backend_etag: str, sealed: bytes) -> bytes:
    """Inverse of `seal_part_md5`; IntegrityError unless it was sealed for this part and ETag."""
    key, aad = _part_md5_context(data_key, salt, number, backend_etag)
    return open_blob(key, sealed, aad)


def manifest_key(data_key: bytes, salt: bytes) -> bytes:
    """Key that seals a multipart object's manifest."""
    return _hkdf(data_key, salt, _INFO_MANIFEST)


def upload_id_key(data_key: bytes, salt: bytes) -> bytes:
    """Key that authenticates the upload id handed to the client."""
    return _hkdf(data_key, salt, _INFO_UPLOAD_ID)


@dataclass(frozen=True)
class PartHeader:
    """The clear header at the start of each stored part."""

    number: int
    length: int
    salt: bytes

    def pack(self) -> bytes:
        """The 32 header bytes."""
        return PART_HEADER.pack(PART_MAGIC, self.number, self.length, self.salt)

    @classmethod
    def unpack(cls, raw: bytes) -> PartHeader:
        """Parse; IntegrityError when it is not a part header."""
        if len(raw) != PART_HEADER_SIZE:
            raise IntegrityError("part header has the wrong size")
        magic, number, length, salt = PART_HEADER.unpack(raw)
        if magic != PART_MAGIC:
            raise IntegrityError("part header is missing")
        return cls(number, length, salt)


def segment_nonce(index: int, last: bool) -> bytes:
    """STREAM nonce: 7 zero bytes, the 32-bit big-endian segment index, the last-segment flag."""
    return b"\x00" * 7 + struct.pack(">IB", index, 1 if last else 0)


@dataclass(frozen=True)
class SealedMetadata:
    """What sealgate keeps about an object that the backend must not read."""

    user: Mapping[str, str] = field(default_factory=dict)
    #: The plaintext ETag (hex MD5, unquoted) when known at upload start; "tail" when the MD5
    #: sits in the digest slot; None for an opaque ETag derived from the backend's.
    etag: str | None = None

    def to_json(self) -> bytes:
        doc: dict[str, object] = {"u": dict(self.user)}
        if self.etag is not None:
            doc["e"] = self.etag
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SealedMetadata:
        try:
            doc = json.loads(raw)
            user = doc.get("u", {})
            etag = doc.get("e")
            if not isinstance(user, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in user.items()
            ):
                raise FormatError("sealed metadata: bad user map")
            if etag is not None and not isinstance(etag, str):
                raise FormatError("sealed metadata: bad etag")
        except (ValueError, AttributeError) as exc:
            raise FormatError("sealed metadata is not valid JSON") from exc
        return cls(user=user, etag=etag)


def seal_metadata(data_key: bytes, salt: bytes, meta: SealedMetadata) -> bytes:
    """nonce ‖ AES-GCM(meta key, nonce, JSON) under a key derived from the data key."""
    nonce = os.urandom(12)
    key = _hkdf(data_key, salt, _INFO_META)
    return nonce + AESGCM(key).encrypt(nonce, meta.to_json(), _META_AAD)


def open_metadata(data_key: bytes, salt: bytes, sealed: bytes) -> SealedMetadata:
    """Inverse of `seal_metadata`; IntegrityError if it was altered."""
    if len(sealed) < 12 + TAG_SIZE:
        raise IntegrityError("sealed metadata is too short")
    key = _hkdf(data_key, salt, _INFO_META)
    try:
        raw = AESGCM(key).decrypt(sealed[:12], sealed[12:], _META_AAD)
    except InvalidTag as exc:
        raise IntegrityError("sealed metadata failed authentication") from exc
    return SealedMetadata.from_json(raw)


@dataclass(frozen=True)
class Layout:
    """Length and offset arithmetic of one stream with a given segment size."""

    segment_size: int = DEFAULT_SEGMENT_SIZE

    @property
    def sealed_segment(self) -> int:
        """Bytes one full segment takes on the backend."""
        return self.segment_size + TAG_SIZE

    def segment_count(self, plaintext_length: int) -> int:
        """Segments of a stream holding `plaintext_length` bytes (digest slot included)."""
        total = plaintext_length + DIGEST_SLOT
        return -(-total // self.segment_size)

    def ciphertext_length(self, plaintext_length: int) -> int:
        """Backend size of a stream: a pure function of the plaintext size."""
        if plaintext_length < 0:
            raise ValueError("negative length")
        return plaintext_length + DIGEST_SLOT + TAG_SIZE * self.segment_count(plaintext_length)

    def plaintext_length(self, ciphertext_length: int) -> int:
        """Inverse of `ciphertext_length`; FormatError when no plaintext length maps to it."""
        segments = -(-ciphertext_length // self.sealed_segment)
        plain = ciphertext_length - TAG_SIZE * segments - DIGEST_SLOT
        if plain < 0 or self.ciphertext_length(plain) != ciphertext_length:
            raise FormatError(f"{ciphertext_length} is not a valid sealed stream length")
        return plain

    def segment_plain_length(self, index: int, plaintext_length: int) -> int:
        """Stream-plaintext bytes (data and digest slot) in segment `index`."""
        total = plaintext_length + DIGEST_SLOT
        start = index * self.segment_size
        return min(self.segment_size, total - start)

    def span(self, start: int, end: int, plaintext_length: int) -> SegmentSpan:
        """The segments covering stream-plaintext bytes [start, end), and their backend range."""
        if not 0 <= start < end <= plaintext_length + DIGEST_SLOT:
            raise ValueError(f"bad span {start}-{end} of {plaintext_length}")
        first = start // self.segment_size
        last = (end - 1) // self.segment_size
        count = self.segment_count(plaintext_length)
        ct_start = first * self.sealed_segment
        ct_end = min((last + 1) * self.sealed_segment, self.ciphertext_length(plaintext_length))
        return SegmentSpan(
            first=first,
            last=last,
            final_index=count - 1,
            ciphertext_start=ct_start,
            ciphertext_end=ct_end,
            skip=start - first * self.segment_size,
            length=end - start,
        )


@dataclass(frozen=True)
class SegmentSpan:
    """A run of segments to fetch and which of their plaintext bytes to release."""

    first: int
    last: int
    #: Index of the stream's final segment (the one sealed with last=1).
    final_index: int
    ciphertext_start: int
    #: Exclusive.
    ciphertext_end: int
    #: Plaintext bytes to drop from the start of segment `first`.
    skip: int
    #: Plaintext bytes to release in all.
    length: int


@dataclass(frozen=True)
class Envelope:
    """The parsed sealgate metadata of one stored object (everything but the body)."""

    key_ref: str
    wrapped_key: bytes
    salt: bytes
    commitment: bytes
    segment_size: int
    sealed: bytes
    layout: str = LAYOUT_SINGLE
    scope: str = SCOPE_OBJECT
    name_tag: bytes = b""
    #: The sender signature (`sg-sig`), empty when the writer signs nothing (or signs the manifest).
    signature: bytes = b""

    def to_metadata(self) -> dict[str, str]:
        """Backend user-metadata entries (names without ``x-amz-meta-``)."""
        extra = {META_SCOPE: self.scope, META_NAME_TAG: _b64(self.name_tag)} if self.scope == SCOPE_BUCKET else {}
        if self.signature:
            extra[META_SIGNATURE] = _b64(self.signature)
        return extra | {
            META_VERSION: VERSION,
            META_LAYOUT: self.layout,
            META_KEY_REF: self.key_ref,
            META_WRAPPED_KEY: _b64(self.wrapped_key),
            META_SALT: _b64(self.salt),
            META_COMMITMENT: _b64(self.commitment),
            META_SEGMENT_SIZE: str(self.segment_size),
            META_SEALED: _b64(self.sealed),
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> Envelope:
        """Parse backend user metadata (lower-case names without prefix); FormatError if bad."""
        version = meta.get(META_VERSION)
        if version is None:
            raise FormatError("not a sealgate object (no format version)")
        if version != VERSION:
            raise FormatError(f"unsupported sealgate format version {version!r}")
        try:
            layout = meta[META_LAYOUT]
            key_ref = meta[META_KEY_REF]
            wrapped = _unb64(meta[META_WRAPPED_KEY])
            salt = _unb64(meta[META_SALT])
            commit = _unb64(meta[META_COMMITMENT])
            segment_size = int(meta[META_SEGMENT_SIZE])
            sealed = _unb64(meta[META_SEALED])
            scope = meta.get(META_SCOPE, SCOPE_OBJECT)
            tag = _unb64(meta[META_NAME_TAG]) if scope == SCOPE_BUCKET else b""
            signature = _unb64(meta.get(META_SIGNATURE, ""))
        except KeyError as exc:
            raise FormatError(f"sealgate metadata field {exc.args[0]} is missing") from exc
        except (ValueError, binascii.Error) as exc:
            raise FormatError(f"sealgate metadata is malformed: {exc}") from exc
        if scope not in (SCOPE_OBJECT, SCOPE_BUCKET):
            raise FormatError(f"unsupported key scope {scope!r}")
        if layout not in LAYOUTS:
            raise FormatError(f"unsupported layout {layout!r}")
        if len(salt) != SALT_SIZE or len(commit) != COMMIT_SIZE:
            raise FormatError("sealgate metadata has a salt or commitment of the wrong size")
        if not valid_segment_size(segment_size):
            raise FormatError(f"invalid segment size {segment_size}")
        return cls(
            key_ref=key_ref,
            wrapped_key=wrapped,
            salt=salt,
            commitment=commit,
            segment_size=segment_size,
            sealed=sealed,
            layout=layout,
            scope=scope,
            name_tag=tag,
            signature=signature,
        )

    @classmethod
    def new(
        cls,
        data_key: bytes,
        key_ref: str,
        wrapped_key: bytes,
        sealed: SealedMetadata,
        *,
        layout: str,
        scope: str = SCOPE_OBJECT,
        bucket: str = "",
        key: str = "",
    ) -> Envelope:
        """The envelope of a new object under `data_key` (wrapped as `wrapped_key` by master key
        `key_ref`): a fresh salt, the key commitment, `sealed` sealed, the default segment size,
        and for a bucket-scoped data key the tag that binds the object's `bucket` and `key`."""
        salt = os.urandom(SALT_SIZE)
        return cls(
            key_ref=key_ref,
            wrapped_key=wrapped_key,
            salt=salt,
            commitment=commitment(data_key, salt),
            segment_size=DEFAULT_SEGMENT_SIZE,
            sealed=seal_metadata(data_key, salt, sealed),
            layout=layout,
            scope=scope,
            name_tag=name_tag(data_key, salt, bucket, key) if scope == SCOPE_BUCKET else b"",
        )

    def context(self, bucket: str, key: str) -> dict[str, str]:
        """The encryption context this object's data key was wrapped under."""
        return encryption_context(bucket, key, self.scope)

    def check_name(self, data_key: bytes, bucket: str, key: str) -> None:
        """IntegrityError unless a bucket-scoped object was written under this name."""
        if self.scope == SCOPE_BUCKET and not constant_time.bytes_eq(
            name_tag(data_key, self.salt, bucket, key), self.name_tag
        ):
            raise IntegrityError("object was written under another name")

    def check_commitment(self, data_key: bytes) -> None:
        """IntegrityError unless `data_key` is the key this object was sealed under."""
        if not constant_time.bytes_eq(commitment(data_key, self.salt), self.commitment):
            raise IntegrityError("key commitment does not match the data key")


def valid_segment_size(size: int) -> bool:
    """Segment sizes are powers of two from 4 KiB to 4 MiB."""
    return MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE and size & (size - 1) == 0


def is_sealgate_object(meta: Mapping[str, str]) -> bool:
    """Whether backend metadata claims this is a sealgate object (any version)."""
    return META_VERSION in meta


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def seal_blob(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce ‖ AES-256-GCM(key, nonce, plaintext, aad) with a random nonce."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_blob(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Inverse of `seal_blob`; IntegrityError when altered."""
    if len(sealed) < 12 + TAG_SIZE:
        raise IntegrityError("sealed blob is too short")
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)
    except InvalidTag as exc:
        raise IntegrityError("sealed blob failed authentication") from exc


@dataclass(frozen=True)
class ManifestPart:
    """One part of a completed multipart object."""

    number: int
    length: int
    #: The part ETag the client was given (unquoted).
    etag: str
    #: True when `etag` is the MD5 of the part's plaintext, which its digest slot then holds.
    md5: bool = False


@dataclass(frozen=True)
class Manifest:
    """What a completed multipart object consists of; sealed, stored beside the object."""

    parts: tuple[ManifestPart, ...]
    #: The ETag the backend gives the completed object: binds the exact stored parts.
    backend_etag: str
    #: The ETag sealgate returns for the object (S3's multipart form).
    etag: str
    #: The backend's ETag of each stored part as listed when the upload was completed (the MD5
    #: of its stored bytes on S3-like backends); () in manifests written before they were kept.
    part_etags: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Plaintext size of the whole object."""
        return sum(p.length for p in self.parts)

    def to_json(self) -> bytes:
        doc = {
            "v": 1,
            "p": [[p.number, p.length, p.etag, p.md5] for p in self.parts],
            "b": self.backend_etag,
            "e": self.etag,
        }
        if self.part_etags:
            doc["q"] = list(self.part_etags)
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            doc = json.loads(raw)
            if doc.get("v") != 1:
                raise FormatError("unsupported manifest version")
            parts = tuple(ManifestPart(int(n), int(length), str(e), bool(m)) for n, length, e, m in doc["p"])
            part_etags = tuple(str(e) for e in doc.get("q", ()))
            if part_etags and len(part_etags) != len(parts):
                raise FormatError("manifest is malformed")
            return cls(parts, str(doc["b"]), str(doc["e"]), part_etags)
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError("manifest is malformed") from exc

    def seal(self, data_key: bytes, salt: bytes) -> bytes:
        """The sealed manifest."""
        return seal_blob(manifest_key(data_key, salt), self.to_json(), _INFO_MANIFEST)

    @classmethod
    def open(cls, data_key: bytes, salt: bytes, sealed: bytes) -> Manifest:
        """Open a sealed manifest; IntegrityError when altered."""
        return cls.from_json(open_blob(manifest_key(data_key, salt), sealed, _INFO_MANIFEST))


def part_ciphertext_length(layout: Layout, plaintext_length: int) -> int:
    """Stored size of one multipart part."""
    return PART_HEADER_SIZE + layout.ciphertext_length(plaintext_length)


def part_plaintext_length(layout: Layout, ciphertext_length: int) -> int:
    """Inverse of `part_ciphertext_length`; FormatError when impossible."""
    return layout.plaintext_length(ciphertext_length - PART_HEADER_SIZE)
