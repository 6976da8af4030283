"""Which data key a new object gets, and unwrapped keys for reads: the keyring calls, cached.

Like the AWS Encryption SDK's caching materials manager (and S3 Bucket Keys), a generated data
key may serve several objects of one bucket within limits on count, age and bytes. Such a key is
wrapped for the bucket alone (its encryption context names no object), and each object binds its
name with a tag derived from the key (format.name_tag). Every object still has its own salt and
so its own derived keys. Unwrapped keys are kept for a short time so that HEADs, GETs and the
parts of a multipart upload do not each cost a KMS call.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from proxy.crypto.format import SCOPE_BUCKET, SCOPE_OBJECT, encryption_context
from proxy.kms.base import DataKey, Keyring, KeyringError
from proxy.metrics import KEY_CACHE, KMS_CALLS

T = TypeVar("T")

#: Told of each key use served from the cache, without a keyring call: (operation "generate" or
#: "decrypt", key reference, the object's encryption context, master key id or None). The
#: keyring's own calls are the keyring's to report (an auditing keyring under this cache). It
#: may raise (a KeyringError, to refuse a use it cannot record); the key is then not handed out.
CacheHit = Callable[[str, str, Mapping[str, str], str | None], None]


@dataclass(frozen=True)
class ReuseLimits:
    """How far one generated data key may be shared."""

    max_objects: int
    max_seconds: float
    max_bytes: int


@dataclass
class _Shared:
    key: DataKey
    created: float
    objects: int = 0
    bytes: int = 0


class Materials:
    """Data keys for new objects and unwrapped keys for reads, through a bounded cache."""

    def __init__(
        self,
        keyring: Keyring,
        *,
        reuse: ReuseLimits | None = None,
        decrypt_seconds: float = 0.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        on_cache_hit: CacheHit | None = None,
    ) -> None:
        """Cache `keyring`'s keys: generated ones shared within `reuse`, unwrapped ones for
        `decrypt_seconds` (at most `max_entries` of them). `clock` measures ages; `on_cache_hit`
        hears of every use the cache serves."""
        self._keyring = keyring
        self._on_cache_hit = on_cache_hit
        self._reuse = reuse
        self._ttl = decrypt_seconds
        self._max = max_entries
        self._clock = clock
        self._shared: dict[tuple[str, str], _Shared] = {}
        self._unwrapped: OrderedDict[tuple[str, bytes, tuple[tuple[str, str], ...]], tuple[float, bytes]] = (
            OrderedDict()
        )

    @property
    def keyring(self) -> Keyring:
        """The keyring under the cache, for the calls it must not cache (S3EC data keys)."""
        return self._keyring

    async def new_object_key(self, key_id: str, bucket: str, key: str, size: int | None) -> tuple[DataKey, str]:
        """A data key for a new object and the scope it is wrapped for (object or bucket)."""
        limits = self._reuse
        if limits is None or size is None or size > limits.max_bytes:
            return await self._generate(key_id, encryption_context(bucket, key)), SCOPE_OBJECT
        now = self._clock()
        slot = (key_id, bucket)
        shared = self._shared.get(slot)
        if (
            shared is None
            or shared.objects >= limits.max_objects
            or now - shared.created >= limits.max_seconds
            or shared.bytes + size > limits.max_bytes
        ):
            fresh = await self._generate(key_id, encryption_context(bucket, key, SCOPE_BUCKET))
            shared = _Shared(fresh, now)
            self._shared[slot] = shared
            KEY_CACHE.labels("shared", "miss").inc()
        else:
            if self._on_cache_hit is not None:
                self._on_cache_hit("generate", shared.key.key_ref, encryption_context(bucket, key), key_id)
            KEY_CACHE.labels("shared", "hit").inc()
        shared.objects += 1
        shared.bytes += size
        return shared.key, SCOPE_BUCKET

    async def unwrap(self, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """The plaintext data key, from the cache while it is fresh."""
        if self._ttl <= 0:
            return await self._decrypt(key_ref, wrapped, context)
        slot = (key_ref, wrapped, tuple(sorted(context.items())))
        now = self._clock()
        hit = self._unwrapped.get(slot)
        if hit is not None and now - hit[0] < self._ttl:
            if self._on_cache_hit is not None:
                self._on_cache_hit("decrypt", key_ref, context, None)
            self._unwrapped.move_to_end(slot)
            KEY_CACHE.labels("unwrapped", "hit").inc()
            return hit[1]
        KEY_CACHE.labels("unwrapped", "miss").inc()
        plaintext = await self._decrypt(key_ref, wrapped, context)
        self._unwrapped[slot] = (now, plaintext)
        self._unwrapped.move_to_end(slot)
        while len(self._unwrapped) > self._max:
            self._unwrapped.popitem(last=False)
        return plaintext

    async def wrap(self, key_id: str, plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        """Wrap an existing data key (copies); not cached."""
        return await _counted("wrap", self._keyring.wrap_data_key(key_id, plaintext, context))

    async def _generate(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        return await _counted("generate", self._keyring.generate_data_key(key_id, context))

    async def _decrypt(self, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        return await _counted("decrypt", self._keyring.decrypt_data_key(key_ref, wrapped, context))

    async def ready(self, key_id: str) -> None:
        """The keyring's readiness check for `key_id` (KeyringError when not ready)."""
        await self._keyring.ready(key_id)

    async def close(self) -> None:
        """Forget every cached key and close the keyring."""
        self._shared.clear()
        self._unwrapped.clear()
        await self._keyring.close()


async def _counted(operation: str, call: Awaitable[T]) -> T:
    try:
        result = await call
    except KeyringError as exc:
        KMS_CALLS.labels(operation, exc.code).inc()
        raise
    KMS_CALLS.labels(operation, "ok").inc()
    return result
