"""Upload ids that carry, authenticated, what every replica needs to serve an upload.

``prefix`` ‖ base64url(lp(backend upload id) ‖ lp(key ref) ‖ lp(wrapped data key) ‖ lp(sealed data key) ‖
salt(32) ‖ [slot(2)] ‖ mac(16))
with ``lp(x) = uint16_be(len(x)) ‖ x``, the optional slot a uint16_be (the worker process of a
sealgate with several that holds an s3ec-v3 upload's state; absent in older ids and with one
worker) and mac = HMAC-SHA256(upload-id key, bucket ‖ 0 ‖ key ‖ 0 ‖ everything before the mac)[:16].
The prefix names the object format: ``SG1`` for sealgate's,
whose upload-id key is HKDF(data key, salt, "sealgate/1/upload-id"); ``s3ec3-`` for the S3
Encryption Client's V3, whose key is HKDF(data key, salt, "sealgate/1/s3ec-upload-id"). The
upload-id key derives from the data key, which only unwraps for this bucket and key (or only
this process holds it): a client can neither forge an id nor move one to another object.
"""

from __future__ import annotations

import base64
import hmac
import struct
from dataclasses import dataclass, field
from hashlib import sha256

from proxy.crypto.format import SALT_SIZE, FormatError, upload_id_key

PREFIX = "SG1"
#: The prefix of s3ec-v3 uploads' ids (same fields, its own MAC key).
S3EC_PREFIX = "s3ec3-"
_MAC = 16
_SLOT = 2
_S3EC_INFO = b"sealgate/1/s3ec-upload-id"


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 32, salt, info).derive(secret)


@dataclass(frozen=True)
class UploadId:
    """The fields an upload id carries."""

    backend_id: str
    key_ref: str
    wrapped_key: bytes
    salt: bytes
    mac: bytes = field(default=b"", repr=False)
    #: The data key sealed under the replicas' shared upload secret (empty when none is set).
    sealed_key: bytes = b""
    #: `PREFIX` (a sealgate-format upload) or `S3EC_PREFIX` (an s3ec-v3 upload).
    prefix: str = PREFIX
    #: The worker slot whose process holds an s3ec-v3 upload's state (None: unknown, one worker).
    slot: int | None = None

    def _body(self) -> bytes:
        out = b""
        for item in (self.backend_id.encode(), self.key_ref.encode(), self.wrapped_key, self.sealed_key):
            out += struct.pack(">H", len(item)) + item
        return out + self.salt + (b"" if self.slot is None else struct.pack(">H", self.slot))

    def _mac(self, data_key: bytes, bucket: str, key: str) -> bytes:
        msg = bucket.encode() + b"\0" + key.encode() + b"\0" + self._body()
        if self.prefix == PREFIX:
            mac_key = upload_id_key(data_key, self.salt)
        else:
            mac_key = _hkdf(data_key, self.salt, _S3EC_INFO)
        return hmac.new(mac_key, msg, sha256).digest()[:_MAC]

    def encode(self, data_key: bytes, bucket: str, key: str) -> str:
        """The id handed to the client."""
        for item in (self.backend_id.encode(), self.key_ref.encode(), self.wrapped_key, self.sealed_key):
            if len(item) > 0xFFFF:
                raise ValueError("upload id field too long")
        if len(self.salt) != SALT_SIZE:
            raise ValueError(f"upload id salt must be {SALT_SIZE} bytes")
        if self.slot is not None and not 0 <= self.slot <= 0xFFFF:
            raise ValueError("upload id slot out of range")
        raw = self._body() + self._mac(data_key, bucket, key)
        return self.prefix + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def verify(self, data_key: bytes, bucket: str, key: str) -> None:
        """FormatError unless this id was made by sealgate for this bucket and key."""
        if not hmac.compare_digest(self._mac(data_key, bucket, key), self.mac):
            raise FormatError("upload id is not valid for this object")

    @classmethod
    def decode(cls, text: str, kind: str | None = None) -> UploadId:
        """Parse either kind, or only `kind` (`PREFIX` or `S3EC_PREFIX`) when given; not yet
        authenticated: call `verify` with the data key."""
        prefix = next((p for p in (PREFIX, S3EC_PREFIX) if text.startswith(p)), None)
        if prefix is None or (kind is not None and prefix != kind):
            raise FormatError("not a sealgate upload id" if prefix is None else "an upload id of the other format")
        try:
            b64 = text[len(prefix) :]
            raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), altchars=b"-_", validate=True)
            if base64.urlsafe_b64encode(raw).decode().rstrip("=") != b64:
                raise ValueError("not canonical base64url")  # one id, one spelling
            items: list[bytes] = []
            pos = 0
            for _ in range(4):
                (n,) = struct.unpack_from(">H", raw, pos)
                items.append(raw[pos + 2 : pos + 2 + n])
                if len(items[-1]) != n:
                    raise ValueError("short")
                pos += 2 + n
            salt = raw[pos : pos + SALT_SIZE]
            rest = raw[pos + SALT_SIZE :]
            # The slot's presence shows in the length alone: the mac is always the last 16 bytes.
            slot = struct.unpack(">H", rest[:_SLOT])[0] if len(rest) == _SLOT + _MAC else None
            mac = rest[-_MAC:] if len(rest) in (_MAC, _SLOT + _MAC) else b""
            if len(salt) != SALT_SIZE or len(mac) != _MAC:
                raise ValueError("bad length")
            return cls(items[0].decode(), items[1].decode(), items[2], salt, mac, items[3], prefix, slot)
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            raise FormatError("malformed upload id") from exc


def _secret_key(secret: bytes, salt: bytes) -> bytes:
    return _hkdf(secret, salt, b"sealgate/1/upload-secret")


def seal_for_replicas(secret: bytes, salt: bytes, data_key: bytes, bucket: str, key: str) -> bytes:
    """The data key sealed under the replicas' shared upload secret, bound to the object."""
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    return nonce + AESGCM(_secret_key(secret, salt)).encrypt(nonce, data_key, bucket.encode() + b"\0" + key.encode())


def open_for_replicas(secret: bytes, salt: bytes, sealed: bytes, bucket: str, key: str) -> bytes:
    """Inverse of `seal_for_replicas`; FormatError when it does not open."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(_secret_key(secret, salt)).decrypt(
            sealed[:12], sealed[12:], bucket.encode() + b"\0" + key.encode()
        )
    except (InvalidTag, ValueError) as exc:
        raise FormatError("upload id does not open with this upload secret") from exc
