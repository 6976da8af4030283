"""`sealgate gc`: abort stale multipart uploads and delete manifests whose object is gone.

Both only ever remove things that no reader can use: an upload nobody completed within the age
limit, and a manifest whose object was deleted or overwritten (its name carries the ETag of the
object it describes) with no older version of it left in a versioned bucket. Manifests younger
than the age limit are kept, since completion writes the manifest just before the object appears.
Upload records (``.sealgate/up/``: the id ListMultipartUploads shows) and part records
(``.sealgate/pt/``) go with their upload, and those older than the age limit whose upload is no
longer listed go too.

Pending records (``.sealgate/pc/``, proxy/store/completion.py) older than the age limit are
finished, never just dropped, while a stored version of their object still lacks the manifest
they become: gc opens that version as a read would, which stores its manifest. One whose upload
can still be completed is kept; one that no stored object carries is deleted. A manifest is only
ever deleted when no stored version has its ETag, so gc never removes the last manifest of a
readable object, on backends that list versions and on those that cannot (there the current
object is the only one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote
from xml.etree.ElementTree import Element

import click

from proxy.access.authorize import Caller
from proxy.kms.base import KeyringError
from proxy.s3.errors import S3Error
from proxy.s3.headers import etag_value
from proxy.s3.xml import child_text, iter_named, parse
from proxy.store.backend import BackendResponse
from proxy.store.completion import PENDING_PREFIX, made_by
from proxy.store.gateway import Gateway
from proxy.store.listing import versions_of, versions_with
from proxy.store.objects import open_object
from proxy.store.part_etags import PARTS_PREFIX
from proxy.store.records import record_key, upload_record_key
from proxy.store.reserved import RESERVED_PREFIX
from proxy.tools.bulk import finish, record, run_tool, start_tally
from proxy.tools.options import (
    Location,
    config_option,
    dry_run_option,
    json_option,
    location_options,
    progress_option,
    required_location,
    tool_logging,
    verbosity_options,
)
from proxy.tools.progress import Ahead, Tally

_T = TypeVar("_T")


@dataclass
class GcReport:
    """What a run found and removed."""

    uploads_aborted: list[tuple[str, str]] = field(default_factory=list)
    manifests_deleted: list[str] = field(default_factory=list)
    kept_young: int = 0
    #: Records of uploads that are gone (those of the uploads aborted here included).
    records_deleted: list[str] = field(default_factory=list)
    #: Objects whose interrupted completion was finished: (key, version id or "").
    completions_finished: list[tuple[str, str]] = field(default_factory=list)
    #: Pending records no stored object needs any more.
    pending_deleted: list[str] = field(default_factory=list)
    #: Pending records kept although old: (record, why).
    pending_kept: list[tuple[str, str]] = field(default_factory=list)


async def _xml(gw: Gateway, bucket: str, query: list[tuple[str, str]]) -> Element:
    resp = await gw.backend.request("GET", bucket, None, query=query)
    if resp.status >= 300:
        raise await resp.error()
    try:
        return parse(await resp.read())
    finally:
        resp.release()


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


#: What gc tells its `progress` an item came to (for each, whether it changes the bucket).
ACTIONS = {"abort": True, "delete": True, "finish": True, "keep": False}


async def gc(
    gw: Gateway,
    bucket: str,
    older_than: timedelta,
    *,
    dry_run: bool = False,
    progress: Callable[[str, str], None] | None = None,
    listed: Callable[[object], None] | None = None,
) -> GcReport:
    """Clean one bucket; with `dry_run` only report. Its listings (uploads, upload and part
    records, pending records, manifests) are all fetched ahead from the start, each item told
    to `listed` as found, and worked through in that order; `progress` hears of each item's
    action (`ACTIONS`) and what it was."""
    report = GcReport()
    cutoff = datetime.now(UTC) - older_than
    note = progress or (lambda action, what: None)
    async with AsyncExitStack() as stack:

        async def ahead(items: AsyncIterator[_T]) -> Ahead[_T]:
            return await stack.enter_async_context(Ahead(items, listed))

        uploads = await ahead(_uploads(gw, bucket))
        records = [await ahead(_listed(gw, bucket, p)) for p in (RESERVED_PREFIX + "up/", PARTS_PREFIX)]
        pending = await ahead(_listed(gw, bucket, PENDING_PREFIX))
        manifests = await ahead(_listed(gw, bucket, RESERVED_PREFIX + "mp/"))
        live: set[str] = set()
        async for key, upload_id, initiated in uploads:
            if initiated and _parse_time(initiated) < cutoff:
                report.uploads_aborted.append((key, upload_id))
                if not dry_run:
                    resp = await gw.backend.request("DELETE", bucket, key, query=[("uploadId", upload_id)])
                    resp.release()
                note("abort", f"stale upload {key} ({upload_id})")
            else:
                live.add(upload_record_key(key, upload_id))
                note("keep", f"upload {key} ({upload_id})")
        for prefix, listing in zip((RESERVED_PREFIX + "up/", PARTS_PREFIX), records, strict=True):
            async for record, modified in listing:
                # .sealgate/{up,pt}/<key digest>/<upload digest>[/...]: the upload's record names the two.
                upload = RESERVED_PREFIX + "up/" + "/".join(record[len(prefix) :].split("/")[:2])
                if upload not in live and modified < cutoff:
                    report.records_deleted.append(record)
                    if not dry_run:
                        await _delete(gw, bucket, record)
                    note("delete", f"upload record {record}")
                else:
                    note("keep", f"upload record {record}")
        async for name, modified in pending:
            if modified >= cutoff:
                report.kept_young += 1
                note("keep", f"recent pending record {name}")
            else:
                note(*await _pending(gw, bucket, name, live, report, dry_run))
        async for name, modified in manifests:
            if modified >= cutoff:
                report.kept_young += 1
                note("keep", f"recent manifest {name}")
            elif await _orphan(gw, bucket, name):
                report.manifests_deleted.append(name)
                if not dry_run:
                    await _delete(gw, bucket, name)
                note("delete", f"orphan manifest {name}")
            else:
                note("keep", f"manifest {name}")
    return report


async def _uploads(gw: Gateway, bucket: str) -> AsyncIterator[tuple[str, str, str]]:
    """(key, upload id, initiated) of every multipart upload the backend lists."""
    key_marker = upload_marker = ""
    while True:
        query = [("uploads", ""), ("key-marker", key_marker), ("upload-id-marker", upload_marker)]
        root = await _xml(gw, bucket, query)
        for up in iter_named(root, "Upload"):
            yield child_text(up, "Key"), child_text(up, "UploadId"), child_text(up, "Initiated")
        if child_text(root, "IsTruncated").lower() != "true":
            return
        key_marker, upload_marker = child_text(root, "NextKeyMarker"), child_text(root, "NextUploadIdMarker")
        if not key_marker:
            return


async def _listed(gw: Gateway, bucket: str, prefix: str) -> AsyncIterator[tuple[str, datetime]]:
    """(key, last modified) of every object under `prefix`."""
    token = ""
    while True:
        query = [("list-type", "2"), ("prefix", prefix)]
        if token:
            query.append(("continuation-token", token))
        root = await _xml(gw, bucket, query)
        for item in iter_named(root, "Contents"):
            yield child_text(item, "Key"), _parse_time(child_text(item, "LastModified"))
        token = child_text(root, "NextContinuationToken")
        if not token:
            return


async def _orphan(gw: Gateway, bucket: str, name: str) -> bool:
    """Whether no stored version of the object this manifest describes has its ETag any more
    (deleted or overwritten, and in a versioned bucket no older version left either)."""
    head = await gw.backend.request("HEAD", bucket, name)
    head.release()
    quoted = head.headers.get("x-amz-meta-sg-object")
    if head.status >= 300 or quoted is None:
        return False  # cannot tell: keep it
    key, etag = unquote(quoted), name.rsplit("/", 1)[-1]
    obj = await gw.backend.request("HEAD", bucket, key)
    obj.release()
    if obj.status < 300 and etag_value(obj.headers.get("ETag", "")) == etag:
        return False
    if obj.status >= 300 and obj.status != 404:
        return False
    # Gone or overwritten as the current version: an older version may still need it.
    return await versions_with(gw, bucket, key, etag) is False


async def _pending(
    gw: Gateway, bucket: str, name: str, live: set[str], report: GcReport, dry_run: bool
) -> tuple[str, str]:
    """Finish, keep or delete one old pending record (see the module's docstring); which of
    them (`ACTIONS`), and what."""
    head = await gw.backend.request("HEAD", bucket, name)
    head.release()
    meta = head.user_metadata()
    if head.status >= 300 or "sg-object" not in meta:
        return _kept(report, name, "its record cannot be read")
    key, upload = unquote(meta["sg-object"]), unquote(meta.get("sg-upload", ""))
    if upload and upload_record_key(key, upload) in live:
        return _kept(report, name, "its upload can still be completed")
    try:
        salt = bytes.fromhex(name.rsplit("/", 1)[-1])
    except ValueError:
        return _kept(report, name, "its name is not a pending record's")
    carriers = await _carrying(gw, bucket, key, salt)
    if carriers is None:
        return _kept(report, name, "the backend cannot list the object's versions")
    needed = False
    for version, resp in carriers:
        manifest = record_key(key, etag_value(resp.headers.get("ETag", "")))
        if await _exists(gw, bucket, manifest):
            continue
        needed = True
        report.completions_finished.append((key, version or ""))
        if dry_run:
            continue
        try:
            # Opened as a read would: that stores its manifest and drops the pending record.
            await open_object(
                gw, Caller.operator(), bucket, key, resp, int(resp.headers.get("Content-Length", "0")), version
            )
        except (S3Error, KeyringError) as exc:
            report.completions_finished.pop()
            return _kept(report, name, f"finishing {key} failed: {exc}")
        if not await _exists(gw, bucket, manifest):
            report.completions_finished.pop()
            return _kept(report, name, f"{key} is served, but this config cannot sign its manifest")
    if needed:
        return "finish", f"the interrupted completion of {key} ({name})"
    report.pending_deleted.append(name)
    if not dry_run:
        await _delete(gw, bucket, name)
    return "delete", f"pending record {name}"


def _kept(report: GcReport, name: str, why: str) -> tuple[str, str]:
    report.pending_kept.append((name, why))
    return "keep", f"pending record {name}: {why}"


async def _delete(gw: Gateway, bucket: str, name: str) -> None:
    resp = await gw.backend.request("DELETE", bucket, name)
    resp.release()


async def _exists(gw: Gateway, bucket: str, name: str) -> bool:
    resp = await gw.backend.request("HEAD", bucket, name)
    resp.release()
    return resp.status < 300


async def _carrying(gw: Gateway, bucket: str, key: str, salt: bytes) -> list[tuple[str | None, BackendResponse]] | None:
    """The stored versions of `key` that the upload with this salt made, as (version id, HEAD
    response); None when the backend cannot tell which versions it keeps."""
    found: list[tuple[str | None, BackendResponse]] = []
    current = await gw.backend.request("HEAD", bucket, key)
    current.release()
    if current.status < 300 and made_by(current, salt):
        found.append((None, current))
    elif current.status >= 300 and current.status != 404:
        return None
    versions = await versions_of(gw, bucket, key)
    if versions is None:
        return None
    shown = current.headers.get("x-amz-version-id")
    for version, _ in versions:
        if version in ("", "null") or version == shown:
            continue
        resp = await gw.backend.request("HEAD", bucket, key, query=[("versionId", version)])
        resp.release()
        if resp.status < 300 and made_by(resp, salt):
            found.append((version, resp))
    return found


def parse_age(text: str) -> timedelta:
    """'36h', '7d', '90m', '30s' (and '0s': everything, as old as it is) -> timedelta."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if not text or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"{text!r}: use a number followed by s, m, h or d (e.g. 24h)")
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])


@click.command("gc")
@location_options(prefix=False)
@config_option()
@click.option("--older-than", default="24h", show_default=True, help="Age limit, e.g. 36h, 7d or 0s (everything).")
@dry_run_option("Only list what would be removed or finished; change nothing.")
@progress_option
@json_option
@verbosity_options
def gc_cmd(
    target: str | None,
    bucket: str | None,
    prefix: str | None,
    config_path: Path,
    older_than: str,
    dry_run: bool,
    progress: bool | None,
    progress_interval: float,
    as_json: bool,
) -> None:
    """Abort stale multipart uploads, finish completions a crash interrupted, and delete
    manifests whose object is gone.

    Works on a whole bucket: s3://BUCKET (or --bucket B). Its records are named by digests of
    object keys, which no prefix can select."""
    where = required_location(
        target, bucket, prefix, whole="gc works on whole buckets (its records are named by digests of object keys)"
    )
    try:
        age = parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    chosen = tool_logging()
    tally = start_tally(
        "gc", chosen, progress, progress_interval, dry_run=dry_run, as_json=as_json, unit="items", sizes=False
    )
    done = {"abort": "aborted", "delete": "deleted", "finish": "finished", "keep": "kept"}

    def one(action: str, what: str) -> None:
        changes = ACTIONS[action]
        verb = f"would {action}" if dry_run and changes else done[action]
        tally.done(verb, f"{verb} {what}", changes=changes)

    def work(gw: Gateway) -> Awaitable[GcReport]:  # finishing a completion unwraps its data key
        return gc(gw, where.bucket, age, dry_run=dry_run, progress=one, listed=lambda _: tally.found())

    try:
        report = run_tool(config_path, where, work, audit_as="gc")
    finally:
        tally.close()
    document = _record(tally, report, where, older_than, dry_run) if as_json else None
    finish(tally, chosen, _summary(report, dry_run), [], failed=False, as_json=document)
    if document is None:
        for name, why in report.pending_kept:
            click.echo(f"kept {name}: {why}", err=True)


def _summary(report: GcReport, dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    lines = [
        f"{verb} {len(report.uploads_aborted)} stale uploads, {len(report.manifests_deleted)} orphan manifests "
        f"and {len(report.records_deleted)} upload records ({report.kept_young} recent manifests kept)"
    ]
    if report.completions_finished or report.pending_deleted:
        finished = "would finish" if dry_run else "finished"
        lines.append(
            f"{finished} {len(report.completions_finished)} interrupted completions; "
            f"{verb} {len(report.pending_deleted)} pending records no object needs"
        )
    return "\n".join(lines)


def _record(tally: Tally, report: GcReport, where: Location, older_than: str, dry_run: bool) -> dict[str, object]:
    """gc's ``--json`` summary: what it removed, finished and kept, each by name."""
    fields: dict[str, object] = {
        "target": str(where),
        "older_than": older_than,
        "uploads_aborted": [{"key": key, "upload_id": upload} for key, upload in report.uploads_aborted],
        "manifests_deleted": report.manifests_deleted,
        "records_deleted": report.records_deleted,
        "kept_young": report.kept_young,
        "completions_finished": [{"key": key, "version_id": v} for key, v in report.completions_finished],
        "pending_deleted": report.pending_deleted,
        "pending_kept": [{"record": name, "reason": why} for name, why in report.pending_kept],
    }
    return record(tally, "gc", fields, dry_run=dry_run, skipped=[], would_change=False)
