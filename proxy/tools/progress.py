"""What the operator tools show while they run: a line of object counts (rewrap, copy) and byte
progress bars (offline encrypt/decrypt), both on stderr and only where they help."""

from __future__ import annotations

import sys
from typing import Any, Protocol

import click


class ProgressLine:
    """The progress line an operator tool keeps rewriting on a terminal's stderr:
    ``<verb> N (X MB), already done N, skipped N``. Call it with each object's outcome (`verb`,
    ``already`` or ``skipped``) and size; it prints nothing when stderr is not a terminal."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.counts = {verb: 0, "already": 0, "skipped": 0}
        self.bytes = 0
        self.tty = sys.stderr.isatty()

    def __call__(self, outcome: str, size: int) -> None:
        self.counts[outcome] += 1
        if outcome == self.verb:
            self.bytes += size
        if self.tty:
            click.echo(
                f"\r{self.verb} {self.counts[self.verb]} ({self.bytes / 1e6:.1f} MB), "
                f"already done {self.counts['already']}, skipped {self.counts['skipped']}",
                nl=False,
                err=True,
            )

    def end(self) -> None:
        """Finish the line (before the summary)."""
        if self.tty:
            click.echo("", err=True)

    def finish(self, summary: str, skipped: list[tuple[str, str]]) -> None:
        """End the line, print the run's `summary` and each skipped object (key: why) on stdout,
        and exit with status 1 when any was skipped."""
        self.end()
        click.echo(summary)
        for key, why in skipped:
            click.echo(f"  skipped {key}: {why}")
        if skipped:
            sys.exit(1)


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
