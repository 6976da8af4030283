"""S3EC bodies, pure and streaming: decrypting a GCM body (verify first, or delayed
authentication), encrypting a V3 body, and decrypting a legacy AES-CBC body, each fed in pieces
of any size, from the `S3ecMaterials` or data key the caller has (proxy/crypto/s3ec_keys.py)."""

from __future__ import annotations

import os
from typing import Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.crypto.format import IntegrityError
from proxy.crypto.s3ec import (
    CBC_BLOCK,
    MESSAGE_ID_SIZE,
    SUITE_V3_ID,
    TAG_SIZE,
    V3_IV,
    S3ecFormatError,
    S3ecMaterials,
    S3ecTooLarge,
    V3Body,
    plaintext_length,
)
from proxy.crypto.s3ec_keys import derive_v3_keys

#: Default limit for verify-first decryption (as the Java client's buffer).
DEFAULT_VERIFY_LIMIT: Final = 64 * 1024 * 1024

Mode = Literal["verify_first", "delayed"]


# -- streaming body decryption ----------------------------------------------------------------


class S3ecDecryptor:
    """Decrypts one S3EC GCM body fed in pieces of any size.

    ``verify_first``: no plaintext leaves before the tag has been checked; it is held (up to
    `limit` bytes, else `S3ecTooLarge` at construction) and all of it comes out of `finish`.
    ``delayed``: plaintext is released as it is decrypted, and `finish` raises `IntegrityError`
    if the tag fails, so the caller must be able to abort what it already sent.
    """

    def __init__(
        self,
        materials: S3ecMaterials,
        total_ciphertext_length: int,
        *,
        mode: Mode = "verify_first",
        limit: int = DEFAULT_VERIFY_LIMIT,
    ) -> None:
        if mode not in ("verify_first", "delayed"):
            raise ValueError(f"unknown mode {mode!r}")
        self._plaintext_length = plaintext_length(total_ciphertext_length)
        if mode == "verify_first" and self._plaintext_length > limit:
            raise S3ecTooLarge(
                f"S3EC object of {self._plaintext_length} bytes is above the verify-first limit of {limit}"
            )
        self._mode = mode
        self._total = total_ciphertext_length
        self._seen = 0
        self._tail = b""
        self._held: list[bytes] = []
        self._done = False
        self._cipher = Cipher(algorithms.AES(materials.content_key), modes.GCM(materials.iv)).decryptor()
        if materials.aad:
            self._cipher.authenticate_additional_data(materials.aad)

    @property
    def plaintext_length(self) -> int:
        """Bytes the whole body decrypts to."""
        return self._plaintext_length

    def feed(self, data: bytes) -> list[bytes]:
        """Decrypt the next ciphertext bytes; plaintext released now (never in verify_first)."""
        if self._done:
            raise RuntimeError("feed() after finish()")
        if not data:
            return []
        self._seen += len(data)
        if self._seen > self._total:
            self._fail()
            raise IntegrityError("S3EC body is longer than its stated length")
        buf = self._tail + bytes(data)
        # The last TAG_SIZE bytes of the body are the tag: never give them to the cipher.
        keep = min(len(buf), TAG_SIZE - min(TAG_SIZE, self._total - self._seen))
        cut = len(buf) - keep
        self._tail = buf[cut:]
        if cut == 0:
            return []
        out = self._cipher.update(buf[:cut])
        if self._mode == "delayed":
            return [out] if out else []
        if out:
            self._held.append(out)
        return []

    def finish(self) -> list[bytes]:
        """Check the tag; the rest of the plaintext (all of it in verify_first mode)."""
        if self._done:
            raise RuntimeError("finish() twice")
        self._done = True
        if self._seen != self._total or len(self._tail) != TAG_SIZE:
            self._held.clear()
            raise IntegrityError(f"S3EC body truncated: {self._seen} of {self._total} bytes")
        try:
            last = self._cipher.finalize_with_tag(self._tail)
        except InvalidTag:
            self._held.clear()
            raise IntegrityError("S3EC body does not authenticate (tampered, truncated or wrong key)") from None
        held, self._held = self._held, []
        if last:
            held.append(last)
        return [b for b in held if b]

    def _fail(self) -> None:
        self._done = True
        self._held.clear()


def decrypt_body(
    materials: S3ecMaterials, body: bytes, *, mode: Mode = "verify_first", limit: int = DEFAULT_VERIFY_LIMIT
) -> bytes:
    """Convenience: a whole body at once (verified)."""
    dec = S3ecDecryptor(materials, len(body), mode=mode, limit=limit)
    return b"".join(dec.feed(body) + dec.finish())


# -- writing V3 --------------------------------------------------------------------------------


class S3ecV3Encryptor(V3Body):
    """Encrypts one object as an S3EC V3 (suite 115) body, piece by piece.

    The body is the ciphertext of each piece in order, then the 16-byte tag from `finish`; it is
    exactly plaintext length + 16 bytes long, so a Content-Length can be sent up front.
    `message_id` and `commitment` go into the metadata (see `v3_metadata`/`metadata`).
    """

    def __init__(self, data_key: bytes, *, message_id: bytes | None = None) -> None:
        self.message_id = os.urandom(MESSAGE_ID_SIZE) if message_id is None else message_id
        enc_key, self.commitment = derive_v3_keys(data_key, self.message_id)
        self._cipher = Cipher(algorithms.AES(enc_key), modes.GCM(V3_IV)).encryptor()
        self._cipher.authenticate_additional_data(SUITE_V3_ID)
        self._done = False

    def update(self, plaintext: bytes) -> bytes:
        """Ciphertext for the next plaintext piece (same length)."""
        if self._done:
            raise RuntimeError("update() after finish()")
        return self._cipher.update(plaintext)

    def finish(self) -> bytes:
        """The GCM tag: the last 16 bytes of the body."""
        if self._done:
            raise RuntimeError("finish() twice")
        self._done = True
        rest = self._cipher.finalize()
        return rest + self._cipher.tag


# -- legacy AES-CBC bodies (V1, and V2 with AES/CBC content): unauthenticated -------------------


def cbc_plaintext_length(materials: S3ecMaterials, total: int, tail: bytes) -> int:
    """Plaintext length of a CBC body of `total` bytes from its last 32 bytes (16 if it is one
    block): the last block decrypted with the one before it (or the IV) gives the padding."""
    if total < CBC_BLOCK or total % CBC_BLOCK:
        raise S3ecFormatError(f"S3EC CBC body of {total} bytes is not a whole number of blocks")
    want = min(total, 2 * CBC_BLOCK)
    if len(tail) != want:
        raise S3ecFormatError("S3EC CBC body tail has the wrong length")
    prev = materials.iv if total == CBC_BLOCK else tail[:CBC_BLOCK]
    dec = Cipher(algorithms.AES(materials.content_key), modes.CBC(prev)).decryptor()
    last = dec.update(tail[-CBC_BLOCK:]) + dec.finalize()
    pad = last[-1]
    if not 1 <= pad <= CBC_BLOCK or last[-pad:] != bytes([pad]) * pad:
        raise S3ecFormatError("S3EC CBC body has bad padding (wrong key or damaged object)")
    return total - pad


class S3ecCbcDecryptor:
    """Decrypts an AES-CBC body (unauthenticated) fed in pieces of any size."""

    def __init__(self, materials: S3ecMaterials, plaintext_length: int) -> None:
        self._cipher = Cipher(algorithms.AES(materials.content_key), modes.CBC(materials.iv)).decryptor()
        self._unpadder = padding.PKCS7(128).unpadder()
        self._expected = plaintext_length
        self._out = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Plaintext for the next ciphertext bytes (the last block waits for `finish`)."""
        out = self._unpadder.update(self._cipher.update(bytes(data)))
        self._out += len(out)
        return [out] if out else []

    def finish(self) -> list[bytes]:
        """The rest of the plaintext; `S3ecFormatError` if the padding or length is wrong."""
        try:
            out = self._unpadder.update(self._cipher.finalize()) + self._unpadder.finalize()
        except ValueError:
            raise S3ecFormatError("S3EC CBC body has bad padding or length") from None
        self._out += len(out)
        if self._out != self._expected:
            raise S3ecFormatError("S3EC CBC body changed length while being read")
        return [out] if out else []
