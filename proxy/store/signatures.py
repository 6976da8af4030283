"""Sender signatures on the backend (docs/FORMAT.md §3a): the gateway signs what it writes with its
keyring's ``ed25519-signing`` key, and a reader refuses an object under a key whose policy lists
``trusted_signers`` unless one of them signed it, before unwrapping or releasing anything."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from proxy.config import Config
from proxy.crypto import signing
from proxy.crypto.format import Envelope, FormatError, Layout
from proxy.kms.local import parse_key_ref
from proxy.s3.errors import S3Error
from proxy.store.gateway import Gateway

#: The manifest record's user-metadata name (without ``x-amz-meta-``) of a multipart signature.
MANIFEST_SIGNATURE = "sg-sig"


def trusted_signers(gw: Gateway, key_ref: str) -> tuple[bytes, ...]:
    """The public keys the key policy of `key_ref` trusts to sign its objects; () for none."""
    return trusted_in(gw.config, key_ref)


def trusted_in(config: Config, key_ref: str) -> tuple[bytes, ...]:
    """`trusted_signers` by a config (for the offline tools, which have no Gateway)."""
    for policy in config.keys:
        if policy.id == key_ref or policy.names(key_ref):
            return policy.signer_keys()
    return ()


def _sign(gw: Gateway, env: Envelope, bucket: str, key: str, body: bytes) -> bytes:
    """The gateway's signature over `env` and `body`, b"" when its keyring holds no signing key."""
    signer = gw.local_keys.signer() if gw.local_keys is not None else None
    if signer is None:
        return b""
    key_ref, seed = signer
    parsed = parse_key_ref(key_ref)
    signature = signing.sign(seed, signing.signed_bytes(env, bucket, key, body))
    if gw.audit is not None and parsed is not None:
        gw.audit.record("sign", "allowed", key_id=parsed[0], key_version=str(parsed[1]), bucket=bucket, object_key=key)
    return signature


def sign_single(gw: Gateway, env: Envelope, bucket: str, key: str, plaintext_length: int) -> Envelope:
    """`env` with the gateway's signature (`sg-sig`), or as it is when the gateway does not sign."""
    signature = _sign(gw, env, bucket, key, signing.single_body(plaintext_length))
    return dataclasses.replace(env, signature=signature) if signature else env


def sign_manifest(gw: Gateway, env: Envelope, bucket: str, key: str, sealed_manifest: bytes) -> bytes:
    """The signature of a multipart object (for its manifest record); b"" when unsigned."""
    return _sign(gw, env, bucket, key, signing.multipart_body(sealed_manifest))


def serves_signed(gw: Gateway, key_ref: str) -> bool:
    """Whether what this gateway signs (or leaves unsigned) under `key_ref` its readers accept:
    the key trusts every writer, or this gateway's keyring holds one of its trusted signers."""
    trusted = trusted_signers(gw, key_ref)
    if not trusted:
        return True
    signer = gw.local_keys.signer() if gw.local_keys is not None else None
    return signer is not None and signing.public_key(signer[1]) in trusted


def require_signer(gw: Gateway, key_ref: str) -> None:
    """InvalidRequest, before anything is written, when objects under `key_ref` are served only if
    one of its ``trusted_signers`` signed them and this gateway's keyring signs with none of them:
    what a tool would write there (a copy, a moved manifest), the key's readers would refuse."""
    if not serves_signed(gw, key_ref):
        raise S3Error(
            "InvalidRequest",
            f"objects under key {key_ref!r} are served only if one of its trusted_signers signed them, and this "
            "config's keyring holds none of their signing keys; nothing was written",
            400,
        )


def signed_single(gw: Gateway, env: Envelope, bucket: str, key: str, plaintext_length: int) -> bool:
    """Whether `env`'s own signature, for `bucket`/`key`, is by a trusted signer of its key (True
    when its key trusts every writer)."""
    trusted = trusted_signers(gw, env.key_ref)
    if not trusted:
        return True
    try:
        message = signing.signed_bytes(env, bucket, key, signing.single_body(plaintext_length))
        signing.check(env.signature, message, trusted)
    except FormatError:
        return False
    return True


def integrity_error(exc: FormatError) -> S3Error:
    """What a client sees of an object that failed authentication."""
    return S3Error("ObjectIntegrityError", f"stored object failed authentication: {exc}", 500)


def check_single(gw: Gateway, env: Envelope, bucket: str, key: str, total: int) -> None:
    """ObjectIntegrityError unless a single-stream object of `total` stored bytes is signed by a
    trusted signer of its key (when its key policy names any)."""
    trusted = trusted_signers(gw, env.key_ref)
    if not trusted:
        return
    try:
        body = signing.single_body(Layout(env.segment_size).plaintext_length(total))
        signing.check(env.signature, signing.signed_bytes(env, bucket, key, body), trusted)
    except FormatError as exc:
        raise integrity_error(exc) from exc


def manifest_check(
    gw: Gateway, env: Envelope, bucket: str, key: str
) -> Callable[[bytes, Mapping[str, str]], None] | None:
    """For a multipart object: what checks its manifest record (body and user metadata) before
    it is opened, raising IntegrityError; None when its key trusts every writer."""
    trusted = trusted_signers(gw, env.key_ref)
    if not trusted:
        return None

    def check(sealed: bytes, meta: Mapping[str, str]) -> None:
        try:
            signature = signing.decode_signature(meta.get(MANIFEST_SIGNATURE, ""))
        except ValueError as exc:
            raise FormatError(str(exc)) from None
        signing.check(signature, signing.signed_bytes(env, bucket, key, signing.multipart_body(sealed)), trusted)

    return check
