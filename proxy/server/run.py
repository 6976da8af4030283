"""Start sealgate: keyring, backend client, TLS listener (and a plain one only when asked)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from proxy.audit import AuditLog
from proxy.backend import Backend, BackendSettings
from proxy.config import Config
from proxy.kms.audited import AuditingKeyring, cache_hit_recorder
from proxy.kms.base import Keyring
from proxy.kms.materials import Materials, ReuseLimits
from proxy.server.app import GATEWAY, build_app
from proxy.server.listener import Connections, GuardedSite, bind, port_in_use
from proxy.server.state import Gateway
from proxy.server.tls import CertificateReloader, TLSConfigError, backend_ssl_context, cert_binding_problem

log = logging.getLogger("sealgate")


def make_keyring(config: Config) -> Keyring:
    """The keyring the config names; opening a local keyring checks its passphrase now."""
    kms = config.kms
    if kms.provider == "local":
        from proxy.kms.local import LocalKeyring, LocalKeyStore, passphrase_from

        assert kms.keyring is not None
        passphrase = passphrase_from(kms.passphrase_env, kms.passphrase_file)
        return LocalKeyring(LocalKeyStore.open(kms.keyring, passphrase))
    from proxy.kms.aws import AwsKmsKeyring

    return AwsKmsKeyring(
        region=kms.region,
        endpoint_url=kms.endpoint,
        access_key_id=kms.access_key_id.get_secret_value() if kms.access_key_id else None,
        secret_access_key=kms.secret_access_key.get_secret_value() if kms.secret_access_key else None,
        ca_bundle=str(kms.ca_bundle) if kms.ca_bundle else None,
        read_timeout=kms.timeout_seconds or 10.0,
        connect_timeout=min(kms.timeout_seconds or 3.0, 3.0),
        max_attempts=kms.max_attempts or 3,
        rsa_keys=kms.rsa_keys,
    )


def make_materials(config: Config, keyring: Keyring, audit: AuditLog | None = None) -> Materials:
    """The keyring behind the data-key cache the config asks for (cache hits audited into `audit`)."""
    cache = config.kms.cache
    if not config.kms.cache_enabled:
        return Materials(keyring)
    return Materials(
        keyring,
        reuse=ReuseLimits(cache.max_objects, cache.max_seconds, cache.max_bytes),
        decrypt_seconds=cache.decrypt_seconds,
        on_cache_hit=cache_hit_recorder(audit) if audit is not None else None,
    )


@asynccontextmanager
async def operator_gateway(config: Config) -> AsyncIterator[Gateway]:
    """The backend and keys of `config` for an operator tool (rewrap, gc, copy, convert): a
    `Gateway` without a server, closed when the block ends."""
    backend = make_backend(config)
    materials = make_materials(config, make_keyring(config))
    await backend.start()
    try:
        yield Gateway(config, backend, materials)
    finally:
        await backend.close()
        await materials.close()


def open_audit(config: Config, *, per_process: bool = False) -> AuditLog | None:
    """The audit log the config asks for; `per_process` (several workers serve) gives each
    process its own file, ``<path>.w<pid>``."""
    cfg = config.audit
    if cfg.path is None:
        return None
    path = cfg.path
    if per_process:
        path = path.with_name(f"{path.name}.w{os.getpid()}")
    key = cfg.hmac_key.get_secret_value().encode() if cfg.hmac_key is not None else None
    return AuditLog(path, hmac_key=key)


def make_backend(config: Config) -> Backend:
    """The backend client the config describes."""
    b = config.backend
    return Backend(
        BackendSettings(
            endpoint=b.endpoint,
            region=b.region,
            access_key_id=b.access_key_id.get_secret_value() if b.access_key_id else None,
            secret_access_key=b.secret_access_key.get_secret_value() if b.secret_access_key else None,
            ssl=backend_ssl_context(b.ca_bundle, b.verify_tls) if b.endpoint.startswith("https") else False,
            addressing_style=b.addressing_style,
            connect_timeout=b.connect_timeout_seconds,
            read_timeout=b.read_timeout_seconds,
            max_attempts=b.max_attempts,
            upload_checksum=b.upload_checksum,
        )
    )


@dataclass
class Running:
    """A started server: its runner, listeners, connections and the addresses it listens on."""

    runner: web.AppRunner
    tls_port: int | None
    plain_port: int | None
    connections: Connections | None = None
    certificates: CertificateReloader | None = None
    shutdown_timeout: float = 30.0
    sites: list[GuardedSite] = field(default_factory=list)
    watch: asyncio.Task[None] | None = None

    async def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown: stop accepting (new connections are refused), let requests in flight
        finish for up to `timeout` seconds (default ``server.shutdown_timeout_seconds``), cut
        the rest, then close the backend and keyring."""
        if self.watch is not None:
            self.watch.cancel()
        for site in self.sites:
            await site.stop()
        if self.connections is not None:
            await self.connections.drain(self.shutdown_timeout if timeout is None else timeout)
        await self.runner.cleanup()

    def reload_tls(self) -> bool | None:
        """Load the certificate, key and client CA files again (None without TLS)."""
        return self.certificates.reload() if self.certificates is not None else None


async def start(
    config: Config, *, keyring: Keyring | None = None, processes: int = 1, reuse_port: bool = False
) -> Running:
    """Bind the listeners and start serving; returns once they accept connections. `processes`
    is how many processes serve this config (`serve` forks ``server.workers`` of them): with
    more than one, each writes its own audit file. `reuse_port` (SO_REUSEPORT) lets the
    listeners share their port with the other workers, and with a sealgate started with
    ``--join``."""
    srv = config.server
    problem = cert_binding_problem(config)
    if problem is not None:
        raise TLSConfigError(problem)
    if not config.policies:
        log.warning(
            "no [[policies]] in the config: every client may do every S3 operation on every bucket "
            "(only [[keys]] key policies apply); add [[policies]] to authorize requests"
        )
    certificates = CertificateReloader.from_config(srv) if srv.tls else None
    base = keyring or make_keyring(config)
    audit = open_audit(config, per_process=processes > 1)
    if audit is not None:
        base = AuditingKeyring(base, audit)
    app = build_app(config, make_materials(config, base, audit), make_backend(config), audit)
    connections = Connections(srv.max_connections, srv.header_timeout_seconds)
    app.on_response_prepare.append(connections.on_response_prepare)
    # Requests in flight get their time in Connections.drain; this only bounds handlers that
    # outlive their cut connection.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    running = Running(runner, None, None, connections, certificates, srv.shutdown_timeout_seconds)
    if certificates is not None:
        host, port = srv.listen_address
        site = GuardedSite(runner, bind(host, port, reuse_port=reuse_port), connections, lambda: certificates.context)
        await site.start()
        running.sites.append(site)
        running.tls_port = site.port
        log.info("sealgate serving https on %s:%s", host, site.port)
        if srv.tls_reload_seconds > 0:
            running.watch = asyncio.get_running_loop().create_task(certificates.watch(srv.tls_reload_seconds))
    if srv.plain_http_listen:
        host, port = srv.plain_http_address
        site = GuardedSite(runner, bind(host, port, reuse_port=reuse_port), connections)
        await site.start()
        running.sites.append(site)
        plain_port = running.plain_port = site.port
        log.warning(
            "plain-HTTP listener on %s:%s: requests and bodies cross it unencrypted; "
            "use it only on loopback or inside a pod",
            host,
            plain_port,
        )
    return running


def reload_config(running: Running, path: Path) -> bool:
    """Apply a changed config file to a running server: clients, key policies, bucket rules.

    Connections stay up; requests already running finish under the old config. Listener, TLS,
    backend and KMS settings need a restart (SIGHUP re-reads the certificate files themselves,
    see `Running.reload_tls`). A config that does not load is logged and ignored.
    """
    from proxy.config import ConfigError, load_config

    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("config reload refused, keeping the running config: %s", exc)
        return False
    problem = cert_binding_problem(new)
    if problem is not None:
        log.error("config reload refused, keeping the running config: %s: %s", path, problem)
        return False
    running.runner.app[GATEWAY].config = new
    log.info("config reloaded from %s", path)
    return True


class PortInUse(RuntimeError):
    """A listen address is taken and ``--join`` was not given."""


def serve(config: Config, config_path: Path | None = None, *, join: bool = False) -> None:
    """Run until SIGINT/SIGTERM (graceful: see `Running.stop`); SIGHUP re-reads `config_path`
    (see reload_config) and the TLS certificate and key.

    With ``workers = N`` the process forks N-1 more before any event loop exists; all of them
    listen on the same port (SO_REUSEPORT) and the kernel spreads connections. Signals sent to
    the first process are passed on to the others. Every worker is a full, stateless sealgate.

    A port something already listens on is refused (`PortInUse`) unless `join` is set: then this
    sealgate shares it with the running one (same user only), and stopping that one with SIGTERM
    hands its traffic over without downtime.
    """
    if not join:
        for host, port in _listen_addresses(config):
            if port_in_use(host, port):
                raise PortInUse(
                    f"{host}:{port} is already in use (another sealgate?). To replace a running "
                    "sealgate without downtime, start the new one with `sealgate serve --join`, "
                    "then stop the old one with SIGTERM."
                )
    children: list[int] = []
    for _ in range(config.server.workers - 1):
        pid = os.fork()
        if pid == 0:
            children = []
            break
        children.append(pid)
    try:
        _serve_one(config, config_path, children)
    finally:
        for pid in children:
            with suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _listen_addresses(config: Config) -> list[tuple[str, int]]:
    srv = config.server
    out = [srv.listen_address] if srv.tls else []
    return out + ([srv.plain_http_address] if srv.plain_http_listen else [])


def _serve_one(config: Config, config_path: Path | None, children: list[int]) -> None:
    def forward(sig: int) -> None:
        for pid in children:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)

    async def main() -> None:
        running = await start(config, processes=config.server.workers, reuse_port=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_stop(sig: int) -> None:
            forward(sig)
            stop.set()

        def on_hup() -> None:
            forward(signal.SIGHUP)
            if config_path is not None:
                reload_config(running, config_path)
            running.reload_tls()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        await stop.wait()
        log.info("shutting down: no new connections; requests in flight get %ss", running.shutdown_timeout)
        await running.stop()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
