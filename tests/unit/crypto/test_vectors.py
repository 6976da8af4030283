"""The published test vectors (tests/vectors/v1.json) decrypt as docs/FORMAT.md says."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from proxy.crypto.format import DIGEST_SLOT, Envelope, Layout, open_metadata, stream_key
from proxy.crypto.segments import StreamDecryptor, StreamEncryptor

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "v1.json").read_text())["vectors"]


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_reads(v: dict[str, object]) -> None:
    dk = bytes.fromhex(str(v["data_key_hex"]))
    meta = {k.removeprefix("x-amz-meta-"): val for k, val in v["metadata"].items()}  # type: ignore[attr-defined]
    env = Envelope.from_metadata(meta)
    env.check_commitment(dk)
    sealed = open_metadata(dk, env.salt, env.sealed)
    assert dict(sealed.user) == v["user_metadata"]
    body = base64.b64decode(str(v["body_b64"]))
    layout = Layout(env.segment_size)
    size = layout.plaintext_length(len(body))
    assert size == v["plaintext_length"]
    key = stream_key(dk, env.salt, 0)
    assert key.hex() == v["stream_key_hex"]
    span = layout.span(0, size + DIGEST_SLOT, size)
    dec = StreamDecryptor(key, layout, span, size)
    full = b"".join(dec.feed(body))
    dec.finish()
    plaintext, slot = full[:size], full[size:]
    assert hashlib.sha256(plaintext).hexdigest() == v["plaintext_sha256"]
    assert plaintext == bytes(i % 251 for i in range(size))
    if v["etag"]:
        assert sealed.etag == "tail" and slot.hex() == v["etag"]
    else:
        assert slot == bytes(16)


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_writes_identically(v: dict[str, object]) -> None:
    size = int(v["plaintext_length"])  # type: ignore[call-overload]
    enc = StreamEncryptor(bytes.fromhex(str(v["stream_key_hex"])), 65536)
    slot = bytes.fromhex(str(v["etag"])) if v["etag"] else bytes(16)
    body = b"".join(enc.feed(bytes(i % 251 for i in range(size)))) + b"".join(enc.finish(slot))
    assert hashlib.sha256(body).hexdigest() == v["body_sha256"]
