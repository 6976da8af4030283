"""The local files of `sealgate encrypt` / `decrypt`: outputs written as ``PATH.partial`` and
renamed only when complete, the checks on input and output paths, and the one-line error these
commands report."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Protocol

#: Bytes read from a file at a time.
CHUNK_SIZE = 1024 * 1024


class OfflineError(Exception):
    """A failure to report in one line (exit status 1)."""


class Readable(Protocol):
    """A binary file opened for reading."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class Output:
    """A file written as ``PATH.partial`` and renamed to ``PATH`` only by `commit`."""

    def __init__(self, path: Path, *, private: bool, force: bool) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        if path.exists() and not force:
            raise OfflineError(f"{path} already exists; use --force to replace it")
        if path.is_dir():
            raise OfflineError(f"{path} is a directory")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.partial, flags, 0o600 if private else 0o666)
        try:
            if private:
                # A leftover .partial from an earlier run keeps its mode through O_TRUNC.
                os.fchmod(fd, 0o600)
            self.file: IO[bytes] = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._remove()
            raise

    def _remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial)

    def commit(self) -> None:
        """Flush to disk and give the file its name."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        """Close and delete the partial file (idempotent)."""
        with contextlib.suppress(OSError):
            self.file.close()
        self._remove()


@contextlib.contextmanager
def outputs(*outs: Callable[[], Output]) -> Iterator[list[Output]]:
    """Open the outputs in order; on any failure (or interrupt) delete every partial file."""
    opened: list[Output] = []
    try:
        for make in outs:
            opened.append(make())
        yield opened
    except BaseException:
        for out in opened:
            out.discard()
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def check_paths(src: Path, *outs: Path) -> None:
    for out in outs:
        if _same_file(src, out):
            raise OfflineError(f"{out} is the input file itself")
    for i, a in enumerate(outs):
        for b in outs[i + 1 :]:
            if a.absolute() == b.absolute():
                raise OfflineError(f"{a} is named as two outputs")


def regular_size(f: IO[bytes]) -> int | None:
    st = os.fstat(f.fileno())
    return st.st_size if stat.S_ISREG(st.st_mode) else None
