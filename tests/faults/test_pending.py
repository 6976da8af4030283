"""The pending record a completion leaves when the backend fails it half way (issue 24): whoever
reads the object next finishes it, a signed one even through a gateway that cannot sign, an
interrupted rewrap is finished by a read or by gc instead of losing its manifest, and a pending
record replayed by someone who can write to the backend does not vouch for other parts."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from botocore.exceptions import ClientError
from click.testing import CliRunner

from proxy.cli import main
from tests.conftest import (
    PASSPHRASE,
    SealgateThread,
    backend_client,
    client_for,
    free_port,
    make_keyring,
    multipart_put,
    start_stack,
    write_config,
)
from tests.faults.test_faults import FaultyRelay

MiB = 1024 * 1024


async def _fail_manifest_puts(request: web.Request) -> web.Response | None:
    """The backend refuses to store manifests (and only them)."""
    if request.method == "PUT" and "/.sealgate/mp/" in request.path:
        return web.Response(status=500, body=b"<Error><Code>InternalError</Code><Message>x</Message></Error>")
    return None


def _records(raw: Any, bucket: str, kind: str, key: str) -> dict[str, dict[str, str]]:
    """Sealgate's records of `kind` ('mp', 'pc') for `key`: name -> user metadata."""
    prefix = f".sealgate/{kind}/{hashlib.sha256(key.encode()).hexdigest()}/"
    listed = raw.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: raw.head_object(Bucket=bucket, Key=o["Key"])["Metadata"] for o in listed}


def test_a_signed_completion_cut_short_is_finished_by_a_reader_that_cannot_sign(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """Under a key whose readers require a trusted signer, the backend fails the manifest's PUT
    after completing the object: the pending record was signed before the object appeared, so
    a gateway without the signing key serves the object at once and stores its manifest."""
    from proxy.kms.keystore import LocalKeyStore

    ring = tmp_path / "keyring"
    make_keyring(ring)
    store = LocalKeyStore.open(ring, PASSPHRASE.encode())
    store.create_key("key2")
    store.create_asymmetric_key("gw-sign", "ed25519-signing")
    store.save()
    signer = store.public_key_pem("gw-sign").decode().strip()
    bucket = f"signed-cut-{os.urandom(3).hex()}"
    extra = (
        f'\n[[buckets]]\nname = "{bucket}"\nkey = "key2"\n'
        f'\n[[keys]]\nid = "key2"\nencrypt = ["tester"]\ndecrypt = ["tester"]\ntrusted_signers = ["{signer}"]\n'
    )
    relay = FaultyRelay(moto_url)
    writer = start_stack(tmp_path, relay.url, tls_files, extra=extra)
    reader_dir = tmp_path / "reader"
    reader_dir.mkdir()
    shutil.copy(ring, reader_dir / "keyring")
    shutil.copy(ring.with_name("keyring.pass"), reader_dir / "keyring.pass")
    other = LocalKeyStore.open(reader_dir / "keyring", PASSPHRASE.encode())
    other.set_enabled("gw-sign", False)
    other.save()
    reader = SealgateThread(
        write_config(reader_dir, backend=moto_url, tls=tls_files, port=free_port(), extra=extra)
    ).start()
    try:
        s3, raw = writer.client(), backend_client(moto_url)
        s3.create_bucket(Bucket=bucket)
        parts = [os.urandom(5 * MiB), b"tail"]
        uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
        done = [
            {
                "PartNumber": n,
                "ETag": s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=n, Body=p)["ETag"],
            }
            for n, p in enumerate(parts, 1)
        ]
        relay.arm("500", "/.sealgate/mp/")
        try:
            with pytest.raises(ClientError):
                s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={"Parts": done})
        finally:
            relay.fault = None
        assert relay.hits >= 1
        assert not _records(raw, bucket, "mp", "mp")
        (pending,) = _records(raw, bucket, "pc", "mp").values()
        assert pending.get("sg-sig")  # signed before the object appeared

        r3 = client_for(reader.url, tls_files["ca"])
        assert r3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"".join(parts)
        (manifest,) = _records(raw, bucket, "mp", "mp").values()
        assert manifest["sg-sig"] == pending["sg-sig"]
        assert not _records(raw, bucket, "pc", "mp")
        # The retried Complete answers as the first one would have.
        again = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={"Parts": done})
        assert again["ETag"] == r3.head_object(Bucket=bucket, Key="mp")["ETag"]
    finally:
        reader.stop()
        writer.gate.stop()
        relay.loop.call_soon_threadsafe(relay.loop.stop)


def test_a_replayed_pending_record_does_not_vouch_for_other_parts(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """Someone with write access to the backend keeps a copy of a completed object's sealed
    manifest, rebuilds the object from its own stored parts in another order, deletes the
    manifest and puts the copy where a pending record goes: reads fail closed (500) and nothing
    is stored under the rebuilt object's ETag."""
    st = start_stack(tmp_path, moto_url, tls_files)
    try:
        s3, raw = st.client(), backend_client(moto_url)
        bucket = f"replay-{os.urandom(3).hex()}"
        s3.create_bucket(Bucket=bucket)
        multipart_put(s3, bucket, "t", [os.urandom(5 * MiB), os.urandom(5 * MiB), b"end"])
        head = raw.head_object(Bucket=bucket, Key="t")
        (name,) = _records(raw, bucket, "mp", "t")
        sealed = raw.get_object(Bucket=bucket, Key=name)["Body"].read()
        from proxy.crypto.format import DEFAULT_SEGMENT_SIZE, Envelope, Layout, part_ciphertext_length

        env = Envelope.from_metadata(head["Metadata"])
        layout = Layout(DEFAULT_SEGMENT_SIZE)
        big = part_ciphertext_length(layout, 5 * MiB)
        raw.copy_object(Bucket=bucket, Key="t-src", CopySource={"Bucket": bucket, "Key": "t"})
        rebuilt = raw.create_multipart_upload(Bucket=bucket, Key="t", Metadata=head["Metadata"])["UploadId"]
        done = []
        for n, (a, z) in enumerate([(big, 2 * big), (0, big), (2 * big, head["ContentLength"])], 1):
            r = raw.upload_part_copy(
                Bucket=bucket,
                Key="t",
                UploadId=rebuilt,
                PartNumber=n,
                CopySource={"Bucket": bucket, "Key": "t-src"},
                CopySourceRange=f"bytes={a}-{z - 1}",
            )
            done.append({"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]})
        raw.complete_multipart_upload(Bucket=bucket, Key="t", UploadId=rebuilt, MultipartUpload={"Parts": done})
        raw.delete_object(Bucket=bucket, Key=name)
        digest = hashlib.sha256(b"t").hexdigest()
        raw.put_object(Bucket=bucket, Key=f".sealgate/pc/{digest}/{env.salt.hex()}", Body=sealed)
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket=bucket, Key="t")["Body"].read()
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert not _records(raw, bucket, "mp", "t")
    finally:
        st.gate.stop()


def test_an_interrupted_rewrap_is_finished_not_lost(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    """`sealgate rewrap` cut off by the backend between the copy and the moved manifest: the
    object is readable at once, and `sealgate gc` run before any re-run of rewrap finishes it
    instead of deleting the earlier manifest it still needed."""
    from proxy.kms.keystore import LocalKeyStore

    ring = tmp_path / "keyring"
    make_keyring(ring)
    store = LocalKeyStore.open(ring, PASSPHRASE.encode())
    store.create_key("key2")
    store.save()
    st = start_stack(tmp_path, moto_url, tls_files)
    relay = FaultyRelay(moto_url)
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copy(ring, cut / "keyring")
    shutil.copy(ring.with_name("keyring.pass"), cut / "keyring.pass")
    cut_cfg = write_config(cut, backend=relay.url, tls=tls_files, port=free_port())
    try:
        s3, raw = st.client(), backend_client(moto_url)
        bucket = f"rewrap-cut-{os.urandom(3).hex()}"
        s3.create_bucket(Bucket=bucket)
        body = multipart_put(s3, bucket, "mp", [os.urandom(5 * MiB), b"tail"])
        relay.before = _fail_manifest_puts
        try:
            run = CliRunner().invoke(
                main, ["rewrap", "--config", str(cut_cfg), "--bucket", bucket, "--prefix", "", "--to-key", "key2"]
            )
        finally:
            relay.before = None
        assert "1 skipped" in run.output, run.output
        assert raw.head_object(Bucket=bucket, Key="mp")["Metadata"]["sg-kr"].startswith("local:key2:")
        assert _records(raw, bucket, "pc", "mp")
        gc = CliRunner().invoke(
            main, ["gc", "--config", str(tmp_path / "sealgate.toml"), "--bucket", bucket, "--older-than", "0m"]
        )
        assert gc.exit_code == 0 and "finished 1 interrupted completions" in gc.output, gc.output
        assert not _records(raw, bucket, "pc", "mp")
        assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == body
        assert len(_records(raw, bucket, "mp", "mp")) == 1  # the earlier manifest went, the new one stays
    finally:
        st.gate.stop()
        relay.loop.call_soon_threadsafe(relay.loop.stop)


def test_a_copy_cut_short_before_its_manifest_is_readable(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """CopyObject of a multipart object whose manifest the backend then fails to store: the copy
    reads back at once (from its pending record), and gc finishes it."""
    relay = FaultyRelay(moto_url)
    st = start_stack(tmp_path, relay.url, tls_files)
    try:
        s3, raw = st.client(), backend_client(moto_url)
        bucket = f"copy-cut-{os.urandom(3).hex()}"
        s3.create_bucket(Bucket=bucket)
        body = multipart_put(s3, bucket, "src", [os.urandom(5 * MiB), b"tail"])
        relay.before = _fail_manifest_puts
        try:
            with pytest.raises(ClientError):
                s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
            assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == body
        finally:
            relay.before = None
        assert _records(raw, bucket, "pc", "dst") and not _records(raw, bucket, "mp", "dst")
        gc = CliRunner().invoke(
            main, ["gc", "--config", str(tmp_path / "sealgate.toml"), "--bucket", bucket, "--older-than", "0m"]
        )
        assert gc.exit_code == 0 and "finished 1 interrupted completions" in gc.output, gc.output
        assert len(_records(raw, bucket, "mp", "dst")) == 1 and not _records(raw, bucket, "pc", "dst")
        assert s3.get_object(Bucket=bucket, Key="dst", Range="bytes=-4")["Body"].read() == b"tail"
    finally:
        st.gate.stop()
        relay.loop.call_soon_threadsafe(relay.loop.stop)
