"""`sealgate health`: ask the sealgate this config describes, on this host, whether it is alive
(``/-/healthz``) or ready (``/-/readyz``); for container health checks, which should not have to
repeat the port the config already names (``--json``: the answer as one JSON object, for a
script). Where the listener expects PROXY protocol headers (``server.proxy_protocol``), the
check opens with a v2 LOCAL header, as a balancer's own health checks do, so this host's
address must be among ``server.trusted_proxies``."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click

from proxy.net.proxy_protocol import v2_header
from proxy.tools.options import config_option, json_option, verbosity_options


def health_url(listen: tuple[str, int], tls: bool, ready: bool) -> str:
    """The URL of this host's own sealgate for a listen address (wildcards mean loopback)."""
    host, port = listen
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}/-/{'readyz' if ready else 'healthz'}"


@click.command("health")
@config_option()
@click.option("--ready", is_flag=True, help="Ask /-/readyz (backend and key service usable) instead of /-/healthz.")
@click.option("--timeout", default=3.0, show_default=True, help="Seconds to wait for the answer.")
@json_option
@verbosity_options
def health_cmd(config_path: Path, ready: bool, timeout: float, as_json: bool) -> None:
    """Exit 0 if this host's sealgate (the config's listener) answers healthy, else 1."""
    from proxy.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(f"sealgate: {exc}", err=True)
        sys.exit(2)
    srv = config.server
    url = health_url(srv.listen_address if srv.tls else srv.plain_http_address, srv.tls, ready)
    status: int | None = None
    try:
        status, answer = ask(url, timeout, proxy_header=v2_header(None) if srv.proxy_protocol else b"")
    except OSError as exc:
        hint = " (server.proxy_protocol: is this host in server.trusted_proxies?)" if srv.proxy_protocol else ""
        answer = f"{str(exc) or type(exc).__name__}{hint}"
    healthy = status is not None and status < 300
    if as_json:
        click.echo(json.dumps({"url": url, "ready": ready, "healthy": healthy, "status": status, "answer": answer}))
    elif healthy:
        click.echo(answer)
    else:
        click.echo(f"{url}: {answer}" if status is None else f"{url}: {status} {answer}", err=True)
    if not healthy:
        sys.exit(1)


def ask(url: str, timeout: float, proxy_header: bytes = b"") -> tuple[int, str]:
    """GET `url` on this host's sealgate, opening the connection with `proxy_header`: the status
    and the body's text."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(proxy_header)
        if parts.scheme == "https":
            # Our own process on this host: its certificate names the public host name, not loopback.
            context = ssl._create_unverified_context()  # noqa: S323
            sock = context.wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock  # the connection, PROXY header and TLS already in place
        conn.request("GET", parts.path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace").strip()
    finally:
        sock.close()
