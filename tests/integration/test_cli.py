"""The `sealgate` command as a user runs it: quickstart, serve, certs, keys."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import client_for, free_port, wait_port

SEALGATE = [sys.executable, "-m", "proxy.cli"]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        SEALGATE + args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60
    )


def test_quickstart_serves_encrypted_round_trip(tmp_path: Path) -> None:
    port, backend_port = free_port(), free_port()
    proc = subprocess.Popen(
        [*SEALGATE, "quickstart", "--port", str(port), "--backend-port", str(backend_port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_port(port, 60)
        state = tmp_path / ".sealgate"
        assert (state / "passphrase").stat().st_mode & 0o777 == 0o600
        assert (state / "keyring").stat().st_mode & 0o777 == 0o600
        akid, secret = (state / "client-credentials").read_text().split()[:2]
        # The config holds the demo client's secret (so every command can load it): owner only.
        assert (state / "sealgate.toml").stat().st_mode & 0o777 == 0o600
        # It shows the form of an identity policy: one that lets the demo client do everything.
        assert "[[policies]]" in (state / "sealgate.toml").read_text()
        s3 = client_for(f"https://localhost:{port}", state / "certs" / "ca.pem", akid=akid, secret=secret)
        s3.create_bucket(Bucket="demo")
        s3.put_object(Bucket="demo", Key="k", Body=b"QUICKSTART-PLAINTEXT" * 100)
        assert s3.get_object(Bucket="demo", Key="k")["Body"].read() == b"QUICKSTART-PLAINTEXT" * 100
        from tests.conftest import backend_client

        raw = backend_client(f"http://127.0.0.1:{backend_port}").get_object(Bucket="demo", Key="k")["Body"].read()
        assert b"QUICKSTART" not in raw
        # Every command run there finds quickstart's config, without flags or a passphrase.
        listed = run(["keys", "list"], tmp_path)
        assert listed.returncode == 0 and "default" in listed.stdout, listed.stderr
        checked = run(["policy", "check", "--as", "quickstart", "s3:GetObject", "demo/k"], tmp_path)
        assert checked.returncode == 0 and checked.stdout.startswith("allowed"), checked.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert f"https://localhost:{port}" in out
    assert "no [[policies]]" not in out  # the start-up warning of a config without policies
    assert "IN-MEMORY DEMO STORE" in out
    assert "aws --endpoint-url" in out and "boto3.client" in out
    assert str(Path(".sealgate") / "sealgate.toml") in out and "sealgate serve --config" in out


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[server]\nlistne = "x"\n')
    r = run(["serve", "--config", str(cfg)], tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "listne" in lines[0], r.stderr


def test_certs_init(tmp_path: Path) -> None:
    r = run(["certs", "init", "--dir", "certs", "--hostname", "gate.example"], tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem"):
        assert (tmp_path / "certs" / name).exists()
    assert (tmp_path / "certs" / "server-key.pem").stat().st_mode & 0o777 == 0o600
    again = run(["certs", "init", "--dir", "certs"], tmp_path)
    assert again.returncode != 0 and "--force" in again.stderr


def test_keys_create_and_list(tmp_path: Path) -> None:
    env = {"SEALGATE_KEYRING_PASSPHRASE": "a long passphrase"}
    assert run(["keys", "create", "default", "--keyring", "kr"], tmp_path, env).returncode == 0
    assert run(["keys", "create", "finance", "--keyring", "kr"], tmp_path, env).returncode == 0
    dup = run(["keys", "create", "finance", "--keyring", "kr"], tmp_path, env)
    assert dup.returncode != 0 and "finance" in dup.stderr
    listed = run(["keys", "list", "--keyring", "kr"], tmp_path, env)
    assert listed.returncode == 0
    assert re.search(r"^default\s+aes-256\s+1\s+1\s+generated", listed.stdout, re.M) and "finance" in listed.stdout
    listed = run(["keys", "list", "--keyring", "kr", "--json"], tmp_path, env)
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert document["provider"] == "local" and [k["id"] for k in document["keys"]] == ["default", "finance"]
    first = document["keys"][0]
    assert (first["type"], first["versions"], first["current_version"]) == ("aes-256", 1, 1)
    assert first["origin"] == "generated" and first["rotation_period_days"] == 365
    assert first["last_rotated"] is None and first["created"].startswith("20")
    wrong = run(["keys", "list", "--keyring", "kr"], tmp_path, {"SEALGATE_KEYRING_PASSPHRASE": "wrong"})
    assert wrong.returncode != 0 and "passphrase" in wrong.stderr
    assert "Traceback" not in wrong.stderr


@pytest.mark.parametrize("missing", ["keyring"])
def test_serve_refuses_missing_keyring(tmp_path: Path, missing: str) -> None:
    from tests.conftest import CLIENT_AKID, CLIENT_SECRET

    run(["certs", "init", "--dir", "certs"], tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{free_port()}"
tls_cert = "certs/server.pem"
tls_key = "certs/server-key.pem"
[backend]
endpoint = "http://127.0.0.1:1"
region = "us-east-1"
access_key_id = "a"
secret_access_key = "b"
[kms]
provider = "local"
keyring = "nope/keyring"
passphrase_env = "PP"
default_key = "default"
[[clients]]
name = "t"
access_key_id = "{CLIENT_AKID}"
secret_access_key = "{CLIENT_SECRET}"
""")
    start = time.monotonic()
    r = run(["serve", "--config", str(cfg)], tmp_path, {"PP": "x"})
    assert r.returncode == 2 and "keyring" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - start < 30


def test_sighup_reloads_policy_without_dropping_connections(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    from botocore.exceptions import ClientError

    from tests.conftest import write_config

    port = free_port()
    cfg = write_config(tmp_path, backend=moto_url, tls=tls_files, port=port)
    proc = subprocess.Popen([*SEALGATE, "serve", "--config", str(cfg)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, 30)
        s3 = client_for(f"https://localhost:{port}", tls_files["ca"])
        s3.create_bucket(Bucket="reload")
        s3.put_object(Bucket="reload", Key="k", Body=b"before")
        cfg.write_text(cfg.read_text() + '\n[[keys]]\nid = "default"\nencrypt = ["tester"]\n')
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                s3.get_object(Bucket="reload", Key="k")["Body"].read()
            except ClientError as err:
                assert err.response["Error"]["Code"] == "AccessDenied"
                break
            assert time.monotonic() < deadline, "reload did not take effect"
            time.sleep(0.1)
        s3.put_object(Bucket="reload", Key="k2", Body=b"still allowed to encrypt")
        # A broken config is refused and the running one kept.
        cfg.write_text("[server\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        s3.put_object(Bucket="reload", Key="k3", Body=b"still serving")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "config reload refused" in err


def test_two_workers_share_the_port(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    from tests.conftest import write_config

    port = free_port()
    cfg = write_config(tmp_path, backend=moto_url, tls=tls_files, port=port, server_extra="workers = 2")
    cfg.write_text(cfg.read_text() + f'\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    proc = subprocess.Popen([*SEALGATE, "serve", "--config", str(cfg)], cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30)
        time.sleep(1)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1  # one forked worker beside the first process
        s3 = client_for(f"https://localhost:{port}", tls_files["ca"])
        s3.create_bucket(Bucket="workers")
        for i in range(20):
            s3.put_object(Bucket="workers", Key=f"k{i}", Body=b"w" * i)
        for i in range(20):
            assert s3.get_object(Bucket="workers", Key=f"k{i}")["Body"].read() == b"w" * i
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    time.sleep(0.5)
    assert not any(Path(f"/proc/{c}/cmdline").exists() for c in children)
    # Each worker keeps its own audit file (one appender per file), named by its pid.
    assert sorted(p.name for p in tmp_path.glob("audit.jsonl*")) == sorted(
        f"audit.jsonl.w{pid}" for pid in [proc.pid, *map(int, children)]
    )


def test_keys_asymmetric_cli(tmp_path: Path) -> None:
    env = {"SEALGATE_KEYRING_PASSPHRASE": "a long passphrase"}
    r = run(["keys", "create", "pair", "--type", "ec-p384", "--keyring", "full"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    pem = run(["keys", "export-public", "pair", "--keyring", "full"], tmp_path, env).stdout
    assert pem.startswith("-----BEGIN PUBLIC KEY-----") and "PRIVATE" not in pem
    (tmp_path / "pub.pem").write_text(pem)
    r = run(["keys", "import-pem", "pair", "pub.pem", "--keyring", "public-only"], tmp_path, env)
    assert r.returncode == 0 and "ec-p384" in r.stdout, r.stderr
    listed = run(["keys", "list", "--keyring", "public-only"], tmp_path, env).stdout
    assert "ec-p384" in listed and "imported" in listed


def test_json_logs(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    import json

    from tests.conftest import CLIENT_SECRET, write_config

    port = free_port()
    cfg = write_config(tmp_path, backend=moto_url, tls=tls_files, port=port)
    proc = subprocess.Popen(
        [*SEALGATE, "serve", "--config", str(cfg), "--json-logs"], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_port(port, 30)
        s3 = client_for(f"https://localhost:{port}", tls_files["ca"])
        s3.create_bucket(Bucket="jsonlogs")
        s3.put_object(Bucket="jsonlogs", Key="k", Body=b"JSON-LOGGED-PLAINTEXT")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("PUT /jsonlogs/k 200" in rec["message"] for rec in lines)
    # The access line names the client's address and identity.
    assert any(" 127.0.0.1 tester PUT /jsonlogs/k 200 " in rec["message"] for rec in lines)
    assert all({"time", "level", "logger", "message"} <= rec.keys() for rec in lines)
    assert CLIENT_SECRET not in err and "JSON-LOGGED-PLAINTEXT" not in err


def test_a_used_port_is_refused_and_join_restarts_without_downtime(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    from tests.conftest import write_config

    port = free_port()
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    old_cfg = write_config(old_dir, backend=moto_url, tls=tls_files, port=port)
    keyring = old_dir / "keyring"
    # The new sealgate shares the keyring and knows one more client: a request signed with that
    # client's keys can only be answered by it.
    new_cfg = write_config(
        new_dir,
        backend=moto_url,
        tls=tls_files,
        port=port,
        kms=f'provider = "local"\nkeyring = "{keyring}"\npassphrase_file = "{keyring}.pass"\ndefault_key = "default"\n',
        extra='[[clients]]\nname = "second"\naccess_key_id = "SGSECOND000000000001"\n'
        'secret_access_key = "second-secret-0123456789abcdef"\n',
    )
    url = f"https://localhost:{port}"
    old = subprocess.Popen([*SEALGATE, "serve", "--config", str(old_cfg)], cwd=tmp_path, stderr=subprocess.DEVNULL)
    new: subprocess.Popen[bytes] | None = None
    try:
        wait_port(port, 30)
        s3 = client_for(url, tls_files["ca"])
        s3.create_bucket(Bucket="restart")
        s3.put_object(Bucket="restart", Key="before", Body=b"written by the old one")

        # Without --join, a second sealgate on the same port refuses to start, in one line.
        refused = run(["serve", "--config", str(new_cfg)], tmp_path)
        assert refused.returncode != 0
        assert "already in use" in refused.stderr and "--join" in refused.stderr

        new_log = new_dir / "serve.log"
        with new_log.open("wb") as log:
            new = subprocess.Popen([*SEALGATE, "serve", "--join", "--config", str(new_cfg)], cwd=tmp_path, stderr=log)
        deadline = time.monotonic() + 30
        while "sealgate serving https" not in new_log.read_text():
            assert time.monotonic() < deadline and new.poll() is None, new_log.read_text()
            time.sleep(0.1)

        # Requests run without a pause while the old sealgate drains and exits.
        stop = threading.Event()
        done: list[int] = []
        failed: list[BaseException] = []

        def traffic() -> None:
            client = client_for(url, tls_files["ca"])
            i = 0
            while not stop.is_set():
                try:
                    client.put_object(Bucket="restart", Key=f"k{i % 4}", Body=b"x" * i)
                    assert client.get_object(Bucket="restart", Key=f"k{i % 4}")["Body"].read() == b"x" * i
                    done.append(i)
                except (BotoCoreError, ClientError, AssertionError) as exc:
                    failed.append(exc)
                i += 1

        worker = threading.Thread(target=traffic, daemon=True)
        worker.start()
        time.sleep(0.5)
        old.send_signal(signal.SIGTERM)
        assert old.wait(30) == 0
        before_exit = len(done)
        time.sleep(1.0)
        stop.set()
        worker.join(30)
        assert failed == []
        assert len(done) > before_exit > 0  # requests were served before and after the switch
        # Only the new sealgate is left, and it reads what the old one wrote.
        second = client_for(url, tls_files["ca"], akid="SGSECOND000000000001", secret="second-secret-0123456789abcdef")
        assert second.get_object(Bucket="restart", Key="before")["Body"].read() == b"written by the old one"
    finally:
        for proc in (old, new):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


def test_quickstart_with_a_busy_port_says_which_flag_and_writes_nothing(tmp_path: Path) -> None:
    import socket

    for flag in ("--port", "--backend-port"):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            other = free_port()
            ports = [taken, other] if flag == "--port" else [other, taken]
            r = run(["quickstart", "--port", str(ports[0]), "--backend-port", str(ports[1])], tmp_path)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and f"port {taken}" in lines[0] and f"{flag} N" in lines[0], r.stderr
        assert not (tmp_path / ".sealgate").exists()


def test_every_tool_takes_c_and_sealgate_config(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    from tests.conftest import write_config

    cfg = write_config(tmp_path, backend=moto_url, tls=tls_files, port=free_port())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    short = run(["policy", "check", "-c", str(cfg), "--as", "tester", "s3:GetObject", "b/k"], elsewhere)
    assert short.returncode == 0 and short.stdout.startswith("allowed"), short.stderr
    env = run(["policy", "check", "--as", "tester", "s3:GetObject", "b/k"], elsewhere, {"SEALGATE_CONFIG": str(cfg)})
    assert env.returncode == 0 and env.stdout.startswith("allowed"), env.stderr
    missing = run(["gc", "--bucket", "b"], elsewhere)
    assert missing.returncode == 2 and "SEALGATE_CONFIG" in missing.stderr


def test_bare_sealgate_shows_whole_summaries(tmp_path: Path) -> None:
    r = run([], tmp_path)
    assert r.returncode == 0
    assert "..." not in r.stdout.split("Commands:")[1] and "quickstart" in r.stdout
    assert "interrupted, and delete manifests whose object is gone." in " ".join(r.stdout.split())


def _entry_point() -> list[str]:
    """The `sealgate` script pip installed beside this Python, else what it runs: `main()` with
    ``sealgate`` as the program's name."""
    script = Path(sys.executable).with_name("sealgate")
    if script.is_file():
        return [str(script)]
    run_as_script = "import sys; sys.argv[0] = 'sealgate'; from proxy.cli import main; sys.exit(main())"
    return [sys.executable, "-c", run_as_script]


def test_shell_completion_scripts_and_requests(tmp_path: Path) -> None:
    for shell, says in (("bash", "_sealgate_completion() {"), ("zsh", "#compdef sealgate"), ("fish", "function")):
        r = run(["completion", shell], tmp_path)
        assert r.returncode == 0 and says in r.stdout and "_sealgate_completion" in r.stdout, r.stdout + r.stderr
        assert "_SEALGATE_COMPLETE=" in r.stdout
    assert run(["completion", "tcsh"], tmp_path).returncode == 2

    # What the scripts ask: the installed `sealgate`, and `python -m proxy.cli` alike.
    for command in (_entry_point(), SEALGATE):
        asked = {"COMP_WORDS": "sealgate re", "COMP_CWORD": "1", "_SEALGATE_COMPLETE": "bash_complete"}
        r = subprocess.run(command, env={**os.environ, **asked}, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.splitlines() == ["plain,rewrap"], (command, r.stdout, r.stderr)
        asked = {"COMP_WORDS": "sealgate convert --to ", "COMP_CWORD": "3", "_SEALGATE_COMPLETE": "bash_complete"}
        r = subprocess.run(command, env={**os.environ, **asked}, capture_output=True, text=True, timeout=60)
        assert r.stdout.splitlines() == ["plain,sealgate", "plain,s3ec-v3"], (command, r.stdout, r.stderr)

    # The bash script itself, loaded into bash and asked as a TAB would; it runs the command it
    # completes, here a `sealgate` that is the entry point.
    script, sealgate = tmp_path / "sealgate.bash", tmp_path / "sealgate"
    script.write_text(run(["completion", "bash"], tmp_path).stdout)
    sealgate.write_text(f'#!/bin/sh\nexec {shlex.join(_entry_point())} "$@"\n')
    sealgate.chmod(0o755)
    tab = f"source {script}; COMP_WORDS=(sealgate gc --older); COMP_CWORD=2; _sealgate_completion {sealgate}"
    r = subprocess.run(["bash", "-c", tab + '; echo "${COMPREPLY[@]}"'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["--older-than"], r.stdout + r.stderr


def test_serve_refuses_a_default_key_the_keyring_lacks(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    from tests.conftest import write_config

    # Two workers: each finds the problem, the first process alone reports it (one line, not two).
    cfg = write_config(tmp_path, backend=moto_url, tls=tls_files, port=free_port(), server_extra="workers = 2")
    cfg.write_text(cfg.read_text().replace('default_key = "default"', 'default_key = "defualt"'))
    r = subprocess.run([*SEALGATE, "serve", "-c", str(cfg)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "kms.default_key" in r.stderr and "'defualt'" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("kms.default_key") == 1 and r.stderr.count("no [[policies]]") == 1, r.stderr


def test_serve_warns_of_a_bucket_rule_key_the_keyring_lacks(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key a rule names may be made later (so sealgate still starts), but a typo must not wait
    for the first upload to show."""
    from tests.conftest import SealgateThread, write_config

    rule = '[[buckets]]\nname = "invoices-*"\nkey = "invoces"\n'
    cfg = write_config(tmp_path, backend=moto_url, tls=tls_files, port=free_port(), extra=rule)
    caplog.set_level(logging.WARNING, logger="sealgate")
    gate = SealgateThread(cfg).start()
    try:
        lines = [r.getMessage() for r in caplog.records if "holds no usable key" in r.getMessage()]
        assert len(lines) == 1 and "buckets[0] (invoices-*)" in lines[0] and "'invoces'" in lines[0]
    finally:
        gate.stop()


def test_health_asks_the_configs_own_listener(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    from tests.conftest import SealgateThread, write_config

    port = free_port()
    cfg = write_config(tmp_path, backend=moto_url, tls=tls_files, port=port)
    down = run(["health", "-c", str(cfg)], tmp_path)
    assert down.returncode == 1 and f"127.0.0.1:{port}" in down.stderr
    down = run(["health", "-c", str(cfg), "--json"], tmp_path)
    assert down.returncode == 1 and down.stderr == "", down.stderr
    said = json.loads(down.stdout)
    assert (said["healthy"], said["status"], said["ready"]) == (False, None, False) and said["answer"], said
    assert said["url"] == f"https://127.0.0.1:{port}/-/healthz"
    gate = SealgateThread(cfg).start()
    try:
        alive = run(["health"], tmp_path, {"SEALGATE_CONFIG": str(cfg)})
        assert alive.returncode == 0 and alive.stdout.strip() == "ok", alive.stderr
        ready = run(["health", "--ready", "-c", str(cfg)], tmp_path)
        assert ready.returncode == 0 and ready.stdout.strip() == "ready", ready.stderr
        ready = run(["health", "--ready", "-c", str(cfg), "--json"], tmp_path)
        assert ready.returncode == 0, ready.stderr
        said = json.loads(ready.stdout)
        assert (said["healthy"], said["status"], said["ready"], said["answer"]) == (True, 200, True, "ready")
    finally:
        gate.stop()
