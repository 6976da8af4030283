"""The backend's connection pool and the bounds on what it gives out: at most `pool_size`
connections, a bounded wait for one (`ConnectionPool`), and how many streamed uploads, each
holding one until its body ends, a client may send at once, and how many downloads it may be
reading (`ClientSlots`). All answer 503 SlowDown when exceeded."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from proxy.s3.errors import S3Error
from proxy.store.http1 import ConnectFailed, Connection, ConnectionBroken, wait_at_most

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


class PoolFull(Exception):
    """No backend connection came free within the pool's wait."""


Key = tuple[str, int, bool]


class ConnectionPool:
    """At most `limit` connections to the backend (connecting, in use or idle), each kept alive
    between exchanges for up to `keepalive` seconds. A request that finds them all busy waits
    up to `wait` seconds for one, then gets `PoolFull`; connecting may take `connect_timeout`."""

    def __init__(
        self, limit: int, wait: float, connect_timeout: float, tls: ssl.SSLContext | None, keepalive: float = 30.0
    ) -> None:
        self.limit = limit
        self.wait = wait
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.keepalive = keepalive
        #: Idle connections by (host, port, TLS), the most recently used last.
        self._idle: dict[Key, list[Connection]] = {}
        self._count = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeping: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def size(self) -> int:
        """Connections the pool counts now."""
        return self._count

    @property
    def idle_hosts(self) -> int:
        """Hosts the pool holds idle connections to now."""
        return len(self._idle)

    async def acquire(self, key: Key) -> Connection:
        """An idle connection to `key`, or a new one if the pool has room; else wait for room."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            conn = self._reuse(key, loop.time())
            if conn is not None:
                return conn
            if self._closed:
                raise ConnectionBroken("the backend client is closed")
            if self._count < self.limit or self._evict_idle():
                self._count += 1
                try:
                    return await self._connect(key, loop)
                except BaseException:
                    self._count -= 1
                    self._wake()
                    raise
            if deadline is None:
                deadline = loop.time() + self.wait
            await self._queue(loop, deadline - loop.time())

    async def _queue(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        if seconds <= 0:
            raise PoolFull()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            await wait_at_most(waiter, seconds, PoolFull)
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake()  # woken, then cancelled: the room it was told of is someone else's
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _reuse(self, key: Key, now: float) -> Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            conn.in_pool = False
            if not idle:
                del self._idle[key]  # no empty list kept per host ever reached (virtual hosts)
            if conn.closed:
                continue  # already uncounted by _forget
            if now - conn.idle_since > self.keepalive:
                self._drop(conn, wake=False)
                continue
            return conn
        return None

    def _evict_idle(self) -> bool:
        """Close the longest-idle connection to another host (virtual-hosted buckets) to make room."""
        oldest: Connection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is None:
            return False
        self._unlist(oldest)
        oldest.in_pool = False
        self._drop(oldest, wake=False)
        return True

    async def _connect(self, key: Key, loop: asyncio.AbstractEventLoop) -> Connection:
        host, port, tls = key
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(key, loop),
                    host,
                    port,
                    ssl=self.tls if tls else None,
                    server_hostname=host if tls else None,
                )
        except OSError as exc:  # ssl.SSLError included
            raise ConnectFailed(exc) from exc
        conn.counted = True
        conn.pool_forget = self._forget
        return conn

    def release(self, conn: Connection, reusable: bool) -> None:
        """An exchange on `conn` has ended: keep it for the next one, or close it."""
        if reusable and not self._closed and not conn.closed:
            conn.idle_since = asyncio.get_running_loop().time()
            conn.in_pool = True
            self._idle.setdefault(conn.key, []).append(conn)
            if self._sweeping is None:
                self._sweeping = asyncio.get_running_loop().call_later(self.keepalive, self._sweep)
            self._wake()
        else:
            self._drop(conn)

    def _forget(self, conn: Connection) -> None:
        # The backend closed a connection: if it was idle, its room is free now; if in use, the
        # exchange's end (release) frees it.
        if conn.in_pool:
            conn.in_pool = False
            self._unlist(conn)
            self._uncount(conn)

    def _unlist(self, conn: Connection) -> None:
        """Take idle `conn` off its host's list, and the list off the pool once it is empty."""
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        if idle is not None and not idle:
            del self._idle[conn.key]

    def _drop(self, conn: Connection, wake: bool = True) -> None:
        conn.abort()
        self._uncount(conn, wake)

    def _uncount(self, conn: Connection, wake: bool = True) -> None:
        if conn.counted:
            conn.counted = False
            self._count -= 1
            if wake:
                self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        self._sweeping = None
        now = asyncio.get_running_loop().time()
        for key, idle in list(self._idle.items()):
            while idle and now - idle[0].idle_since > self.keepalive:
                conn = idle.pop(0)
                conn.in_pool = False
                self._drop(conn)
            if not idle:
                del self._idle[key]
        left = bool(self._idle)
        if left and not self._closed:
            self._sweeping = asyncio.get_running_loop().call_later(self.keepalive / 2, self._sweep)

    def close(self) -> None:
        """Close every idle connection; those in use close when their exchanges end."""
        self._closed = True
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None
        for idle in self._idle.values():
            while idle:
                conn = idle.pop()
                conn.in_pool = False
                self._drop(conn, wake=False)
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionBroken("the backend client is closed"))
