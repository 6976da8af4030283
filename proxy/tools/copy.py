"""`sealgate copy`: copy objects into another bucket (or name) under another master key.

The body is copied by the backend (CopyObject, or UploadPartCopy for multipart objects and
objects above ``backend.max_copy_bytes``), never streamed through sealgate: as for a client's
CopyObject (proxy/store/copies.py), only the data key is re-wrapped, under the target key and the
destination's encryption context. A multipart object gets its manifest written for the
destination. Idempotent: a destination that already holds the source's body (same salt and key
commitment, hence the same data key) wrapped under the target key is left alone. Key uses and
refusals are audited into ``<audit.path>.copy`` (see `proxy.wiring.audited_gateway`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import click

from proxy.access.actions import Need, object_need
from proxy.access.authorize import Caller, require
from proxy.crypto.format import (
    SCOPE_OBJECT,
    Envelope,
    FormatError,
    Manifest,
    encryption_context,
    is_sealgate_object,
)
from proxy.crypto.signing import encode_signature
from proxy.kms.base import KeyringError
from proxy.s3.errors import S3Error
from proxy.s3.headers import CONTENT_HEADERS
from proxy.store.copies import backend_copy
from proxy.store.gateway import Gateway
from proxy.store.listing import list_keys
from proxy.store.objects import open_copy_source
from proxy.store.records import check_reserved, put_record, record_key
from proxy.store.signatures import require_signer, sign_manifest, sign_single
from proxy.tools.bulk import finish, record, run_tool, start_tally
from proxy.tools.options import (
    Location,
    config_option,
    dry_run_option,
    json_option,
    progress_option,
    resolve_location,
    tool_logging,
    verbosity_options,
)
from proxy.tools.progress import Ahead


@dataclass
class CopyReport:
    """What a run did."""

    copied: int = 0
    bytes: int = 0
    already: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _deny(gw: Gateway, action: str, key: str, bucket: str, name: str, reason: str, message: str) -> S3Error:
    if gw.audit is not None:
        gw.audit.record(action, "denied", reason=reason, key_id=key, bucket=bucket, object_key=name)
    return S3Error("AccessDenied", message, 403)


def _check_policy(gw: Gateway, identity: str | None, action: str, key: str, bucket: str, name: str) -> None:
    """AccessDenied (and a "denied" audit line) unless `identity` (None: the operator,
    unrestricted) may `action` with `key` on object `name` of `bucket`."""
    if identity is not None and not gw.config.may_use_key(identity, action, key):
        raise _deny(gw, action, key, bucket, name, "policy", f"client {identity!r} may not {action} with key {key}")


async def _already_there(gw: Gateway, bucket: str, key: str, src: Envelope, key_ref: str) -> bool:
    """Whether `key` already holds this very body (same salt and commitment, so the same data
    key) wrapped under `key_ref`, with its manifest if it is multipart: a finished copy."""
    head = await gw.backend.request("HEAD", bucket, key)
    head.release()
    if head.status == 404:
        return False
    if head.status >= 300:
        raise await head.error()
    meta = head.user_metadata()
    if not is_sealgate_object(meta):
        return False
    try:
        dest = Envelope.from_metadata(meta)
    except FormatError:
        return False
    if (dest.salt, dest.commitment, dest.key_ref, dest.layout) != (src.salt, src.commitment, key_ref, src.layout):
        return False
    if dest.layout != "multipart":
        return True
    record = await gw.backend.request("HEAD", bucket, record_key(key, head.headers.get("ETag", "")))
    record.release()
    return record.status < 300


async def copy_object(
    gw: Gateway,
    src_bucket: str,
    src_key: str,
    dst_bucket: str,
    dst_key: str,
    to_key: str,
    *,
    identity: str | None = None,
    dry_run: bool = False,
) -> tuple[str, int]:
    """Copy one object under `to_key`: ("copied" or "already", stored size). Nothing is written
    unless the source opens and its data key wraps under `to_key` (and, with `identity`, that
    client's identity policies and key policies allow both); with `dry_run`, nothing at all
    ("copied": it would be)."""
    check_reserved(src_key)
    check_reserved(dst_key)
    if (src_bucket, src_key) == (dst_bucket, dst_key):
        raise S3Error("InvalidRequest", "source and destination are the same object: use `sealgate rewrap`", 400)
    # Policies first, before any backend or keyring call, as the server does: the client's
    # identity policies (a read of the source, a write of the destination) ...
    if identity is not None:
        wanted = [object_need("s3:GetObject", src_bucket, src_key, None), Need("s3:PutObject", dst_bucket, dst_key)]
        require(gw.config, gw.audit, Caller(identity), wanted)
    # ... then its key policies.
    probe = await gw.backend.request("HEAD", src_bucket, src_key)
    probe.release()
    if probe.status < 300 and is_sealgate_object(probe.user_metadata()):
        src_ref = Envelope.from_metadata(probe.user_metadata()).key_ref
        if gw.config.encrypt_only(src_ref):
            message = "the source's key is encrypt-only in this config"
            raise _deny(gw, "decrypt", src_ref, src_bucket, src_key, "encrypt-only", message)
        _check_policy(gw, identity, "decrypt", src_ref, src_bucket, src_key)
    _check_policy(gw, identity, "encrypt", to_key, dst_bucket, dst_key)
    opened, head, total = await open_copy_source(gw, Caller.operator(), src_bucket, src_key)
    env = opened.envelope
    # A copy's key is always wrapped for its own name (object scope), as server/copy.py does.
    wrapped = await gw.materials.wrap(to_key, opened.data_key, encryption_context(dst_bucket, dst_key))
    if await _already_there(gw, dst_bucket, dst_key, env, wrapped.key_ref):
        return "already", total
    require_signer(gw, wrapped.key_ref)  # a copy names another object: signed anew, or its readers refuse it
    new_env = dataclasses.replace(
        env, key_ref=wrapped.key_ref, wrapped_key=wrapped.wrapped, scope=SCOPE_OBJECT, name_tag=b"", signature=b""
    )
    if opened.manifest is None:  # signed anew for its own name, if this config's keyring signs
        new_env = sign_single(gw, new_env, dst_bucket, dst_key, opened.plaintext_length)
    if dry_run:
        return "copied", total
    headers = {f"x-amz-meta-{k}": v for k, v in new_env.to_metadata().items()}
    headers.update({n: head.headers[n] for n in CONTENT_HEADERS if n in head.headers})
    source = "/" + quote(f"{src_bucket}/{src_key}", safe="/~")
    multipart = opened.manifest is not None
    copied = await backend_copy(
        gw, dst_bucket, dst_key, headers, source, total, multipart=multipart, source_etag=head.headers.get("ETag", "")
    )
    if opened.manifest is not None:
        manifest = Manifest(opened.manifest.parts, copied.etag, opened.manifest.etag)
        sealed = manifest.seal(opened.data_key, env.salt)
        signature = encode_signature(sign_manifest(gw, new_env, dst_bucket, dst_key, sealed))
        await put_record(gw, dst_bucket, dst_key, manifest, sealed, signature)
    return "copied", total


async def copy(
    gw: Gateway,
    src: tuple[str, str],
    dst: tuple[str, str],
    to_key: str,
    *,
    recursive: bool = False,
    identity: str | None = None,
    progress: Callable[[str, str, str, int], None] | None = None,
    listed: Callable[[tuple[str, int]], None] | None = None,
    dry_run: bool = False,
) -> CopyReport:
    """Copy one object, or with `recursive` every object under the source prefix (the rest of
    each key is appended to the destination prefix); with `dry_run` report what would be
    copied and write nothing. Failures are reported, not fatal. `listed` hears of each object
    as the listing (fetched ahead) finds it, `progress` of each one's (source key, destination
    key, outcome, stored size)."""
    report = CopyReport()
    (src_bucket, src_prefix), (dst_bucket, dst_prefix) = src, dst
    async with Ahead(_sources(gw, src_bucket, src_prefix, recursive), listed) as found:
        async for src_key, size in found:
            if recursive:
                dst_key = dst_prefix + src_key[len(src_prefix) :]
            else:
                # As `aws s3 cp`: a destination ending in "/" (or none) keeps the source's base name.
                basename = src_key.rsplit("/", 1)[-1]
                dst_key = dst_prefix + basename if dst_prefix.endswith("/") or not dst_prefix else dst_prefix
            try:
                outcome, size = await copy_object(
                    gw, src_bucket, src_key, dst_bucket, dst_key, to_key, identity=identity, dry_run=dry_run
                )
            except (S3Error, KeyringError, FormatError) as exc:
                report.skipped.append((src_key, exc.message if isinstance(exc, S3Error | KeyringError) else str(exc)))
                outcome = "skipped"
            if outcome == "copied":
                report.copied += 1
                report.bytes += size
            elif outcome == "already":
                report.already += 1
            if progress is not None:
                progress(src_key, dst_key, outcome, size)
    return report


async def _sources(gw: Gateway, bucket: str, prefix: str, recursive: bool) -> AsyncIterator[tuple[str, int]]:
    """(key, listed size) of what a copy copies: every object under `prefix`, or the one it names."""
    if recursive:
        async for item in list_keys(gw, bucket, prefix):
            yield item
    else:
        yield prefix, 0


@click.command("copy")
@click.argument("urls", nargs=-1, metavar="[SOURCE] [DESTINATION]")
@click.option("--to-key", required=True, help="Master key to wrap the copies' data keys under (id, alias or ARN).")
@config_option()
@click.option("--recursive", is_flag=True, help="SOURCE and DESTINATION are prefixes: copy every object below.")
@click.option("--bucket", default=None, help="The source's bucket (instead of SOURCE).")
@click.option("--prefix", default=None, help="The source's key (with --recursive: its prefix).")
@click.option("--to-bucket", default=None, help="The destination's bucket (instead of DESTINATION).")
@click.option("--to-prefix", default=None, help="The destination's key, or prefix (ending in / keeps the names).")
@click.option(
    "--as", "identity", default=None, help="Apply the [[policies]] and [[keys]] policies of this client name."
)
@dry_run_option("List what would be copied (every check and key use is made); write nothing.")
@progress_option
@json_option
@verbosity_options
def copy_cmd(
    urls: tuple[str, ...],
    to_key: str,
    config_path: Path,
    recursive: bool,
    bucket: str | None,
    prefix: str | None,
    to_bucket: str | None,
    to_prefix: str | None,
    identity: str | None,
    dry_run: bool,
    progress: bool | None,
    progress_interval: float,
    as_json: bool,
) -> None:
    """Copy s3://A/k to s3://B/k2 under master key --to-key; the backend copies the body.

    SOURCE and DESTINATION are s3://BUCKET/KEY (prefixes with --recursive), or --bucket /
    --prefix and --to-bucket / --to-prefix. Safe to interrupt and re-run: finished copies are
    recognised and skipped."""
    src, dst = _places(urls, bucket, prefix, to_bucket, to_prefix)
    if not recursive and not src.prefix:
        raise click.UsageError("SOURCE names no object (use --recursive for a prefix)")
    chosen = tool_logging()
    verb = "would copy" if dry_run else "copied"
    tally = start_tally("copy", chosen, progress, progress_interval, dry_run=dry_run, as_json=as_json)

    def one(src_key: str, dst_key: str, outcome: str, size: int) -> None:
        word = verb if outcome == "copied" else outcome
        line = f"{word} s3://{src.bucket}/{src_key}" + (
            f" to s3://{dst.bucket}/{dst_key}" if outcome != "skipped" else ""
        )
        tally.done(word, line, size=size, changes=outcome == "copied", item={"key": src_key, "to": dst_key})

    def work(gw: Gateway) -> Awaitable[CopyReport]:
        return copy(
            gw,
            (src.bucket, src.prefix),
            (dst.bucket, dst.prefix),
            to_key,
            recursive=recursive,
            identity=identity,
            progress=one,
            listed=lambda _: tally.found(),
            dry_run=dry_run,
        )

    try:
        report = run_tool(config_path, src, work, audit_as="copy", identity=identity)
    finally:
        tally.close()
    summary = (
        f"{verb} {report.copied} objects ({report.bytes} bytes), {report.already} already copied, "
        f"{len(report.skipped)} skipped"
    )
    fields: dict[str, object] = {
        "source": str(src),
        "destination": str(dst),
        "to_key": to_key,
        "copied": report.copied,
        "bytes": report.bytes,
        "already": report.already,
    }
    document = record(tally, "copy", fields, dry_run=dry_run, skipped=report.skipped) if as_json else None
    finish(tally, chosen, summary, [("skipped", key, why) for key, why in report.skipped], as_json=document)


def _places(
    urls: tuple[str, ...], bucket: str | None, prefix: str | None, to_bucket: str | None, to_prefix: str | None
) -> tuple[Location, Location]:
    """SOURCE and DESTINATION, from the URLs and the options: the URLs fill what the options
    leave unnamed, in that order; anything named twice, or left unnamed, is a usage error."""
    from_options = [
        resolve_location(None, bucket, prefix),
        resolve_location(None, to_bucket, to_prefix, flags=("--to-bucket", "--to-prefix")),
    ]
    open_slots = [i for i, place in enumerate(from_options) if place is None]
    if len(urls) > len(open_slots):
        named = " and ".join(("--bucket", "--to-bucket")[i] for i in range(2) if from_options[i] is not None)
        raise click.UsageError(f"too many s3:// URLs for what {named} left to name")
    if len(urls) < len(open_slots):
        missing = " and ".join(
            ("SOURCE (or --bucket)", "DESTINATION (or --to-bucket)")[i] for i in open_slots[len(urls) :]
        )
        raise click.UsageError(f"missing {missing}")
    places = list(from_options)
    for slot, url in zip(open_slots, urls, strict=True):
        places[slot] = resolve_location(url, None, None)
    src, dst = places
    assert src is not None and dst is not None
    return src, dst
