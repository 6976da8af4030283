"""The operator tools' progress line (rewrap, copy)."""

from __future__ import annotations

import sys

import pytest

from proxy.tools.progress import ProgressLine


def test_progress_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    progress = ProgressLine("copied")
    progress("copied", 2_000_000)
    progress("already", 10)
    progress("skipped", 0)
    progress("copied", 500_000)
    progress.end()
    err = capsys.readouterr().err
    assert err.endswith("\rcopied 2 (2.5 MB), already done 1, skipped 1\n")
    assert progress.counts == {"copied": 2, "already": 1, "skipped": 1} and progress.bytes == 2_500_000


def test_progress_line_is_silent_off_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    progress = ProgressLine("rewrapped")
    progress("rewrapped", 100)
    progress.end()
    assert capsys.readouterr().err == ""
    assert progress.counts["rewrapped"] == 1
