"""quickstart's set-up: private files, kept on a second run, and a config that loads."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.tools.quickstart import banner, set_up


def test_set_up_writes_private_files_and_keeps_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / ".sealgate"
    demo = set_up(directory, 8443, 9000)
    for path in (demo.pass_file, demo.keyring, directory / "client-credentials", demo.config):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    again = set_up(directory, 8444, 9001)
    assert (again.access_key_id, again.secret) == (demo.access_key_id, demo.secret)
    config = load_config(again.config)  # loads as it is: every sealgate command can use it
    assert config.clients[0].secret_access_key.get_secret_value() == demo.secret
    assert config.backend.endpoint == "http://127.0.0.1:9001"
    text = banner(again)
    assert "https://localhost:8444" in text and again.access_key_id in text and again.secret in text
