"""The access settings sealgate keeps for each bucket, on the backend, sealed: its bucket policy,
public access block and ownership controls (``.sealgate/bk/<setting>``).

On the backend these settings would govern sealgate's own credentials, not its clients, so
sealgate keeps and applies them itself, and every replica reads the same records. Each record is
sealed (AES-256-GCM) under a fresh data key from the keyring, wrapped under the bucket's master
key with the context ``{"sealgate:bucket": B, "sealgate:setting": NAME}``: someone with write
access to the backend cannot forge or edit one, nor move one to another bucket. They can delete
one or put back an older one (as with any rollback; docs/FORMAT.md §8).

Each process keeps what it read for `TTL_SECONDS`; a refresh is one listing of the prefix, and a
record is read again only when its ETag changed. A change made through this process applies at
once, one made through another replica within `TTL_SECONDS`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Protocol

from proxy.access.bucket_policy import BucketPolicy, MalformedPolicy, parse_bucket_policy
from proxy.config import Config
from proxy.crypto.format import IntegrityError, open_blob, seal_blob
from proxy.kms.base import KeyringError
from proxy.kms.materials import Materials
from proxy.s3.bucket_access import PublicAccessBlock
from proxy.s3.errors import S3Error
from proxy.s3.headers import etag_value
from proxy.s3.xml import child_text, iter_named, parse
from proxy.store.backend import Backend
from proxy.store.errors import keyring_error
from proxy.store.reserved import RESERVED_PREFIX, content_md5

log = logging.getLogger(__name__)

PREFIX = RESERVED_PREFIX + "bk/"
POLICY = "policy"
PUBLIC_ACCESS_BLOCK = "public-access-block"
OWNERSHIP = "ownership-controls"
SETTINGS = (POLICY, PUBLIC_ACCESS_BLOCK, OWNERSHIP)
TTL_SECONDS = 5.0
MAX_BUCKETS = 1024
_MAX_RECORD = 64 * 1024
_FORMAT = 1


@dataclass(frozen=True)
class BucketAccess:
    """What sealgate applies to requests on one bucket beyond the config's identity policies."""

    policy: BucketPolicy | None = None
    public_access_block: PublicAccessBlock | None = None
    ownership: str | None = None
    #: Why a record could not be opened (tampered, or its key refused); requests on the bucket
    #: then fail closed, except those that replace or remove the settings.
    broken: str | None = None
    #: False when the backend says there is no such bucket.
    exists: bool = True

    @property
    def pab(self) -> PublicAccessBlock:
        """The public access block in force (all off without one)."""
        return self.public_access_block or PublicAccessBlock()


NONE = BucketAccess()
MISSING = BucketAccess(exists=False)


class Gateway(Protocol):
    """What these records need of `proxy.store.gateway.Gateway` (which holds the cache)."""

    config: Config
    backend: Backend
    materials: Materials
    access: BucketAccessCache


def _context(bucket: str, setting: str) -> dict[str, str]:
    return {"sealgate:bucket": bucket, "sealgate:setting": setting}


def _aad(bucket: str, setting: str) -> bytes:
    return b"sealgate bucket setting v1\0" + bucket.encode() + b"\0" + setting.encode()


async def _seal(gw: Gateway, bucket: str, setting: str, value: bytes) -> bytes:
    """The record body: the value sealed under a fresh data key, and that key wrapped."""
    key_id = gw.config.key_for_bucket(bucket)
    context = _context(bucket, setting)
    try:
        data_key = await gw.materials.keyring.generate_data_key(key_id, context)
        # A gateway that cannot unwrap what it wraps (a public-key key) could not apply the setting.
        await gw.materials.unwrap(data_key.key_ref, data_key.wrapped, context)
    except KeyringError as exc:
        if exc.code == "ServiceUnavailable":
            raise keyring_error(exc) from None
        raise S3Error(
            "NotImplemented",
            f"bucket {setting} needs a master key this gateway can decrypt with; bucket {bucket}'s is not ({exc.code})",
            501,
        ) from None
    record = {
        "v": _FORMAT,
        "kr": data_key.key_ref,
        "wk": base64.b64encode(data_key.wrapped).decode(),
        "c": base64.b64encode(seal_blob(data_key.plaintext, value, _aad(bucket, setting))).decode(),
    }
    return json.dumps(record, separators=(",", ":")).encode()


async def _open(gw: Gateway, bucket: str, setting: str, body: bytes) -> bytes:
    """Inverse of `_seal`; IntegrityError for a record that is not one sealgate sealed here."""
    try:
        record = json.loads(body)
        if record.get("v") != _FORMAT:
            raise IntegrityError(f"unknown record format {record.get('v')!r}")
        wrapped = base64.b64decode(record["wk"], validate=True)
        sealed = base64.b64decode(record["c"], validate=True)
        key_ref = str(record["kr"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"malformed record: {exc}") from None
    try:
        data_key = await gw.materials.unwrap(key_ref, wrapped, _context(bucket, setting))
    except KeyringError as exc:
        if exc.code == "ServiceUnavailable":
            raise keyring_error(exc) from None
        raise IntegrityError(f"its data key does not unwrap: {exc.code}") from None
    return open_blob(data_key, sealed, _aad(bucket, setting))


async def store(gw: Gateway, bucket: str, setting: str, value: bytes) -> None:
    """Seal and store one setting (replacing the one there)."""
    body = await _seal(gw, bucket, setting, value)
    headers = {"Content-MD5": content_md5(body), "Content-Type": "application/json"}
    await gw.backend.read_ok("PUT", bucket, PREFIX + setting, headers=headers, body=body)
    gw.access.forget(bucket)


async def remove(gw: Gateway, bucket: str, setting: str) -> None:
    """Delete one setting (nothing to do if there is none)."""
    await gw.backend.read_ok("DELETE", bucket, PREFIX + setting)
    gw.access.forget(bucket)


@dataclass
class _Entry:
    read_at: float
    access: BucketAccess
    #: setting -> (backend ETag, the opened value), to skip unchanged records on a refresh.
    raw: dict[str, tuple[str, bytes]] = field(default_factory=dict)


class BucketAccessCache:
    """Each bucket's access settings, per process, for `TTL_SECONDS` (least recently used out first)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        #: The refresh in flight per bucket, shared by every request that needs it.
        self._refreshing: dict[str, asyncio.Future[BucketAccess]] = {}
        #: Counts `forget` calls: a refresh that began before one may have read the old value,
        #: so it answers its waiters but is not kept.
        self._changes = 0

    def forget(self, bucket: str) -> None:
        """Read the bucket's settings again next time (they were just changed here)."""
        self._entries.pop(bucket, None)
        self._refreshing.pop(bucket, None)
        self._changes += 1

    async def settings(self, gw: Gateway, bucket: str) -> BucketAccess:
        """The bucket's settings; MISSING for a bucket that does not exist (its request fails
        on the backend). ServiceUnavailable when they cannot be read: nothing is decided without them.

        Requests that find the settings stale at the same moment share one refresh: without
        that, every connection busy on a bucket listed its settings at each expiry."""
        entry = self._entries.get(bucket)
        if entry is not None and time.monotonic() - entry.read_at < TTL_SECONDS:
            self._entries.move_to_end(bucket)
            return entry.access
        refresh = self._refreshing.get(bucket)
        if refresh is None:
            refresh = asyncio.ensure_future(self._refresh(gw, bucket, entry))
            self._refreshing[bucket] = refresh
            refresh.add_done_callback(lambda done: self._settled(bucket, done))
        # Shielded: one waiter's cancellation (its client went away) is not the others'.
        return await asyncio.shield(refresh)

    def _settled(self, bucket: str, done: asyncio.Future[BucketAccess]) -> None:
        if self._refreshing.get(bucket) is done:
            del self._refreshing[bucket]
        if not done.cancelled():
            done.exception()  # retrieved: a failure nobody awaited any more is not "never retrieved"

    async def _refresh(self, gw: Gateway, bucket: str, entry: _Entry | None) -> BucketAccess:
        now = time.monotonic()
        changes = self._changes
        listed = await _list(gw, bucket)
        if listed is None:
            return MISSING
        fresh = _Entry(now, NONE)
        for setting in SETTINGS:
            if setting not in listed:
                continue
            etag = listed[setting]
            kept = entry.raw.get(setting) if entry is not None else None
            try:
                raw = kept[1] if kept is not None and kept[0] == etag else await _read(gw, bucket, setting)
                if raw is None:
                    continue  # removed since the listing
                fresh.raw[setting] = (etag, raw)
                fresh.access = _parsed(fresh.access, bucket, setting, raw)
            except IntegrityError as exc:
                log.error("bucket %s: its %s record is not authentic (%s); refusing its requests", bucket, setting, exc)
                fresh.access = replace(fresh.access, broken=f"its {setting} record is not authentic")
        if changes != self._changes:
            return fresh.access  # a setting changed here while this read: may be the old one
        self._entries[bucket] = fresh
        while len(self._entries) > MAX_BUCKETS:
            self._entries.popitem(last=False)
        return fresh.access


def _parsed(access: BucketAccess, bucket: str, setting: str, raw: bytes) -> BucketAccess:
    text = raw.decode("utf-8", "replace")
    try:
        if setting == POLICY:
            return replace(access, policy=parse_bucket_policy(bucket, text))
        if setting == PUBLIC_ACCESS_BLOCK:
            flags = json.loads(text)
            if not isinstance(flags, list) or len(flags) != 4:
                raise ValueError("not four switches")
            return replace(access, public_access_block=PublicAccessBlock(*(bool(f) for f in flags)))
        return replace(access, ownership=text)
    except (MalformedPolicy, ValueError) as exc:
        raise IntegrityError(f"the stored value does not parse: {exc}") from None


async def _list(gw: Gateway, bucket: str) -> dict[str, str] | None:
    """setting -> backend ETag of the records there; None when the bucket does not exist."""
    try:
        _, data = await gw.backend.read_ok("GET", bucket, None, query=[("list-type", "2"), ("prefix", PREFIX)])
    except S3Error as exc:
        if exc.code == "NoSuchBucket":
            return None
        log.warning("could not read the access settings of bucket %s: %s", bucket, exc.code)
        raise S3Error("ServiceUnavailable", "the bucket's access settings cannot be read now; retry", 503) from None
    found: dict[str, str] = {}
    for item in iter_named(parse(data), "Contents"):
        name = child_text(item, "Key")[len(PREFIX) :]
        if name in SETTINGS:
            found[name] = etag_value(child_text(item, "ETag"))
    return found


async def _read(gw: Gateway, bucket: str, setting: str) -> bytes | None:
    try:
        _, body = await gw.backend.read_ok("GET", bucket, PREFIX + setting)
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            return None
        raise S3Error("ServiceUnavailable", "the bucket's access settings cannot be read now; retry", 503) from None
    if len(body) > _MAX_RECORD:
        raise IntegrityError("too large")
    return await _open(gw, bucket, setting, body)
