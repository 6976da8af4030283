"""Options every command shares: which config file (``-c/--config``, ``$SEALGATE_CONFIG``, or
the one `sealgate quickstart` wrote), how much it says (``-v`` / ``-q``), and for the bulk tools
what they work on (``s3://bucket[/prefix]`` or ``--bucket`` / ``--prefix``), ``--dry-run``,
how they show progress and ``--json``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
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


# --- what a tool works on: s3://bucket[/prefix] or --bucket/--prefix ------------------------------


@dataclass(frozen=True)
class Location:
    """A bucket and a key prefix (or, for a single-object copy, a key) in it."""

    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_url(url: str) -> Location:
    """The bucket and prefix of ``s3://bucket[/prefix]``; ValueError for anything else."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3:// URL (s3://bucket/key or s3://bucket/prefix)")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket")
    return Location(bucket, prefix)


def resolve_location(
    url: str | None,
    bucket: str | None,
    prefix: str | None,
    *,
    flags: tuple[str, str] = ("--bucket", "--prefix"),
) -> Location | None:
    """The place a URL or its options name (None: neither was given). Both together are refused
    unless they name the same place, and a prefix option needs its bucket option."""
    bucket_flag, prefix_flag = flags
    if url is None:
        if bucket is None:
            if prefix is not None:
                raise click.UsageError(f"{prefix_flag} needs {bucket_flag} (or give s3://BUCKET/PREFIX instead)")
            return None
        return Location(bucket, prefix or "")
    try:
        named = parse_s3_url(url)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if bucket is None and prefix is None:
        return named
    given = Location(named.bucket if bucket is None else bucket, named.prefix if prefix is None else prefix)
    if given != named:
        options = " ".join(f"{flag} {value}" for flag, value in ((bucket_flag, bucket), (prefix_flag, prefix)) if value)
        raise click.UsageError(f"{url} and {options} name different places: give one of them")
    return named


def location_options(*, prefix: bool = True, what: str = "the objects to work on") -> Callable[[F], F]:
    """A positional ``s3://BUCKET[/PREFIX]`` (TARGET) and ``--bucket`` / ``--prefix`` (without
    `prefix`, for a tool that works on whole buckets, ``--prefix`` is hidden); resolve them with
    `required_location`."""

    def decorate(f: F) -> F:
        # Hidden where refused, so that the refusal can say why (`required_location`).
        f = click.option("--prefix", default=None, hidden=not prefix, help="Only objects whose key starts with this.")(
            f
        )
        f = click.option("--bucket", default=None, help="The bucket (instead of s3://BUCKET).")(f)
        metavar = "[s3://BUCKET[/PREFIX]]" if prefix else "[s3://BUCKET]"
        return click.argument("target", required=False, metavar=metavar)(f)

    return decorate


def required_location(url: str | None, bucket: str | None, prefix: str | None = None, *, whole: str = "") -> Location:
    """The place a tool works on (`location_options`); a usage error when none is named, or when
    a prefix is for a tool that works on whole buckets only (`whole` says why)."""
    found = resolve_location(url, bucket, prefix)
    if found is None:
        raise click.UsageError("name the bucket: s3://BUCKET" + ("" if whole else "[/PREFIX]") + " or --bucket BUCKET")
    if whole and found.prefix:
        raise click.UsageError(f"{found} names a prefix, but {whole}: give s3://{found.bucket}")
    return found


def dry_run_option(help: str = "Only list what would be done; change nothing.") -> Callable[[F], F]:
    """``--dry-run`` of every command that changes things."""
    return click.option("--dry-run", is_flag=True, help=help)


#: The seconds between plain progress lines (`progress_option`), where no option says.
PROGRESS_INTERVAL_ENV = "SEALGATE_PROGRESS_INTERVAL"


def progress_option(f: F) -> F:
    """``--progress/--no-progress`` of the bulk tools (a bar with a total and ETA on stderr; on a
    stderr that is not a terminal, by default, a plain line every ``--progress-interval``)."""
    f = click.option(
        "--progress-interval",
        type=click.FloatRange(min=0, min_open=True),
        default=10.0,
        show_default=True,
        envvar=PROGRESS_INTERVAL_ENV,
        show_envvar=True,
        metavar="SECONDS",
        help="Where stderr is not a terminal: a progress line this often.",
    )(f)
    return click.option(
        "--progress/--no-progress",
        default=None,
        help="Progress bar on stderr (--no-progress: no progress at all). [default: a bar on a terminal, "
        "else a plain line every --progress-interval]",
    )(f)


def json_option(f: F) -> F:
    """``--json``: the command's summary as one JSON object on stdout, and nothing else there."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="The summary as one JSON object on stdout (nothing else there); exit status as without.",
    )(f)


# --- how much a command says: -v / -q ----------------------------------------------------------


@dataclass(frozen=True)
class Verbosity:
    """``-v``: a line per object (bulk tools) and debug logging; ``-q``: warnings and errors only
    (the bulk tools also drop their progress bar and summary line)."""

    verbose: bool = False
    quiet: bool = False


_META = "sealgate.verbosity"


def verbosity_options(f: F) -> F:
    """``-v/--verbose`` and ``-q/--quiet``, the same on every command (and on ``sealgate`` itself,
    before the command's name); read them with `verbosity`."""

    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value:
            other = "quiet" if param.name == "verbose" else "verbose"
            if ctx.meta.get(f"{_META}.{other}"):
                raise click.UsageError("-v/--verbose and -q/--quiet contradict each other", ctx)
            ctx.meta[f"{_META}.{param.name}"] = True  # meta is shared by the group's and the command's contexts
        return value

    f = click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=remember, help="Only warnings and errors."
    )(f)
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=remember,
        help="A line per object (the bulk tools) and debug logging.",
    )(f)


def verbosity() -> Verbosity:
    """The running command's ``-v`` / ``-q``."""
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    return Verbosity(bool(meta.get(f"{_META}.verbose")), bool(meta.get(f"{_META}.quiet")))


class _AroundBars(logging.StreamHandler[Any]):
    """Log lines on stderr that do not break a progress bar drawn there (tqdm clears it first)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - as logging's own handlers do
            self.handleError(record)


class _Once(logging.Filter):
    """Each distinct message once: a tool retrying an unreachable backend says so once, not per try."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        seen = (record.name, record.getMessage())
        if seen in self._seen:
            return False
        self._seen.add(seen)
        return True


def tool_logging() -> Verbosity:
    """Logging for a tool run by hand: warnings and errors on stderr, each distinct one once (with
    ``-v`` every line, debug ones too; with ``-q`` errors only); returns the command's `Verbosity`."""
    from proxy.logs import PlainFormatter

    chosen = verbosity()
    handler = _AroundBars()
    handler.setFormatter(PlainFormatter("%(levelname)s %(name)s: %(message)s"))
    if not chosen.verbose:
        handler.addFilter(_Once())
    level = logging.DEBUG if chosen.verbose else logging.ERROR if chosen.quiet else logging.WARNING
    # On the handler too: a library logger with a level of its own (werkzeug sets INFO) would
    # otherwise pass its records on to this handler whatever the root logger's level.
    handler.setLevel(level)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # botocore logs request details (headers) at DEBUG; never let them through.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    return chosen
