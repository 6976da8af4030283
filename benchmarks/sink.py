"""A minimal in-memory S3-speaking sink for throughput runs (plain HTTP, loopback only).

It speaks just enough S3 for sealgate, nginx and the benchmark client: CreateBucket, HeadBucket,
ListBuckets, ListObjects(V2), PutObject (streamed), GetObject (with ``Range`` and ``If-Match``),
HeadObject, DeleteObject and the multipart calls (create, upload part, list parts, complete,
abort). Bodies are kept in memory as the list of chunks that arrived, so nothing is copied on the
way in and GETs re-serve the stored bytes. User metadata (``x-amz-meta-*``) and content headers
are returned as given. Signatures are ignored.

ETags are quoted hex strings. With ``--etag md5`` (the default) they are the MD5 of the stored
body, as S3 computes for unencrypted single PUTs; a multipart object's ETag is the MD5 of its
parts' binary MD5s followed by ``-N``. With ``--etag fast`` they are a random 128-bit value per
stored version (as S3's own ETags are for SSE-KMS objects): computing an MD5 costs about
1.9 CPU-seconds per GiB, which on a 2-core machine would make the sink the bottleneck of every
upload. sealgate never checks a backend ETag against the bytes it sent, so both are valid.

Run it on its own: ``python benchmarks/sink.py --port 9000 [--etag fast]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from aiohttp import web

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
#: Request headers kept with an object and returned on GET and HEAD, beside x-amz-meta-*.
KEPT_HEADERS = ("Content-Type", "Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")

log = logging.getLogger("sink")


@dataclass
class StoredObject:
    """One object version: its body as received (a list of chunks), ETag and headers."""

    chunks: list[bytes]
    size: int
    etag: str
    headers: dict[str, str]
    last_modified: float = field(default_factory=time.time)

    def slices(self, start: int, end: int) -> Iterator[memoryview]:
        """The stored bytes [start, end) as views of the stored chunks (no copies)."""
        pos = 0
        for chunk in self.chunks:
            nxt = pos + len(chunk)
            if nxt > start and pos < end:
                lo = max(start - pos, 0)
                hi = min(end - pos, len(chunk))
                yield memoryview(chunk)[lo:hi]
            if nxt >= end:
                return
            pos = nxt


@dataclass
class Upload:
    """A multipart upload in progress."""

    bucket: str
    key: str
    headers: dict[str, str]
    parts: dict[int, StoredObject] = field(default_factory=dict)


class Sink:
    """The in-memory store and its aiohttp handlers."""

    def __init__(self, etag_mode: str = "md5") -> None:
        if etag_mode not in ("md5", "fast"):
            raise ValueError("etag_mode is md5 or fast")
        self.etag_mode = etag_mode
        self.buckets: dict[str, dict[str, StoredObject]] = {}
        self.uploads: dict[str, Upload] = {}

    # --- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: str, message: str = "") -> web.Response:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message or code)}</Message></Error>"
        )
        return web.Response(status=status, body=body.encode(), content_type="application/xml")

    @staticmethod
    def _xml(root: str, inner: str) -> web.Response:
        body = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{S3_NS}">{inner}</{root}>'
        return web.Response(body=body.encode(), content_type="application/xml")

    @staticmethod
    def _kept_headers(request: web.Request) -> dict[str, str]:
        out = {name: request.headers[name] for name in KEPT_HEADERS if name in request.headers}
        for name, value in request.headers.items():
            if name.lower().startswith("x-amz-meta-"):
                out[name.lower()] = value
        return out

    async def _receive(self, request: web.Request) -> StoredObject:
        """Read the request body to the end, keeping the chunks as they arrived."""
        chunks: list[bytes] = []
        size = 0
        md5 = hashlib.md5(usedforsecurity=False) if self.etag_mode == "md5" else None
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if md5 is not None:
                md5.update(chunk)
        declared = request.content_length
        if declared is not None and declared != size:
            raise web.HTTPBadRequest(reason="body shorter than Content-Length")
        etag = md5.hexdigest() if md5 is not None else secrets.token_hex(16)
        return StoredObject(chunks, size, etag, self._kept_headers(request))

    @staticmethod
    def _split(request: web.Request) -> tuple[str, str]:
        path = request.path.lstrip("/")
        bucket, _, key = path.partition("/")
        return bucket, key

    # --- dispatch ------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Route one request by method, path and query, as S3 does."""
        bucket, key = self._split(request)
        q = request.query
        method = request.method
        if not bucket:
            if method == "GET":
                return self._list_buckets()
            return self._error(405, "MethodNotAllowed")
        if not key:
            return await self._bucket_op(request, bucket)
        objects = self.buckets.get(bucket)
        if objects is None:
            return self._error(404, "NoSuchBucket", "The specified bucket does not exist")
        if method == "POST" and "uploads" in q:
            return self._create_upload(request, bucket, key)
        if "uploadId" in q:
            upload = self.uploads.get(q["uploadId"])
            if upload is None or upload.bucket != bucket or upload.key != key:
                return self._error(404, "NoSuchUpload", "The specified upload does not exist")
            if method == "PUT":
                return await self._upload_part(request, upload)
            if method == "GET":
                return self._list_parts(upload, q["uploadId"])
            if method == "POST":
                return await self._complete(request, upload, q["uploadId"])
            if method == "DELETE":
                del self.uploads[q["uploadId"]]
                return web.Response(status=204)
            return self._error(405, "MethodNotAllowed")
        if method == "PUT":
            obj = await self._receive(request)
            objects[key] = obj
            return web.Response(headers={"ETag": f'"{obj.etag}"'})
        if method in ("GET", "HEAD"):
            found = objects.get(key)
            if found is None:
                return self._error(404, "NoSuchKey", "The specified key does not exist.")
            return await self._get(request, found)
        if method == "DELETE":
            objects.pop(key, None)
            return web.Response(status=204)
        return self._error(405, "MethodNotAllowed")

    # --- buckets -------------------------------------------------------------------------------

    def _list_buckets(self) -> web.Response:
        inner = "".join(f"<Bucket><Name>{escape(b)}</Name></Bucket>" for b in sorted(self.buckets))
        return self._xml("ListAllMyBucketsResult", f"<Owner><ID>sink</ID></Owner><Buckets>{inner}</Buckets>")

    async def _bucket_op(self, request: web.Request, bucket: str) -> web.StreamResponse:
        method = request.method
        if method == "PUT":
            await request.read()
            self.buckets.setdefault(bucket, {})
            return web.Response(headers={"Location": f"/{bucket}"})
        objects = self.buckets.get(bucket)
        if objects is None:
            return self._error(404, "NoSuchBucket", "The specified bucket does not exist")
        if method == "HEAD":
            return web.Response(headers={"x-amz-bucket-region": "us-east-1"})
        if method == "DELETE":
            if objects:
                return self._error(409, "BucketNotEmpty")
            del self.buckets[bucket]
            return web.Response(status=204)
        if method == "GET":
            return self._list_objects(request, bucket, objects)
        return self._error(405, "MethodNotAllowed")

    def _list_objects(self, request: web.Request, bucket: str, objects: dict[str, StoredObject]) -> web.Response:
        prefix = request.query.get("prefix", "")
        max_keys = int(request.query.get("max-keys", "1000"))
        keys = sorted(k for k in objects if k.startswith(prefix))
        shown = keys[:max_keys]
        contents = "".join(
            f"<Contents><Key>{escape(k)}</Key>"
            f"<LastModified>{time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime(objects[k].last_modified))}"
            f'</LastModified><ETag>"{objects[k].etag}"</ETag><Size>{objects[k].size}</Size>'
            "<StorageClass>STANDARD</StorageClass></Contents>"
            for k in shown
        )
        truncated = "true" if len(shown) < len(keys) else "false"
        count = f"<KeyCount>{len(shown)}</KeyCount>" if request.query.get("list-type") == "2" else ""
        inner = (
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><MaxKeys>{max_keys}</MaxKeys>"
            f"{count}<IsTruncated>{truncated}</IsTruncated>{contents}"
        )
        return self._xml("ListBucketResult", inner)

    # --- objects -------------------------------------------------------------------------------

    async def _get(self, request: web.Request, obj: StoredObject) -> web.StreamResponse:
        match = request.headers.get("If-Match")
        if match is not None and match.strip().strip('"') != obj.etag:
            return self._error(412, "PreconditionFailed", "At least one of the preconditions did not hold")
        headers = dict(obj.headers)
        headers["ETag"] = f'"{obj.etag}"'
        headers["Last-Modified"] = formatdate(obj.last_modified, usegmt=True)
        headers["Accept-Ranges"] = "bytes"
        start, end, status = 0, obj.size, 200
        rng = request.headers.get("Range")
        if rng:
            m = _RANGE_RE.match(rng.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)) + 1, obj.size) if m.group(2) else obj.size
                else:
                    start = max(obj.size - int(m.group(2)), 0)
                if start >= obj.size or start >= end:
                    return self._error(416, "InvalidRange", "The requested range is not satisfiable")
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{obj.size}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)
        for view in obj.slices(start, end):
            await resp.write(view)
        await resp.write_eof()
        return resp

    # --- multipart -----------------------------------------------------------------------------

    def _create_upload(self, request: web.Request, bucket: str, key: str) -> web.Response:
        upload_id = secrets.token_urlsafe(24)
        self.uploads[upload_id] = Upload(bucket, key, self._kept_headers(request))
        inner = f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
        return self._xml("InitiateMultipartUploadResult", inner)

    async def _upload_part(self, request: web.Request, upload: Upload) -> web.Response:
        raw = request.query.get("partNumber", "")
        if not raw.isdigit() or not 1 <= int(raw) <= 10000:
            return self._error(400, "InvalidArgument", "Part number must be an integer between 1 and 10000")
        part = await self._receive(request)
        upload.parts[int(raw)] = part
        return web.Response(headers={"ETag": f'"{part.etag}"'})

    def _list_parts(self, upload: Upload, upload_id: str) -> web.Response:
        parts = "".join(
            f'<Part><PartNumber>{n}</PartNumber><ETag>"{p.etag}"</ETag><Size>{p.size}</Size></Part>'
            for n, p in sorted(upload.parts.items())
        )
        inner = (
            f"<Bucket>{escape(upload.bucket)}</Bucket><Key>{escape(upload.key)}</Key>"
            f"<UploadId>{upload_id}</UploadId><IsTruncated>false</IsTruncated>{parts}"
        )
        return self._xml("ListPartsResult", inner)

    async def _complete(self, request: web.Request, upload: Upload, upload_id: str) -> web.Response:
        doc = ElementTree.fromstring(await request.read())
        wanted: list[int] = []
        for el in doc.iter():
            if el.tag.rsplit("}", 1)[-1] == "PartNumber" and el.text:
                wanted.append(int(el.text))
        if not wanted or any(n not in upload.parts for n in wanted):
            return self._error(400, "InvalidPart", "One or more of the specified parts could not be found")
        parts = [upload.parts[n] for n in wanted]
        digest = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in parts), usedforsecurity=False).hexdigest()
        etag = f"{digest}-{len(parts)}"
        chunks = [c for p in parts for c in p.chunks]
        self.buckets[upload.bucket][upload.key] = StoredObject(chunks, sum(p.size for p in parts), etag, upload.headers)
        del self.uploads[upload_id]
        inner = (
            f"<Location>/{escape(upload.bucket)}/{escape(upload.key)}</Location><Bucket>{escape(upload.bucket)}"
            f'</Bucket><Key>{escape(upload.key)}</Key><ETag>"{etag}"</ETag>'
        )
        return self._xml("CompleteMultipartUploadResult", inner)


def make_app(etag_mode: str = "md5") -> web.Application:
    """The sink as an aiohttp application (one catch-all route)."""
    sink = Sink(etag_mode)
    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_route("*", "/{tail:.*}", sink.handle)
    return app


def main() -> None:
    """Serve the sink on 127.0.0.1 until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--etag", choices=("md5", "fast"), default="md5", help="how ETags are made (see above)")
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the sink serves loopback only")
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(
        f"sink: in-memory S3 sink on http://{args.host}:{args.port} (pid {os.getpid()}, etag={args.etag})", flush=True
    )
    web.run_app(make_app(args.etag), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
