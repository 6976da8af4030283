"""The checksums S3 clients send (x-amz-checksum-*): incremental, base64 of the big-endian digest."""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import TYPE_CHECKING, Protocol

from proxy.s3.errors import S3Error

if TYPE_CHECKING:
    from types import ModuleType

ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


class Checksum(Protocol):
    """An incremental checksum."""

    def update(self, data: bytes | bytearray | memoryview) -> None: ...

    def digest(self) -> bytes: ...


_crt: ModuleType | None = None


def _awscrt() -> ModuleType:
    """awscrt's checksums, imported on first use: awscrt costs about 7 MiB of memory in every
    worker, and only a request that uses CRC32C or CRC64NVME needs it."""
    global _crt
    if _crt is None:
        from awscrt import checksums

        _crt = checksums
    return _crt


class _Crc:
    def __init__(self, name: str) -> None:
        self._value = 0
        self._name = name
        if name == "crc32" or name == "crc32c":
            self._size = 4
        else:
            self._size = 8

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._name == "crc32":
            self._value = zlib.crc32(data, self._value)
        else:
            crt = _awscrt()
            raw = bytes(data) if isinstance(data, memoryview) else data
            step = crt.crc32c if self._name == "crc32c" else crt.crc64nvme
            self._value = step(raw, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._size, "big")


def new_checksum(algorithm: str) -> Checksum:
    """A fresh checksum for an S3 algorithm name (any case); InvalidRequest if unsupported."""
    name = algorithm.strip().lower()
    if name in ("crc32", "crc32c", "crc64nvme"):
        return _Crc(name)
    if name == "sha1":
        return hashlib.sha1(usedforsecurity=False)
    if name == "sha256":
        return hashlib.sha256()
    raise S3Error("InvalidRequest", f"Checksum algorithm {algorithm!r} is not supported.")


def b64(checksum: Checksum) -> str:
    """The value as S3 writes it in headers and trailers."""
    return base64.b64encode(checksum.digest()).decode("ascii")


def header_name(algorithm: str) -> str:
    """e.g. x-amz-checksum-crc32."""
    return f"x-amz-checksum-{algorithm.strip().lower()}"
