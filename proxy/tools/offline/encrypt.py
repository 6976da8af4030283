"""`sealgate encrypt`'s work: a local file sealed into exactly the body and ``x-amz-meta-*``
headers sealgate's PutObject stores (single layout, one stream, docs/FORMAT.md §6)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from proxy.crypto.format import LAYOUT_SINGLE, Envelope, Layout, SealedMetadata, encryption_context, stream_key
from proxy.crypto.segments import StreamEncryptor
from proxy.crypto.signing import sign, signed_bytes, single_body
from proxy.kms.base import DataKey, Keyring
from proxy.kms.local import LocalKeyring
from proxy.store.objects import ETAG_TAIL
from proxy.tools.offline.files import CHUNK_SIZE, OfflineError, Output, Readable, check_paths, outputs, regular_size
from proxy.tools.offline.keys import close_keyring, run_sync
from proxy.tools.offline.metadata import MAX_BACKEND_METADATA, backend_metadata_size, metadata_headers
from proxy.tools.progress import NoProgress, Progress


@dataclass(frozen=True)
class EncryptResult:
    """What `encrypt_file` wrote."""

    plaintext_bytes: int
    ciphertext_bytes: int
    #: The backend user-metadata headers (``x-amz-meta-*`` names) to upload with the body.
    metadata: dict[str, str]
    #: The ETag sealgate will report for the object: the plaintext MD5, unquoted.
    etag: str


def new_envelope(data_key: DataKey, user_metadata: Mapping[str, str]) -> Envelope:
    """A single-layout envelope for `data_key` (wrapped for one object) with a fresh salt.

    Its sealed metadata says ``e = "tail"``: the plaintext MD5 goes in the digest slot, so
    sealgate reports the MD5 as the ETag (what sync tools compare), as it does for clients that
    sign their payload.
    """
    sealed = SealedMetadata(user=dict(user_metadata), etag=ETAG_TAIL)
    return Envelope.new(data_key.plaintext, data_key.key_ref, data_key.wrapped, sealed, layout=LAYOUT_SINGLE)


def signed_envelope(keyring: Keyring, env: Envelope, bucket: str, object_key: str, plaintext_length: int) -> Envelope:
    """`env` with the sender signature of the keyring's ``ed25519-signing`` key (docs/FORMAT.md
    §3a), as sealgate signs what it writes; `env` itself when the keyring has none."""
    signer = keyring.signer() if isinstance(keyring, LocalKeyring) else None
    if signer is None:
        return env
    message = signed_bytes(env, bucket, object_key, single_body(plaintext_length))
    return dataclasses.replace(env, signature=sign(signer[1], message))


def encrypt_stream(
    src: Readable, dst: IO[bytes], data_key: bytes, env: Envelope, progress: Progress | None = None
) -> tuple[int, int, bytes]:
    """Seal `src` into `dst` under `env`: (plaintext bytes, ciphertext bytes, plaintext MD5)."""
    bar = progress or NoProgress()
    md5 = hashlib.md5(usedforsecurity=False)
    encryptor = StreamEncryptor(stream_key(data_key, env.salt, 0), env.segment_size)
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    written = 0
    while n := src.readinto(view):
        piece = view[:n]
        md5.update(piece)
        for segment in encryptor.feed(piece):
            written += dst.write(segment)
        bar.update(n)
    digest = md5.digest()
    for segment in encryptor.finish(digest):
        written += dst.write(segment)
    expected = Layout(env.segment_size).ciphertext_length(encryptor.plaintext_bytes)
    if written != expected:  # pragma: no cover - a bug, not an input problem
        raise OfflineError(f"internal error: wrote {written} bytes, the format says {expected}")
    return encryptor.plaintext_bytes, written, digest


def encrypt_file(
    keyring: Keyring,
    key_id: str,
    bucket: str,
    object_key: str,
    src: Path,
    dst: Path,
    metadata_out: Path,
    *,
    user_metadata: Mapping[str, str] | None = None,
    force: bool = False,
    progress: Callable[[int | None], Progress] | None = None,
) -> EncryptResult:
    """Encrypt file `src` to `dst` as object `bucket`/`object_key`; write its backend metadata
    headers as JSON to `metadata_out`. Either both files appear or neither does.

    The data key comes from `keyring` (master key `key_id`), which is closed afterwards.
    """
    try:
        check_paths(src, dst, metadata_out)
        with (
            open(src, "rb") as fin,
            outputs(
                lambda: Output(dst, private=False, force=force),
                lambda: Output(metadata_out, private=False, force=force),
            ) as (out, meta_out),
        ):
            size = regular_size(fin)
            data_key: DataKey = run_sync(keyring.generate_data_key(key_id, encryption_context(bucket, object_key)))
            env = new_envelope(data_key, user_metadata or {})
            backend_size = backend_metadata_size(env.to_metadata())
            if backend_size > MAX_BACKEND_METADATA:
                raise OfflineError(
                    f"the object's metadata would take {backend_size} bytes and S3 accepts "
                    f"{MAX_BACKEND_METADATA}: use less user metadata"
                )
            headers = metadata_headers(env)
            bar = progress(size) if progress else NoProgress()
            plain, ct, digest = encrypt_stream(fin, out.file, data_key.plaintext, env, bar)
            signed = signed_envelope(keyring, env, bucket, object_key, plain)
            if signed is not env:
                headers = metadata_headers(signed)
                if backend_metadata_size(signed.to_metadata()) > MAX_BACKEND_METADATA:
                    raise OfflineError("with its sender signature the object's metadata is too large for S3")
            meta_out.file.write(json.dumps(headers, indent=2, sort_keys=True).encode() + b"\n")
            # Metadata first: a body without its metadata could never be decrypted.
            meta_out.commit()
            out.commit()
    finally:
        close_keyring(keyring)
    return EncryptResult(plain, ct, headers, digest.hex())
