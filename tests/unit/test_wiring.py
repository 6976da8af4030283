"""proxy/wiring.py: the parts built from a config, audited as the config asks, closed together."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from proxy.audit import AuditError, audit_context, verify_file
from proxy.config import Config, load_config
from proxy.crypto.format import encryption_context
from proxy.kms.audited import AuditingKeyring
from proxy.kms.local import LocalKeyring
from proxy.wiring import audited_gateway, make_gateway, open_audit, operator_gateway, started
from tests.conftest import write_config

CACHE = "\n[kms.cache]\nenabled = true\ndecrypt_seconds = 60\n"


def config(tmp_path: Path, extra: str = "") -> Config:
    tls = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    for path in tls.values():  # loading checks they exist; nothing here serves TLS
        path.touch(mode=0o600)
    return load_config(write_config(tmp_path, backend="http://127.0.0.1:9", tls=tls, port=8443, extra=extra))


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_without_audit_the_keyring_is_the_configs_own(tmp_path: Path) -> None:
    gw = make_gateway(config(tmp_path))
    assert isinstance(gw.materials.keyring, LocalKeyring)
    assert gw.local_keys is gw.materials.keyring
    assert gw.audit is None


async def test_with_audit_every_key_use_is_recorded_and_everything_closes(tmp_path: Path) -> None:
    cfg = config(tmp_path, f'\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n' + CACHE)
    audit = open_audit(cfg)
    assert audit is not None
    gw = make_gateway(cfg, audit=audit)
    assert isinstance(gw.materials.keyring, AuditingKeyring)
    assert isinstance(gw.local_keys, LocalKeyring)  # the raw keys stay reachable, not by unwrapping
    ctx = encryption_context("b", "k")
    async with started(gw):
        key = await gw.materials.keyring.generate_data_key("default", ctx)
        for _ in range(2):  # a keyring call, then a use served from the cache
            await gw.materials.unwrap(key.key_ref, key.wrapped, ctx)
    reasons = [(r["operation"], r["reason"]) for r in records(tmp_path / "audit.jsonl")]
    assert reasons == [("generate", None), ("decrypt", None), ("decrypt", "cached")]
    with pytest.raises(AuditError, match="closed"):
        audit.record("decrypt", "allowed")


def test_open_audit_gives_each_writer_its_own_file(tmp_path: Path) -> None:
    assert open_audit(config(tmp_path)) is None
    cfg = config(tmp_path, f'\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    for kwargs, name in (({"per_process": True}, f"audit.jsonl.w{os.getpid()}"), ({"tool": "gc"}, "audit.jsonl.gc")):
        log = open_audit(cfg, **kwargs)  # type: ignore[arg-type]
        assert log is not None and log.path == tmp_path / name
        log.close()


async def test_audited_gateway_records_a_tool_run_under_the_operator(tmp_path: Path) -> None:
    cfg = config(tmp_path, f'\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n' + CACHE)
    ctx = encryption_context("b", "k")
    async with audited_gateway(cfg, "rewrap", identity="operator:test") as gw:
        key = await gw.materials.keyring.generate_data_key("default", ctx)
        await gw.materials.unwrap(key.key_ref, key.wrapped, ctx)
        await gw.materials.unwrap(key.key_ref, key.wrapped, ctx)
        run = audit_context.get()
    assert audit_context.get().identity is None
    path = tmp_path / "audit.jsonl.rewrap"
    assert verify_file(path).ok
    lines = records(path)
    # The tools record keyring calls; uses served from their cache are not recorded.
    assert [(r["operation"], r["reason"]) for r in lines] == [("generate", None), ("decrypt", None)]
    assert {(r["identity"], r["source"], r["request_id"]) for r in lines} == {
        ("operator:test", "sealgate rewrap", run.request_id)
    }


async def test_operator_gateway_audits_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path, f'\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    async with operator_gateway(cfg) as gw:
        assert gw.audit is None and isinstance(gw.materials.keyring, LocalKeyring)
    assert not (tmp_path / "audit.jsonl").exists()
