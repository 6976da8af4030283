"""`sealgate health`: ask the sealgate this config describes, on this host, whether it is alive
(``/-/healthz``) or ready (``/-/readyz``); for container health checks, which should not have to
repeat the port the config already names (``--json``: the answer as one JSON object, for a
script)."""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

import click

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
    # Our own process on this host: its certificate names the public host name, not loopback.
    context = ssl._create_unverified_context()  # noqa: S323
    status: int | None = None
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:  # noqa: S310
            status, answer = resp.status, resp.read().decode("utf-8", "replace").strip()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read().decode("utf-8", "replace").strip()
    except OSError as exc:
        answer = str(exc)
    healthy = status is not None and status < 300
    if as_json:
        click.echo(json.dumps({"url": url, "ready": ready, "healthy": healthy, "status": status, "answer": answer}))
    elif healthy:
        click.echo(answer)
    else:
        click.echo(f"{url}: {answer}" if status is None else f"{url}: {status} {answer}", err=True)
    if not healthy:
        sys.exit(1)
