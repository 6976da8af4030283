"""`sealgate rewrap`: move objects to another master key without re-encrypting their bodies.

Each object's data key is unwrapped and wrapped again under the target key (same encryption
context), and only the metadata is rewritten, by an in-place server-side copy. Safe to
interrupt and re-run: an object already under the target key (its current version) is skipped,
and each object changes in one backend operation. A multipart object's manifest is recorded
under the object's backend ETag, which only the copy itself reveals, so it follows the object
one step later; before the copy it is stored as a pending record (proxy/store/completion.py),
from which any read, the next run or `sealgate gc` finishes a run interrupted in between.
Objects moved by runs from before pending records existed are found by their earlier manifest
(`_follow_manifest`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import click

from proxy.crypto.format import Envelope, FormatError, IntegrityError, Layout, Manifest, is_sealgate_object
from proxy.crypto.multipart import stored_length
from proxy.crypto.signing import encode_signature
from proxy.kms.base import KeyringError
from proxy.s3.errors import S3Error
from proxy.s3.headers import CONTENT_HEADERS, etag_value
from proxy.store.backend import BackendResponse
from proxy.store.completion import drop_pending, find_manifest, finish_pending, put_pending
from proxy.store.copies import SourceChanged, backend_copy
from proxy.store.gateway import Gateway
from proxy.store.listing import list_keys, versions_with
from proxy.store.records import ManifestMissing, put_record, read_manifest, record_key
from proxy.store.signatures import (
    check_single,
    manifest_check,
    require_signer,
    sign_manifest,
    sign_single,
    signed_single,
)
from proxy.tools.bulk import finish, record, run_tool, start_tally
from proxy.tools.options import (
    config_option,
    dry_run_option,
    json_option,
    location_options,
    progress_option,
    required_location,
    tool_logging,
    verbosity_options,
)
from proxy.tools.progress import Ahead


@dataclass
class RewrapReport:
    """What a run did."""

    rewrapped: int = 0
    bytes: int = 0
    already: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


#: How often an object overwritten while it is rewrapped is tried again from the start.
CHANGED_ATTEMPTS = 3


async def rewrap_object(gw: Gateway, bucket: str, key: str, to_key: str, *, dry_run: bool = False) -> str:
    """Re-wrap one object's data key under `to_key`; returns "rewrapped" or "already" (with
    `dry_run`, what it would return: every check and key use is made, nothing is written).

    A client may overwrite the object while this runs; the backend copy is pinned to the body
    that was read (see `backend_copy`), so the new object is refused rather than stored
    with the old one's envelope, and the rewrap starts again with the new object."""
    for attempt in range(1, CHANGED_ATTEMPTS + 1):
        try:
            return await _rewrap_once(gw, bucket, key, to_key, dry_run)
        except SourceChanged:
            if attempt == CHANGED_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def _rewrap_once(gw: Gateway, bucket: str, key: str, to_key: str, dry_run: bool) -> str:
    head = await gw.backend.request("HEAD", bucket, key)
    head.release()
    if head.status >= 300:
        raise await head.error()
    meta = head.user_metadata()
    if not is_sealgate_object(meta):
        raise S3Error("InvalidObjectState", "not a sealgate object", 403)
    env = Envelope.from_metadata(meta)
    if gw.config.encrypt_only(env.key_ref):
        if gw.audit is not None:
            gw.audit.record(
                "decrypt", "denied", reason="encrypt-only", key_id=env.key_ref, bucket=bucket, object_key=key
            )
        raise S3Error("AccessDenied", "the object's key is encrypt-only in this config", 403)
    total = int(head.headers.get("Content-Length", "0"))
    if env.layout != "multipart":
        # As its key's readers do, before any keyring call: what they refuse is not moved, nor signed anew.
        check_single(gw, env, bucket, key, total)
    context = env.context(bucket, key)
    data_key = await gw.materials.unwrap(env.key_ref, env.wrapped_key, context)
    env.check_commitment(data_key)
    env.check_name(data_key, bucket, key)
    wrapped = await gw.materials.wrap(to_key, data_key, context)
    if wrapped.key_ref == env.key_ref:
        if env.layout == "multipart" and await _follow_manifest(gw, bucket, key, head, data_key, env, dry_run):
            return "rewrapped"  # finishes a run interrupted between object and manifest
        return "already"
    manifest: Manifest | None = None
    if env.layout == "multipart":
        check = manifest_check(gw, env, bucket, key)  # signed anew below: only if it is authentic now
        manifest = await _manifest(gw, bucket, key, head, total, data_key, env, check, dry_run)
    new_env = dataclasses.replace(env, key_ref=wrapped.key_ref, wrapped_key=wrapped.wrapped)
    if manifest is not None:
        require_signer(gw, new_env.key_ref)  # its moved manifest must be signed for the target key's readers
    else:
        plaintext_length = Layout(env.segment_size).plaintext_length(total)
        if not signed_single(gw, new_env, bucket, key, plaintext_length):
            # Its signature (the wrapped key is not signed) is not one the target key's readers trust.
            require_signer(gw, new_env.key_ref)
            new_env = sign_single(gw, new_env, bucket, key, plaintext_length)
    if dry_run:
        return "rewrapped"
    headers = {f"x-amz-meta-{k}": v for k, v in new_env.to_metadata().items()}
    headers.update({n: head.headers[n] for n in CONTENT_HEADERS if n in head.headers})
    source = "/" + quote(f"{bucket}/{key}", safe="/~")
    pinned = head.headers.get("ETag", "")
    if manifest is not None:
        # The copy's ETag is known only once it exists: until its manifest is stored, readers
        # (and gc) find this pending record by the object's salt and check the copy against it.
        pending = dataclasses.replace(manifest, backend_etag="")
        held = pending.seal(data_key, env.salt)
        signature = encode_signature(sign_manifest(gw, new_env, bucket, key, held))
        await put_pending(gw, bucket, key, None, env.salt, pending, held, signature)
    copied = await backend_copy(
        gw, bucket, key, headers, source, total, multipart=manifest is not None, source_etag=pinned
    )
    if manifest is not None:
        moved = dataclasses.replace(manifest, backend_etag=copied.etag)
        sealed = moved.seal(data_key, env.salt)
        # The moved manifest names the copy's ETag: signed anew, if this config's keyring signs.
        signature = encode_signature(sign_manifest(gw, new_env, bucket, key, sealed))
        await put_record(gw, bucket, key, moved, sealed, signature)
        await drop_pending(gw, bucket, key, env.salt)
        await _drop_record(gw, bucket, key, record_key(key, manifest.backend_etag))
    return "rewrapped"


async def _drop_record(gw: Gateway, bucket: str, key: str, name: str) -> None:
    """Delete the manifest record `name` of an earlier body of `key`, unless a version of the
    object still has that body (a versioned bucket keeps the version rewrap copied from)."""
    if await versions_with(gw, bucket, key, name.rsplit("/", 1)[-1]) is False:
        old = await gw.backend.request("DELETE", bucket, name)
        old.release()


async def _manifest(
    gw: Gateway,
    bucket: str,
    key: str,
    head: BackendResponse,
    total: int,
    data_key: bytes,
    env: Envelope,
    check: Callable[[bytes, Mapping[str, str]], None] | None,
    dry_run: bool,
) -> Manifest:
    """The multipart object's manifest; in a dry run only the one stored under its ETag is read
    (finishing a pending record would write), and a pending one stands in as it is."""
    if not dry_run:
        return await find_manifest(gw, bucket, key, head, total, data_key, env, check)
    try:
        return await read_manifest(gw, bucket, key, head, data_key, env.salt, check)
    except ManifestMissing:
        return Manifest((), "", "")  # a real run finishes the pending record first


async def _follow_manifest(
    gw: Gateway, bucket: str, key: str, head: BackendResponse, data_key: bytes, env: Envelope, dry_run: bool
) -> bool:
    """Make sure a multipart object's manifest is recorded under its current backend ETag; True
    when it had to be moved there from an earlier ETag of the same body.

    Only a record that opens under this object's data key and salt (so it describes this very
    body: copies keep both) and implies the stored size is taken; without one the object is
    reported, not guessed at. Under a key with ``trusted_signers`` the record must carry a
    signature by one of them (the run that moved the object left it signed) and is signed anew
    for the current ETag, so this config must sign with one of them too."""
    etag = etag_value(head.headers.get("ETag", ""))
    probe = await gw.backend.request("HEAD", bucket, record_key(key, etag))
    probe.release()
    if probe.status < 300:
        return False
    if probe.status != 404:
        raise await probe.error()
    require_signer(gw, env.key_ref)
    check = manifest_check(gw, env, bucket, key)
    if dry_run:
        return True  # a real run moves (or looks for) the record: something to do
    size = int(head.headers.get("Content-Length", "-1"))
    try:
        await finish_pending(gw, bucket, key, head, size, data_key, env, check)
        return True
    except ManifestMissing:
        pass  # moved by a run from before pending records: follow its earlier manifest
    async for name, _ in list_keys(gw, bucket, record_key(key, ""), reserved=True):
        rec = await gw.backend.request("GET", bucket, name)
        try:
            if rec.status >= 300:
                continue
            sealed = await rec.read()
            rec_meta = rec.user_metadata()
        finally:
            rec.release()
        try:
            earlier = Manifest.open(data_key, env.salt, sealed)
        except FormatError:
            continue
        if stored_length(earlier, Layout(env.segment_size)) != size:
            continue
        if check is not None:
            check(sealed, rec_meta)  # re-signed below: only if it is authentic now (IntegrityError)
        moved = dataclasses.replace(earlier, backend_etag=etag)
        resealed = moved.seal(data_key, env.salt)
        signature = encode_signature(sign_manifest(gw, env, bucket, key, resealed))
        await put_record(gw, bucket, key, moved, resealed, signature)
        await _drop_record(gw, bucket, key, name)
        return True
    raise IntegrityError("the multipart manifest for this object is missing")


async def rewrap(
    gw: Gateway,
    bucket: str,
    prefix: str,
    to_key: str,
    *,
    progress: Callable[[str, str, int], None] | None = None,
    listed: Callable[[tuple[str, int]], None] | None = None,
    dry_run: bool = False,
) -> RewrapReport:
    """Re-wrap every sealgate object under `prefix` (with `dry_run`, report what would be, and
    write nothing); failures are reported, not fatal. `listed` hears of each object as the
    listing (fetched ahead) finds it, `progress` of each one's (key, outcome, stored size)."""
    report = RewrapReport()
    async with Ahead(list_keys(gw, bucket, prefix), listed) as found:
        async for key, size in found:
            try:
                outcome = await rewrap_object(gw, bucket, key, to_key, dry_run=dry_run)
            except (S3Error, KeyringError, FormatError) as exc:
                report.skipped.append((key, str(exc)))
                outcome = "skipped"
            if outcome == "rewrapped":
                report.rewrapped += 1
                report.bytes += size
            elif outcome == "already":
                report.already += 1
            if progress is not None:
                progress(key, outcome, size)
    return report


@click.command("rewrap")
@location_options()
@click.option("--to-key", required=True, help="Master key to re-wrap data keys under (id, alias or ARN).")
@config_option()
@dry_run_option("List what would be rewrapped (every check and key use is made); write nothing.")
@progress_option
@json_option
@verbosity_options
def rewrap_cmd(
    target: str | None,
    bucket: str | None,
    prefix: str | None,
    to_key: str,
    config_path: Path,
    dry_run: bool,
    progress: bool | None,
    progress_interval: float,
    as_json: bool,
) -> None:
    """Move objects to another master key by re-wrapping their data keys (bodies untouched).

    Works on s3://BUCKET[/PREFIX] (or --bucket B --prefix P). Talks to the backend and KMS
    with the config's credentials; safe to interrupt and re-run."""
    where = required_location(target, bucket, prefix)
    chosen = tool_logging()
    verb = "would rewrap" if dry_run else "rewrapped"
    tally = start_tally("rewrap", chosen, progress, progress_interval, dry_run=dry_run, as_json=as_json)

    def one(key: str, outcome: str, size: int) -> None:
        word = verb if outcome == "rewrapped" else outcome
        tally.done(word, f"{word} s3://{where.bucket}/{key}", size=size, changes=outcome == "rewrapped", item=key)

    def work(gw: Gateway) -> Awaitable[RewrapReport]:  # key uses to <audit.path>.rewrap
        return rewrap(
            gw, where.bucket, where.prefix, to_key, progress=one, listed=lambda _: tally.found(), dry_run=dry_run
        )

    try:
        report = run_tool(config_path, where, work, audit_as="rewrap")
    finally:
        tally.close()
    summary = (
        f"{verb} {report.rewrapped} objects ({report.bytes} bytes), {report.already} already under {to_key}, "
        f"{len(report.skipped)} skipped"
    )
    fields: dict[str, object] = {
        "target": str(where),
        "to_key": to_key,
        "rewrapped": report.rewrapped,
        "bytes": report.bytes,
        "already": report.already,
    }
    document = record(tally, "rewrap", fields, dry_run=dry_run, skipped=report.skipped) if as_json else None
    finish(tally, chosen, summary, [("skipped", key, why) for key, why in report.skipped], as_json=document)
