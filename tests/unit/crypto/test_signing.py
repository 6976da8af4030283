"""Sender signatures (crypto/signing.py): what is signed, and that every committed field counts."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest

from proxy.crypto import signing
from proxy.crypto.format import (
    LAYOUT_MULTIPART,
    LAYOUT_SINGLE,
    SCOPE_BUCKET,
    Envelope,
    IntegrityError,
    SealedMetadata,
)

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "signature.json").read_text())["vectors"]
DK = bytes(range(32))


def _env(layout: str = LAYOUT_SINGLE) -> Envelope:
    return Envelope.new(DK, "local:k:1", b"wrapped", SealedMetadata(user={"a": "b"}), layout=layout)


def _signed(env: Envelope, seed: bytes, bucket: str = "b", key: str = "k", size: int = 10) -> Envelope:
    sig = signing.sign(seed, signing.signed_bytes(env, bucket, key, signing.single_body(size)))
    return dataclasses.replace(env, signature=sig)


def _verify(env: Envelope, trusted: list[bytes], bucket: str = "b", key: str = "k", size: int = 10) -> bytes:
    message = signing.signed_bytes(env, bucket, key, signing.single_body(size))
    return signing.check(env.signature, message, trusted)


def test_round_trip_through_metadata() -> None:
    seed = signing.generate_seed()
    env = _signed(_env(), seed)
    back = Envelope.from_metadata(env.to_metadata())
    assert back.signature == env.signature and len(back.signature) == 64
    assert _verify(back, [signing.public_key(signing.generate_seed()), signing.public_key(seed)]) == (
        signing.public_key(seed)
    )


def test_unsigned_envelopes_carry_no_field() -> None:
    env = _env()
    assert "sg-sig" not in env.to_metadata()
    assert Envelope.from_metadata(env.to_metadata()).signature == b""
    with pytest.raises(IntegrityError, match="no sender signature"):
        _verify(env, [signing.public_key(signing.generate_seed())])


def test_untrusted_signer_is_refused() -> None:
    env = _signed(_env(), signing.generate_seed())
    with pytest.raises(IntegrityError, match="not by a trusted signer"):
        _verify(env, [signing.public_key(signing.generate_seed())])
    with pytest.raises(IntegrityError):
        _verify(env, [])


@pytest.mark.parametrize(
    "change",
    [
        {"bucket": "other"},
        {"key": "k2"},
        {"size": 11},
        {"env": {"sealed": b"x" * 40}},
        {"env": {"salt": bytes(32)}},
        {"env": {"commitment": bytes(32)}},
        {"env": {"segment_size": 4096}},
        {"env": {"layout": LAYOUT_MULTIPART}},
        {"env": {"scope": SCOPE_BUCKET, "name_tag": bytes(32)}},
        {"env": {"signature": bytes(64)}},
    ],
)
def test_every_committed_field_is_signed(change: dict[str, object]) -> None:
    seed = signing.generate_seed()
    env = _signed(_env(), seed)
    fields = change.pop("env", {})
    assert isinstance(fields, dict)
    env = dataclasses.replace(env, **fields)
    with pytest.raises(IntegrityError):
        _verify(env, [signing.public_key(seed)], **change)  # type: ignore[arg-type]


def test_key_ref_and_wrapped_key_are_not_signed() -> None:
    """`sealgate rewrap` re-wraps the data key (the commitment binds it) without re-signing."""
    seed = signing.generate_seed()
    env = dataclasses.replace(_signed(_env(), seed), key_ref="local:k:2", wrapped_key=b"rewrapped")
    _verify(env, [signing.public_key(seed)])


def test_multipart_body_is_the_manifest() -> None:
    assert signing.multipart_body(b"m1") != signing.multipart_body(b"m2")
    assert len(signing.multipart_body(b"m1")) == 32


def test_public_key_text() -> None:
    public = signing.public_key(signing.generate_seed())
    assert signing.parse_public(signing.public_text(public)) == public
    for bad in ("rsa:AAAA", "ed25519:not base64!", "ed25519:" + base64.b64encode(bytes(31)).decode()):
        with pytest.raises(ValueError):
            signing.parse_public(bad)


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vectors(v: dict[str, object]) -> None:
    meta = {k.removeprefix("x-amz-meta-"): val for k, val in v["metadata"].items()}  # type: ignore[attr-defined]
    env = Envelope.from_metadata(meta)
    if env.layout == LAYOUT_SINGLE:
        body = signing.single_body(int(v["plaintext_length"]))  # type: ignore[call-overload]
        signature = env.signature
    else:
        body = signing.multipart_body(base64.b64decode(str(v["sealed_manifest_b64"])))
        signature = base64.b64decode(str(v["signature_b64"]))
    message = signing.signed_bytes(env, str(v["bucket"]), str(v["key"]), body)
    assert message.hex() == v["signed_bytes_hex"]
    seed = bytes.fromhex(str(v["signing_seed_hex"]))
    assert signing.public_text(signing.public_key(seed)) == v["trusted_signer"]
    assert (
        base64.b64encode(signing.sign(seed, message)).decode()
        == v["signature_b64"]
        == base64.b64encode(signature).decode()
    )
    assert signing.check(signature, message, [signing.parse_public(str(v["trusted_signer"]))])
