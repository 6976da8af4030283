"""The options every command shares: one way to name what a tool works on, -v / -q everywhere."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from proxy.cli import main


def test_a_url_and_the_options_name_the_same_places() -> None:
    from proxy.tools.options import Location, parse_s3_url, resolve_location

    assert parse_s3_url("s3://b") == Location("b", "") == resolve_location(None, "b", None)
    assert parse_s3_url("s3://b/a/") == Location("b", "a/") == resolve_location(None, "b", "a/")
    assert resolve_location("s3://b/a/", None, None) == Location("b", "a/")
    # Saying the same thing both ways is not a conflict.
    assert resolve_location("s3://b/a/", "b", "a/") == resolve_location("s3://b/a/", "b", None) == Location("b", "a/")
    assert resolve_location(None, None, None) is None
    assert str(Location("b", "a/")) == "s3://b/a/"


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "says"),
    [
        ("s3://b/a/", "c", None, "s3://b/a/ and --bucket c name different places"),
        ("s3://b/a/", None, "x/", "s3://b/a/ and --prefix x/ name different places"),
        ("s3://b", None, "x/", "name different places"),
        (None, None, "x/", "--prefix needs --bucket"),
        ("b/a", None, None, "is not an s3:// URL (s3://bucket/key"),
        ("s3:///a", None, None, "names no bucket"),
    ],
)
def test_conflicting_or_malformed_places_are_usage_errors(
    url: str | None, bucket: str | None, prefix: str | None, says: str
) -> None:
    from proxy.tools.options import resolve_location

    with pytest.raises(click.UsageError) as err:
        resolve_location(url, bucket, prefix)
    assert says in err.value.message


def _commands(group: click.Group, path: str = "sealgate") -> Iterator[tuple[str, click.Command]]:
    yield path, group
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # as help and completion see them (tools load lazily)
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


def test_every_command_takes_verbose_and_quiet() -> None:
    lacking = [
        path
        for path, command in _commands(main)
        if not {"-v", "--verbose", "-q", "--quiet"} <= {o for p in command.params for o in p.opts}
    ]
    assert lacking == []
    assert len(list(_commands(main))) > 20  # the whole tree was walked


def test_verbose_and_quiet_together_are_refused() -> None:
    from click.testing import CliRunner

    for args in (["-v", "keys", "list", "-q"], ["keys", "list", "-q", "--verbose"]):
        run = CliRunner().invoke(main, args)
        assert run.exit_code == 2 and "-v/--verbose and -q/--quiet contradict each other" in run.output, run.output


def test_a_library_logger_with_a_level_of_its_own_stays_quiet() -> None:
    """werkzeug (and any library that sets its logger's level) must not print INFO lines into a
    tool's stderr: the root level alone does not stop records passed up from such loggers."""
    import contextlib
    import io
    import logging

    from click.testing import CliRunner

    from proxy.tools.options import tool_logging, verbosity_options

    printed: list[str] = []

    @click.command()
    @verbosity_options
    def tool() -> None:
        tool_logging()
        seen = io.StringIO()
        with contextlib.redirect_stderr(seen):  # the tool's handler writes to sys.stderr
            noisy = logging.getLogger("noisy-library")
            noisy.setLevel(logging.INFO)
            noisy.info("a request line nobody asked for")
            noisy.warning("a warning worth seeing")
        printed.append(seen.getvalue())

    try:
        assert CliRunner().invoke(tool, []).exit_code == 0
        assert "a warning worth seeing" in printed[0] and "nobody asked for" not in printed[0]
        assert CliRunner().invoke(tool, ["-v"]).exit_code == 0
        assert "nobody asked for" in printed[1]
    finally:
        logging.getLogger("noisy-library").setLevel(logging.NOTSET)
