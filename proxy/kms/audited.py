"""A keyring that writes an audit record for every key use: the calls it passes to the keyring
it wraps, and (through `cache_hit_recorder`, the `Materials` hook) the uses the data-key cache
serves without one.

A record holds no key material and no encryption context beyond bucket and key. A use that
cannot be recorded does not happen: the key is withheld and `KeyUnavailable` raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from proxy.audit import AuditError, AuditLog, Outcome
from proxy.crypto.format import CONTEXT_BUCKET, CONTEXT_KEY
from proxy.kms.base import DataKey, KeyAccessDenied, Keyring, KeyringError, KeyUnavailable
from proxy.kms.local import parse_key_ref
from proxy.kms.materials import CacheHit

# The name these records' failures were logged under before this module split from proxy.audit.
log = logging.getLogger("proxy.audit")


def _key_id_of(key_ref: str) -> str:
    """The master key id in a key reference: `local:<id>:<version>` (`pkcs11:<label>:<version>`,
    `kmip:<name>:<unique id>`), else the reference (an ARN)."""
    parsed = parse_key_ref(key_ref)
    if parsed:
        return parsed[0]
    if key_ref.startswith(("pkcs11:", "kmip:")) and key_ref.count(":") >= 2:
        return key_ref.split(":")[1]
    return key_ref


class AuditingKeyring:
    """A `Keyring` that writes an audit record for every call to the keyring it wraps.

    KeyAccessDenied is recorded as "denied", other failures as "error" (reason: the KeyringError
    code). Bucket and object key come from the encryption context when it names them (that is
    what the key is bound to), else from `audit_context`. If a record cannot be written after a
    successful call, the data key is withheld and KeyUnavailable raised: no key use without a
    record. Placed under a data-key cache, it records the calls that reach the key service.
    """

    def __init__(self, inner: Keyring, audit: AuditLog) -> None:
        """Audit calls to `inner` into `audit` (which the caller owns and closes)."""
        self._inner = inner
        self._audit = audit

    def __repr__(self) -> str:
        return f"AuditingKeyring({self._inner!r}, {self._audit!r})"

    def _record(
        self,
        operation: str,
        outcome: Outcome,
        reason: str | None,
        key_id: str | None,
        key_version: str | None,
        context: Mapping[str, str],
    ) -> None:
        self._audit.record(
            operation,
            outcome,
            reason=reason,
            key_id=key_id,
            key_version=key_version,
            bucket=context.get(CONTEXT_BUCKET),
            object_key=context.get(CONTEXT_KEY),
        )

    def _allowed(self, operation: str, key_id: str | None, key_version: str | None, context: Mapping[str, str]) -> None:
        try:
            self._record(operation, "allowed", None, key_id, key_version, context)
        except (AuditError, OSError) as exc:
            log.error("refusing a key use that cannot be audited: %s", exc)
            raise KeyUnavailable("the audit log cannot be written") from exc

    def _failed(
        self,
        operation: str,
        exc: BaseException,
        key_id: str | None,
        key_version: str | None,
        context: Mapping[str, str],
    ) -> None:
        outcome: Outcome
        if isinstance(exc, KeyringError):
            outcome, reason = ("denied" if isinstance(exc, KeyAccessDenied) else "error"), exc.code
        elif isinstance(exc, asyncio.CancelledError):
            outcome, reason = "error", "cancelled"
        else:
            outcome, reason = "error", type(exc).__name__
        try:
            self._record(operation, outcome, reason, key_id, key_version, context)
        except (AuditError, OSError) as audit_exc:
            # The call failed anyway; the caller sees its error, the operator this one.
            log.error("cannot audit a failed %s: %s", operation, audit_exc)

    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """The inner keyring's fresh data key, recorded as operation "generate"."""
        try:
            key = await self._inner.generate_data_key(key_id, context)
        except (Exception, asyncio.CancelledError) as exc:
            self._failed("generate", exc, key_id, None, context)
            raise
        self._allowed("generate", key_id, key.key_ref, context)
        return key

    async def decrypt_data_key(self, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """The inner keyring's unwrapped data key, recorded as operation "decrypt"."""
        key_id = _key_id_of(key_ref)
        try:
            plaintext = await self._inner.decrypt_data_key(key_ref, wrapped, context)
        except (Exception, asyncio.CancelledError) as exc:
            self._failed("decrypt", exc, key_id, key_ref, context)
            raise
        self._allowed("decrypt", key_id, key_ref, context)
        return plaintext

    async def wrap_data_key(self, key_id: str, plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        """The inner keyring's wrapping of an existing data key, recorded as operation "wrap"."""
        try:
            key = await self._inner.wrap_data_key(key_id, plaintext, context)
        except (Exception, asyncio.CancelledError) as exc:
            self._failed("wrap", exc, key_id, None, context)
            raise
        self._allowed("wrap", key_id, key.key_ref, context)
        return key

    async def ready(self, key_id: str) -> None:
        """The inner keyring's readiness check (not a key use: not recorded)."""
        await self._inner.ready(key_id)

    async def close(self) -> None:
        """Close the inner keyring (the audit log belongs to the caller)."""
        await self._inner.close()


def record_cache_hit(
    audit: AuditLog, operation: str, key_ref: str, context: Mapping[str, str], key_id: str | None = None
) -> None:
    """Record a key use served from the data-key cache (no keyring call), reason "cached", so
    that every use has its line; KeyUnavailable if it cannot be written (no use unrecorded)."""
    try:
        audit.record(
            operation,
            "allowed",
            reason="cached",
            key_id=key_id or _key_id_of(key_ref),
            key_version=key_ref,
            bucket=context.get(CONTEXT_BUCKET),
            object_key=context.get(CONTEXT_KEY),
        )
    except (AuditError, OSError) as exc:
        log.error("refusing a cached key use that cannot be audited: %s", exc)
        raise KeyUnavailable("the audit log cannot be written") from exc


def cache_hit_recorder(audit: AuditLog) -> CacheHit:
    """The `Materials` hook that records each key use served from its cache into `audit`."""

    def record(operation: str, key_ref: str, context: Mapping[str, str], key_id: str | None) -> None:
        record_cache_hit(audit, operation, key_ref, context, key_id)

    return record
