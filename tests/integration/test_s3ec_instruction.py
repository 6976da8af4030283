"""S3EC objects whose envelope lives in ``KEY.instruction``, read through sealgate.

The official Python client reads instruction files but never writes them, so these objects are
made from ones it wrote, by moving the envelope into the instruction file the way the S3EC
specification lays it out; the official client reading them back checks that construction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from proxy.crypto import s3ec
from tests.conftest import Stack, backend_client
from tests.integration.s3ec_support import official, start_kms_stack

PLAIN = "s3ec-if"  # no opt-in: V1/V2 instruction files are not looked for
PROBE = "s3ec-if-on"  # s3ec_instruction_files = true


@pytest.fixture(scope="module")
def if_stack(
    moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    rules = (
        f'\n[[buckets]]\nname = "{PROBE}"\ns3ec_instruction_files = true\ns3ec_unbound_reads = true\n'
        f'\n[[buckets]]\nname = "{PLAIN}"\ns3ec_unbound_reads = true\n'
    )
    st, key_id = start_kms_stack(
        tmp_path_factory.mktemp("s3ecif"), moto_url, tls_files, rules=rules, buckets=(PLAIN, PROBE)
    )
    yield st, key_id
    st.gate.stop()


def _move_to_instruction_file(url: str, bucket: str, key: str, *, extra: dict[str, str] | None = None) -> None:
    """Rewrite an official object so its envelope is in KEY.instruction (V3 keeps c/d/i)."""
    raw = backend_client(url)
    obj = raw.get_object(Bucket=bucket, Key=key)
    meta = obj["Metadata"]
    keep = s3ec.V3_OBJECT_ONLY if s3ec.detect(meta) == s3ec.FORMAT_V3 else frozenset()
    moved = {k: v for k, v in meta.items() if k in s3ec.ALL_META and k not in keep}
    moved.update(extra or {})
    stays = {k: v for k, v in meta.items() if k not in moved}
    raw.put_object(Bucket=bucket, Key=key, Body=obj["Body"].read(), Metadata=stays)
    raw.put_object(Bucket=bucket, Key=key + s3ec.INSTRUCTION_SUFFIX, Body=json.dumps(moved).encode())


@pytest.mark.parametrize("v2", [False, True], ids=["v3", "v2"])
def test_instruction_file_objects_read_through_sealgate(if_stack: tuple[Stack, str], moto_url: str, v2: bool) -> None:
    st, key_id = if_stack
    data = os.urandom(70_001)
    key = f"if-{v2}"
    for bucket in (PLAIN, PROBE):
        official(moto_url, key_id, v2=v2).put_object(Bucket=bucket, Key=key, Body=data, Metadata={"team": "a"})
        _move_to_instruction_file(moto_url, bucket, key)
        # The construction is what the official client expects.
        assert official(moto_url, key_id, v2=v2).get_object(Bucket=bucket, Key=key)["Body"].read() == data
    s3 = st.client()
    got = s3.get_object(Bucket=PROBE, Key=key)
    assert got["Body"].read() == data and got["Metadata"] == {"team": "a"}
    assert s3.head_object(Bucket=PROBE, Key=key)["ContentLength"] == len(data)
    if v2:
        # No trace in the object itself: without the bucket's opt-in it is an unencrypted object.
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket=PLAIN, Key=key)
        assert "not written by sealgate" in err.value.response["Error"]["Message"]
    else:
        # V3 names its instruction file in its own metadata: always served.
        assert s3.get_object(Bucket=PLAIN, Key=key)["Body"].read() == data


def test_bad_or_missing_instruction_files_are_refused(if_stack: tuple[Stack, str], moto_url: str) -> None:
    st, key_id = if_stack
    s3 = st.client()
    official(moto_url, key_id).put_object(Bucket=PROBE, Key="tamper", Body=b"secret data")
    meta = backend_client(moto_url).head_object(Bucket=PROBE, Key="tamper")["Metadata"]
    # An instruction file must not repeat the object-only V3 fields.
    _move_to_instruction_file(moto_url, PROBE, "tamper", extra={s3ec.META_V3_COMMITMENT: meta[s3ec.META_V3_COMMITMENT]})
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=PROBE, Key="tamper")
    assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"
    backend_client(moto_url).delete_object(Bucket=PROBE, Key="tamper" + s3ec.INSTRUCTION_SUFFIX)
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=PROBE, Key="tamper")
    assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"
    assert b"secret" not in json.dumps(err.value.response).encode()
    # A plain object next to a stray non-S3EC ".instruction" object stays a plain object.
    raw = backend_client(moto_url)
    raw.put_object(Bucket=PROBE, Key="plain", Body=b"hello")
    raw.put_object(Bucket=PROBE, Key="plain.instruction", Body=b"not json")
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=PROBE, Key="plain")
    assert "not written by sealgate" in err.value.response["Error"]["Message"]
