"""Master keys in a KMIP key manager as a keyring, through PyKMIP's client over mutual TLS.

The master keys never leave the key manager: each data key is wrapped with KMIP ``Encrypt``
and unwrapped with ``Decrypt`` (KMIP 1.4: AES, block cipher mode GCM, 16-byte tag), the
encryption context bound as the operations' Authenticated Encryption Additional Data. The
IV is made here (random, 12 bytes) and sent with the request. docs/KEYRINGS.md says what the
key manager must allow.

Key objects and versions
------------------------
``default_key`` (and bucket rules) name a key by its KMIP ``Name`` attribute, or by its Unique
Identifier when no object has that name. Every AES-256 symmetric key object with that name is a
version of the key; new data keys go under the most recently created one (``Locate`` answers
newest first) that is Active and has the Encrypt usage bit. ``sealgate keys rotate`` creates a
new object of the same name; the older ones keep decrypting while they stay Active. ``key_ref``
is ``kmip:<name>:<unique identifier>``.

Wrapped data key ::

    wrapped = iv (12 bytes) || KMIP Encrypt(key, iv, data key (32 bytes), aad) (32 bytes)
              || tag (16 bytes)                                         = 60 bytes
    aad     = proxy.kms.local.wrap_aad(key_ref, context)   (the local keyring's encoding)

So a wrapped key moved to another object, bucket, key reference or key object does not unwrap.

Connections and failures
------------------------
KMIP calls block: they run in a pool of ``connections`` threads, each with its own TLS
connection, opened on first use and again after any failure. The key manager's certificate must
chain to ``kmip_ca`` and name the endpoint's host. Unreachable, timed out, TLS refused, a
connection broken: `KeyUnavailable` (503). Unknown key, key not Active, usage bit or permission
missing: `KeyAccessDenied`. A Decrypt that fails with Cryptographic or General Failure (what
PyKMIP's server answers to a tag that does not verify): `InvalidWrappedKey`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from proxy.kms.base import DataKey, InvalidWrappedKey, KeyAccessDenied, KeyringError, KeyUnavailable
from proxy.kms.blocking import BlockingCalls
from proxy.kms.local import wrap_aad

REF_PREFIX = "kmip:"
DATA_KEY_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16
WRAPPED_SIZE = IV_SIZE + DATA_KEY_SIZE + TAG_SIZE
_NAME = re.compile(r"[A-Za-z0-9_./@+-]{1,64}")
_REF = re.compile(r"kmip:([A-Za-z0-9_./@+-]{1,64}):([^:\s]{1,128})")
_MAX_MESSAGE = 200

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KmipSettings:
    """Where the key manager is and how this gateway authenticates to it."""

    endpoint: str
    ca: Path
    client_cert: Path
    client_key: Path
    #: Longest wait for connecting or for one answer.
    timeout: float = 10.0
    #: Connections (and threads) per process.
    connections: int = 4


@dataclass(frozen=True)
class ManagedKey:
    """One version of a master key in the key manager (never its material)."""

    uid: str
    active: bool
    encrypts: bool
    decrypts: bool


def parse_key_ref(key_ref: str) -> tuple[str, str] | None:
    """(name, unique identifier) of a reference ``kmip:<name>:<uid>``, else None."""
    m = _REF.fullmatch(key_ref)
    return (m.group(1), m.group(2)) if m else None


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


class KmipKeyring:
    """A `Keyring` over AES-256 keys held by a KMIP server."""

    def __init__(self, settings: KmipSettings) -> None:
        """Talk to the key manager of `settings`; no connection opens before the first call."""
        self._settings = settings
        self._host, self._port = _host_port(settings.endpoint)
        self._calls = BlockingCalls("kmip", settings.connections)
        self._local = threading.local()
        self._generation = 0
        self._lock = threading.Lock()
        self._open: list[Any] = []  # every client opened, for close()
        # PyKMIP logs request details at debug level and warns of its own config file on every
        # connection; our errors say what failed, without either.
        logging.getLogger("kmip").setLevel(logging.ERROR)

    def __repr__(self) -> str:
        return f"KmipKeyring(endpoint={self._settings.endpoint!r})"

    # --- connections (in pool threads) ------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self._settings.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self._settings.client_cert), str(self._settings.client_key))
        return ctx

    def _client(self) -> Any:
        """This thread's open client."""
        mine = getattr(self._local, "client", None)
        if mine is not None and mine[0] == self._generation:
            return mine[1]
        from kmip import enums
        from kmip.pie.client import ProxyKmipClient

        # PyKMIP's own TLS set-up checks no host name: connect with ours (`_Connection`).
        # config_file: not PyKMIP's default files (/etc/pykmip/...), whose settings (credentials,
        # hosts) would mix into ours; everything it needs is given here.
        client = ProxyKmipClient(
            hostname=self._host, port=self._port, kmip_version=enums.KMIPVersion.KMIP_1_4, config_file=os.devnull
        )
        client.proxy = _connection(self._host, self._port, self._settings.timeout, self._context())
        client.open()
        with self._lock:
            self._open.append(client)
        self._local.client = (self._generation, client)
        return client

    def _drop_client(self) -> None:
        mine = getattr(self._local, "client", None)
        self._local.client = None
        if mine is not None:
            with self._lock:
                if mine[1] in self._open:
                    self._open.remove(mine[1])
            _close_quietly(mine[1])

    def _guarded(self, operation: str, key: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(client, *args)` with this thread's client; failures as keyring errors."""
        try:
            return fn(self._client(), *args)
        except KeyringError:
            raise
        except Exception as exc:
            error = self._translate(exc, operation, key)
            if isinstance(error, KeyUnavailable):
                self._drop_client()  # a connection that failed once is not trusted again
            raise error from None

    def _translate(self, exc: Exception, operation: str, key: str) -> KeyringError:
        from kmip import enums

        where = f"KMIP {operation} with key {key[:128]!r}"
        reason = getattr(exc, "reason", None)
        if isinstance(reason, enums.ResultReason):
            said = f"{reason.name}: {str(getattr(exc, 'message', ''))[:_MAX_MESSAGE]}"
            if operation == "Decrypt" and reason in (
                enums.ResultReason.CRYPTOGRAPHIC_FAILURE,
                enums.ResultReason.GENERAL_FAILURE,
            ):
                return InvalidWrappedKey(f"{where}: wrapped key does not unwrap with this encryption context")
            if reason == enums.ResultReason.GENERAL_FAILURE:
                return KeyUnavailable(f"{where}: key manager failed ({said})")
            return KeyAccessDenied(f"{where}: refused ({said})")
        if isinstance(exc, OSError | EOFError | ConnectionError):
            return KeyUnavailable(f"{where}: key manager unreachable ({type(exc).__name__})")
        # PyKMIP's own errors (malformed answers, a connection it considers closed).
        return KeyUnavailable(f"{where}: key manager call failed ({type(exc).__name__})")

    async def _run(self, operation: str, key: str, fn: Callable[..., T], *args: Any) -> T:
        return await self._calls.run(self._guarded, operation, key, fn, *args)

    # --- key objects ------------------------------------------------------------------------

    @staticmethod
    def _describe(client: Any, uid: str) -> ManagedKey | None:
        """Version `uid`, or None when it is not an AES-256 key."""
        from kmip import enums

        _, attributes = client.get_attributes(
            uid, ["State", "Cryptographic Usage Mask", "Cryptographic Algorithm", "Cryptographic Length"]
        )
        values = {a.attribute_name.value: a.attribute_value.value for a in attributes}
        if values.get("Cryptographic Algorithm") != enums.CryptographicAlgorithm.AES:
            return None
        if values.get("Cryptographic Length") != 256:
            return None
        mask = int(values.get("Cryptographic Usage Mask") or 0)
        return ManagedKey(
            uid=uid,
            active=values.get("State") == enums.State.ACTIVE,
            encrypts=bool(mask & enums.CryptographicUsageMask.ENCRYPT.value),
            decrypts=bool(mask & enums.CryptographicUsageMask.DECRYPT.value),
        )

    @staticmethod
    def _locate(client: Any, name: str) -> list[str]:
        from kmip import enums

        attribute = client.attribute_factory.create_attribute(enums.AttributeType.NAME, name)
        return [str(uid) for uid in client.locate(attributes=[attribute])]

    def _each_version(self, client: Any, name: str) -> Iterator[ManagedKey]:
        """The versions of key `name`, newest first (a unique identifier names one version),
        each described as it is reached."""
        if not _NAME.fullmatch(name):
            raise KeyAccessDenied(f"{name[:80]!r} is not a KMIP key name this keyring uses (no colons)")
        uids = self._locate(client, name) or [name]
        for uid in uids:
            try:
                described = self._describe(client, uid)
            except Exception as exc:
                error = self._translate(exc, "GetAttributes", name)
                if isinstance(error, KeyAccessDenied) and uid == name:
                    raise KeyAccessDenied(f"no KMIP key named {name!r} (nor with that unique identifier)") from None
                raise error from None
            if described is not None:
                yield described

    def _versions(self, client: Any, name: str) -> list[ManagedKey]:
        return list(self._each_version(client, name))

    def _current(self, client: Any, name: str) -> ManagedKey:
        """The newest usable version: Get Attributes stops there, however many older ones exist."""
        seen = False
        for version in self._each_version(client, name):
            if version.active and version.encrypts:
                return version
            seen = True
        if not seen:
            raise KeyAccessDenied(f"no AES-256 KMIP key named {name!r}")
        raise KeyAccessDenied(f"no version of KMIP key {name!r} is Active with the Encrypt usage bit")

    # --- wrap and unwrap (in pool threads) --------------------------------------------------

    @staticmethod
    def _params() -> Any:
        from kmip import enums
        from kmip.core.attributes import CryptographicParameters

        return CryptographicParameters(
            block_cipher_mode=enums.BlockCipherMode.GCM,
            cryptographic_algorithm=enums.CryptographicAlgorithm.AES,
            tag_length=TAG_SIZE,
        )

    def _wrap_sync(self, client: Any, name: str, plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        from kmip import enums
        from kmip.core.messages import payloads

        current = self._current(client, name)
        key_ref = f"{REF_PREFIX}{name}:{current.uid}"
        iv = os.urandom(IV_SIZE)
        request = payloads.EncryptRequestPayload(
            unique_identifier=current.uid,
            cryptographic_parameters=self._params(),
            data=plaintext,
            iv_counter_nonce=iv,
            auth_additional_data=wrap_aad(key_ref, context),
        )
        answer = client.proxy.send_request_payload(enums.Operation.ENCRYPT, request)
        sealed, tag = answer.data, answer.auth_tag
        if not isinstance(sealed, bytes) or len(sealed) != DATA_KEY_SIZE or not isinstance(tag, bytes):
            raise KeyUnavailable(f"KMIP Encrypt with key {name!r}: malformed answer")
        if len(tag) != TAG_SIZE:
            raise KeyUnavailable(f"KMIP Encrypt with key {name!r}: the key manager made no 16-byte GCM tag")
        return DataKey(plaintext=plaintext, wrapped=iv + sealed + tag, key_ref=key_ref)

    @staticmethod
    def _unwrap_sync(client: Any, uid: str, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        from kmip import enums
        from kmip.core.messages import payloads

        request = payloads.DecryptRequestPayload(
            unique_identifier=uid,
            cryptographic_parameters=KmipKeyring._params(),
            data=wrapped[IV_SIZE : IV_SIZE + DATA_KEY_SIZE],
            iv_counter_nonce=wrapped[:IV_SIZE],
            auth_additional_data=wrap_aad(key_ref, context),
            auth_tag=wrapped[IV_SIZE + DATA_KEY_SIZE :],
        )
        plaintext = client.proxy.send_request_payload(enums.Operation.DECRYPT, request).data
        if not isinstance(plaintext, bytes) or len(plaintext) != DATA_KEY_SIZE:
            raise InvalidWrappedKey(f"KMIP Decrypt with key {key_ref!r}: not a 32-byte data key")
        return plaintext

    # --- the Keyring interface --------------------------------------------------------------

    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """A fresh data key (from the OS's generator) wrapped by the key manager under the
        current version of key `key_id` with `context`."""
        return await self._run("Encrypt", key_id, self._wrap_sync, key_id, os.urandom(DATA_KEY_SIZE), context)

    async def wrap_data_key(self, key_id: str, plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        """Wrap an existing data key under the current version of `key_id` (copies, rewrap)."""
        return await self._run("Encrypt", key_id, self._wrap_sync, key_id, plaintext, context)

    async def decrypt_data_key(self, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """KMIP Decrypt of `wrapped` with the key object `key_ref` names and `context`."""
        parsed = parse_key_ref(key_ref)
        if parsed is None:
            raise InvalidWrappedKey(f"{key_ref[:100]!r} is not a KMIP key reference")
        if len(wrapped) != WRAPPED_SIZE:
            raise InvalidWrappedKey(f"wrapped key under {key_ref} has the wrong length")
        return await self._run("Decrypt", key_ref, self._unwrap_sync, parsed[1], key_ref, wrapped, context)

    async def ready(self, key_id: str) -> None:
        """KeyringError unless the key manager answers and key `key_id` has a usable version."""
        await self._run("Locate", key_id, self._current, key_id)

    async def close(self) -> None:
        """Wait for calls in flight and close the connections."""
        self._generation += 1  # threads' clients are stale from now on

        def close_all() -> None:
            with self._lock:
                clients, self._open = self._open, []
            for client in clients:
                _close_quietly(client)

        await self._calls.close(close_all)

    # --- administration (sealgate keys; blocking) -------------------------------------------

    def _admin(self, operation: str, key: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return self._guarded(operation, key, fn, *args)
        finally:
            self._drop_client()

    def versions(self, name: str) -> list[ManagedKey]:
        """The versions of key `name`, newest first."""
        return self._admin("Locate", name, self._versions, name)

    def create_key(self, name: str, *, rotate: bool = False) -> ManagedKey:
        """Create (and activate) AES-256 key `name`, or with `rotate` a new version of it."""

        def create(client: Any) -> ManagedKey:
            from kmip import enums

            if not _NAME.fullmatch(name):
                raise KeyAccessDenied(f"{name[:80]!r}: a key name is 1-64 letters, digits and _./@+-")
            existing = self._locate(client, name)
            if rotate and not existing:
                raise KeyAccessDenied(f"no KMIP key named {name!r} to rotate")
            if not rotate and existing:
                raise KeyAccessDenied(f"the key manager already has a key named {name!r}")
            if rotate:
                # The newest object is the current version, and KMIP dates have whole seconds:
                # the new one must not share the second of the one it replaces.
                time.sleep(1.05)
            masks = [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]
            uid = str(client.create(enums.CryptographicAlgorithm.AES, 256, name=name, cryptographic_usage_mask=masks))
            client.activate(uid)
            described = self._describe(client, uid)
            assert described is not None
            return described

        return self._admin("Create", name, create)


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing what may already be broken
        log.debug("closing a KMIP connection failed")


def _connection(host: str, port: int, timeout: float, context: ssl.SSLContext) -> Any:
    """A PyKMIP protocol client whose `open` connects over `context` (host name checked)."""
    from kmip import enums
    from kmip.services.kmip_client import KMIPProxy
    from kmip.services.kmip_protocol import KMIPProtocol

    class _Connection(KMIPProxy):  # type: ignore[misc]
        def open(self) -> None:
            raw = socket.create_connection((host, port), timeout=timeout)
            try:
                self.socket = context.wrap_socket(raw, server_hostname=host)
            except BaseException:
                raw.close()
                raise
            self.protocol = KMIPProtocol(self.socket)

    return _Connection(
        host=host, port=port, timeout=timeout, kmip_version=enums.KMIPVersion.KMIP_1_4, config_file=os.devnull
    )
