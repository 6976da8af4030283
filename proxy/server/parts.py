"""What UploadPart and UploadPartCopy requests name: the part number, the copy source's plaintext."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from aiohttp import web

from proxy.s3.errors import S3Error
from proxy.s3.routing import parse_copy_source
from proxy.server.state import CALLER
from proxy.store.gateway import Gateway
from proxy.store.objects import read_plaintext
from proxy.store.records import check_reserved
from proxy.store.uploads import MAX_PARTS


def parse_part_number(request: web.Request) -> int:
    """The request's ``partNumber`` (1-10000), or S3's InvalidArgument."""
    raw = request.query.get("partNumber", "")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PARTS:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive", 400)
    return int(raw)


_COPY_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


async def read_copy_source(gw: Gateway, request: web.Request) -> tuple[int, AsyncIterator[bytes]]:
    """The length and authenticated plaintext stream that an UploadPartCopy names
    (x-amz-copy-source and its optional x-amz-copy-source-range)."""
    src_bucket, src_key, version = parse_copy_source(request.headers["x-amz-copy-source"])
    check_reserved(src_key)
    byte_range = None
    raw_range = request.headers.get("x-amz-copy-source-range")
    if raw_range is not None:
        m = _COPY_RANGE.match(raw_range.strip())
        if not m or int(m.group(2)) < int(m.group(1)):
            raise S3Error(
                "InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last", 400
            )
        byte_range = (int(m.group(1)), int(m.group(2)))
    length, plaintext, _opened, _head = await read_plaintext(
        gw, request[CALLER], src_bucket, src_key, byte_range, version, request.headers
    )
    return length, plaintext
