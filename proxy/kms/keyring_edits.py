"""Changes of a local keyring, file or backend object, that never lose a concurrent change.

A file is changed under `keyring_lock` (a lock beside it on this host's disk). An object is
shared by hosts that share no lock: its change is saved with a conditional PUT, and when another
host saved first the change is made again on the fresh copy (proxy/kms/keyring_object.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from proxy.kms.keyring_object import KeyringConflict, KeyringNotFound
from proxy.kms.keystore import KeyringFileError, LocalKeyStore, Where, keyring_lock

T = TypeVar("T")

#: Tries of a change of a keyring object that other hosts keep changing first.
EDIT_ATTEMPTS = 8


def edit(where: Where, open_store: Callable[[], LocalKeyStore], change: Callable[[LocalKeyStore], T]) -> T:
    """Read-modify-write of a keyring: `change` the store `open_store` gives, then save it.

    A file is changed under `keyring_lock`. An object is saved with a conditional PUT; when
    another host changed it first, `change` runs again on a fresh copy (no scrypt run), so two
    concurrent rotations give two versions and neither is lost."""
    if isinstance(where, Path):
        with keyring_lock(where):
            store = open_store()
            result = change(store)
            store.save()
            return result
    where.check_conditional_writes()
    store = open_store()
    for attempt in range(EDIT_ATTEMPTS):
        result = change(store)
        try:
            store.save()
            return result
        except KeyringConflict:
            time.sleep(random.uniform(0, 0.02 * 2**attempt))
            store = store.reopen()
    raise KeyringFileError(f"keyring object {where} kept changing during {EDIT_ATTEMPTS} tries; try again")


def open_or_create(where: Where, passphrase: bytes) -> LocalKeyStore:
    """The keyring at `where`, created empty if there is none (by whoever gets there first)."""
    if isinstance(where, Path):
        if where.exists():
            return LocalKeyStore.open(where, passphrase)
        where.parent.mkdir(parents=True, exist_ok=True)
        return LocalKeyStore.create(where, passphrase)
    try:
        return LocalKeyStore.open(where, passphrase)
    except KeyringNotFound:
        pass
    try:
        return LocalKeyStore.create(where, passphrase)
    except KeyringConflict:  # another host created it meanwhile
        return LocalKeyStore.open(where, passphrase)
