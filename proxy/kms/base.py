"""The keyring interface: make and unwrap per-object data keys under a master key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol


@dataclass(frozen=True)
class DataKey:
    """A fresh data key: the plaintext (never leaves the process) and its wrapped form."""

    plaintext: bytes = field(repr=False)
    wrapped: bytes
    #: Stored in object metadata; names the master key (and version) that can unwrap `wrapped`.
    key_ref: str


class KeyringError(Exception):
    """A keyring refused or failed; the subclass says how.

    No HTTP here: what a client sees is decided above the keyrings (proxy.store.errors.keyring_error).
    """

    #: The failure's stable name: the reason of its audit records and the label of its KMS call
    #: metrics. The names are those audit logs have always held.
    code: ClassVar[str] = "KeyringError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KeyUnavailable(KeyringError):
    """The key service cannot be reached or is throttling (or the audit log cannot be written): retry later."""

    code = "ServiceUnavailable"


class KeyAccessDenied(KeyringError):
    """The key exists but may not be used for this (disabled, no permission, unknown key)."""

    code = "AccessDenied"


class InvalidWrappedKey(KeyringError):
    """The wrapped key does not unwrap under this context: tampered or moved object."""

    code = "ObjectIntegrityError"


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

    async def ready(self, key_id: str) -> None:
        """KeyringError unless master key `key_id` can be used now (readiness; not a key use)."""
        ...

    async def close(self) -> None:
        """Release clients and threads."""
        ...
