"""Rewrap of a multipart object interrupted between the object and its manifest, and re-run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from proxy.audit import verify_file
from proxy.cli import main
from tests.conftest import PASSPHRASE, backend_client, free_port, multipart_put, start_stack, write_config

MiB = 1024 * 1024
MP = ".sealgate/mp/"


def _rewrap(cfg: Path, to_key: str) -> Any:
    args = ["rewrap", "--config", str(cfg), "--bucket", "rw-mp", "--prefix", "obj/", "--to-key", to_key]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _records(raw: Any) -> dict[str, tuple[bytes, dict[str, str]]]:
    out = {}
    for item in raw.list_objects_v2(Bucket="rw-mp", Prefix=MP).get("Contents", []):
        obj = raw.get_object(Bucket="rw-mp", Key=item["Key"])
        out[item["Key"]] = (obj["Body"].read(), obj["Metadata"])
    return out


def test_interrupted_multipart_rewrap_is_finished_by_a_rerun(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    from proxy.kms.keystore import LocalKeyStore

    audit = tmp_path / "audit.jsonl"
    st = start_stack(tmp_path, moto_url, tls_files, extra=f'[audit]\npath = "{audit}"\n')
    cfg = tmp_path / "sealgate.toml"
    try:
        store = LocalKeyStore.open(tmp_path / "keyring", PASSPHRASE.encode())
        store.create_key("key2")
        store.save()
        s3, raw = st.client(), backend_client(moto_url)
        s3.create_bucket(Bucket="rw-mp")
        parts = [os.urandom(5 * MiB), os.urandom(1000)]
        multipart_put(s3, "rw-mp", "obj/mp", parts)
        body = b"".join(parts)
        (before,) = _records(raw).items()

        r = _rewrap(cfg, "key2")
        assert r.exit_code == 0 and "0 skipped" in r.output, r.output
        (after,) = _records(raw)
        assert after != before[0]  # the manifest followed the object's new ETag

        # The state a run killed between the object's copy and its manifest leaves behind: the
        # object under key2 already, its manifest still under the previous ETag.
        raw.delete_object(Bucket="rw-mp", Key=after)
        raw.put_object(Bucket="rw-mp", Key=before[0], Body=before[1][0], Metadata=before[1][1])
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket="rw-mp", Key="obj/mp")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500

        r = _rewrap(cfg, "key2")
        assert r.exit_code == 0 and "0 skipped" in r.output and "rewrapped 1" in r.output.lower(), r.output
        assert list(_records(raw)) == [after]  # re-recorded under the current ETag, the stale one gone
        assert s3.get_object(Bucket="rw-mp", Key="obj/mp")["Body"].read() == body
        r = _rewrap(cfg, "key2")
        assert r.exit_code == 0 and "1 already under key2" in r.output, r.output

        # A manifest that is gone altogether is reported, not guessed at; nothing is written.
        raw.delete_object(Bucket="rw-mp", Key=after)
        r = _rewrap(cfg, "key2")
        assert r.exit_code == 1 and "manifest for this object is missing" in r.output, r.output
        assert _records(raw) == {}

        # With the object's key encrypt-only in the operator's config, rewrap refuses before any
        # keyring call.
        eo = tmp_path / "eo"
        eo.mkdir()
        kr = tmp_path / "keyring"
        eo_cfg = write_config(
            eo,
            backend=moto_url,
            tls=tls_files,
            port=free_port(),
            kms=f'provider = "local"\nkeyring = "{kr}"\npassphrase_file = "{kr}.pass"\ndefault_key = "default"\n',
            extra='[[keys]]\nid = "key2"\nmode = "encrypt-only"\nencrypt = ["tester"]\n'
            '[[keys]]\nid = "default"\nencrypt = ["tester"]\n'
            f'[audit]\npath = "{eo / "audit.jsonl"}"\n',
        )
        r = _rewrap(eo_cfg, "default")
        assert r.exit_code == 1 and "encrypt-only" in r.output, r.output
        assert raw.head_object(Bucket="rw-mp", Key="obj/mp")["Metadata"]["sg-kr"].startswith("local:key2:")
    finally:
        st.gate.stop()

    # The runs' key uses are audited in a file of their own, the refusal too.
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl.rewrap").read_text().splitlines()]
    assert verify_file(tmp_path / "audit.jsonl.rewrap").ok
    wraps = [r["key_version"] for r in records if r["operation"] == "wrap"]
    assert len(wraps) == 4 and all(v.startswith("local:key2:") for v in wraps)  # one per run reaching it
    assert {(r["operation"], r["object_key"]) for r in records} == {("decrypt", "obj/mp"), ("wrap", "obj/mp")}
    assert all(r["identity"].startswith("operator:") and r["outcome"] == "allowed" for r in records)
    (refused,) = [json.loads(line) for line in (eo / "audit.jsonl.rewrap").read_text().splitlines()]
    assert (refused["operation"], refused["outcome"], refused["reason"]) == ("decrypt", "denied", "encrypt-only")
