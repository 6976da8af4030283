"""`sealgate convert`: re-encrypt objects between sealgate's format and the S3EC's V3.

Each object is read with the proxy's own decrypt code (`store.objects.read_plaintext` for sealgate
objects, `store.s3ec.s3ec_plaintext` for S3EC ones, instruction files included) and written back
under the same key with its own encrypt code (`store.bodies.send_sealed` / `store.s3ec.write_s3ec_v3`),
streaming: nothing is held in memory but a segment. The writer holds back its last bytes (the
final segment, the GCM tag) until the reader has authenticated the whole source, so an object
that fails authentication is left as it was. Each object changes in one backend PUT.

It never writes what the config it runs under would refuse to serve (`Serving`): such an object
is skipped, with the reason, before anything about it changes.

Safe to interrupt and re-run: objects already in the target format are skipped, and an
interrupted object is still the old one. Like `rewrap`, run it while nothing else writes under
the prefix (a write that lands between the read and the PUT would be overwritten). In a
versioned bucket the old version stays, in the old format.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlencode

import aiohttp
import click

from proxy.access.authorize import Caller
from proxy.crypto import s3ec, s3ec_keys, signing
from proxy.crypto.format import ALL_META, LAYOUT_SINGLE, Envelope, FormatError, is_sealgate_object, stream_key
from proxy.crypto.segments import StreamEncryptor
from proxy.kms import asymmetric
from proxy.kms.base import KeyringError
from proxy.kms.keystore import KeyringFileError
from proxy.s3.errors import S3Error
from proxy.s3.headers import CARRIED_HEADERS
from proxy.s3.xml import parse, qname
from proxy.store import s3ec as s3ec_objects
from proxy.store.bodies import send_sealed
from proxy.store.gateway import Gateway
from proxy.store.listing import list_keys
from proxy.store.objects import ETAG_TAIL, MAX_PUT_SIZE, read_plaintext, seal_envelope
from proxy.store.records import record_key
from proxy.store.signatures import trusted_signers
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

# Named as before the move to tools/: operators filter logs on it.
log = logging.getLogger("proxy.convert")

Target = Literal["sealgate", "s3ec-v3"]
TARGETS: tuple[Target, ...] = ("sealgate", "s3ec-v3")


class ConvertError(Exception):
    """A problem with the run as a whole (not with one object)."""


@dataclass
class ConvertReport:
    """What a run did: counts, and each skipped or failed key with the reason."""

    converted: int = 0
    bytes: int = 0
    already: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: True when `limit` stopped the run before the listing ended.
    stopped_at_limit: bool = False


@dataclass(frozen=True)
class Outcome:
    """One object's result: "converted", "already", "skipped" or "failed" (and why)."""

    status: Literal["converted", "already", "skipped", "failed"]
    reason: str = ""
    size: int = 0


class _Source:
    """Plaintext of a known length, its MD5 computed on the way (what `send_sealed` reads)."""

    def __init__(self, pieces: AsyncIterator[bytes], length: int) -> None:
        self._pieces = pieces
        self.length = length
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._done = False

    @property
    def md5(self) -> bytes | None:
        return self._md5.digest() if self._done else None

    async def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        seen = 0
        async for piece in self._pieces:
            self._md5.update(piece)
            seen += len(piece)
            yield piece
        if seen != self.length:
            raise FormatError(f"source gave {seen} bytes, not {self.length}")
        self._done = True


def _carried_headers(head_headers: Mapping[str, str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name in CARRIED_HEADERS:  # user metadata and tags are carried as well
        value = head_headers.get(name)
        if value:
            headers[name] = value
    return headers


async def _tagging(gw: Gateway, bucket: str, key: str, tag_count: str | None) -> dict[str, str]:
    """The object's tags as an ``x-amz-tagging`` header (a PUT would drop them otherwise)."""
    if not tag_count or tag_count == "0":
        return {}
    _, doc = await gw.backend.read_ok("GET", bucket, key, query=[("tagging", "")])
    root = parse(doc)
    pairs = [(t.findtext(qname("Key")) or "", t.findtext(qname("Value")) or "") for t in root.iter(qname("Tag"))]
    return {"x-amz-tagging": urlencode(pairs)} if pairs else {}


async def _delete(gw: Gateway, bucket: str, key: str) -> None:
    resp = await gw.backend.request("DELETE", bucket, key)
    resp.release()
    if resp.status >= 300 and resp.status != 404:
        log.warning("could not delete /%s/%s after converting (status %d)", bucket, key, resp.status)


class Unservable(Exception):
    """The object as convert would write it is one the config in force would not serve: it is
    skipped (reported, left exactly as it was)."""


@dataclass(frozen=True)
class _KeyFacts:
    #: This config unwraps what it wraps under the key (not encrypt-only, not a public half only).
    reads_back: bool
    #: S3EC V3 can wrap under it: a symmetric KMS key (kms+context) or a local AES-256 key.
    symmetric: bool
    #: Its key policy serves objects only if one of its ``trusted_signers`` signed them.
    needs_signature: bool
    #: This config signs with one of those (its keyring's ed25519-signing key).
    signs_trusted: bool


def verify_limit(gw: Gateway) -> int:
    """The largest S3EC object sealgate serves verify-first under this config (`store.s3ec.verify_limit`)."""
    return s3ec_objects.verify_limit(gw.config.server.verify_first_memory_bytes)


def _clear_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


class Serving:
    """Whether sealgate, under the config convert runs with, would serve an object as convert is
    about to write it; asked before anything about the object changes.

    "Would not serve" means refused whoever asks: by the target format's limits (S3EC's
    verify-first size, `verify_limit`, without the bucket's ``s3ec_delayed_authentication``), by
    the key's mode here (encrypt-only, or only the public half of a local key), by its
    ``trusted_signers`` (which no S3EC object satisfies, and a sealgate object only if this
    config signs with one of them), by what S3EC's metadata in the clear cannot carry. One
    client's key policy is not part of it: convert runs as the operator. The S3EC objects
    convert writes are the proxy's own (`write_s3ec_v3`), which every bucket serves."""

    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        self._keys: dict[str, _KeyFacts] = {}

    def _facts(self, key_id: str) -> _KeyFacts:
        facts = self._keys.get(key_id)
        if facts is None:
            facts = self._keys[key_id] = self._look_up(key_id)
        return facts

    def _look_up(self, key_id: str) -> _KeyFacts:
        config, local = self._gw.config, self._gw.local_keys
        readable = not config.encrypt_only(key_id)
        trusted = trusted_signers(self._gw, key_id)
        signer = local.signer() if local is not None else None  # what store/signatures signs with
        signs = signer is not None and signing.public_key(signer[1]) in trusted
        if local is None:
            return _KeyFacts(readable, key_id not in config.kms.rsa_keys, bool(trusted), signs)
        try:
            store = local.reopen_store()
        except KeyringFileError:
            return _KeyFacts(readable, True, bool(trusted), signs)  # the keyring's own call says what is wrong
        if store.key_type(key_id) == "aes-256":
            return _KeyFacts(readable, True, bool(trusted), signs)
        current = store.current(key_id)
        private = current is not None and asymmetric.load_private(current[1]) is not None
        return _KeyFacts(readable and private, False, bool(trusted), signs)

    def source(self, key_ref: str) -> None:
        """Unservable if the key that opens the source is encrypt-only here (as rewrap and copy,
        convert reads nothing that this config refuses every read of)."""
        if self._gw.config.encrypt_only(key_ref):
            raise Unservable(
                f"its key {key_ref!r} is encrypt-only in this config, which reads nothing under it; "
                "run convert with a config where the key may decrypt"
            )

    def target_key(self, bucket: str, key: str, to: Target) -> None:
        """Unservable if the bucket's key, which the converted object is written under, is one this
        config cannot read back, or (s3ec-v3) one S3EC cannot wrap with."""
        key_id = self._gw.config.key_for_bucket(bucket, key)
        facts = self._facts(key_id)
        if not facts.reads_back:
            raise Unservable(
                f"it would be written under the bucket's key {key_id!r}, which this config encrypts under but "
                "cannot decrypt (encrypt-only), so sealgate could not serve it back; run convert with a config "
                "that holds the key's decrypting half"
            )
        if to == "s3ec-v3" and not facts.symmetric:
            raise Unservable(
                f"S3EC V3 wraps data keys with a symmetric key (KMS kms+context, or a local AES-256 key) and the "
                f"bucket's key {key_id!r} is not one"
            )
        if to == "s3ec-v3" and facts.needs_signature:
            raise Unservable(
                f"objects under the bucket's key {key_id!r} must be signed by one of its trusted_signers, and an "
                "S3EC object carries no sender signature"
            )
        if to == "sealgate" and facts.needs_signature and not facts.signs_trusted:
            raise Unservable(
                f"objects under the bucket's key {key_id!r} are served only if one of its trusted_signers signed "
                "them, and this config's keyring holds none of their signing keys"
            )

    def target_object(self, bucket: str, key: str, to: Target, length: int, user: Mapping[str, str]) -> None:
        """Unservable if an s3ec-v3 object of `length` plaintext bytes and user metadata `user`
        would be refused on GET, or would not carry that metadata as it is."""
        if to != "s3ec-v3":
            return
        limit = verify_limit(self._gw)
        if length > limit and not s3ec_objects.delayed_ok(self._gw, bucket, key):
            raise Unservable(
                f"{length} bytes is above the S3EC verify-first limit ({limit} bytes: 64 MiB, or "
                "server.verify_first_memory_bytes if less), and sealgate refuses to serve larger S3EC objects unless "
                "the bucket's rule sets s3ec_delayed_authentication = true"
            )
        clash = sorted(n for n in user if n in s3ec_objects.S3EC_FIELDS or n in ALL_META)
        if clash:
            raise Unservable(
                f"its user metadata {', '.join(clash)} would be read as envelope fields: S3EC keeps user metadata "
                "in the clear, beside its envelope"
            )
        odd = sorted(repr(n) for n, v in user.items() if not (_clear_ascii(n) and _clear_ascii(v)))
        if odd:
            raise Unservable(
                f"its user metadata {', '.join(odd)} is not printable US-ASCII, which S3EC's metadata in the clear "
                "cannot carry as it is"
            )


async def _to_s3ec(
    gw: Gateway, serving: Serving, bucket: str, key: str, meta: Mapping[str, str], dry_run: bool = False
) -> int:
    """A sealgate object, rewritten as S3EC V3 (kms+context) (with `dry_run`, only opened and
    checked). Returns the plaintext size."""
    serving.source(Envelope.from_metadata(meta).key_ref)
    serving.target_key(bucket, key, "s3ec-v3")
    length, plaintext, opened, head = await read_plaintext(gw, Caller.operator(), bucket, key, None)
    if length > MAX_PUT_SIZE - s3ec.TAG_SIZE:
        raise ConvertObjectError(f"{length} bytes is more than one PUT takes (5 GiB)")
    serving.target_object(bucket, key, "s3ec-v3", length, opened.meta.user)
    if dry_run:
        return length  # the body is never fetched
    headers = _carried_headers(head.headers)
    # The S3EC keeps user metadata in the clear: it leaves the sealed envelope here.
    headers.update({f"x-amz-meta-{k}": v for k, v in opened.meta.user.items()})
    headers.update(await _tagging(gw, bucket, key, head.headers.get("x-amz-tagging-count")))
    await s3ec_objects.write_s3ec_v3(gw, Caller.operator(), bucket, key, plaintext, length, headers)
    if opened.manifest is not None:
        await _delete(gw, bucket, record_key(key, head.headers.get("ETag", "")))
    return length


async def _from_s3ec(
    gw: Gateway,
    serving: Serving,
    bucket: str,
    key: str,
    head_headers: Mapping[str, str],
    meta: dict[str, str],
    envelope: dict[str, str],
    to: Target,
    dry_run: bool = False,
) -> int:
    """An S3EC object (V2, or V3 with its envelope in an instruction file...), rewritten in
    sealgate's format or as S3EC V3 with its metadata in the object (with `dry_run`, only opened
    and checked). Returns the plaintext size."""
    # S3EC records no key id: the bucket's key opens it, and is the one it is written under.
    serving.source(gw.config.key_for_bucket(bucket, key))
    serving.target_key(bucket, key, to)
    total = int(head_headers.get("Content-Length") or "0")
    length, plaintext = await s3ec_objects.s3ec_plaintext(
        gw, bucket, key, envelope, head_headers.get("ETag") or "", total
    )
    if length > MAX_PUT_SIZE - s3ec.TAG_SIZE:
        raise ConvertObjectError(f"{length} bytes is more than one PUT takes (5 GiB)")
    user = s3ec_objects.user_metadata(meta)
    serving.target_object(bucket, key, to, length, user)
    if dry_run:
        return length
    carried = _carried_headers(head_headers)
    carried.update(await _tagging(gw, bucket, key, head_headers.get("x-amz-tagging-count")))
    if to == "s3ec-v3":
        carried.update({f"x-amz-meta-{k}": v for k, v in user.items()})
        await s3ec_objects.write_s3ec_v3(gw, Caller.operator(), bucket, key, plaintext, length, carried)
    else:
        key_id = gw.config.key_for_bucket(bucket, key)
        data_key, env = await seal_envelope(
            gw, key_id, bucket, key, user, layout=LAYOUT_SINGLE, etag_field=ETAG_TAIL, size=length
        )
        headers = {f"x-amz-meta-{k}": v for k, v in env.to_metadata().items()}
        headers.update(carried)
        encryptor = StreamEncryptor(stream_key(data_key, env.salt, 0), env.segment_size)
        await send_sealed(gw, bucket, key, _Source(plaintext, length), encryptor, digest_md5=True, headers=headers)
    if s3ec.META_V3_KEY not in meta and s3ec.META_KEY_V2 not in meta and s3ec.META_KEY_V1 not in meta:
        # The envelope came from KEY.instruction: it describes nothing any more.
        await _delete(gw, bucket, key + s3ec.INSTRUCTION_SUFFIX)
    return length


class ConvertObjectError(Exception):
    """This object cannot be converted (reported, the run goes on)."""


async def _served_as_v3(gw: Gateway, bucket: str, key: str, envelope: Mapping[str, str]) -> bool:
    """Whether an S3EC V3 object is served where it is, so that `--to s3ec-v3` has nothing to do:
    bound to this name, or bound to none in a bucket that serves such objects (store/s3ec's read
    rule). One bound to no name elsewhere is converted, which binds it; one bound to another name
    is converted too, which fails on its name check and reports it as tampered, left as it was."""
    if s3ec_objects.unbound_reads_ok(gw, bucket, key):
        return True
    named = s3ec.context_name(envelope)
    if named is not None:
        return named == (bucket, s3ec.context_key(key))
    if s3ec.parse(envelope).wrap_alg == s3ec.WRAP_KMS_CONTEXT:
        return False  # sealgate binds every kms+context object it writes in its context
    # AES/GCM and RSA-OAEP: only the message id can bind the name, known once the key is open.
    materials = await s3ec_objects.open_s3ec(gw, Caller.operator(), bucket, key, envelope)
    return s3ec_keys.name_binding(materials, bucket, key) is True


async def convert_object(
    gw: Gateway, bucket: str, key: str, to: Target, serving: Serving | None = None, *, dry_run: bool = False
) -> Outcome:
    """Convert one object to `to`; failures come back as an `Outcome`, never raised. An object
    the config would not serve in the target format (`Serving`) is skipped, untouched. With
    `dry_run` the object is opened (its key unwrapped) and checked, but its body is not read
    and nothing is written: "converted" means it would be."""
    serving = serving or Serving(gw)
    try:
        head = await gw.backend.request("HEAD", bucket, key)
        head.release()
        if head.status == 404:
            # Deleted since it was listed, such as the instruction file of an object just converted.
            return Outcome("skipped", "gone since it was listed")
        if head.status >= 300:
            raise await head.error()
        meta = head.user_metadata()
        if is_sealgate_object(meta):
            if to == "sealgate":
                return Outcome("already")
            return Outcome("converted", size=await _to_s3ec(gw, serving, bucket, key, meta, dry_run))
        envelope = await s3ec_objects.s3ec_metadata(gw, bucket, key, meta)
        if envelope is None:
            if key.endswith(s3ec.INSTRUCTION_SUFFIX):
                return Outcome("skipped", "an S3EC instruction file (converted with its object)")
            instr = await gw.backend.request("HEAD", bucket, key + s3ec.INSTRUCTION_SUFFIX)
            instr.release()
            if instr.status == 200:
                return Outcome(
                    "skipped",
                    f"has an S3EC instruction file ({key}{s3ec.INSTRUCTION_SUFFIX}): set s3ec_instruction_files = true "
                    "in the bucket's rule to read or convert it",
                )
            return Outcome("skipped", "not encrypted (neither a sealgate nor an S3EC object)")
        if (
            to == "s3ec-v3"
            and s3ec.detect(envelope) == s3ec.FORMAT_V3
            and await _served_as_v3(gw, bucket, key, envelope)
        ):
            return Outcome("already")
        # S3EC V1/V2 become V3 too: the official client's default policy reads only V3.
        size = await _from_s3ec(gw, serving, bucket, key, head.headers, meta, envelope, to, dry_run)
        return Outcome("converted", size=size)
    except Unservable as exc:
        return Outcome("skipped", f"not converted, left as it was: {exc}")
    except S3Error as exc:
        return Outcome("failed", f"{exc.code}: {exc.message}")
    except KeyringError as exc:
        return Outcome("failed", f"{exc.code}: {exc.message}")
    except FormatError as exc:
        return Outcome("failed", f"not converted, left as it was: {exc}")
    except ConvertObjectError as exc:
        return Outcome("failed", str(exc))
    except (OSError, aiohttp.ClientError) as exc:
        # The backend went away mid-object: the PUT did not complete, the object is as it was.
        return Outcome("failed", f"backend connection failed, left as it was: {type(exc).__name__}")


async def convert(
    gw: Gateway,
    bucket: str,
    prefix: str,
    to: Target,
    *,
    limit: int | None = None,
    progress: Callable[[str, Outcome], None] | None = None,
    listed: Callable[[tuple[str, int]], None] | None = None,
    dry_run: bool = False,
) -> ConvertReport:
    """Convert every object under `prefix` to `to`, at most `limit` of them in this run (with
    `dry_run`, report what would be converted and write nothing); failures are reported, not
    fatal. `listed` hears of each object as the listing (fetched ahead) finds it."""
    if to not in TARGETS:
        raise ConvertError(f"unknown target format {to!r} (one of {', '.join(TARGETS)})")

    report = ConvertReport()
    serving = Serving(gw)
    async with Ahead(list_keys(gw, bucket, prefix), listed) as found:
        async for key, _size in found:
            if limit is not None and report.converted >= limit:
                report.stopped_at_limit = True
                break
            outcome = await convert_object(gw, bucket, key, to, serving, dry_run=dry_run)
            if outcome.status == "converted":
                report.converted += 1
                report.bytes += outcome.size
            elif outcome.status == "already":
                report.already += 1
            elif outcome.status == "skipped":
                report.skipped.append((key, outcome.reason))
            else:
                report.failed.append((key, outcome.reason))
            if progress is not None:
                progress(key, outcome)
    return report


# --- the command -------------------------------------------------------------------------------


@click.command("convert")
@location_options()
@click.option(
    "--to",
    "to",
    type=click.Choice(TARGETS),
    required=True,
    help="Target format: sealgate's own, or the AWS S3 Encryption Client's V3 (kms+context).",
)
@config_option()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Convert at most this many objects, then stop.")
@dry_run_option("List what would be converted (each object opened and checked, no body read); write nothing.")
@progress_option
@json_option
@verbosity_options
def convert_cmd(
    target: str | None,
    bucket: str | None,
    prefix: str | None,
    to: Target,
    config_path: Path,
    limit: int | None,
    dry_run: bool,
    progress: bool | None,
    progress_interval: float,
    as_json: bool,
) -> None:
    """Re-encrypt objects from one format to the other (sealgate <-> S3EC V3), in place.

    Works on s3://BUCKET[/PREFIX] (or --bucket B --prefix P). Talks to the backend and KMS with
    the config's credentials (no client key policy applies). Objects already in the target
    format are skipped, so it is safe to interrupt and re-run. For S3EC objects the bucket's
    key (buckets.key or kms.default_key) is the KMS key."""
    where = required_location(target, bucket, prefix)
    chosen = tool_logging()
    verb = "would convert" if dry_run else "converted"
    tally = start_tally(f"convert to {to}", chosen, progress, progress_interval, dry_run=dry_run, as_json=as_json)

    def one(key: str, outcome: Outcome) -> None:
        word = verb if outcome.status == "converted" else outcome.status
        line = f"{word} s3://{where.bucket}/{key}" + (f": {outcome.reason}" if outcome.reason else "")
        tally.done(word, line, size=outcome.size, changes=outcome.status == "converted", item=key)

    def work(gw: Gateway) -> Awaitable[ConvertReport]:
        return convert(
            gw,
            where.bucket,
            where.prefix,
            to,
            limit=limit,
            progress=one,
            listed=lambda _: tally.found(),
            dry_run=dry_run,
        )

    try:
        report = run_tool(config_path, where, work, audit_as=None)
    finally:
        tally.close()
    summary = (
        f"{verb} {report.converted} objects ({report.bytes} bytes) to {to}, {report.already} already {to}, "
        f"{len(report.skipped)} skipped, {len(report.failed)} failed"
    )
    problems = [("skipped", key, why) for key, why in report.skipped] + [("failed", k, w) for k, w in report.failed]
    then = f"stopped after --limit {limit}; run again to go on" if report.stopped_at_limit else ""
    fields: dict[str, object] = {
        "target": str(where),
        "to": to,
        "converted": report.converted,
        "bytes": report.bytes,
        "already": report.already,
        "stopped_at_limit": report.stopped_at_limit,
    }
    document = record(tally, "convert", fields, dry_run=dry_run, skipped=report.skipped, failed=report.failed)
    # Skipped objects are listed but fail nothing: they were left as they were, by design.
    finish(
        tally, chosen, summary, problems, then=then, failed=bool(report.failed), as_json=document if as_json else None
    )
