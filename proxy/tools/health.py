"""`sealgate health`: ask the sealgate this config describes, on this host, whether it is alive
(``/-/healthz``) or ready (``/-/readyz``); for container health checks, which should not have to
repeat the port the config already names."""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

import click

from proxy.tools.options import config_option, verbosity_options


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
@verbosity_options
def health_cmd(config_path: Path, ready: bool, timeout: float) -> None:
    """Exit 0 if this host's sealgate (the config's listener) answers healthy, else 1."""
    from proxy.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(f"sealgate: {exc}", err=True)
        sys.exit(2)
    srv = config.server
    url = health_url(srv.listen_address if srv.tls else srv.plain_http_address, srv.tls, ready)
    # Our own process on this host: its certificate names the public host name, not loopback.
    context = ssl._create_unverified_context()  # noqa: S323
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:  # noqa: S310
            click.echo(resp.read().decode("utf-8", "replace").strip())
    except urllib.error.HTTPError as exc:
        click.echo(f"{url}: {exc.code} {exc.read().decode('utf-8', 'replace').strip()}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"{url}: {exc}", err=True)
        sys.exit(1)
