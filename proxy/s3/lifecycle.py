"""Lifecycle configurations that cannot separate sealgate's records from their objects.

A bucket's lifecycle rules act on every key, sealgate's own records under the reserved prefix
included (the manifest of a multipart object, the records of uploads in progress). A rule that
expires (or transitions) a whole bucket treats a manifest as its object: the manifest is written
as its object appears and never before, so it never goes first. Rules that could reach a record
but not its object are refused: a prefix that selects records (one of the reserved prefix's own
prefixes, such as ``.``, or a prefix under it) and size filters (a manifest is a few hundred
bytes, its object of any size). Rules filtered by tags never select records (they carry none);
aborting incomplete uploads acts on uploads only (`sealgate gc` removes their records).
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

from proxy.s3.errors import S3Error
from proxy.s3.xml import child_text, iter_named, local_name, parse_client

#: Actions that act on stored keys (so possibly on records); AbortIncompleteMultipartUpload does not.
_KEY_ACTIONS = ("Expiration", "NoncurrentVersionExpiration", "Transition", "NoncurrentVersionTransition")
_SIZE_FILTERS = ("ObjectSizeGreaterThan", "ObjectSizeLessThan")


def _children(el: Element, name: str) -> list[Element]:
    return [c for c in el if local_name(c.tag) == name]


def _filter_terms(rule: Element) -> tuple[str, bool, bool]:
    """(prefix, has a tag filter, has a size filter) of one rule, in either the old form (a
    Prefix in the rule) or the Filter form (Prefix, Tag, sizes, or an And of them)."""
    prefix = child_text(rule, "Prefix")
    tagged = sized = False
    for flt in _children(rule, "Filter"):
        terms = [flt, *_children(flt, "And")]
        for term in terms:
            prefix = prefix or child_text(term, "Prefix")
            tagged = tagged or bool(_children(term, "Tag"))
            sized = sized or any(_children(term, name) for name in _SIZE_FILTERS)
    return prefix, tagged, sized


def check_lifecycle(document: bytes, reserved_prefix: str) -> None:
    """InvalidArgument (400) for a lifecycle configuration with an enabled rule that could
    expire or transition sealgate's records apart from their objects (see the module's docstring)."""
    root = parse_client(document)
    for rule in iter_named(root, "Rule"):
        if child_text(rule, "Status") != "Enabled":
            continue
        if not any(_children(rule, action) for action in _KEY_ACTIONS):
            continue
        prefix, tagged, sized = _filter_terms(rule)
        if tagged:
            continue
        reaches_records = reserved_prefix.startswith(prefix) or prefix.startswith(reserved_prefix)
        if not reaches_records:
            continue
        name = child_text(rule, "ID") or "(no ID)"
        if prefix:
            raise S3Error(
                "InvalidArgument",
                f"lifecycle rule {name}: prefix {prefix!r} selects sealgate's records under {reserved_prefix} "
                "apart from the objects they belong to; use a prefix that does not, or a tag filter",
                400,
            )
        if sized:
            raise S3Error(
                "InvalidArgument",
                f"lifecycle rule {name}: a size filter on the whole bucket would act on sealgate's small records "
                f"under {reserved_prefix} apart from the objects they belong to; add a prefix or a tag filter",
                400,
            )
