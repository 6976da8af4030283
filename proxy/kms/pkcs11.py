"""Master keys on a PKCS#11 token (an HSM, SoftHSM) as a keyring, through python-pkcs11.

The master keys never leave the token: each data key is wrapped and unwrapped by the token
with ``CKM_AES_GCM`` under an AES-256 secret key object, the encryption context bound as AAD.
docs/KEYRINGS.md says what the token must allow.

Key objects and versions
------------------------
A master key is every AES secret key object whose ``CKA_LABEL`` is the key's name; ``CKA_ID``
holds its version in ASCII decimal (``b"1"``, ``b"2"``, ...; an empty ``CKA_ID`` counts as
version 1, so a key made by another tool without an id works). Objects with another ``CKA_ID``
are not versions of the key and are ignored. New data keys go under the highest version;
``sealgate keys rotate`` adds one, and older versions keep unwrapping. ``key_ref`` is
``pkcs11:<label>:<version>``.

Wrapped data key ::

    wrapped = iv (12 bytes, random) || CKM_AES_GCM(key object, iv, data key (32 bytes), aad,
                                                   128-bit tag)
            = 12 + 32 + 16 = 60 bytes
    aad     = proxy.kms.local.wrap_aad(key_ref, context)   (the local keyring's encoding)

So a wrapped key moved to another object, bucket, key reference or version does not unwrap.

Sessions and failures
---------------------
PKCS#11 calls block: they run in a pool of ``sessions`` threads, each with a session of its
own, opened on first use after one login session (the token's login state is shared by every
session of the process). A token that is absent or gone, a module that does not load, a broken
session: `KeyUnavailable` (503), and the next call opens everything afresh. A wrong or locked
PIN: `KeyAccessDenied`, and no further login is tried until the keyring is made again (a
restart), so a wrong PIN cannot run down the token's retry counter.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from proxy.kms.base import DataKey, InvalidWrappedKey, KeyAccessDenied, KeyUnavailable
from proxy.kms.blocking import BlockingCalls
from proxy.kms.local import wrap_aad

REF_PREFIX = "pkcs11:"
DATA_KEY_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16
WRAPPED_SIZE = IV_SIZE + DATA_KEY_SIZE + TAG_SIZE
_REF = re.compile(r"pkcs11:([A-Za-z0-9_./@+-]{1,64}):([1-9][0-9]{0,8})")
_LABEL = re.compile(r"[A-Za-z0-9_./@+-]{1,64}")

log = logging.getLogger(__name__)
T = TypeVar("T")

# python-pkcs11's exception names, by what they mean for a caller.
_PIN_ERRORS = frozenset(
    {"PinIncorrect", "PinInvalid", "PinLenRange", "PinLocked", "PinExpired", "UserPinNotInitialized"}
)
_DENIED_ERRORS = frozenset({"MechanismInvalid", "MechanismParamInvalid", "KeyTypeInconsistent", "KeySizeRange"})
#: From C_Decrypt with a well-formed request: the tag did not verify (SoftHSM says GeneralError).
_UNWRAP_ERRORS = frozenset(
    {"EncryptedDataInvalid", "EncryptedDataLenRange", "GeneralError", "FunctionFailed", "DataInvalid", "DataLenRange"}
)


class PinUnavailable(RuntimeError):
    """The configured PIN cannot be read (unset variable, missing or readable-by-others file)."""


def pin_from(env: str | None, file: Path | None) -> str:
    """The token's user PIN from environment variable `env`, else from `file` (mode 0600; one
    trailing newline stripped)."""
    if env:
        value = os.environ.get(env)
        if value:
            return value
        raise PinUnavailable(f"no PKCS#11 PIN: environment variable {env} is unset or empty")
    if file is None:
        raise PinUnavailable("no PKCS#11 PIN configured")
    try:
        st = file.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PinUnavailable(f"PIN file {file} is readable by others: chmod 600 it")
        text = file.read_text("utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        raise PinUnavailable(f"PIN file {file} cannot be read ({type(exc).__name__})") from None
    if not text:
        raise PinUnavailable(f"PIN file {file} is empty")
    return text


def parse_key_ref(key_ref: str) -> tuple[str, int] | None:
    """(label, version) of a reference ``pkcs11:<label>:<version>``, else None."""
    m = _REF.fullmatch(key_ref)
    return (m.group(1), int(m.group(2))) if m else None


def _version_of(object_id: bytes) -> int | None:
    if not object_id:
        return 1
    text = object_id.decode("ascii", "replace")
    return int(text) if text.isdigit() and not text.startswith("0") and len(text) <= 9 else None


@dataclass(frozen=True)
class TokenKey:
    """A master key on the token (never its material)."""

    label: str
    versions: tuple[int, ...]
    current: int
    #: Whether the current version may encrypt (CKA_ENCRYPT) and any version decrypt (CKA_DECRYPT).
    encrypts: bool
    decrypts: bool


_module_locks: dict[str, threading.RLock] = {}
_module_locks_guard = threading.Lock()


def module_lock(module: str) -> threading.RLock:
    """The lock every call into PKCS#11 module `module` holds, one per process.

    python-pkcs11 initialises a module with ``C_Initialize(NULL)``, which tells it (PKCS#11
    §5.4) that the application makes no concurrent calls; SoftHSM then runs without mutexes,
    and concurrent calls crash it. So calls are serialised here; each pool thread still keeps
    its own session, opened once."""
    with _module_locks_guard:
        return _module_locks.setdefault(module, threading.RLock())


def _name(exc: BaseException) -> str:
    return type(exc).__name__


class Pkcs11Keyring:
    """A `Keyring` over AES-256 key objects on one PKCS#11 token."""

    def __init__(self, module: str, token_label: str, pin: str, *, sessions: int = 4, timeout: float = 30.0) -> None:
        """Use token `token_label` of PKCS#11 module `module` with user PIN `pin`, with at most
        `sessions` sessions (and threads); a call waiting longer than `timeout` seconds fails
        (KeyUnavailable). Nothing is loaded before the first call."""
        self._module = module
        self._token_label = token_label
        self._pin = pin
        self._calls = BlockingCalls("pkcs11", sessions, timeout)
        self._lock = module_lock(module)
        self._token: Any = None
        self._login: Any = None
        self._sessions: list[Any] = []
        self._generation = 0
        self._local = threading.local()
        #: Set by a refused login; every later call fails with it, without trying the PIN again.
        self._pin_refused: str | None = None

    def __repr__(self) -> str:
        return f"Pkcs11Keyring(module={self._module!r}, token={self._token_label!r})"

    # --- sessions (in pool threads) ---------------------------------------------------------

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` (in a pool thread) with the token's other errors as `KeyUnavailable`."""
        import pkcs11

        with self._lock:
            try:
                return fn(*args)
            except pkcs11.PKCS11Error as exc:
                # Whatever broke, start afresh next time: a session or login that failed once is suspect.
                self._reset()
                raise KeyUnavailable(f"PKCS#11 token {self._token_label!r}: {_name(exc)}") from None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._calls.run(self._guarded, fn, *args)

    def _open_token(self) -> Any:
        import pkcs11

        try:
            lib = pkcs11.lib(self._module)
        except pkcs11.PKCS11Error as exc:
            raise KeyUnavailable(f"PKCS#11 module {self._module} does not load: {str(exc)[:200]}") from None
        try:
            return lib.get_token(token_label=self._token_label)
        except (pkcs11.NoSuchToken, pkcs11.TokenNotPresent, pkcs11.TokenNotRecognised) as exc:
            raise KeyUnavailable(f"no PKCS#11 token labelled {self._token_label!r} ({_name(exc)})") from None

    def _logged_in(self) -> Any:
        """The token, logged in (once per process and keyring)."""
        import pkcs11

        if self._pin_refused is not None:
            raise KeyAccessDenied(self._pin_refused)
        if self._login is not None:
            return self._token
        token = self._open_token()
        try:
            self._login = token.open(user_pin=self._pin)
        except pkcs11.UserAlreadyLoggedIn:
            # Another keyring of this process on this token logged in (an operator tool run
            # in-process next to a server): the login is per process, so it serves us too.
            self._login = token.open()
        except pkcs11.PKCS11Error as exc:
            if _name(exc) not in _PIN_ERRORS:
                raise
            self._pin_refused = (
                f"PKCS#11 token {self._token_label!r} refused the PIN ({_name(exc)}); fix the PIN and "
                "restart: no further login is tried"
            )
            log.error("%s", self._pin_refused)
            raise KeyAccessDenied(self._pin_refused) from None
        self._token = token
        return token

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """This thread's session, opened (after the login) on first use."""
        mine = getattr(self._local, "session", None)
        if mine is None or mine[0] != self._generation:
            session = self._logged_in().open()
            self._sessions.append(session)
            mine = (self._generation, session)
            self._local.session = mine
        yield mine[1]

    def _reset(self) -> None:
        """Close every session and the login: the next call logs in again."""
        with self._lock:
            self._generation += 1
            for session in [*self._sessions, self._login]:
                if session is not None:
                    with suppress(Exception):  # closing what may already be gone
                        session.close()
            self._sessions, self._login, self._token = [], None, None

    # --- key objects ------------------------------------------------------------------------

    @staticmethod
    def _versions(session: Any, label: str) -> dict[int, Any]:
        from pkcs11 import Attribute, KeyType, ObjectClass

        out: dict[int, Any] = {}
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}):
            version = _version_of(bytes(obj[Attribute.ID] or b""))
            if version is None or obj[Attribute.KEY_TYPE] != KeyType.AES or obj[Attribute.VALUE_LEN] != 32:
                continue
            if version in out:
                raise KeyAccessDenied(f"PKCS#11 key {label!r} has two objects for version {version}")
            out[version] = obj
        return out

    def _current(self, session: Any, label: str) -> tuple[int, Any]:
        from pkcs11 import Attribute

        if not _LABEL.fullmatch(label):
            raise KeyAccessDenied(f"{label[:80]!r} is not a PKCS#11 key label this keyring uses (no colons)")
        versions = self._versions(session, label)
        if not versions:
            raise KeyAccessDenied(f"no AES-256 key labelled {label!r} on PKCS#11 token {self._token_label!r}")
        version = max(versions)
        key = versions[version]
        if not key[Attribute.ENCRYPT]:
            raise KeyAccessDenied(f"PKCS#11 key {label!r} version {version} may not encrypt (CKA_ENCRYPT false)")
        return version, key

    def _gcm(self, key: Any, decrypt: bool, data: bytes, iv: bytes, aad: bytes) -> bytes:
        import pkcs11
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        op = key.decrypt if decrypt else key.encrypt
        try:
            out: bytes = op(data, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, aad, TAG_SIZE * 8))
        except pkcs11.PKCS11Error as exc:
            if _name(exc) in _DENIED_ERRORS:
                raise KeyAccessDenied(f"PKCS#11 token does not do CKM_AES_GCM with this key ({_name(exc)})") from None
            if decrypt and _name(exc) in _UNWRAP_ERRORS:
                raise InvalidWrappedKey(
                    "wrapped key does not unwrap under this key with this encryption context"
                ) from None
            raise
        return out

    def _wrap_sync(self, label: str, plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        with self._session() as session:
            version, key = self._current(session, label)
            key_ref = f"{REF_PREFIX}{label}:{version}"
            iv = os.urandom(IV_SIZE)
            sealed = self._gcm(key, False, plaintext, iv, wrap_aad(key_ref, context))
        if len(sealed) != DATA_KEY_SIZE + TAG_SIZE:
            raise KeyUnavailable(f"PKCS#11 token {self._token_label!r}: malformed AES-GCM output")
        return DataKey(plaintext=plaintext, wrapped=iv + sealed, key_ref=key_ref)

    def _unwrap_sync(self, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        from pkcs11 import Attribute

        parsed = parse_key_ref(key_ref)
        if parsed is None:
            raise InvalidWrappedKey(f"{key_ref[:100]!r} is not a PKCS#11 key reference")
        label, version = parsed
        if len(wrapped) != WRAPPED_SIZE:
            raise InvalidWrappedKey(f"wrapped key under {key_ref} has the wrong length")
        with self._session() as session:
            key = self._versions(session, label).get(version)
            if key is None:
                raise KeyAccessDenied(f"no version {version} of PKCS#11 key {label!r} on the token")
            if not key[Attribute.DECRYPT]:
                raise KeyAccessDenied(f"PKCS#11 key {label!r} version {version} may not decrypt (CKA_DECRYPT false)")
            plaintext = self._gcm(key, True, wrapped[IV_SIZE:], wrapped[:IV_SIZE], wrap_aad(key_ref, context))
        if len(plaintext) != DATA_KEY_SIZE:
            raise InvalidWrappedKey(f"wrapped key under {key_ref} is not a 32-byte data key")
        return plaintext

    def _ready_sync(self, label: str) -> None:
        with self._session() as session:
            self._current(session, label)

    # --- the Keyring interface --------------------------------------------------------------

    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """A fresh data key (from the OS's generator) wrapped by the token under the newest
        version of key `key_id` with `context`."""
        return await self._run(self._wrap_sync, key_id, os.urandom(DATA_KEY_SIZE), context)

    async def wrap_data_key(self, key_id: str, plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        """Wrap an existing data key under the newest version of `key_id` (copies, rewrap)."""
        return await self._run(self._wrap_sync, key_id, plaintext, context)

    async def decrypt_data_key(self, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """Unwrap `wrapped` on the token with the key version `key_ref` names and `context`."""
        return await self._run(self._unwrap_sync, key_ref, wrapped, context)

    async def ready(self, key_id: str) -> None:
        """KeyringError unless the token is there, takes the PIN and has key `key_id` for encrypting."""
        await self._run(self._ready_sync, key_id)

    async def close(self) -> None:
        """Wait for calls in flight, then close every session (which logs out)."""
        await self._calls.close(self._reset)

    # --- administration (sealgate keys; blocking: call from a thread or a command) --------------

    def _admin(self, fn: Callable[[Any], T]) -> T:
        def call() -> T:
            with self._logged_in().open(rw=True) as session:
                return fn(session)

        return self._guarded(call)

    def list_keys(self) -> list[TokenKey]:
        """The AES-256 master keys on the token with their versions (labels found by scanning)."""

        def scan(session: Any) -> list[TokenKey]:
            from pkcs11 import Attribute, ObjectClass

            labels = {str(o[Attribute.LABEL]) for o in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})}
            return [key for label in sorted(labels) if (key := self._describe(session, label)) is not None]

        return self._admin(scan)

    def _describe(self, session: Any, label: str) -> TokenKey | None:
        from pkcs11 import Attribute

        versions = self._versions(session, label) if _LABEL.fullmatch(label) else {}
        if not versions:
            return None
        current = max(versions)
        decrypts = any(bool(k[Attribute.DECRYPT]) for k in versions.values())
        return TokenKey(label, tuple(sorted(versions)), current, bool(versions[current][Attribute.ENCRYPT]), decrypts)

    def create_key(self, label: str, *, rotate: bool = False) -> TokenKey:
        """Generate key `label` (version 1) on the token, non-extractable and sensitive; with
        `rotate`, its next version instead (the key must exist). KeyringError if not possible."""

        def create(session: Any) -> TokenKey:
            from pkcs11 import Attribute, KeyType

            if not _LABEL.fullmatch(label):
                raise KeyAccessDenied(f"{label[:80]!r}: a key label is 1-64 letters, digits and _./@+-")
            versions = self._versions(session, label)
            if rotate and not versions:
                raise KeyAccessDenied(f"no key labelled {label!r} on the token to rotate")
            if not rotate and versions:
                raise KeyAccessDenied(f"the token already has a key labelled {label!r}")
            version = max(versions, default=0) + 1
            template = {
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
            }
            session.generate_key(KeyType.AES, 256, label=label, id=str(version).encode(), store=True, template=template)
            described = self._describe(session, label)
            assert described is not None
            return described

        return self._admin(create)
