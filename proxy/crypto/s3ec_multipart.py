"""One S3EC V3 body written as consecutive parts (multipart uploads), pure: each part is
encrypted from a small `GcmStreamState`, so the state can be kept between requests.

GCM = CTR + GHASH. The CTR keystream of any byte offset is known from the IV alone, and GHASH
is linear: GHASH over X || Y = GHASH(X) * H^blocks(Y) + GHASH(Y). So a part can be encrypted
from a small state (plaintext offset, GHASH accumulator, < 16 pending ciphertext bytes) and
the state after it computed without touching earlier parts. OpenSSL computes each part's own
GHASH (fed as AAD to a helper GCM context under the same key; its tag = GHASH ^ E_K(J0) is
never released), and only a few GF(2^128) products per part run in Python. Because the state
is plain values, a failed or retried part just starts again from the state before it.

Starting again means the same AES-CTR counters under the same key, so a part sent again must
be byte-identical to what any earlier attempt may have released, or the backend would hold
two ciphertexts under one keystream (and two tags under one nonce give away GHASH's key):
`SentPart` records digests of what left, `PartAttempt` releases a new attempt only where it
matches.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.crypto.s3ec import MESSAGE_ID_SIZE, SUITE_V3_ID, V3_IV, S3ecFormatError, V3Body
from proxy.crypto.s3ec_keys import derive_v3_keys

_GF_R: Final = 0xE1 << 120
#: GCM's limit on one message: 2^39 - 256 bits of plaintext.
GCM_MAX_PLAINTEXT: Final = (1 << 36) - 32


def _gf_mult(x: int, y: int) -> int:
    """Multiplication in GCM's GF(2^128) (bit-reflected, blocks as big-endian integers)."""
    z = 0
    v = y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _GF_R if v & 1 else v >> 1
    return z


def _gf_pow(x: int, n: int) -> int:
    result = 1 << 127  # the field's one, bit-reflected
    while n:
        if n & 1:
            result = _gf_mult(result, x)
        x = _gf_mult(x, x)
        n >>= 1
    return result


def _ecb(key: bytes, block: bytes) -> int:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - one block: H and E_K(J0)
    return int.from_bytes(enc.update(block) + enc.finalize(), "big")


@dataclass(frozen=True)
class GcmStreamState:
    """Where a V3 body being written in parts stands: plaintext bytes so far, the GHASH
    accumulator and the ciphertext bytes (< 16) not yet in a whole GHASH block."""

    offset: int
    ghash: int = field(repr=False)
    pending: bytes = field(default=b"", repr=False)


class S3ecV3Multipart(V3Body):
    """One S3EC V3 body written as consecutive parts, each encrypted from a `GcmStreamState`.

    The concatenation of the parts' ciphertexts followed by `tag(final state)` is byte for byte
    what `S3ecV3Encryptor` writes for the concatenated plaintext.
    """

    def __init__(self, data_key: bytes, *, message_id: bytes | None = None) -> None:
        self.message_id = os.urandom(MESSAGE_ID_SIZE) if message_id is None else message_id
        self._key, self.commitment = derive_v3_keys(data_key, self.message_id)
        self._h = _ecb(self._key, b"\x00" * 16)
        self._h_inv = _gf_pow(self._h, (1 << 128) - 2)
        self._ek_j0 = _ecb(self._key, V3_IV + b"\x00\x00\x00\x01")
        aad_block = int.from_bytes(SUITE_V3_ID.ljust(16, b"\x00"), "big")
        self.start = GcmStreamState(offset=0, ghash=_gf_mult(aad_block, self._h))

    def part(self, state: GcmStreamState) -> S3ecPartEncryptor:
        """An encryptor for the part that starts at `state`."""
        return S3ecPartEncryptor(self, state)

    def tag(self, state: GcmStreamState) -> bytes:
        """The GCM tag (the body's last 16 bytes) once every part has been encrypted."""
        y = state.ghash
        if state.pending:
            y = _gf_mult(y ^ int.from_bytes(state.pending.ljust(16, b"\x00"), "big"), self._h)
        lengths = (len(SUITE_V3_ID) * 8) << 64 | state.offset * 8
        y = _gf_mult(y ^ lengths, self._h)
        return (y ^ self._ek_j0).to_bytes(16, "big")

    def _advance(
        self, state: GcmStreamState, length: int, part_ghash: int, blocks: int, pending: bytes
    ) -> GcmStreamState:
        y = _gf_mult(state.ghash, _gf_pow(self._h, blocks)) ^ part_ghash if blocks else state.ghash
        return GcmStreamState(offset=state.offset + length, ghash=y, pending=pending)


class S3ecPartEncryptor:
    """Encrypts one part from a known state; `finish` gives the state after it."""

    def __init__(self, body: S3ecV3Multipart, state: GcmStreamState) -> None:
        self._body = body
        self._state = state
        block, skip = divmod(state.offset, 16)
        if block + 2 >= 1 << 32:
            raise S3ecFormatError("S3EC body too long for one GCM stream")
        nonce = V3_IV + (block + 2).to_bytes(4, "big")
        self._ctr = Cipher(algorithms.AES(body._key), modes.CTR(nonce)).encryptor()
        if skip:
            self._ctr.update(b"\x00" * skip)
        self._ghash = Cipher(algorithms.AES(body._key), modes.GCM(V3_IV)).encryptor()
        self._pending = state.pending
        self._hashed = 0
        self._length = 0
        self._done = False

    def update(self, plaintext: bytes) -> bytes:
        """Ciphertext for the next plaintext piece (same length)."""
        if self._done:
            raise RuntimeError("update() after finish()")
        self._length += len(plaintext)
        if self._state.offset + self._length > GCM_MAX_PLAINTEXT:
            raise S3ecFormatError("S3EC body too long for one GCM stream")
        ct = self._ctr.update(plaintext)
        view = memoryview(ct)
        if self._pending:
            need = 16 - len(self._pending)
            if len(view) < need:
                self._pending += ct
                return ct
            self._feed(self._pending + bytes(view[:need]))
            self._pending = b""
            view = view[need:]
        whole = len(view) - len(view) % 16
        if whole:
            self._feed(view[:whole])
        self._pending = bytes(view[whole:])
        return ct

    def _feed(self, blocks: bytes | memoryview) -> None:
        self._ghash.authenticate_additional_data(blocks)
        self._hashed += len(blocks)

    @property
    def length(self) -> int:
        """Plaintext bytes so far."""
        return self._length

    def finish(self) -> GcmStreamState:
        """The state after this part."""
        if self._done:
            raise RuntimeError("finish() twice")
        self._done = True
        self._ctr.finalize()
        self._ghash.finalize()
        part_ghash = 0
        if self._hashed:
            # helper tag = GHASH(A || len block) ^ E_K(J0); peel off E_K(J0) and the length block.
            g = int.from_bytes(self._ghash.tag, "big") ^ self._body._ek_j0
            part_ghash = _gf_mult(g, self._body._h_inv) ^ ((self._hashed * 8) << 64)
        return self._body._advance(self._state, self._length, part_ghash, self._hashed // 16, self._pending)


#: Plaintext bytes per digest of a `SentPart`: a part sent again holds back at most this much
#: of its plaintext before it is checked and released.
RESEND_CHUNK: Final = 1 << 20


class PartMismatch(ValueError):
    """A part sent again differs from what an earlier attempt may have released: encrypting
    it would reuse that attempt's AES-CTR keystream."""


class SentPart:
    """What the attempts at one part may have released: the length first stated and SHA-256
    digests of the plaintext from the part's start, one per `RESEND_CHUNK` bytes (the last one
    possibly partial). Bytes are recorded before their ciphertext is released, so an attempt
    that failed anywhere (even after the backend had its body) leaves a record of all it could
    have sent."""

    def __init__(self, length: int) -> None:
        self.length = length
        self._digests: list[bytes] = []
        self._tail = hashlib.sha256()
        self._tail_length = 0

    @property
    def recorded(self) -> int:
        """Plaintext bytes recorded, from the part's start: their ciphertext may have left."""
        return len(self._digests) * RESEND_CHUNK + self._tail_length

    def attempt(self, length: int) -> PartAttempt:
        """A new attempt at this part, of `length` bytes (PartMismatch unless the first length:
        one of another length would end the stream elsewhere or move the tag)."""
        if length != self.length:
            raise PartMismatch(f"it was first sent with {self.length} bytes, now with {length}")
        return PartAttempt(self)

    def _digest(self, index: int) -> bytes:
        return self._digests[index] if index < len(self._digests) else self._tail.digest()

    def _record(self, plaintext: memoryview) -> None:
        while plaintext:
            take = min(len(plaintext), RESEND_CHUNK - self._tail_length)
            self._tail.update(plaintext[:take])
            self._tail_length += take
            plaintext = plaintext[take:]
            if self._tail_length == RESEND_CHUNK:
                self._digests.append(self._tail.digest())
                self._tail, self._tail_length = hashlib.sha256(), 0


class PartAttempt:
    """One attempt at a part: `release(plaintext)` returns what may now be encrypted and sent.
    Bytes the record already covers are held until their chunk (or the recorded end) is whole
    and its digest matches; bytes beyond it are recorded, then released at once."""

    def __init__(self, sent: SentPart) -> None:
        self._sent = sent
        self._released = 0
        self._held = bytearray()

    @property
    def held(self) -> int:
        """Plaintext bytes read but not yet checked against the record."""
        return len(self._held)

    def release(self, plaintext: bytes | memoryview) -> bytes:
        """The plaintext, checked where an earlier attempt went, that may now be encrypted
        (possibly less or more than given: held bytes come out once checked); PartMismatch if
        a chunk differs from the earlier attempt's, before any of it is released."""
        sent, view, out = self._sent, memoryview(plaintext), []
        while view:
            recorded = sent.recorded
            if self._released >= recorded:
                sent._record(view)
                self._released += len(view)
                out.append(plaintext if isinstance(plaintext, bytes) and len(view) == len(plaintext) else bytes(view))
                break
            index = self._released // RESEND_CHUNK
            end = min((index + 1) * RESEND_CHUNK, recorded)
            take = end - self._released - len(self._held)
            self._held += view[:take]
            view = view[take:]
            if self._released + len(self._held) < end:
                break
            if not hmac.compare_digest(hashlib.sha256(self._held).digest(), sent._digest(index)):
                raise PartMismatch(f"its bytes {index * RESEND_CHUNK} to {end - 1} differ from the earlier attempt's")
            out.append(bytes(self._held))
            self._released = end
            self._held.clear()
        return out[0] if len(out) == 1 else b"".join(out)
