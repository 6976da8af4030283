"""Each bucket's CORS rules, read from the backend (where PutBucketCors stored them) and kept a
short while per process, so that browser requests through sealgate get the answers S3 would give
without a backend request each. A change made through this process applies at once; one made
through another replica within `TTL_SECONDS`."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from proxy.s3.cors import CorsRule, parse_cors
from proxy.s3.errors import S3Error
from proxy.store.backend import Backend

log = logging.getLogger(__name__)

TTL_SECONDS = 30.0
MAX_BUCKETS = 1024


class CorsCache:
    """Buckets' CORS rules, by bucket name, for `TTL_SECONDS` (least recently used out first)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[float, tuple[CorsRule, ...]]] = OrderedDict()

    async def rules_for(self, backend: Backend, bucket: str) -> tuple[CorsRule, ...]:
        """The bucket's CORS rules; () when it has none or the backend cannot say (logged)."""
        now = time.monotonic()
        hit = self._entries.get(bucket)
        if hit is not None and now - hit[0] < TTL_SECONDS:
            self._entries.move_to_end(bucket)
            return hit[1]
        rules: tuple[CorsRule, ...] = ()
        try:
            resp = await backend.request("GET", bucket, None, query=[("cors", "")])
            try:
                if resp.status < 300:
                    rules = parse_cors(await resp.raw.content.read(64 * 1024))
                elif resp.status != 404:
                    log.warning("could not read the CORS rules of %s: backend status %s", bucket, resp.status)
            finally:
                resp.release()
        except (S3Error, ValueError) as exc:
            log.warning("could not read the CORS rules of %s: %s", bucket, exc)
        self._entries[bucket] = (now, rules)
        while len(self._entries) > MAX_BUCKETS:
            self._entries.popitem(last=False)
        return rules

    def forget(self, bucket: str) -> None:
        """Drop what is kept of a bucket's rules (they were just changed through this process)."""
        self._entries.pop(bucket, None)
