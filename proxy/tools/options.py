"""Options every command shares: which config file (``-c/--config``, ``$SEALGATE_CONFIG``, or
the one `sealgate quickstart` wrote)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

#: Where `sealgate quickstart` writes its config (relative to the directory it ran in).
QUICKSTART_CONFIG = Path(".sealgate/sealgate.toml")
CONFIG_ENV = "SEALGATE_CONFIG"

F = TypeVar("F", bound=Callable[..., Any])


def quickstart_config() -> Path | None:
    """quickstart's config in the current directory, if there is one."""
    return QUICKSTART_CONFIG if QUICKSTART_CONFIG.is_file() else None


def config_option(*, required: bool = True, help: str = "TOML config file.") -> Callable[[F], F]:
    """``-c/--config FILE``; else ``$SEALGATE_CONFIG``; else ``.sealgate/sealgate.toml`` where
    quickstart left one."""

    def found(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
        value = value or quickstart_config()
        if value is None and required:
            raise click.MissingParameter(ctx=ctx, param=param)
        return value

    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar=CONFIG_ENV,
        callback=found,
        show_envvar=True,
        help=f"{help} Default: ${CONFIG_ENV}, else {QUICKSTART_CONFIG} if it exists.",
    )


def config_was_chosen() -> bool:
    """Whether the running command's config came from -c/--config or $SEALGATE_CONFIG (not only
    found where quickstart leaves one)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return True
    source = ctx.get_parameter_source("config_path")
    return source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
