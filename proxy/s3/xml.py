"""S3's XML: one namespace, lookups by local name, the documents sealgate writes, and S3's
habit of reporting a failure inside a 200 answer. Pure: bytes in, elements or bytes out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from xml.etree.ElementTree import Element, register_namespace, tostring
from xml.sax.saxutils import escape

from defusedxml import ElementTree

from proxy.s3.errors import S3Error
from proxy.s3.headers import etag_value

#: The namespace of every S3 document (the backend's answers and sealgate's own).
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# Documents sealgate rewrites and serialises keep S3's namespace as the default one.
register_namespace("", S3_NS)

#: The Content-Type of an XML answer.
XML_HEADERS = {"Content-Type": "application/xml"}


def qname(tag: str) -> str:
    """`tag` in S3's namespace, as ElementTree names it (``{ns}tag``)."""
    return f"{{{S3_NS}}}{tag}"


def local_name(tag: str) -> str:
    """An element's tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def parse(doc: bytes) -> Element:
    """An S3 document from the backend, parsed with defusedxml (a hostile one raises)."""
    root = ElementTree.fromstring(doc)
    assert isinstance(root, Element)
    return root


def parse_client(doc: bytes) -> Element:
    """A document a client sent: S3's MalformedXML if it is not well-formed."""
    try:
        return parse(doc)
    except Exception as exc:  # noqa: BLE001 - defusedxml raises several types for hostile XML
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate", 400) from exc


def iter_named(root: Element, tag: str) -> Iterator[Element]:
    """Every element named `tag` (any namespace) under `root`, `root` included."""
    return (el for el in root.iter() if local_name(el.tag) == tag)


def find_text(root: Element, tag: str) -> str | None:
    """Text of the first element named `tag` (any namespace) under `root`; None if absent."""
    for el in iter_named(root, tag):
        return str(el.text or "")
    return None


def child_text(el: Element, tag: str) -> str:
    """Text of `el`'s direct child named `tag` (any namespace); empty if there is none."""
    for child in el:
        if local_name(child.tag) == tag:
            return str(child.text or "")
    return ""


def document(root: str, fields: Iterable[tuple[str, str]]) -> bytes:
    """An S3 XML document `<root>` holding `fields` as escaped child elements."""
    inner = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{S3_NS}">{inner}</{root}>'.encode()


def complete_upload(parts: Iterable[tuple[int, str]]) -> bytes:
    """The CompleteMultipartUpload request body naming (part number, unquoted ETag) pairs."""
    inner = "".join(f'<Part><PartNumber>{n}</PartNumber><ETag>"{escape(e)}"</ETag></Part>' for n, e in parts)
    return f'<CompleteMultipartUpload xmlns="{S3_NS}">{inner}</CompleteMultipartUpload>'.encode()


def serialize(root: Element) -> bytes:
    """`root` as a document with its XML declaration."""
    out: bytes = tostring(root, encoding="utf-8", xml_declaration=True)
    return out


def raise_if_error(root: Element | None) -> None:
    """S3 may report a failure (of CopyObject, UploadPartCopy, CompleteMultipartUpload) inside a
    200 answer: raise it as the S3Error it names."""
    if root is not None and local_name(root.tag) == "Error":
        code = find_text(root, "Code") or "InternalError"
        raise S3Error(code, find_text(root, "Message") or code, 503 if code == "InternalError" else 400)


def parse_answer(doc: bytes) -> Element | None:
    """A backend's 200 answer (None if empty), once it is not an error in disguise."""
    root = parse(doc) if doc.strip() else None
    raise_if_error(root)
    return root


def completed_parts(doc: bytes) -> list[tuple[int, str]]:
    """(part number, ETag) pairs of a CompleteMultipartUpload body; MalformedXML on bad input."""
    root = parse_client(doc)
    out: list[tuple[int, str]] = []
    for el in iter_named(root, "Part"):
        n = find_text(el, "PartNumber")
        etag = find_text(el, "ETag")
        if not n or not n.strip().isdigit() or etag is None:
            raise S3Error("MalformedXML", "Each Part needs a PartNumber and an ETag", 400)
        out.append((int(n), etag_value(etag).lower()))
    if not out:
        raise S3Error("MalformedXML", "You must specify at least one part", 400)
    numbers = [n for n, _ in out]
    if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
        raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order.", 400)
    return out


#: The document a GET of each bucket or object setting answers with.
SETTING_ROOTS: dict[str, tuple[str, ...]] = {
    "acl": ("AccessControlPolicy",),
    "tagging": ("Tagging",),
    "retention": ("Retention",),
    "legal-hold": ("LegalHold",),
    "cors": ("CORSConfiguration",),
    "lifecycle": ("LifecycleConfiguration",),
    "encryption": ("ServerSideEncryptionConfiguration",),
    # moto names a never-versioned bucket's answer after the operation
    "versioning": ("VersioningConfiguration", "GetBucketVersioningResponse"),
    "object-lock": ("ObjectLockConfiguration",),
}


def check_setting(body: bytes, subresource: str) -> None:
    """NotImplemented (501) unless `body` is the document a GET of that setting answers with:
    some backends ignore a sub-resource they do not know and answer with the object itself."""
    names = SETTING_ROOTS.get(subresource)
    if names is None:
        return
    try:
        root = parse(body)
    except Exception:  # noqa: BLE001 - not XML at all: the backend did not serve the setting
        root = None
    if root is None or local_name(root.tag) not in names:
        raise S3Error("NotImplemented", f"the backend does not serve the {subresource} setting", 501)
