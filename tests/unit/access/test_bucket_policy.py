"""Bucket policies: principals, resources, public-ness, and how they combine with identity policies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.access.actions import Need
from proxy.access.authorize import Caller, decide
from proxy.access.bucket_policy import MalformedPolicy, parse_bucket_policy
from proxy.config import Config
from proxy.config.access import KeyPolicy
from proxy.s3.bucket_access import (
    PublicAccessBlock,
    ownership_xml,
    parse_ownership_controls,
    parse_public_access_block,
    public_acl_in,
    sets_acl,
)
from proxy.s3.errors import S3Error


def doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def stmt(
    effect: str, principal: Any, action: str = "s3:GetObject", resource: str = "arn:aws:s3:::b/*", **kw: Any
) -> dict[str, Any]:
    return {"Effect": effect, "Principal": principal, "Action": action, "Resource": resource, **kw}


CLIENTS = {"alice", "bob", "tester"}


def parse(*statements: dict[str, Any]) -> Any:
    return parse_bucket_policy("b", doc(*statements), lambda n: n in CLIENTS)


@pytest.mark.parametrize(
    ("principal", "alice", "anonymous"),
    [
        ("*", True, True),
        ({"AWS": "*"}, True, True),
        ({"AWS": "alice"}, True, False),
        ({"AWS": ["bob", "arn:aws:iam::123456789012:user/alice"]}, True, False),
        ({"AWS": "bob"}, False, False),
        ({"AWS": "arn:aws:iam::123456789012:root"}, False, False),  # an Allow to the account defers
        ({"AWS": "123456789012"}, False, False),
    ],
)
def test_whom_an_allow_covers(principal: Any, alice: bool, anonymous: bool) -> None:
    p = parse(stmt("Allow", principal))
    assert p.decide("alice", "s3:GetObject", "arn:aws:s3:::b/k", {}).allowed is alice
    assert p.decide(None, "s3:GetObject", "arn:aws:s3:::b/k", {}).allowed is anonymous
    assert p.decide(None, "s3:GetObject", "arn:aws:s3:::b/k", {}, restrict_public=True).allowed is False


def test_a_deny_to_the_account_binds_every_client_but_not_anonymous_requests() -> None:
    p = parse(stmt("Deny", {"AWS": "arn:aws:iam::123456789012:root"}))
    assert p.decide("bob", "s3:GetObject", "arn:aws:s3:::b/k", {}).effect == "Deny"
    assert p.decide(None, "s3:GetObject", "arn:aws:s3:::b/k", {}).effect == "ImplicitDeny"


@pytest.mark.parametrize(
    ("statement", "words"),
    [
        (stmt("Allow", {"AWS": "mallory"}), "no client is named"),
        (stmt("Allow", {"Service": "s3.amazonaws.com"}), "Invalid principal"),
        (stmt("Allow", {"CanonicalUser": "abc"}), "Invalid principal"),
        (stmt("Allow", {"AWS": []}), "Invalid principal"),
        (stmt("Allow", {"AWS": "has space"}), "Invalid principal"),
        (stmt("Allow", "*", resource="arn:aws:s3:::other/*"), "invalid resource"),
        (stmt("Allow", "*", resource="arn:aws:s3:::bb/*"), "invalid resource"),
        (stmt("Allow", "*", action="s3:GetObjekt"), "unknown action"),
        ({"Effect": "Allow", "NotPrincipal": "*", "Action": "s3:*", "Resource": "*"}, "NotPrincipal"),
        ({"Effect": "Allow", "Action": "s3:*", "Resource": "*"}, "Principal"),
    ],
)
def test_malformed(statement: dict[str, Any], words: str) -> None:
    with pytest.raises(MalformedPolicy, match=words):
        parse(statement)


@pytest.mark.parametrize(
    "resource", ["*", "arn:aws:s3:::b", "arn:aws:s3:::b/*", "arn:aws:s3:::*", "arn:aws:s3:::*/*", "arn:aws:s3:::b*"]
)
def test_resources_that_can_be_in_the_bucket(resource: str) -> None:
    parse(stmt("Allow", "*", resource=resource))


def test_limits_and_json() -> None:
    with pytest.raises(MalformedPolicy, match="20 KB"):
        parse_bucket_policy("b", doc(stmt("Allow", "*", Sid="x" * 21_000)))
    with pytest.raises(MalformedPolicy, match="JSON"):
        parse_bucket_policy("b", "{")
    with pytest.raises(MalformedPolicy, match="duplicate"):
        parse_bucket_policy("b", '{"Version": "2012-10-17", "Version": "2012-10-17", "Statement": []}')


@pytest.mark.parametrize(
    ("statement", "public"),
    [
        (stmt("Allow", "*"), True),
        (stmt("Allow", {"AWS": "alice"}), False),
        (stmt("Deny", "*"), False),
        (stmt("Allow", "*", Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}), False),
        (stmt("Allow", "*", Condition={"StringEquals": {"s3:prefix": "x"}}), True),
    ],
)
def test_public(statement: dict[str, Any], public: bool) -> None:
    assert parse(statement).public is public


def _config(with_policies: bool) -> Config:
    policies = []
    if with_policies:
        full = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        policies = [{"name": "full", "principals": ["tester"], "document": json.dumps(full)}]
    return Config.model_validate(
        {
            "server": {"listen": "127.0.0.1:8443", "tls_cert": "/dev/null", "tls_key": "/dev/null"},
            "backend": {"endpoint": "http://127.0.0.1:9000", "region": "us-east-1"},
            "kms": {"provider": "aws-kms", "default_key": "alias/x", "region": "us-east-1"},
            "clients": [
                {"name": n, "access_key_id": f"AKID{n.upper():0<16}", "secret_access_key": "s" * 20}
                for n in ("alice", "tester")
            ],
            "policies": policies,
        }
    )


def test_combined_with_identity_policies() -> None:
    need = Need("s3:GetObject", "b", "k")
    config = _config(with_policies=True)
    alice, tester = Caller("alice"), Caller("tester")
    grant = {"b": (parse(stmt("Allow", {"AWS": "alice"})), False)}
    refuse = {"b": (parse(stmt("Deny", {"AWS": "tester"})), False)}
    assert not decide(config, alice, need).allowed
    assert decide(config, alice, need, buckets=grant).allowed
    assert decide(config, alice, need, buckets=grant).policy == "bucket policy of b"
    assert decide(config, tester, need).allowed
    assert decide(config, tester, need, buckets=refuse).effect == "Deny"
    assert decide(config, tester, Need("s3:GetObject", "other", "k"), buckets=refuse).allowed  # only its bucket
    assert decide(config, Caller.operator(), need, buckets=refuse).allowed  # the operator: no policy binds


def test_without_identity_policies_a_bucket_policy_can_only_deny() -> None:
    config = _config(with_policies=False)
    need = Need("s3:GetObject", "b", "k")
    assert decide(
        config, Caller("alice"), need, buckets={"b": (parse(stmt("Allow", {"AWS": "tester"})), False)}
    ).allowed
    assert not decide(config, Caller("alice"), need, buckets={"b": (parse(stmt("Deny", "*")), False)}).allowed


def test_public_access_block_documents() -> None:
    body = (
        b'<PublicAccessBlockConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<BlockPublicAcls>true</BlockPublicAcls><RestrictPublicBuckets>TRUE</RestrictPublicBuckets>"
        b"</PublicAccessBlockConfiguration>"
    )
    block = parse_public_access_block(body)
    assert block == PublicAccessBlock(block_public_acls=True, restrict_public_buckets=True)
    assert parse_public_access_block(block.to_xml()) == block
    for bad in (
        b"<Other/>",
        b"<PublicAccessBlockConfiguration><BlockPublicAcls>yes</BlockPublicAcls></PublicAccessBlockConfiguration>",
        b"<",
    ):
        with pytest.raises(S3Error):
            parse_public_access_block(bad)


def test_ownership_documents() -> None:
    assert parse_ownership_controls(ownership_xml("ObjectWriter")) == "ObjectWriter"
    with pytest.raises(S3Error):
        parse_ownership_controls(
            b"<OwnershipControls><Rule><ObjectOwnership>Me</ObjectOwnership></Rule></OwnershipControls>"
        )
    with pytest.raises(S3Error):
        parse_ownership_controls(b"<OwnershipControls></OwnershipControls>")


def test_which_acls_are_public_or_set() -> None:
    assert public_acl_in({"x-amz-acl": "public-read"})
    assert not public_acl_in({"x-amz-acl": "private"})
    assert public_acl_in({"x-amz-grant-read": 'uri="http://acs.amazonaws.com/groups/global/AuthenticatedUsers"'})
    assert public_acl_in({}, b"<Grant><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grant>")
    assert sets_acl({"x-amz-acl": "private"})
    assert not sets_acl({"x-amz-acl": "bucket-owner-full-control"})
    assert not sets_acl({})
    owner_only = (
        b"<AccessControlPolicy><AccessControlList><Grant><Permission>FULL_CONTROL</Permission></Grant>"
        b"</AccessControlList></AccessControlPolicy>"
    )
    assert not sets_acl({}, owner_only)


def test_anonymous_requests_get_only_what_a_bucket_policy_grants_to_everyone() -> None:
    from proxy.s3.sigv4 import ANONYMOUS

    anonymous = Caller(ANONYMOUS)
    need = Need("s3:GetObject", "b", "k")
    for config in (_config(with_policies=False), _config(with_policies=True)):
        assert not decide(config, anonymous, need).allowed  # not even where every client may do everything
        assert not decide(
            config, anonymous, need, buckets={"b": (parse(stmt("Allow", {"AWS": "alice"})), False)}
        ).allowed
        assert decide(config, anonymous, need, buckets={"b": (parse(stmt("Allow", "*")), False)}).allowed
        assert not decide(config, anonymous, need, buckets={"b": (parse(stmt("Allow", "*")), True)}).allowed
    keyed = _config(with_policies=False).model_copy(
        update={"keys": (KeyPolicy(id="default", encrypt=("*",), decrypt=("*",)),)}
    )
    assert keyed.may_use_key("alice", "decrypt", "default")
    assert not keyed.may_use_key(ANONYMOUS, "decrypt", "default")  # key policies name clients only
