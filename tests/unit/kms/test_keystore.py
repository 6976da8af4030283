"""The local keyring file: create, open, save, rotate; file modes; passphrase sources."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from proxy.kms import keystore
from proxy.kms.keystore import KeyringFileError, LocalKeyStore, passphrase_from

PASS = b"correct horse battery staple"


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


def master_material(store: LocalKeyStore, key_id: str, version: int = 1) -> bytes:
    material = store.material(key_id, version)
    assert material is not None
    return material


def test_create_open_round_trip(path: Path) -> None:
    s = LocalKeyStore.create(path, PASS)
    assert s.list_keys() == []
    info = s.create_key("default")
    assert (info.id, info.versions, info.current_version, info.origin) == (
        "default",
        1,
        1,
        "generated",
    )
    s.save()
    again = LocalKeyStore.open(path, PASS)
    assert again.list_keys() == [info]
    assert master_material(again, "default") == master_material(s, "default")


def test_create_refuses_existing_file(store: LocalKeyStore, path: Path) -> None:
    before = path.read_bytes()
    with pytest.raises(KeyringFileError, match="already exists"):
        LocalKeyStore.create(path, PASS)
    assert path.read_bytes() == before


def test_create_refuses_empty_passphrase(path: Path) -> None:
    with pytest.raises(KeyringFileError, match="empty"):
        LocalKeyStore.create(path, b"")
    assert not path.exists()


def test_wrong_passphrase(store: LocalKeyStore, path: Path) -> None:
    with pytest.raises(KeyringFileError, match="wrong passphrase or corrupted keyring file"):
        LocalKeyStore.open(path, b"not the passphrase")


@pytest.mark.parametrize("where", [9, 14, 35, -1])
def test_corrupted_file(store: LocalKeyStore, path: Path, where: int) -> None:
    # Header (scrypt r, salt), nonce and ciphertext are all covered by the tag.
    data = bytearray(path.read_bytes())
    data[where] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(KeyringFileError, match="wrong passphrase or corrupted keyring file"):
        LocalKeyStore.open(path, PASS)


def test_not_a_keyring_file(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"hello, this is not a keyring at all" * 3)
    os.close(fd)
    with pytest.raises(KeyringFileError, match="not a sealgate keyring file"):
        LocalKeyStore.open(path, PASS)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyringFileError, match="does not exist"):
        LocalKeyStore.open(tmp_path / "nope", PASS)


def test_file_mode_is_0600(store: LocalKeyStore, path: Path) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store.create_key("third")
    store.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_file_mode_0600_despite_permissive_umask(path: Path) -> None:
    old = os.umask(0)
    try:
        LocalKeyStore.create(path, PASS)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_refuses_readable_by_others(store: LocalKeyStore, path: Path, mode: int) -> None:
    path.chmod(mode)
    with pytest.raises(KeyringFileError) as err:
        LocalKeyStore.open(path, PASS)
    assert str(path) in str(err.value)
    assert f"chmod 600 {path}" in str(err.value)


def test_atomic_save_leaves_no_temp_and_replaces_inode(store: LocalKeyStore, path: Path) -> None:
    before = path.stat().st_ino
    store.create_key("third")
    store.save()
    # A new file was renamed over the old one (readers never see a half-written file).
    assert path.stat().st_ino != before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert [k.id for k in LocalKeyStore.open(path, PASS).list_keys()] == [
        "default",
        "other",
        "third",
    ]


def test_failed_save_keeps_old_file(store: LocalKeyStore, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = path.read_bytes()

    def boom(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    store.create_key("third")
    with pytest.raises(OSError, match="disk on fire"):
        store.save()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_save_uses_fresh_nonce(store: LocalKeyStore, path: Path) -> None:
    first = path.read_bytes()
    store.save()
    second = path.read_bytes()
    assert first[:30] == second[:30]  # same header: magic, scrypt params, salt
    assert first[30:42] != second[30:42]


def test_unknown_fields_survive_a_save(store: LocalKeyStore, path: Path) -> None:
    store._keys["default"].extra["rotation_period_days"] = 90
    store.save()
    again = LocalKeyStore.open(path, PASS)
    assert again._keys["default"].extra == {"type": "aes-256", "rotation_period_days": 90}


def test_create_key_errors(store: LocalKeyStore) -> None:
    with pytest.raises(KeyringFileError, match="already exists"):
        store.create_key("default")
    for bad in ["", "has space", "colon:id", "slash/id", "x" * 65, "ünï"]:
        with pytest.raises(KeyringFileError, match="invalid key id"):
            store.create_key(bad)


def private_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_passphrase_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_PASS", "s3cret phrase\n")
    assert passphrase_from("SG_TEST_PASS", None) == b"s3cret phrase\n"


def test_passphrase_env_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_PASS", "from-env")
    f = private_file(tmp_path / "pass", b"from-file\n")
    assert passphrase_from("SG_TEST_PASS", f) == b"from-env"


def test_passphrase_from_file_strips_one_newline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SG_TEST_PASS", raising=False)
    f = private_file(tmp_path / "pass", b"phrase \n\n")
    assert passphrase_from("SG_TEST_PASS", f) == b"phrase \n"
    private_file(f, b"phrase")
    assert passphrase_from(None, f) == b"phrase"
    private_file(f, b"phrase\r\n")
    assert passphrase_from(None, f) == b"phrase"


def test_passphrase_file_readable_by_others(tmp_path: Path) -> None:
    f = private_file(tmp_path / "pass", b"phrase\n", 0o644)
    with pytest.raises(KeyringFileError, match="chmod 600"):
        passphrase_from(None, f)


def test_no_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_PASS", "")
    with pytest.raises(KeyringFileError, match="SG_TEST_PASS"):
        passphrase_from("SG_TEST_PASS", None)
    with pytest.raises(KeyringFileError, match="no keyring passphrase"):
        passphrase_from(None, None)
    with pytest.raises(KeyringFileError, match="does not exist"):
        passphrase_from(None, tmp_path / "missing")
    with pytest.raises(KeyringFileError, match="empty"):
        passphrase_from(None, private_file(tmp_path / "pass", b"\n"))


def test_open_and_create_each_derive_once(path: Path) -> None:
    before = keystore.derivations
    store = LocalKeyStore.create(path, PASS)
    store.create_key("default")
    store.save()
    assert keystore.derivations == before + 1  # saving reuses the KEK
    LocalKeyStore.open(path, PASS).reload()
    assert keystore.derivations == before + 2


def test_reopen_reads_the_file_now_without_deriving(store: LocalKeyStore, path: Path) -> None:
    other = LocalKeyStore.open(path, PASS)  # another process, say
    other.rotate_key("default")
    other.save()
    before = keystore.derivations
    fresh = store.reopen()
    assert keystore.derivations == before
    assert {i.id: i.versions for i in fresh.list_keys()} == {"default": 2, "other": 1}
    # A store of its own: changing it leaves the original's keys alone until saved and reloaded.
    assert {i.id: i.versions for i in store.list_keys()} == {"default": 1, "other": 1}
    fresh.rotate_key("other")
    assert store.list_keys()[1].versions == 1
    fresh.save()
    store.reload()
    assert {i.id: i.versions for i in store.list_keys()} == {"default": 2, "other": 2}
    assert {i.id: i.versions for i in LocalKeyStore.open(path, PASS).list_keys()} == {"default": 2, "other": 2}
    assert keystore.derivations == before + 1


def test_reopen_refuses_a_rekeyed_or_corrupted_file(store: LocalKeyStore, path: Path) -> None:
    path.unlink()
    LocalKeyStore.create(path, b"another passphrase").save()
    with pytest.raises(KeyringFileError, match="re-keyed"):
        store.reopen()
    store._write(exclusive=False)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(KeyringFileError, match="corrupted"):
        store.reopen()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file another owner")
@pytest.mark.parametrize(
    ("mode", "accepted"), [(0o440, True), (0o400, True), (0o640, True), (0o660, False), (0o444, False)]
)
def test_a_secret_mounted_for_the_pods_group(store: LocalKeyStore, path: Path, mode: int, accepted: bool) -> None:
    """A Kubernetes Secret with fsGroup: owned by root (here: another user), readable by the
    process's group, changeable by nobody. Writable by the group, or readable by others, it is not."""
    os.chown(path, 12345, os.getegid())
    path.chmod(mode)
    if accepted:
        assert LocalKeyStore.open(path, PASS).current("default") is not None
    else:
        with pytest.raises(KeyringFileError, match="fsGroup"):
            LocalKeyStore.open(path, PASS)
