"""Keeping a process's copy of a shared keyring object current (proxy/kms/keyring_object.py).

A thread of each process asks for the object every ``poll_seconds`` with ``If-None-Match`` on
the ETag it holds (an unchanged keyring costs a 304 and no decryption). An object naming a key
version this copy lacks is also looked for at once (`look_for_miss`), at most every
`MISS_SECONDS`, so a host answers what another host sealed under a version it just made.
New copies are decrypted with the key derived at start-up: no scrypt run.

An object that cannot be read or opened (gone, backend down, corrupt, sealed under another
passphrase) leaves the loaded keyring in use, with one ERROR per distinct failure; `failing`
says so (the host's readiness) until a look succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

from proxy.kms.keyring_object import KeyringObject
from proxy.kms.keystore import KeyringFileError, LocalKeyStore

log = logging.getLogger("proxy.kms.local")

#: Shortest time between two looks for a version a request named and the keyring lacks: objects
#: naming versions that do not exist cannot make a request each to the backend.
MISS_SECONDS = 0.25


class KeyringWatch:
    """Polls the object of the store `current()` returns and hands newer copies to `adopt`."""

    def __init__(
        self,
        current: Callable[[], LocalKeyStore],
        adopt: Callable[[LocalKeyStore], None],
        poll_seconds: float,
        failing: str | None = None,
        failing_since: float | None = None,
    ) -> None:
        """No thread starts before `ensure_running`. `failing`: why the object could not be
        read at the start (the store is a copy another process read, proxy/kms/keyring_handover.py),
        `failing_since`: since when (``time.monotonic()``) that process has seen it fail."""
        self._current = current
        self._adopt = adopt
        self._poll_seconds = poll_seconds
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._started = 0.0  # when the newest look began (monotonic)
        self._last_miss = 0.0
        self._failing: str | None = failing
        now = time.monotonic()
        self._failing_since = min(now, failing_since) if failing is not None and failing_since is not None else now

    @property
    def failing_since(self) -> float | None:
        """Since when (``time.monotonic()``) the object cannot be read; None: it can."""
        return self._failing_since if self._failing is not None else None

    @property
    def failing(self) -> str | None:
        """Why the newest look at the object failed, and for how long (None: it succeeded)."""
        problem = self._failing
        if problem is None:
            return None
        return f"{problem} (for {time.monotonic() - self._failing_since:.0f} s)"

    def ensure_running(self) -> None:
        """Start this process's polling thread unless it runs (a forked worker starts its own)."""
        if self._pid == os.getpid() or self._closed:
            return
        self._pid = os.getpid()
        # Fresh ones: a lock the parent's thread held when this process was forked stays held here.
        self._lock, self._stop = threading.Lock(), threading.Event()
        threading.Thread(target=self._run, args=(self._stop,), name="sealgate-keyring-watch", daemon=True).start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self._poll_seconds):
            self.look()

    def look(self) -> None:
        """Ask for the object now (if it changed) and adopt a newer copy."""
        with self._lock:
            self._look()

    def _look(self) -> None:
        self._started = time.monotonic()
        store = self._current()
        obj = store.path
        assert isinstance(obj, KeyringObject)
        try:
            fetched = obj.get(if_none_match=store.etag)
            if fetched is not None:
                fresh = store.reopen(fetched)
                self._adopt(fresh)
                log.info("keyring %s changed: reloaded (%d keys)", obj, len(fresh.list_keys()))
        except Exception as exc:  # noqa: BLE001 - the thread must live on; the message names no secret
            problem = str(exc) if isinstance(exc, KeyringFileError) else f"{obj}: {type(exc).__name__}: {exc}"
            if problem != self._failing:
                if self._failing is None:
                    self._failing_since = time.monotonic()
                self._failing = problem
                log.error("keeping the loaded keyring: %s", problem)
            return
        if self._failing is not None:
            self._failing = None
            log.warning("keyring object %s can be read again", obj)

    async def look_for_miss(self) -> None:
        """Look now for a key version a request names and this copy lacks, unless another
        look began since this call or one for a miss was made within `MISS_SECONDS`."""
        if time.monotonic() - self._last_miss < MISS_SECONDS:
            return
        await asyncio.to_thread(self._look_for_miss, time.monotonic())

    def _look_for_miss(self, asked: float) -> None:
        with self._lock:
            if self._started >= asked or time.monotonic() - self._last_miss < MISS_SECONDS:
                return
            self._last_miss = time.monotonic()
            self._look()

    def close(self) -> None:
        """Stop polling (for good)."""
        self._closed = True
        self._stop.set()
