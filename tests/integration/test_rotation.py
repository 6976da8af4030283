"""Key rotation with the local keyring: new objects use the new version, old ones still read."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE, Stack

SEALGATE = [sys.executable, "-m", "proxy.cli"]


def keys(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    ring = stack.dir / "keyring"
    return subprocess.run(
        [*SEALGATE, "keys", *args, "--keyring", str(ring), "--passphrase-file", f"{ring}.pass"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rotate_while_serving(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="before", Body=b"sealed under v1")
    v_before = stack.backend().head_object(Bucket=bucket, Key="before")["Metadata"]["sg-kr"]
    r = keys(stack, "rotate", "default")
    assert r.returncode == 0, r.stderr
    time.sleep(1.1)  # the running keyring re-reads its file at most once a second
    s3.put_object(Bucket=bucket, Key="after", Body=b"sealed under v2")
    v_after = stack.backend().head_object(Bucket=bucket, Key="after")["Metadata"]["sg-kr"]
    assert v_before.rsplit(":", 1)[0] == v_after.rsplit(":", 1)[0]
    assert int(v_after.rsplit(":", 1)[1]) == int(v_before.rsplit(":", 1)[1]) + 1
    assert s3.get_object(Bucket=bucket, Key="before")["Body"].read() == b"sealed under v1"
    assert s3.get_object(Bucket=bucket, Key="after")["Body"].read() == b"sealed under v2"
    listed = keys(stack, "list")
    assert "365d" in listed.stdout and "generated" in listed.stdout


def test_imported_keys_rotate_only_by_hand(tmp_path: Path) -> None:
    from proxy.kms.keystore import KeyringFileError, LocalKeyStore

    store = LocalKeyStore.create(tmp_path / "kr", PASSPHRASE.encode())
    store.create_key("gen")
    store.import_key("imp", os.urandom(32))
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    assert store.due_for_rotation(future) == ["gen"]
    assert store.due_for_rotation() == []
    try:
        store.rotate_key("imp")
    except KeyringFileError as exc:
        assert "imported" in str(exc)
    else:
        raise AssertionError("an imported key rotated without new material")
    assert store.rotate_key("imp", os.urandom(32)).current_version == 2


def test_cli_import_and_due(tmp_path: Path) -> None:
    env = {**os.environ, "SEALGATE_KEYRING_PASSPHRASE": "pass phrase for test"}
    base = [*SEALGATE, "keys"]
    material = tmp_path / "m.hex"
    material.write_text(os.urandom(32).hex() + "\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args, "--keyring", str(tmp_path / "kr")], env=env, capture_output=True, text=True
        )

    assert run("create", "gen").returncode == 0
    r = run("import", "imp", "--material-file", str(material))
    assert r.returncode == 0, r.stderr
    r = run("rotate", "imp")
    assert r.returncode != 0 and "imported" in r.stderr
    r = run("rotate", "--due")
    assert r.returncode == 0 and "no key is due" in r.stdout
    listed = run("list").stdout
    assert "imported" in listed and "manual" in listed


def test_concurrent_keyring_edits_are_all_kept(tmp_path: Path) -> None:
    """Every command that rewrites the keyring file holds its lock: edits started together
    (cron jobs, an operator, admin rotations) all survive; none overwrites another."""
    from proxy.kms.base import KeyAccessDenied
    from proxy.kms.keystore import LocalKeyStore
    from proxy.kms.local import LocalKeyring

    env = {**os.environ, "SEALGATE_KEYRING_PASSPHRASE": "pass phrase for test"}
    ring = tmp_path / "kr"
    material = tmp_path / "m.hex"
    material.write_text(os.urandom(32).hex() + "\n")
    base = [*SEALGATE, "keys"]
    assert subprocess.run([*base, "create", "k0", "--keyring", str(ring)], env=env).returncode == 0
    edits = [
        *(["create", f"k{i}"] for i in range(1, 5)),
        ["rotate", "k0"],
        ["import", "imp", "--material-file", str(material)],
        ["disable", "k0"],
    ]
    procs = [
        subprocess.Popen([*base, *args, "--keyring", str(ring)], env=env, stderr=subprocess.PIPE, text=True)
        for args in edits
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    store = LocalKeyStore.open(ring, b"pass phrase for test")
    infos = {i.id: i for i in store.list_keys()}
    assert sorted(infos) == ["imp", "k0", "k1", "k2", "k3", "k4"]
    assert infos["k0"].versions == 2
    keyring = LocalKeyring(store)
    # Listed but not usable: the disable survived the other edits.
    with pytest.raises(KeyAccessDenied, match="no usable key 'k0'"):
        asyncio.run(keyring.ready("k0"))
    asyncio.run(keyring.ready("k1"))
