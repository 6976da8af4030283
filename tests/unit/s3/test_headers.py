"""The reserved user-metadata names (proxy.s3.headers): pure, no server."""

from __future__ import annotations

import pytest

from proxy.crypto import format as sg_format
from proxy.crypto import s3ec
from proxy.s3.errors import S3Error
from proxy.s3.headers import RESERVED_META_NAMES, refuse_reserved_metadata, reserved_metadata


def test_every_envelope_field_is_reserved() -> None:
    assert set(sg_format.ALL_META) <= RESERVED_META_NAMES
    assert set(s3ec.ALL_META) <= RESERVED_META_NAMES
    assert {"sg-sig", "x-amz-unencrypted-content-length", "x-amz-key-v2", "x-amz-c"} <= RESERVED_META_NAMES


@pytest.mark.parametrize(
    "name",
    [
        "x-amz-meta-sg-kr",
        "X-Amz-Meta-SG-V",
        "x-amz-meta-sg-sig",
        "x-amz-meta-sg-object",
        "x-amz-meta-X-AMZ-KEY-V2",
        "x-amz-meta-x-amz-c",
        "x-amz-meta-x-amz-3",
        "x-amz-meta-x-amz-unencrypted-content-length",
    ],
)
def test_a_reserved_name_is_refused_in_any_case(name: str) -> None:
    headers = {name: "1", "x-amz-meta-colour": "blue"}
    assert reserved_metadata(headers) == [name.lower().removeprefix("x-amz-meta-")]
    with pytest.raises(S3Error) as err:
        refuse_reserved_metadata(headers)
    assert (err.value.code, err.value.status) == ("InvalidArgument", 400)
    assert f"{name.lower()} is reserved by sealgate" in str(err.value)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-amz-meta-colour": "blue"},
        {"x-amz-meta-sg": "1", "x-amz-meta-sgx-v": "1", "x-amz-meta-x-amz-colour": "1"},
        {"sg-kr": "not user metadata", "x-amz-key-v2": "neither"},
    ],
)
def test_other_names_pass(headers: dict[str, str]) -> None:
    assert reserved_metadata(headers) == []
    refuse_reserved_metadata(headers)
