"""The servers a benchmark run starts (sink, sealgate, nginx) and what /proc says about them.

Every server listens on 127.0.0.1 only, writes its log into the run's scratch directory, and is
stopped by `Server.stop` (SIGTERM, then SIGKILL after a grace period); `Servers` stops whatever
is still running when the run ends, however it ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIENT_AKID = "SGBENCHCLIENT0000001"
CLIENT_SECRET = "bench-client-secret-0123456789abcdef"
BACKEND_AKID = "SINKBENCHKEY00000001"
BACKEND_SECRET = "sink-ignores-signatures-0123456789"
PASSPHRASE = "sealgate benchmark keyring passphrase"
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    """Until something accepts on 127.0.0.1:`port`; RuntimeError with the log's tail if the
    process exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout:.0f}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- /proc -------------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (nginx workers, sealgate's forked workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` and its descendants."""
    total = 0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, every process, since boot)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _TICKS


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """VmHWM (peak resident set) in MiB of `pid` and its descendants: (largest of one process,
    sum over all of them)."""
    values = [_status_kib(p, "VmHWM") / 1024 for p in descendants(pid)]
    return max(values, default=0.0), sum(values)


def rss_mib(pid: int) -> float:
    """VmRSS of the largest of `pid` and its descendants, in MiB."""
    return max((_status_kib(p, "VmRSS") / 1024 for p in descendants(pid)), default=0.0)


def memory_mib(pid: int) -> list[dict[str, float]]:
    """Resident memory of `pid` and each descendant from ``/proc/PID/smaps_rollup``: RSS, PSS
    (shared pages divided among the processes sharing them) and USS (pages no other process
    has), in MiB. Forked workers share what was imported before the fork, so RSS counts it in
    every worker while PSS counts each page once in all."""
    out = []
    for p in descendants(pid):
        fields: dict[str, int] = {}
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[name] = int(parts[0])
        uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
        out.append(
            {
                "rss_mib": round(fields.get("Rss", 0) / 1024, 1),
                "pss_mib": round(fields.get("Pss", 0) / 1024, 1),
                "uss_mib": round(uss / 1024, 1),
            }
        )
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > clear_refs``); False where that is refused."""
    ok = True
    for p in descendants(pid):
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


# --- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process started by the benchmark."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    scheme: str = "http"

    @property
    def pid(self) -> int:
        """The (master) process id."""
        return self.proc.pid

    @property
    def endpoint(self) -> str:
        """Base URL on loopback."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def check_alive(self) -> None:
        """RuntimeError with the log's tail if the process has died."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{_tail(self.log)}")

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        """Ask the process to stop, then kill it (and its children) if it does not."""
        if self.proc.poll() is not None:
            return
        tree = descendants(self.proc.pid)
        self.proc.send_signal(sig)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            for p in tree:
                with suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class Servers:
    """Starts the servers of one run in a scratch directory and stops them all at the end."""

    workdir: Path
    running: list[Server] = field(default_factory=list)

    def _spawn(
        self, name: str, argv: list[str], port: int, scheme: str = "http", env: dict[str, str] | None = None
    ) -> Server:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env={**os.environ, **(env or {})},
            )
        server = Server(name, proc, port, log, scheme)
        self.running.append(server)
        try:
            wait_port(port, proc, log)
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self, server: Server) -> None:
        """Stop one server."""
        server.stop(signal.SIGQUIT if server.name.startswith("nginx") else signal.SIGTERM)
        if server in self.running:
            self.running.remove(server)

    def stop_all(self) -> None:
        """Stop everything still running (in reverse start order)."""
        for server in reversed(list(self.running)):
            self.stop(server)

    # --- the sink ---

    def start_sink(self, etag: str = "fast") -> Server:
        """benchmarks/sink.py in its own process.

        glibc's malloc is told to keep freed memory (no trimming, no mmap per chunk): otherwise
        every stored body costs the sink fresh page faults, and its CPU per upload varied
        tenfold from one run to the next. The first round of each figure still pays them once,
        which is why the runner warms up first."""
        port = free_port()
        argv = [sys.executable, str(HERE / "sink.py"), "--port", str(port), "--etag", etag]
        env = {"MALLOC_MMAP_THRESHOLD_": str(32 * 1024**2), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
        return self._spawn("sink", argv, port, env=env)

    # --- sealgate ---

    def prepare_sealgate_files(self) -> dict[str, Path]:
        """A certificate (`sealgate certs init` code) and a local keyring with key ``default``."""
        from proxy.certs import init_certs
        from proxy.kms.local import LocalKeyStore

        certs = init_certs(self.workdir / "certs", ("localhost", "127.0.0.1"))
        keyring = self.workdir / "keyring"
        passfile = self.workdir / "keyring.pass"
        if not keyring.exists():
            store = LocalKeyStore.create(keyring, PASSPHRASE.encode())
            store.create_key("default")
            store.save()
            passfile.write_text(PASSPHRASE + "\n")
            passfile.chmod(0o600)
            keyring.chmod(0o600)
        return {
            "ca": certs.ca_cert,
            "cert": certs.server_cert,
            "key": certs.server_key,
            "keyring": keyring,
            "passfile": passfile,
        }

    def start_sealgate(
        self,
        files: dict[str, Path],
        backend: str,
        *,
        workers: int = 1,
        key_cache: bool = False,
        tag: str = "",
        env: dict[str, str] | None = None,
    ) -> Server:
        """`python -m proxy.cli serve --config ...` as a subprocess (so /proc sees only it);
        `env` is added to its environment (PYTHONPATH=DIR runs another copy of sealgate)."""
        port = free_port()
        name = f"sealgate{tag}"
        config = self.workdir / f"{name}.toml"
        config.write_text(
            f"""# written by benchmarks/run.py
[server]
listen = "127.0.0.1:{port}"
tls_cert = "{files["cert"]}"
tls_key = "{files["key"]}"
workers = {workers}

[backend]
endpoint = "{backend}"
region = "us-east-1"
access_key_id = "{BACKEND_AKID}"
secret_access_key = "{BACKEND_SECRET}"

[kms]
provider = "local"
keyring = "{files["keyring"]}"
passphrase_file = "{files["passfile"]}"
default_key = "default"

[kms.cache]
enabled = {"true" if key_cache else "false"}

[[clients]]
name = "bench"
access_key_id = "{CLIENT_AKID}"
secret_access_key = "{CLIENT_SECRET}"
"""
        )
        argv = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)]
        server = self._spawn(name, argv, port, "https", env=env)
        # The port accepts once the first worker listens; give forked workers a moment too.
        time.sleep(0.3 if workers > 1 else 0.0)
        return server

    # --- nginx ---

    def start_nginx(self, files: dict[str, Path], backend_port: int, *, workers: int = 1) -> Server:
        """Debian's nginx as a TLS-terminating pass-through proxy in front of the sink: no
        buffering of requests or responses, 1 MiB buffers, keep-alive to the upstream."""
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(exe).exists():
            raise RuntimeError("nginx is not installed (apt-get install -y nginx)")
        port = free_port()
        prefix = self.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        prefix.chmod(0o755)
        conf = prefix / "nginx.conf"
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"""# written by benchmarks/run.py
{user}worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream sink {{
        server 127.0.0.1:{backend_port};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {files["cert"]};
        ssl_certificate_key {files["key"]};
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests 1000000;
        keepalive_timeout 75s;
        client_max_body_size 0;
        client_body_buffer_size 1m;
        location / {{
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_buffer_size 1m;
            proxy_buffers 4 1m;
            proxy_busy_buffers_size 2m;
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
        }}
    }}
}}
"""
        )
        argv = [exe, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]
        return self._spawn("nginx", argv, port, "https")


def wait_healthy(server: Server, ca: Path, timeout: float = 20.0) -> None:
    """Until sealgate answers ``GET /-/healthz`` over TLS."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            with urllib.request.urlopen(f"{server.endpoint}/-/healthz", context=ctx, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} is not healthy: {last}")


def fetch_metrics(server: Server, ca: Path) -> str:
    """sealgate's /-/metrics text."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(f"{server.endpoint}/-/metrics", context=ctx, timeout=5) as resp:
        return str(resp.read().decode())


@contextmanager
def servers(workdir: Path) -> Iterator[Servers]:
    """A `Servers` whose processes are stopped when the block ends, however it ends."""
    s = Servers(workdir)
    try:
        yield s
    finally:
        s.stop_all()
