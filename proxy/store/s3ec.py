"""AWS S3 Encryption Client objects (V2, V3; legacy V1/CBC only if opted in) on the backend:
their envelope (in the metadata or an instruction file), their data key (KMS or the local
keyring's keys, audited), their plaintext size and stream, and writing S3EC V3 objects."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from contextlib import contextmanager

from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.access.authorize import Caller
from proxy.audit import AuditError
from proxy.crypto import s3ec, s3ec_keys
from proxy.crypto.format import FormatError, IntegrityError
from proxy.crypto.s3ec_streams import (
    DEFAULT_VERIFY_LIMIT,
    S3ecCbcDecryptor,
    S3ecDecryptor,
    S3ecV3Encryptor,
    cbc_plaintext_length,
)
from proxy.kms.base import InvalidWrappedKey, Keyring, KeyringError
from proxy.kms.local import LocalKeyring
from proxy.s3.errors import S3Error
from proxy.s3.headers import META_PREFIX, stored_headers
from proxy.store.backend import version_query
from proxy.store.bodies import put_stream
from proxy.store.errors import keyring_error
from proxy.store.gateway import Gateway, require_key_use
from proxy.store.signatures import trusted_signers

log = logging.getLogger(__name__)

S3EC_FIELDS = frozenset(name for attr, name in vars(s3ec).items() if attr.startswith("META_") and isinstance(name, str))


def is_s3ec_object(meta: Mapping[str, str]) -> bool:
    """Whether backend metadata is an S3 Encryption Client envelope."""
    return s3ec.detect(meta) is not None


def user_metadata(meta: Mapping[str, str]) -> dict[str, str]:
    """The client's own metadata: everything but the S3EC envelope fields."""
    return {k: v for k, v in meta.items() if k not in S3EC_FIELDS}


def delayed_ok(gw: Gateway, bucket: str, key: str) -> bool:
    """Whether the bucket lets objects too large to verify first be served, cut off on a bad tag."""
    rule = gw.config.rule_for_bucket(bucket, key)
    return rule is not None and rule.s3ec_delayed_authentication


def verify_limit(budget_bytes: int) -> int:
    """The largest S3EC object served verify-first: 64 MiB, or the process's budget for such
    reads (``server.verify_first_memory_bytes``) if that is less, so no read waits for a share
    the whole budget cannot give."""
    return min(DEFAULT_VERIFY_LIMIT, budget_bytes)


#: Instruction files are small JSON documents; anything bigger is not one.
MAX_INSTRUCTION_FILE = 64 * 1024


def _probe_instruction_files(gw: Gateway, bucket: str, key: str) -> bool:
    rule = gw.config.rule_for_bucket(bucket, key)
    return rule is not None and (rule.s3ec_instruction_files or rule.format == "s3ec-v3")


async def s3ec_metadata(gw: Gateway, bucket: str, key: str, meta: Mapping[str, str]) -> dict[str, str] | None:
    """The S3EC envelope of an object (backend user metadata, merged with ``KEY.instruction``
    where the envelope lives there), or None if it is not an S3EC object.

    V3 objects name their need for an instruction file in their own metadata. V1/V2 objects
    with an instruction file leave no trace, so ``KEY.instruction`` is probed only for objects
    without an envelope in buckets that ask for it (``s3ec_instruction_files`` or
    ``format = "s3ec-v3"``): plain reads elsewhere pay no extra request."""
    version = s3ec.detect(meta)
    if version is not None and not s3ec.needs_instruction_file(meta):
        return dict(meta)
    if version is None and not _probe_instruction_files(gw, bucket, key):
        return None
    resp = await gw.backend.request("GET", bucket, key + s3ec.INSTRUCTION_SUFFIX)
    if resp.status == 404:
        resp.release()
        if version is None:
            return None
        raise S3Error("ObjectIntegrityError", "S3EC object's instruction file is missing", 500)
    if resp.status >= 300:
        raise await resp.error()
    try:
        body = await resp.raw.content.read(MAX_INSTRUCTION_FILE + 1)
    finally:
        resp.release()
    try:
        if len(body) > MAX_INSTRUCTION_FILE:
            raise s3ec.S3ecFormatError("S3EC instruction file is too large")
        merged = s3ec.merge_instruction_file(meta, s3ec.parse_instruction_file(body))
        if s3ec.detect(merged) is None:
            raise s3ec.S3ecFormatError("S3EC instruction file holds no envelope")
    except s3ec.S3ecFormatError as exc:
        if version is None:
            log.info("/%s/%s%s is not an S3EC instruction file: %s", bucket, key, s3ec.INSTRUCTION_SUFFIX, exc)
            return None
        raise S3Error("ObjectIntegrityError", f"S3EC object failed authentication: {exc}", 500) from exc
    return merged


async def open_s3ec(gw: Gateway, caller: Caller, bucket: str, key: str, meta: Mapping[str, str]) -> s3ec.S3ecMaterials:
    """Unwrap an S3EC object's data key with the bucket's KMS key (S3EC records no key id).

    `meta` is the merged envelope (`s3ec_metadata`). The operator (tools such as
    `sealgate convert`) is bound by no key policy."""
    legacy = s3ec.is_legacy(meta)
    if legacy:
        rule = gw.config.rule_for_bucket(bucket, key)
        if rule is None or not rule.allow_s3ec_v1:
            raise S3Error(
                "InvalidObjectState",
                "legacy S3EC objects (V1, AES/CBC: unauthenticated encryption) are served only from buckets that "
                "set allow_s3ec_v1 = true",
                403,
            )
        log.warning(
            "reading legacy S3EC AES/CBC object /%s/%s: unauthenticated encryption (buckets.allow_s3ec_v1)", bucket, key
        )
    key_id = gw.config.key_for_bucket(bucket, key)
    require_key_use(gw, caller, "decrypt", key_id)
    if trusted_signers(gw, key_id) and not caller.is_operator:
        # The S3EC format has no place for a sender signature, so no S3EC object is one the
        # key's readers can accept (the operator's convert still reads them, to re-sign).
        raise IntegrityError(f"objects under key {key_id} must carry a sender signature, which S3EC objects cannot")
    try:
        if legacy:
            materials = await unwrap_legacy(meta, gw.materials.keyring, key_id)
            _check_name(gw, caller, bucket, key, None, materials)
            return materials
        named = s3ec.context_name(meta)
        if named is not None and named != (bucket, s3ec.context_key(key)):
            raise IntegrityError(f"S3EC object is bound to another name (/{named[0]}/{named[1]})")
        wrap_alg = s3ec.parse(meta).wrap_alg
        if wrap_alg in (s3ec.WRAP_AES_GCM, s3ec.WRAP_RSA_OAEP_SHA1):
            materials = await _unwrap_with_local_key(gw, bucket, key, meta, key_id, wrap_alg)
        else:
            materials = await unwrap_s3ec(meta, keyring=gw.materials.keyring, kms_key_id=key_id)
        _check_name(gw, caller, bucket, key, named, materials)
        return materials
    except s3ec.S3ecUnsupported as exc:
        raise S3Error("InvalidObjectState", f"cannot read this S3EC object here: {exc}", 403) from exc
    except KeyringError as exc:
        raise keyring_error(exc) from exc
    except FormatError as exc:
        raise S3Error("ObjectIntegrityError", f"S3EC object failed authentication: {exc}", 500) from exc


def unbound_reads_ok(gw: Gateway, bucket: str, key: str) -> bool:
    """Whether the bucket serves S3EC objects bound to no name (``format = "s3ec-v3"``, or
    ``s3ec_unbound_reads = true``)."""
    rule = gw.config.rule_for_bucket(bucket, key)
    return rule is not None and (rule.format == "s3ec-v3" or rule.s3ec_unbound_reads)


def _check_name(
    gw: Gateway, caller: Caller, bucket: str, key: str, named: tuple[str, str] | None, materials: s3ec.S3ecMaterials
) -> None:
    """The name check of every S3EC read, before any byte: an object sealgate bound to another
    name (its KMS context or its V3 message id) is an integrity error; one bound to no name is
    served only where the bucket allows it. The operator's tools (`sealgate convert`) read those
    anywhere: converting is how they become bound."""
    tagged = s3ec_keys.name_binding(materials, bucket, key)
    if tagged is False:
        raise IntegrityError("S3EC object is bound to another name (its message id)")
    if named is None and tagged is None and not caller.is_operator and not unbound_reads_ok(gw, bucket, key):
        raise S3Error(
            "InvalidObjectState",
            "this S3EC object was not written by sealgate and is not bound to its name; such objects are served "
            'only from buckets with format = "s3ec-v3" or s3ec_unbound_reads = true',
            403,
        )


@contextmanager
def key_errors() -> Iterator[None]:
    """A data key that does not open in the pure core (`s3ec.S3ecKeyError`) is the keyring's
    `InvalidWrappedKey` from here up, as a KMS refusal of the same key would be."""
    try:
        yield
    except s3ec.S3ecKeyError as exc:
        raise InvalidWrappedKey(str(exc)) from exc


async def unwrap_kms(
    metadata: Mapping[str, str],
    keyring: Keyring,
    key_id: str,
    expected_context: Mapping[str, str] | None = None,
) -> s3ec.S3ecMaterials:
    """Materials for a kms+context object: KMS Decrypt pinned to `key_id` (S3EC stores no key
    id) with exactly the stored encryption context. `expected_context`, if given, must equal the
    stored context without its reserved entries, as the official client checks. Keyring errors
    pass through; `IntegrityError` for a bad V3 commitment."""
    with key_errors():
        envelope = s3ec.kms_envelope(metadata, expected_context)
        data_key = await keyring.decrypt_data_key(key_id, envelope.wrapped_key, envelope.context)
        return s3ec_keys.materials(envelope, data_key)


async def unwrap_legacy(metadata: Mapping[str, str], keyring: Keyring, key_id: str) -> s3ec.S3ecMaterials:
    """Materials for an AES-CBC object: KMS Decrypt pinned to `key_id` with the stored context
    (for "kms" wrapping that is the material description, ``{"kms_cmk_id": ...}``)."""
    envelope = s3ec.parse_legacy(metadata)
    data_key = await keyring.decrypt_data_key(key_id, envelope.wrapped_key, envelope.context)
    with key_errors():
        return s3ec_keys.legacy_materials(envelope, data_key)


async def unwrap_s3ec(
    metadata: Mapping[str, str],
    *,
    keyring: Keyring | None = None,
    kms_key_id: str | None = None,
    aes_key: bytes | None = None,
    rsa_key: rsa.RSAPrivateKey | None = None,
    expected_context: Mapping[str, str] | None = None,
) -> s3ec.S3ecMaterials:
    """Materials for any supported envelope: kms+context through `keyring`/`kms_key_id`,
    AES/GCM with the raw `aes_key`, RSA-OAEP-SHA1 with `rsa_key`. `S3ecUnsupported` for what
    cannot be opened here."""
    envelope = s3ec.parse(metadata)
    if envelope.wrap_alg == s3ec.WRAP_KMS_CONTEXT:
        if keyring is None or kms_key_id is None:
            raise s3ec.S3ecUnsupported("S3EC object is wrapped with kms+context; no KMS keyring configured")
        return await unwrap_kms(metadata, keyring, kms_key_id, expected_context)
    with key_errors():
        if envelope.wrap_alg == s3ec.WRAP_AES_GCM:
            if aes_key is None:
                raise s3ec.S3ecUnsupported("S3EC object is wrapped with AES/GCM; no raw AES key configured")
            return s3ec_keys.materials(envelope, s3ec_keys.unwrap_aes_gcm(envelope, aes_key))
        if envelope.wrap_alg == s3ec.WRAP_RSA_OAEP_SHA1:
            if rsa_key is None:
                raise s3ec.S3ecUnsupported("S3EC object is wrapped with RSA-OAEP-SHA1; no RSA private key configured")
            return s3ec_keys.materials(envelope, s3ec_keys.unwrap_rsa_oaep_sha1(envelope, rsa_key))
    raise s3ec.S3ecUnsupported(f"S3EC key wrapping {envelope.wrap_alg} is not supported")


def local_keyring(gw: Gateway) -> LocalKeyring | None:
    """The local keyring behind the gateway's materials, if that is what they use."""
    return gw.local_keys


def audit_local_use(gw: Gateway, operation: str, ref: str, wrap_alg: str, bucket: str, key: str) -> None:
    """The audit line of a local key used directly for S3EC wrapping (no keyring call); as for
    keyring calls, a use that cannot be recorded does not happen (503)."""
    if gw.audit is not None:
        key_name, _, version = ref.rpartition(":")
        try:
            gw.audit.record(
                operation, "allowed", reason=f"s3ec {wrap_alg}", key_id=key_name, key_version=version,
                bucket=bucket, object_key=key,
            )  # fmt: skip
        except (AuditError, OSError) as exc:
            log.error("refusing a key use that cannot be audited: %s", exc)
            raise S3Error("ServiceUnavailable", "the audit log cannot be written", 503) from exc


async def _unwrap_with_local_key(
    gw: Gateway, bucket: str, key: str, meta: Mapping[str, str], key_id: str, wrap_alg: str
) -> s3ec.S3ecMaterials:
    """An AES/GCM- or RSA-OAEP-SHA1-wrapped S3EC object, opened with the bucket's local key.

    S3EC records no key id or version for these wrappings: each version of the bucket's key is
    tried, newest first (a wrong one fails its AES-GCM tag or OAEP check). The use is audited
    like a keyring call."""
    local = local_keyring(gw)
    if local is None:
        raise s3ec.S3ecUnsupported(f"S3EC object is wrapped with {wrap_alg}: needs the local keyring's key")
    for ref, material in local.s3ec_unwrapping_keys(key_id):
        if isinstance(material, bytes) != (wrap_alg == s3ec.WRAP_AES_GCM):
            continue
        try:
            if isinstance(material, bytes):
                opened = await unwrap_s3ec(meta, aes_key=material)
            else:
                opened = await unwrap_s3ec(meta, rsa_key=material)
        except InvalidWrappedKey:
            continue
        audit_local_use(gw, "decrypt", ref, wrap_alg, bucket, key)
        return opened
    raise InvalidWrappedKey(f"S3EC {wrap_alg} wrapped key does not unwrap under any version of key {key_id!r}")


async def s3ec_plaintext(
    gw: Gateway, bucket: str, key: str, meta: Mapping[str, str], etag: str, total: int
) -> tuple[int, AsyncIterator[bytes]]:
    """(plaintext length, plaintext stream) of a whole S3EC object, for operator tools that
    re-encrypt it: released as decrypted, and the stream raises `IntegrityError` at the end if
    the tag fails, so a writer that holds back its own last bytes stores nothing."""
    materials = await open_s3ec(gw, Caller.operator(), bucket, key, meta)
    size = await plaintext_size(gw, bucket, key, materials, total, etag)
    decryptor: S3ecDecryptor | S3ecCbcDecryptor
    if materials.version == s3ec.FORMAT_V1:
        decryptor = S3ecCbcDecryptor(materials, size)
    else:
        decryptor = S3ecDecryptor(materials, total, mode="delayed")

    async def plaintext() -> AsyncIterator[bytes]:
        resp = await gw.backend.request("GET", bucket, key, headers={"If-Match": etag} if etag else {})
        if resp.status >= 300:
            raise await resp.error()
        try:
            async for chunk in resp.raw.content.iter_any():
                for piece in decryptor.feed(chunk):
                    yield piece
            for piece in decryptor.finish():
                yield piece
        finally:
            resp.close()

    return size, plaintext()


async def plaintext_size(
    gw: Gateway,
    bucket: str,
    key: str,
    materials: s3ec.S3ecMaterials,
    total: int,
    etag: str,
    version: str | None = None,
) -> int:
    """Plaintext length of an S3EC object of `total` stored bytes. GCM: total - 16. Legacy CBC:
    its padding, found by decrypting the last block (one ranged GET of at most 32 bytes)."""
    try:
        if materials.version != s3ec.FORMAT_V1:
            return s3ec.plaintext_length(total)
        if total < s3ec.CBC_BLOCK or total % s3ec.CBC_BLOCK:
            raise s3ec.S3ecFormatError(f"S3EC CBC body of {total} bytes is not a whole number of blocks")
        n = min(total, 2 * s3ec.CBC_BLOCK)
        headers = {"Range": f"bytes={total - n}-{total - 1}"}
        if etag:
            headers["If-Match"] = etag
        resp = await gw.backend.request("GET", bucket, key, query=version_query(version), headers=headers)
        if resp.status >= 300:
            raise await resp.error()
        tail = b""
        try:
            async for chunk in resp.raw.content.iter_any():  # a backend may ignore the Range
                tail = (tail + chunk)[-n:]
        finally:
            resp.close()
        return cbc_plaintext_length(materials, total, tail)
    except FormatError as exc:
        raise S3Error("ObjectIntegrityError", f"S3EC object is not readable: {exc}", 500) from exc


async def new_data_key(
    gw: Gateway, caller: Caller, bucket: str, key: str
) -> tuple[bytes, bytes, str, dict[str, str] | None, str]:
    """(data key, wrapped data key, wrapping, KMS encryption context, key reference) for a new
    S3EC V3 object: kms+context with aws-kms (the reference is the KMS key id; the context binds
    `bucket`/`key`, `s3ec.name_context`), AES/GCM under the bucket's AES-256 key with the local
    keyring (``local:<id>:<version>``). The writer binds the name into the message id as well
    (`s3ec_keys.bound_message_id`)."""
    key_id = gw.config.key_for_bucket(bucket, key)
    require_key_use(gw, caller, "encrypt", key_id)
    if trusted_signers(gw, key_id):
        raise S3Error(
            "InvalidRequest",
            f"objects under key {key_id} must carry a sender signature ([[keys]] trusted_signers), which the S3EC "
            "format cannot: write them in sealgate's format",
            400,
        )
    if gw.config.kms.provider != "aws-kms":
        local = local_keyring(gw)
        if local is None:
            raise S3Error("InvalidRequest", "S3EC V3 objects need aws-kms or the local keyring", 400)
        try:
            ref, kek = local.s3ec_wrapping_key(key_id)
        except KeyringError as exc:
            raise keyring_error(exc) from exc
        data_key = os.urandom(s3ec.DATA_KEY_SIZE)
        audit_local_use(gw, "generate", ref, s3ec.WRAP_AES_GCM, bucket, key)
        return data_key, s3ec_keys.wrap_aes_gcm(kek, data_key), s3ec.WRAP_AES_GCM, None, ref
    context = s3ec.kms_context(s3ec.name_context(bucket, key))
    try:
        generated = await gw.materials.keyring.generate_data_key(key_id, context)
    except KeyringError as exc:
        raise keyring_error(exc) from exc
    return generated.plaintext, generated.wrapped, s3ec.WRAP_KMS_CONTEXT, context, key_id


def object_headers(request_headers: Mapping[str, str], s3ec_meta: Mapping[str, str]) -> dict[str, str]:
    """The backend headers of a new S3EC object: its envelope `s3ec_meta`, the client's user
    metadata (in the clear, as S3EC keeps it) and stored properties from `request_headers`."""
    headers = {f"x-amz-meta-{k}": v for k, v in s3ec_meta.items()}
    for name, value in request_headers.items():
        lname = name.lower()
        if lname.startswith(META_PREFIX) and lname[len(META_PREFIX) :] not in S3EC_FIELDS:
            headers[lname] = value  # S3EC keeps user metadata in the clear
    headers.update(stored_headers(request_headers))  # content headers, storage class, tags, Object Lock
    return headers


async def write_s3ec_v3(
    gw: Gateway,
    caller: Caller,
    bucket: str,
    key: str,
    plaintext: AsyncIterable[bytes | memoryview],
    length: int,
    headers: Mapping[str, str],
) -> str:
    """PUT `length` bytes of plaintext as an S3EC V3 object with kms+context; `headers` are the
    object's own (user metadata, Content-Type, ...). The tag (the body's last 16 bytes) is sent
    only after `plaintext` has ended without error (every check on it passed), so a failure
    stores nothing. Returns the backend's ETag."""
    plain_key, wrapped, wrap_alg, context, _ = await new_data_key(gw, caller, bucket, key)
    encryptor = S3ecV3Encryptor(plain_key, message_id=s3ec_keys.bound_message_id(plain_key, bucket, key))
    meta = encryptor.metadata(wrapped, wrap_alg, encryption_context=context)
    out = {k: v for k, v in headers.items() if k.lower().removeprefix("x-amz-meta-") not in S3EC_FIELDS}
    out.update({f"x-amz-meta-{k}": v for k, v in meta.items()})

    async def ciphertext() -> AsyncIterator[bytes]:
        async for piece in plaintext:
            yield encryptor.update(bytes(piece))
        yield encryptor.finish()

    resp = await put_stream(gw, bucket, key, ciphertext(), s3ec.ciphertext_length(length), headers=out)
    return resp.headers.get("ETag", "")
