"""Log output: plain or JSON lines on stderr, written a loop iteration at a time.

Writing each access-log line on its own cost a request about 20 µs under load here (a write
to stderr per line), 5% of a small request's CPU. On the event loop's thread, lines are
therefore gathered and written together once the loop has run the callbacks that are ready,
a fraction of a millisecond later. Warnings and errors, lines from other threads, and
everything when no loop runs are written at once; anything still gathered is written when
logging shuts down (at exit) or is flushed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


#: Control characters (and Unicode line separators) a message could use to forge or hide lines.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {0x85: "\\x85", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class PlainFormatter(logging.Formatter):
    """Text lines whose message can never be more than one line: control characters in it (a
    decoded ``%0A`` in an object key, say) are written as escapes, so no request can forge or
    split a log line. Tracebacks keep their own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = record.message.translate(_CONTROLS)
        return super().formatMessage(record)


class BatchingStreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that writes the INFO/DEBUG lines of one event-loop iteration together."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        #: The loop that has a write of the gathered lines queued (a loop closed before it ran
        #: the write does not hold back the lines of the next one).
        self._scheduled: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - as StreamHandler: report, never raise into the caller
            self.handleError(record)
            return
        self._pending.append(line)
        loop: asyncio.AbstractEventLoop | None = None
        if record.levelno < logging.WARNING:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        if loop is None or loop.is_closed():
            self._write_pending()
        elif self._scheduled is not loop:
            self._scheduled = loop
            loop.call_soon(self._flush_from_loop)

    def _flush_from_loop(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = None
            self._write_pending()

    def _write_pending(self) -> None:
        """Write what is gathered (the caller holds the handler's lock)."""
        if not self._pending:
            return
        data = "".join(self._pending)
        self._pending.clear()
        try:
            self.stream.write(data)
            self.stream.flush()
        except Exception:  # noqa: BLE001 - a broken stderr must not take requests down
            self.handleError(logging.makeLogRecord({"msg": "log write failed"}))

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
        super().flush()


@dataclass
class _Window:
    start: float
    lines: int = 0
    dropped: int = 0


class LogLimit:
    """At most `lines` log lines of one kind per `seconds`, for events anyone on the network can
    cause (a flood of bad handshakes must not fill the disk); the lines beyond are counted, and
    the count is told with the next line of that kind let through."""

    def __init__(self, lines: int = 5, seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.lines = lines
        self.seconds = seconds
        self._clock = clock
        self._kinds: dict[str, _Window] = {}

    def admit(self, kind: str) -> int | None:
        """None: leave this line out; otherwise how many lines of `kind` were left out before it."""
        now = self._clock()
        window = self._kinds.get(kind)
        if window is None or now - window.start >= self.seconds:
            dropped = window.dropped if window is not None else 0
            window = self._kinds[kind] = _Window(now, dropped=dropped)
        if window.lines >= self.lines:
            window.dropped += 1
            return None
        window.lines += 1
        dropped, window.dropped = window.dropped, 0
        return dropped

    def log(self, logger: logging.Logger, level: int, kind: str, message: str, *args: object) -> None:
        """`logger.log(level, message, *args)` unless `kind` is over its limit; the line says how
        many of its kind were left out before it."""
        dropped = self.admit(kind)
        if dropped is None:
            return
        if dropped:
            message += f" ({dropped} more like this not logged)"
        logger.log(level, message, *args, stacklevel=2)


def setup_logging(verbose: bool, json_logs: bool = False, *, quiet: bool = False) -> None:
    """Root logging for `sealgate serve` (and quickstart): stderr, plain or JSON lines; INFO,
    DEBUG when `verbose`, WARNING when `quiet`."""
    handler = BatchingStreamHandler()
    if json_logs:
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, handlers=[handler])
    # botocore logs request details (headers) at DEBUG; never let them through.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
