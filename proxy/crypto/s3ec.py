"""The AWS S3 Encryption Client (S3EC) formats: V2 and key-committing V3, read and write.

Pure, streaming and sans-I/O; only the unwrap helpers await a keyring. docs/INTEROP.md is the
prose description. Every detail here was checked against the official Python client
(``amazon-s3-encryption-client-python`` 4.0.0, package ``s3_encryption``), except where a
comment says otherwise.

V2 (suite 114, ``ALG_AES_256_GCM_IV12_TAG16_NO_KDF``), user metadata::

    x-amz-key-v2    base64(wrapped data key)
    x-amz-wrap-alg  kms+context | AES/GCM | RSA-OAEP-SHA1
    x-amz-cek-alg   AES/GCM/NoPadding
    x-amz-iv        base64(12-byte IV)
    x-amz-tag-len   128
    x-amz-matdesc   JSON; for kms+context the KMS encryption context, which includes
                    "aws:x-amz-cek-alg": "AES/GCM/NoPadding"

    body = AES-256-GCM(data key, IV, plaintext, no AAD) || 16-byte tag

V3 (suite 115, ``ALG_AES_256_GCM_HKDF_SHA512_COMMIT_KEY``), user metadata::

    x-amz-c  "115"
    x-amz-3  base64(wrapped data key)
    x-amz-w  "12" (kms+context) | "02" (AES/GCM) | "22" (RSA-OAEP-SHA1)
    x-amz-t  JSON KMS encryption context (kms+context), incl. "aws:x-amz-cek-alg": "115"
    x-amz-m  JSON material description (AES/GCM, RSA)
    x-amz-d  base64(28-byte key commitment)
    x-amz-i  base64(28-byte message id)

    PRK        = HMAC-SHA512(key = message id, msg = data key)          (HKDF-Extract)
    enc key    = HKDF-Expand-SHA512(PRK, b"\\x00\\x73" || b"DERIVEKEY", 32)
    commitment = HKDF-Expand-SHA512(PRK, b"\\x00\\x73" || b"COMMITKEY", 28)
    body       = AES-256-GCM(enc key, IV = 12 x 0x01, plaintext, AAD = b"\\x00\\x73") || tag

The suite id in the HKDF info and in the GCM AAD is the two bytes 0x00 0x73; the AAD is
easy to miss. The ciphertext is always plaintext + 16 bytes long.

Instruction files (``KEY.instruction``, a JSON object of the same names) are read only: for
V1/V2 they hold all of the metadata and the object none of its content fields; for V3 the
object keeps x-amz-c/-d/-i and the instruction file holds the rest (and must not repeat them).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from proxy.crypto.format import FormatError, IntegrityError
from proxy.kms.base import InvalidWrappedKey, Keyring

FORMAT_V1: Final = "v1"
FORMAT_V2: Final = "v2"
FORMAT_V3: Final = "v3"

# V1/V2 metadata names (without the ``x-amz-meta-`` prefix S3 adds).
META_KEY_V1: Final = "x-amz-key"
META_KEY_V2: Final = "x-amz-key-v2"
META_WRAP_ALG: Final = "x-amz-wrap-alg"
META_CEK_ALG: Final = "x-amz-cek-alg"
META_IV: Final = "x-amz-iv"
META_TAG_LEN: Final = "x-amz-tag-len"
META_MATDESC: Final = "x-amz-matdesc"
META_INSTRUCTION_MARKER: Final = "x-amz-crypto-instr-file"
# V3 metadata names.
META_V3_CIPHER: Final = "x-amz-c"
META_V3_KEY: Final = "x-amz-3"
META_V3_WRAP: Final = "x-amz-w"
META_V3_MATDESC: Final = "x-amz-m"
META_V3_CONTEXT: Final = "x-amz-t"
META_V3_COMMITMENT: Final = "x-amz-d"
META_V3_MESSAGE_ID: Final = "x-amz-i"

ALL_META: Final = frozenset(
    {
        META_KEY_V1,
        META_KEY_V2,
        META_WRAP_ALG,
        META_CEK_ALG,
        META_IV,
        META_TAG_LEN,
        META_MATDESC,
        META_INSTRUCTION_MARKER,
        META_V3_CIPHER,
        META_V3_KEY,
        META_V3_WRAP,
        META_V3_MATDESC,
        META_V3_CONTEXT,
        META_V3_COMMITMENT,
        META_V3_MESSAGE_ID,
    }
)
#: V3 fields that live in the object's metadata only, never in an instruction file.
V3_OBJECT_ONLY: Final = frozenset({META_V3_CIPHER, META_V3_COMMITMENT, META_V3_MESSAGE_ID})
INSTRUCTION_SUFFIX: Final = ".instruction"

WRAP_KMS_CONTEXT: Final = "kms+context"
WRAP_AES_GCM: Final = "AES/GCM"
WRAP_RSA_OAEP_SHA1: Final = "RSA-OAEP-SHA1"
WRAP_KMS_V1: Final = "kms"
_V3_WRAP_CODES: Final = {"02": WRAP_AES_GCM, "12": WRAP_KMS_CONTEXT, "22": WRAP_RSA_OAEP_SHA1}
_V3_WRAP_NAMES: Final = {name: code for code, name in _V3_WRAP_CODES.items()}

CEK_ALG_V2: Final = "AES/GCM/NoPadding"
CEK_ALG_CBC: Final = "AES/CBC/PKCS5Padding"
SUITE_V3: Final = "115"
SUITE_V3_ID: Final = b"\x00\x73"
#: The KMS encryption-context entry the client reserves: "AES/GCM/NoPadding" (V2), "115" (V3).
CONTEXT_CEK_ALG: Final = "aws:x-amz-cek-alg"
#: Reserved by the client for legacy KMS (V1) wrapping; not allowed in a caller's context.
CONTEXT_KMS_V1: Final = "kms_cmk_id"

DATA_KEY_SIZE: Final = 32
IV_SIZE: Final = 12
TAG_SIZE: Final = 16
MESSAGE_ID_SIZE: Final = 28
COMMITMENT_SIZE: Final = 28
V3_IV: Final = b"\x01" * IV_SIZE
#: Default limit for verify-first decryption (as the Java client's buffer).
DEFAULT_VERIFY_LIMIT: Final = 64 * 1024 * 1024

#: AAD for AES/GCM key wrapping: the content cipher name. Checked for V2 against the Java
#: client's AesKeyring design (IV(12) || AES-GCM(KEK, IV, data key, AAD) incl. tag); the
#: official Python client has no AES keyring, so this could not be verified against it. For
#: V3 sealgate writes "AES/GCM/NoPadding" (the Java JCE name of the suite-115 cipher) and on
#: read also accepts "115"; GCM makes trying a fixed list of AADs safe.
AES_WRAP_AAD_V2: Final = CEK_ALG_V2.encode()
AES_WRAP_AADS_V3: Final = (CEK_ALG_V2.encode(), SUITE_V3.encode())
AES_WRAPPED_SIZE: Final = IV_SIZE + DATA_KEY_SIZE + TAG_SIZE

Mode = Literal["verify_first", "delayed"]


class S3ecFormatError(FormatError):
    """Metadata that is not a well-formed S3 Encryption Client envelope."""


class S3ecUnsupported(S3ecFormatError):
    """A valid S3EC envelope that sealgate does not decrypt (V1/CBC, RSA wrapping, ...)."""


class S3ecTooLarge(S3ecFormatError):
    """Verify-first decryption was asked for an object above the configured limit."""


@dataclass(frozen=True)
class S3ecEnvelope:
    """The parsed metadata of one S3EC object (merged with its instruction file if any)."""

    version: str
    wrap_alg: str
    wrapped_key: bytes = field(repr=False)
    #: For kms+context: the exact KMS encryption context (x-amz-matdesc / x-amz-t).
    #: Otherwise the material description (x-amz-matdesc / x-amz-m).
    context: Mapping[str, str]
    #: V2: the 12-byte content IV. V3: empty.
    iv: bytes = b""
    #: V3 only: the 28-byte message id (HKDF salt) and the stored key commitment.
    message_id: bytes = b""
    commitment: bytes = b""


@dataclass(frozen=True)
class S3ecMaterials:
    """Everything the body decryptor needs; for V3 the commitment has been checked."""

    version: str
    content_key: bytes = field(repr=False)
    iv: bytes
    aad: bytes


# -- detection and parsing ---------------------------------------------------------------------


def detect(metadata: Mapping[str, str]) -> str | None:
    """The S3EC format ("v3", "v2", "v1") or None, from backend user metadata or an instruction file's JSON.

    Names are lower-case without ``x-amz-meta-``. A V3 object whose key material is in an
    instruction file is "v3" here (see `needs_instruction_file`). V1/V2 objects whose metadata
    is all in an instruction file leave no trace in the object: those are None until the
    caller merges ``KEY.instruction`` in.
    """
    if META_V3_KEY in metadata or META_V3_CIPHER in metadata:
        return FORMAT_V3
    if META_KEY_V1 in metadata and META_KEY_V2 not in metadata:
        return FORMAT_V1  # V1 objects may carry x-amz-wrap-alg ("kms") and x-amz-cek-alg too
    if META_KEY_V2 in metadata or META_CEK_ALG in metadata or META_WRAP_ALG in metadata:
        return FORMAT_V2
    if META_KEY_V1 in metadata:
        return FORMAT_V1
    return None


def needs_instruction_file(metadata: Mapping[str, str]) -> bool:
    """True for V3 object metadata that carries the content fields but not the wrapped key."""
    return (
        META_V3_CIPHER in metadata
        and META_V3_COMMITMENT in metadata
        and META_V3_MESSAGE_ID in metadata
        and META_V3_KEY not in metadata
    )


def parse_instruction_file(body: bytes) -> dict[str, str]:
    """The metadata in an instruction file body: a JSON object of S3EC names only."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise S3ecFormatError("S3EC instruction file is not JSON") from None
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise S3ecFormatError("S3EC instruction file is not a JSON object of strings")
    unknown = set(doc) - ALL_META
    if unknown:
        raise S3ecFormatError(f"S3EC instruction file has unknown names: {sorted(unknown)[:5]}")
    return {str(k): str(v) for k, v in doc.items()}


def merge_instruction_file(object_metadata: Mapping[str, str], instruction: Mapping[str, str]) -> dict[str, str]:
    """Object metadata merged with an instruction file, refusing the combinations the official
    client refuses (they are how a format-confusion attack would look)."""
    forbidden = set(instruction) & V3_OBJECT_ONLY
    if forbidden:
        raise S3ecFormatError(f"S3EC instruction file carries object-only V3 fields {sorted(forbidden)}")
    merged = dict(instruction)
    merged.update({k: v for k, v in object_metadata.items() if k in ALL_META})
    if detect(merged) in (FORMAT_V1, FORMAT_V2) and any(
        n in object_metadata for n in (META_CEK_ALG, META_IV, META_WRAP_ALG)
    ):
        raise S3ecFormatError("S3EC V1/V2 content metadata in both the object and its instruction file")
    return merged


def _b64(metadata: Mapping[str, str], name: str, size: int | None = None) -> bytes:
    value = metadata.get(name)
    if value is None:
        raise S3ecFormatError(f"S3EC metadata lacks {name}")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise S3ecFormatError(f"S3EC metadata {name} is not base64") from None
    if size is not None and len(raw) != size:
        raise S3ecFormatError(f"S3EC metadata {name} is {len(raw)} bytes, not {size}")
    if not raw:
        raise S3ecFormatError(f"S3EC metadata {name} is empty")
    return raw


def _json_map(metadata: Mapping[str, str], name: str) -> dict[str, str]:
    value = metadata.get(name)
    if value is None:
        return {}
    try:
        doc = json.loads(value)
    except ValueError:
        raise S3ecFormatError(f"S3EC metadata {name} is not JSON") from None
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise S3ecFormatError(f"S3EC metadata {name} is not a JSON object of strings")
    return doc


def parse(metadata: Mapping[str, str]) -> S3ecEnvelope:
    """The envelope in (merged) metadata; `S3ecFormatError` if it is not complete and valid."""
    present = [n for n in (META_KEY_V1, META_KEY_V2, META_V3_KEY) if n in metadata]
    if len(present) > 1:
        raise S3ecFormatError(f"S3EC metadata mixes format versions ({', '.join(present)})")
    version = detect(metadata)
    if version == FORMAT_V3:
        if needs_instruction_file(metadata):
            raise S3ecFormatError("S3EC V3 key material is in the instruction file; merge it first")
        if any(n in metadata for n in (META_CEK_ALG, META_IV, META_WRAP_ALG, META_MATDESC)):
            raise S3ecFormatError("S3EC V3 metadata mixed with V2 content fields")
        cipher = metadata.get(META_V3_CIPHER)
        if cipher != SUITE_V3:
            raise S3ecUnsupported(f"S3EC V3 content cipher {cipher!r} is not supported (only {SUITE_V3})")
        code = metadata.get(META_V3_WRAP, "12")  # the official reader defaults a missing x-amz-w to 12
        wrap_alg = _V3_WRAP_CODES.get(code)
        if wrap_alg is None:
            raise S3ecFormatError(f"S3EC V3 wrapping algorithm {code!r} is unknown")
        context_name = META_V3_CONTEXT if wrap_alg == WRAP_KMS_CONTEXT else META_V3_MATDESC
        return S3ecEnvelope(
            version=FORMAT_V3,
            wrap_alg=wrap_alg,
            wrapped_key=_b64(metadata, META_V3_KEY),
            context=_json_map(metadata, context_name),
            message_id=_b64(metadata, META_V3_MESSAGE_ID, MESSAGE_ID_SIZE),
            commitment=_b64(metadata, META_V3_COMMITMENT, COMMITMENT_SIZE),
        )
    if version == FORMAT_V2:
        if any(n in metadata for n in (META_V3_CIPHER, META_V3_COMMITMENT, META_V3_MESSAGE_ID)):
            raise S3ecFormatError("S3EC V2 metadata mixed with V3 content fields")
        cek_alg = metadata.get(META_CEK_ALG)
        if cek_alg == CEK_ALG_CBC:
            raise S3ecUnsupported("S3EC V2 with AES/CBC content (legacy, unauthenticated) is not supported")
        if cek_alg != CEK_ALG_V2:
            raise S3ecFormatError(f"S3EC V2 content cipher {cek_alg!r} is not {CEK_ALG_V2}")
        tag_len = metadata.get(META_TAG_LEN, "128")
        if tag_len != "128":
            raise S3ecUnsupported(f"S3EC V2 tag length {tag_len!r} is not supported (only 128)")
        wrap_alg = metadata.get(META_WRAP_ALG, "")
        if wrap_alg not in (WRAP_KMS_CONTEXT, WRAP_AES_GCM, WRAP_RSA_OAEP_SHA1):
            raise S3ecFormatError(f"S3EC V2 wrapping algorithm {wrap_alg!r} is unknown")
        return S3ecEnvelope(
            version=FORMAT_V2,
            wrap_alg=wrap_alg,
            wrapped_key=_b64(metadata, META_KEY_V2),
            context=_json_map(metadata, META_MATDESC),
            iv=_b64(metadata, META_IV, IV_SIZE),
        )
    if version == FORMAT_V1:
        raise S3ecUnsupported("S3EC V1 (x-amz-key, AES/CBC) is not supported by this module")
    raise S3ecFormatError("no S3EC metadata")


# -- key derivation and unwrapping ------------------------------------------------------------


def derive_v3_keys(data_key: bytes, message_id: bytes) -> tuple[bytes, bytes]:
    """(encryption key, commitment) for suite 115, exactly as the official client derives them."""
    if len(data_key) != DATA_KEY_SIZE:
        raise InvalidWrappedKey(f"S3EC data key is {len(data_key)} bytes, not {DATA_KEY_SIZE}")
    if len(message_id) != MESSAGE_ID_SIZE:
        raise S3ecFormatError(f"S3EC message id is {len(message_id)} bytes, not {MESSAGE_ID_SIZE}")
    prk = hmac.new(message_id, data_key, "sha512").digest()
    enc_key = HKDFExpand(hashes.SHA512(), DATA_KEY_SIZE, SUITE_V3_ID + b"DERIVEKEY").derive(prk)
    commitment = HKDFExpand(hashes.SHA512(), COMMITMENT_SIZE, SUITE_V3_ID + b"COMMITKEY").derive(prk)
    return enc_key, commitment


def materials(envelope: S3ecEnvelope, data_key: bytes) -> S3ecMaterials:
    """Content materials from an unwrapped data key; for V3 the key commitment is checked here,
    in constant time, before any content is decrypted (`IntegrityError` if it differs)."""
    if len(data_key) != DATA_KEY_SIZE:
        raise InvalidWrappedKey(f"S3EC data key is {len(data_key)} bytes, not {DATA_KEY_SIZE}")
    if envelope.version == FORMAT_V2:
        return S3ecMaterials(version=FORMAT_V2, content_key=data_key, iv=envelope.iv, aad=b"")
    enc_key, commitment = derive_v3_keys(data_key, envelope.message_id)
    if not hmac.compare_digest(commitment, envelope.commitment):
        raise IntegrityError("S3EC key commitment does not match the data key (tampered metadata)")
    return S3ecMaterials(version=FORMAT_V3, content_key=enc_key, iv=V3_IV, aad=SUITE_V3_ID)


def wrap_aes_gcm(kek: bytes, data_key: bytes, *, version: str = FORMAT_V3) -> bytes:
    """AES/GCM key wrapping: IV(12) || AES-256-GCM(kek, IV, data key, AAD) || tag."""
    if len(kek) != DATA_KEY_SIZE or len(data_key) != DATA_KEY_SIZE:
        raise ValueError("AES/GCM wrapping needs a 32-byte key and a 32-byte data key")
    aad = AES_WRAP_AAD_V2 if version == FORMAT_V2 else AES_WRAP_AADS_V3[0]
    iv = os.urandom(IV_SIZE)
    return iv + AESGCM(kek).encrypt(iv, data_key, aad)


def unwrap_aes_gcm(envelope: S3ecEnvelope, kek: bytes) -> bytes:
    """The data key of an AES/GCM-wrapped envelope under the raw 32-byte key `kek`."""
    if envelope.wrap_alg != WRAP_AES_GCM:
        raise S3ecFormatError(f"S3EC data key is wrapped with {envelope.wrap_alg}, not {WRAP_AES_GCM}")
    if len(kek) != DATA_KEY_SIZE:
        raise ValueError("AES/GCM unwrapping needs a 32-byte key")
    wrapped = envelope.wrapped_key
    if len(wrapped) != AES_WRAPPED_SIZE:
        raise InvalidWrappedKey(f"S3EC AES/GCM wrapped key is {len(wrapped)} bytes, not {AES_WRAPPED_SIZE}")
    aads = (AES_WRAP_AAD_V2,) if envelope.version == FORMAT_V2 else AES_WRAP_AADS_V3
    for aad in aads:
        try:
            return AESGCM(kek).decrypt(wrapped[:IV_SIZE], wrapped[IV_SIZE:], aad)
        except InvalidTag:
            continue
    raise InvalidWrappedKey("S3EC AES/GCM wrapped key does not unwrap under this key")


def wrap_rsa_oaep_sha1(public_key: rsa.RSAPublicKey, data_key: bytes) -> bytes:
    """RSA-OAEP-SHA1 key wrapping as the Java client's RsaOaepKeyring does it: OAEP with SHA-1
    and MGF1-SHA1, no label, over a "pseudo data key" = key length (1 byte) || data key ||
    content cipher name ("AES/GCM/NoPadding", for V2 and V3 alike)."""
    pseudo = bytes([len(data_key)]) + data_key + CEK_ALG_V2.encode()
    return public_key.encrypt(pseudo, _OAEP_SHA1)


def unwrap_rsa_oaep_sha1(envelope: S3ecEnvelope, private_key: rsa.RSAPrivateKey) -> bytes:
    """The data key of an RSA-OAEP-SHA1-wrapped envelope (see `wrap_rsa_oaep_sha1`)."""
    if envelope.wrap_alg != WRAP_RSA_OAEP_SHA1:
        raise S3ecFormatError(f"S3EC data key is wrapped with {envelope.wrap_alg}, not {WRAP_RSA_OAEP_SHA1}")
    try:
        pseudo = private_key.decrypt(envelope.wrapped_key, _OAEP_SHA1)
    except ValueError:
        raise InvalidWrappedKey("S3EC RSA-OAEP-SHA1 wrapped key does not unwrap under this key") from None
    size = pseudo[0] if pseudo else 0
    if size != DATA_KEY_SIZE or pseudo[1 + size :] != CEK_ALG_V2.encode():
        raise InvalidWrappedKey("S3EC RSA-OAEP-SHA1 wrapped key names another key size or content cipher")
    return pseudo[1 : 1 + size]


_OAEP_SHA1: Final = rsa_padding.OAEP(mgf=rsa_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def unwrap_with_key(metadata: Mapping[str, str], kek: bytes) -> S3ecMaterials:
    """Materials for an AES/GCM-wrapped object, given the raw 256-bit wrapping key."""
    envelope = parse(metadata)
    return materials(envelope, unwrap_aes_gcm(envelope, kek))


def kms_context(user_context: Mapping[str, str] | None = None, *, version: str = FORMAT_V3) -> dict[str, str]:
    """The KMS encryption context the client binds to a kms+context data key: the caller's
    entries plus ``aws:x-amz-cek-alg`` ("115" for V3, "AES/GCM/NoPadding" for V2)."""
    ctx = dict(user_context or {})
    for k, v in ctx.items():
        if k in (CONTEXT_CEK_ALG, CONTEXT_KMS_V1):
            raise ValueError(f"{k} is reserved by the S3 Encryption Client")
        if not (k.isascii() and v.isascii()):
            # S3 metadata would mangle it, and the object would never decrypt.
            raise ValueError("S3EC encryption context entries must be US-ASCII")
    ctx[CONTEXT_CEK_ALG] = SUITE_V3 if version == FORMAT_V3 else CEK_ALG_V2
    return ctx


async def unwrap_kms(
    metadata: Mapping[str, str],
    keyring: Keyring,
    key_id: str,
    expected_context: Mapping[str, str] | None = None,
) -> S3ecMaterials:
    """Materials for a kms+context object: KMS Decrypt pinned to `key_id` (S3EC stores no key
    id) with exactly the stored encryption context. `expected_context`, if given, must equal the
    stored context without its reserved entries, as the official client checks. Keyring errors
    pass through; `IntegrityError` for a bad V3 commitment."""
    envelope = parse(metadata)
    if envelope.wrap_alg != WRAP_KMS_CONTEXT:
        raise S3ecFormatError(f"S3EC data key is wrapped with {envelope.wrap_alg}, not {WRAP_KMS_CONTEXT}")
    reserved = envelope.context.get(CONTEXT_CEK_ALG)
    want = SUITE_V3 if envelope.version == FORMAT_V3 else CEK_ALG_V2
    if reserved is not None and reserved != want:
        raise S3ecFormatError(f"S3EC context names content cipher {reserved!r}, not {want!r}")
    if expected_context is not None:
        stored = {k: v for k, v in envelope.context.items() if k not in (CONTEXT_CEK_ALG, CONTEXT_KMS_V1)}
        if stored != dict(expected_context):
            raise InvalidWrappedKey("S3EC encryption context does not match the one given")
    data_key = await keyring.decrypt_data_key(key_id, envelope.wrapped_key, envelope.context)
    return materials(envelope, data_key)


async def unwrap_s3ec(
    metadata: Mapping[str, str],
    *,
    keyring: Keyring | None = None,
    kms_key_id: str | None = None,
    aes_key: bytes | None = None,
    rsa_key: rsa.RSAPrivateKey | None = None,
    expected_context: Mapping[str, str] | None = None,
) -> S3ecMaterials:
    """Materials for any supported envelope: kms+context through `keyring`/`kms_key_id`,
    AES/GCM with the raw `aes_key`, RSA-OAEP-SHA1 with `rsa_key`. `S3ecUnsupported` for what
    cannot be opened here."""
    envelope = parse(metadata)
    if envelope.wrap_alg == WRAP_KMS_CONTEXT:
        if keyring is None or kms_key_id is None:
            raise S3ecUnsupported("S3EC object is wrapped with kms+context; no KMS keyring configured")
        return await unwrap_kms(metadata, keyring, kms_key_id, expected_context)
    if envelope.wrap_alg == WRAP_AES_GCM:
        if aes_key is None:
            raise S3ecUnsupported("S3EC object is wrapped with AES/GCM; no raw AES key configured")
        return materials(envelope, unwrap_aes_gcm(envelope, aes_key))
    if envelope.wrap_alg == WRAP_RSA_OAEP_SHA1:
        if rsa_key is None:
            raise S3ecUnsupported("S3EC object is wrapped with RSA-OAEP-SHA1; no RSA private key configured")
        return materials(envelope, unwrap_rsa_oaep_sha1(envelope, rsa_key))
    raise S3ecUnsupported(f"S3EC key wrapping {envelope.wrap_alg} is not supported")


# -- length maths ------------------------------------------------------------------------------


def plaintext_length(ciphertext_length: int) -> int:
    """Plaintext bytes in an S3EC GCM body of `ciphertext_length` bytes."""
    if ciphertext_length < TAG_SIZE:
        raise S3ecFormatError(f"S3EC body of {ciphertext_length} bytes is shorter than its tag")
    return ciphertext_length - TAG_SIZE


def ciphertext_length(plaintext_length: int) -> int:
    """Stored bytes for `plaintext_length` bytes of plaintext."""
    if plaintext_length < 0:
        raise ValueError("negative length")
    return plaintext_length + TAG_SIZE


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


class _V3Body:
    """What every V3 body writer has: its message id and key commitment, and so its metadata."""

    message_id: bytes
    commitment: bytes

    def metadata(
        self,
        wrapped_key: bytes,
        wrap_alg: str,
        *,
        encryption_context: Mapping[str, str] | None = None,
        material_description: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """`v3_metadata` for this body."""
        return v3_metadata(
            wrapped_key=wrapped_key,
            wrap_alg=wrap_alg,
            message_id=self.message_id,
            commitment=self.commitment,
            encryption_context=encryption_context,
            material_description=material_description,
        )


class S3ecV3Encryptor(_V3Body):
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


def v3_metadata(
    *,
    wrapped_key: bytes,
    wrap_alg: str,
    message_id: bytes,
    commitment: bytes,
    encryption_context: Mapping[str, str] | None = None,
    material_description: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The user metadata (names without ``x-amz-meta-``) the official client reads V3 from.

    For kms+context, `encryption_context` must be the exact context the data key was generated
    under (see `kms_context`: it includes ``aws:x-amz-cek-alg`` = "115"); it is stored in
    x-amz-t. For AES/GCM, `material_description` goes in x-amz-m (the official writer omits
    empty maps; so does this).
    """
    code = _V3_WRAP_NAMES.get(wrap_alg)
    if code is None or wrap_alg == WRAP_RSA_OAEP_SHA1:
        raise ValueError(f"sealgate writes S3EC V3 with kms+context or AES/GCM, not {wrap_alg!r}")
    if len(message_id) != MESSAGE_ID_SIZE or len(commitment) != COMMITMENT_SIZE:
        raise ValueError("message id and commitment must be 28 bytes each")
    meta = {
        META_V3_CIPHER: SUITE_V3,
        META_V3_WRAP: code,
        META_V3_KEY: base64.b64encode(wrapped_key).decode("ascii"),
        META_V3_MESSAGE_ID: base64.b64encode(message_id).decode("ascii"),
        META_V3_COMMITMENT: base64.b64encode(commitment).decode("ascii"),
    }
    if wrap_alg == WRAP_KMS_CONTEXT:
        if not encryption_context or encryption_context.get(CONTEXT_CEK_ALG) != SUITE_V3:
            raise ValueError(f"a V3 kms+context encryption context must contain {CONTEXT_CEK_ALG}={SUITE_V3}")
        meta[META_V3_CONTEXT] = json.dumps(dict(encryption_context))
    elif material_description:
        meta[META_V3_MATDESC] = json.dumps(dict(material_description))
    return meta


# -- writing V3 in parts (multipart uploads) --------------------------------------------------
#
# GCM = CTR + GHASH. The CTR keystream of any byte offset is known from the IV alone, and GHASH
# is linear: GHASH over X || Y = GHASH(X) * H^blocks(Y) + GHASH(Y). So a part can be encrypted
# from a small state (plaintext offset, GHASH accumulator, < 16 pending ciphertext bytes) and
# the state after it computed without touching earlier parts. OpenSSL computes each part's own
# GHASH (fed as AAD to a helper GCM context under the same key; its tag = GHASH ^ E_K(J0) is
# never released), and only a few GF(2^128) products per part run in Python. Because the state
# is plain values, a failed or retried part just starts again from the state before it.

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


class S3ecV3Multipart(_V3Body):
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


# -- legacy AES-CBC objects (V1, and V2 with AES/CBC content) ---------------------------------
#
# Unauthenticated: anyone who can write to the bucket can change the plaintext undetected. Read
# only when a bucket opts in (the server's job). V1 metadata: x-amz-key (wrapped data key),
# x-amz-iv (16 bytes), x-amz-matdesc (for KMS: {"kms_cmk_id": key}), x-amz-wrap-alg "kms";
# body = AES-256-CBC with PKCS#7 padding. Only KMS-wrapped data keys are opened here
# ("kms", "kms+context"); V1's client-side master keys (no x-amz-wrap-alg) are not.

CBC_IV_SIZE: Final = 16
CBC_BLOCK: Final = 16


def is_legacy(metadata: Mapping[str, str]) -> bool:
    """Whether (merged) metadata describes AES-CBC content: V1, or V2 with AES/CBC."""
    version = detect(metadata)
    return version == FORMAT_V1 or (version == FORMAT_V2 and metadata.get(META_CEK_ALG) == CEK_ALG_CBC)


def parse_legacy(metadata: Mapping[str, str]) -> S3ecEnvelope:
    """The envelope of an AES-CBC object (see `is_legacy`)."""
    if not is_legacy(metadata):
        raise S3ecFormatError("not a legacy S3EC (AES/CBC) envelope")
    version = FORMAT_V1 if detect(metadata) == FORMAT_V1 else FORMAT_V2
    key_name = META_KEY_V1 if version == FORMAT_V1 else META_KEY_V2
    if version == FORMAT_V1 and META_KEY_V2 in metadata:
        raise S3ecFormatError("S3EC metadata mixes format versions")
    cek = metadata.get(META_CEK_ALG, CEK_ALG_CBC)
    if cek != CEK_ALG_CBC:
        raise S3ecFormatError(f"S3EC V1 content cipher {cek!r} is not {CEK_ALG_CBC}")
    wrap_alg = metadata.get(META_WRAP_ALG)
    if wrap_alg not in (WRAP_KMS_V1, WRAP_KMS_CONTEXT):
        raise S3ecUnsupported(
            f"S3EC legacy data key wrapped with {wrap_alg or 'a client-side master key'}; only KMS is supported"
        )
    return S3ecEnvelope(
        version=version,
        wrap_alg=wrap_alg,
        wrapped_key=_b64(metadata, key_name),
        context=_json_map(metadata, META_MATDESC),
        iv=_b64(metadata, META_IV, CBC_IV_SIZE),
    )


async def unwrap_legacy(metadata: Mapping[str, str], keyring: Keyring, key_id: str) -> S3ecMaterials:
    """Materials for an AES-CBC object: KMS Decrypt pinned to `key_id` with the stored context
    (for "kms" wrapping that is the material description, ``{"kms_cmk_id": ...}``)."""
    envelope = parse_legacy(metadata)
    data_key = await keyring.decrypt_data_key(key_id, envelope.wrapped_key, envelope.context)
    if len(data_key) != DATA_KEY_SIZE:
        raise InvalidWrappedKey(f"S3EC data key is {len(data_key)} bytes, not {DATA_KEY_SIZE}")
    return S3ecMaterials(version=FORMAT_V1, content_key=data_key, iv=envelope.iv, aad=b"")


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
