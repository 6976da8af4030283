"""HTTP Range and conditional-request rules as S3 applies them: pure functions."""

from __future__ import annotations

import re
from datetime import datetime
from email.utils import parsedate_to_datetime

from proxy.s3.errors import S3Error

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """[start, end) of a single byte range, or None for "the whole object".

    Like S3: a header that is not one well-formed range is ignored; a satisfiable range is
    clamped to the object; an unsatisfiable one raises InvalidRange (416).
    """
    if not header:
        return None
    m = _RANGE_RE.match(header)
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or length == 0:
            raise _unsatisfiable(length)
        return max(0, length - suffix), length
    start = int(first)
    end = int(last) + 1 if last else length
    if last and end <= start:
        return None  # S3 ignores an inverted range
    if start >= length:
        raise _unsatisfiable(length)
    return start, min(end, length)


def _unsatisfiable(length: int) -> S3Error:
    return S3Error(
        "InvalidRange",
        "The requested range is not satisfiable",
        416,
        extra={"ActualObjectSize": str(length)},
    )


def etag_matches(header: str, etag: str) -> bool:
    """Whether an If-Match / If-None-Match value (a list of ETags, or *) names `etag`."""
    bare = etag.strip('"')
    for item in header.split(","):
        token = item.strip()
        if token == "*" or token.removeprefix("W/").strip('"') == bare:
            return True
    return False


def _parse_date(value: str) -> datetime | None:
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def check_conditions(
    if_match: str | None,
    if_none_match: str | None,
    if_modified_since: str | None,
    if_unmodified_since: str | None,
    etag: str,
    last_modified: datetime | None,
    *,
    is_read: bool = True,
) -> None:
    """Raise PreconditionFailed (412) or NotModified (304) as S3 does for GET and HEAD."""
    if if_match is not None:
        if not etag_matches(if_match, etag):
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold", 412)
    elif if_unmodified_since and last_modified is not None:
        since = _parse_date(if_unmodified_since)
        if since is not None and last_modified > since:
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold", 412)
    if if_none_match is not None:
        if etag_matches(if_none_match, etag):
            if is_read:
                raise S3Error("NotModified", "Not Modified", 304)
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold", 412)
    elif if_modified_since and last_modified is not None and is_read:
        since = _parse_date(if_modified_since)
        if since is not None and last_modified <= since:
            raise S3Error("NotModified", "Not Modified", 304)
