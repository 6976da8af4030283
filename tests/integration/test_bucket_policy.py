"""Bucket policies, public access blocks and ownership controls through sealgate, over real TLS
in front of moto: kept by sealgate (sealed, under .sealgate/bk/ on the backend), applied with
the identity policies by every replica, and refused when malformed or tampered with."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import SealgateThread, Stack, client_for, free_port, start_stack

ALICE = ("SGBPALICE00000000001", "alice-secret-0000000001")
BOB = ("SGBPBOB0000000000001", "bob-secret-000000000001")
DAVE = ("SGBPDAVE000000000001", "dave-secret-00000000001")
RUN = f"{os.getpid()}-{os.urandom(2).hex()}"
RECORDS = ".sealgate/bk/"


def _client(name: str, creds: tuple[str, str]) -> str:
    return f'[[clients]]\nname = "{name}"\naccess_key_id = "{creds[0]}"\nsecret_access_key = "{creds[1]}"\n'


def _extra(audit: Path) -> str:
    full = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    # alice and bob may list their buckets, nothing else, unless a bucket policy lets them.
    lists = json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}]}
    )
    nothing = json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]}
    )
    return (
        _client("alice", ALICE)
        + _client("bob", BOB)
        + _client("dave", DAVE)
        + f"[[policies]]\nname = \"nothing\"\nprincipals = [\"dave\"]\ndocument = '''{nothing}'''\n"
        + f"[[policies]]\nname = \"full\"\nprincipals = [\"tester\"]\ndocument = '''{full}'''\n"
        + f"[[policies]]\nname = \"list\"\nprincipals = [\"alice\", \"bob\"]\ndocument = '''{lists}'''\n"
        + f'[audit]\npath = "{audit}"\n'
    )


@pytest.fixture(scope="module")
def st(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("bucket-policy")
    s = start_stack(d, moto_url, tls_files, extra=_extra(d / "audit.jsonl"))
    yield s
    s.gate.stop()


_counter = iter(range(10_000))


@pytest.fixture
def bucket(st: Stack) -> str:
    name = f"bp-{RUN}-{next(_counter)}"
    st.client().create_bucket(Bucket=name)
    st.client().put_object(Bucket=name, Key="doc.txt", Body=b"the plaintext")
    return name


def policy(bucket: str, *statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(principal: Any, action: Any, resource: str, **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": principal, "Action": action, "Resource": resource, **extra}


def deny(principal: Any, action: Any, resource: str) -> dict[str, Any]:
    return {"Effect": "Deny", "Principal": principal, "Action": action, "Resource": resource}


def error_of(call: Any, *args: Any, **kw: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as err:
        call(*args, **kw)
    return err.value.response["ResponseMetadata"]["HTTPStatusCode"], err.value.response["Error"]["Code"]


def as_(st: Stack, creds: tuple[str, str]) -> Any:
    return st.client(akid=creds[0], secret=creds[1])


def stored_records(st: Stack, bucket: str) -> list[str]:
    listed = st.backend().list_objects_v2(Bucket=bucket, Prefix=RECORDS).get("Contents", [])
    return sorted(item["Key"][len(RECORDS) :] for item in listed)


def test_put_get_delete_round_trip(st: Stack, bucket: str) -> None:
    text = policy(bucket, allow({"AWS": "*"}, "s3:ListBucket", f"arn:aws:s3:::{bucket}"))
    c = st.client()
    assert error_of(c.get_bucket_policy, Bucket=bucket) == (404, "NoSuchBucketPolicy")
    c.put_bucket_policy(Bucket=bucket, Policy=text)
    assert c.get_bucket_policy(Bucket=bucket)["Policy"] == text  # exactly as put
    assert c.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"]["IsPublic"] is True
    assert stored_records(st, bucket) == ["policy"]
    c.delete_bucket_policy(Bucket=bucket)
    assert error_of(c.get_bucket_policy, Bucket=bucket) == (404, "NoSuchBucketPolicy")
    assert stored_records(st, bucket) == []
    # Clients never see sealgate's record in a listing.
    c.put_bucket_policy(Bucket=bucket, Policy=text)
    assert [o["Key"] for o in c.list_objects_v2(Bucket=bucket)["Contents"]] == ["doc.txt"]


def test_the_backend_sees_the_policy_only_sealed(st: Stack, bucket: str) -> None:
    text = policy(bucket, allow({"AWS": "alice"}, "s3:GetObject", f"arn:aws:s3:::{bucket}/secret-prefix/*"))
    st.client().put_bucket_policy(Bucket=bucket, Policy=text)
    raw = st.backend().get_object(Bucket=bucket, Key=RECORDS + "policy")["Body"].read()
    assert b"alice" not in raw and b"secret-prefix" not in raw and b"Statement" not in raw


def test_a_bucket_policy_grants_what_identity_policies_do_not(st: Stack, bucket: str) -> None:
    alice, bob = as_(st, ALICE), as_(st, BOB)
    assert error_of(alice.get_object, Bucket=bucket, Key="doc.txt")[0] == 403
    st.client().put_bucket_policy(
        Bucket=bucket,
        Policy=policy(
            bucket,
            allow({"AWS": "alice"}, "s3:GetObject", f"arn:aws:s3:::{bucket}/*"),
            allow({"AWS": ["arn:aws:iam::123456789012:user/bob"]}, "s3:ListBucket", f"arn:aws:s3:::{bucket}"),
        ),
    )
    assert alice.get_object(Bucket=bucket, Key="doc.txt")["Body"].read() == b"the plaintext"
    assert error_of(alice.list_objects_v2, Bucket=bucket)[0] == 403
    assert error_of(bob.get_object, Bucket=bucket, Key="doc.txt")[0] == 403
    assert [o["Key"] for o in bob.list_objects_v2(Bucket=bucket)["Contents"]] == ["doc.txt"]
    # Only for this bucket: alice still reads nothing elsewhere.
    other = f"{bucket}-other"
    st.client().create_bucket(Bucket=other)
    st.client().put_object(Bucket=other, Key="doc.txt", Body=b"x")
    assert error_of(alice.get_object, Bucket=other, Key="doc.txt")[0] == 403


def test_an_account_principal_allows_nothing_by_itself(st: Stack, bucket: str) -> None:
    st.client().put_bucket_policy(
        Bucket=bucket, Policy=policy(bucket, allow({"AWS": "arn:aws:iam::123456789012:root"}, "s3:*", "*"))
    )
    assert error_of(as_(st, ALICE).get_object, Bucket=bucket, Key="doc.txt")[0] == 403


def test_a_bucket_policy_deny_wins_over_an_identity_allow(st: Stack, bucket: str) -> None:
    c = st.client()
    c.put_bucket_policy(
        Bucket=bucket,
        Policy=policy(
            bucket, deny({"AWS": "arn:aws:iam::123456789012:root"}, "s3:DeleteObject", f"arn:aws:s3:::{bucket}/*")
        ),
    )
    assert error_of(c.delete_object, Bucket=bucket, Key="doc.txt") == (403, "AccessDenied")
    answer = c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "doc.txt"}]})
    assert [e["Code"] for e in answer["Errors"]] == ["AccessDenied"]
    assert st.backend().head_object(Bucket=bucket, Key="doc.txt")  # still there
    assert c.get_object(Bucket=bucket, Key="doc.txt")["Body"].read() == b"the plaintext"  # not denied
    audit = (st.dir / "audit.jsonl").read_text()
    assert "bucket policy of " + bucket in audit


def test_a_copy_needs_the_source_buckets_policy_to_allow_it(st: Stack, bucket: str) -> None:
    c = st.client()
    c.put_bucket_policy(
        Bucket=bucket, Policy=policy(bucket, deny({"AWS": "tester"}, "s3:GetObject", f"arn:aws:s3:::{bucket}/*"))
    )
    target = f"{bucket}-target"
    c.create_bucket(Bucket=target)
    code = error_of(c.copy_object, Bucket=target, Key="copy", CopySource={"Bucket": bucket, "Key": "doc.txt"})
    assert code == (403, "AccessDenied")
    assert "Contents" not in st.backend().list_objects_v2(Bucket=target)


@pytest.mark.parametrize(
    ("statement", "words"),
    [
        (allow({"AWS": "mallory"}, "s3:GetObject", "arn:aws:s3:::{b}/*"), "no client is named"),
        (allow({"Service": "logging.s3.amazonaws.com"}, "s3:PutObject", "arn:aws:s3:::{b}/*"), "Invalid principal"),
        (allow("*", "s3:GetObject", "arn:aws:s3:::someone-elses-bucket/*"), "invalid resource"),
        (allow("*", "s3:GetObjekt", "arn:aws:s3:::{b}/*"), "unknown action"),
        ({"Effect": "Allow", "NotPrincipal": {"AWS": "alice"}, "Action": "s3:*", "Resource": "*"}, "NotPrincipal"),
        ({"Effect": "Allow", "Action": "s3:*", "Resource": "*"}, "Principal"),
    ],
)
def test_a_malformed_policy_is_refused_and_nothing_stored(st: Stack, bucket: str, statement: Any, words: str) -> None:
    text = policy(bucket, json.loads(json.dumps(statement).replace("{b}", bucket)))
    with pytest.raises(ClientError) as err:
        st.client().put_bucket_policy(Bucket=bucket, Policy=text)
    assert err.value.response["Error"]["Code"] == "MalformedPolicy"
    assert words in err.value.response["Error"]["Message"]
    assert stored_records(st, bucket) == []


def test_not_json_is_malformed(st: Stack, bucket: str) -> None:
    assert error_of(st.client().put_bucket_policy, Bucket=bucket, Policy="{not json") == (400, "MalformedPolicy")


def _wait_for_refresh() -> None:
    time.sleep(5.5)  # proxy.store.bucket_access.TTL_SECONDS: what the process read is kept that long


def test_a_tampered_or_moved_record_fails_closed_until_replaced(st: Stack, bucket: str) -> None:
    c, backend = st.client(), st.backend()
    other = f"{bucket}-other"
    c.create_bucket(Bucket=other)
    c.put_bucket_policy(Bucket=other, Policy=policy(other, allow("*", "s3:GetObject", "*")))  # valid anywhere
    # Someone with backend access puts another bucket's (authentic) record here.
    moved = backend.get_object(Bucket=other, Key=RECORDS + "policy")["Body"].read()
    backend.put_object(Bucket=bucket, Key=RECORDS + "policy", Body=moved)
    _wait_for_refresh()
    assert error_of(c.get_object, Bucket=bucket, Key="doc.txt") == (500, "ObjectIntegrityError")
    # A forged plaintext one is refused the same way.
    forged = policy(bucket, allow("*", "s3:*", "*")).encode()
    backend.put_object(Bucket=bucket, Key=RECORDS + "policy", Body=forged)
    _wait_for_refresh()
    assert error_of(as_(st, ALICE).get_object, Bucket=bucket, Key="doc.txt")[0] == 500
    # Deleting (or replacing) the setting mends the bucket.
    c.delete_bucket_policy(Bucket=bucket)
    assert c.get_object(Bucket=bucket, Key="doc.txt")["Body"].read() == b"the plaintext"


def test_another_replica_applies_a_policy_put_through_the_first(
    st: Stack, bucket: str, tls_files: dict[str, Path]
) -> None:
    other = st.dir / "replica.toml"
    text = (st.dir / "sealgate.toml").read_text().replace(f":{st.gate.running.tls_port}", f":{free_port()}")
    other.write_text(text.replace("audit.jsonl", "replica-audit.jsonl"))
    replica = SealgateThread(other).start()
    try:
        alice_there = client_for(replica.url, tls_files["ca"], akid=ALICE[0], secret=ALICE[1])
        assert error_of(alice_there.get_object, Bucket=bucket, Key="doc.txt")[0] == 403
        st.client().put_bucket_policy(
            Bucket=bucket, Policy=policy(bucket, allow({"AWS": "alice"}, "s3:GetObject", f"arn:aws:s3:::{bucket}/*"))
        )
        _wait_for_refresh()
        assert alice_there.get_object(Bucket=bucket, Key="doc.txt")["Body"].read() == b"the plaintext"
    finally:
        replica.stop()


def test_a_bucket_with_settings_can_still_be_deleted(st: Stack, bucket: str) -> None:
    c = st.client()
    c.put_bucket_policy(Bucket=bucket, Policy=policy(bucket, allow("*", "s3:GetObject", f"arn:aws:s3:::{bucket}/*")))
    c.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={"BlockPublicAcls": True})
    c.delete_object(Bucket=bucket, Key="doc.txt")
    c.delete_bucket(Bucket=bucket)
    assert bucket not in [b["Name"] for b in st.backend().list_buckets()["Buckets"]]


def test_public_access_block(st: Stack, bucket: str) -> None:
    c = st.client()
    assert error_of(c.get_public_access_block, Bucket=bucket) == (404, "NoSuchPublicAccessBlockConfiguration")
    conf = {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": False,
    }
    c.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=conf)
    assert c.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == conf
    # BlockPublicPolicy: a policy that allows everyone is refused, one for named clients is not.
    public = policy(bucket, allow("*", "s3:GetObject", f"arn:aws:s3:::{bucket}/*"))
    assert error_of(c.put_bucket_policy, Bucket=bucket, Policy=public) == (403, "AccessDenied")
    assert stored_records(st, bucket) == ["public-access-block"]
    named = policy(bucket, allow({"AWS": "arn:aws:iam::s3tenant1:root"}, "s3:GetObject", f"arn:aws:s3:::{bucket}/*"))
    c.put_bucket_policy(Bucket=bucket, Policy=named)
    # Limited to some addresses, a policy for everyone is not public.
    limited = policy(
        bucket,
        allow("*", "s3:GetObject", f"arn:aws:s3:::{bucket}/*", Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}),
    )
    c.put_bucket_policy(Bucket=bucket, Policy=limited)
    # BlockPublicAcls: public canned ACLs and grants are refused, private ones are not.
    for acl in ("public-read", "public-read-write", "authenticated-read"):
        assert error_of(c.put_object, Bucket=bucket, Key="pub", Body=b"x", ACL=acl)[0] == 403
        assert error_of(c.put_bucket_acl, Bucket=bucket, ACL=acl)[0] == 403
    grant = 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'
    assert error_of(c.put_object_acl, Bucket=bucket, Key="doc.txt", GrantRead=grant)[0] == 403
    assert "pub" not in [o["Key"] for o in st.backend().list_objects_v2(Bucket=bucket)["Contents"]]
    c.put_object(Bucket=bucket, Key="private", Body=b"x", ACL="private")
    c.delete_public_access_block(Bucket=bucket)
    assert error_of(c.get_public_access_block, Bucket=bucket) == (404, "NoSuchPublicAccessBlockConfiguration")
    c.put_object(Bucket=bucket, Key="pub", Body=b"x", ACL="public-read")


def test_ownership_controls(st: Stack) -> None:
    c = st.client()
    name = f"bp-own-{RUN}"
    c.create_bucket(Bucket=name, ObjectOwnership="BucketOwnerEnforced")
    got = c.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"]
    assert got == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    # ACLs are disabled: setting one is refused, and nothing is stored.
    code = error_of(c.put_object, Bucket=name, Key="k", Body=b"x", ACL="public-read")
    assert code == (400, "AccessControlListNotSupported")
    assert error_of(c.put_bucket_acl, Bucket=name, ACL="private") == (400, "AccessControlListNotSupported")
    c.put_object(Bucket=name, Key="k", Body=b"x")
    c.put_object(Bucket=name, Key="k2", Body=b"x", ACL="bucket-owner-full-control")
    c.put_bucket_ownership_controls(Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": "ObjectWriter"}]})
    c.put_object(Bucket=name, Key="k3", Body=b"x", ACL="public-read")
    c.delete_bucket_ownership_controls(Bucket=name)
    assert error_of(c.get_bucket_ownership_controls, Bucket=name) == (404, "OwnershipControlsNotFoundError")
    c.delete_bucket_ownership_controls(Bucket=name)  # again: still fine, as on S3


def test_ownership_must_be_a_known_value(st: Stack) -> None:
    c = st.client()
    name = f"bp-own-bad-{RUN}"
    assert error_of(c.create_bucket, Bucket=name, ObjectOwnership="Nobody")[0] == 400
    assert name not in [b["Name"] for b in st.backend().list_buckets()["Buckets"]]


def test_settings_of_a_missing_bucket(st: Stack) -> None:
    c = st.client()
    assert error_of(c.get_bucket_policy, Bucket=f"bp-missing-{RUN}") == (404, "NoSuchBucket")
    assert error_of(c.get_public_access_block, Bucket=f"bp-missing-{RUN}") == (404, "NoSuchBucket")


def test_settings_calls_obey_identity_policies(st: Stack, bucket: str) -> None:
    alice = as_(st, ALICE)
    text = policy(bucket, allow({"AWS": "alice"}, "s3:*", "*"))
    assert error_of(alice.put_bucket_policy, Bucket=bucket, Policy=text) == (403, "AccessDenied")
    assert error_of(alice.get_public_access_block, Bucket=bucket)[0] == 403
    assert stored_records(st, bucket) == []


# --- anonymous requests --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_st(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A sealgate that serves unsigned requests where a bucket policy lets everyone in."""
    d = tmp_path_factory.mktemp("anonymous")
    s = start_stack(d, moto_url, tls_files, extra=_extra(d / "audit.jsonl") + "[access]\nanonymous = true\n")
    yield s
    s.gate.stop()


def unsigned(st: Stack) -> Any:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=st.gate.url,
        region_name="us-east-1",
        verify=str(st.ca_path),
        config=BotoConfig(signature_version=UNSIGNED, s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def test_unsigned_requests_are_refused_unless_the_config_serves_them(st: Stack, bucket: str) -> None:
    st.client().put_bucket_policy(
        Bucket=bucket, Policy=policy(bucket, allow("*", "s3:GetObject", f"arn:aws:s3:::{bucket}/*"))
    )
    assert error_of(unsigned(st).get_object, Bucket=bucket, Key="doc.txt") == (403, "AccessDenied")


def test_anonymous_requests_get_what_a_public_policy_allows(open_st: Stack) -> None:
    c, anon = open_st.client(), unsigned(open_st)
    name = f"bp-anon-{RUN}"
    c.create_bucket(Bucket=name)
    c.put_object(Bucket=name, Key="doc.txt", Body=b"the plaintext")
    assert error_of(anon.get_object, Bucket=name, Key="doc.txt") == (403, "AccessDenied")  # no policy yet
    c.put_bucket_policy(
        Bucket=name,
        Policy=policy(
            name,
            allow("*", "s3:GetObject", f"arn:aws:s3:::{name}/*"),
            allow("*", "s3:PutObject", f"arn:aws:s3:::{name}/drop/*"),
            allow({"AWS": "alice"}, "s3:ListBucket", f"arn:aws:s3:::{name}"),
        ),
    )
    assert anon.get_object(Bucket=name, Key="doc.txt")["Body"].read() == b"the plaintext"
    assert error_of(anon.list_objects_v2, Bucket=name)[0] == 403  # only alice may list
    assert error_of(anon.put_object, Bucket=name, Key="elsewhere", Body=b"x")[0] == 403
    anon.put_object(Bucket=name, Key="drop/upload", Body=b"anonymous upload")
    assert open_st.backend().get_object(Bucket=name, Key="drop/upload")["Body"].read() != b"anonymous upload"
    assert c.get_object(Bucket=name, Key="drop/upload")["Body"].read() == b"anonymous upload"
    assert error_of(anon.delete_object, Bucket=name, Key="doc.txt")[0] == 403
    assert error_of(anon.list_buckets)[0] == 403
    # RestrictPublicBuckets: the public policy no longer lets anonymous requests in.
    c.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={"RestrictPublicBuckets": True})
    assert error_of(anon.get_object, Bucket=name, Key="doc.txt")[0] == 403
    assert as_(open_st, ALICE).get_object(Bucket=name, Key="doc.txt")["Body"].read() == b"the plaintext"
    audit = (open_st.dir / "audit.jsonl").read_text()
    assert "(anonymous)" in audit


def test_a_missing_bucket_is_no_such_bucket_to_anyone(open_st: Stack) -> None:
    name = f"bp-never-{RUN}"
    assert error_of(unsigned(open_st).get_object, Bucket=name, Key="k") == (404, "NoSuchBucket")
    assert error_of(as_(open_st, ALICE).get_object, Bucket=name, Key="k") == (404, "NoSuchBucket")
    assert error_of(open_st.client().get_object, Bucket=name, Key="k") == (404, "NoSuchBucket")


def test_an_explicit_identity_deny_is_decided_before_any_backend_call(open_st: Stack) -> None:
    """dave's identity policy denies everything: the refusal comes before the bucket's settings
    are read, so even a bucket that does not exist is a 403, not a NoSuchBucket."""
    assert error_of(as_(open_st, DAVE).get_object, Bucket=f"bp-never-{RUN}", Key="k") == (403, "AccessDenied")


def test_a_gateway_that_cannot_decrypt_with_its_key_refuses_bucket_settings(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """Settings are sealed under the bucket's master key; a public-key gateway could not read
    them back, so it refuses to store them (501) rather than lock the bucket."""
    from proxy.kms.keystore import LocalKeyStore
    from tests.conftest import PASSPHRASE, make_keyring

    full_ring, ring = tmp_path / "full", tmp_path / "keyring"
    make_keyring(full_ring)
    full = LocalKeyStore.open(full_ring, PASSPHRASE.encode())
    full.create_asymmetric_key("sealed", "ec-p256")
    full.save()
    make_keyring(ring)
    public = LocalKeyStore.open(ring, PASSPHRASE.encode())
    public.import_asymmetric_key("sealed", full.public_key_pem("sealed"))
    public.save()
    kms = f'provider = "local"\nkeyring = "{ring}"\npassphrase_file = "{ring}.pass"\ndefault_key = "sealed"\n'
    st = start_stack(tmp_path, moto_url, tls_files, kms=kms)
    try:
        c = st.client()
        name = f"bp-public-key-{RUN}"
        c.create_bucket(Bucket=name)
        text = policy(name, deny("*", "s3:DeleteObject", f"arn:aws:s3:::{name}/*"))
        assert error_of(c.put_bucket_policy, Bucket=name, Policy=text) == (501, "NotImplemented")
        assert stored_records(st, name) == []
    finally:
        st.gate.stop()


def test_an_unsigned_upload_is_held_to_the_body_hash_it_names(open_st: Stack) -> None:
    import hashlib

    import urllib3

    c = open_st.client()
    name = f"bp-anon-hash-{RUN}"
    c.create_bucket(Bucket=name)
    c.put_bucket_policy(Bucket=name, Policy=policy(name, allow("*", "s3:PutObject", f"arn:aws:s3:::{name}/*")))
    http = urllib3.PoolManager(ca_certs=str(open_st.ca_path))
    url = f"{open_st.gate.url}/{name}/k"
    wrong = http.request(
        "PUT", url, body=b"body", headers={"x-amz-content-sha256": hashlib.sha256(b"other").hexdigest()}
    )
    assert wrong.status == 400 and b"XAmzContentSHA256Mismatch" in wrong.data
    chunked = http.request(
        "PUT", url, body=b"body", headers={"x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}
    )
    assert chunked.status == 400 and b"InvalidArgument" in chunked.data
    assert "k" not in [o["Key"] for o in open_st.backend().list_objects_v2(Bucket=name).get("Contents", [])]
    right = http.request(
        "PUT", url, body=b"body", headers={"x-amz-content-sha256": hashlib.sha256(b"body").hexdigest()}
    )
    assert right.status == 200
    assert c.get_object(Bucket=name, Key="k")["Body"].read() == b"body"


def test_a_policy_can_require_server_side_encryption_headers(st: Stack, bucket: str) -> None:
    c = st.client()
    require = {"Null": {"s3:x-amz-server-side-encryption": "true"}}
    statement = {**deny("*", "s3:PutObject", f"arn:aws:s3:::{bucket}/*"), "Condition": require}
    c.put_bucket_policy(Bucket=bucket, Policy=policy(bucket, statement))
    assert error_of(c.put_object, Bucket=bucket, Key="plain", Body=b"x") == (403, "AccessDenied")
    c.put_object(Bucket=bucket, Key="asked", Body=b"x", ServerSideEncryption="AES256")
    assert st.backend().head_object(Bucket=bucket, Key="asked")["ServerSideEncryption"] == "AES256"


def test_a_deleted_bucket_leaves_no_settings_behind(open_st: Stack) -> None:
    """The settings go with the bucket; this process must not go on applying the cached ones
    to a new bucket of the same name (a public read would outlive the bucket it was for)."""
    c, anon = open_st.client(), unsigned(open_st)
    name = f"bp-again-{RUN}"
    c.create_bucket(Bucket=name)
    c.put_object(Bucket=name, Key="doc.txt", Body=b"public once")
    c.put_bucket_policy(Bucket=name, Policy=policy(name, allow("*", "s3:GetObject", f"arn:aws:s3:::{name}/*")))
    assert anon.get_object(Bucket=name, Key="doc.txt")["Body"].read() == b"public once"
    c.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={"RestrictPublicBuckets": True})
    assert error_of(anon.get_object, Bucket=name, Key="doc.txt") == (403, "AccessDenied")
    c.delete_object(Bucket=name, Key="doc.txt")
    c.delete_bucket(Bucket=name)
    # At once, as for a bucket that never was (not the deleted bucket's cached refusal).
    assert error_of(anon.get_object, Bucket=name, Key="doc.txt") == (404, "NoSuchBucket")
    c.create_bucket(Bucket=name)
    c.put_object(Bucket=name, Key="doc.txt", Body=b"private now")
    assert error_of(anon.get_object, Bucket=name, Key="doc.txt") == (403, "AccessDenied")
