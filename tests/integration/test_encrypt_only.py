"""Encrypt-only gateways: holding only a public key, sealgate encrypts uploads it can never read
back; a sealgate holding the private key reads them."""

from __future__ import annotations

import os
from pathlib import Path

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
