"""The batching log handler: every line arrives, in order, at the latest one loop iteration late."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Iterator

import pytest

from proxy.logs import BatchingStreamHandler, JsonFormatter


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO, BatchingStreamHandler]]:
    out = io.StringIO()
    handler = BatchingStreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("sealgate.test-logs")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        yield log, out, handler
    finally:
        log.removeHandler(handler)


def test_lines_of_one_loop_iteration_are_written_together(
    logger: tuple[logging.Logger, io.StringIO, BatchingStreamHandler],
) -> None:
    log, out, _ = logger

    async def serve() -> list[str]:
        seen = []
        for i in range(3):
            log.info("request %d", i)
        seen.append(out.getvalue())  # nothing yet: the iteration has not ended
        await asyncio.sleep(0)
        seen.append(out.getvalue())
        log.info("request 3")
        log.warning("backend slow")  # a warning goes out at once, with what was gathered
        seen.append(out.getvalue())
        return seen

    before, after, warned = asyncio.run(serve())
    assert before == ""
    assert after == "INFO request 0\nINFO request 1\nINFO request 2\n"
    assert warned == after + "INFO request 3\nWARNING backend slow\n"


def test_without_a_loop_lines_are_written_at_once(
    logger: tuple[logging.Logger, io.StringIO, BatchingStreamHandler],
) -> None:
    log, out, _ = logger
    log.info("from a thread or a tool")
    assert out.getvalue() == "INFO from a thread or a tool\n"


def test_flush_writes_what_is_gathered(logger: tuple[logging.Logger, io.StringIO, BatchingStreamHandler]) -> None:
    """logging.shutdown() at exit flushes: a loop that stops early loses no line."""
    log, out, handler = logger

    async def last_words() -> None:
        log.info("last request")
        handler.flush()
        assert out.getvalue() == "INFO last request\n"

    asyncio.run(last_words())
    assert out.getvalue() == "INFO last request\n"  # the scheduled write found nothing left


def test_json_lines() -> None:
    formatter = JsonFormatter()
    record = logging.makeLogRecord(
        {"name": "sealgate.access", "levelno": 20, "levelname": "INFO", "msg": "a %s", "args": ("b",)}
    )
    doc = json.loads(formatter.format(record))
    assert doc["message"] == "a b" and doc["level"] == "info" and doc["logger"] == "sealgate.access"


def test_a_loop_closed_before_its_write_holds_back_nothing(
    logger: tuple[logging.Logger, io.StringIO, BatchingStreamHandler],
) -> None:
    log, out, _ = logger
    loop = asyncio.new_event_loop()

    async def stopped_early() -> None:
        log.info("from the first loop")
        loop.stop()  # the loop ends before it runs the queued write

    with contextlib.suppress(RuntimeError):  # "stopped before Future completed", on some versions
        loop.run_until_complete(stopped_early())
    loop.close()
    assert out.getvalue() == ""

    async def next_loop() -> None:
        log.info("from the second loop")
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    assert out.getvalue() == "INFO from the first loop\nINFO from the second loop\n"


def test_plain_lines_cannot_be_forged_or_split() -> None:
    """A decoded %0A (or any control character) in what a request names is written as an
    escape: one request, one log line (issue 19)."""
    import io
    import logging

    from proxy.logs import PlainFormatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(PlainFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("sealgate.test.forging")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("GET /bkt/%s 404", "a\n2026-12-01 INFO sealgate.access: FORGED 200\r\x1b[2K\u2028")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert text.count("\n") == 1 and "\r" not in text and "\x1b" not in text and "\u2028" not in text
    assert "a\\x0a2026-12-01 INFO sealgate.access: FORGED 200\\x0d\\x1b[2K\\u2028 404" in text


def test_log_limit_lets_a_few_lines_through_and_counts_the_rest() -> None:
    from proxy.logs import LogLimit

    now = [0.0]
    limit = LogLimit(lines=2, seconds=60.0, clock=lambda: now[0])
    assert [limit.admit("a") for _ in range(5)] == [0, 0, None, None, None]
    assert limit.admit("b") == 0  # each kind has its own allowance
    now[0] = 59.9
    assert limit.admit("a") is None
    now[0] = 60.0
    assert limit.admit("a") == 4  # the next window's first line tells what was left out
    assert limit.admit("a") == 0
    assert limit.admit("a") is None


def test_log_limit_appends_the_count_to_the_line(caplog: pytest.LogCaptureFixture) -> None:
    from proxy.logs import LogLimit

    now = [0.0]
    limit = LogLimit(lines=1, seconds=10.0, clock=lambda: now[0])
    log = logging.getLogger("sealgate.test-limit")
    caplog.set_level(logging.INFO, logger="sealgate.test-limit")
    for peer in ("a", "b", "c"):
        limit.log(log, logging.INFO, "kind", "from %s", peer)
    now[0] = 10.0
    limit.log(log, logging.INFO, "kind", "from %s", "d")
    assert [r.getMessage() for r in caplog.records] == ["from a", "from d (2 more like this not logged)"]
