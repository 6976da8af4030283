"""The reserved prefix under which sealgate keeps its own records in every bucket, and the
Content-MD5 every record is stored with (no imports of the object layer: every store module may use it)."""

from __future__ import annotations

import base64
import hashlib

RESERVED_PREFIX = ".sealgate/"
__all__ = ["RESERVED_PREFIX", "content_md5"]


def content_md5(body: bytes) -> str:
    """The Content-MD5 header value of `body`."""
    return base64.b64encode(hashlib.md5(body).digest()).decode()
