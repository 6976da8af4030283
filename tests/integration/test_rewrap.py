"""Rewrap: objects move to another master key; bodies on the backend are not touched."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE, backend_client, multipart_put, start_stack

MiB = 1024 * 1024


class Interrupted(Exception):
    pass


def test_rewrap_200_objects_interrupted_and_resumed(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    from proxy.kms.keystore import LocalKeyStore
    from proxy.store.gateway import Gateway
    from proxy.tools.rewrap import rewrap
    from proxy.wiring import make_backend, make_keyring, make_materials

    st = start_stack(tmp_path, moto_url, tls_files)
    try:
        store = LocalKeyStore.open(tmp_path / "keyring", PASSPHRASE.encode())
        store.create_key("key2")
        store.save()
        s3 = st.client()
        s3.create_bucket(Bucket="rewrap")
        bodies = {f"obj/{i:03d}": os.urandom(100 + i) for i in range(200)}
        for k, v in bodies.items():
            s3.put_object(Bucket="rewrap", Key=k, Body=v)
        # One multipart object too: its manifest must follow it.
        parts = [os.urandom(5 * MiB), b"tail"]
        multipart_put(s3, "rewrap", "obj/mp", parts)
        bodies["obj/mp"] = b"".join(parts)
        raw = backend_client(moto_url)
        before = {k: hashlib.sha256(raw.get_object(Bucket="rewrap", Key=k)["Body"].read()).hexdigest() for k in bodies}

        async def interrupted_run() -> None:
            backend = make_backend(st.gate.config)
            materials = make_materials(st.gate.config, make_keyring(st.gate.config))
            await backend.start()
            seen = 0

            def stop_halfway(key: str, outcome: str, size: int) -> None:
                nonlocal seen
                seen += 1
                if seen == 100:
                    raise Interrupted

            try:
                await rewrap(
                    Gateway(st.gate.config, backend, materials), "rewrap", "obj/", "key2", progress=stop_halfway
                )
            finally:
                await backend.close()
                await materials.close()

        with pytest.raises(Interrupted):
            asyncio.run(interrupted_run())
        refs = [raw.head_object(Bucket="rewrap", Key=k)["Metadata"]["sg-kr"] for k in bodies]
        assert 90 <= sum(r.startswith("local:key2:") for r in refs) <= 110

        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "proxy.cli",
                "rewrap",
                "--config",
                str(tmp_path / "sealgate.toml"),
                "--bucket",
                "rewrap",
                "--prefix",
                "obj/",
                "--to-key",
                "key2",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "0 skipped" in r.stdout and "already under key2" in r.stdout
        for k in bodies:
            obj = raw.get_object(Bucket="rewrap", Key=k)
            assert obj["Metadata"]["sg-kr"].startswith("local:key2:")
            assert hashlib.sha256(obj["Body"].read()).hexdigest() == before[k]  # body byte for byte
        # The old key can now be disabled: every object still reads.
        store = LocalKeyStore.open(tmp_path / "keyring", PASSPHRASE.encode())
        store.set_enabled("default", False)
        store.save()
        time.sleep(1.1)
        for k, v in bodies.items():
            assert s3.get_object(Bucket="rewrap", Key=k)["Body"].read() == v
        # And a new object under the disabled key is refused, fail-closed.
        from botocore.exceptions import ClientError

        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket="rewrap", Key="new", Body=b"x")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    finally:
        st.gate.stop()
