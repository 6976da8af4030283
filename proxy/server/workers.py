"""The worker processes of one sealgate (``server.workers > 1``): started by fork before any
event loop exists, watched by the first process, replaced when one dies, and gone when the first
process is: a worker must never keep serving the port after a ``kill -9`` of the process that
started it, or a fresh start would find the port taken.

A replacement is a fresh interpreter (``sealgate serve --worker``), not a fork: the first
process by then runs an event loop and threads (keyring pools, resolvers), which a fork would
copy in whatever state they were. It reads the config file again, so it serves what the
others serve after a reload.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

log = logging.getLogger("sealgate")

#: How often the first process looks for dead workers, and the least time between two
#: replacements (a worker that dies at start must not turn into a fork loop).
WATCH_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a worker: be sent SIGTERM when the process that started it dies (Linux; elsewhere a
    no-op), and stop now if it already has."""
    parent = os.getppid()
    with suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


def _prepare_worker() -> None:
    """In a replacement worker before exec: die with the parent, and ignore SIGHUP until the new
    interpreter can remember one (it reads the config and certificates after that anyway)."""
    die_with_parent()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


class Workers:
    """The other worker processes of this sealgate, as seen by the first one."""

    def __init__(self, forked: list[int], config_path: Path | None) -> None:
        self._forked = list(forked)
        self._spawned: list[subprocess.Popen[bytes]] = []
        self._config_path = config_path
        self._stopping = False
        self._last_spawn = 0.0

    @property
    def pids(self) -> list[int]:
        """Every live worker's process id (this process not included)."""
        return self._forked + [p.pid for p in self._spawned]

    def forward(self, sig: int) -> None:
        """Pass a signal on to every worker (SIGHUP reloads, SIGTERM stops)."""
        if sig in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
        for pid in self.pids:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self) -> int:
        """Forget the workers that have exited; how many did."""
        gone = 0
        for pid in list(self._forked):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self._forked.remove(pid)
                gone += 1
                if not self._stopping:
                    log.error("worker %s exited (%s); starting another", pid, _describe(status))
        for proc in list(self._spawned):
            if proc.poll() is not None:
                self._spawned.remove(proc)
                gone += 1
                if not self._stopping:
                    log.error("worker %s exited (status %s); starting another", proc.pid, proc.returncode)
        return gone

    def _spawn(self) -> None:
        if self._config_path is None:
            log.error("a worker died and cannot be replaced: sealgate was not started from a config file")
            return
        cmd = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(self._config_path), "--worker"]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_prepare_worker)  # noqa: PLW1509
        self._spawned.append(proc)
        self._last_spawn = time.monotonic()

    async def watch(self) -> None:
        """Replace dead workers until stopped (a task of the first process's event loop)."""
        wanted = len(self.pids)
        while not self._stopping:
            await asyncio.sleep(WATCH_SECONDS)
            self._reap()
            if self._stopping:
                return
            if len(self.pids) < wanted and time.monotonic() - self._last_spawn >= WATCH_SECONDS:
                self._spawn()

    def wait(self) -> None:
        """After a stop: wait for every worker to be gone."""
        for pid in self._forked:
            with suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for proc in self._spawned:
            proc.wait()


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"status {os.waitstatus_to_exitcode(status)}"
