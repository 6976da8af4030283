"""Encrypt-only gateways: holding only a public key, sealgate encrypts uploads it can never read
back; a sealgate holding the private key reads them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import PASSPHRASE, start_stack

MiB = 1024 * 1024


@pytest.mark.parametrize("key_type", ["rsa-3072", "ec-p256", "ec-p384"])
def test_public_key_gateway(moto_url: str, tls_files: dict[str, Path], tmp_path: Path, key_type: str) -> None:
    from proxy.kms.keystore import LocalKeyStore

    reader_dir, gateway_dir = tmp_path / "reader", tmp_path / "gateway"
    reader_dir.mkdir()
    gateway_dir.mkdir()
    secret_rule = '\n[encryption]\nupload_secret = "shared-upload-secret-0123456789"\n'
    kms = 'provider = "local"\nkeyring = "{ring}"\npassphrase_file = "{ring}.pass"\ndefault_key = "sealed"\n'
    # The reader's keyring holds the key pair; the gateway's only the public key.
    reader_ring = reader_dir / "keyring"
    from tests.conftest import make_keyring

    make_keyring(reader_ring)
    full = LocalKeyStore.open(reader_ring, PASSPHRASE.encode())
    full.create_asymmetric_key("sealed", key_type)
    full.save()
    gateway_ring = gateway_dir / "keyring"
    make_keyring(gateway_ring)
    public = LocalKeyStore.open(gateway_ring, PASSPHRASE.encode())
    public.import_asymmetric_key("sealed", full.public_key_pem("sealed"))
    public.save()
    assert b"PRIVATE" not in public.public_key_pem("sealed")

    reader = start_stack(reader_dir, moto_url, tls_files, kms=kms.format(ring=reader_ring), extra=secret_rule)
    gateway = start_stack(gateway_dir, moto_url, tls_files, kms=kms.format(ring=gateway_ring), extra=secret_rule)
    try:
        up = gateway.client()
        bucket = f"eo-{key_type}"
        up.create_bucket(Bucket=bucket)
        small = os.urandom(70_000)
        up.put_object(Bucket=bucket, Key="small", Body=small)
        # A multipart upload works too: the upload id carries the data key under the shared secret.
        parts = [os.urandom(5 * MiB), os.urandom(1000)]
        uid = up.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
        done = [
            {
                "PartNumber": n,
                "ETag": up.upload_part(Bucket=bucket, Key="big", UploadId=uid, PartNumber=n, Body=p)["ETag"],
            }
            for n, p in enumerate(parts, 1)
        ]
        up.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=uid, MultipartUpload={"Parts": done})
        for key in ("small", "big"):
            with pytest.raises(ClientError) as err:
                up.get_object(Bucket=bucket, Key=key)
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
            assert "encrypt-only" in err.value.response["Error"]["Message"]
        down = reader.client()
        assert down.get_object(Bucket=bucket, Key="small")["Body"].read() == small
        assert down.get_object(Bucket=bucket, Key="big")["Body"].read() == b"".join(parts)
    finally:
        gateway.gate.stop()
        reader.gate.stop()


def _refused(call: Any) -> None:
    """The reader's answer is 500 ObjectIntegrityError: an S3 error document, no body bytes."""
    with pytest.raises(ClientError) as err:
        resp = call()
        resp["Body"].read()  # pragma: no cover - reached only when sealgate serves the object
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert err.value.response["Error"]["Code"] in ("ObjectIntegrityError", "500")


def test_sender_signatures(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    """With the public key and write access to the backend, anyone can make an object that
    unwraps under the private key: the reader accepts only objects its trusted gateway signed."""
    from click.testing import CliRunner

    from proxy.crypto import signing
    from proxy.crypto.format import Envelope, Layout
    from proxy.kms.keystore import LocalKeyStore
    from proxy.tools.offline.commands import decrypt_cmd, encrypt_cmd
    from tests.conftest import backend_client, make_keyring

    dirs = {name: tmp_path / name for name in ("reader", "gateway", "attacker")}
    rings = {name: d / "keyring" for name, d in dirs.items()}
    for name, d in dirs.items():
        d.mkdir()
        make_keyring(rings[name])
    full = LocalKeyStore.open(rings["reader"], PASSPHRASE.encode())
    full.create_asymmetric_key("sealed", "ec-p256")
    full.create_asymmetric_key("reader-sign", "ed25519-signing")  # it signs the copies it makes
    full.save()
    for name in ("gateway", "attacker"):  # both hold only the public key
        ring = LocalKeyStore.open(rings[name], PASSPHRASE.encode())
        ring.import_asymmetric_key("sealed", full.public_key_pem("sealed"))
        if name == "gateway":
            ring.create_asymmetric_key("gw-sign", "ed25519-signing")
            trusted = ring.public_key_pem("gw-sign").decode().strip()
        ring.save()
    assert trusted.startswith("ed25519:")
    kms = 'provider = "local"\nkeyring = "{ring}"\npassphrase_file = "{ring}.pass"\ndefault_key = "sealed"\n'
    secret = '\n[encryption]\nupload_secret = "shared-upload-secret-0123456789"\n'
    signers = f'["{trusted}", "{full.public_key_pem("reader-sign").decode().strip()}"]'
    policy = f'\n[[keys]]\nid = "sealed"\nencrypt = ["*"]\ndecrypt = ["*"]\ntrusted_signers = {signers}\n'
    reader = start_stack(
        dirs["reader"], moto_url, tls_files, kms=kms.format(ring=rings["reader"]), extra=secret + policy
    )
    audit = f'\n[audit]\npath = "{dirs["gateway"] / "audit.jsonl"}"\n'
    gateway = start_stack(
        dirs["gateway"], moto_url, tls_files, kms=kms.format(ring=rings["gateway"]), extra=secret + audit
    )
    try:
        up, down, raw = gateway.client(), reader.client(), backend_client(moto_url)
        bucket = "eo-signed"
        up.create_bucket(Bucket=bucket)
        small = os.urandom(70_000)
        up.put_object(Bucket=bucket, Key="small", Body=small, Metadata={"owner": "gateway"})
        up.put_object(Bucket=bucket, Key="other", Body=b"x")
        parts = [os.urandom(5 * MiB), os.urandom(1000)]
        uid = up.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
        done = [
            {
                "PartNumber": n,
                "ETag": up.upload_part(Bucket=bucket, Key="big", UploadId=uid, PartNumber=n, Body=p)["ETag"],
            }
            for n, p in enumerate(parts, 1)
        ]
        up.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=uid, MultipartUpload={"Parts": done})
        got = down.get_object(Bucket=bucket, Key="small")
        assert got["Body"].read() == small and got["Metadata"] == {"owner": "gateway"}
        assert down.get_object(Bucket=bucket, Key="big")["Body"].read() == b"".join(parts)
        assert "sg-sig" in raw.head_object(Bucket=bucket, Key="small")["Metadata"]
        # A copy names another object, so the copying reader signs it anew.
        down.copy_object(Bucket=bucket, Key="small-copy", CopySource={"Bucket": bucket, "Key": "small"})
        assert down.get_object(Bucket=bucket, Key="small-copy")["Body"].read() == small
        down.copy_object(Bucket=bucket, Key="big-copy", CopySource={"Bucket": bucket, "Key": "big"})
        assert down.get_object(Bucket=bucket, Key="big-copy")["Body"].read() == b"".join(parts)
        lines = [json.loads(line) for line in (dirs["gateway"] / "audit.jsonl").read_text().splitlines()]
        signed = [(r["key_id"], r.get("object_key")) for r in lines if r["operation"] == "sign"]
        assert signed == [("gw-sign", "small"), ("gw-sign", "other"), ("gw-sign", "big")]

        # The attack: `sealgate encrypt` with only the public key, put straight on the backend.
        src, out = tmp_path / "forged.txt", tmp_path / "forged.sg"
        src.write_bytes(b"pay the attacker")
        args = ["--keyring", str(rings["attacker"]), "--passphrase-file", f"{rings['attacker']}.pass"]
        args += ["--key", "sealed", "--bucket", bucket, "--object-key", "forged", "--meta", "owner=gateway"]
        result = CliRunner().invoke(encrypt_cmd, [*args, str(src), str(out)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        headers = json.loads(out.with_name(out.name + ".meta.json").read_text())
        meta = {k.removeprefix("x-amz-meta-"): v for k, v in headers.items()}
        raw.put_object(Bucket=bucket, Key="forged", Body=out.read_bytes(), Metadata=meta)
        _refused(lambda: down.get_object(Bucket=bucket, Key="forged"))
        _refused(lambda: down.head_object(Bucket=bucket, Key="forged"))
        # `sealgate decrypt` with the reader's config refuses it too; with the gateway's keyring
        # (its signing key), `sealgate encrypt` makes an object the reader accepts.
        reader_cfg = ["--config", str(dirs["reader"] / "sealgate.toml"), "--bucket", bucket]
        plain = tmp_path / "forged.out"
        result = CliRunner().invoke(
            decrypt_cmd,
            [*reader_cfg, "--object-key", "forged", str(out), str(plain)],
            catch_exceptions=False,
        )
        assert result.exit_code == 1 and "sender signature" in result.stderr and not plain.exists()
        gw_args = ["--keyring", str(rings["gateway"]), "--passphrase-file", f"{rings['gateway']}.pass"]
        signed_out = tmp_path / "signed.sg"
        gw_args += ["--key", "sealed", "--bucket", bucket, "--object-key", "offline", str(src), str(signed_out)]
        assert CliRunner().invoke(encrypt_cmd, gw_args, catch_exceptions=False).exit_code == 0
        headers = json.loads(signed_out.with_name(signed_out.name + ".meta.json").read_text())
        signed_meta = {k.removeprefix("x-amz-meta-"): v for k, v in headers.items()}
        raw.put_object(Bucket=bucket, Key="offline", Body=signed_out.read_bytes(), Metadata=signed_meta)
        assert down.get_object(Bucket=bucket, Key="offline")["Body"].read() == b"pay the attacker"
        result = CliRunner().invoke(
            decrypt_cmd,
            [*reader_cfg, "--object-key", "offline", str(signed_out), str(plain)],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        assert plain.read_bytes() == b"pay the attacker"

        # Signed, but by a key the reader does not trust.
        env = Envelope.from_metadata(meta)
        size = Layout(env.segment_size).plaintext_length(out.stat().st_size)
        rogue = signing.sign(
            signing.generate_seed(), signing.signed_bytes(env, bucket, "forged", signing.single_body(size))
        )
        raw.put_object(
            Bucket=bucket,
            Key="forged",
            Body=out.read_bytes(),
            Metadata=meta | {"sg-sig": signing.encode_signature(rogue)},
        )
        _refused(lambda: down.get_object(Bucket=bucket, Key="forged"))

        # A gateway object whose metadata changed after signing: another object's signature, or none.
        stored = raw.get_object(Bucket=bucket, Key="small")
        body, meta = stored["Body"].read(), stored["Metadata"]
        other = raw.head_object(Bucket=bucket, Key="other")["Metadata"]["sg-sig"]
        raw.put_object(Bucket=bucket, Key="small", Body=body, Metadata=meta | {"sg-sig": other})
        _refused(lambda: down.get_object(Bucket=bucket, Key="small"))
        raw.put_object(Bucket=bucket, Key="small", Body=body, Metadata={k: v for k, v in meta.items() if k != "sg-sig"})
        _refused(lambda: down.get_object(Bucket=bucket, Key="small"))
        raw.put_object(Bucket=bucket, Key="small", Body=body, Metadata=meta)
        assert down.get_object(Bucket=bucket, Key="small")["Body"].read() == small

        # A multipart object whose manifest record lost its signature.
        big_digest = hashlib.sha256(b"big").hexdigest()
        records = raw.list_objects_v2(Bucket=bucket, Prefix=f".sealgate/mp/{big_digest}/")["Contents"]
        assert len(records) == 1
        rec = raw.get_object(Bucket=bucket, Key=records[0]["Key"])
        rec_body, rec_meta = rec["Body"].read(), rec["Metadata"]
        assert "sg-sig" in rec_meta
        # `sealgate decrypt` of it checks the manifest record's signature, given as --manifest-signature.
        (tmp_path / "big.sg").write_bytes(raw.get_object(Bucket=bucket, Key="big")["Body"].read())
        (tmp_path / "big.mf").write_bytes(rec_body)
        head = raw.head_object(Bucket=bucket, Key="big")
        (tmp_path / "big.meta.json").write_text(json.dumps({f"x-amz-meta-{k}": v for k, v in head["Metadata"].items()}))
        mp_args = [*reader_cfg, "--object-key", "big", "--manifest", str(tmp_path / "big.mf")]
        mp_args += ["--backend-etag", head["ETag"], "--metadata", str(tmp_path / "big.meta.json")]
        for signature, status in ((rec_meta["sg-sig"], 0), (other, 1), ("", 1)):
            plain.unlink(missing_ok=True)
            result = CliRunner().invoke(
                decrypt_cmd,
                [*mp_args, "--manifest-signature", signature, str(tmp_path / "big.sg"), str(plain)],
                catch_exceptions=False,
            )
            assert result.exit_code == status, result.output
            assert (plain.read_bytes() if plain.exists() else None) == (b"".join(parts) if status == 0 else None)
        unsigned = {k: v for k, v in rec_meta.items() if k != "sg-sig"}
        raw.put_object(Bucket=bucket, Key=records[0]["Key"], Body=rec_body, Metadata=unsigned)
        _refused(lambda: down.get_object(Bucket=bucket, Key="big"))
    finally:
        gateway.gate.stop()
        reader.gate.stop()
