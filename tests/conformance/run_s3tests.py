#!/usr/bin/env python3
"""Run the ceph/s3-tests conformance suite against moto directly and through sealgate, and compare.

Usage (see docs/CONFORMANCE.md):

    python tests/conformance/run_s3tests.py /path/to/s3-tests [--out /tmp/conformance-out]

What it does, for each side ("direct" and "sealgate"):

* copies the s3-tests checkout to a scratch directory and drops a small pytest plugin into the
  copy (``sg_conformance_plugin.py``); the checkout itself is never modified;
* starts a fresh ``moto_server`` on a free loopback port;
* "sealgate" only: starts ``python -m proxy.cli serve`` in front of that moto (local keyring,
  trustme TLS certificates, one [[clients]] entry per s3-tests identity, ``workers = 1``);
* writes an ``s3tests.conf`` and runs ``pytest s3tests/functional/test_s3.py -k "not logging"``
  serially, with ``--junitxml`` and (if pytest-timeout is importable) a per-test timeout.

Between tests the plugin empties the backend with moto's ``POST /moto-api/reset``, instead of
the suite's own cleanup (which lists and deletes every bucket through the server under test, and
would turn any DeleteBucket/DeleteObjects defect of that server into errors on unrelated tests).
``--cleanup suite`` keeps the suite's own cleanup (and still resets moto after each test).

By default sealgate is run from ``git archive HEAD`` of the project (so the numbers belong to a
commit, not to whatever is uncommitted in the work tree); ``--worktree`` runs the work tree.

Outputs in ``--out``: ``direct.xml``, ``sealgate.xml`` (JUnit), ``*.pytest.log``,
``sealgate.log``, ``moto-*.log``, ``comparison.json``, ``summary.txt`` and ``regressions.md``.

Only the standard library, trustme and (in a subprocess) sealgate's own package are used.
"""

from __future__ import annotations

import argparse
import configparser
import datetime
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
PASSPHRASE = "s3-tests conformance keyring passphrase"
BACKEND_AKID = "testing"
BACKEND_SECRET = "testing"

# s3-tests identities. sealgate accepts access key ids of 16-128 characters of A-Z and 0-9, so
# the suite's sample keys (lower case) are replaced by these on both sides.
IDENTITIES = {
    "s3 main": ("main", "SGCTMAIN000000000001", "conformance-main-secret-0000000001"),
    "s3 alt": ("alt", "SGCTALT0000000000001", "conformance-alt-secret-00000000001"),
    "s3 tenant": ("tenant", "SGCTTENANT0000000001", "conformance-tenant-secret-0000001"),
    "iam": ("iam", "SGCTIAM0000000000001", "conformance-iam-secret-00000000001"),
    "iam root": ("iamroot", "SGCTIAMROOT000000001", "conformance-iamroot-secret-000001"),
    "iam alt root": ("iamaltroot", "SGCTIAMALTROOT000001", "conformance-iamaltroot-secret-001"),
}

PLUGIN = r'''
"""Injected by sealgate's tests/conformance/run_s3tests.py: reset moto between tests."""
import os
import urllib.request

import pytest

RESET_URL = os.environ["SG_CONFORMANCE_RESET_URL"]
CLEANUP = os.environ.get("SG_CONFORMANCE_CLEANUP", "reset")


def reset_backend():
    req = urllib.request.Request(RESET_URL, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()


def _noop_cleanup():
    reset_backend()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session):
    if CLEANUP == "reset":
        import s3tests.functional as functional

        # the suite's autouse fixture calls these module globals before and after each test
        functional.setup = _noop_cleanup
        functional.teardown = _noop_cleanup


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    reset_backend()
'''


# ---------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what}: nothing listening on {port} after {timeout} s")


def start_moto(out: Path, side: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    exe = shutil.which("moto_server") or "moto_server"
    log = open(out / f"moto-{side}.log", "wb")  # noqa: SIM115 - the child writes to it
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, proc, "moto_server")
    return proc, port


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(PROJECT), *args], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def export_rev(dest: Path, rev: str) -> Path:
    """`git archive REV` of the project into dest (sealgate as committed, not the work tree)."""
    dest.mkdir(parents=True, exist_ok=True)
    data = subprocess.run(["git", "-C", str(PROJECT), "archive", rev], check=True, capture_output=True).stdout
    tar_path = dest.parent / "sealgate-head.tar"
    tar_path.write_bytes(data)
    with tarfile.open(tar_path) as tf:
        tf.extractall(dest)  # noqa: S202 - our own repository
    tar_path.unlink()
    return dest


def make_tls(d: Path) -> dict[str, Path]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server-key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    with open(paths["cert"], "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return paths


def sealgate_env(src: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def make_keyring(d: Path, src: Path | None) -> Path:
    keyring = d / "keyring"
    pf = d / "keyring.pass"
    pf.write_text(PASSPHRASE + "\n")
    pf.chmod(0o600)
    code = (
        "import sys; from pathlib import Path; from proxy.kms.keystore import LocalKeyStore;"
        "s = LocalKeyStore.create(Path(sys.argv[1]), sys.argv[2].encode()); s.create_key('default'); s.save()"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(keyring), PASSPHRASE],
        check=True,
        cwd=str(src or d),
        env=sealgate_env(src),
    )
    return keyring


def write_sealgate_config(
    d: Path, *, port: int, backend_port: int, tls: dict[str, Path], keyring: Path, anonymous: bool = True
) -> Path:
    clients = "".join(
        f'\n[[clients]]\nname = "{name}"\naccess_key_id = "{akid}"\nsecret_access_key = "{secret}"\n'
        for name, akid, secret in IDENTITIES.values()
    )
    cfg = d / "sealgate.toml"
    cfg.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
tls_cert = "{tls["cert"]}"
tls_key = "{tls["key"]}"
workers = 1

[backend]
endpoint = "http://127.0.0.1:{backend_port}"
region = "us-east-1"
access_key_id = "{BACKEND_AKID}"
secret_access_key = "{BACKEND_SECRET}"
addressing_style = "path"

[kms]
provider = "local"
keyring = "{keyring}"
passphrase_file = "{keyring}.pass"
default_key = "default"
{clients}
{"[access]" + chr(10) + "anonymous = true" if anonymous else ""}
"""
    )
    return cfg


def start_sealgate(
    d: Path, out: Path, backend_port: int, src: Path | None, anonymous: bool = True
) -> tuple[subprocess.Popen[bytes], int]:
    tls = make_tls(d)
    keyring = make_keyring(d, src)
    port = free_port()
    cfg = write_sealgate_config(d, port=port, backend_port=backend_port, tls=tls, keyring=keyring, anonymous=anonymous)
    log = open(out / "sealgate.log", "wb")  # noqa: SIM115 - the child writes to it
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(src or d),
        env=sealgate_env(src),
    )
    wait_port(port, proc, "sealgate")
    return proc, port


# ---------------------------------------------------------------------------------- s3-tests


def write_s3tests_conf(checkout: Path, dest: Path, *, port: int, secure: bool, lc_interval: int | None) -> Path:
    cp = configparser.RawConfigParser()
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    sample = checkout / "s3tests.conf.SAMPLE"
    if sample.exists():
        cp.read(sample)
    cp["DEFAULT"]["host"] = "127.0.0.1"  # an IP: botocore then uses path-style addressing
    cp["DEFAULT"]["port"] = str(port)
    cp["DEFAULT"]["is_secure"] = "True" if secure else "False"
    cp["DEFAULT"]["ssl_verify"] = "False"
    if not cp.has_section("fixtures"):
        cp.add_section("fixtures")
    cp["fixtures"]["bucket prefix"] = "sgct-{random}-"
    for section, (_name, akid, secret) in IDENTITIES.items():
        if not cp.has_section(section):
            cp.add_section(section)
        cp[section]["access_key"] = akid
        cp[section]["secret_key"] = secret
        for opt, val in (("display_name", _name), ("user_id", _name), ("email", f"{_name}@example.com")):
            if not cp.has_option(section, opt):
                cp[section][opt] = val
    if lc_interval:
        cp["s3 main"]["lc_debug_interval"] = str(lc_interval)  # lifecycle tests sleep 3-7 of these
    # no KMS key ids: sealgate does not pass SSE-KMS through; the suite skips those tests
    cp.remove_option("s3 main", "kms_keyid")
    cp.remove_option("s3 main", "kms_keyid2")
    path = dest / "s3tests.conf"
    with open(path, "w") as f:
        cp.write(f)
    return path


def prepare_checkout(checkout: Path, dest: Path) -> Path:
    copy = dest / "s3-tests"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", ".tox", "__pycache__", "*.pyc"))
    (copy / "sg_conformance_plugin.py").write_text(PLUGIN)
    return copy


def run_pytest(
    copy: Path, conf: Path, out: Path, side: str, *, reset_url: str, args: argparse.Namespace
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        args.test_file,
        "-p",
        "no:cacheprovider",
        "-p",
        "sg_conformance_plugin",
        "-k",
        args.k,
        "--junitxml",
        str(out / f"{side}.xml"),
        "-o",
        "junit_family=xunit1",
        "-q",
        "-rN",
        "--tb=short",
    ]
    if args.timeout and importlib.util.find_spec("pytest_timeout") is not None:
        cmd += ["--timeout", str(args.timeout)]
    cmd += args.pytest_args
    env = dict(os.environ)
    env.update(
        S3TEST_CONF=str(conf),
        SG_CONFORMANCE_RESET_URL=reset_url,
        SG_CONFORMANCE_CLEANUP=args.cleanup,
        PYTHONPATH=str(copy),
    )
    for var in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        env.pop(var, None)
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    log = open(out / f"{side}.pytest.log", "wb")  # noqa: SIM115 - the child writes to it
    (out / f"{side}.cmd").write_text(" ".join(cmd) + "\n")
    return subprocess.Popen(cmd, cwd=str(copy), env=env, stdout=log, stderr=subprocess.STDOUT)


# ---------------------------------------------------------------------------------- results

_CODE = re.compile(r"An error occurred \(([^)]*)\) when calling the (\w+) operation(?:[^:]*)?: ?(.*)")


def first_error_line(elem: ET.Element) -> str:
    """The exception pytest reported (type: message), first line; else the first `E` line."""
    msg = (elem.get("message") or "").strip()
    if msg:
        return msg.splitlines()[0][:400]
    text = elem.text or ""
    e_lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
    if e_lines:
        return e_lines[-1][:400]
    lines = text.strip().splitlines()
    return lines[-1][:400] if lines else ""


def parse_junit(path: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return results
    root = ET.parse(path).getroot()
    for tc in root.iter("testcase"):
        name = tc.get("name", "")
        cls = tc.get("classname", "")
        key = name if cls.endswith("test_s3") or not cls else f"{cls}.{name}"
        failure = tc.find("failure")
        error = tc.find("error")
        skipped = tc.find("skipped")
        if failure is not None:
            status, elem = "failed", failure
        elif error is not None:
            status, elem = "error", error
        elif skipped is not None:
            status, elem = "skipped", skipped
        else:
            status, elem = "passed", None
        entry: dict[str, Any] = {"status": status, "time": float(tc.get("time") or 0)}
        if elem is not None:
            line = first_error_line(elem) if status != "skipped" else (elem.get("message") or "")[:400]
            entry["error"] = line
            m = _CODE.search((elem.get("message") or "") + "\n" + (elem.text or ""))
            if m and status != "skipped":
                entry["s3_code"] = m.group(1)
                entry["operation"] = m.group(2)
            if status == "failed" and error is not None:
                entry["teardown_error"] = first_error_line(error)
        prev = results.get(key)
        if prev is not None:
            # pytest writes a second <testcase> for an error in teardown after a failure or pass
            if prev["status"] == "failed" and status == "error":
                prev["teardown_error"] = entry.get("error", "")
                continue
            if prev["status"] == "passed" and status == "error":
                entry["call_passed"] = True
        results[key] = entry
    return results


def counts(results: dict[str, dict[str, Any]]) -> dict[str, int]:
    c = {"total": len(results), "passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for r in results.values():
        c[r["status"]] += 1
    return c


# Best-effort grouping of regressions by cause: the first rule whose message pattern (matched
# against the first error line) or test-name pattern matches. docs/CONFORMANCE.md is written
# from a reading of these, not from this table alone.
SSE_C = "SSE-C refused by design"
CAUSES: list[tuple[str, str | None, str | None]] = [
    # (cause, message pattern, test-name pattern)
    ("POST Object", None, r"post_object"),
    # PutBucketAcl (501 through sealgate) from 50 threads; the test only counts successes
    ("bucket policy/ACL/lifecycle/CORS/encryption/tagging 501", None, r"concurrent_set_canned_acl"),
    (SSE_C, r"customer-provided keys \(SSE-C\)", r"sse_c|sse-c|enc_conflict_c_"),
    ("GetObjectAttributes", r"GetObjectAttributes|subresource attributes", r"object_attributes"),
    (
        "bucket policy/ACL/lifecycle/CORS/encryption/tagging 501",
        r"subresource \w+ is not implemented",
        r"policy|acl|lifecycle|cors|tagging|ownership|bucket_encryption|torrent|access_block|website",
    ),
    ("SSE headers", r"x-amz-server-side-encryption|ServerSideEncryption|SSEKMS", None),
    ("delete-marker headers", r"x-amz-delete-marker|DeleteMarker", r"delete_marker"),
    ("304 without ETag", r"KeyError: 'etag'", None),
    (
        "If-None-Match / If-Match conditional requests",
        r"If-None-Match on a write|\(412, 'PreconditionFailed'\)|PreconditionFailed|Size or LastModifiedTime",
        r"if_?none_?match|ifnonmatch|_if_match",
    ),
    ("DeleteBucket BucketNotEmpty", r"BucketNotEmpty", None),
    ("CompleteMultipartUpload ETag checks", None, r"multipart.*etag|etag.*multipart"),
    ("CompleteMultipartUpload repeated: NoSuchUpload", r"NoSuchUpload.*CompleteMultipartUpload", None),
    ("ListBuckets (GET /) 501", r"GET on the service is not implemented", None),
    ("HeadBucket 501", r"HeadBucket operation: Not Implemented", None),
    ("SigV2 refused", r"Only AWS4-HMAC-SHA256", r"_v2$"),
    ("anonymous requests refused", r"Anonymous access is not allowed", r"anon|public|raw_get|raw_put|_gone$"),
    ("ETag is not the MD5 of the body", None, r"check_etag"),
    ("ListObjects (v1) without Marker", r"KeyError: 'Marker'", None),
    ("flexible checksums", r"ChecksumAlgorithm|Checksum", r"checksum|cksum"),
    ("Object Lock", r"Retention|LegalHold|ObjectLock", r"object_lock"),
]


def classify(test: str, entry: dict[str, Any]) -> str:
    msg = f"{entry.get('error', '')}"
    for cause, msg_pat, name_pat in CAUSES:
        if msg_pat and re.search(msg_pat, msg):
            return cause
        if name_pat and re.search(name_pat, test):
            if cause.endswith(" 501") and "|" in name_pat and not re.search(r"\b501\b|NotImplemented", msg):
                continue  # a feature named in the test, but not refused as unimplemented
            return cause
    return "other"


def compare(direct: dict[str, dict[str, Any]], sealgate: dict[str, dict[str, Any]]) -> dict[str, Any]:
    regressions = []
    improvements = []
    both_fail = 0
    for test in sorted(set(direct) | set(sealgate)):
        d = direct.get(test, {"status": "missing"})
        s = sealgate.get(test, {"status": "missing"})
        if d["status"] == "passed" and s["status"] != "passed":
            regressions.append(
                {
                    "test": test,
                    "sealgate_status": s["status"],
                    "error": s.get("error", ""),
                    "s3_code": s.get("s3_code"),
                    "operation": s.get("operation"),
                    "cause": classify(test, s),
                }
            )
        elif s["status"] == "passed" and d["status"] != "passed":
            improvements.append({"test": test, "direct_status": d["status"], "error": d.get("error", "")})
        elif d["status"] in ("failed", "error") and s["status"] in ("failed", "error"):
            both_fail += 1
    by_cause: dict[str, list[str]] = {}
    for r in regressions:
        by_cause.setdefault(r["cause"], []).append(r["test"])
    return {
        "regressions": regressions,
        "regressions_by_cause": dict(sorted(by_cause.items(), key=lambda kv: -len(kv[1]))),
        "pass_through_sealgate_only": improvements,
        "fail_on_both": both_fail,
    }


def summary_text(report: dict[str, Any]) -> str:
    lines = [
        f"s3-tests conformance, {report['meta']['date']}",
        f"sealgate {report['meta']['sealgate_commit']} ({report['meta']['sealgate_source']}), "
        f"s3-tests {report['meta']['s3tests_commit']}, moto {report['meta']['moto_version']}",
        "",
        f"{'':10} {'total':>6} {'passed':>7} {'failed':>7} {'error':>6} {'skipped':>8}",
    ]
    for side in ("direct", "sealgate"):
        c = report[side]
        lines.append(f"{side:10} {c['total']:>6} {c['passed']:>7} {c['failed']:>7} {c['error']:>6} {c['skipped']:>8}")
    cmp_ = report["comparison"]
    lines += [
        "",
        f"pass on moto, not through sealgate: {len(cmp_['regressions'])}",
        f"pass through sealgate, not on moto: {len(cmp_['pass_through_sealgate_only'])}",
        f"fail on both: {cmp_['fail_on_both']}",
        "",
        "regressions by (heuristic) cause:",
    ]
    for cause, tests in cmp_["regressions_by_cause"].items():
        lines.append(f"  {len(tests):4}  {cause}")
    lines += ["", "regressions (test: sealgate status: first error line):"]
    for r in cmp_["regressions"]:
        lines.append(f"  [{r['cause']}] {r['test']}: {r['sealgate_status']}: {r['error']}")
    if cmp_["pass_through_sealgate_only"]:
        lines += ["", "pass through sealgate only:"]
        for r in cmp_["pass_through_sealgate_only"]:
            lines.append(f"  {r['test']}: direct {r['direct_status']}: {r['error']}")
    return "\n".join(lines) + "\n"


def regressions_markdown(report: dict[str, Any]) -> str:
    """A Markdown table of the regressions grouped by cause (for docs/CONFORMANCE.md)."""
    cmp_ = report["comparison"]
    by_test = {r["test"]: r for r in cmp_["regressions"]}
    lines = ["| cause | status | tests | count |", "|---|---|---|---|"]
    for cause, tests in cmp_["regressions_by_cause"].items():
        status = "by design" if cause == SSE_C else "open"
        names = ", ".join(f"`{t}`" for t in tests)
        lines.append(f"| {cause} | {status} | {names} | {len(tests)} |")
    lines += ["", "First error line of each (through sealgate):", ""]
    for cause, tests in cmp_["regressions_by_cause"].items():
        lines.append(f"- **{cause}**")
        for t in tests:
            err = by_test[t]["error"].replace("|", "\\|")
            lines.append(f"  - `{t}`: {err}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkout", type=Path, help="path of a ceph/s3-tests checkout (not modified)")
    p.add_argument("--out", type=Path, default=Path("/tmp/conformance-out"))
    p.add_argument("--side", choices=("both", "direct", "sealgate"), default="both")
    p.add_argument("-k", default="not logging", help='pytest -k expression (default: "not logging")')
    p.add_argument("--test-file", default="s3tests/functional/test_s3.py")
    p.add_argument("--timeout", type=int, default=60, help="per-test timeout (pytest-timeout), 0 for none")
    p.add_argument(
        "--cleanup",
        choices=("reset", "suite"),
        default="reset",
        help="reset: moto reset instead of the suite's cleanup; suite: the suite's cleanup, then moto reset",
    )
    p.add_argument(
        "--lc-debug-interval",
        type=int,
        default=None,
        help="s3tests.conf lc_debug_interval (the suite's default is 10 s; lifecycle tests sleep 3-7 of them)",
    )
    p.add_argument("--rev", default="HEAD", help="the sealgate commit to run (git archive REV); default HEAD")
    p.add_argument("--worktree", action="store_true", help="run sealgate from the work tree, not git HEAD")
    p.add_argument("--serial", action="store_true", help="run the two sides one after the other")
    p.add_argument(
        "--anonymous",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve unsigned requests where bucket policies allow them ([access] anonymous; sealgate 5912a37 on)",
    )
    p.add_argument("--compare-only", action="store_true", help="only rebuild the comparison from --out")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = p.parse_args(argv)

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    checkout = args.checkout.resolve()
    s3tests_commit = ""
    for gitdir in (checkout / ".git", checkout):
        r = subprocess.run(
            ["git", "--git-dir", str(gitdir), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        if r.returncode == 0:
            s3tests_commit = r.stdout.strip()
            break
    if not s3tests_commit and (checkout / ".s3tests-commit").exists():
        s3tests_commit = (checkout / ".s3tests-commit").read_text().strip()
    if not (checkout / args.test_file).exists() and not args.compare_only:
        print(f"no {args.test_file} in {checkout}", file=sys.stderr)
        return 2

    commit = git("rev-parse", "--short", args.rev if not args.worktree else "HEAD")
    dirty = bool(git("status", "--porcelain", "--", "proxy"))
    source = "work tree" + (" (uncommitted changes in proxy/)" if dirty else "") if args.worktree else f"git {args.rev}"
    started = datetime.datetime.now(datetime.UTC)

    run_meta = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "sealgate_commit": commit,
        "sealgate_source": source,
        "s3tests_commit": s3tests_commit,
    }
    if args.compare_only and (out / "run-meta.json").exists():
        run_meta = json.loads((out / "run-meta.json").read_text())  # what the run itself measured
    else:
        (out / "run-meta.json").write_text(json.dumps(run_meta, indent=2) + "\n")

    if not args.compare_only:
        work = Path(tempfile.mkdtemp(prefix="sg-conformance-"))
        procs: list[subprocess.Popen[bytes]] = []
        runs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            src = None if args.worktree else export_rev(work / "sealgate-src", args.rev)
            sides = ["direct", "sealgate"] if args.side == "both" else [args.side]
            for side in sides:
                d = work / side
                d.mkdir()
                copy = prepare_checkout(checkout, d)
                moto, moto_port = start_moto(out, side)
                procs.append(moto)
                reset_url = f"http://127.0.0.1:{moto_port}/moto-api/reset"
                if side == "direct":
                    conf = write_s3tests_conf(
                        checkout, d, port=moto_port, secure=False, lc_interval=args.lc_debug_interval
                    )
                else:
                    sg, sg_port = start_sealgate(d, out, moto_port, src, args.anonymous)
                    procs.append(sg)
                    conf = write_s3tests_conf(
                        checkout, d, port=sg_port, secure=True, lc_interval=args.lc_debug_interval
                    )
                print(f"[{side}] running {args.test_file} (log: {out / (side + '.pytest.log')})", flush=True)
                runs[side] = run_pytest(copy, conf, out, side, reset_url=reset_url, args=args)
                if args.serial:
                    runs[side].wait()
            for side, proc in runs.items():
                rc = proc.wait()
                print(f"[{side}] pytest exited {rc}", flush=True)
        finally:
            for proc in runs.values():
                stop(proc)
            for proc in reversed(procs):
                stop(proc)
            shutil.rmtree(work, ignore_errors=True)

    direct = parse_junit(out / "direct.xml")
    sealgate = parse_junit(out / "sealgate.xml")
    try:
        from importlib.metadata import version

        moto_version = version("moto")
    except Exception:  # noqa: BLE001
        moto_version = "?"
    report = {
        "meta": {
            **run_meta,
            "moto_version": moto_version,
            "test_file": args.test_file,
            "k": args.k,
            "cleanup": args.cleanup,
            "timeout": args.timeout,
        },
        "direct": counts(direct),
        "sealgate": counts(sealgate),
        "comparison": compare(direct, sealgate),
        "results": {"direct": direct, "sealgate": sealgate},
    }
    (out / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    text = summary_text(report)
    (out / "summary.txt").write_text(text)
    (out / "regressions.md").write_text(regressions_markdown(report))
    print(text)
    print(f"written: {out / 'comparison.json'}, {out / 'summary.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
