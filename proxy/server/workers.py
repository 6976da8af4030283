"""The worker processes of one sealgate (``server.workers > 1``): started by fork before any
event loop exists, watched by the first process, replaced when one dies, and gone when the first
process is: a worker must never keep serving the port after a ``kill -9`` of the process that
started it, or a fresh start would find the port taken.

A replacement is a fresh interpreter (``sealgate serve --worker``), not a fork: the first
process by then runs an event loop and threads (keyring pools, resolvers), which a fork would
copy in whatever state they were. It reads the config file again, so it serves what the
others serve after a reload; of a shared keyring object it is also handed the first process's
copy, for when the object cannot be read just then (proxy/kms/keyring_handover.py).

With several workers, each has a slot (0 for the first process, 1 to N-1 for the others; a
replacement takes the slot of the worker it replaces) and a `Channel`: a unix socket per slot in
a private directory (mode 0700) that the first process makes before forking, and a random token
that every request on it carries. Over it a worker passes a part of an s3ec-v3 upload to the
worker that holds the upload's state (proxy/server/peers.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from proxy.kms.keyring_handover import ENV as COPY_ENV
from proxy.kms.keyring_handover import KeyringCopy, write_copy

log = logging.getLogger("sealgate")

#: How often the first process looks for dead workers, and the least time between two
#: replacements (a worker that dies at start must not turn into a fork loop).
WATCH_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1

#: How a replacement worker learns its channel (the token only from the environment, never the
#: command line, which any user may read; the worker takes it out of its environment at once).
_ENV_DIR, _ENV_SLOT, _ENV_WORKERS, _ENV_TOKEN = (
    "SEALGATE_WORKER_CHANNEL",
    "SEALGATE_WORKER_SLOT",
    "SEALGATE_WORKERS",
    "SEALGATE_WORKER_TOKEN",
)


@dataclass(frozen=True)
class Channel:
    """How the workers of one sealgate reach each other, and which one this process is."""

    directory: Path
    workers: int
    slot: int
    token: str = field(repr=False)

    @classmethod
    def create(cls, workers: int) -> Channel:
        """A new private directory (0700, under $XDG_RUNTIME_DIR if usable, else the temp dir)
        and token, for slot 0 (the first process, before it forks)."""
        base = os.environ.get("XDG_RUNTIME_DIR")
        if not base or not os.access(base, os.W_OK | os.X_OK):
            base = None
        directory = Path(tempfile.mkdtemp(prefix="sealgate-", dir=base))  # mkdtemp: mode 0700
        return cls(directory, workers, 0, secrets.token_urlsafe(32))

    @classmethod
    def from_environment(cls) -> Channel | None:
        """A replacement worker's channel, as the first process passed it (None without one)."""
        token = os.environ.pop(_ENV_TOKEN, None)
        directory = os.environ.pop(_ENV_DIR, None)
        slot, workers = os.environ.pop(_ENV_SLOT, None), os.environ.pop(_ENV_WORKERS, None)
        if token is None or directory is None or slot is None or workers is None:
            return None
        return cls(Path(directory), int(workers), int(slot), token)

    def socket(self, slot: int) -> Path:
        """The unix socket worker `slot` serves its channel on."""
        return self.directory / f"w{slot}.sock"

    def as_slot(self, slot: int) -> Channel:
        """This channel as worker `slot` sees it."""
        return replace(self, slot=slot)

    def environment(self, slot: int) -> dict[str, str]:
        """What a replacement for worker `slot` finds in its environment."""
        return {
            _ENV_DIR: str(self.directory),
            _ENV_SLOT: str(slot),
            _ENV_WORKERS: str(self.workers),
            _ENV_TOKEN: self.token,
        }

    def remove(self) -> None:
        """Remove the directory and its sockets (the first process, once every worker is gone)."""
        shutil.rmtree(self.directory, ignore_errors=True)


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

    def __init__(self, forked: dict[int, int], config_path: Path | None, channel: Channel | None = None) -> None:
        #: Process id -> slot of the workers forked at start, and of the replacements started.
        self._forked = dict(forked)
        self._spawned: dict[subprocess.Popen[bytes], int] = {}
        self._slots = set(forked.values())
        self._config_path = config_path
        self._channel = channel
        self._stopping = False
        self._last_spawn = 0.0
        #: What a replacement gets of the keyring object this process holds, or None
        #: (proxy/kms/keyring_handover.py). Set once this process serves.
        self.keyring_copy: Callable[[], KeyringCopy | None] = lambda: None

    @property
    def pids(self) -> list[int]:
        """Every live worker's process id (this process not included)."""
        return list(self._forked) + [p.pid for p in self._spawned]

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
                del self._forked[pid]
                gone += 1
                if not self._stopping:
                    log.error("worker %s exited (%s); starting another", pid, _describe(status))
        for proc in list(self._spawned):
            if proc.poll() is not None:
                del self._spawned[proc]
                gone += 1
                if not self._stopping:
                    log.error("worker %s exited (status %s); starting another", proc.pid, proc.returncode)
        return gone

    def _spawn(self, slot: int) -> None:
        if self._config_path is None:
            log.error("a worker died and cannot be replaced: sealgate was not started from a config file")
            return
        cmd = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(self._config_path), "--worker"]
        env = {**os.environ, **(self._channel.environment(slot) if self._channel is not None else {})}
        with ExitStack() as stack:
            copy = self.keyring_copy()
            fds: tuple[int, ...] = ()
            if copy is not None:
                try:
                    f = stack.enter_context(write_copy(copy))
                    fds, env[COPY_ENV] = (f.fileno(),), str(f.fileno())
                except OSError as exc:  # the replacement reads the keyring object itself
                    log.warning("cannot hand the keyring copy to a new worker: %s", exc)
            proc = subprocess.Popen(  # noqa: PLW1509
                cmd, stdin=subprocess.DEVNULL, env=env, preexec_fn=_prepare_worker, pass_fds=fds
            )
        self._spawned[proc] = slot
        self._last_spawn = time.monotonic()

    def _free_slot(self) -> int | None:
        used = set(self._forked.values()) | set(self._spawned.values())
        free = sorted(self._slots - used)
        return free[0] if free else None

    async def watch(self) -> None:
        """Replace dead workers until stopped (a task of the first process's event loop)."""
        while not self._stopping:
            await asyncio.sleep(WATCH_SECONDS)
            self._reap()
            if self._stopping:
                return
            slot = self._free_slot()
            if slot is not None and time.monotonic() - self._last_spawn >= WATCH_SECONDS:
                self._spawn(slot)

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
