"""`sealgate encrypt` / `sealgate decrypt`: the object format on local files, without the proxy.

``encrypt`` turns a file into exactly what sealgate's PutObject stores on the backend: a body
(single layout, one stream, docs/FORMAT.md §6) and the ``x-amz-meta-*`` headers that carry the
envelope. Upload both straight to the backend under the bucket and key given here and the object
reads through sealgate. ``decrypt`` is the reverse: a body and its metadata fetched straight from
the backend (``aws s3api get-object``, boto3) become the plaintext again, for single-layout
objects and, given the sealed manifest, for multipart ones. The data stays recoverable with
nothing but the keyring (or KMS) and this command.

Both stream in 1 MiB reads and never hold a file in memory. Output goes to ``OUT.partial`` and
is renamed to ``OUT`` only when every segment has authenticated, so a failure never leaves
partial or unauthenticated plaintext under the requested name.

Encryption context: a data key is wrapped for ``{"sealgate:bucket": B, "sealgate:key": K}``, so
the bucket and object key are part of the ciphertext. ``encrypt`` needs ``--bucket`` and takes
the object key from ``--object-key``, by default the input file's name (as ``aws s3 cp FILE
s3://B/`` names it). ``decrypt`` needs both: the wrong name does not decrypt.

``encrypt`` seals the plaintext MD5 into the digest slot (``e = "tail"``), as the proxy does for
clients that sign their payload, so sealgate reports the MD5 as the object's ETag; ``decrypt``
checks the plaintext against that MD5 (or the Content-MD5 ETag) as well. Decrypted files are
created mode 0600.

Master keys come from ``--config`` (its [kms] section, via `proxy.wiring.make_keyring`), a
local keyring file (``--keyring``), or AWS KMS with the default credential chain (``--aws-kms``,
for recovery where no sealgate config exists). Key policies (``[[keys]]``) are not consulted:
whoever holds the keyring passphrase or KMS credentials is acting as the operator.

The functions here are synchronous (keyring calls run under `asyncio.run`): call them from
threads or plain code, not from a running event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import click

from proxy.crypto.format import (
    DEFAULT_SEGMENT_SIZE,
    DIGEST_SLOT,
    LAYOUT_MULTIPART,
    LAYOUT_SINGLE,
    SALT_SIZE,
    SCOPE_OBJECT,
    Envelope,
    FormatError,
    IntegrityError,
    Layout,
    Manifest,
    SealedMetadata,
    commitment,
    encryption_context,
    is_sealgate_object,
    open_metadata,
    seal_metadata,
    stream_key,
)
from proxy.crypto.multipart import MultipartDecryptor, stored_length
from proxy.crypto.segments import StreamDecryptor, StreamEncryptor
from proxy.kms.base import DataKey, InvalidWrappedKey, Keyring, KeyringError
from proxy.s3.headers import etag_value
from proxy.store.objects import opaque_etag
from proxy.store.records import record_key

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from proxy.config import Config


__all__ = [
    "CHUNK_SIZE",
    "DecryptResult",
    "EncryptResult",
    "KeySource",
    "OfflineError",
    "Opened",
    "decrypt_cmd",
    "decrypt_file",
    "decrypt_stream",
    "encrypt_cmd",
    "encrypt_file",
    "encrypt_stream",
    "manifest_key",
    "metadata_headers",
    "new_envelope",
    "open_envelope",
    "parse_envelope",
    "parse_metadata_document",
    "parse_user_metadata",
]

#: Bytes read from a file at a time.
CHUNK_SIZE = 1024 * 1024
META_PREFIX = "x-amz-meta-"
#: S3 refuses a PUT whose user metadata (names without prefix plus values, UTF-8) exceeds this.
MAX_BACKEND_METADATA = 2048
#: sealgate's own limit on a client's user metadata (the proxy's PutObject has the same).
MAX_USER_METADATA = 2048
#: A manifest lists at most 10,000 parts (~100 bytes each): anything bigger is not one.
MAX_MANIFEST_SIZE = 16 * 1024 * 1024
#: The sealed-metadata ETag marker meaning "the plaintext MD5 is in the digest slot".
ETAG_TAIL = "tail"
# HTTP token characters, lower case: what S3 accepts as a metadata name.
_META_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


class OfflineError(Exception):
    """A failure to report in one line (exit status 1)."""


class Progress(Protocol):
    """What the file loops report to: bytes processed so far, in increments."""

    def update(self, n: int) -> None: ...


class Readable(Protocol):
    """A binary file opened for reading."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class _NoProgress:
    def update(self, n: int) -> None:
        pass


# --- outputs -----------------------------------------------------------------------------------


class _Output:
    """A file written as ``PATH.partial`` and renamed to ``PATH`` only by `commit`."""

    def __init__(self, path: Path, *, private: bool, force: bool) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        if path.exists() and not force:
            raise OfflineError(f"{path} already exists; use --force to replace it")
        if path.is_dir():
            raise OfflineError(f"{path} is a directory")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.partial, flags, 0o600 if private else 0o666)
        try:
            if private:
                # A leftover .partial from an earlier run keeps its mode through O_TRUNC.
                os.fchmod(fd, 0o600)
            self.file: IO[bytes] = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._remove()
            raise

    def _remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial)

    def commit(self) -> None:
        """Flush to disk and give the file its name."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        """Close and delete the partial file (idempotent)."""
        with contextlib.suppress(OSError):
            self.file.close()
        self._remove()


@contextlib.contextmanager
def _outputs(*outs: Callable[[], _Output]) -> Iterator[list[_Output]]:
    """Open the outputs in order; on any failure (or interrupt) delete every partial file."""
    opened: list[_Output] = []
    try:
        for make in outs:
            opened.append(make())
        yield opened
    except BaseException:
        for out in opened:
            out.discard()
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _check_paths(src: Path, *outs: Path) -> None:
    for out in outs:
        if _same_file(src, out):
            raise OfflineError(f"{out} is the input file itself")
    for i, a in enumerate(outs):
        for b in outs[i + 1 :]:
            if a.absolute() == b.absolute():
                raise OfflineError(f"{a} is named as two outputs")


# --- metadata documents ------------------------------------------------------------------------


def _backend_metadata_size(meta: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())


def parse_user_metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    """``NAME=VALUE`` options to a user-metadata map (names lower-cased, as S3 stores them)."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().lower()
        if name.startswith(META_PREFIX):
            name = name[len(META_PREFIX) :]
        if not sep or not _META_NAME.fullmatch(name):
            raise OfflineError(f"--meta {pair!r}: give NAME=VALUE with a metadata name of letters, digits, '-', '_'")
        if not _PRINTABLE_ASCII.fullmatch(value):
            raise OfflineError(f"--meta {name}: S3 metadata values are printable US-ASCII")
        out[name] = value
    if _backend_metadata_size(out) > MAX_USER_METADATA:
        raise OfflineError(f"user metadata exceeds {MAX_USER_METADATA} bytes (names plus values)")
    return out


def parse_metadata_document(raw: bytes) -> tuple[dict[str, str], str | None]:
    """The backend user metadata (names lower-case, without ``x-amz-meta-``) and, when the
    document carries one, the backend ETag (unquoted).

    Accepted: a JSON object of ``x-amz-meta-*`` headers; boto3's ``Metadata`` dict (names
    without prefix); or a whole ``aws s3api get-object`` / ``head-object`` / boto3 response,
    whose ``Metadata`` and ``ETag`` are used.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise OfflineError("the metadata file is not valid JSON") from None
    if not isinstance(doc, dict):
        raise OfflineError("the metadata file is not a JSON object")
    etag: str | None = None
    if isinstance(doc.get("Metadata"), dict):
        raw_etag = doc.get("ETag")
        if isinstance(raw_etag, str) and raw_etag.strip('" '):
            etag = etag_value(raw_etag)
        doc = doc["Metadata"]
    meta: dict[str, str] = {}
    for name, value in doc.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise OfflineError(f"the metadata file's entry {name!r} is not a string")
        lname = name.lower()
        if lname.startswith(META_PREFIX):
            lname = lname[len(META_PREFIX) :]
        meta[lname] = value
    return meta, etag


def metadata_headers(env: Envelope) -> dict[str, str]:
    """The backend ``x-amz-meta-*`` headers of an envelope, as ``encrypt`` writes them."""
    return {f"{META_PREFIX}{k}": v for k, v in env.to_metadata().items()}


def manifest_key(object_key: str, backend_etag: str) -> str:
    """Backend key of a multipart object's sealed manifest (docs/FORMAT.md §6a)."""
    return record_key(object_key, backend_etag)


def _opaque_etag(backend_etag: str) -> str:
    bare = etag_value(backend_etag)
    return bare if "-" in bare else f"{bare}-1"


# --- encrypt -----------------------------------------------------------------------------------


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
    salt = os.urandom(SALT_SIZE)
    return Envelope(
        key_ref=data_key.key_ref,
        wrapped_key=data_key.wrapped,
        salt=salt,
        commitment=commitment(data_key.plaintext, salt),
        segment_size=DEFAULT_SEGMENT_SIZE,
        sealed=seal_metadata(data_key.plaintext, salt, SealedMetadata(user=dict(user_metadata), etag=ETAG_TAIL)),
        layout=LAYOUT_SINGLE,
        scope=SCOPE_OBJECT,
    )


def encrypt_stream(
    src: Readable, dst: IO[bytes], data_key: bytes, env: Envelope, progress: Progress | None = None
) -> tuple[int, int, bytes]:
    """Seal `src` into `dst` under `env`: (plaintext bytes, ciphertext bytes, plaintext MD5)."""
    bar = progress or _NoProgress()
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
        _check_paths(src, dst, metadata_out)
        with (
            open(src, "rb") as fin,
            _outputs(
                lambda: _Output(dst, private=False, force=force),
                lambda: _Output(metadata_out, private=False, force=force),
            ) as (out, meta_out),
        ):
            size = _regular_size(fin)
            data_key: DataKey = _run(keyring.generate_data_key(key_id, encryption_context(bucket, object_key)))
            env = new_envelope(data_key, user_metadata or {})
            backend_size = _backend_metadata_size(env.to_metadata())
            if backend_size > MAX_BACKEND_METADATA:
                raise OfflineError(
                    f"the object's metadata would take {backend_size} bytes and S3 accepts "
                    f"{MAX_BACKEND_METADATA}: use less user metadata"
                )
            headers = metadata_headers(env)
            bar = progress(size) if progress else _NoProgress()
            plain, ct, digest = encrypt_stream(fin, out.file, data_key.plaintext, env, bar)
            meta_out.file.write(json.dumps(headers, indent=2, sort_keys=True).encode() + b"\n")
            # Metadata first: a body without its metadata could never be decrypted.
            meta_out.commit()
            out.commit()
    finally:
        _close(keyring)
    return EncryptResult(plain, ct, headers, digest.hex())


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _close(keyring: Keyring) -> None:
    """Close the keyring; a failure to close is not worth reporting over the real outcome."""
    with contextlib.suppress(Exception):
        _run(keyring.close())


def _regular_size(f: IO[bytes]) -> int | None:
    st = os.fstat(f.fileno())
    return st.st_size if stat.S_ISREG(st.st_mode) else None


# --- decrypt -----------------------------------------------------------------------------------


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
    data_key: bytes = _run(keyring.decrypt_data_key(env.key_ref, env.wrapped_key, env.context(bucket, object_key)))
    env.check_commitment(data_key)
    env.check_name(data_key, bucket, object_key)
    sealed = open_metadata(data_key, env.salt, env.sealed)
    return Opened(env, data_key, sealed)


def parse_envelope(meta: Mapping[str, str]) -> Envelope:
    """The envelope in backend user metadata (names without prefix)."""
    if not is_sealgate_object(meta):
        raise OfflineError("the metadata has no x-amz-meta-sg-v: this is not a sealgate object")
    return Envelope.from_metadata(meta)


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
    bar = progress or _NoProgress()
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
    recorded = _recorded_md5(opened.sealed, bytes(slot))
    if recorded is not None and md5.hexdigest() != recorded:
        raise IntegrityError("the plaintext's MD5 differs from the one recorded when it was stored")
    return written, recorded


def _recorded_md5(sealed: SealedMetadata, slot: bytes) -> str | None:
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
) -> DecryptResult:
    """Decrypt the backend body in file `src` (with its backend user `metadata`, names without
    prefix) to `dst`, authenticating every segment; `dst` appears only if all of it did.

    Multipart-layout objects also need the sealed `manifest` and the `backend_etag` the backend
    reports for the object. The plaintext file is created with mode 0600. `keyring` is closed
    afterwards.
    """
    try:
        env = parse_envelope(metadata)
        _check_paths(src, dst)
        with open(src, "rb") as fin:
            size = _regular_size(fin)
            if size is None:
                raise OfflineError(f"{src} is not a regular file (its size must be known)")
            if env.layout == LAYOUT_SINGLE and manifest is not None:
                raise OfflineError("--manifest is only for multipart-layout objects; this one is single")
            if env.layout == LAYOUT_MULTIPART and (backend_etag is None or manifest is None):
                raise OfflineError(_multipart_needs(object_key, backend_etag))
            with _outputs(lambda: _Output(dst, private=True, force=force)) as (out,):
                opened = open_envelope(keyring, env, bucket, object_key)
                mf: Manifest | None = None
                if env.layout == LAYOUT_MULTIPART:
                    assert manifest is not None and backend_etag is not None
                    mf = _check_manifest(opened, size, manifest, backend_etag)
                bar = progress(size) if progress else _NoProgress()
                plain, md5 = decrypt_stream(fin, out.file, opened, size, manifest=mf, progress=bar)
                out.commit()
    finally:
        _close(keyring)
    if mf is not None:
        etag: str | None = mf.etag
    elif md5 is not None:
        etag = md5
    else:
        etag = etag_value(opaque_etag(backend_etag)) if backend_etag else None
    return DecryptResult(plain, env.layout, etag, dict(opened.sealed.user))


def _multipart_needs(object_key: str, backend_etag: str | None) -> str:
    if backend_etag is None:
        return (
            "this is a multipart-layout object: give --backend-etag (the ETag the backend reports "
            "for it) and --manifest (the body of its .sealgate/mp/... manifest object)"
        )
    return (
        "this is a multipart-layout object: give --manifest, the body of the backend object "
        f"{manifest_key(object_key, backend_etag)!r} in the same bucket"
    )


def _check_manifest(opened: Opened, size: int, manifest: bytes, backend_etag: str) -> Manifest:
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


# --- the commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySource:
    """Where the master keys come from: a config's [kms] section, a local keyring file, or
    AWS KMS with boto3's default credentials (no config needed, for recovery anywhere)."""

    config: Path | None = None
    keyring: Path | None = None
    passphrase_file: Path | None = None
    passphrase_env: str = "SEALGATE_KEYRING_PASSPHRASE"
    aws_kms: bool = False
    region: str | None = None
    kms_endpoint: str | None = None

    def check(self) -> None:
        """click.UsageError unless exactly one source is given, with only its own options."""
        chosen = [
            n for n, on in (("--config", self.config), ("--keyring", self.keyring), ("--aws-kms", self.aws_kms)) if on
        ]
        if len(chosen) != 1:
            raise click.UsageError(
                "give one of --config FILE (the keyring of its [kms] section), --keyring FILE (a local "
                "keyring) or --aws-kms (AWS KMS with the default credentials)"
                + (f"; got {' and '.join(chosen)}" if chosen else "")
            )
        if self.passphrase_file is not None and self.keyring is None:
            raise click.UsageError("--passphrase-file goes with --keyring")
        if (self.region or self.kms_endpoint) and not self.aws_kms:
            raise click.UsageError("--region and --kms-endpoint go with --aws-kms")

    def open(self, key_ref: str | None = None) -> tuple[Keyring, Config | None]:
        """The keyring, and the config when one was given. `key_ref` (a key ARN) supplies the
        region for --aws-kms when neither --region nor the environment does."""
        if self.config is not None:
            from proxy.config import load_config
            from proxy.wiring import make_keyring

            cfg = load_config(self.config)
            return make_keyring(cfg), cfg
        if self.aws_kms:
            from proxy.kms.aws import AwsKmsKeyring

            region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region is None and key_ref and key_ref.startswith("arn:"):
                region = key_ref.split(":")[3] or None
            try:
                return AwsKmsKeyring(region=region, endpoint_url=self.kms_endpoint), None
            except ValueError as exc:
                raise OfflineError(f"{exc} (--region)") from None
        from proxy.kms.keystore import LocalKeyStore, passphrase_from
        from proxy.kms.local import LocalKeyring

        assert self.keyring is not None
        env = None if self.passphrase_file else self.passphrase_env
        passphrase = passphrase_from(env, self.passphrase_file)
        return LocalKeyring(LocalKeyStore.open(self.keyring, passphrase)), None


_KEY_SOURCE_OPTIONS = (
    click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="sealgate config file: its [kms] section gives the keyring (local or aws-kms).",
    ),
    click.option(
        "--keyring",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="A local keyring file (instead of --config).",
    ),
    click.option(
        "--passphrase-file",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="File holding the --keyring passphrase (mode 0600).",
    ),
    click.option(
        "--passphrase-env",
        default="SEALGATE_KEYRING_PASSPHRASE",
        show_default=True,
        help="Environment variable holding the --keyring passphrase (when no file is given).",
    ),
    click.option(
        "--aws-kms",
        is_flag=True,
        help="AWS KMS with boto3's default credentials (instead of --config).",
    ),
    click.option("--region", default=None, help="--aws-kms region. [default: AWS_REGION, else the key ARN's]"),
    click.option("--kms-endpoint", default=None, help="--aws-kms endpoint URL (a KMS-compatible service)."),
)


def _key_source_options(f: Callable[..., None]) -> Callable[..., None]:
    """Add the key-source options to a command; it receives them as `keys: KeySource`."""

    @functools.wraps(f)
    def wrapper(
        *,
        config_path: Path | None,
        keyring: Path | None,
        passphrase_file: Path | None,
        passphrase_env: str,
        aws_kms: bool,
        region: str | None,
        kms_endpoint: str | None,
        **kwargs: Any,
    ) -> None:
        keys = KeySource(config_path, keyring, passphrase_file, passphrase_env, aws_kms, region, kms_endpoint)
        keys.check()
        f(keys=keys, **kwargs)

    out: Callable[..., None] = wrapper
    for option in reversed(_KEY_SOURCE_OPTIONS):
        out = option(out)
    return out


class _Bars:
    """Makes a byte progress bar on stderr (tqdm) when `enabled`, else a silent one."""

    def __init__(self, enabled: bool | None, desc: str) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._desc = desc
        self._bars: list[Any] = []

    def __call__(self, total: int | None) -> Progress:
        if not self.enabled:
            return _NoProgress()
        from tqdm import tqdm

        bar = tqdm(
            total=total,
            desc=self._desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )
        self._bars.append(bar)
        return _Bar(bar)

    def close(self) -> None:
        for bar in self._bars:
            bar.close()
        self._bars.clear()


class _Bar:
    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def update(self, n: int) -> None:
        self._bar.update(n)


def _describe(exc: BaseException, bucket: str, object_key: str) -> str:
    """One line for the user, for every failure these commands expect."""
    from proxy.config import ConfigError
    from proxy.kms.keystore import KeyringFileError

    name = f"s3://{bucket}/{object_key}"
    if isinstance(exc, InvalidWrappedKey):
        return (
            f"the data key does not unwrap for {name} ({exc.message}): the object was stored under "
            "another bucket or key (check --bucket and --object-key), or its metadata was altered"
        )
    if isinstance(exc, KeyringError):
        return exc.message
    if isinstance(exc, IntegrityError):
        return f"authentication failed, nothing was written: {exc} (the object was altered, truncated or is not {name})"
    if isinstance(exc, FormatError):
        return f"not a readable sealgate object: {exc}"
    if isinstance(exc, ConfigError | KeyringFileError | OfflineError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


_EXPECTED: tuple[type[BaseException], ...] = (OfflineError, KeyringError, FormatError, OSError)


def _fail(exc: BaseException, bucket: str, object_key: str) -> None:
    click.echo(f"sealgate: {_describe(exc, bucket, object_key)}", err=True)
    sys.exit(1)


def _expected() -> tuple[type[BaseException], ...]:
    from proxy.config import ConfigError
    from proxy.kms.keystore import KeyringFileError

    return (*_EXPECTED, ConfigError, KeyringFileError)


_bucket_opt = click.option("--bucket", required=True, help="Bucket the object is stored in (bound to the data key).")
_force_opt = click.option("--force", is_flag=True, help="Replace output files that exist.")
_progress_opt = click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr. [default: when stderr is a terminal]",
)


@click.command("encrypt")
@_key_source_options
@click.option(
    "--key",
    "key_id",
    default=None,
    help="Master key: a local key id, or a KMS key id/ARN/alias. "
    "[default with --config: the key its bucket rules or kms.default_key give the object]",
)
@_bucket_opt
@click.option("--object-key", default=None, help="Object key it will be stored as. [default: IN's file name]")
@click.option(
    "--meta",
    "meta_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="User metadata, sealed into the object (sealgate returns it as x-amz-meta-NAME). Repeatable.",
)
@click.option(
    "--metadata-out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="JSON of the x-amz-meta-* headers to store with OUT. [default: OUT.meta.json]",
)
@_force_opt
@_progress_opt
@click.argument("src", metavar="IN", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path, dir_okay=False))
def encrypt_cmd(
    keys: KeySource,
    key_id: str | None,
    bucket: str,
    object_key: str | None,
    meta_pairs: tuple[str, ...],
    metadata_out: Path | None,
    force: bool,
    progress: bool | None,
    src: Path,
    dst: Path,
) -> None:
    """Encrypt file IN into OUT exactly as sealgate stores objects.

    Upload OUT to the backend as s3://BUCKET/OBJECT-KEY with the headers in the metadata JSON
    (boto3: Metadata= the names without "x-amz-meta-"); sealgate then serves the plaintext.
    The data key is bound to BUCKET and OBJECT-KEY: stored under another name it does not open.
    """
    if key_id is None and keys.config is None:
        raise click.UsageError("--key is required unless --config gives a default key")
    name = object_key if object_key is not None else src.name
    meta_path = metadata_out or dst.with_name(dst.name + ".meta.json")
    bars = _Bars(progress, "encrypt")
    try:
        user_meta = parse_user_metadata(meta_pairs)
        kr, cfg = keys.open(key_id)
        if key_id is None:
            assert cfg is not None
            key_id = cfg.key_for_bucket(bucket, name)
        result = encrypt_file(
            kr, key_id, bucket, name, src, dst, meta_path, user_metadata=user_meta, force=force, progress=bars
        )
    except _expected() as exc:
        bars.close()
        _fail(exc, bucket, name)
        return
    bars.close()
    click.echo(
        f"encrypted {result.plaintext_bytes} bytes for s3://{bucket}/{name} into {dst} "
        f'({result.ciphertext_bytes} bytes), metadata headers in {meta_path}; ETag "{result.etag}"',
        err=True,
    )


@click.command("decrypt")
@_key_source_options
@_bucket_opt
@click.option("--object-key", required=True, help="Key the object is stored under (bound to the data key).")
@click.option(
    "--metadata",
    "metadata_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="JSON of the object's x-amz-meta-* headers, boto3's Metadata dict, or a whole "
    "`aws s3api get-object`/`head-object` output. [default: IN.meta.json]",
)
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Multipart layout: the body of the object's .sealgate/mp/<sha256(key)>/<ETag> manifest.",
)
@click.option(
    "--backend-etag",
    default=None,
    help="Multipart layout: the ETag the backend reports for the object. "
    "[default: the ETag in an s3api/boto3 response given as --metadata]",
)
@click.option(
    "--user-metadata-out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the object's sealed user metadata here, as JSON.",
)
@_force_opt
@_progress_opt
@click.argument("src", metavar="IN", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path, dir_okay=False))
def decrypt_cmd(
    keys: KeySource,
    bucket: str,
    object_key: str,
    metadata_path: Path | None,
    manifest_path: Path | None,
    backend_etag: str | None,
    user_metadata_out: Path | None,
    force: bool,
    progress: bool | None,
    src: Path,
    dst: Path,
) -> None:
    """Decrypt IN, a sealgate object's body fetched straight from the backend, into OUT.

    Every segment is authenticated; OUT (mode 0600) appears only when all of them did. Needs the
    object's backend metadata, and for multipart-layout objects its manifest and backend ETag.
    """
    bars = _Bars(progress, "decrypt")
    try:
        meta_file = metadata_path or src.with_name(src.name + ".meta.json")
        try:
            meta_raw = meta_file.read_bytes()
        except FileNotFoundError:
            hint = "" if metadata_path else " (give the object's metadata with --metadata FILE)"
            raise OfflineError(f"metadata file {meta_file} not found{hint}") from None
        meta, doc_etag = parse_metadata_document(meta_raw)
        manifest = None
        if manifest_path is not None:
            if manifest_path.stat().st_size > MAX_MANIFEST_SIZE:
                raise OfflineError(f"{manifest_path} is too large to be a sealgate manifest")
            manifest = manifest_path.read_bytes()
        if user_metadata_out is not None:
            if user_metadata_out.absolute() == dst.absolute():
                raise OfflineError("--user-metadata-out names OUT")
            if user_metadata_out.exists() and not force:
                raise OfflineError(f"{user_metadata_out} already exists; use --force to replace it")
        kr, _ = keys.open(meta.get("sg-kr"))
        result = decrypt_file(
            kr,
            bucket,
            object_key,
            src,
            dst,
            meta,
            manifest=manifest,
            backend_etag=backend_etag or doc_etag,
            force=force,
            progress=bars,
        )
        if user_metadata_out is not None:
            with _outputs(lambda: _Output(user_metadata_out, private=True, force=True)) as (out,):
                out.file.write(json.dumps(result.user_metadata, indent=2, sort_keys=True).encode() + b"\n")
                out.commit()
    except _expected() as exc:
        bars.close()
        _fail(exc, bucket, object_key)
        return
    bars.close()
    etag = f'; ETag "{result.etag}"' if result.etag else ""
    click.echo(
        f"decrypted {result.plaintext_bytes} bytes of s3://{bucket}/{object_key} ({result.layout} layout) "
        f"into {dst}{etag}",
        err=True,
    )
