"""Bounds on what the backend's connection pool gives out: how long a request waits for a
connection (`PoolWait`), and how many streamed uploads, each holding one until its body ends,
a client may send at once, and how many downloads it may be reading (`ClientSlots`). All answer
503 SlowDown when exceeded."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import aiohttp

from proxy.s3.errors import S3Error

log = logging.getLogger("proxy.backend")


def slow_down(why: str) -> S3Error:
    """S3's answer to a request sealgate has no capacity for now: SDKs retry it with backoff."""
    return S3Error("SlowDown", f"Please reduce your request rate ({why}).", 503)


class ClientSlots:
    """How many transfers of one kind (`what`: streamed uploads, downloads) each client has in
    progress, each holding a backend connection: at most `limit` at once; one more waits up to
    `wait` seconds for one to end, then is refused (SlowDown)."""

    def __init__(self, limit: int, wait: float, what: str = "streamed uploads") -> None:
        self.limit = limit
        self.wait = wait
        self.what = what
        self._slots: dict[str, asyncio.Semaphore] = {}
        #: Holders and waiters by client, to drop a client's semaphore once nobody uses it.
        self._users: Counter[str] = Counter()

    async def acquire(self, client: str) -> None:
        """Take one of `client`'s slots, or raise SlowDown after the wait."""
        slots = self._slots.setdefault(client, asyncio.Semaphore(self.limit))
        self._users[client] += 1
        try:
            async with asyncio.timeout(self.wait):
                await slots.acquire()
        except BaseException as exc:
            self._done(client)
            if isinstance(exc, TimeoutError):
                log.warning("client %s already has %d %s: one more refused", client, self.limit, self.what)
                raise slow_down(f"{self.limit} {self.what} of this client are already in progress") from None
            raise

    @asynccontextmanager
    async def held(self, client: str) -> AsyncIterator[None]:
        """One of `client`'s slots for the block (`acquire`, then `release` however it ends)."""
        await self.acquire(client)
        try:
            yield
        finally:
            self.release(client)

    def release(self, client: str) -> None:
        """Give back a slot `acquire` took."""
        self._slots[client].release()
        self._done(client)

    def _done(self, client: str) -> None:
        self._users[client] -= 1
        if self._users[client] <= 0:
            del self._users[client]
            del self._slots[client]


async def _queued(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
    # Every pooled connection is busy: from now, the wait for one is bounded.
    wait = ctx.trace_request_ctx
    if isinstance(wait, PoolWait):
        wait.queued()


async def _dequeued(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
    wait = ctx.trace_request_ctx
    if isinstance(wait, PoolWait):
        wait.dequeued()


class PoolWait:
    """The deadline of one request's wait in the pool's queue (aiohttp's tracing says when it
    queues and when it gets a connection); connecting and sending are not part of it."""

    def __init__(self, timeout: asyncio.Timeout, seconds: float) -> None:
        self._timeout = timeout
        self.seconds = seconds
        #: Whether the request is in the queue now.
        self.waiting = False

    def queued(self) -> None:
        """The request joined the queue: its wait is bounded from now."""
        self.waiting = True
        self._timeout.reschedule(asyncio.get_running_loop().time() + self.seconds)

    def dequeued(self) -> None:
        """The request got a connection: no deadline from the queue any more."""
        self.waiting = False
        self._timeout.reschedule(None)


def tracing() -> aiohttp.TraceConfig:
    """aiohttp tracing that tells each request's `PoolWait` (its ``trace_request_ctx``) when it
    queues for a connection and when it gets one."""
    config = aiohttp.TraceConfig()
    config.on_connection_queued_start.append(_queued)
    config.on_connection_queued_end.append(_dequeued)
    return config
