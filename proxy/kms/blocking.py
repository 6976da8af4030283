"""Blocking key-service calls (PKCS#11, KMIP) from the event loop: a bounded pool of threads of
the keyring's own, and the "closed" state every such keyring shares."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from proxy.kms.base import KeyUnavailable

T = TypeVar("T")


class BlockingCalls:
    """Runs blocking calls in at most `workers` threads named `name`. The calls themselves turn
    foreign errors into keyring errors (in their thread: recovering may block too)."""

    def __init__(self, name: str, workers: int, timeout: float | None = None) -> None:
        """A pool of `workers` threads; no thread starts before the first call. A call that takes
        longer than `timeout` seconds fails with KeyUnavailable (its thread runs on: a blocked
        library call cannot be interrupted, but the request it served is not held)."""
        # A pool of our own rather than the loop's default executor: a hung HSM or key manager
        # must not starve unrelated blocking work, and the bound is the session/connection count.
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"sealgate-{name}")
        self._name = name
        self._timeout = timeout
        self.closed = False

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in the pool; KeyUnavailable once the pool is closed."""
        if self.closed:
            raise KeyUnavailable(f"the {self._name} keyring is closed")
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, functools.partial(fn, *args)), self._timeout)
        except TimeoutError:
            raise KeyUnavailable(f"the {self._name} key service did not answer within {self._timeout}s") from None
        except asyncio.CancelledError:
            # close() cancels queued calls; unless our own task is being cancelled, that is the
            # keyring going away, which callers should see as a keyring error.
            task = asyncio.current_task()
            if self.closed and task is not None and not task.cancelling():
                raise KeyUnavailable(f"the {self._name} keyring is closed") from None
            raise
        except RuntimeError:
            # submit() after shutdown raises RuntimeError: closed while we were called.
            if self.closed:
                raise KeyUnavailable(f"the {self._name} keyring is closed") from None
            raise

    async def close(self, cleanup: Callable[[], None] | None = None) -> None:
        """Refuse new calls, wait for those in flight, then run `cleanup` (in a thread)."""
        if self.closed:
            return
        self.closed = True
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
        if cleanup is not None:
            await asyncio.to_thread(cleanup)
