"""Service and bucket operations: buckets pass through; listings show plaintext sizes."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from urllib.parse import unquote_plus
from xml.etree.ElementTree import Element

from aiohttp import web

from proxy.access.actions import delete_need
from proxy.access.authorize import check
from proxy.crypto.format import DEFAULT_SEGMENT_SIZE, FormatError, Layout
from proxy.s3.errors import S3Error
from proxy.s3.headers import ACL_HEADERS, etag_value, quoted
from proxy.s3.lifecycle import check_lifecycle
from proxy.s3.routing import LIST_PARAMS, Op
from proxy.s3.xml import XML_HEADERS, check_setting, local_name, parse, parse_client, qname, serialize
from proxy.server import bucket_access
from proxy.server.state import CALLER
from proxy.store import emptying
from proxy.store.gateway import Gateway
from proxy.store.objects import matching_etag, opaque_etag
from proxy.store.records import record_key
from proxy.store.reserved import RESERVED_PREFIX, content_md5

log = logging.getLogger("sealgate.listings")

MAX_CONTROL_BODY = 1024 * 1024


async def _read_small_body(request: web.Request) -> bytes:
    data = await request.content.read(MAX_CONTROL_BODY + 1)
    if len(data) > MAX_CONTROL_BODY:
        raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
    return data


async def _relay(
    gw: Gateway,
    method: str,
    bucket: str | None,
    *,
    query: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    status: int | None = None,
    keep: tuple[str, ...] = (),
) -> web.Response:
    resp, raw_body = await gw.backend.read_ok(method, bucket, None, query=query or [], headers=headers, body=body)
    data = b"" if method == "HEAD" else raw_body
    out = {k: resp.headers[k] for k in keep if k in resp.headers}
    if data:
        out.update(XML_HEADERS)
    return web.Response(status=status or resp.status, body=data or None, headers=out)


async def list_buckets(gw: Gateway, request: web.Request) -> web.StreamResponse:
    """ListBuckets: the backend's answer as it is."""
    return await _relay(gw, "GET", None)


async def create_bucket(gw: Gateway, request: web.Request, bucket: str) -> web.StreamResponse:
    """CreateBucket with its optional LocationConstraint document (and Object Lock, if asked)."""
    body = await _read_small_body(request)
    ownership = bucket_access.asked_ownership(request)  # checked before the bucket exists
    wanted = ("x-amz-bucket-object-lock-enabled", *ACL_HEADERS)
    headers = {k: v for k, v in request.headers.items() if k.lower() in wanted}
    answer = await _relay(gw, "PUT", bucket, headers=headers, body=body, keep=("Location",))
    await bucket_access.created(gw, bucket, ownership)
    return answer


async def delete_bucket(gw: Gateway, request: web.Request, bucket: str) -> web.StreamResponse:
    """DeleteBucket, once nothing but sealgate's own records is left in it."""
    await emptying.delete_bucket(gw, bucket)
    gw.access.forget(bucket)  # its settings went with it: a new bucket of that name starts bare
    return web.Response(status=204)


async def head_bucket(gw: Gateway, request: web.Request, bucket: str) -> web.StreamResponse:
    """HeadBucket."""
    return await _relay(gw, "HEAD", bucket, keep=("x-amz-bucket-region",))


async def get_bucket_location(gw: Gateway, request: web.Request, bucket: str) -> web.StreamResponse:
    """GetBucketLocation."""
    return await _relay(gw, "GET", bucket, query=[("location", "")])


def _listed(root: Element, el: Element, name: str) -> str:
    """The text of `name` under `el`, decoded if the listing is URL-encoded (encoding-type=url,
    which botocore always asks for: S3 encodes with ``+`` for spaces, others with ``%20``, some
    encode ``/`` too)."""
    text = el.findtext(qname(name)) or ""
    return unquote_plus(text) if (root.findtext(qname("EncodingType")) or "").lower() == "url" else text


def multipart_entries(root: Element, *, suffixed: bool = True) -> list[tuple[str, str]]:
    """(key, backend ETag) of listed objects that may be multipart: those with an ``…-N`` ETag,
    or every object when the backend does not mark multipart ETags (`suffixed` false)."""
    out = []
    for contents in _entries(root):
        key = _listed(root, contents, "Key")
        etag = etag_value(contents.findtext(qname("ETag")) or "")
        if (not suffixed or "-" in etag) and not key.startswith(RESERVED_PREFIX):
            out.append((key, etag))
    return out


def _entries(root: Element) -> list[Element]:
    """Listed objects: Contents (ListObjects) and Version (ListObjectVersions)."""
    return [*root.iter(qname("Contents")), *root.iter(qname("Version"))]


def rewrite_listing(root: Element, multipart_sizes: dict[tuple[str, str], int], *, v2: bool = False) -> bytes:
    """Plaintext sizes, non-MD5 ETags, and no trace of sealgate's reserved prefix. A ListObjectsV2
    page (`v2`) always says its KeyCount, as S3's do (some stores leave out a count of 0)."""
    layout = Layout(DEFAULT_SEGMENT_SIZE)
    hidden = 0
    entries = _entries(root)
    last_key = entries[-1].findtext(qname("Key")) if entries else None  # as the backend wrote it
    for contents in list(entries):
        key = _listed(root, contents, "Key")
        if key.startswith(RESERVED_PREFIX):
            root.remove(contents)
            hidden += 1
            continue
        size_el = contents.find(qname("Size"))
        etag_el = contents.find(qname("ETag"))
        backend_etag = etag_value(contents.findtext(qname("ETag")) or "")
        if (key, backend_etag) in multipart_sizes and size_el is not None:
            size_el.text = str(multipart_sizes[(key, backend_etag)])
        elif size_el is not None and size_el.text and size_el.text.strip().isdigit():
            # An object that is not sealgate's (migration buckets) is shown as stored.
            with suppress(FormatError):
                size_el.text = str(layout.plaintext_length(int(size_el.text)))
        if etag_el is not None and etag_el.text:
            etag_el.text = opaque_etag(etag_el.text)
    for marker in list(root.iter(qname("DeleteMarker"))):
        # Left by deleting sealgate's records in a versioned bucket.
        if _listed(root, marker, "Key").startswith(RESERVED_PREFIX):
            root.remove(marker)
            hidden += 1
    for prefix in list(root.iter(qname("CommonPrefixes"))):
        if _listed(root, prefix, "Prefix").startswith(RESERVED_PREFIX):
            root.remove(prefix)
            hidden += 1
    count = root.find(qname("KeyCount"))
    if count is None and v2:
        count = Element(qname("KeyCount"))
        root.append(count)
    if count is not None:  # what the client sees: the objects and prefixes left on the page
        count.text = str(len(list(root.iter(qname("Contents")))) + len(list(root.iter(qname("CommonPrefixes")))))
    if not v2:
        _keep_marker(root, last_key, hidden)
    return serialize(root)


def _keep_marker(root: Element, last_key: str | None, hidden: int) -> None:
    """A truncated ListObjects (V1) page without NextMarker is continued by clients from its
    last key. If sealgate hid entries, that is not the last key the backend listed, and a page
    of nothing but hidden entries has none at all (botocore's paginator then stops): so such a
    page gets the backend's last key as NextMarker. V2 and version listings carry their own
    continuation (a V2 page is not given here)."""
    v1 = local_name(root.tag) == "ListBucketResult"
    if not (v1 and hidden and last_key is not None) or root.find(qname("NextMarker")) is not None:
        return
    if (root.findtext(qname("IsTruncated")) or "").strip().lower() != "true":
        return
    marker = Element(qname("NextMarker"))
    marker.text = last_key
    root.append(marker)


#: A key after every one of sealgate's records: they are all ``.sealgate/<lowercase name>/…``.
_AFTER_RESERVED = RESERVED_PREFIX + "~"

#: Per kind of listing: the query parameters that say where a page starts, and the elements of
#: a page that say where the next one starts.
_CONTINUATION = {
    "v1": (("marker",), ("NextMarker",)),
    "v2": (("continuation-token", "start-after"), ("NextContinuationToken",)),
    "versions": (("key-marker", "version-id-marker"), ("NextKeyMarker", "NextVersionIdMarker")),
}
_ENTRIES = ("Contents", "Version", "DeleteMarker", "CommonPrefixes")

#: Backend requests a version listing page may take to get past sealgate's records.
_VERSION_FILLS = 4


def _page_names(root: Element) -> list[str]:
    """The names of a listing page's entries (objects, versions, delete markers, prefixes)."""
    return [
        _listed(root, el, "Prefix" if tag == "CommonPrefixes" else "Key")
        for tag in _ENTRIES
        for el in root.iter(qname(tag))
    ]


def _missing(root: Element, query: list[tuple[str, str]], names: list[str]) -> int:
    """How many entries a truncated page (whose entries are `names`) lacks of the max-keys asked
    for (0: none, or not truncated)."""
    if (root.findtext(qname("IsTruncated")) or "").strip().lower() != "true":
        return 0
    asked = dict(query).get("max-keys", "1000")
    visible = sum(not name.startswith(RESERVED_PREFIX) for name in names)
    return max(0, min(int(asked), 1000) - visible) if asked.isdigit() and visible < len(names) else 0


def _rest_of_page(root: Element, kind: str, names: list[str]) -> list[tuple[str, str]]:
    """Where the rest of a page starts. ListObjects(V2): after all of sealgate's records if the
    page ends among them, else where the backend says its next page starts. Versions: where the
    backend says (a key-marker alone loses a version on some backends: moto). Empty: not said."""
    last = max(names, key=lambda name: name.encode())
    if kind != "versions" and last.startswith(RESERVED_PREFIX):
        return [("start-after" if kind == "v2" else "marker", _AFTER_RESERVED)]
    if kind == "v2":
        token = root.findtext(qname("NextContinuationToken"))
        return [("continuation-token", token)] if token else []
    if kind == "v1":
        return [("marker", _listed(root, root, "NextMarker") or last)]
    key, version = _listed(root, root, "NextKeyMarker"), root.findtext(qname("NextVersionIdMarker"))
    return [("key-marker", key), ("version-id-marker", version)] if key and version else []


async def _fill_page(gw: Gateway, bucket: str, root: Element, query: list[tuple[str, str]], kind: str) -> None:
    """Fill a truncated listing page (`kind`: v1, v2 or versions) that lost entries to the
    reserved prefix up to the max-keys the client asked for, as the page would be without
    sealgate's records, by more backend requests for what is missing. Sealgate's records sort
    together, so for ListObjects(V2) one request does: they end within the page (the rest follows
    the backend's continuation) or run past its end (the rest starts after all of them). A
    version listing follows the backend's markers, for up to `_VERSION_FILLS` requests. A request
    that fails leaves the page as it is: short, and still correct."""
    starts, nexts = _CONTINUATION[kind]
    for _ in range(_VERSION_FILLS if kind == "versions" else 1):
        names = _page_names(root)
        missing = _missing(root, query, names)
        rest = _rest_of_page(root, kind, names) if missing else []
        if not rest:
            return
        follow = [(k, v) for k, v in query if k not in ("max-keys", *starts)] + [("max-keys", str(missing)), *rest]
        try:
            _resp, data = await gw.backend.read_ok("GET", bucket, None, query=follow)
            more = parse(data)
        except Exception as exc:  # noqa: BLE001 - a short page is still a correct one: keep it
            log.warning("listing %s: kept a short page, the backend did not answer for the rest: %s", bucket, exc)
            return
        root.extend(el for tag in _ENTRIES for el in more.iter(qname(tag)))
        for name in ("IsTruncated", *nexts):  # KeyCount: rewrite_listing counts the whole page
            old, new = root.find(qname(name)), more.find(qname(name))
            if old is not None:
                root.remove(old)
            if new is not None:
                root.append(new)


async def _multipart_sizes(gw: Gateway, bucket: str, entries: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Plaintext sizes of multipart objects, from their manifests' clear size field."""
    sem = asyncio.Semaphore(16)
    sizes: dict[tuple[str, str], int] = {}

    async def one(key: str, etag: str) -> None:
        async with sem:
            resp = await gw.backend.request("HEAD", bucket, record_key(key, etag))
            resp.release()
            raw = resp.headers.get("x-amz-meta-sg-size", "")
            if resp.status == 200 and raw.isdigit():
                sizes[(key, etag)] = int(raw)

    await asyncio.gather(*(one(k, e) for k, e in entries))
    return sizes


_VERSION_PARAMS = ("prefix", "delimiter", "max-keys", "key-marker", "version-id-marker", "encoding-type")


async def list_objects(gw: Gateway, request: web.Request, bucket: str, *, versions: bool = False) -> web.StreamResponse:
    """ListObjects, ListObjectsV2 and ListObjectVersions with sizes and ETags rewritten."""
    if versions:
        query = [("versions", "")] + [(k, v) for k, v in request.query.items() if k in _VERSION_PARAMS]
    else:
        query = [(k, v) for k, v in request.query.items() if k in LIST_PARAMS]
    resp, data = await gw.backend.read_ok("GET", bucket, None, query=query)
    try:
        root = parse(data)
    except Exception as exc:  # noqa: BLE001 - any malformed listing from the backend
        raise S3Error("BadGateway", "backend sent a malformed listing", 502) from exc
    kind = "versions" if versions else "v2" if request.query.get("list-type") == "2" else "v1"
    await _fill_page(gw, bucket, root, query, kind)
    body = rewrite_listing(
        root,
        await _multipart_sizes(gw, bucket, multipart_entries(root, suffixed=gw.config.backend.multipart_etag_suffix)),
        v2=kind == "v2",
    )
    return web.Response(status=200, body=body, headers={**XML_HEADERS})


async def bucket_config(gw: Gateway, request: web.Request, bucket: str, subresource: str) -> web.StreamResponse:
    """Bucket settings that pass through, GET, PUT and DELETE (a PUT's document gets the
    Content-MD5 S3 requires): versioning (every version is a whole sealgate object: reads name
    one with ``versionId``), the Object Lock configuration (default retention), tags, default
    server-side encryption (the backend's own, besides sealgate's), CORS, ACLs (they govern the
    ciphertext on the backend) and lifecycle rules, once checked to spare sealgate's records
    (`proxy.s3.lifecycle`)."""
    if request.method == "DELETE":
        answer = await _relay(gw, "DELETE", bucket, query=[(subresource, "")], status=204)
        if subresource == "cors":
            gw.cors.forget(bucket)  # once changed: a preflight in between would keep the old rules
        return answer
    if request.method == "GET":
        resp, data = await gw.backend.read_ok("GET", bucket, None, query=[(subresource, "")])
        check_setting(data, subresource)  # not a listing, from a backend that ignores the setting
        return web.Response(status=resp.status, body=data, headers=XML_HEADERS)
    body = await _read_small_body(request)
    if subresource == "acl":
        bucket_access.check_acls(request, Op.PUT_BUCKET_ACL, bucket, body)
    if subresource == "lifecycle":
        check_lifecycle(body, RESERVED_PREFIX)
    headers = {name: request.headers[name] for name in ACL_HEADERS if name in request.headers}
    if body or subresource != "acl":  # a canned ACL in a header comes without a body
        headers.update({"Content-MD5": content_md5(body), **XML_HEADERS})
    answer = await _relay(gw, "PUT", bucket, query=[(subresource, "")], headers=headers, body=body)
    if subresource == "cors":
        gw.cors.forget(bucket)
    return answer


async def delete_objects(gw: Gateway, request: web.Request, bucket: str) -> web.StreamResponse:
    """DeleteObjects (quiet or verbose) passes through once checked. An object listed with an
    ETag is deleted only if that is the ETag sealgate shows for it (see `_conditional_deletes`)."""
    body = await _read_small_body(request)
    root = parse_client(body)
    keys = [el.text or "" for el in root.iter() if local_name(el.tag) == "Key"]
    if not keys or len(keys) > 1000:
        raise S3Error("MalformedXML", "A DeleteObjects request names 1 to 1000 keys", 400)
    if any(_child(obj, "Key") is None for obj in root if local_name(obj.tag) == "Object"):
        raise S3Error("MalformedXML", "Every Object in a DeleteObjects request names a Key", 400)
    if any(k.startswith(RESERVED_PREFIX) for k in keys):
        raise S3Error("AccessDenied", f"keys under {RESERVED_PREFIX} are reserved by sealgate", 403)
    refused = _unauthorized_deletes(gw, request, bucket, root)
    conditional = any(local_name(el.tag) in _OBJECT_CONDITIONS for el in root.iter())
    if conditional:
        refused += await _conditional_deletes(gw, request, bucket, root)
    if refused or conditional:
        if not any(local_name(el.tag) == "Object" for el in root):
            return web.Response(status=200, body=_delete_result(b"", refused), headers={**XML_HEADERS})
        body = serialize(root)
    headers = {"Content-MD5": content_md5(body), **XML_HEADERS}
    resp, data = await gw.backend.read_ok("POST", bucket, None, query=[("delete", "")], headers=headers, body=body)
    if refused:
        data = _delete_result(data, refused)
    return web.Response(status=200, body=data, headers={**XML_HEADERS})


#: Per-object conditions of DeleteObjects (ETag; the other two are for directory buckets).
_OBJECT_CONDITIONS = ("ETag", "Size", "LastModifiedTime")


def _child(el: Element, name: str) -> Element | None:
    return next((c for c in el if local_name(c.tag) == name), None)


def _unauthorized_deletes(gw: Gateway, request: web.Request, bucket: str, root: Element) -> list[tuple[str, str, str]]:
    """Authorize every key of a DeleteObjects before any backend call: the refused ones are taken
    out of `root` and become that key's AccessDenied, as on S3 (the others are still deleted)."""
    caller = request[CALLER]
    refused: list[tuple[str, str, str]] = []
    for obj in [el for el in root if local_name(el.tag) == "Object"]:
        key_el, version_el = _child(obj, "Key"), _child(obj, "VersionId")
        key = (key_el.text or "") if key_el is not None else ""
        version = version_el.text if version_el is not None else None
        need = delete_need(bucket, key, version)
        if not check(gw.config, gw.audit, caller, need, buckets=bucket_access.held_policies(request)).allowed:
            refused.append((key, "AccessDenied", "Access Denied"))
            root.remove(obj)
    return refused


#: How many objects of one DeleteObjects request are checked against their ETags at once.
_CONDITION_CHECKS = 16


async def _conditional_deletes(
    gw: Gateway, request: web.Request, bucket: str, root: Element
) -> list[tuple[str, str, str]]:
    """Check the objects listed with an ETag against the ETags sealgate shows. Those that match
    stay in `root` with the backend's ETag for the object instead (so the backend refuses if it
    changed since); the others are taken out of `root` and returned as (key, code, message)."""
    objects = [el for el in root if local_name(el.tag) == "Object"]
    if any(_child(obj, name) is not None for obj in objects for name in ("Size", "LastModifiedTime")):
        raise S3Error("NotImplemented", "sealgate does not implement Size or LastModifiedTime in DeleteObjects", 501)
    conditional = [obj for obj in objects if _child(obj, "ETag") is not None]
    slots = asyncio.Semaphore(_CONDITION_CHECKS)

    async def check(obj: Element) -> tuple[str, str, str] | None:
        key_el = _child(obj, "Key")
        key = (key_el.text or "") if key_el is not None else ""
        etag_el = _child(obj, "ETag")
        assert etag_el is not None
        version_el = _child(obj, "VersionId")
        version = version_el.text if version_el is not None else None
        async with slots:
            try:
                stored = await matching_etag(gw, request[CALLER], bucket, key, etag_el.text or "", version)
            except S3Error as exc:
                return key, exc.code, exc.message
        etag_el.text = quoted(stored)
        return None

    refused: list[tuple[str, str, str]] = []
    for obj, outcome in zip(conditional, await asyncio.gather(*(check(o) for o in conditional)), strict=True):
        if outcome is not None:
            refused.append(outcome)
            root.remove(obj)
    return refused


def _delete_result(backend_answer: bytes, refused: list[tuple[str, str, str]]) -> bytes:
    """The backend's DeleteResult (or an empty one) with an Error entry for each refused key."""
    result = parse(backend_answer) if backend_answer.strip() else Element(qname("DeleteResult"))
    ns = result.tag[: result.tag.index("}") + 1] if result.tag.startswith("{") else ""
    for key, code, message in refused:
        error = Element(f"{ns}Error")
        for name, text in (("Key", key), ("Code", code), ("Message", message)):
            child = Element(f"{ns}{name}")
            child.text = text
            error.append(child)
        result.append(error)
    return serialize(result)
