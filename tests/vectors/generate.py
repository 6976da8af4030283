"""Regenerate tests/vectors/v1.json, upload_id.json and signature.json (run by hand; the tests only read the JSON).

Everything random in the format (data key, salt, metadata nonce) is fixed here, so the vectors
are reproducible; the body is fully determined by them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from pathlib import Path

from proxy.crypto.format import (
    DEFAULT_SEGMENT_SIZE,
    Envelope,
    SealedMetadata,
    commitment,
    stream_key,
)
from proxy.crypto.segments import StreamEncryptor

DATA_KEY = bytes(range(32))
SALT = bytes(range(100, 132))


def _seal_meta(meta: SealedMetadata, nonce: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from proxy.crypto.format import _hkdf

    key = _hkdf(DATA_KEY, SALT, b"sealgate/1/meta")
    return nonce + AESGCM(key).encrypt(nonce, meta.to_json(), b"sealgate/1/meta")


def vector(name: str, size: int, *, tail_md5: bool = False, user: dict[str, str] | None = None) -> dict[str, object]:
    plaintext = bytes(i % 251 for i in range(size))
    md5 = hashlib.md5(plaintext).digest()
    meta = SealedMetadata(user=user or {}, etag="tail" if tail_md5 else None)
    env = Envelope(
        key_ref="local:default:1",
        wrapped_key=b"(wrapped by the keyring: not part of this vector)",
        salt=SALT,
        commitment=commitment(DATA_KEY, SALT),
        segment_size=DEFAULT_SEGMENT_SIZE,
        sealed=_seal_meta(meta, bytes(12)),
    )
    enc = StreamEncryptor(stream_key(DATA_KEY, SALT, 0), DEFAULT_SEGMENT_SIZE)
    body = b"".join(enc.feed(plaintext)) + b"".join(enc.finish(md5 if tail_md5 else bytes(16)))
    return {
        "name": name,
        "data_key_hex": DATA_KEY.hex(),
        "metadata": {f"x-amz-meta-{k}": v for k, v in env.to_metadata().items()},
        "plaintext": f"bytes(i % 251 for i in range({size}))",
        "plaintext_sha256": hashlib.sha256(plaintext).hexdigest(),
        "plaintext_length": size,
        "stream_key_hex": stream_key(DATA_KEY, SALT, 0).hex(),
        "commitment_hex": commitment(DATA_KEY, SALT).hex(),
        "body_b64": base64.b64encode(body).decode(),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "user_metadata": user or {},
        "etag": md5.hex() if tail_md5 else None,
    }


def upload_id_vector(
    name: str, prefix: str, *, secret: str | None = None, slot: int | None = None
) -> dict[str, object]:
    """An upload id (docs/FORMAT.md, "Upload ids"), its sealed data key made with a zero nonce."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from proxy.crypto.upload_id import UploadId, _secret_key

    bucket, key = "vector-bucket", "dir/object key ✓"
    sealed = b""
    if secret is not None:
        aad = bucket.encode() + b"\0" + key.encode()
        sealed = bytes(12) + AESGCM(_secret_key(secret.encode(), SALT)).encrypt(bytes(12), DATA_KEY, aad)
    uid = UploadId(
        "backend-upload-id.0001",
        "local:default:1",
        b"wrapped-by-the-keyring",
        SALT,
        sealed_key=sealed,
        prefix=prefix,
        slot=slot,
    )
    text = uid.encode(DATA_KEY, bucket, key)
    return {
        "name": name,
        "data_key_hex": DATA_KEY.hex(),
        "bucket": bucket,
        "key": key,
        "backend_id": uid.backend_id,
        "key_ref": uid.key_ref,
        "wrapped_key_hex": uid.wrapped_key.hex(),
        "sealed_key_hex": sealed.hex(),
        "upload_secret": secret,
        "salt_hex": SALT.hex(),
        "slot": slot,
        "mac_hex": UploadId.decode(text).mac.hex(),
        "upload_id": text,
    }


SIGNING_SEED = bytes(range(200, 232))


def signature_vector(name: str, layout: str, *, size: int = 0, manifest: bytes = b"") -> dict[str, object]:
    """A sender signature (docs/FORMAT.md §3a): Ed25519 is deterministic, so it is fixed too."""
    from proxy.crypto import signing

    bucket, key = "vector-bucket", "dir/object key ✓"
    env = Envelope(
        key_ref="local:uploads:1",
        wrapped_key=b"(wrapped by the keyring: not signed)",
        salt=SALT,
        commitment=commitment(DATA_KEY, SALT),
        segment_size=DEFAULT_SEGMENT_SIZE,
        sealed=_seal_meta(SealedMetadata(user={"colour": "blue"}), bytes(12)),
        layout=layout,
    )
    body = signing.single_body(size) if layout == "single" else signing.multipart_body(manifest)
    message = signing.signed_bytes(env, bucket, key, body)
    signature = signing.sign(SIGNING_SEED, message)
    if layout == "single":  # a multipart object's signature is on its manifest record instead
        env = dataclasses.replace(env, signature=signature)
    return {
        "name": name,
        "bucket": bucket,
        "key": key,
        "metadata": {f"x-amz-meta-{k}": v for k, v in env.to_metadata().items()},
        "plaintext_length": size if layout == "single" else None,
        "sealed_manifest_b64": base64.b64encode(manifest).decode() if layout != "single" else None,
        "signing_seed_hex": SIGNING_SEED.hex(),
        "trusted_signer": signing.public_text(signing.public_key(SIGNING_SEED)),
        "signed_bytes_hex": message.hex(),
        "signature_b64": base64.b64encode(signature).decode(),
    }


def main() -> None:
    vectors = [
        vector("empty", 0),
        vector("one-byte", 1, user={"colour": "blue"}),
        vector("fills-one-segment-with-digest-slot", DEFAULT_SEGMENT_SIZE - 16),
        vector("digest-slot-spans-two-segments", DEFAULT_SEGMENT_SIZE - 10, tail_md5=True),
        vector("three-segments", 2 * DEFAULT_SEGMENT_SIZE + 100, tail_md5=True),
    ]
    out = Path(__file__).with_name("v1.json")
    out.write_text(json.dumps({"format": "sealgate/1", "vectors": vectors}, indent=1) + "\n")
    ids = [
        upload_id_vector("sealgate", "SG1"),
        upload_id_vector("sealgate-with-upload-secret", "SG1", secret="a shared upload secret"),
        upload_id_vector("s3ec-v3", "s3ec3-"),
        upload_id_vector("s3ec-v3-worker-slot", "s3ec3-", slot=1),
    ]
    out.with_name("upload_id.json").write_text(
        json.dumps({"format": "sealgate/1 upload ids", "vectors": ids}, indent=1) + "\n"
    )
    sigs = [
        signature_vector("single", "single", size=70_000),
        signature_vector("multipart", "multipart", manifest=b"(the sealed manifest, as stored)"),
    ]
    out.with_name("signature.json").write_text(
        json.dumps({"format": "sealgate/1 sender signatures", "vectors": sigs}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
