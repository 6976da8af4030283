"""What reads of multipart objects keep between requests, so that a scan in ranges (pyarrow,
DuckDB, any reader of columnar files) costs about one backend request per client range instead
of four: each object's opened manifest and the part headers already read.

Entries are keyed by the object's name (and version id) and hold the backend ETag they were
read under, with the envelope's salt and key commitment. A manifest is served from here only to
a read of an object with that same ETag, salt and commitment (the ETag binds the stored parts,
so an object replaced on the backend never matches a stale entry); a range read planned from
an entry pins its one backend request to that ETag (If-Match), so if the object changed since,
the backend refuses (412) and the read goes the long way. Bounded by the number of manifest
parts held, least recently used first out. Per process: replicas share nothing but what the
backend holds.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from proxy.crypto.format import Envelope, Manifest

#: Manifest parts held at most, across all entries (about 100 bytes each).
MAX_PARTS = 50_000

Name = tuple[str, str, str | None]


@dataclass
class Known:
    """One multipart object as a read last saw it."""

    etag: str
    salt: bytes
    commitment: bytes
    segment_size: int
    manifest: Manifest
    #: Part number -> its 32-byte stored header.
    headers: dict[int, bytes] = field(default_factory=dict)

    def matches(self, etag: str, env: Envelope) -> bool:
        return (self.etag, self.salt, self.commitment) == (etag, env.salt, env.commitment)


class ReadCache:
    """Manifests and part headers of multipart objects, by name (see the module's docstring)."""

    def __init__(self, max_parts: int = MAX_PARTS) -> None:
        self._max_parts = max_parts
        self._parts = 0
        self._entries: OrderedDict[Name, Known] = OrderedDict()

    def latest(self, bucket: str, key: str, version: str | None) -> Known | None:
        """What the last read of this object saw (to plan a pinned range read), if anything."""
        known = self._entries.get((bucket, key, version))
        if known is not None:
            self._entries.move_to_end((bucket, key, version))
        return known

    def manifest(self, bucket: str, key: str, version: str | None, etag: str, env: Envelope) -> Manifest | None:
        """The manifest of the object stored with this backend ETag and envelope, if known."""
        known = self.latest(bucket, key, version)
        return known.manifest if known is not None and known.matches(etag, env) else None

    def remember(
        self, bucket: str, key: str, version: str | None, etag: str, env: Envelope, manifest: Manifest
    ) -> None:
        """Keep an opened manifest (replacing what was known of the object; the part headers
        already read stay when it is the same stored object, opened again by a full read)."""
        name = (bucket, key, version)
        old = self._entries.get(name)
        headers = old.headers if old is not None and old.matches(etag, env) else {}
        self.forget(bucket, key, version)
        if len(manifest.parts) > self._max_parts:
            return
        self._entries[name] = Known(etag, env.salt, env.commitment, env.segment_size, manifest, headers)
        self._parts += len(manifest.parts)
        while self._parts > self._max_parts:
            _, old = self._entries.popitem(last=False)
            self._parts -= len(old.manifest.parts)

    def header(self, bucket: str, key: str, version: str | None, etag: str, number: int) -> bytes | None:
        """The stored header of part `number` of the object with this ETag, if a read saw it."""
        known = self._entries.get((bucket, key, version))
        return known.headers.get(number) if known is not None and known.etag == etag else None

    def remember_header(self, bucket: str, key: str, version: str | None, etag: str, number: int, raw: bytes) -> None:
        """Keep a part header a read fetched (and checked) for the object with this ETag."""
        known = self._entries.get((bucket, key, version))
        if known is not None and known.etag == etag:
            known.headers[number] = raw

    def forget(self, bucket: str, key: str, version: str | None) -> None:
        """Drop what is known of one object (it changed, or failed a check)."""
        old = self._entries.pop((bucket, key, version), None)
        if old is not None:
            self._parts -= len(old.manifest.parts)
