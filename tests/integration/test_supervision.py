"""Supervision of a running sealgate (issue 19): a worker that dies is replaced, workers do not
outlive the process that started them, and readiness means the backend serves."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from tests.conftest import client_for, free_port, start_stack, wait_port, write_config
from tests.integration.test_cli import SEALGATE


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return {int(p) for p in out}


def _alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return False


def _eventually(check, seconds: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def two_workers(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    cfg = write_config(tmp_path, backend=moto_url, tls=tls_files, port=port, server_extra="workers = 2")
    proc = subprocess.Popen([*SEALGATE, "serve", "--config", str(cfg)], cwd=tmp_path)
    wait_port(port, 30)
    assert _eventually(lambda: len(_children(proc.pid)) == 1)
    yield proc, port
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_killed_worker_is_replaced(
    two_workers: tuple[subprocess.Popen[bytes], int], tls_files: dict[str, Path]
) -> None:
    proc, port = two_workers
    (first,) = _children(proc.pid)
    os.kill(first, signal.SIGKILL)
    assert _eventually(lambda: len(_children(proc.pid)) == 1 and first not in _children(proc.pid))
    (replacement,) = _children(proc.pid)
    s3 = client_for(f"https://localhost:{port}", tls_files["ca"])
    s3.create_bucket(Bucket="supervised")
    for i in range(20):  # the kernel spreads new connections over both processes
        fresh = client_for(f"https://localhost:{port}", tls_files["ca"])
        fresh.put_object(Bucket="supervised", Key=f"k{i}", Body=b"x" * i)
        assert fresh.get_object(Bucket="supervised", Key=f"k{i}")["Body"].read() == b"x" * i
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert _eventually(lambda: not _alive(replacement), 10)


def test_a_reload_signal_during_a_workers_start_does_not_kill_it(
    two_workers: tuple[subprocess.Popen[bytes], int], tls_files: dict[str, Path]
) -> None:
    """SIGHUP's default action ends a process: a worker still starting (no handler yet) must
    remember the reload instead (a CI run lost a whole sealgate this way)."""
    proc, port = two_workers
    (first,) = _children(proc.pid)
    os.kill(first, signal.SIGKILL)
    assert _eventually(lambda: len(_children(proc.pid)) == 1 and first not in _children(proc.pid))
    (replacement,) = _children(proc.pid)
    for _ in range(10):  # the replacement is a fresh interpreter: these land while it starts
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.05)
    time.sleep(3)
    assert proc.poll() is None
    assert _children(proc.pid) == {replacement}, "the starting worker died of SIGHUP"
    s3 = client_for(f"https://localhost:{port}", tls_files["ca"])
    s3.create_bucket(Bucket="reloaded")
    assert s3.list_objects_v2(Bucket="reloaded")["KeyCount"] == 0


def test_workers_go_when_the_first_process_is_killed(
    two_workers: tuple[subprocess.Popen[bytes], int], moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    proc, port = two_workers
    (worker,) = _children(proc.pid)
    proc.kill()
    proc.wait(timeout=10)
    assert _eventually(lambda: not _alive(worker), 15), "a worker outlived the process that started it"
    # The port is free again: a fresh start (without --join) is not refused.
    again = subprocess.Popen([*SEALGATE, "serve", "--config", str(tmp_path / "sealgate.toml")], cwd=tmp_path)
    try:
        wait_port(port, 30)
        assert again.poll() is None
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=30)


class _Unavailable(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_readyz_is_not_ready_while_the_backend_answers_503(tls_files: dict[str, Path], tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    st = start_stack(
        tmp_path, f"http://127.0.0.1:{server.server_address[1]}", tls_files, backend_extra="max_attempts = 1"
    )
    try:
        r = urllib3.PoolManager(ca_certs=str(st.ca_path)).request("GET", st.gate.url + "/-/readyz")
        assert r.status == 503
        assert b"backend: answers 503" in r.data
    finally:
        st.gate.stop()
        server.shutdown()


def test_metrics_and_readiness_details_only_for_metrics_allow(tls_files: dict[str, Path], tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    st = start_stack(
        tmp_path,
        f"http://127.0.0.1:{server.server_address[1]}",
        tls_files,
        backend_extra="max_attempts = 1",
        server_extra='metrics_allow = ["10.0.0.0/8"]',  # the test client, on loopback, is not in it
    )
    try:
        http_ = urllib3.PoolManager(ca_certs=str(st.ca_path))
        metrics = http_.request("GET", st.gate.url + "/-/metrics")
        assert metrics.status == 403 and b"sealgate_requests_total" not in metrics.data
        ready = http_.request("GET", st.gate.url + "/-/readyz")
        assert (ready.status, ready.data) == (503, b"not ready\n")  # no reasons for outsiders
        assert http_.request("GET", st.gate.url + "/-/healthz").status == 200
    finally:
        st.gate.stop()
        server.shutdown()


@pytest.mark.parametrize(
    ("settings", "warned"),
    [("workers = 2", False), ("workers = 1", False), ('workers = 2\ntrusted_proxies = ["127.0.0.1"]', True)],
    ids=["workers", "one-worker", "behind-a-balancer"],
)
def test_s3ec_v3_buckets_behind_a_balancer_get_a_warning_at_start(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, settings: str, warned: bool
) -> None:
    """s3ec-v3 multipart state lives in one process (issue 21 item 8): the workers of one
    sealgate pass parts to each other, replicas cannot. Behind a balancer (trusted proxies, or
    the PROXY protocol) say once at start-up that it must be sticky."""
    port = free_port()
    rule = '[[buckets]]\nname = "v3-*"\nformat = "s3ec-v3"\n'
    cfg = write_config(tmp_path, backend=moto_url, tls=tls_files, port=port, server_extra=settings, extra=rule)
    proc = subprocess.Popen([*SEALGATE, "serve", "--config", str(cfg)], cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        wait_port(port, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    log = err.decode()
    assert "sealgate serving https" in log, log[-2000:]
    warnings = [line for line in log.splitlines() if 's3ec-v3"' in line and "WARNING" in line]
    if not warned:
        assert warnings == []
    else:
        assert len(warnings) == 1, log[-2000:]  # once, not once per worker
        assert "[[buckets]] v3-*" in warnings[0] and "server.trusted_proxies" in warnings[0]
        assert "sticky" in warnings[0] and "balance source" in warnings[0] and "NoSuchUpload" in warnings[0]
