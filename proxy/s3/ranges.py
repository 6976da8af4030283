"""HTTP Range and conditional-request rules as S3 applies them: pure functions."""

from __future__ import annotations

import re
from datetime import datetime
from email.utils import parsedate_to_datetime

from proxy.s3.errors import S3Error, precondition_failed

# [0-9], not \d: RFC 7233's DIGIT is ASCII, and int() would read other scripts' digits too.
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*$")


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
    first, last = (g.lstrip("0") or g[:1] for g in m.groups())  # "007" -> "7", "000" -> "0"
    if not first and not last:
        return None
    if not first:
        suffix = _at_most(last, length)
        if suffix == 0 or length == 0:
            raise _unsatisfiable(length)
        return length - suffix, length
    if last and (len(last), last) < (len(first), first):
        return None  # S3 ignores an inverted range
    start = _at_most(first, length)
    if start >= length:
        raise _unsatisfiable(length)
    return start, (_at_most(last, length - 1) + 1 if last else length)


def _at_most(digits: str, bound: int) -> int:
    """min(int(digits), bound) for digits without leading zeros, never int() of a long string
    (Python refuses more than 4300 digits: a long Range header would otherwise be a 500)."""
    return bound if len(digits) > len(str(bound)) else min(int(digits), bound)


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
            raise precondition_failed()
    elif if_unmodified_since and last_modified is not None:
        since = _parse_date(if_unmodified_since)
        if since is not None and last_modified > since:
            raise precondition_failed()
    if if_none_match is not None:
        if etag_matches(if_none_match, etag):
            if is_read:
                raise S3Error("NotModified", "Not Modified", 304)
            raise precondition_failed()
    elif if_modified_since and last_modified is not None and is_read:
        since = _parse_date(if_modified_since)
        if since is not None and last_modified <= since:
            raise S3Error("NotModified", "Not Modified", 304)
