"""What the commands of the bulk tools (rewrap, copy, convert, gc) share: the config loaded, the
work run on an operator gateway, one clear line and a non-zero exit for what stops a run as a
whole (a missing bucket, an unreachable backend or key service, an audit log in use), how a run
shows its progress, and the summary with the objects skipped or failed (or, with ``--json``, one
JSON object saying the same)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import click

from proxy.store.gateway import Gateway
from proxy.tools.options import Location, Verbosity
from proxy.tools.progress import Tally

R = TypeVar("R")


def fail(message: str, status: int = 2) -> NoReturn:
    """One line on stderr, then exit (2: the run could not start or go on)."""
    click.echo(f"sealgate: {message}", err=True)
    sys.exit(status)


def run_tool(
    config_path: Path,
    where: Location,
    work: Callable[[Gateway], Awaitable[R]],
    *,
    audit_as: str | None,
    identity: str | None = None,
) -> R:
    """`work` on a gateway of the config's backend and keys (key uses audited into
    ``<audit.path>.<audit_as>`` when `audit_as`), as one run; what stops the run as a whole ends
    the command with one line naming it, never a traceback."""
    import aiohttp

    from proxy.audit import AuditError
    from proxy.config import ConfigError, load_config
    from proxy.kms.base import KeyringError
    from proxy.kms.keystore import KeyringFileError
    from proxy.s3.errors import S3Error
    from proxy.wiring import audited_gateway, operator_gateway

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        fail(str(exc))

    async def go() -> R:
        if audit_as is not None:
            async with audited_gateway(config, audit_as, identity) as gw:
                return await work(gw)
        async with operator_gateway(config) as gw:
            return await work(gw)

    try:
        return asyncio.run(go())
    except S3Error as exc:  # listing the bucket itself (missing, refused): nothing was changed
        fail(f"bucket {where.bucket}: {exc.code}: {exc.message}")
    except KeyringError as exc:
        fail(f"{exc.code}: {exc.message}")
    except (AuditError, KeyringFileError, RuntimeError) as exc:
        fail(str(exc))
    except (OSError, aiohttp.ClientError) as exc:
        fail(f"backend {config.backend.endpoint}: {exc or type(exc).__name__}")
    except KeyboardInterrupt:
        fail("interrupted: what was done stays done, and running the same command again goes on", 130)


def start_tally(
    desc: str,
    chosen: Verbosity,
    progress: bool | None,
    interval: float,
    *,
    dry_run: bool,
    as_json: bool,
    unit: str = "objects",
    sizes: bool = True,
) -> Tally:
    """The run's `Tally`: no progress at all with ``-q`` or ``--no-progress``, else as
    ``--progress`` and ``--progress-interval`` say."""
    show = False if chosen.quiet else progress
    return Tally(
        desc,
        show=show,
        verbose=chosen.verbose,
        dry_run=dry_run,
        json=as_json,
        interval=interval,
        unit=unit,
        sizes=sizes,
    )


def record(
    tally: Tally,
    command: str,
    fields: dict[str, object],
    *,
    dry_run: bool,
    skipped: list[tuple[str, str]],
    failed: list[tuple[str, str]] | None = None,
    would_change: bool = True,
) -> dict[str, object]:
    """The ``--json`` summary of a run of `command`: whether it was a dry run, its `fields`
    (counts, bytes, what it worked on), the objects skipped and failed with the reasons, and
    in a dry run what it would have changed (unless the `fields` say it: not `would_change`);
    `finish` adds the seconds it took."""
    out: dict[str, object] = {"command": command, "dry_run": dry_run, **fields}
    out["skipped"] = [{"key": key, "reason": why} for key, why in skipped]
    out["failed"] = [{"key": key, "reason": why} for key, why in failed or []]
    if dry_run and would_change:
        out["would_change"] = tally.would
    return out


def finish(
    tally: Tally,
    chosen: Verbosity,
    summary: str,
    problems: list[tuple[str, str, str]],
    *,
    then: str = "",
    failed: bool | None = None,
    as_json: dict[str, object] | None = None,
) -> None:
    """Clear the bar, print the `summary` (not with ``-q``) and each problem (kind, key, why),
    then the line `then`; or with `as_json` (a `record`) only that, as one JSON object, with the
    run's elapsed seconds. Exit 1 when the run `failed` (default: when there were problems)."""
    tally.close()
    if as_json is not None:
        click.echo(json.dumps({**as_json, "elapsed_seconds": round(tally.elapsed(), 3)}))
    else:
        if not chosen.quiet:
            click.echo(summary)
        for kind, key, why in problems:
            click.echo(f"  {kind} {key}: {why}")
        if then and not chosen.quiet:
            click.echo(then)
    if bool(problems) if failed is None else failed:
        sys.exit(1)
