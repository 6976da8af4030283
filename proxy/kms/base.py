"""The keyring interface: make and unwrap per-object data keys under a master key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class DataKey:
    """A fresh data key: the plaintext (never leaves the process) and its wrapped form."""

    plaintext: bytes = field(repr=False)
    wrapped: bytes
    #: Stored in object metadata; names the master key (and version) that can unwrap `wrapped`.
    key_ref: str


class KeyringError(Exception):
    """A keyring refused or failed. `code`/`status` say how the client should see it."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class KeyUnavailable(KeyringError):
    """The key service cannot be reached or is throttling: 503, retry later."""

    def __init__(self, message: str) -> None:
        super().__init__("ServiceUnavailable", message, 503)


class KeyAccessDenied(KeyringError):
    """The key exists but may not be used for this (disabled, no permission, unknown key)."""

    def __init__(self, message: str) -> None:
        super().__init__("AccessDenied", message, 403)


class InvalidWrappedKey(KeyringError):
    """The wrapped key does not unwrap under this context: tampered or moved object."""

    def __init__(self, message: str) -> None:
        super().__init__("ObjectIntegrityError", message, 500)


class Keyring(Protocol):
    """A source of data keys. Encryption context entries are bound to the wrapped key."""

    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """A fresh 32-byte data key wrapped under master key `key_id` with `context`."""
        ...

    async def decrypt_data_key(self, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """Unwrap `wrapped` (made by this keyring under `key_ref`) with exactly `context`."""
        ...

    async def wrap_data_key(self, key_id: str, plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        """Wrap an existing data key under master key `key_id` with `context` (for copies)."""
        ...

    async def close(self) -> None:
        """Release clients and threads."""
        ...
