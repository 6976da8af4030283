"""Upload ids (proxy/crypto/upload_id.py): the published vectors, round trips, and every kind of
tampering refused with FormatError."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from proxy.crypto.format import FormatError
from proxy.crypto.upload_id import PREFIX, S3EC_PREFIX, UploadId, open_for_replicas, seal_for_replicas

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "upload_id.json").read_text())["vectors"]
DK = os.urandom(32)
SALT = os.urandom(32)


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


def _lp(x: bytes) -> bytes:
    return struct.pack(">H", len(x)) + x


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_matches_format_md(v: dict[str, str]) -> None:
    """Each vector is rebuilt from docs/FORMAT.md's description alone, then parsed and checked."""
    dk, salt = bytes.fromhex(v["data_key_hex"]), bytes.fromhex(v["salt_hex"])
    fields = (v["backend_id"].encode(), v["key_ref"].encode(), bytes.fromhex(v["wrapped_key_hex"]))
    body = b"".join(_lp(f) for f in fields) + _lp(bytes.fromhex(v["sealed_key_hex"])) + salt
    if v["slot"] is not None:
        body += struct.pack(">H", v["slot"])
    prefix = v["upload_id"][: len(S3EC_PREFIX)] if v["upload_id"].startswith(S3EC_PREFIX) else PREFIX
    info = b"sealgate/1/upload-id" if prefix == PREFIX else b"sealgate/1/s3ec-upload-id"
    msg = v["bucket"].encode() + b"\0" + v["key"].encode() + b"\0" + body
    mac = hmac.new(_hkdf(dk, salt, info), msg, hashlib.sha256).digest()[:16]
    assert mac.hex() == v["mac_hex"]
    assert v["upload_id"] == prefix + base64.urlsafe_b64encode(body + mac).decode().rstrip("=")
    uid = UploadId.decode(v["upload_id"])
    assert (uid.prefix, uid.backend_id, uid.key_ref, uid.salt) == (prefix, v["backend_id"], v["key_ref"], salt)
    assert uid.slot == v["slot"]
    uid.verify(dk, v["bucket"], v["key"])
    assert uid.encode(dk, v["bucket"], v["key"]) == v["upload_id"]
    if v["upload_secret"]:
        sealed = bytes.fromhex(v["sealed_key_hex"])
        aad = v["bucket"].encode() + b"\0" + v["key"].encode()
        secret_key = _hkdf(v["upload_secret"].encode(), salt, b"sealgate/1/upload-secret")
        assert AESGCM(secret_key).decrypt(sealed[:12], sealed[12:], aad) == dk
        assert open_for_replicas(v["upload_secret"].encode(), salt, sealed, v["bucket"], v["key"]) == dk


def _uid(prefix: str = PREFIX, sealed: bytes = b"", slot: int | None = None) -> UploadId:
    return UploadId(
        "2~backend/id+=", "local:default:3", os.urandom(60), SALT, sealed_key=sealed, prefix=prefix, slot=slot
    )


@pytest.mark.parametrize("prefix", [PREFIX, S3EC_PREFIX])
def test_round_trip(prefix: str) -> None:
    sealed = seal_for_replicas(b"secret", SALT, DK, "b", "k")
    uid = _uid(prefix, sealed)
    text = uid.encode(DK, "b", "k")
    assert text.startswith(prefix)
    back = UploadId.decode(text)
    back.verify(DK, "b", "k")
    assert (back.backend_id, back.key_ref, back.wrapped_key, back.salt, back.sealed_key, back.prefix) == (
        uid.backend_id,
        uid.key_ref,
        uid.wrapped_key,
        uid.salt,
        uid.sealed_key,
        prefix,
    )
    assert open_for_replicas(b"secret", back.salt, back.sealed_key, "b", "k") == DK


@pytest.mark.parametrize("slot", [None, 0, 1, 0xFFFF])
def test_worker_slot_round_trips_and_an_id_without_one_still_decodes(slot: int | None) -> None:
    """The slot (which worker holds an s3ec-v3 upload's state) is optional: ids made before it,
    or by a sealgate with one worker, decode with slot None."""
    uid = UploadId("bk", "local:default:3", b"w", SALT, prefix=S3EC_PREFIX, slot=slot)
    text = uid.encode(DK, "b", "k")
    back = UploadId.decode(text)
    back.verify(DK, "b", "k")
    assert back.slot == slot
    assert back.encode(DK, "b", "k") == text
    if slot is not None:
        assert len(text) > len(UploadId("bk", "local:default:3", b"w", SALT, prefix=S3EC_PREFIX).encode(DK, "b", "k"))


def _raw(text: str) -> bytes:
    b64 = text[len(S3EC_PREFIX) :]
    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))


def _text(raw: bytes) -> str:
    return S3EC_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_changed_added_or_dropped_slot_is_refused() -> None:
    """The slot is under the mac: a client can neither send an upload's parts to another worker
    nor add a slot to an id without one, or drop it."""
    with_slot = _raw(UploadId("bk", "local:default:3", b"w", SALT, prefix=S3EC_PREFIX, slot=1).encode(DK, "b", "k"))
    body, mac = with_slot[:-18], with_slot[-16:]
    for forged in (
        body + struct.pack(">H", 0) + mac,
        body + struct.pack(">H", 2) + mac,
        body + mac,  # dropped: decodes as an id without a slot
    ):
        uid = UploadId.decode(_text(forged))
        with pytest.raises(FormatError):
            uid.verify(DK, "b", "k")
    without = _raw(UploadId("bk", "local:default:3", b"w", SALT, prefix=S3EC_PREFIX).encode(DK, "b", "k"))
    added = UploadId.decode(_text(without[:-16] + struct.pack(">H", 1) + without[-16:]))
    assert added.slot == 1
    with pytest.raises(FormatError):
        added.verify(DK, "b", "k")
    with pytest.raises(ValueError, match="slot"):
        UploadId("bk", "k", b"w", SALT, prefix=S3EC_PREFIX, slot=0x10000).encode(DK, "b", "k")


@given(st.data())
def test_any_flipped_byte_is_refused(data: st.DataObject) -> None:
    slot = data.draw(st.sampled_from([None, 0, 3]))
    text = _uid(data.draw(st.sampled_from([PREFIX, S3EC_PREFIX])), slot=slot).encode(DK, "b", "k")
    prefix = PREFIX if text.startswith(PREFIX) else S3EC_PREFIX
    raw = bytearray(base64.urlsafe_b64decode(text[len(prefix) :] + "=" * (-len(text[len(prefix) :]) % 4)))
    raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    forged = prefix + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(FormatError):
        UploadId.decode(forged).verify(DK, "b", "k")


@pytest.mark.parametrize("prefix", [PREFIX, S3EC_PREFIX])
def test_other_object_or_data_key_is_refused(prefix: str) -> None:
    uid = UploadId.decode(_uid(prefix).encode(DK, "b", "k"))
    for bucket, key in (("b2", "k"), ("b", "k2"), ("b\0k", ""), ("", "b\0k")):
        with pytest.raises(FormatError):
            uid.verify(DK, bucket, key)
    with pytest.raises(FormatError):
        uid.verify(os.urandom(32), "b", "k")


def test_formats_do_not_stand_in_for_each_other() -> None:
    """The same fields under the other prefix do not verify: each format has its own MAC key."""
    text = _uid(PREFIX).encode(DK, "b", "k")
    moved = UploadId.decode(S3EC_PREFIX + text[len(PREFIX) :])
    assert moved.prefix == S3EC_PREFIX
    with pytest.raises(FormatError):
        moved.verify(DK, "b", "k")


@pytest.mark.parametrize("prefix", [PREFIX, S3EC_PREFIX])
def test_truncated_or_malformed_is_format_error(prefix: str) -> None:
    text = _uid(prefix).encode(DK, "b", "k")
    for cut in range(len(prefix), len(text), 7):
        with pytest.raises(FormatError):
            UploadId.decode(text[:cut])
    for bad in (
        "",
        "backend-id-as-listed",
        text + "AAAA",  # bytes after the mac
        text[:-1] + "!",  # not base64url
        text[:10] + "=" + text[10:],
        prefix + base64.urlsafe_b64encode(b"\xff\xff").decode(),
        prefix + base64.urlsafe_b64encode(_lp(b"\xff\xfe") + _lp(b"") * 3 + SALT + bytes(16)).decode(),
    ):
        with pytest.raises(FormatError):
            UploadId.decode(bad)


def test_one_spelling_per_id() -> None:
    """Unused low bits of the last base64 character are not a second spelling of the same id."""
    text = _uid().encode(DK, "b", "k")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    others = [text[:-1] + c for c in alphabet if c != text[-1]]
    decoded = 0
    for other in others:
        try:
            UploadId.decode(other).verify(DK, "b", "k")
        except FormatError:
            continue
        decoded += 1
    assert decoded == 0
