"""The `sealgate encrypt` and `sealgate decrypt` commands: their options, their one-line
failures (exit status 1) and their summaries."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from proxy.crypto.format import FormatError, IntegrityError
from proxy.crypto.signing import decode_signature
from proxy.kms.base import InvalidWrappedKey, KeyringError
from proxy.store.signatures import trusted_in
from proxy.tools.offline.decrypt import decrypt_file
from proxy.tools.offline.encrypt import encrypt_file
from proxy.tools.offline.files import OfflineError, Output, outputs
from proxy.tools.offline.keys import KeySource, key_source_options
from proxy.tools.offline.metadata import parse_metadata_document, parse_user_metadata
from proxy.tools.options import verbosity_options
from proxy.tools.progress import Bars

#: A manifest lists at most 10,000 parts (~100 bytes each): anything bigger is not one.
MAX_MANIFEST_SIZE = 16 * 1024 * 1024


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


def _signature(text: str) -> bytes:
    try:
        return decode_signature(text)
    except ValueError as exc:
        raise OfflineError(f"--manifest-signature: {exc}") from None


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
@key_source_options
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
@verbosity_options
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
    bars = Bars(progress, "encrypt")
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
@key_source_options
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
    "--manifest-signature",
    default="",
    help="Multipart layout: the manifest object's x-amz-meta-sg-sig, when the key policy of --config "
    "lists trusted_signers.",
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
@verbosity_options
def decrypt_cmd(
    keys: KeySource,
    bucket: str,
    object_key: str,
    metadata_path: Path | None,
    manifest_path: Path | None,
    backend_etag: str | None,
    manifest_signature: str,
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
    bars = Bars(progress, "decrypt")
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
        kr, cfg = keys.open(meta.get("sg-kr"))
        trusted = trusted_in(cfg, meta.get("sg-kr", "")) if cfg is not None else ()
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
            trusted=trusted,
            manifest_signature=_signature(manifest_signature),
        )
        if user_metadata_out is not None:
            with outputs(lambda: Output(user_metadata_out, private=True, force=True)) as (out,):
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
