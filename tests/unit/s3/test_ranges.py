"""Range and conditional-request rules (proxy/s3/ranges.py) against simple references: RFC 7233
byte ranges as S3 applies them, RFC 7232 preconditions as S3 orders them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.s3.errors import S3Error
from proxy.s3.ranges import check_conditions, etag_matches, parse_range

UNSATISFIABLE = object()


def reference(first: int | None, last: int | None, length: int) -> tuple[int, int] | None | object:
    """The bytes a single range selects, counted one by one (RFC 7233 section 2.1).

    None: the header is ignored (no numbers, or last < first); UNSATISFIABLE: nothing selected.
    """
    if first is None and last is None:
        return None
    if first is not None and last is not None and last < first:
        return None
    if first is None:
        assert last is not None
        picked = [i for i in range(length) if i >= length - last]
    else:
        picked = [i for i in range(length) if i >= first and (last is None or i <= last)]
    if not picked:
        return UNSATISFIABLE
    return picked[0], picked[-1] + 1


def header(first: int | None, last: int | None) -> str:
    return f"bytes={'' if first is None else first}-{'' if last is None else last}"


def outcome(text: str, length: int) -> tuple[int, int] | None | object:
    try:
        return parse_range(text, length)
    except S3Error as err:
        # Every refusal is S3's 416, naming the object's size.
        assert (err.code, err.status, err.extra) == ("InvalidRange", 416, {"ActualObjectSize": str(length)})
        return UNSATISFIABLE


@settings(max_examples=500, deadline=None)
@given(
    length=st.integers(0, 300),
    first=st.none() | st.integers(0, 400),
    last=st.none() | st.integers(0, 400),
)
def test_single_ranges_match_the_reference(length: int, first: int | None, last: int | None) -> None:
    assert outcome(header(first, last), length) == reference(first, last, length)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), first=st.integers(0, 250), span=st.integers(0, 250))
def test_a_range_is_a_slice_of_the_object(data: bytes, first: int, span: int) -> None:
    got = outcome(header(first, first + span), len(data))
    if first >= len(data):
        assert got is UNSATISFIABLE
    else:
        assert isinstance(got, tuple)
        assert data[got[0] : got[1]] == data[first : first + span + 1]


@pytest.mark.parametrize(
    ("text", "length", "want"),
    [
        ("bytes=0-0", 10, (0, 1)),
        ("bytes=0-", 10, (0, 10)),
        ("bytes=9-", 10, (9, 10)),
        ("bytes=5-1000", 10, (5, 10)),  # clamped to the object
        ("bytes=-3", 10, (7, 10)),  # the last three bytes
        ("bytes=-10", 10, (0, 10)),
        ("bytes=-1000", 10, (0, 10)),  # a suffix longer than the object: all of it
        ("bytes=007-008", 10, (7, 9)),
        (" bytes = 2 - 3 ", 10, (2, 4)),  # whitespace around the parts is tolerated
        ("bytes=5-4", 10, None),  # inverted: ignored
        ("bytes=50-4", 10, None),  # inverted beyond the end: still ignored, not 416
    ],
)
def test_examples(text: str, length: int, want: tuple[int, int] | None) -> None:
    assert parse_range(text, length) == want


@pytest.mark.parametrize(
    ("text", "length"),
    [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0), ("bytes=0-0", 0)],
)
def test_unsatisfiable_ranges(text: str, length: int) -> None:
    with pytest.raises(S3Error) as err:
        parse_range(text, length)
    assert (err.value.code, err.value.status, err.value.extra) == (
        "InvalidRange",
        416,
        {"ActualObjectSize": str(length)},
    )


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "bytes=",
        "bytes=-",
        "bytes=0-1,3-4",  # several ranges: S3 answers with the whole object
        "items=0-1",
        "bytes 0-1",
        "0-1",
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes=--1",
        "bytes=+1-2",
        "bytes=0x1-2",
        "bytes=1.5-2",
        "bytes=\u0661-\u0664",  # Arabic-Indic digits are not RFC 7233 DIGITs
        "bytes=\uff11-\uff12",  # nor are full-width ones
    ],
)
def test_what_is_not_one_range_is_ignored(text: str | None) -> None:
    assert parse_range(text, 10) is None


def test_numbers_of_any_length() -> None:
    # Python refuses int() of more than 4300 digits; a header that long must not become a 500.
    huge = "9" * 5000
    assert parse_range(f"bytes=0-{huge}", 10) == (0, 10)
    assert parse_range(f"bytes=-{huge}", 10) == (0, 10)
    assert parse_range(f"bytes=3-{'0' * 5000}7", 10) == (3, 8)
    assert parse_range(f"bytes={huge}-1", 10) is None  # inverted
    assert parse_range(f"bytes={huge}8-{huge}", 10) is None  # inverted, both huge
    assert parse_range(f"bytes=0000-{huge}", 10) == (0, 10)
    for text in (f"bytes={huge}-", f"bytes={huge}-{huge}", f"bytes=1{huge}-2{huge}"):
        with pytest.raises(S3Error) as err:
            parse_range(text, 10)
        assert err.value.code == "InvalidRange"


# --------------------------------------------------------------------------- ETags and preconditions


@pytest.mark.parametrize(
    ("value", "etag", "matches"),
    [
        ('"abc"', '"abc"', True),
        ("abc", '"abc"', True),
        ('"abc"', "abc", True),
        ("*", '"abc"', True),
        ('"x", "abc"', '"abc"', True),
        ('"x",W/"abc"', '"abc"', True),  # weak comparison, as S3 does
        ('"x", "y"', '"abc"', False),
        ('"ab"', '"abc"', False),
        ('"abc-2"', '"abc"', False),
        ("", '"abc"', False),
    ],
)
def test_etag_matches(value: str, etag: str, matches: bool) -> None:
    assert etag_matches(value, etag) is matches


ETAG = '"e1"'
MODIFIED = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BEFORE = "Sat, 31 May 2025 12:00:00 GMT"
AT = "Sun, 01 Jun 2025 12:00:00 GMT"
AFTER = "Mon, 02 Jun 2025 12:00:00 GMT"


def answer(
    *,
    if_match: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
    if_unmodified_since: str | None = None,
    is_read: bool = True,
    last_modified: datetime | None = MODIFIED,
) -> int:
    try:
        check_conditions(
            if_match, if_none_match, if_modified_since, if_unmodified_since, ETAG, last_modified, is_read=is_read
        )
    except S3Error as err:
        assert err.code == {304: "NotModified", 412: "PreconditionFailed"}[err.status]
        return err.status
    return 200


@pytest.mark.parametrize(
    ("conditions", "status"),
    [
        ({}, 200),
        ({"if_match": ETAG}, 200),
        ({"if_match": '"other"'}, 412),
        ({"if_match": "*"}, 200),
        ({"if_none_match": ETAG}, 304),
        ({"if_none_match": '"other"'}, 200),
        ({"if_none_match": "*"}, 304),
        ({"if_modified_since": BEFORE}, 200),
        ({"if_modified_since": AT}, 304),
        ({"if_modified_since": AFTER}, 304),
        ({"if_unmodified_since": BEFORE}, 412),
        ({"if_unmodified_since": AT}, 200),
        ({"if_unmodified_since": AFTER}, 200),
        ({"if_modified_since": "not a date"}, 200),  # an unreadable date is ignored
        ({"if_unmodified_since": "not a date"}, 200),
        ({"if_unmodified_since": BEFORE, "last_modified": None}, 200),  # nothing to compare with
        # S3's order (RFC 7232 section 6): If-Match decides before If-Unmodified-Since ...
        ({"if_match": ETAG, "if_unmodified_since": BEFORE}, 200),
        ({"if_match": '"other"', "if_unmodified_since": AFTER}, 412),
        # ... and If-None-Match before If-Modified-Since.
        ({"if_none_match": ETAG, "if_modified_since": BEFORE}, 304),
        ({"if_none_match": '"other"', "if_modified_since": AFTER}, 200),
        # A failed If-Match wins over a matching If-None-Match.
        ({"if_match": '"other"', "if_none_match": ETAG}, 412),
        ({"if_match": ETAG, "if_none_match": ETAG}, 304),
        # On writes a matching If-None-Match is a failed precondition, and dates are not checked.
        ({"if_none_match": "*", "is_read": False}, 412),
        ({"if_none_match": '"other"', "is_read": False}, 200),
        ({"if_modified_since": AFTER, "is_read": False}, 200),
        ({"if_match": '"other"', "is_read": False}, 412),
    ],
)
def test_preconditions(conditions: dict[str, object], status: int) -> None:
    assert answer(**conditions) == status  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(offset=st.integers(-5, 5), modified=st.booleans(), unmodified=st.booleans())
def test_dates_compare_to_the_second(offset: int, modified: bool, unmodified: bool) -> None:
    when = (MODIFIED + timedelta(seconds=offset)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    status = answer(
        if_modified_since=when if modified else None,
        if_unmodified_since=when if unmodified else None,
    )
    expected = 200
    if unmodified and offset < 0:  # modified after the given date
        expected = 412
    elif modified and offset >= 0:  # not modified since
        expected = 304
    assert status == expected
