"""What the operator tools show while they run: a bar of objects done out of objects listed,
with ETA (rewrap, copy, convert, gc; on a stderr that is not a terminal, the same as a plain line
now and then), and byte progress bars (offline encrypt/decrypt), both on stderr and only where
they help; and the listing fetched ahead that gives the bulk tools' totals."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Protocol, TypeVar

import click


class Tally:
    """How a bulk tool (rewrap, copy, convert, gc) shows its run.

    Progress on stderr: with `show` a tqdm bar of the objects done out of those listed so far
    (`found`: the total grows as listing pages arrive), rate, ETA and the outcome counts;
    with `show` None (the default) that bar on a terminal, and elsewhere (a log, a pipe) a
    plain line every `interval` seconds saying the same (`status`); with `show` False nothing.
    With `verbose` a line per object on stdout, and with `dry_run` a line per object the run
    would change; the bar is cleared around each. With `json` the caller prints its summary as
    JSON on stdout, so those lines go elsewhere: a line per object on stderr with `verbose`,
    and a dry run's objects into `would` (for the JSON) instead. Nothing else: the caller prints
    the summary."""

    def __init__(
        self,
        desc: str,
        *,
        show: bool | None = None,
        verbose: bool = False,
        dry_run: bool = False,
        json: bool = False,
        interval: float = 10.0,
        unit: str = "objects",
        sizes: bool = True,
    ) -> None:
        self.counts: dict[str, int] = {}
        self.bytes = 0
        self.listed = 0
        #: With `json` and `dry_run`: what each object the run would change was (`done`'s `item`).
        self.would: list[object] = []
        self.started = time.monotonic()
        self._desc, self._unit, self._sizes = desc, unit, sizes
        self._verbose, self._dry_run, self._json = verbose, dry_run, json
        self._bar: Any = None
        self._drawn = 0.0
        self._ticker: _Ticker | None = None
        terminal = sys.stderr.isatty()
        if show or (show is None and terminal):
            from tqdm import tqdm

            self._bar = tqdm(desc=desc, unit="obj", file=sys.stderr, total=0, leave=False, **_screen())
        elif show is None:
            self._ticker = _Ticker(interval, lambda: click.echo(self.status(), err=True))

    def found(self, n: int = 1) -> None:
        """`n` more objects were listed: the total grows."""
        self.listed += n
        if self._bar is not None:
            self._bar.total = self.listed
            now = time.monotonic()
            if now - self._drawn >= 0.5:  # a page of a listing is a thousand calls
                self._drawn = now
                self._bar.refresh()

    def done(self, outcome: str, line: str, *, size: int = 0, changes: bool = False, item: object = None) -> None:
        """One object finished with `outcome` (a count's name); `line` says so, printed with
        `verbose` (or with `dry_run` when it `changes` something). `size` counts as bytes moved
        when it `changes`; `item` is what the JSON of a dry run lists for it (default: `line`)."""
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if changes:
            self.bytes += size
        if self._dry_run and changes and self._json:
            self.would.append(line if item is None else item)
        if self._verbose or (self._dry_run and changes and not self._json):
            self.say(line)
        if self._bar is not None:
            self._bar.set_postfix_str(", ".join(f"{name} {n}" for name, n in self.counts.items()), refresh=False)
            self._bar.update(1)

    def say(self, line: str) -> None:
        """A line on stdout (on stderr with `json`) that does not break the bar."""
        if self._bar is None:
            click.echo(line, err=self._json)
        else:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr if self._json else sys.stdout)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def status(self) -> str:
        """Where the run is, in one line: ``rewrap: 1200/5000 objects (24%), 1.2 GB, ETA 3m10s
        (rewrapped 1150, already 50)``."""
        counts = dict(self.counts)  # a copy: the run goes on while this is read
        finished, listed = sum(counts.values()), self.listed
        said = f"{self._desc}: {finished}/{listed} {self._unit}"
        if listed:
            said += f" ({min(finished, listed) * 100 // listed}%)"
        if self._sizes:
            said += f", {human_bytes(self.bytes)}"
        if finished and listed >= finished:
            said += f", ETA {human_duration((listed - finished) * self.elapsed() / finished)}"
        else:
            said += ", ETA unknown"
        if counts:
            said += " (" + ", ".join(f"{name} {n}" for name, n in counts.items()) + ")"
        return said

    def close(self) -> None:
        """Stop the plain lines; show the bar's last state, then clear it (before the summary)."""
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
        if self._bar is not None:
            self._bar.refresh()
            self._bar.close()
            self._bar = None


class _Ticker:
    """Calls `tick` every `interval` seconds, from a thread of its own, until stopped: the plain
    progress lines come on time even while one large object takes minutes."""

    def __init__(self, interval: float, tick: Callable[[], None]) -> None:
        self._stopped = threading.Event()
        self._interval, self._tick = interval, tick
        self._thread = threading.Thread(target=self._run, name="progress-lines", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._tick()
            except (OSError, ValueError):  # stderr went away (a closed pipe): stop saying anything
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def human_bytes(n: int) -> str:
    """``0 B``, ``512 B``, ``1.2 kB``, ``3.4 GB`` (powers of 1000, as the bar's rate)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 999.95 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """``45s``, ``3m10s``, ``2h05m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _screen() -> dict[str, Any]:
    """tqdm's size arguments: the terminal's, followed as it changes; a terminal that reports no
    size (0 x 0, as a fresh pty) gets 80 x 24, since tqdm draws nothing in no columns or rows."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        size = os.terminal_size((0, 0))
    if size.columns and size.lines:
        return {"dynamic_ncols": True}
    return {"ncols": 80, "nrows": 24}


T = TypeVar("T")


class _End:
    pass


class Ahead(Generic[T]):
    """The items of `items` (a listing), fetched ahead by a task of their own while the caller
    works on earlier ones, each reported to `found` as it arrives (a `Tally`'s total); at most
    `depth` wait. An async context manager: leaving it stops the listing. An error of the
    listing is raised where its place in the order comes."""

    def __init__(
        self, items: AsyncIterator[T], found: Callable[[T], None] | None = None, *, depth: int = 10_000
    ) -> None:
        self._items = items
        self._found = found
        self._queue: asyncio.Queue[T | _End | BaseException] = asyncio.Queue(depth)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Ahead[T]:
        self._task = asyncio.create_task(self._fill())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})

    async def _fill(self) -> None:
        try:
            async for item in self._items:
                if self._found is not None:
                    self._found(item)
                await self._queue.put(item)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
            await self._queue.put(exc)
            return
        finally:
            close = getattr(self._items, "aclose", None)
            if close is not None:
                await close()
        await self._queue.put(_End())

    def __aiter__(self) -> Ahead[T]:
        return self

    async def __anext__(self) -> T:
        if self._task is None:
            raise RuntimeError("Ahead is iterated inside `async with` only")
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # iterated again: still at the end
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item


class Progress(Protocol):
    """What the file loops report to: bytes processed so far, in increments."""

    def update(self, n: int) -> None: ...


class NoProgress:
    """A progress report that shows nothing."""

    def update(self, n: int) -> None:
        pass


class Bars:
    """Makes a byte progress bar on stderr (tqdm) when `enabled`, else a silent one."""

    def __init__(self, enabled: bool | None, desc: str) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._desc = desc
        self._bars: list[Any] = []

    def __call__(self, total: int | None) -> Progress:
        if not self.enabled:
            return NoProgress()
        from tqdm import tqdm

        bar = tqdm(
            total=total,
            desc=self._desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )
        self._bars.append(bar)
        return _Bar(bar)

    def close(self) -> None:
        """Close every bar made."""
        for bar in self._bars:
            bar.close()
        self._bars.clear()


class _Bar:
    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def update(self, n: int) -> None:
        self._bar.update(n)
