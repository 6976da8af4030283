"""Two keyrings as one: the main keyring, and a previous one (``[kms.previous]``) of another
provider for reading what was written under it. Rewrap through this moves objects from the
previous keyring to the main one without re-encrypting bodies."""

from __future__ import annotations

from collections.abc import Mapping

from proxy.kms.base import DataKey, Keyring, KeyringError


def provider_of(key_ref: str) -> str:
    """The provider whose keyring made a stored key reference."""
    for provider in ("local", "pkcs11", "kmip"):
        if key_ref.startswith(provider + ":"):
            return provider
    return "aws-kms"  # a key ARN, or kms-rsa:<ARN>


class RoutingKeyring:
    """A `Keyring`: new data keys and wrapping from `main`; unwrapping by whichever of `main`
    and `previous` made the key reference (told apart by provider)."""

    def __init__(self, main: Keyring, previous: Keyring, previous_provider: str, previous_key: str) -> None:
        """Route references of `previous_provider` to `previous`, the rest to `main`;
        `previous_key` is the previous keyring's ``default_key`` (its readiness check)."""
        self.main = main
        self._previous = previous
        self._previous_provider = previous_provider
        self._previous_key = previous_key

    def __repr__(self) -> str:
        return f"RoutingKeyring({self.main!r}, previous={self._previous!r})"

    @property
    def previous(self) -> Keyring:
        """The keyring that only unwraps (``[kms.previous]``)."""
        return self._previous

    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """A fresh data key from the main keyring."""
        return await self.main.generate_data_key(key_id, context)

    async def wrap_data_key(self, key_id: str, plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        """Wrap under the main keyring's key `key_id` (copies, rewrap)."""
        return await self.main.wrap_data_key(key_id, plaintext, context)

    async def decrypt_data_key(self, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """Unwrap with the keyring whose provider made `key_ref`."""
        if provider_of(key_ref) == self._previous_provider:
            return await self._previous.decrypt_data_key(key_ref, wrapped, context)
        return await self.main.decrypt_data_key(key_ref, wrapped, context)

    async def ready(self, key_id: str) -> None:
        """The main keyring's readiness for `key_id` (the key new objects get), then the previous
        keyring's for its own default key: objects written under it must still open (its key
        service answers, its keyring object can be read)."""
        await self.main.ready(key_id)
        try:
            await self._previous.ready(self._previous_key)
        except KeyringError as exc:
            raise type(exc)(f"previous keyring ({self._previous_provider}): {exc.message}") from exc

    async def close(self) -> None:
        """Close both keyrings."""
        try:
            await self.main.close()
        finally:
            await self._previous.close()
