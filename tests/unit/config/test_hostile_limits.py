"""The issue 19 limits in ``[server]`` and ``[backend]``: defaults, and bad values named clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config
from tests.unit.config.test_config import BASE, ENV, SERVER, render

BACKEND = str(BASE["backend"])


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("certs/server.pem", "certs/server-key.pem", "keyring", "passphrase"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    return tmp_path


def load(workdir: Path, server: str = "", backend: str = "") -> object:
    path = workdir / "sealgate.toml"
    path.write_text(render(server=SERVER + server, backend=BACKEND + backend))
    return load_config(path, ENV)


def error(workdir: Path, server: str = "", backend: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        load(workdir, server, backend)
    return str(info.value).split(": ", 1)[1]


def test_connection_share_defaults(workdir: Path) -> None:
    srv = load(workdir).server  # type: ignore[attr-defined]
    assert (srv.anonymous_share, srv.anonymous_per_address, srv.anonymous_idle_timeout_seconds) == (512, 64, 5.0)
    srv = load(workdir, "max_connections = 20\n").server  # type: ignore[attr-defined]
    assert (srv.anonymous_share, srv.anonymous_per_address) == (10, 10)
    srv = load(workdir, "max_connections = 1\n").server  # type: ignore[attr-defined]
    assert (srv.anonymous_share, srv.anonymous_per_address) == (1, 1)
    srv = load(workdir, "anonymous_connections = 100\nanonymous_connections_per_address = 0\n").server  # type: ignore[attr-defined]
    assert (srv.anonymous_share, srv.anonymous_per_address) == (100, 0)


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("anonymous_connections = 0\n", "server.anonymous_connections: must be greater than or equal to 1"),
        (
            "max_connections = 10\nanonymous_connections = 11\n",
            "server.anonymous_connections: must be at most max_connections (10), got 11",
        ),
        (
            "anonymous_connections_per_address = -1\n",
            "server.anonymous_connections_per_address: must be greater than or equal to 0",
        ),
        (
            "max_connections = 20\nanonymous_connections_per_address = 11\n",
            "server.anonymous_connections_per_address: must be at most the anonymous share (10: "
            "anonymous_connections, or half of max_connections), got 11",
        ),
        ("anonymous_idle_timeout_seconds = 0\n", "server.anonymous_idle_timeout_seconds: must be greater than 0"),
        ('anonymous_connections = "half"\n', "server.anonymous_connections: must be an integer"),
    ],
)
def test_connection_share_errors(workdir: Path, server: str, expected: str) -> None:
    assert error(workdir, server) == expected


def test_pool_and_body_rate_defaults(workdir: Path) -> None:
    cfg = load(workdir)
    b = cfg.backend  # type: ignore[attr-defined]
    assert (b.pool_size, b.pool_wait_seconds, b.uploads_per_client) == (256, 2.0, 64)
    assert cfg.server.body_min_bytes_per_second == 1024  # type: ignore[attr-defined]
    b = load(workdir, backend="pool_size = 3\n").backend  # type: ignore[attr-defined]
    assert b.uploads_per_client == 1
    b = load(workdir, backend="pool_size = 8\nstreamed_uploads_per_client = 8\n").backend  # type: ignore[attr-defined]
    assert b.uploads_per_client == 8


@pytest.mark.parametrize(
    ("server", "backend", "expected"),
    [
        ("", "pool_size = 0\n", "backend.pool_size: must be greater than or equal to 1"),
        ("", "pool_wait_seconds = 0\n", "backend.pool_wait_seconds: must be greater than 0"),
        ("", "pool_wait_seconds = 301\n", "backend.pool_wait_seconds: must be less than or equal to 300"),
        (
            "",
            "streamed_uploads_per_client = 0\n",
            "backend.streamed_uploads_per_client: must be greater than or equal to 1",
        ),
        (
            "",
            "pool_size = 8\nstreamed_uploads_per_client = 9\n",
            "backend.streamed_uploads_per_client: must be at most pool_size (8), got 9",
        ),
        (
            "body_min_bytes_per_second = -1\n",
            "",
            "server.body_min_bytes_per_second: must be greater than or equal to 0",
        ),
        ('body_min_bytes_per_second = "1k"\n', "", "server.body_min_bytes_per_second: must be an integer"),
    ],
)
def test_pool_and_body_rate_errors(workdir: Path, server: str, backend: str, expected: str) -> None:
    assert error(workdir, server, backend) == expected


def test_s3ec_upload_quota(workdir: Path) -> None:
    srv = load(workdir).server  # type: ignore[attr-defined]
    assert (srv.s3ec_uploads, srv.s3ec_uploads_quota) == (4096, 256)
    srv = load(workdir, "s3ec_uploads = 8\n").server  # type: ignore[attr-defined]
    assert srv.s3ec_uploads_quota == 1
    assert error(workdir, "s3ec_uploads = 0\n") == "server.s3ec_uploads: must be greater than or equal to 1"
    assert (
        error(workdir, "s3ec_uploads = 8\ns3ec_uploads_per_client = 9\n")
        == "server.s3ec_uploads_per_client: must be at most s3ec_uploads (8), got 9"
    )
    assert (
        error(workdir, "s3ec_uploads_per_client = 0\n")
        == "server.s3ec_uploads_per_client: must be greater than or equal to 1"
    )
