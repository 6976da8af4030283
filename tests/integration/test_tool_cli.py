"""The bulk tools (rewrap, copy, convert, gc) as one family (issue 21): the same two ways to name
what they work on, a --dry-run that changes nothing, progress with a total and ETA on a terminal
and as a plain line now and then elsewhere, and one line for what stops a run as a whole.

Real moto behind a real sealgate, and the real command run as a process."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from proxy.cli import main
from tests.conftest import PASSPHRASE, Stack, backend_client, free_port, multipart_put, start_stack, write_config

SEALGATE = [sys.executable, "-m", "proxy.cli"]
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def tools(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A sealgate on moto whose local keyring holds "default" and "key2"."""
    from proxy.kms.keystore import LocalKeyStore

    st = start_stack(tmp_path_factory.mktemp("tools"), moto_url, tls_files)
    store = LocalKeyStore.open(st.dir / "keyring", PASSPHRASE.encode())
    store.create_key("key2")
    store.save()
    yield st
    st.gate.stop()


def _cli(st: Stack, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a script runs it: stdout and stderr both pipes (`env` added to ours)."""
    return subprocess.run(
        [*SEALGATE, *args, "-c", str(st.dir / "sealgate.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def _on_a_terminal(st: Stack, *args: str) -> tuple[int, str, str]:
    """The command with its stderr on a terminal (a fresh pty, which reports no size) and its
    stdout on a pipe: (status, stdout, what the terminal showed)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [*SEALGATE, *args, "-c", str(st.dir / "sealgate.toml")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    )
    os.close(terminal)
    shown = bytearray()

    def pump() -> None:  # read while it runs: Linux drops what is unread once the pty closes
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        reader.join(10)
        os.close(controller)
    return proc.returncode, out, shown.decode("utf-8", "replace")


def _snapshot(raw: Any, *buckets: str) -> dict[str, Any]:
    """Everything stored in `buckets` (sealgate's own records too): each object's body digest and
    metadata, and the multipart uploads in progress."""
    out: dict[str, Any] = {}
    for bucket in buckets:
        for item in raw.list_objects_v2(Bucket=bucket).get("Contents", []):
            obj = raw.get_object(Bucket=bucket, Key=item["Key"])
            out[f"{bucket}/{item['Key']}"] = (hashlib.sha256(obj["Body"].read()).hexdigest(), obj["Metadata"])
        uploads = raw.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        out[f"{bucket} uploads"] = sorted((u["Key"], u["UploadId"]) for u in uploads)
    return out


def _key_of(raw: Any, bucket: str, key: str) -> str:
    return str(raw.head_object(Bucket=bucket, Key=key)["Metadata"].get("sg-kr", "not a sealgate object"))


def test_each_tool_takes_a_url_or_the_bucket_options(tools: Stack) -> None:
    s3, raw = tools.client(), backend_client(tools.backend_url)
    for bucket in ("tl-forms", "tl-forms-dst"):
        s3.create_bucket(Bucket=bucket)
    bodies = {key: os.urandom(500) for key in ("a/1", "a/2", "b/1")}
    for key, body in bodies.items():
        s3.put_object(Bucket="tl-forms", Key=key, Body=body)

    r = _cli(tools, "rewrap", "s3://tl-forms/a/", "--to-key", "key2")
    assert r.returncode == 0 and r.stdout.startswith("rewrapped 2 objects"), r.stdout + r.stderr
    assert [_key_of(raw, "tl-forms", k)[:11] for k in bodies] == ["local:key2:", "local:key2:", "local:defau"]
    r = _cli(tools, "rewrap", "--bucket", "tl-forms", "--prefix", "b/", "--to-key", "key2")
    assert r.returncode == 0 and r.stdout.startswith("rewrapped 1 objects"), r.stdout + r.stderr

    r = _cli(tools, "copy", "--bucket", "tl-forms", "--prefix", "a/", "--to-bucket", "tl-forms-dst", "--to-prefix")
    assert r.returncode == 2  # --to-prefix wants its value
    args = ("--bucket", "tl-forms", "--prefix", "a/", "--to-bucket", "tl-forms-dst", "--to-prefix", "c/")
    r = _cli(tools, "copy", *args, "--recursive", "--to-key", "default")
    assert r.returncode == 0 and r.stdout.startswith("copied 2 objects"), r.stdout + r.stderr
    r = _cli(tools, "copy", "s3://tl-forms/b/1", "--to-bucket", "tl-forms-dst", "--to-key", "default")
    assert r.returncode == 0 and r.stdout.startswith("copied 1 objects"), r.stdout + r.stderr
    assert s3.get_object(Bucket="tl-forms-dst", Key="c/2")["Body"].read() == bodies["a/2"]
    assert s3.get_object(Bucket="tl-forms-dst", Key="1")["Body"].read() == bodies["b/1"]  # the name kept

    r = _cli(tools, "gc", "s3://tl-forms", "--older-than", "0s")
    assert r.returncode == 0 and r.stdout.startswith("removed 0 stale uploads"), r.stdout + r.stderr

    r = _cli(tools, "convert", "s3://tl-forms/a/", "--to", "s3ec-v3")
    assert r.returncode == 0 and r.stdout.startswith("converted 2 objects"), r.stdout + r.stderr
    assert _key_of(raw, "tl-forms", "b/1").startswith("local:key2:")  # outside the prefix: as it was
    r = _cli(tools, "convert", "--bucket", "tl-forms", "--to", "s3ec-v3")
    assert r.returncode == 0 and r.stdout.startswith("converted 1 objects (500 bytes) to s3ec-v3, 2 already"), r.stdout
    for key, body in bodies.items():
        assert s3.get_object(Bucket="tl-forms", Key=key)["Body"].read() == body


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["rewrap", "s3://x/a/", "--bucket", "y", "--to-key", "k"], "s3://x/a/ and --bucket y name different places"),
        (["convert", "s3://x/a/", "--prefix", "b/", "--to", "sealgate"], "and --prefix b/ name different places"),
        (["convert", "s3://x", "--prefix", "b/", "--to", "sealgate"], "name different places"),
        (["rewrap", "--prefix", "a/", "--to-key", "k"], "--prefix needs --bucket"),
        (["rewrap", "--to-key", "k"], "name the bucket: s3://BUCKET[/PREFIX] or --bucket BUCKET"),
        (["gc"], "name the bucket: s3://BUCKET or --bucket BUCKET"),
        (["gc", "s3://x/a/"], "gc works on whole buckets"),
        (["gc", "--bucket", "x", "--prefix", "a/"], "s3://x/a/ names a prefix, but gc works on whole buckets"),
        (["rewrap", "x/a", "--to-key", "k"], "is not an s3:// URL"),
        (["copy", "s3://x/a", "s3://y/", "s3://z/", "--to-key", "k"], "too many s3:// URLs"),
        (["copy", "--bucket", "x", "--prefix", "a", "s3://x/a", "s3://y/", "--to-key", "k"], "too many s3:// URLs"),
        (["copy", "s3://x/a", "--to-key", "k"], "missing DESTINATION (or --to-bucket)"),
        (["copy", "--to-prefix", "c/", "s3://x/a", "--to-key", "k"], "--to-prefix needs --to-bucket"),
        (["copy", "--bucket", "x", "--to-bucket", "y", "--to-key", "k"], "SOURCE names no object"),
    ],
)
def test_conflicting_or_missing_places_are_usage_errors(tmp_path: Path, args: list[str], says: str) -> None:
    config = tmp_path / "sealgate.toml"
    config.write_text("# never read: the command line is refused first\n")
    run = CliRunner().invoke(main, [*args, "-c", str(config)])
    assert run.exit_code == 2 and says in run.output, run.output
    assert "Traceback" not in run.output


def test_dry_run_lists_what_would_change_and_changes_nothing(tools: Stack) -> None:
    s3, raw = tools.client(), backend_client(tools.backend_url)
    for bucket in ("tl-dry", "tl-dry-dst"):
        s3.create_bucket(Bucket=bucket)
    for key in ("a/1", "a/2"):
        s3.put_object(Bucket="tl-dry", Key=key, Body=os.urandom(700))
    multipart_put(s3, "tl-dry", "a/mp", [os.urandom(5 * MiB), b"tail"])
    multipart_put(s3, "tl-dry", "gone", [os.urandom(5 * MiB), b"tail"])
    s3.delete_object(Bucket="tl-dry", Key="gone")  # its manifest is an orphan now
    s3.create_multipart_upload(Bucket="tl-dry", Key="abandoned")
    (stale,) = [u["UploadId"] for u in raw.list_multipart_uploads(Bucket="tl-dry")["Uploads"]]  # the backend's id
    time.sleep(1.1)
    keyring = tools.dir / "keyring"
    ring_before = keyring.read_bytes()
    before = _snapshot(raw, "tl-dry", "tl-dry-dst")
    objects = ["s3://tl-dry/a/1", "s3://tl-dry/a/2", "s3://tl-dry/a/mp"]

    r = _cli(tools, "rewrap", "--bucket", "tl-dry", "--prefix", "a/", "--to-key", "key2", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [f"would rewrap {o}" for o in objects] + [
        f"would rewrap 3 objects ({r.stdout.split('(')[1].split(')')[0]}), 0 already under key2, 0 skipped"
    ]
    r = _cli(tools, "copy", "s3://tl-dry/a/", "s3://tl-dry-dst/b/", "--recursive", "--to-key", "key2", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == [f"would copy {o} to s3://tl-dry-dst/b/{o.rsplit('/', 1)[1]}" for o in objects]
    assert lines[3].startswith("would copy 3 objects") and len(lines) == 4
    r = _cli(tools, "convert", "--bucket", "tl-dry", "--prefix", "a/", "--to", "s3ec-v3", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[:3] == [f"would convert {o}" for o in objects]
    assert r.stdout.splitlines()[3].startswith("would convert 3 objects")
    r = _cli(tools, "gc", "--bucket", "tl-dry", "--older-than", "0s", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"would abort stale upload abandoned ({stale})" in r.stdout.splitlines()
    assert [line for line in r.stdout.splitlines() if line.startswith("would delete orphan manifest")] != []
    assert "would remove 1 stale uploads, 1 orphan manifests" in r.stdout
    r = subprocess.run(
        [*SEALGATE, "keys", "rotate", "key2", "--dry-run", "--keyring", str(keyring)],
        env={**os.environ, "SEALGATE_KEYRING_PASSPHRASE": PASSPHRASE},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout == "would rotate key2: to version 2\n", r.stdout + r.stderr

    assert _snapshot(raw, "tl-dry", "tl-dry-dst") == before
    assert keyring.read_bytes() == ring_before
    # What the dry runs listed is what the real runs do.
    r = _cli(tools, "rewrap", "s3://tl-dry/a/", "--to-key", "key2")
    assert r.returncode == 0 and r.stdout.startswith("rewrapped 3 objects"), r.stdout + r.stderr
    r = _cli(tools, "gc", "s3://tl-dry", "--older-than", "0s")
    assert r.returncode == 0 and "removed 1 stale uploads, 1 orphan manifests" in r.stdout, r.stdout + r.stderr


def _total_and_eta(shown: str, total: int) -> bool:
    """Whether the terminal showed a bar of N/`total` objects with its ETA (tqdm's
    ``3/12 [00:01<00:02, ...]``)."""
    return re.search(rf"\b\d+/{total} \[\d\d:\d\d<\d\d:\d\d", shown) is not None


def test_progress_shows_a_total_on_a_terminal_and_only_the_summary_on_a_pipe(tools: Stack) -> None:
    s3, raw = tools.client(), backend_client(tools.backend_url)
    for bucket in ("tl-progress", "tl-progress-dst"):
        s3.create_bucket(Bucket=bucket)
    for i in range(12):
        s3.put_object(Bucket="tl-progress", Key=f"obj/{i:02d}", Body=os.urandom(300))
    for key in ("mp/1", "mp/2", "mp/3"):
        multipart_put(s3, "tl-progress", key, [os.urandom(100)])  # what gc looks at: their manifests, kept
    gc_items = len(raw.list_multipart_uploads(Bucket="tl-progress").get("Uploads", [])) + sum(
        raw.list_objects_v2(Bucket="tl-progress", Prefix=f".sealgate/{kind}/")["KeyCount"]
        for kind in ("up", "pt", "pc", "mp")
    )
    assert gc_items == 3
    runs = [
        (["rewrap", "--bucket", "tl-progress", "--prefix", "obj/", "--to-key", "key2"], 12, "rewrapped 12", "already"),
        (
            ["copy", "s3://tl-progress/obj/", "s3://tl-progress-dst/", "--recursive", "--to-key", "key2"],
            12,
            "copied 12",
            "already",
        ),
        (["convert", "--bucket", "tl-progress", "--prefix", "obj/", "--to", "s3ec-v3"], 12, "converted 12", "already"),
        (["gc", "--bucket", "tl-progress"], gc_items, "removed 0 stale uploads", "kept"),
    ]
    for args, total, summary, word in runs:
        status, out, shown = _on_a_terminal(tools, *args)
        assert status == 0 and out.startswith(summary), out + shown
        assert _total_and_eta(shown, total), shown
        # Run again (nothing left to do): on a pipe, only the summary line, nothing on stderr.
        r = _cli(tools, *args)
        assert r.returncode == 0 and r.stderr == "" and len(r.stdout.splitlines()) == 1, r.stdout + r.stderr
        if args[0] == "rewrap":  # -q is a shared option (proxy/tools/options.py): one tool shows it
            r = _cli(tools, *args, "-q")
            assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        r = _cli(tools, *args, "-v")  # a line per object
        lines = r.stdout.splitlines()
        assert r.returncode == 0 and len(lines) == total + 1, r.stdout + r.stderr
        assert all(
            line.startswith(f"{word} s3://tl-progress/" if word == "already" else word) for line in lines[:-1]
        ), lines


def _progress_lines(stderr: str, desc: str, unit: str = "objects") -> list[str]:
    """The plain progress lines in `stderr` that give a total (``rewrap: 3/30 objects (10%), ...``)."""
    shape = rf"{desc}: \d+/[1-9]\d* {unit} \(\d+%\)(, \d+(\.\d)? [kMGT]?B)?, ETA (\d+[hms]\S*|unknown)( \(.+\))?"
    return [line for line in stderr.splitlines() if re.fullmatch(shape, line)]


def test_on_a_pipe_progress_is_a_plain_line_now_and_then(tools: Stack) -> None:
    """Where stderr is a log or a pipe, each tool says where it is every --progress-interval
    (or $SEALGATE_PROGRESS_INTERVAL) seconds, with its total; stdout is as without; -q and
    --no-progress silence the lines."""
    s3 = tools.client()
    for bucket in ("tl-lines", "tl-lines-dst"):
        s3.create_bucket(Bucket=bucket)
    for i in range(30):
        multipart_put(s3, "tl-lines", f"mp/{i:02d}", [os.urandom(200)])  # manifests too: what gc works through
    often = ("--progress-interval", "0.05")
    runs = [
        (["rewrap", "s3://tl-lines/mp/", "--to-key", "key2"], "rewrap", "objects", "rewrapped 30 objects"),
        (["copy", "s3://tl-lines/mp/", "s3://tl-lines-dst/", "--recursive", "--to-key", "key2"], "copy", "objects", ""),
        (["gc", "s3://tl-lines", "--older-than", "0s"], "gc", "items", "removed 0 stale uploads"),
        (["convert", "s3://tl-lines/mp/", "--to", "s3ec-v3"], "convert to s3ec-v3", "objects", "converted 30"),
    ]
    for i, (args, desc, unit, summary) in enumerate(runs):
        r = _cli(tools, *args, *often)
        assert r.returncode == 0 and r.stdout.startswith(summary), r.stdout + r.stderr
        assert len(r.stdout.splitlines()) == 1, r.stdout  # stdout as without the lines
        assert _progress_lines(r.stderr, desc, unit) != [], r.stderr
        if i != 1:
            continue  # the options below are the shared ones of proxy/tools/options.py: one tool shows them
        # Again (nothing left to do, the same work of looking): the interval from the environment ...
        r = _cli(tools, *args, env={"SEALGATE_PROGRESS_INTERVAL": "0.01"})
        assert r.returncode == 0 and _progress_lines(r.stderr, desc, unit) != [], r.stderr
        # ... and silenced.
        for silent in ("-q", "--no-progress"):
            r = _cli(tools, *args, silent, env={"SEALGATE_PROGRESS_INTERVAL": "0.01"})
            assert r.returncode == 0 and r.stderr == "", r.stderr
    # The default interval (10 s) says nothing in a run this short: the pipe keeps its old output.
    r = _cli(tools, *runs[3][0])
    assert r.returncode == 0 and r.stderr == "", r.stderr


def _json(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON object that is all a --json run printed on stdout."""
    assert len(r.stdout.splitlines()) == 1, r.stdout + r.stderr
    document = json.loads(r.stdout)
    assert isinstance(document, dict) and isinstance(document.pop("elapsed_seconds"), float), document
    return document


def test_json_summaries_are_one_object_on_stdout_and_exit_as_without(tools: Stack) -> None:
    s3, raw = tools.client(), backend_client(tools.backend_url)
    for bucket in ("tl-json", "tl-json-dst"):
        s3.create_bucket(Bucket=bucket)
    for key in ("a/1", "a/2", "a/3"):
        s3.put_object(Bucket="tl-json", Key=key, Body=os.urandom(500))
    raw.put_object(Bucket="tl-json", Key="a/plain", Body=b"not encrypted")  # what each tool skips
    listed = raw.list_objects_v2(Bucket="tl-json", Prefix="a/")["Contents"]
    stored = sum(o["Size"] for o in listed if o["Key"] != "a/plain")
    not_ours = [{"key": "a/plain", "reason": "InvalidObjectState: not a sealgate object"}]

    r = _cli(tools, "rewrap", "s3://tl-json/a/", "--to-key", "key2", "--dry-run", "--json")
    assert r.returncode == 1 and r.stderr == "", r.stderr  # a skipped object fails a rewrap, as without --json
    assert _json(r) == {
        "command": "rewrap",
        "dry_run": True,
        "target": "s3://tl-json/a/",
        "to_key": "key2",
        "rewrapped": 3,
        "bytes": stored,
        "already": 0,
        "skipped": not_ours,
        "failed": [],
        "would_change": ["a/1", "a/2", "a/3"],
    }
    r = _cli(tools, "rewrap", "s3://tl-json/a/", "--to-key", "key2", "--json", "-v")
    assert r.returncode == 1 and "rewrapped s3://tl-json/a/1" in r.stderr.splitlines(), r.stderr  # -v: on stderr
    document = _json(r)
    assert (document["dry_run"], document["rewrapped"], document["skipped"]) == (False, 3, not_ours)
    assert "would_change" not in document
    assert _key_of(raw, "tl-json", "a/1").startswith("local:key2:")

    r = _cli(tools, "copy", "s3://tl-json/a/", "s3://tl-json-dst/b/", "--recursive", "--to-key", "key2", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    document = _json(r)
    assert (document["source"], document["destination"]) == ("s3://tl-json/a/", "s3://tl-json-dst/b/")
    assert (document["copied"], document["already"], document["bytes"]) == (3, 0, stored)
    assert document["skipped"] == [{"key": "a/plain", "reason": "sealgate copies only objects it wrote"}]
    r = _cli(tools, "copy", "s3://tl-json/a/1", "s3://tl-json-dst/c", "--to-key", "key2", "--json", "--dry-run", "-q")
    assert r.returncode == 0 and _json(r)["would_change"] == [{"key": "a/1", "to": "c"}], r.stdout  # -q: JSON too

    # A tampered body: convert fails it (exit 1), and says why.
    obj = raw.get_object(Bucket="tl-json", Key="a/3")
    body = bytearray(obj["Body"].read())
    body[-1] ^= 1
    raw.put_object(Bucket="tl-json", Key="a/3", Body=bytes(body), Metadata=obj["Metadata"])
    r = _cli(tools, "convert", "s3://tl-json/a/", "--to", "s3ec-v3", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    document = _json(r)
    assert (document["converted"], document["bytes"], document["already"]) == (2, 1000, 0), document
    unencrypted = "not encrypted (neither a sealgate nor an S3EC object)"
    assert document["skipped"] == [{"key": "a/plain", "reason": unencrypted}]
    assert [f["key"] for f in document["failed"]] == ["a/3"] and document["failed"][0]["reason"], document
    assert (document["to"], document["stopped_at_limit"]) == ("s3ec-v3", False)

    s3.create_multipart_upload(Bucket="tl-json", Key="abandoned")
    (stale,) = [u["UploadId"] for u in raw.list_multipart_uploads(Bucket="tl-json")["Uploads"]]
    r = _cli(tools, "gc", "s3://tl-json", "--older-than", "0s", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    document = _json(r)
    assert document["uploads_aborted"] == [{"key": "abandoned", "upload_id": stale}], document
    assert (document["command"], document["dry_run"], document["older_than"]) == ("gc", False, "0s")
    assert document["skipped"] == document["failed"] == document["pending_kept"] == []

    # What stops a run as a whole is still one line on stderr, and nothing on stdout.
    r = _cli(tools, "rewrap", "--bucket", "tl-no-such-bucket", "--to-key", "key2", "--json")
    assert (r.returncode, r.stdout) == (2, ""), r.stdout + r.stderr


def test_what_stops_a_run_is_one_line(tools: Stack, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """A bucket that is not there, or a backend that does not answer: one line naming it, exit 2."""
    runs = [
        ["rewrap", "--bucket", "tl-no-such-bucket", "--to-key", "default"],
        ["gc", "--bucket", "tl-no-such-bucket", "--older-than", "0s"],
        ["convert", "--bucket", "tl-no-such-bucket", "--to", "sealgate"],
        ["copy", "s3://tl-no-such-bucket/a/", "s3://tl-elsewhere/", "--recursive", "--to-key", "default"],
    ]
    for args in runs:
        r = _cli(tools, *args)
        assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sealgate: bucket tl-no-such-bucket: NoSuchBucket: "), lines
    dead = Stack(tools.gate, f"http://127.0.0.1:{free_port()}", tools.ca_path, tmp_path)
    write_config(tmp_path, backend=dead.backend_url, tls=tls_files, port=free_port())
    for args in runs:
        r = _cli(dead, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.splitlines()
        assert lines[-1] == "sealgate: bucket tl-no-such-bucket: ServiceUnavailable: the storage backend is unreachable"
        assert len(lines) <= 2, lines  # and the backend's warning, once
