"""`sealgate audit`: commands on the key-use audit log."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from proxy.audit import verify_file
from proxy.tools.options import verbosity_options


@click.group("audit")
@verbosity_options
def audit_group() -> None:
    """The key-use audit log."""


@audit_group.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--hmac-key-env",
    metavar="VAR",
    default=None,
    help="Environment variable holding the audit HMAC key (for HMAC-chained logs).",
)
@verbosity_options
def verify_cmd(file: Path, hmac_key_env: str | None) -> None:
    """Check the hash chain of an audit log FILE: exit 0 if intact, 1 if tampered."""
    hmac_key: bytes | None = None
    if hmac_key_env is not None:
        value = os.environ.get(hmac_key_env)
        if not value:
            click.echo(f"sealgate: environment variable {hmac_key_env} is unset or empty", err=True)
            sys.exit(2)
        hmac_key = value.encode()
    try:
        result = verify_file(file, hmac_key)
    except (OSError, ValueError) as exc:
        click.echo(f"sealgate: cannot verify {file}: {exc}", err=True)
        sys.exit(2)
    if result.ok:
        click.echo(f"OK: {result.count} records")
        click.echo(f"last hash: {result.last_hash}")
        return
    click.echo(f"TAMPERED at line {result.bad_line}: {result.reason}")
    sys.exit(1)
