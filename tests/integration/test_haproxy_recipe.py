"""deploy/haproxy's recipes as a user runs them (issue 21 item 5): two sealgate replicas behind
Debian's HAProxy, a multipart upload whose parts land on both, one replica stopped in the middle
of it, and every object read back whole through what is left; the client's address (by PROXY
protocol in mode tcp, by X-Forwarded-For in mode http) is what the replicas log."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from tests.conftest import CLIENT_AKID, CLIENT_SECRET, free_port, wait_port, write_config

RECIPES = Path(__file__).resolve().parents[2] / "deploy" / "haproxy"
#: In mode http, HAProxy connects to the replicas from this address (the only one they trust), so
#: that the client's own (127.0.0.1) can reach their logs only by X-Forwarded-For.
BALANCER = "127.0.0.2"
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy is not installed (apt-get install haproxy)"
)


def _adapted(recipe: str, front: int, ports: list[int], tls: dict[str, Path], d: Path) -> str:
    """The recipe with loopback addresses, the test's certificates, a quick health-check interval
    and a maxconn a test host's file-descriptor limit allows; nothing else changed."""
    text = (RECIPES / recipe).read_text()
    servers = re.findall(r"^ +server gate\d .*$\n", text, re.M)
    assert servers and "bind :443" in text and " inter 5s " in text, "the recipe no longer has what this adapts"
    text = re.sub(r"^( +maxconn) \d+$", r"\1 1000", text, flags=re.M)
    for line in servers[1:]:
        text = text.replace(line, "")
    mine = "".join(f"    server gate{i} 127.0.0.1:{port}\n" for i, port in enumerate(ports, 1))
    text = text.replace(servers[0], mine)
    if "mode http" in text:
        combined = d / "s3.pem"
        combined.write_bytes(tls["cert"].read_bytes() + tls["key"].read_bytes())
        for was, now in (
            ("/etc/haproxy/certs/s3.pem", str(combined)),
            ("/etc/haproxy/sealgate-ca.pem", str(tls["ca"])),
            ("verifyhost sealgate.internal", f"verifyhost localhost source {BALANCER}"),
        ):
            assert was in text, f"the recipe no longer has {was!r}"
            text = text.replace(was, now)
    return text.replace("bind :443", f"bind 127.0.0.1:{front}").replace(" inter 5s ", " inter 200ms ")


def _client(front: int, ca: Path) -> Any:
    """A patient SDK client, as behind any balancer: it retries what a stopping replica drops."""
    return boto3.client(
        "s3",
        endpoint_url=f"https://localhost:{front}",
        aws_access_key_id=CLIENT_AKID,
        aws_secret_access_key=CLIENT_SECRET,
        region_name="us-east-1",
        verify=str(ca),
        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 10, "mode": "standard"}),
    )


@pytest.mark.parametrize("recipe", ["haproxy.cfg", "haproxy-http.cfg"])
def test_two_replicas_behind_the_haproxy_recipe(
    recipe: str, moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    front, ports = free_port(), [free_port(), free_port()]
    if recipe == "haproxy.cfg":  # TLS passes through; the client's address by PROXY protocol
        server = 'proxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32"]'
    else:  # TLS ends at HAProxy and starts again; the client's address by X-Forwarded-For
        server = f'trusted_proxies = ["{BALANCER}/32"]'
    server += "\nworkers = 1\nshutdown_timeout_seconds = 10"
    first = write_config(tmp_path, backend=moto_url, tls=tls_files, port=ports[0], server_extra=server)
    second = first.with_name("second.toml")  # the same keyring file: one keyring for all replicas
    second.write_text(first.read_text().replace(f":{ports[0]}", f":{ports[1]}"))
    logs = [tmp_path / "gate1.log", tmp_path / "gate2.log"]
    replicas = [
        subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(cfg)],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        for cfg, log in zip((first, second), logs, strict=True)
    ]
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(_adapted(recipe, front, ports, tls_files, tmp_path))
    haproxy = subprocess.Popen(["haproxy", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for port in (*ports, front):
            wait_port(port, 30)
        time.sleep(1.0)  # rise 2 at 200 ms: both replicas in service
        s3 = _client(front, tls_files["ca"])
        s3.create_bucket(Bucket="hap")
        small = {f"small-{i}": os.urandom(1000 + i) for i in range(6)}
        for key, data in small.items():
            _client(front, tls_files["ca"]).put_object(Bucket="hap", Key=key, Body=data)
        uid = s3.create_multipart_upload(Bucket="hap", Key="big")["UploadId"]
        parts = [os.urandom(5 * MiB) for _ in range(5)] + [os.urandom(12345)]
        # Each part on a connection of its own, the earlier ones kept open: leastconn spreads them.
        clients = [_client(front, tls_files["ca"]) for _ in parts]
        done = []
        for n, (data, client) in enumerate(zip(parts, clients, strict=True), 1):
            if n == 4:
                replicas[0].send_signal(signal.SIGTERM)  # a rolling restart takes gate1 away
                assert replicas[0].wait(30) == 0
            etag = client.upload_part(Bucket="hap", Key="big", UploadId=uid, PartNumber=n, Body=data)["ETag"]
            done.append({"PartNumber": n, "ETag": etag})
        _client(front, tls_files["ca"]).complete_multipart_upload(
            Bucket="hap", Key="big", UploadId=uid, MultipartUpload={"Parts": done}
        )
        reader = _client(front, tls_files["ca"])
        assert reader.get_object(Bucket="hap", Key="big")["Body"].read() == b"".join(parts)
        for key, data in small.items():
            assert reader.get_object(Bucket="hap", Key=key)["Body"].read() == data
        # The parts reached both replicas, which logged the client, not the balancer.
        served = [log.read_text(errors="replace").count(" 127.0.0.1 tester PUT /hap/big ") for log in logs]
        assert all(served), f"the parts did not reach both replicas as the client's: {served}"
    finally:
        haproxy.terminate()
        haproxy.wait(10)
        for proc in replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
