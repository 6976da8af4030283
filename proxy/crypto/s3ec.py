"""The AWS S3 Encryption Client (S3EC) formats: V2 and key-committing V3 (and legacy V1/CBC
for reading), their envelopes in object metadata and instruction files.

Pure: metadata in, envelopes, checks and metadata out. This module parses and validates
envelopes, says what a wrapped key needs to be opened (`kms_envelope`: the wrapped key and the
exact KMS encryption context) and writes V3 metadata; the data key itself comes from the object
layer (proxy/store/s3ec.py holds the keyring calls). From a data key, `proxy.crypto.s3ec_keys`
derives and checks the content key (and does the AES/GCM and RSA wrapping),
`proxy.crypto.s3ec_streams` decrypts and encrypts bodies and `proxy.crypto.s3ec_multipart`
encrypts one V3 body in parts. docs/INTEROP.md is the prose description. Every detail here was
checked against the official Python client (``amazon-s3-encryption-client-python`` 4.0.0,
package ``s3_encryption``), except where a comment says otherwise.

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
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

from proxy.crypto.format import FormatError

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
#: The encryption-context entries sealgate binds an object's name with (kms+context objects it
#: writes): the bucket, and the key percent-encoded by `context_key`.
CONTEXT_BUCKET: Final = "sealgate:bucket"
CONTEXT_KEY: Final = "sealgate:key"

DATA_KEY_SIZE: Final = 32
IV_SIZE: Final = 12
TAG_SIZE: Final = 16
MESSAGE_ID_SIZE: Final = 28
COMMITMENT_SIZE: Final = 28
V3_IV: Final = b"\x01" * IV_SIZE


class S3ecFormatError(FormatError):
    """Metadata that is not a well-formed S3 Encryption Client envelope."""


class S3ecUnsupported(S3ecFormatError):
    """A valid S3EC envelope that sealgate does not decrypt (V1/CBC, RSA wrapping, ...)."""


class S3ecTooLarge(S3ecFormatError):
    """Verify-first decryption was asked for an object above the configured limit."""


class S3ecKeyError(Exception):
    """A data key that does not open under the key given (or opens to the wrong size), or a
    stored encryption context other than the one expected.

    Not a `FormatError`: the object layer reports it as the keyring's ``InvalidWrappedKey``, as
    it would a KMS refusal (a wrong key version is tried next, a client sees the same error)."""


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
    #: V3 only: the message id (checked by the key commitment) and the key that checks the name
    #: binding sealgate puts in it (`s3ec_keys.name_binding`).
    message_id: bytes = b""
    name_key: bytes = field(default=b"", repr=False)


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


# -- legacy AES-CBC objects (V1, and V2 with AES/CBC content) ---------------------------------
#
# Unauthenticated: anyone who can write to the bucket can change the plaintext undetected. Read
# only when a bucket opts in (the object layer's job). V1 metadata: x-amz-key (wrapped data key),
# x-amz-iv (16 bytes), x-amz-matdesc (for KMS: {"kms_cmk_id": key}), x-amz-wrap-alg "kms";
# body = AES-256-CBC with PKCS#7 padding. Only KMS-wrapped data keys are accepted here
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


# -- what a KMS-wrapped data key needs ---------------------------------------------------------


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


#: Printable US-ASCII but "%": what `context_key` leaves as it is.
_CONTEXT_KEY_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def context_key(key: str) -> str:
    """An object key as the ``sealgate:key`` context entry holds it: every UTF-8 byte outside
    printable US-ASCII (space included) and "%" itself as ``%XX``, so that any key survives S3's
    US-ASCII metadata (``urllib.parse.quote(key, safe=<printable ASCII but %>)``)."""
    return quote(key, safe=_CONTEXT_KEY_SAFE)


def name_context(bucket: str, key: str) -> dict[str, str]:
    """The encryption-context entries that bind an object to `bucket`/`key`."""
    return {CONTEXT_BUCKET: bucket, CONTEXT_KEY: context_key(key)}


def context_name(metadata: Mapping[str, str]) -> tuple[str, str] | None:
    """(bucket, context key) a kms+context envelope's stored context names, or None when it
    names nothing (an object sealgate did not write, or wrote before names were bound). The
    context is what KMS Decrypt is called with, so it cannot be changed without the key failing
    to open. A context naming only one of the two is malformed."""
    envelope = parse(metadata)
    if envelope.wrap_alg != WRAP_KMS_CONTEXT:
        return None
    bucket, key = envelope.context.get(CONTEXT_BUCKET), envelope.context.get(CONTEXT_KEY)
    if bucket is None and key is None:
        return None
    if bucket is None or key is None:
        raise S3ecFormatError(f"S3EC encryption context has only one of {CONTEXT_BUCKET}, {CONTEXT_KEY}")
    return bucket, key


def kms_envelope(metadata: Mapping[str, str], expected_context: Mapping[str, str] | None = None) -> S3ecEnvelope:
    """The envelope of a kms+context object, checked before its key goes to KMS: unwrap
    ``wrapped_key`` with KMS Decrypt under exactly ``context`` (S3EC stores no key id: the key is
    the caller's to pin). `expected_context`, if given, must equal the stored context without
    its reserved entries, as the official client checks (`S3ecKeyError` if not)."""
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
            raise S3ecKeyError("S3EC encryption context does not match the one given")
    return envelope


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


# -- writing V3 metadata -----------------------------------------------------------------------


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


class V3Body:
    """What every V3 body writer has: its message id and key commitment, and so its metadata
    (the base of `s3ec_streams.S3ecV3Encryptor` and `s3ec_multipart.S3ecV3Multipart`)."""

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
