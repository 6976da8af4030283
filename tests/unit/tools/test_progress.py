"""What the bulk tools show while they run: the bar's counts, the per-object lines, the plain
progress lines off a terminal, and the listing fetched ahead that gives them a total."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import pytest

from proxy.tools.progress import Ahead, Tally


def test_tally_counts_and_prints_lines_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    quiet = Tally("copy", show=False)
    quiet.found(3)
    quiet.done("copied", "copied s3://a/1", size=2_000_000, changes=True)
    quiet.done("already", "already s3://a/2", size=10)
    quiet.close()
    assert capsys.readouterr() == ("", "")
    assert quiet.counts == {"copied": 1, "already": 1} and quiet.bytes == 2_000_000 and quiet.listed == 3

    dry = Tally("copy", show=False, dry_run=True)
    dry.done("would copy", "would copy s3://a/1", changes=True)
    dry.done("already", "already s3://a/2")
    verbose = Tally("copy", show=False, verbose=True)
    verbose.done("already", "already s3://a/2")
    assert capsys.readouterr().out == "would copy s3://a/1\nalready s3://a/2\n"


def test_off_a_terminal_a_plain_line_now_and_then_says_where_the_run_is(capsys: pytest.CaptureFixture[str]) -> None:
    tally = Tally("rewrap", interval=0.05)  # capsys's stderr is no terminal
    tally.started -= 60  # as if the 1200 below took a minute: 3800 more take 3m10s
    tally.found(5000)
    for _ in range(1200):
        tally.done("rewrapped", "", size=1_000_000, changes=True)
    time.sleep(0.3)
    tally.close()
    said = capsys.readouterr()
    assert said.out == ""
    lines = said.err.splitlines()
    shape = r"rewrap: 1200/5000 objects \(24%\), 1\.2 GB, ETA 3m1[01]s \(rewrapped 1200\)"  # 3m10s, and a moment
    assert len(lines) >= 2 and all(re.fullmatch(shape, line) for line in lines), lines
    time.sleep(0.1)
    assert capsys.readouterr() == ("", "")  # closed: no more lines

    gc = Tally("gc", interval=0.02, unit="items", sizes=False)
    time.sleep(0.1)
    gc.close()
    assert capsys.readouterr().err.splitlines()[0] == "gc: 0/0 items, ETA unknown"
    for silent in (Tally("copy", show=False, interval=0.01), Tally("copy", interval=10)):
        time.sleep(0.1)
        silent.close()
    assert capsys.readouterr() == ("", "")


def test_sizes_and_durations_read_as_people_write_them() -> None:
    from proxy.tools.progress import human_bytes, human_duration

    assert [human_bytes(n) for n in (0, 999, 1000, 1_234_567, 999_999_999, 12 * 10**12)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "1.2 MB",
        "1.0 GB",
        "12.0 TB",
    ]
    assert [human_duration(s) for s in (0.4, 59, 190, 3599, 7500)] == ["0s", "59s", "3m10s", "59m59s", "2h05m"]


def test_ahead_lists_in_order_reports_each_item_and_raises_where_the_listing_failed() -> None:
    async def listing(fail_after: int | None) -> AsyncIterator[int]:
        for i in range(5):
            if i == fail_after:
                raise LookupError("page 2 failed")
            await asyncio.sleep(0)
            yield i

    async def run(fail_after: int | None) -> tuple[list[int], list[int], BaseException | None]:
        found: list[int] = []
        got: list[int] = []
        try:
            async with Ahead(listing(fail_after), found.append, depth=2) as items:
                async for item in items:
                    got.append(item)
        except LookupError as exc:
            return found, got, exc
        return found, got, None

    assert asyncio.run(run(None)) == ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], None)
    found, got, error = asyncio.run(run(3))
    assert got == [0, 1, 2] and found == [0, 1, 2] and isinstance(error, LookupError)


def test_leaving_ahead_early_stops_the_listing() -> None:
    listed: list[int] = []

    async def endless() -> AsyncIterator[int]:
        i = 0
        while True:
            await asyncio.sleep(0)
            yield i
            i += 1

    async def run() -> int:
        async with Ahead(endless(), listed.append, depth=10) as items:
            async for item in items:
                if item == 3:
                    break
        seen = len(listed)
        await asyncio.sleep(0.05)
        return seen

    assert asyncio.run(run()) == len(listed) <= 3 + 10 + 1
