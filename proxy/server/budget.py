"""Limits on what one request may hold: a memory budget shared by every connection of one
process, for the plaintext that verify-first S3EC reads hold before their GCM tag has checked
(proxy/server/s3ec.py); and `BodyPace`, the deadlines that keep a request body coming.

A read reserves what it will hold before it reads the body and gives it back when its response
ends, however it ends. One that does not fit waits a moment for others to finish, then is
refused (`BudgetExhausted`, which the server answers with S3's `503 SlowDown`), so the memory
these reads hold at once never exceeds the budget, whatever the number of connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from aiohttp import web

#: How long a reservation that does not fit waits for others to be released.
DEFAULT_WAIT_SECONDS: Final = 1.0


class BudgetExhausted(Exception):
    """A reservation did not fit in the budget within the wait."""


class MemoryBudget:
    """`capacity` bytes, reserved and released by the tasks of one event loop.

    Not thread-safe (one per process, used from its loop). A waiting reservation is woken by
    every release and takes its bytes only if they fit then; there is no queue, so a large one
    can lose to smaller ones, for at most `wait` seconds.
    """

    def __init__(self, capacity: int, *, wait: float = DEFAULT_WAIT_SECONDS) -> None:
        if capacity < 1:
            raise ValueError(f"budget capacity must be positive, not {capacity}")
        if wait < 0:
            raise ValueError(f"wait must not be negative, not {wait}")
        self._capacity = capacity
        self._wait = wait
        self._in_use = 0
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def capacity(self) -> int:
        """The most bytes reserved at once."""
        return self._capacity

    @property
    def in_use(self) -> int:
        """Bytes reserved now."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Reservations waiting for bytes to be released."""
        return len(self._waiters)

    async def acquire(self, size: int) -> None:
        """Reserve `size` bytes, waiting up to the budget's wait for them; `BudgetExhausted`
        if they do not fit by then (at once if `size` is more than the whole capacity)."""
        if size < 0:
            raise ValueError(f"cannot reserve {size} bytes")
        if size > self._capacity:
            raise BudgetExhausted(f"{size} bytes is more than the whole budget of {self._capacity}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while self._in_use + size > self._capacity:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BudgetExhausted(f"{size} bytes do not fit: {self._in_use} of {self._capacity} in use")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                async with asyncio.timeout(remaining):
                    await waiter
            except TimeoutError:
                raise BudgetExhausted(
                    f"{size} bytes did not fit within {self._wait}s: {self._in_use} of {self._capacity} in use"
                ) from None
            finally:
                self._waiters.discard(waiter)
        # No await between the check and the update: nothing else runs in between.
        self._in_use += size

    def release(self, size: int) -> None:
        """Give back `size` bytes of an earlier `acquire`, and wake whoever waits."""
        if not 0 <= size <= self._in_use:
            raise ValueError(f"cannot release {size} bytes: {self._in_use} in use")
        self._in_use -= size
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """`size` bytes reserved for the block, released when it ends, fails or is cancelled."""
        await self.acquire(size)
        try:
            yield
        finally:
            self.release(size)


#: The process's budget for verify-first reads (``server.verify_first_memory_bytes``).
VERIFY_FIRST_BUDGET = web.AppKey("sealgate.verify_first_budget", MemoryBudget)


class BodyPace:
    """How long the next read of a request body may wait for the client.

    Each span of `stall` seconds spent waiting for the client must bring `rate` × `stall` bytes
    (or the rest of the body); a span starts when the one before it got its bytes, so no single
    wait exceeds `stall` (the per-read stall timeout, all that applies with `rate` 0), and a
    trickle that keeps just inside it is cut off as well. Only time spent waiting for the client
    counts: a slow backend, which slows the reads, is not the client's fault. Nothing is carried
    over from a fast span to a slow one.
    """

    def __init__(self, stall: float, rate: int) -> None:
        self._stall = stall
        self._need = rate * stall
        self._waited = 0.0
        self._got = 0

    def wait(self) -> float:
        """Seconds the next read may wait (0: the span is over, short of its bytes)."""
        return max(0.0, self._stall - self._waited)

    def took(self, size: int, waited: float) -> None:
        """`size` bytes arrived after waiting `waited` seconds for them; TimeoutError if the
        span has run out of time short of its bytes."""
        self._got += size
        self._waited += waited
        if self._got >= self._need:
            self._waited, self._got = 0.0, 0
        elif self._waited >= self._stall:
            raise TimeoutError(f"{self._got} bytes in {self._stall}s of waiting, fewer than {self._need}")
