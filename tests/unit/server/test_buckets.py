"""Listing rewrites on backend answers as different stores write them (pure, no I/O)."""

from __future__ import annotations

from defusedxml import ElementTree

from proxy.server.buckets import multipart_entries, rewrite_listing

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def _listing(keys: list[tuple[str, str, int]], prefixes: list[str], encoding: str | None) -> str:
    contents = "".join(
        f"<Contents><Key>{k}</Key><ETag>&quot;{e}&quot;</ETag><Size>{n}</Size></Contents>" for k, e, n in keys
    )
    common = "".join(f"<CommonPrefixes><Prefix>{p}</Prefix></CommonPrefixes>" for p in prefixes)
    enc = f"<EncodingType>{encoding}</EncodingType>" if encoding else ""
    count = f"<KeyCount>{len(keys) + len(prefixes)}</KeyCount>"
    return f'<ListBucketResult xmlns="{NS}">{count}{enc}{contents}{common}</ListBucketResult>'


def test_encoded_names_are_decoded_for_manifests_and_the_reserved_prefix() -> None:
    # Some stores (DigitalOcean Spaces) encode "/" as well; S3 writes spaces as "+".
    doc = _listing(
        [
            (".sealgate%2Fmp%2Fabc%2Fdef-2", "x", 100),
            ("dir+a%2Fm%2Bp+%C3%A9", "0123-2", 5_300_000),
        ],
        [".sealgate%2F", "dir+a%2F"],
        "url",
    )
    root = ElementTree.fromstring(doc)
    assert multipart_entries(root) == [("dir a/m+p é", "0123-2")]
    out = rewrite_listing(root, {("dir a/m+p é", "0123-2"): 5_242_881}).decode()
    assert "sealgate" not in out
    assert "<Key>dir+a%2Fm%2Bp+%C3%A9</Key>" in out  # names go back as the backend encoded them
    assert "<Size>5242881</Size>" in out
    assert "<Prefix>dir+a%2F</Prefix>" in out
    assert "<KeyCount>2</KeyCount>" in out


def test_without_encoding_a_plus_is_a_plus() -> None:
    root = ElementTree.fromstring(_listing([("a+b", "0123-2", 5_300_000)], [], None))
    assert multipart_entries(root) == [("a+b", "0123-2")]


def _v1(keys: list[str], truncated: bool, extra: str = "") -> str:
    contents = "".join(f"<Contents><Key>{k}</Key><ETag>&quot;e&quot;</ETag><Size>1</Size></Contents>" for k in keys)
    flag = f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
    return f'<ListBucketResult xmlns="{NS}"><Marker></Marker>{flag}{extra}{contents}</ListBucketResult>'


def test_a_v1_page_that_ends_in_hidden_entries_says_where_to_go_on() -> None:
    # As S3 answers ListObjects without a delimiter: no NextMarker, the client takes the last key.
    hidden = [f".sealgate/mp/{i:03d}/e-2" for i in range(3)]
    out = rewrite_listing(ElementTree.fromstring(_v1(hidden, True)), {}).decode()
    assert "<Contents>" not in out and f"<NextMarker>{hidden[-1]}</NextMarker>" in out
    out = rewrite_listing(ElementTree.fromstring(_v1(["-a", *hidden], True)), {}).decode()
    assert "<Key>-a</Key>" in out and f"<NextMarker>{hidden[-1]}</NextMarker>" in out
    # Nothing to add: the last page, nothing hidden, or the backend's own NextMarker.
    assert "NextMarker" not in rewrite_listing(ElementTree.fromstring(_v1(hidden, False)), {}).decode()
    assert "NextMarker" not in rewrite_listing(ElementTree.fromstring(_v1(["a", "b"], True)), {}).decode()
    own = "<NextMarker>zzz</NextMarker>"
    out = rewrite_listing(ElementTree.fromstring(_v1(hidden, True, own)), {}).decode()
    assert out.count("NextMarker>") == 2 and "zzz" in out


def test_a_v2_page_without_a_key_count_gets_one() -> None:
    """rclone serve s3 leaves KeyCount out of an empty V2 page; S3 always says it. It counts
    what the client sees (sealgate's hidden entries not), and a V1 page gets none."""
    hidden = [".sealgate/mp/001/e-2"]
    empty = f'<ListBucketResult xmlns="{NS}"><IsTruncated>false</IsTruncated></ListBucketResult>'
    assert "<KeyCount>0</KeyCount>" in rewrite_listing(ElementTree.fromstring(empty), {}, v2=True).decode()
    page = _v1(["a", *hidden, "b"], True, "<CommonPrefixes><Prefix>d/</Prefix></CommonPrefixes>")
    out = rewrite_listing(ElementTree.fromstring(page), {}, v2=True).decode()
    assert "<KeyCount>3</KeyCount>" in out and "NextMarker" not in out
    assert "KeyCount" not in rewrite_listing(ElementTree.fromstring(_v1(["a"], False)), {}).decode()
