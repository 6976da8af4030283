"""`sealgate decrypt`'s work: a sealgate object's body, fetched straight from the backend,
opened into its plaintext with every segment authenticated (single layout, or multipart with
its sealed manifest)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from proxy.crypto.format import (
    DIGEST_SLOT,
    LAYOUT_MULTIPART,
    LAYOUT_SINGLE,
    Envelope,
    IntegrityError,
    Layout,
    Manifest,
    SealedMetadata,
    open_metadata,
    stream_key,
)
from proxy.crypto.multipart import MultipartDecryptor, stored_length
from proxy.crypto.segments import StreamDecryptor
from proxy.crypto.signing import check, multipart_body, signed_bytes, single_body
from proxy.kms.base import Keyring
from proxy.s3.headers import etag_value
from proxy.store.objects import ETAG_TAIL, opaque_etag
from proxy.tools.offline.files import CHUNK_SIZE, OfflineError, Output, Readable, check_paths, outputs, regular_size
from proxy.tools.offline.keys import close_keyring, run_sync
from proxy.tools.offline.metadata import manifest_key, parse_envelope
from proxy.tools.progress import NoProgress, Progress


@dataclass(frozen=True)
class DecryptResult:
    """What `decrypt_file` wrote and learnt."""

    plaintext_bytes: int
    layout: str
    #: The ETag sealgate reports for the object (unquoted), when it can be known offline.
    etag: str | None
    #: The client's user metadata, unsealed (names without ``x-amz-meta-``).
    user_metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Opened:
    """An object whose data key is unwrapped and whose envelope checked out."""

    env: Envelope
    data_key: bytes
    sealed: SealedMetadata


def open_envelope(keyring: Keyring, env: Envelope, bucket: str, object_key: str) -> Opened:
    """Unwrap the data key for this object name, check the key commitment and name tag, and
    open the sealed metadata."""
    data_key: bytes = run_sync(keyring.decrypt_data_key(env.key_ref, env.wrapped_key, env.context(bucket, object_key)))
    env.check_commitment(data_key)
    env.check_name(data_key, bucket, object_key)
    sealed = open_metadata(data_key, env.salt, env.sealed)
    return Opened(env, data_key, sealed)


def decrypt_stream(
    src: Readable,
    dst: IO[bytes],
    opened: Opened,
    size: int,
    *,
    manifest: Manifest | None = None,
    progress: Progress | None = None,
) -> tuple[int, str | None]:
    """Open every segment of the `size`-byte body in `src`, writing only authenticated bytes
    to `dst`: (plaintext length, plaintext MD5 in hex when the object records one).

    A single-layout stream's digest slot is checked against the plaintext's MD5 when the sealed
    metadata records one; a multipart object's parts against the manifest's MD5s.
    """
    bar = progress or NoProgress()
    env = opened.env
    layout = Layout(env.segment_size)
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    read = written = 0
    if manifest is not None:
        mp = MultipartDecryptor(opened.data_key, env.salt, layout, manifest, 0, manifest.size, full=True)
        while n := src.readinto(view):
            read += n
            for piece in mp.feed(view[:n]):
                written += dst.write(piece)
            bar.update(n)
        mp.finish()
        if read != size or written != manifest.size:
            raise IntegrityError("the body changed size while it was read")
        return written, None
    plain_len = layout.plaintext_length(size)
    # The whole stream, digest slot included: a full read authenticates the final segment.
    span = layout.span(0, plain_len + DIGEST_SLOT, plain_len)
    decryptor = StreamDecryptor(stream_key(opened.data_key, env.salt, 0), layout, span, plain_len)
    md5 = hashlib.md5(usedforsecurity=False)
    slot = bytearray()
    while n := src.readinto(view):
        read += n
        for piece in decryptor.feed(view[:n]):
            room = max(plain_len - written, 0)
            data = piece[:room]
            if data:
                md5.update(data)
                written += dst.write(data)
            slot += piece[room:]
        bar.update(n)
    decryptor.finish()
    if read != size or written != plain_len or len(slot) != DIGEST_SLOT:
        raise IntegrityError("the body changed size while it was read")
    recorded = recorded_md5(opened.sealed, bytes(slot))
    if recorded is not None and md5.hexdigest() != recorded:
        raise IntegrityError("the plaintext's MD5 differs from the one recorded when it was stored")
    return written, recorded


def recorded_md5(sealed: SealedMetadata, slot: bytes) -> str | None:
    """The plaintext MD5 (hex) the object records: in the digest slot, or the sealed ETag."""
    if sealed.etag == ETAG_TAIL:
        return slot.hex()
    if sealed.etag and re.fullmatch(r"[0-9a-f]{32}", sealed.etag):
        return sealed.etag
    return None


def decrypt_file(
    keyring: Keyring,
    bucket: str,
    object_key: str,
    src: Path,
    dst: Path,
    metadata: Mapping[str, str],
    *,
    manifest: bytes | None = None,
    backend_etag: str | None = None,
    force: bool = False,
    progress: Callable[[int | None], Progress] | None = None,
    trusted: tuple[bytes, ...] = (),
    manifest_signature: bytes = b"",
) -> DecryptResult:
    """Decrypt the backend body in file `src` (with its backend user `metadata`, names without
    prefix) to `dst`, authenticating every segment; `dst` appears only if all of it did.

    Multipart-layout objects also need the sealed `manifest` and the `backend_etag` the backend
    reports for the object. The plaintext file is created with mode 0600. `keyring` is closed
    afterwards. With `trusted` signer keys (the key policy's), the object must carry a signature
    by one of them (a multipart object's: `manifest_signature`), checked before anything else.
    """
    try:
        env = parse_envelope(metadata)
        check_paths(src, dst)
        with open(src, "rb") as fin:
            size = regular_size(fin)
            if size is None:
                raise OfflineError(f"{src} is not a regular file (its size must be known)")
            if env.layout == LAYOUT_SINGLE and manifest is not None:
                raise OfflineError("--manifest is only for multipart-layout objects; this one is single")
            if env.layout == LAYOUT_MULTIPART and (backend_etag is None or manifest is None):
                raise OfflineError(multipart_needs(object_key, backend_etag))
            if trusted:
                body = single_body(Layout(env.segment_size).plaintext_length(size))
                if env.layout == LAYOUT_MULTIPART:
                    assert manifest is not None
                    body = multipart_body(manifest)
                signature = manifest_signature if env.layout == LAYOUT_MULTIPART else env.signature
                check(signature, signed_bytes(env, bucket, object_key, body), trusted)
            with outputs(lambda: Output(dst, private=True, force=force)) as (out,):
                opened = open_envelope(keyring, env, bucket, object_key)
                mf: Manifest | None = None
                if env.layout == LAYOUT_MULTIPART:
                    assert manifest is not None and backend_etag is not None
                    mf = check_manifest(opened, size, manifest, backend_etag)
                bar = progress(size) if progress else NoProgress()
                plain, md5 = decrypt_stream(fin, out.file, opened, size, manifest=mf, progress=bar)
                out.commit()
    finally:
        close_keyring(keyring)
    if mf is not None:
        etag: str | None = mf.etag
    elif md5 is not None:
        etag = md5
    else:
        etag = etag_value(opaque_etag(backend_etag)) if backend_etag else None
    return DecryptResult(plain, env.layout, etag, dict(opened.sealed.user))


def multipart_needs(object_key: str, backend_etag: str | None) -> str:
    if backend_etag is None:
        return (
            "this is a multipart-layout object: give --backend-etag (the ETag the backend reports "
            "for it) and --manifest (the body of its .sealgate/mp/... manifest object)"
        )
    return (
        "this is a multipart-layout object: give --manifest, the body of the backend object "
        f"{manifest_key(object_key, backend_etag)!r} in the same bucket"
    )


def check_manifest(opened: Opened, size: int, manifest: bytes, backend_etag: str) -> Manifest:
    etag = etag_value(backend_etag)
    mf = Manifest.open(opened.data_key, opened.env.salt, manifest)
    if mf.backend_etag != etag:
        raise IntegrityError(
            f"the manifest names backend ETag {mf.backend_etag}, not {etag}: "
            "the stored parts are not the ones the manifest lists (or it is another object's manifest)"
        )
    if stored_length(mf, Layout(opened.env.segment_size)) != size:
        raise IntegrityError("the body's size differs from the manifest's parts")
    return mf
