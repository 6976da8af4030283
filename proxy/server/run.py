"""Run sealgate: listeners (TLS, and plain HTTP only when asked), worker processes, signals,
config and certificate reloads, graceful shutdown. The parts it serves come from proxy.wiring."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from proxy.config import Config
from proxy.kms.base import KeyAccessDenied, Keyring, KeyUnavailable
from proxy.kms.keyring_object import KeyringObject
from proxy.kms.materials import Materials
from proxy.net.forwarded import TrustedProxies, trusted_proxies
from proxy.server.app import GATEWAY, build_app
from proxy.server.listener import Connections
from proxy.server.peers import PEERS, Peers
from proxy.server.sites import GuardedSite, bind, port_in_use
from proxy.server.tls import CertificateReloader, TLSConfigError, cert_binding_problem
from proxy.server.workers import Channel, Workers, die_with_parent
from proxy.store.gateway import Gateway
from proxy.wiring import make_gateway, open_audit

log = logging.getLogger("sealgate")


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
    peers: Peers | None = None

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
        if self.peers is not None:
            await self.peers.close()

    def reload_tls(self) -> bool | None:
        """Load the certificate, key and client CA files again (None without TLS)."""
        return self.certificates.reload() if self.certificates is not None else None


async def start(
    config: Config,
    *,
    keyring: Keyring | None = None,
    processes: int = 1,
    reuse_port: bool = False,
    channel: Channel | None = None,
) -> Running:
    """Bind the listeners and start serving; returns once they accept connections. `processes`
    is how many processes serve this config (`serve` forks ``server.workers`` of them): with
    more than one, each writes its own audit file. `reuse_port` (SO_REUSEPORT) lets the
    listeners share their port with the other workers, and with a sealgate started with
    ``--join``. `channel`: how this worker reaches the others (proxy/server/peers.py), with
    several."""
    srv = config.server
    _check_config(config)
    certificates = CertificateReloader.from_config(srv) if srv.tls else None
    audit = open_audit(config, per_process=processes > 1)
    gateway = make_gateway(config, keyring=keyring, audit=audit)
    await _check_keyring_object(gateway)
    await _check_local_keys(config, gateway.materials)
    app = build_app(gateway)
    peers = await _start_peers(app, gateway, channel)
    connections = Connections(
        srv.max_connections,
        srv.header_timeout_seconds,
        anonymous=srv.anonymous_share,
        per_address=srv.anonymous_per_address,
        anonymous_idle=srv.anonymous_idle_timeout_seconds,
    )
    connections.install(app)
    # Requests in flight get their time in Connections.drain; this only bounds handlers that
    # outlive their cut connection.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    running = Running(runner, None, None, connections, certificates, srv.shutdown_timeout_seconds, peers=peers)

    def trusted() -> TrustedProxies:  # as the config is now: a reload may change the list
        return trusted_proxies(app[GATEWAY].config.server.trusted_proxies)

    if certificates is not None:
        host, port = srv.listen_address
        site = GuardedSite(
            runner,
            bind(host, port, reuse_port=reuse_port),
            connections,
            lambda: certificates.context,
            trusted=trusted,
            proxy_protocol=srv.proxy_protocol,
        )
        await site.start()
        running.sites.append(site)
        running.tls_port = site.port
        pp = " (each connection from server.trusted_proxies, with a PROXY header)" if srv.proxy_protocol else ""
        log.info("sealgate serving https on %s:%s%s", host, site.port, pp)
        if srv.tls_reload_seconds > 0:
            running.watch = asyncio.get_running_loop().create_task(certificates.watch(srv.tls_reload_seconds))
    if srv.plain_http_listen:
        host, port = srv.plain_http_address
        # With TLS on, this one is a sidecar's (loopback, a pod): no balancer in between.
        public = not srv.tls
        site = GuardedSite(
            runner,
            bind(host, port, reuse_port=reuse_port),
            connections,
            trusted=trusted,
            proxy_protocol=srv.proxy_protocol and public,
        )
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


def _check_config(config: Config) -> None:
    """Refuse a certificate that cannot serve the config; warn of a config without policies."""
    problem = cert_binding_problem(config)
    if problem is not None:
        raise TLSConfigError(problem)
    if not config.policies:
        log.warning(
            "no [[policies]] in the config: every client may do every S3 operation on every bucket "
            "(only [[keys]] key policies apply); add [[policies]] to authorize requests"
        )


async def _start_peers(app: web.Application, gateway: Gateway, channel: Channel | None) -> Peers | None:
    """With several workers: this one's end of their channel, serving (proxy/server/peers.py),
    and its slot in the s3ec-v3 upload ids it makes."""
    if channel is None:
        return None
    gateway.worker_slot = channel.slot
    peers = app[PEERS] = Peers(gateway, channel)
    await peers.start()
    return peers


async def _check_keyring_object(gateway: Gateway) -> None:
    """A keyring object is changed by read-modify-writes with conditional PUTs: on a backend
    that ignores their conditions, two hosts rotating at once would lose a key version (and the
    objects sealed under it), so such a backend is refused now (KeyringFileError)."""
    local = gateway.local_keys
    if local is not None and isinstance(local.path, KeyringObject):
        await asyncio.to_thread(local.path.check_conditional_writes)


async def _check_local_keys(config: Config, materials: Materials) -> None:
    """A local keyring must hold the config's default key, or sealgate would start and fail at
    the first upload (a typo'd ``kms.default_key``). A bucket rule may name a key made later, so
    one the keyring lacks is a warning (its uploads fail until the key exists); remote keyrings
    are not asked: a KMS that is down at start-up is a readiness problem, not a config error."""
    if config.kms.provider != "local":
        return
    try:
        await materials.ready(config.kms.default_key)
    except KeyUnavailable as exc:
        # A keyring object that cannot be read at the moment (its last look failed) is a
        # readiness problem, not a config error: the loaded keyring serves, /-/readyz says why.
        log.warning("%s", exc.message)
        return
    except KeyAccessDenied:
        raise RuntimeError(
            f"kms.default_key: the keyring {config.kms.keyring} holds no usable key "
            f"{config.kms.default_key!r} (see `sealgate keys list`)"
        ) from None
    for i, rule in enumerate(config.buckets):
        if rule.key is None or rule.key == config.kms.default_key or ":" in rule.key:
            continue  # ":": a key of another keyring (routed by its reference)
        try:
            await materials.ready(rule.key)
        except KeyUnavailable:
            return
        except KeyAccessDenied:
            log.warning(
                "buckets[%d] (%s): the keyring %s holds no usable key %r: uploads there fail until "
                "`sealgate keys create %s`",
                i,
                rule.name,
                config.kms.keyring,
                rule.key,
                rule.key,
            )


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


def serve(config: Config, config_path: Path | None = None, *, join: bool = False, worker: bool = False) -> None:
    """Run until SIGINT/SIGTERM (graceful: see `Running.stop`); SIGHUP re-reads `config_path`
    (see reload_config) and the TLS certificate and key.

    With ``workers = N`` the process forks N-1 more before any event loop exists; all of them
    listen on the same port (SO_REUSEPORT) and the kernel spreads connections. Signals sent to
    the first process are passed on to the others. Every worker is a full sealgate, stateless
    but for the s3ec-v3 uploads it created, whose parts the others pass to it over their private
    channel (proxy/server/peers.py); one that dies is replaced in its slot, and all go when the
    first one does (`proxy.server.workers`).
    `worker` is such a replacement: it only serves, on the port the others hold.

    A port something already listens on is refused (`PortInUse`) unless `join` is set: then this
    sealgate shares it with the running one (same user only), and stopping that one with SIGTERM
    hands its traffic over without downtime.
    """
    _hold_early_hup()
    if worker:
        _serve_one(config, config_path, Workers({}, None), watch=False, channel=Channel.from_environment())
        return
    problem = s3ec_replicas_problem(config)
    if problem is not None:
        log.warning("%s", problem)
    if not join:
        for host, port in _listen_addresses(config):
            if port_in_use(host, port):
                raise PortInUse(
                    f"{host}:{port} is already in use (another sealgate?). To replace a running "
                    "sealgate without downtime, start the new one with `sealgate serve --join`, "
                    "then stop the old one with SIGTERM."
                )
    count = config.server.workers
    channel = Channel.create(count) if count > 1 else None
    children: dict[int, int] = {}
    slot = 0
    for i in range(1, count):
        pid = os.fork()
        if pid == 0:
            die_with_parent()
            children, slot = {}, i
            break
        children[pid] = i
    workers = Workers(children, config_path, channel)
    if slot != 0:
        log.addFilter(_first_process_reports)
    try:
        mine = channel.as_slot(slot) if channel is not None else None
        _serve_one(config, config_path, workers, watch=slot == 0 and count > 1, channel=mine)
    except Exception:
        if slot == 0:
            raise
        # The first process starts from the same config and reports the same failure, once; a
        # failure of this worker's own shows in the replacement the first process starts for it.
        log.debug("worker %d could not start", slot, exc_info=True)
        os._exit(2)
    finally:
        workers.wait()
        if slot == 0 and channel is not None:
            channel.remove()


def _first_process_reports(record: logging.LogRecord) -> bool:
    """In a forked worker until it serves: the start-up warnings about the config (no policies,
    a key the keyring lacks, ...) are the first process's to give, once rather than once per worker."""
    return record.levelno != logging.WARNING


def s3ec_replicas_problem(config: Config) -> str | None:
    """Why this config's s3ec-v3 multipart uploads could fail across replicas, or None.

    Such an upload's parts form one GCM stream whose state lives in the process that created it
    (proxy/store/s3ec_uploads.py). The workers of one sealgate pass its parts to that process
    (proxy/server/peers.py), but another replica cannot: a balancer must send every request of
    an upload to the replica that created it. sealgate cannot see its replicas; a PROXY
    protocol listener or trusted proxies say it runs behind a balancer."""
    rules = [rule.name for rule in config.buckets if rule.format == "s3ec-v3"]
    srv = config.server
    if not rules or not (srv.proxy_protocol or srv.trusted_proxies):
        return None
    behind = "server.proxy_protocol" if srv.proxy_protocol else "server.trusted_proxies"
    return (
        f'[[buckets]] {", ".join(rules)} write format = "s3ec-v3", whose multipart uploads keep their '
        "encryption state in the sealgate that created them (its workers pass parts to each other, "
        f"but replicas cannot): with {behind} set, sealgate runs behind a balancer, which must send every "
        "request of one upload to the replica that created it (sticky, e.g. HAProxy `balance source`), "
        "or its parts fail with NoSuchUpload; single PUTs and reads work on any replica"
    )


_early_hup: list[int] = []


def _hold_early_hup() -> None:
    """Until the event loop's handlers are in place, a SIGHUP (a reload, or one the first
    process passes on to a worker it just forked) is remembered and honoured once they are,
    instead of killing the process with the default action."""
    signal.signal(signal.SIGHUP, lambda signum, frame: _early_hup.append(signum))


def _listen_addresses(config: Config) -> list[tuple[str, int]]:
    srv = config.server
    out = [srv.listen_address] if srv.tls else []
    return out + ([srv.plain_http_address] if srv.plain_http_listen else [])


def _serve_one(
    config: Config, config_path: Path | None, workers: Workers, *, watch: bool, channel: Channel | None = None
) -> None:
    async def main() -> None:
        running = await start(config, processes=config.server.workers, reuse_port=True, channel=channel)
        log.removeFilter(_first_process_reports)
        local_keyring = running.runner.app[GATEWAY].local_keyring
        if local_keyring is not None:
            workers.keyring_copy = local_keyring.sealed_copy
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        watcher = asyncio.create_task(workers.watch()) if watch else None

        def on_stop(sig: int) -> None:
            workers.forward(sig)
            stop.set()

        def on_hup() -> None:
            workers.forward(signal.SIGHUP)
            if config_path is not None:
                reload_config(running, config_path)
            running.reload_tls()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        if _early_hup:
            _early_hup.clear()
            on_hup()
        await stop.wait()
        if watcher is not None:
            watcher.cancel()
        log.info("shutting down: no new connections; requests in flight get %ss", running.shutdown_timeout)
        await running.stop()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
