"""`sealgate policy check`: what the server's own evaluator decides for one client, action and
resource, from the config (identity policies only: bucket policies live on the backend)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from proxy.tools.options import config_option, verbosity_options


def fail(message: str) -> None:
    """One line on stderr, exit status 2 (as the other commands fail)."""
    click.echo(f"sealgate: {message}", err=True)
    sys.exit(2)


@click.group("policy")
@verbosity_options
def policy_group() -> None:
    """Identity policies ([[policies]]): check what they allow."""


@policy_group.command("check")
@config_option()
@click.option("--as", "client", required=True, help="The client name ([[clients]] name) asking.")
@click.option(
    "--context",
    "contexts",
    multiple=True,
    metavar="KEY=VALUE",
    help="A condition key's value, e.g. s3:prefix=home/ or aws:SourceIp=10.0.0.7 (repeat a key for several values).",
)
@click.argument("action")
@click.argument("resource")
@verbosity_options
def policy_check(config_path: Path, client: str, contexts: tuple[str, ...], action: str, resource: str) -> None:
    """Would CLIENT be allowed ACTION (s3:GetObject) on RESOURCE (arn:aws:s3:::bucket/key, or
    bucket/key)? Prints allowed/denied and the statement that decided, using the server's own
    evaluator; exits 0 when allowed, 1 when denied."""
    from datetime import UTC, datetime

    from proxy.access.actions import need_for
    from proxy.access.authorize import Caller, decide
    from proxy.access.policy import CONDITION_KEYS, KNOWN_S3_ACTIONS
    from proxy.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        fail(str(exc))
        return
    if config.client_by_name(client) is None:
        fail(f"no [[clients]] entry is named {client!r}")
    canonical = {a.lower(): a for a in KNOWN_S3_ACTIONS}.get(action.lower())
    if canonical is None:
        fail(f"unknown S3 action {action!r} (e.g. s3:GetObject)")
        return
    values: dict[str, list[str]] = {}
    for item in contexts:
        key, sep, value = item.partition("=")
        if not sep or key.strip().lower() not in CONDITION_KEYS:
            fail(f"--context {item!r}: expected KEY=VALUE with a supported key ({', '.join(sorted(CONDITION_KEYS))})")
        values.setdefault(key.strip().lower(), []).append(value)
    ctx: dict[str, str | tuple[str, ...]] = {k: v[0] if len(v) == 1 else tuple(v) for k, v in values.items()}
    source = ctx.pop("aws:sourceip", None)
    secure = ctx.pop("aws:securetransport", "true")
    when = datetime.now(UTC)
    if "aws:currenttime" in ctx:
        text = str(ctx.pop("aws:currenttime"))
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            fail(f"aws:CurrentTime must be an ISO 8601 time, got {text!r}")
    try:
        need = need_for(canonical, resource, ctx)
    except ValueError as exc:
        fail(str(exc))
        return
    caller = Caller(client, source if isinstance(source, str) else None, secure != "false")
    decision = decide(config, caller, need, when)
    if not config.policies:
        reason = "the config has no [[policies]]: every client may do everything"
    else:
        reason = decision.describe()
    verdict = "allowed" if decision.allowed else "denied"
    click.echo(f"{verdict}: {client} {canonical} {need.resource}: {reason}")
    sys.exit(0 if decision.allowed else 1)
