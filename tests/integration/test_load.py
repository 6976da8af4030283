"""The load test of benchmarks/load in its short CI form: concurrent clients mixing every
operation against one sealgate process in front of moto, every read checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_load_run_has_no_errors_no_corruption_and_no_leaks(moto_url: str, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.load",
            "--clients", "40", "--warmup-seconds", "4", "--seconds", "8", "--min-size", "1KiB", "--max-size", "1MiB",
            "--backend", moto_url, "--json", str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == 0 and result["corrupt_reads"] == 0
    # Every kind of operation ran, many times, and reads were checked.
    assert set(result["ops"]) == {"PUT", "GET", "HEAD", "LIST", "DELETE"}
    assert min(result["ops"].values()) >= 10, result["ops"]
    assert result["fds_after_load"] <= result["fds_after_warmup"]
