"""Several hosts, one keyring: the local keyring kept as an object on the backend
(``kms.keyring = "s3://bucket/key"``), so a rotation on any host reaches every host."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import (
    PASSPHRASE,
    SealgateThread,
    backend_client,
    client_for,
    free_port,
    wait_port,
    write_config,
)
from tests.integration.test_admin import ADMIN, ADMIN_EXTRA, _call
from tests.signing import send

SEALGATE = [sys.executable, "-m", "proxy.cli"]
RING_KEY = ".sealgate/keyring"


def host(
    d: Path,
    backend: str,
    tls: dict[str, Path],
    ring: str,
    *,
    poll: float = 0.5,
    passphrase: str = PASSPHRASE,
    workers: int = 1,
    main_kms: str = "",
    **kw: Any,
) -> Path:
    """The config of one host: a working directory of its own (its own passphrase file, no
    keyring file), its keyring the object `ring` (``[kms.previous]`` under `main_kms`, if given)."""
    d.mkdir(parents=True, exist_ok=True)
    pf = d / "passphrase"
    pf.write_text(passphrase + "\n")
    pf.chmod(0o600)
    kms = (
        f'provider = "local"\nkeyring = "{ring}"\npassphrase_file = "{pf}"\ndefault_key = "default"\n'
        f"keyring_poll_seconds = {poll}\n"
    )
    if main_kms:
        kms = main_kms + "[kms.previous]\n" + kms
    # One worker unless asked: each forked worker would report the same start-up failure.
    return write_config(
        d, backend=backend, tls=tls, port=free_port(), kms=kms, server_extra=f"workers = {workers}", **kw
    )


def keys(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SEALGATE, "keys", *args, "--config", str(config)], capture_output=True, text=True, timeout=60
    )


def key_ref(raw: Any, bucket: str, key: str) -> str:
    return str(raw.head_object(Bucket=bucket, Key=key)["Metadata"]["sg-kr"])


def failure(stderr: str) -> str:
    """The one line that says why a command failed (the log lines before it aside: a start-up
    warning about the config is not the failure)."""
    (line,) = [ln for ln in stderr.splitlines() if not ln[:4].isdigit()]
    return line


def seal_one(cfg: Path, ca: Path, bucket: str, key: str, body: bytes) -> None:
    """Through a sealgate of `cfg` started for it: create `bucket`, PUT `body` as `key`."""
    gate = SealgateThread(cfg).start()
    try:
        s3 = client_for(gate.url, ca)
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    finally:
        gate.stop()


def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the time allowed")
        time.sleep(0.1)


@pytest.fixture
def ring(moto_url: str) -> str:
    """A bucket of its own for the keyring object, under the prefix sealgate hides from clients."""
    bucket = f"keyring-{uuid.uuid4().hex[:12]}"
    backend_client(moto_url).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/{RING_KEY}"


def test_a_rotation_on_one_host_reaches_the_others(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, ring: str
) -> None:
    """Host A rotates (CLI, then admin API); B, which never polls within the test, reads what A
    sealed under each new version at once and then seals under it; C, which only writes, seals
    under the new version after its poll interval. No keyring file exists on any host."""
    cfg_a = host(tmp_path / "a", moto_url, tls_files, ring, extra=ADMIN_EXTRA)
    cfg_b = host(tmp_path / "b", moto_url, tls_files, ring, poll=600)
    cfg_c = host(tmp_path / "c", moto_url, tls_files, ring, poll=0.5)
    made = keys(cfg_a, "create", "default")
    assert made.returncode == 0, made.stderr
    assert ring in made.stdout
    raw = backend_client(moto_url)
    a, b, c = (SealgateThread(cfg).start() for cfg in (cfg_a, cfg_b, cfg_c))
    try:
        sa, sb, sc = (client_for(g.url, tls_files["ca"]) for g in (a, b, c))
        sa.create_bucket(Bucket="shared-ring")
        sa.put_object(Bucket="shared-ring", Key="v1", Body=b"under version 1")
        assert key_ref(raw, "shared-ring", "v1") == "local:default:1"

        rotated = keys(cfg_a, "rotate", "default")
        assert rotated.returncode == 0, rotated.stderr
        assert "now version 2" in rotated.stdout

        def a_seals_under(version: int) -> bool:
            sa.put_object(Bucket="shared-ring", Key=f"a{version}", Body=b"through A")
            return key_ref(raw, "shared-ring", f"a{version}") == f"local:default:{version}"

        until(lambda: a_seals_under(2))  # A's own poll
        # B has not polled (600 s): the object names a version it lacks, so it looks at once.
        assert sb.get_object(Bucket="shared-ring", Key="a2")["Body"].read() == b"through A"
        sb.put_object(Bucket="shared-ring", Key="b2", Body=b"through B")
        assert key_ref(raw, "shared-ring", "b2") == "local:default:2"
        time.sleep(1.2)  # two of C's poll intervals; C has read nothing
        sc.put_object(Bucket="shared-ring", Key="c2", Body=b"through C")
        assert key_ref(raw, "shared-ring", "c2") == "local:default:2"

        status, body = _call(a.url, tls_files["ca"], "POST", "/-/keys/default/rotate", ADMIN)
        assert status == 200, body
        assert json.loads(body)["key"]["current_version"] == 3
        sa.put_object(Bucket="shared-ring", Key="a3", Body=b"right after the admin rotation")
        assert key_ref(raw, "shared-ring", "a3") == "local:default:3"
        assert sb.get_object(Bucket="shared-ring", Key="a3")["Body"].read() == b"right after the admin rotation"
        time.sleep(1.2)
        sc.put_object(Bucket="shared-ring", Key="c3", Body=b"through C")
        assert key_ref(raw, "shared-ring", "c3") == "local:default:3"
        for g in (sa, sb, sc):  # every version still opens everywhere
            assert g.get_object(Bucket="shared-ring", Key="v1")["Body"].read() == b"under version 1"
            assert g.get_object(Bucket="shared-ring", Key="c2")["Body"].read() == b"through C"

        listed = keys(cfg_b, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)["keys"]
        assert (row["id"], row["versions"], row["current_version"]) == ("default", 3, 3)
        assert _ready(b, tls_files["ca"]) == 200
    finally:
        for g in (a, b, c):
            g.stop()


def _ready(gate: SealgateThread, ca: Path) -> int:
    return int(send(ca, "GET", gate.url + "/-/readyz", {}).status)


def test_clients_cannot_reach_the_keyring_object(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    """Kept under .sealgate/ in a bucket sealgate serves, the keyring object is neither listed
    to clients nor readable, overwritable or deletable by them (the README's advice)."""
    bucket = f"keyring-{uuid.uuid4().hex[:12]}"
    backend_client(moto_url).create_bucket(Bucket=bucket)
    cfg = host(tmp_path / "a", moto_url, tls_files, f"s3://{bucket}/{RING_KEY}")
    assert keys(cfg, "create", "default").returncode == 0
    raw = backend_client(moto_url)
    before = raw.get_object(Bucket=bucket, Key=RING_KEY)["Body"].read()
    gate = SealgateThread(cfg).start()
    try:
        s3 = client_for(gate.url, tls_files["ca"])
        assert RING_KEY not in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        for attempt in (
            lambda: s3.get_object(Bucket=bucket, Key=RING_KEY),
            lambda: s3.put_object(Bucket=bucket, Key=RING_KEY, Body=b"x"),
            lambda: s3.delete_object(Bucket=bucket, Key=RING_KEY),
        ):
            with pytest.raises(ClientError):
                attempt()
        assert raw.get_object(Bucket=bucket, Key=RING_KEY)["Body"].read() == before
    finally:
        gate.stop()


def test_concurrent_rotations_on_two_hosts_are_all_kept(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, ring: str
) -> None:
    """Rotations started together on two hosts, and four threads whose edits all read the same
    copy before any saves: each ends as a version of its own, none overwritten."""
    from proxy.config import load_config
    from proxy.kms.keyring_edits import edit
    from proxy.kms.keystore import KeyInfo, LocalKeyStore
    from proxy.wiring import keyring_where

    cfg_a = host(tmp_path / "a", moto_url, tls_files, ring)
    cfg_b = host(tmp_path / "b", moto_url, tls_files, ring)
    assert keys(cfg_a, "create", "default").returncode == 0
    procs = [
        subprocess.Popen(
            [*SEALGATE, "keys", "rotate", "default", "--config", str(cfg)], stdout=subprocess.PIPE, text=True
        )
        for cfg in (cfg_a, cfg_b, cfg_a, cfg_b)
    ]
    said = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), said
    assert sorted(int(s.rsplit(" ", 1)[1]) for s in said) == [2, 3, 4, 5]

    config = load_config(cfg_b)
    where = keyring_where(config.kms, config.backend)
    first = LocalKeyStore.open(where, PASSPHRASE.encode())
    together = threading.Barrier(4)
    tries: list[int] = []

    def rotate(store: LocalKeyStore) -> KeyInfo:
        tries.append(store.list_keys()[0].current_version)
        if len(tries) <= 4:
            together.wait(10)  # all four have read version 5 before any saves
        return store.rotate_key("default")

    results: list[KeyInfo] = []
    threads = [
        threading.Thread(target=lambda: results.append(edit(where, lambda: first.reopen(), rotate))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(i.current_version for i in results) == [6, 7, 8, 9]
    assert len(tries) > 4  # three of them lost the race at least once and redid their change
    store = first.reopen()
    versions = store.versions("default")
    assert versions is not None and [v for v, _ in versions] == list(range(9, 0, -1))
    assert len({material for _, material in versions}) == 9


def test_a_backend_without_conditional_writes_is_refused(
    rclone_s3: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """`rclone serve s3` ignores If-None-Match and If-Match on PUT: a keyring object there would
    lose one of two concurrent rotations, so neither `keys create` nor `serve` accepts it."""
    from proxy.kms.keystore import LocalKeyStore

    creds = {"akid": "rcloneaccess", "secret": "rclonesecret0123456789"}
    raw = backend_client(rclone_s3, **creds)
    raw.create_bucket(Bucket="rclone-ring")
    cfg = host(
        tmp_path / "a",
        rclone_s3,
        tls_files,
        f"s3://rclone-ring/{RING_KEY}",
        backend_akid=creds["akid"],
        backend_secret=creds["secret"],
    )
    made = keys(cfg, "create", "default")
    assert made.returncode == 2
    (line,) = made.stderr.splitlines()
    assert "ignores conditional writes (If-None-Match and If-Match on PUT)" in line
    with pytest.raises(ClientError):
        raw.head_object(Bucket="rclone-ring", Key=RING_KEY)  # nothing was written

    # A keyring object put there by other means: serve refuses it at start, in one line.
    local = LocalKeyStore.create(tmp_path / "file-ring", PASSPHRASE.encode())
    local.create_key("default")
    local.save()
    raw.put_object(Bucket="rclone-ring", Key=RING_KEY, Body=(tmp_path / "file-ring").read_bytes())
    served = subprocess.run([*SEALGATE, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert served.returncode == 2
    line = failure(served.stderr)
    assert line.startswith("sealgate: keyring object s3://rclone-ring/.sealgate/keyring: the backend ignores")


def test_an_unusable_keyring_object_stops_the_start_in_one_line(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, ring: str
) -> None:
    bucket = ring.split("/")[2]
    raw = backend_client(moto_url)
    cfg = host(tmp_path / "a", moto_url, tls_files, ring)

    def serve_fails() -> str:
        served = subprocess.run([*SEALGATE, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
        assert served.returncode == 2, served.stderr
        return failure(served.stderr)

    assert serve_fails() == f"sealgate: keyring object {ring} does not exist"
    raw.put_object(Bucket=bucket, Key=RING_KEY, Body=b"<html>a proxy's error page</html>" * 3)
    assert serve_fails() == f"sealgate: {ring} is not a sealgate keyring"
    other = host(tmp_path / "other", moto_url, tls_files, ring, passphrase="another passphrase entirely")
    raw.delete_object(Bucket=bucket, Key=RING_KEY)
    assert keys(other, "create", "default").returncode == 0
    assert serve_fails() == f"sealgate: cannot open keyring object {ring}: wrong passphrase or corrupted keyring object"


def test_the_loaded_keyring_stays_in_use_when_the_object_goes_bad(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, ring: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Corrupt, sealed under another passphrase, deleted: each is one ERROR at the next poll and
    /-/readyz answers 503 with the reason, and the host keeps sealing and opening with the
    keyring it holds; a good object again is picked up and the host is ready again."""
    from proxy.kms.keystore import LocalKeyStore

    bucket = ring.split("/")[2]
    raw = backend_client(moto_url)
    cfg = host(tmp_path / "a", moto_url, tls_files, ring, poll=0.2)
    assert keys(cfg, "create", "default").returncode == 0
    good = raw.get_object(Bucket=bucket, Key=RING_KEY)["Body"].read()
    stranger = LocalKeyStore.create(tmp_path / "stranger", b"another passphrase entirely")
    stranger.create_key("default")
    stranger.save()
    gate = SealgateThread(cfg).start()
    caplog.set_level(logging.INFO, logger="proxy.kms.local")
    try:
        s3 = client_for(gate.url, tls_files["ca"])
        s3.create_bucket(Bucket="ring-goes-bad")
        s3.put_object(Bucket="ring-goes-bad", Key="before", Body=b"sealed before")

        def errors() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]

        for n, (damage, says) in enumerate(
            (
                (
                    lambda: raw.put_object(Bucket=bucket, Key=RING_KEY, Body=good[:-1] + bytes([good[-1] ^ 1])),
                    "is corrupted",
                ),
                (
                    lambda: raw.put_object(Bucket=bucket, Key=RING_KEY, Body=(tmp_path / "stranger").read_bytes()),
                    "re-keyed",
                ),
                (lambda: raw.delete_object(Bucket=bucket, Key=RING_KEY), "does not exist"),
            ),
            1,
        ):
            damage()
            until(lambda n=n: len(errors()) == n)  # type: ignore[misc]
            assert says in errors()[-1] and errors()[-1].startswith("keeping the loaded keyring: ")
            # Not ready while it lasts (a rotation or a disabled key would not reach this host),
            # and the operator (loopback) is told why.
            answer = send(tls_files["ca"], "GET", gate.url + "/-/readyz", {})
            assert answer.status == 503, answer.data
            assert b"the keyring object cannot be read" in answer.data and says.encode() in answer.data
            assert re.search(rb"\(for \d+ s\)", answer.data), answer.data
            s3.put_object(Bucket="ring-goes-bad", Key=f"during{n}", Body=b"sealed meanwhile")
            assert s3.get_object(Bucket="ring-goes-bad", Key="before")["Body"].read() == b"sealed before"
        time.sleep(0.6)  # three more polls: the same failure is not logged again
        assert len(errors()) == 3
        assert all(PASSPHRASE not in m for m in errors())

        raw.put_object(Bucket=bucket, Key=RING_KEY, Body=good)
        until(lambda: any("can be read again" in r.getMessage() for r in caplog.records))
        assert _ready(gate, tls_files["ca"]) == 200
        assert s3.get_object(Bucket="ring-goes-bad", Key="during3")["Body"].read() == b"sealed meanwhile"
    finally:
        gate.stop()


async def test_started_with_a_loaded_keyring_whose_object_is_gone_it_serves_and_is_not_ready(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, ring: str
) -> None:
    """`start` given a keyring loaded before the object became unreadable (its last look
    failed): it serves (seals and opens) with that keyring and says it is not ready, instead of
    taking the readiness problem for a config error and failing."""
    from proxy.config import load_config
    from proxy.kms.local import LocalKeyring
    from proxy.server.run import start
    from proxy.wiring import make_keyring

    bucket = ring.split("/")[2]
    cfg = host(tmp_path / "a", moto_url, tls_files, ring, poll=60)
    assert keys(cfg, "create", "default").returncode == 0
    config = load_config(cfg)
    keyring = make_keyring(config)  # loaded while the object is there
    assert isinstance(keyring, LocalKeyring)
    backend_client(moto_url).delete_object(Bucket=bucket, Key=RING_KEY)
    await asyncio.to_thread(keyring.refresh)  # this look fails: the object is gone
    running = await start(config, keyring=keyring)
    try:
        url = f"https://localhost:{running.tls_port}"
        answer = await asyncio.to_thread(send, tls_files["ca"], "GET", url + "/-/readyz", {})
        assert answer.status == 503 and b"does not exist" in answer.data

        def round_trip() -> bytes:
            s3 = client_for(url, tls_files["ca"])
            s3.create_bucket(Bucket="ring-gone-worker")
            s3.put_object(Bucket="ring-gone-worker", Key="k", Body=b"sealed without the object")
            return bytes(s3.get_object(Bucket="ring-gone-worker", Key="k")["Body"].read())

        assert await asyncio.to_thread(round_trip) == b"sealed without the object"
    finally:
        await running.stop()


def test_an_existing_keyring_file_is_published_for_every_host(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, ring: str
) -> None:
    """`keys publish` copies a host's keyring file to the object unchanged: objects sealed under
    the file's keys open on a host that reads only the object; a second publish is refused."""
    first = tmp_path / "first"
    first.mkdir()
    cfg_file = write_config(first, backend=moto_url, tls=tls_files, port=free_port())  # a keyring file
    seal_one(cfg_file, tls_files["ca"], "before-publish", "k", b"sealed under the file's key")
    done = keys(cfg_file, "publish", ring)
    assert done.returncode == 0, done.stderr
    assert f'kms.keyring = "{ring}"' in done.stdout
    again = keys(cfg_file, "publish", ring)
    assert again.returncode == 2
    assert failure(again.stderr) == (
        f"sealgate: {ring} already exists: change its keys with `sealgate keys ... --config` on a host using it"
    )
    # --keyring names files only: an object is reached through a config's backend.
    wrong = subprocess.run(
        [*SEALGATE, "keys", "list", "--keyring", ring, "--passphrase-file", str(first / "keyring.pass")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2
    assert "give --config FILE whose kms.keyring names it" in failure(wrong.stderr)

    other = host(tmp_path / "other", moto_url, tls_files, ring)
    gate = SealgateThread(other).start()
    try:
        s3 = client_for(gate.url, tls_files["ca"])
        assert s3.get_object(Bucket="before-publish", Key="k")["Body"].read() == b"sealed under the file's key"
    finally:
        gate.stop()


class TwoWorkers:
    """`sealgate serve` of `cfg` with two workers, its log in `log`; the test stops it."""

    def __init__(self, cfg: Path, ca: Path, log: Path) -> None:
        self.ca, self.log = ca, log
        self.url = "https://localhost:" + re.findall(r'listen = "127.0.0.1:(\d+)"', cfg.read_text())[0]
        with log.open("wb") as out:
            self.proc = subprocess.Popen([*SEALGATE, "serve", "--config", str(cfg)], cwd=log.parent, stderr=out)
        wait_port(int(self.url.rsplit(":", 1)[1]), 30)

    def children(self) -> set[int]:
        from tests.integration.test_supervision import _children

        return _children(self.proc.pid)

    def logged(self) -> str:
        return self.log.read_text()

    def readiness(self) -> set[int]:
        """/-/readyz on fresh connections: the kernel spreads them over both workers."""
        return {int(send(self.ca, "GET", self.url + "/-/readyz", {}).status) for _ in range(12)}

    def replace_a_worker(self) -> int:
        """SIGKILL the forked worker; the replacement's pid once it says it serves the copy of
        the keyring it was handed, and has stayed up past the first process's restart delay."""
        from tests.integration.test_supervision import _eventually

        (first,) = self.children()
        os.kill(first, signal.SIGKILL)
        assert _eventually(lambda: len(self.children()) == 1 and first not in self.children(), 10)
        (replacement,) = self.children()
        said = "serving the copy of the keyring the first process handed over"
        assert _eventually(lambda: said in self.logged(), 20), self.logged()[-2000:]
        time.sleep(3)  # a replacement that cannot start exits, and another is started every second
        assert self.children() == {replacement}, self.logged()[-2000:]
        assert "does not exist" in self.logged() and PASSPHRASE not in self.logged()
        return replacement

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def test_a_worker_replaced_while_the_object_is_gone_starts_from_the_copy_handed_over(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, ring: str
) -> None:
    """Two workers; the keyring object is deleted, then a worker is killed. Its replacement
    cannot read the object, so it opens the copy the first process hands it (still sealed under
    the passphrase) and serves, not ready like the other, instead of failing to start again and
    again and leaving its slot empty. With the object back, every connection is ready."""
    from tests.integration.test_supervision import _eventually

    bucket = ring.split("/")[2]
    raw = backend_client(moto_url)
    cfg = host(tmp_path / "a", moto_url, tls_files, ring, poll=0.2, workers=2)
    assert keys(cfg, "create", "default").returncode == 0
    good = raw.get_object(Bucket=bucket, Key=RING_KEY)["Body"].read()
    gate = TwoWorkers(cfg, tls_files["ca"], tmp_path / "sealgate.log")
    try:
        assert _eventually(lambda: len(gate.children()) == 1 and gate.readiness() == {200}, 30)
        s3 = client_for(gate.url, tls_files["ca"])
        s3.create_bucket(Bucket="ring-gone-replaced")
        s3.put_object(Bucket="ring-gone-replaced", Key="before", Body=b"sealed before")
        raw.delete_object(Bucket=bucket, Key=RING_KEY)
        assert _eventually(lambda: gate.readiness() == {503}, 10)
        failing_from = time.monotonic()
        time.sleep(5)  # so that the failure is older than the replacement by far
        replacement = gate.replace_a_worker()
        # Both workers, the replacement too, count the failure from when it was first seen.
        reasons = [send(gate.ca, "GET", gate.url + "/-/readyz", {}) for _ in range(12)]
        assert {r.status for r in reasons} == {503}
        counted = [int(n) for r in reasons for n in re.findall(rb"\(for (\d+) s\)", r.data)]
        assert len(counted) == 12 and min(counted) >= time.monotonic() - failing_from - 2, counted
        for i in range(12):
            fresh = client_for(gate.url, tls_files["ca"])
            fresh.put_object(Bucket="ring-gone-replaced", Key=f"k{i}", Body=b"x" * i)
            assert fresh.get_object(Bucket="ring-gone-replaced", Key="before")["Body"].read() == b"sealed before"
        raw.put_object(Bucket=bucket, Key=RING_KEY, Body=good)
        assert _eventually(lambda: gate.readiness() == {200}, 10)
        assert gate.children() == {replacement}
    finally:
        gate.stop()


def test_a_replaced_worker_gets_the_copy_of_a_previous_local_keyring_object(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, ring: str
) -> None:
    """Moving from the local keyring to AWS KMS (``[kms.previous]`` the local keyring object):
    with that object gone, both workers say they are not ready (and why: objects sealed under
    it could stop opening after a change elsewhere), a replacement worker is handed its copy
    too, starts, and opens the objects sealed under it; with the object back, all are ready."""
    from tests.integration.s3ec_support import kms_config, moto_client
    from tests.integration.test_supervision import _eventually

    bucket = ring.split("/")[2]
    raw = backend_client(moto_url)
    before = host(tmp_path / "before", moto_url, tls_files, ring)
    assert keys(before, "create", "default").returncode == 0
    good = raw.get_object(Bucket=bucket, Key=RING_KEY)["Body"].read()
    seal_one(before, tls_files["ca"], "ring-previous", "local", b"sealed under the local keyring")
    key_id = moto_client("kms", moto_url).create_key()["KeyMetadata"]["KeyId"]
    cfg = host(tmp_path / "a", moto_url, tls_files, ring, poll=0.2, workers=2, main_kms=kms_config(moto_url, key_id))
    gate = TwoWorkers(cfg, tls_files["ca"], tmp_path / "sealgate.log")
    try:
        assert _eventually(lambda: len(gate.children()) == 1 and gate.readiness() == {200}, 30)
        raw.delete_object(Bucket=bucket, Key=RING_KEY)
        assert _eventually(lambda: gate.readiness() == {503}, 10)
        said = send(tls_files["ca"], "GET", gate.url + "/-/readyz", {}).data
        assert b"kms: previous keyring (local): the keyring object cannot be read" in said, said
        gate.replace_a_worker()
        assert gate.readiness() == {503}
        for i in range(12):
            fresh = client_for(gate.url, tls_files["ca"])
            body = fresh.get_object(Bucket="ring-previous", Key="local")["Body"].read()
            assert body == b"sealed under the local keyring"
            fresh.put_object(Bucket="ring-previous", Key=f"kms{i}", Body=b"sealed under AWS KMS")
        raw.put_object(Bucket=bucket, Key=RING_KEY, Body=good)
        assert _eventually(lambda: gate.readiness() == {200}, 10)
    finally:
        gate.stop()
