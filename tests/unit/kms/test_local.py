"""The local keyring: data keys wrapped under the keyring file's master keys, bound to their context."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from proxy.kms.base import InvalidWrappedKey, KeyAccessDenied
from proxy.kms.keystore import KeyInfo, LocalKeyStore
from proxy.kms.local import WRAPPED_SIZE, LocalKeyring, parse_key_ref, wrap_aad
from proxy.store.errors import keyring_error

PASS = b"correct horse battery staple"
CTX = {"bucket": "b1", "key": "photos/cat.jpg"}
NOT_UNWRAPPED = "does not unwrap under local:default:1 with this encryption context"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keyring.sgkr"


@pytest.fixture
def store(path: Path) -> LocalKeyStore:
    s = LocalKeyStore.create(path, PASS)
    s.create_key("default")
    s.create_key("other")
    s.save()
    return s


@pytest.fixture
def keyring(store: LocalKeyStore) -> LocalKeyring:
    return LocalKeyring(store)


def master_material(store: LocalKeyStore, key_id: str, version: int = 1) -> bytes:
    material = store.material(key_id, version)
    assert material is not None
    return material


def test_no_material_in_repr_or_listing(store: LocalKeyStore, keyring: LocalKeyring) -> None:
    shown = " ".join(
        [repr(store), repr(keyring), repr(store.list_keys()), str(store.list_keys())]
        + [repr(v) for k in store._keys.values() for v in k.versions]
        + [repr(k) for k in store._keys.values()]
    )
    for key_id in ("default", "other"):
        material = master_material(store, key_id)
        for form in (material.hex(), base64.b64encode(material).decode(), repr(material)):
            assert form not in shown
    assert all(isinstance(k, KeyInfo) for k in store.list_keys())
    assert "material" not in KeyInfo.__dataclass_fields__


async def test_file_contains_no_key_material(store: LocalKeyStore, keyring: LocalKeyring, path: Path) -> None:
    dk = await keyring.generate_data_key("default", CTX)
    store.save()
    blob = path.read_bytes()
    secrets = [dk.plaintext] + [master_material(store, k) for k in ("default", "other")]
    for secret in secrets:
        for form in (secret, secret.hex().encode(), base64.b64encode(secret)):
            assert form not in blob
    assert b"default" not in blob  # even key ids are encrypted


# --- wrapping data keys ----------------------------------------------------------------


async def test_round_trip(keyring: LocalKeyring) -> None:
    dk = await keyring.generate_data_key("default", CTX)
    assert dk.key_ref == "local:default:1"
    assert len(dk.plaintext) == 32
    assert len(dk.wrapped) == WRAPPED_SIZE == 60
    assert await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, dict(reversed(CTX.items())))
    assert await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, CTX) == dk.plaintext
    assert dk.plaintext.hex() not in repr(dk)


async def test_round_trip_after_reopen(store: LocalKeyStore, path: Path) -> None:
    dk = await LocalKeyring(store).generate_data_key("default", {})
    reopened = LocalKeyring(LocalKeyStore.open(path, PASS))
    assert await reopened.decrypt_data_key(dk.key_ref, dk.wrapped, {}) == dk.plaintext


async def test_data_keys_are_distinct(keyring: LocalKeyring) -> None:
    keys = [await keyring.generate_data_key("default", CTX) for _ in range(50)]
    assert len({k.plaintext for k in keys}) == 50
    assert len({k.wrapped for k in keys}) == 50
    assert all(len(k.plaintext) == 32 for k in keys)


@pytest.mark.parametrize(
    "context",
    [
        {"bucket": "b1", "key": "photos/dog.jpg"},  # different value
        {"bucket": "b1", "key": "photos/cat.jpg", "extra": "x"},  # extra entry
        {"bucket": "b1"},  # missing entry
        {},  # no context
        {"bucket": "b1", "kex": "photos/cat.jpg"},  # renamed key
    ],
)
async def test_wrong_context(keyring: LocalKeyring, context: dict[str, str]) -> None:
    dk = await keyring.generate_data_key("default", CTX)
    with pytest.raises(InvalidWrappedKey, match=NOT_UNWRAPPED):
        await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, context)


async def test_tampered_wrapped(keyring: LocalKeyring) -> None:
    dk = await keyring.generate_data_key("default", CTX)
    for i in range(len(dk.wrapped)):
        bad = bytearray(dk.wrapped)
        bad[i] ^= 0x80
        with pytest.raises(InvalidWrappedKey, match=NOT_UNWRAPPED):
            await keyring.decrypt_data_key(dk.key_ref, bytes(bad), CTX)
    for wrong_length in (b"", dk.wrapped[:-1], dk.wrapped + b"\x00"):
        with pytest.raises(InvalidWrappedKey, match="wrong length"):
            await keyring.decrypt_data_key(dk.key_ref, wrong_length, CTX)


async def test_wrong_key_ref(store: LocalKeyStore, keyring: LocalKeyring) -> None:
    dk = await keyring.generate_data_key("default", CTX)
    # A second version with the same material: only the key_ref in the AAD differs.
    key = store._keys["default"]
    key.versions.append(type(key.versions[0])(2, key.versions[0].material, "2025-01-01T00:00:00Z"))
    for ref in ("local:other:1", "local:default:2"):
        with pytest.raises(InvalidWrappedKey, match=f"does not unwrap under {ref} with this encryption context"):
            await keyring.decrypt_data_key(ref, dk.wrapped, CTX)
    for ref in ("local:default:01", "local:default", "aws:default:1", "local:default:1:x", ""):
        with pytest.raises(InvalidWrappedKey, match="is not a local keyring reference"):
            await keyring.decrypt_data_key(ref, dk.wrapped, CTX)


async def test_old_versions_still_unwrap(store: LocalKeyStore, keyring: LocalKeyring) -> None:
    old = await keyring.generate_data_key("default", CTX)
    key = store._keys["default"]
    key.versions.append(type(key.versions[0])(2, os.urandom(32), "2025-01-01T00:00:00Z"))
    new = await keyring.generate_data_key("default", CTX)
    assert new.key_ref == "local:default:2"
    assert await keyring.decrypt_data_key(old.key_ref, old.wrapped, CTX) == old.plaintext
    assert await keyring.decrypt_data_key(new.key_ref, new.wrapped, CTX) == new.plaintext


async def test_unknown_key(keyring: LocalKeyring, store: LocalKeyStore) -> None:
    with pytest.raises(KeyAccessDenied, match="'nope'") as err:
        await keyring.generate_data_key("nope", CTX)
    assert keyring_error(err.value).status == 403
    dk = await keyring.generate_data_key("default", CTX)
    with pytest.raises(KeyAccessDenied, match="'nope'"):
        await keyring.decrypt_data_key("local:nope:1", dk.wrapped, CTX)
    with pytest.raises(KeyAccessDenied, match="version 7"):
        await keyring.decrypt_data_key("local:default:7", dk.wrapped, CTX)
    material = master_material(store, "default")
    assert material.hex() not in str(err.value)


async def test_keyring_sees_a_save_within_one_clock_tick(store: LocalKeyStore, path: Path) -> None:
    """A rotation saved with the same mtime as the file the keyring last read (two saves in one
    tick of a coarse filesystem clock) is still picked up: the file is a new inode, of a new size."""
    keyring = LocalKeyring(store, reload_seconds=0)
    st = path.stat()
    other = LocalKeyStore.open(path, PASS)
    other.rotate_key("default")
    other.save()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (await keyring.generate_data_key("default", CTX)).key_ref == "local:default:2"
    other.rotate_key("default")
    other.save()
    keyring.refresh()
    assert store.current("default") == (3, master_material(other, "default", 3))


def test_aad_is_unambiguous() -> None:
    ref = "local:k:1"
    contexts: list[dict[str, str]] = [
        {},
        {"a": ""},
        {"": "a"},
        {"ab": "c"},
        {"a": "bc"},
        {"a": "b", "c": "d"},
        {"a": "b\x00c", "": "d"},
        {"a": "b", "cd": ""},
        {"é": "x"},
    ]
    encoded = {wrap_aad(ref, c) for c in contexts}
    assert len(encoded) == len(contexts)
    assert wrap_aad(ref, {"x": "1", "y": "2"}) == wrap_aad(ref, {"y": "2", "x": "1"})
    assert wrap_aad("local:k:1", {}) != wrap_aad("local:k:2", {})
    assert wrap_aad(ref, {"a": "b"}) == (
        b"SGWK1" + b"\x00\x00\x00\x09local:k:1" + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x01a" + b"\x00\x00\x00\x01b"
    )


async def test_close_is_harmless(keyring: LocalKeyring) -> None:
    """Close releases nothing (the keys live in memory): a second close is no error, and the
    keyring still makes and unwraps keys after it, those made before it included."""
    before = await keyring.generate_data_key("default", CTX)
    await keyring.close()
    await keyring.close()
    after = await keyring.generate_data_key("default", CTX)
    assert await keyring.decrypt_data_key(before.key_ref, before.wrapped, CTX) == before.plaintext
    assert await keyring.decrypt_data_key(after.key_ref, after.wrapped, CTX) == after.plaintext
    await keyring.ready("default")


def test_parse_key_ref() -> None:
    assert parse_key_ref("local:default:12") == ("default", 12)
    for ref in ("local:default:0", "local:default:01", "local::1", "local:a b:1", "arn:aws:kms:x", "local:k:1:2"):
        assert parse_key_ref(ref) is None


async def test_a_newer_version_from_another_replica_is_refused_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two hosts, one keyring file each: a rotation on one reaches only its own file."""
    here = LocalKeyStore.create(tmp_path / "here", PASS)
    here.create_key("default")
    here.save()
    (tmp_path / "there").write_bytes((tmp_path / "here").read_bytes())
    (tmp_path / "there").chmod(0o600)
    there = LocalKeyStore.open(tmp_path / "there", PASS)
    there.rotate_key("default")
    there.save()
    ctx = {"sealgate:bucket": "b", "sealgate:key": "k"}
    dk = await LocalKeyring(there).generate_data_key("default", ctx)
    assert dk.key_ref == "local:default:2"
    with pytest.raises(KeyAccessDenied):
        await LocalKeyring(here).decrypt_data_key(dk.key_ref, dk.wrapped, ctx)
    assert "every replica must read the same keyring file" in caplog.text
