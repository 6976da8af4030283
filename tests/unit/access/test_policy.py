"""The identity-policy evaluator: IAM's grammar, its condition semantics, and properties of the decision."""

from __future__ import annotations

import fnmatch
import json
import pickle
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.access.policy import (
    CONDITION_KEYS,
    KNOWN_S3_ACTIONS,
    Context,
    Decision,
    Policy,
    PolicyError,
    evaluate,
    parse_policy,
)

BUCKET = "arn:aws:s3:::photos"
OBJECT = "arn:aws:s3:::photos/2024/a.jpg"
CTX: Context = {
    "aws:username": "alice",
    "aws:userid": "alice",
    "aws:sourceip": "127.0.0.1",
    "aws:securetransport": "true",
    "aws:currenttime": "2026-12-01T18:00:00Z",
    "aws:epochtime": "1796148000",
}


def doc(*statements: dict[str, Any], version: str = "2012-10-17") -> dict[str, Any]:
    return {"Version": version, "Statement": list(statements)}


def allow(action: Any = "s3:GetObject", resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: Any = "s3:GetObject", resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def decide(
    statements: list[dict[str, Any]] | dict[str, Any],
    action: str = "s3:GetObject",
    resource: str = OBJECT,
    context: Context = CTX,
    version: str = "2012-10-17",
) -> Decision:
    if isinstance(statements, dict):
        statements = [statements]
    return evaluate([parse_policy("p", doc(*statements, version=version))], action, resource, context)


def allows_when(condition: dict[str, Any], context: Context) -> bool:
    return decide(allow(Condition=condition), context=context).allowed


def error(document: Any, name: str = "p") -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        parse_policy(name, document)
    return caught.value


# --- the decision --------------------------------------------------------------------------------


def test_allow_deny_and_implicit_deny_name_what_decided() -> None:
    policies = [
        parse_policy("readers", doc(allow("s3:Get*", f"{BUCKET}/*", Sid="AllowReads"))),
        parse_policy("no-secrets", doc(deny("s3:*", f"{BUCKET}/secret/*"))),
    ]
    allowed = evaluate(policies, "s3:GetObject", OBJECT, CTX)
    assert allowed == Decision(allowed=True, effect="Allow", policy="readers", statement="AllowReads")
    assert allowed.describe() == 'allowed by policy "readers", statement "AllowReads"'

    denied = evaluate(policies, "s3:GetObject", f"{BUCKET}/secret/k", CTX)
    assert denied == Decision(allowed=False, effect="Deny", policy="no-secrets", statement="#1")
    assert denied.describe() == 'denied by policy "no-secrets", statement #1'

    nothing = evaluate(policies, "s3:PutObject", OBJECT, CTX)
    assert nothing == Decision(allowed=False, effect="ImplicitDeny", policy=None, statement=None)
    assert nothing.describe() == "no policy allows it"
    assert evaluate([], "s3:GetObject", OBJECT, CTX) == nothing


def test_the_first_matching_statement_is_named() -> None:
    policy = parse_policy("p", doc(allow(Sid="A"), allow(Sid="B"), deny("s3:PutObject", Sid="C"), deny(Sid="D")))
    assert evaluate([policy], "s3:GetObject", OBJECT, CTX).statement == "D"
    assert evaluate([policy], "s3:ListBucket", OBJECT, CTX).effect == "ImplicitDeny"
    policy = parse_policy("p", doc(allow(Sid="A"), allow(Sid="B")))
    assert evaluate([policy], "s3:GetObject", OBJECT, CTX).statement == "A"


def test_a_single_statement_document_and_the_2008_version() -> None:
    policy = parse_policy("p", {"Version": "2008-10-17", "Statement": allow()})
    assert len(policy.statements) == 1
    assert evaluate([policy], "s3:GetObject", OBJECT, CTX).allowed


def test_json_text_parses_like_the_object() -> None:
    document = doc(allow(["s3:GetObject", "s3:PutObject"], [BUCKET, f"{BUCKET}/*"]), deny("s3:DeleteObject"))
    assert parse_policy("p", json.dumps(document)) == parse_policy("p", document)


# --- actions -------------------------------------------------------------------------------------


def test_actions_match_case_insensitively_with_wildcards() -> None:
    assert decide(allow("S3:getobject")).allowed
    assert decide(allow("s3:Get*")).allowed
    assert decide(allow("s3:Get?bject")).allowed
    assert decide(allow("s3:*Object")).allowed
    assert decide(allow("*")).allowed
    assert not decide(allow("s3:Put*")).allowed
    assert not decide(allow("s3:GetObjectVersion")).allowed
    assert decide(allow("s3:ListBucket*"), "s3:ListBucketVersions").allowed
    assert not decide(allow("s3:ListBucket"), "s3:ListBucketVersions").allowed


def test_not_action_covers_every_other_action() -> None:
    statement = {"Effect": "Allow", "NotAction": ["s3:Delete*", "s3:PutBucketPolicy"], "Resource": "*"}
    assert decide(statement, "s3:GetObject").allowed
    assert not decide(statement, "s3:DeleteObjectVersion").allowed
    assert not decide(statement, "s3:PutBucketPolicy").allowed


# Actions that real-world S3 policies name: each must parse.
COMMON_ACTIONS = """
GetObject GetObjectVersion PutObject DeleteObject DeleteObjectVersion ListBucket ListBucketVersions
ListBucketMultipartUploads ListMultipartUploadParts AbortMultipartUpload ListAllMyBuckets
CreateBucket DeleteBucket GetBucketLocation GetBucketVersioning PutBucketVersioning
GetObjectTagging PutObjectTagging DeleteObjectTagging GetObjectVersionTagging
PutObjectVersionTagging DeleteObjectVersionTagging GetObjectRetention PutObjectRetention
GetObjectLegalHold PutObjectLegalHold BypassGovernanceRetention GetBucketObjectLockConfiguration
PutBucketObjectLockConfiguration PutObjectAcl GetObjectAcl GetBucketPolicy PutBucketPolicy
DeleteBucketPolicy RestoreObject GetObjectAttributes
"""


def test_the_action_table_has_what_real_policies_use() -> None:
    for name in COMMON_ACTIONS.split():
        assert f"s3:{name}" in KNOWN_S3_ACTIONS
    assert all(a.startswith("s3:") and a[3:].isalnum() for a in KNOWN_S3_ACTIONS)


def test_an_action_outside_the_table_still_meets_wildcards() -> None:
    # The caller passes canonical actions; a newer one than the table is matched by pattern, not dropped.
    assert decide(allow("*"), "s3:SomeNewAction").allowed
    assert decide(allow("s3:*"), "s3:SomeNewAction").allowed
    assert not decide(allow("s3:Get*"), "s3:SomeNewAction").allowed


# --- resources -----------------------------------------------------------------------------------


def test_resources_are_case_sensitive_and_wildcards_span_slashes() -> None:
    assert decide(allow(resource=f"{BUCKET}/*")).allowed
    assert decide(allow(resource="arn:aws:s3:::photos/20??/*.jpg")).allowed
    assert decide(allow(resource="arn:aws:s3:::*/a.jpg")).allowed
    assert not decide(allow(resource="arn:aws:s3:::Photos/*")).allowed
    assert not decide(allow(resource=f"{BUCKET}/*"), resource=BUCKET).allowed
    assert decide(allow(resource=BUCKET), resource=BUCKET).allowed
    assert decide(allow("s3:ListAllMyBuckets", "arn:aws:s3:::*"), "s3:ListAllMyBuckets", "arn:aws:s3:::*").allowed
    # Regex metacharacters in a policy are literal.
    assert not decide(allow(resource="arn:aws:s3:::photos/.*"), resource="arn:aws:s3:::photos/xyz").allowed
    assert decide(allow(resource="arn:aws:s3:::photos/a+b(1)"), resource="arn:aws:s3:::photos/a+b(1)").allowed
    # Keys may hold newlines; * still spans them.
    assert decide(allow(resource=f"{BUCKET}/*"), resource=f"{BUCKET}/a\nb").allowed


def test_not_resource() -> None:
    statement = {"Effect": "Deny", "Action": "s3:*", "NotResource": [f"{BUCKET}/public/*"]}
    policies = [parse_policy("p", doc(allow("s3:*"), statement))]
    assert evaluate(policies, "s3:GetObject", f"{BUCKET}/public/x", CTX).allowed
    assert evaluate(policies, "s3:GetObject", OBJECT, CTX).effect == "Deny"


# --- policy variables ----------------------------------------------------------------------------


def test_username_variable_in_a_resource() -> None:
    statement = allow("s3:*", "arn:aws:s3:::photos/home/${aws:username}/*")
    assert decide(statement, resource="arn:aws:s3:::photos/home/alice/x").allowed
    assert not decide(statement, resource="arn:aws:s3:::photos/home/bob/x").allowed


def test_a_substituted_value_is_literal() -> None:
    statement = allow("s3:*", "arn:aws:s3:::photos/home/${aws:username}/*")
    for name in ("*", "?????", "a.b", ".*"):
        ctx = {**CTX, "aws:username": name}
        assert decide(statement, resource=f"arn:aws:s3:::photos/home/{name}/x", context=ctx).allowed
        assert not decide(statement, resource="arn:aws:s3:::photos/home/alice/x", context=ctx).allowed
    like = {"StringLike": {"s3:prefix": "home/${aws:username}/*"}}
    assert allows_when(like, {**CTX, "aws:username": "*", "s3:prefix": "home/*/x"})
    assert not allows_when(like, {**CTX, "aws:username": "*", "s3:prefix": "home/bob/x"})


def test_literal_star_question_mark_and_dollar() -> None:
    statement = allow(resource="arn:aws:s3:::photos/${*}${?}${$}{x}")
    assert decide(statement, resource="arn:aws:s3:::photos/*?${x}").allowed
    assert not decide(statement, resource="arn:aws:s3:::photos/ab${x}").allowed
    assert allows_when({"StringLike": {"s3:prefix": "a${*}"}}, {**CTX, "s3:prefix": "a*"})
    assert not allows_when({"StringLike": {"s3:prefix": "a${*}"}}, {**CTX, "s3:prefix": "ab"})


def test_a_missing_variable_matches_nothing_unless_it_has_a_default() -> None:
    anonymous = {k: v for k, v in CTX.items() if k != "aws:username"}
    statement = allow(resource="arn:aws:s3:::photos/home/${aws:username}/*")
    assert not decide(statement, resource="arn:aws:s3:::photos/home//x", context=anonymous).allowed
    assert not decide(statement, resource="arn:aws:s3:::photos/home/${aws:username}/x", context=anonymous).allowed
    with_default = allow(resource="arn:aws:s3:::photos/home/${aws:username, 'nobody''s'}/*")
    assert decide(with_default, resource="arn:aws:s3:::photos/home/nobody's/x", context=anonymous).allowed
    assert decide(with_default, resource="arn:aws:s3:::photos/home/alice/x").allowed
    # NotResource: the unresolved entry excludes nothing.
    guard = {"Effect": "Deny", "Action": "s3:*", "NotResource": "arn:aws:s3:::photos/home/${aws:username}/*"}
    assert decide([allow(), guard], resource="arn:aws:s3:::photos/home/alice/x").allowed
    assert decide([allow(), guard], resource="arn:aws:s3:::photos/home/alice/x", context=anonymous).effect == "Deny"


def test_a_multivalued_key_is_no_variable() -> None:
    statement = allow(resource="arn:aws:s3:::photos/${aws:username}")
    assert not decide(statement, resource="arn:aws:s3:::photos/alice", context={"aws:username": ("alice",)}).allowed


def test_variables_in_condition_values() -> None:
    condition = {"StringEquals": {"s3:prefix": ["home/${aws:username}/", "shared/"]}}
    assert allows_when(condition, {**CTX, "s3:prefix": "home/alice/"})
    assert allows_when(condition, {**CTX, "s3:prefix": "shared/"})
    assert not allows_when(condition, {**CTX, "s3:prefix": "home/bob/"})
    ignore_case = {"StringEqualsIgnoreCase": {"aws:userid": "${aws:username}"}}
    assert allows_when(ignore_case, {**CTX, "aws:userid": "ALICE"})


def test_variables_are_plain_text_in_the_2008_version() -> None:
    statement = allow(resource="arn:aws:s3:::photos/${aws:username}")
    assert decide(statement, resource="arn:aws:s3:::photos/${aws:username}", version="2008-10-17").allowed
    assert not decide(statement, resource="arn:aws:s3:::photos/alice", version="2008-10-17").allowed


# --- conditions ----------------------------------------------------------------------------------


def test_conditions_and_across_operators_and_keys_or_across_values() -> None:
    condition = {
        "StringEquals": {"aws:username": ["alice", "bob"], "aws:securetransport": "true"},
        "IpAddress": {"aws:SourceIp": "127.0.0.0/8"},
    }
    assert allows_when(condition, CTX)
    assert allows_when(condition, {**CTX, "aws:username": "bob"})
    assert not allows_when(condition, {**CTX, "aws:username": "carol"})
    assert not allows_when(condition, {**CTX, "aws:securetransport": "false"})
    assert not allows_when(condition, {**CTX, "aws:sourceip": "10.1.2.3"})


def test_string_operators() -> None:
    ctx = {**CTX, "s3:prefix": "Home/Alice/"}
    assert allows_when({"StringEquals": {"s3:prefix": "Home/Alice/"}}, ctx)
    assert not allows_when({"StringEquals": {"s3:prefix": "home/alice/"}}, ctx)
    assert allows_when({"StringEqualsIgnoreCase": {"s3:prefix": "home/alice/"}}, ctx)
    assert not allows_when({"StringNotEqualsIgnoreCase": {"s3:prefix": "home/alice/"}}, ctx)
    assert allows_when({"StringNotEquals": {"s3:prefix": ["a", "b"]}}, ctx)
    assert not allows_when({"StringNotEquals": {"s3:prefix": ["a", "Home/Alice/"]}}, ctx)
    assert allows_when({"StringLike": {"s3:prefix": ["x*", "Home/*"]}}, ctx)
    assert not allows_when({"StringLike": {"s3:prefix": "home/*"}}, ctx)
    assert allows_when({"StringNotLike": {"s3:prefix": "home/*"}}, ctx)
    assert not allows_when({"StringNotLike": {"s3:prefix": ["x", "H*"]}}, ctx)
    # Numbers and booleans in a string operator are compared as their JSON text.
    assert allows_when({"StringEquals": {"s3:max-keys": 10}}, {**CTX, "s3:max-keys": "10"})
    assert allows_when({"StringEquals": {"aws:SecureTransport": True}}, CTX)


def test_condition_keys_are_case_insensitive_and_operators_too() -> None:
    assert allows_when({"StringEquals": {"AWS:UserName": "alice"}}, CTX)
    assert allows_when({"stringequals": {"aws:username": "alice"}}, CTX)


def test_numeric_operators() -> None:
    ctx = {**CTX, "s3:max-keys": "100"}
    assert allows_when({"NumericEquals": {"s3:max-keys": 100}}, ctx)
    assert allows_when({"NumericEquals": {"s3:max-keys": "100.0"}}, ctx)
    assert allows_when({"NumericNotEquals": {"s3:max-keys": [10, 20]}}, ctx)
    assert not allows_when({"NumericNotEquals": {"s3:max-keys": [10, 100]}}, ctx)
    assert allows_when({"NumericLessThanEquals": {"s3:max-keys": 100}}, ctx)
    assert not allows_when({"NumericLessThan": {"s3:max-keys": 100}}, ctx)
    assert allows_when({"NumericGreaterThan": {"s3:max-keys": 99.5}}, ctx)
    assert allows_when({"NumericGreaterThanEquals": {"s3:max-keys": "100"}}, ctx)
    assert not allows_when({"NumericGreaterThan": {"s3:max-keys": 100}}, ctx)
    # A request value that is no number satisfies neither the operator nor its negation.
    bad = {**CTX, "s3:max-keys": "lots"}
    assert not allows_when({"NumericLessThan": {"s3:max-keys": 1000}}, bad)
    assert not allows_when({"NumericNotEquals": {"s3:max-keys": 1000}}, bad)
    assert not allows_when({"NumericLessThan": {"s3:max-keys": 1000}}, {**CTX, "s3:max-keys": "nan"})


def test_date_operators_take_iso_8601_and_epoch_seconds() -> None:
    assert allows_when({"DateGreaterThan": {"aws:CurrentTime": "2026-01-01T00:00:00Z"}}, CTX)
    assert allows_when({"DateLessThan": {"aws:CurrentTime": "2027-01-01"}}, CTX)
    assert not allows_when({"DateLessThan": {"aws:CurrentTime": "2026-12-01T18:00:00Z"}}, CTX)
    assert allows_when({"DateLessThanEquals": {"aws:CurrentTime": "2026-12-01T19:00:00+01:00"}}, CTX)
    assert allows_when({"DateEquals": {"aws:CurrentTime": 1796148000}}, CTX)
    assert allows_when({"DateEquals": {"aws:EpochTime": "2026-12-01T18:00:00Z"}}, CTX)
    assert allows_when({"DateNotEquals": {"aws:EpochTime": "1796148001"}}, CTX)
    assert allows_when({"DateGreaterThanEquals": {"aws:EpochTime": 1796148000}}, CTX)
    assert not allows_when(
        {"DateGreaterThan": {"aws:CurrentTime": "2026-12-01T18:00:00Z"}}, {**CTX, "aws:currenttime": "soon"}
    )


def test_bool() -> None:
    assert allows_when({"Bool": {"aws:SecureTransport": "true"}}, CTX)
    assert allows_when({"Bool": {"aws:SecureTransport": True}}, CTX)
    assert not allows_when({"Bool": {"aws:SecureTransport": "false"}}, CTX)
    assert allows_when({"Bool": {"aws:SecureTransport": "false"}}, {**CTX, "aws:securetransport": "FALSE"})
    tls_only = [allow(), deny("*", "*", Condition={"Bool": {"aws:SecureTransport": "false"}})]
    assert decide(tls_only).allowed
    assert decide(tls_only, context={**CTX, "aws:securetransport": "false"}).effect == "Deny"


def test_ip_addresses_v4_and_v6() -> None:
    ranges = {"IpAddress": {"aws:SourceIp": ["192.0.2.0/24", "2001:db8::/32", "203.0.113.7"]}}
    assert allows_when(ranges, {**CTX, "aws:sourceip": "192.0.2.55"})
    assert allows_when(ranges, {**CTX, "aws:sourceip": "203.0.113.7"})
    assert allows_when(ranges, {**CTX, "aws:sourceip": "2001:db8::1"})
    assert allows_when(ranges, {**CTX, "aws:sourceip": "::ffff:192.0.2.1"})
    assert not allows_when(ranges, {**CTX, "aws:sourceip": "203.0.113.8"})
    assert not allows_when(ranges, {**CTX, "aws:sourceip": "2001:db9::1"})
    assert not allows_when(ranges, {**CTX, "aws:sourceip": "not-an-ip"})
    assert allows_when({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, CTX)
    assert not allows_when({"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "127.0.0.1/32"]}}, CTX)
    assert not allows_when({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {**CTX, "aws:sourceip": "nope"})


MISSING = {k: v for k, v in CTX.items() if k != "aws:sourceip"}


@pytest.mark.parametrize(
    ("operator", "value", "holds"),
    [
        # IAM: a missing key fails a positive operator but satisfies a negated one (StringNotLike, ...).
        ("StringEquals", "x", False),
        ("StringNotEquals", "x", True),
        ("StringEqualsIgnoreCase", "x", False),
        ("StringNotEqualsIgnoreCase", "x", True),
        ("StringLike", "*", False),
        ("StringNotLike", "*", True),
        ("NumericEquals", 1, False),
        ("NumericNotEquals", 1, True),
        ("NumericLessThan", 1, False),
        ("DateEquals", 1, False),
        ("DateNotEquals", 1, True),
        ("DateGreaterThan", 1, False),
        ("Bool", "true", False),
        ("IpAddress", "0.0.0.0/0", False),
        ("NotIpAddress", "10.0.0.0/8", True),
        # ...IfExists: a missing key makes it true, whichever the operator.
        ("StringEqualsIfExists", "x", True),
        ("StringNotLikeIfExists", "*", True),
        ("NumericLessThanIfExists", 1, True),
        ("BoolIfExists", "true", True),
        ("IpAddressIfExists", "10.0.0.0/8", True),
        ("NotIpAddressIfExists", "10.0.0.0/8", True),
        # Set qualifiers: ForAllValues holds vacuously, ForAnyValue does not.
        ("ForAllValues:StringEquals", "x", True),
        ("ForAllValues:StringNotLike", "x", True),
        ("ForAnyValue:StringEquals", "x", False),
        ("ForAnyValue:StringNotEquals", "x", False),
        ("ForAnyValue:StringEqualsIfExists", "x", True),
    ],
)
def test_a_missing_key(operator: str, value: Any, holds: bool) -> None:
    assert allows_when({operator: {"aws:SourceIp": value}}, MISSING) is holds
    assert allows_when({operator: {"aws:SourceIp": value}}, {**MISSING, "aws:sourceip": ()}) is holds


def test_if_exists_checks_a_present_key() -> None:
    condition = {"StringEqualsIfExists": {"s3:x-amz-acl": "private"}}
    assert allows_when(condition, {**CTX, "s3:x-amz-acl": "private"})
    assert not allows_when(condition, {**CTX, "s3:x-amz-acl": "public-read"})
    assert allows_when(condition, CTX)


def test_null() -> None:
    assert allows_when({"Null": {"s3:x-amz-acl": "true"}}, CTX)
    assert not allows_when({"Null": {"s3:x-amz-acl": "true"}}, {**CTX, "s3:x-amz-acl": "private"})
    assert allows_when({"Null": {"s3:x-amz-acl": False}}, {**CTX, "s3:x-amz-acl": ""})
    assert not allows_when({"Null": {"s3:x-amz-acl": "false"}}, CTX)
    assert allows_when({"Null": {"s3:x-amz-acl": ["true", "false"]}}, CTX)


def test_set_qualifiers_on_multivalued_keys() -> None:
    keys = {**CTX, "s3:prefix": ("home/a", "home/b")}
    assert allows_when({"ForAllValues:StringLike": {"s3:prefix": "home/*"}}, keys)
    assert not allows_when({"ForAllValues:StringLike": {"s3:prefix": "home/a"}}, keys)
    assert allows_when({"ForAllValues:StringEquals": {"s3:prefix": ["home/a", "home/b", "home/c"]}}, keys)
    assert allows_when({"ForAnyValue:StringEquals": {"s3:prefix": ["home/b", "x"]}}, keys)
    assert not allows_when({"ForAnyValue:StringEquals": {"s3:prefix": "x"}}, keys)
    assert allows_when({"ForAnyValue:StringNotEquals": {"s3:prefix": "home/a"}}, keys)
    assert not allows_when({"ForAllValues:StringNotEquals": {"s3:prefix": "home/a"}}, keys)
    assert allows_when({"forallvalues:StringNotLike": {"s3:prefix": "tmp/*"}}, keys)
    # Unqualified: a positive operator needs some value to match, a negated one that none does.
    assert allows_when({"StringEquals": {"s3:prefix": "home/b"}}, keys)
    assert not allows_when({"StringNotEquals": {"s3:prefix": "home/b"}}, keys)
    assert allows_when({"StringNotEquals": {"s3:prefix": "home/c"}}, keys)
    # A one-value tuple is that value.
    assert allows_when({"StringEquals": {"s3:prefix": "home/a"}}, {**CTX, "s3:prefix": ("home/a",)})


def test_an_empty_condition_block_is_no_condition() -> None:
    assert decide(allow(Condition={})).allowed


def test_the_aws_home_directory_example() -> None:
    # AWS's own example policy for per-user home folders, nearly verbatim.
    policy = parse_policy(
        "home",
        """{
          "Version": "2012-10-17",
          "Statement": [
            {"Sid": "AllowListingOfUserFolder", "Action": ["s3:ListBucket"], "Effect": "Allow",
             "Resource": ["arn:aws:s3:::photos"],
             "Condition": {"StringLike": {"s3:prefix": ["", "home/", "home/${aws:username}/*"]}}},
            {"Sid": "AllowAllS3ActionsInUserFolder", "Effect": "Allow", "Action": ["s3:*"],
             "Resource": ["arn:aws:s3:::photos/home/${aws:username}/*"]},
            {"Sid": "AllowGroupToSeeBucketListInTheConsole",
             "Action": ["s3:ListAllMyBuckets", "s3:GetBucketLocation"], "Effect": "Allow",
             "Resource": ["arn:aws:s3:::*"]}
          ]
        }""",
    )
    assert [s.label for s in policy.statements] == [
        "AllowListingOfUserFolder",
        "AllowAllS3ActionsInUserFolder",
        "AllowGroupToSeeBucketListInTheConsole",
    ]

    def ok(action: str, resource: str, **extra: str) -> bool:
        return evaluate([policy], action, resource, {**CTX, **extra}).allowed

    assert ok("s3:ListBucket", BUCKET, **{"s3:prefix": "home/alice/docs"})
    assert ok("s3:ListBucket", BUCKET, **{"s3:prefix": ""})
    assert not ok("s3:ListBucket", BUCKET, **{"s3:prefix": "home/bob/"})
    assert not ok("s3:ListBucket", BUCKET)
    assert ok("s3:PutObject", f"{BUCKET}/home/alice/a.txt")
    assert not ok("s3:PutObject", f"{BUCKET}/home/bob/a.txt")
    assert ok("s3:ListAllMyBuckets", "arn:aws:s3:::*")


# --- errors --------------------------------------------------------------------------------------


def test_error_names_policy_statement_and_problem() -> None:
    e = error(doc(allow(), allow("s3:PutObjekt")), name="uploads-write-only")
    assert (e.policy, e.statement, e.problem) == ("uploads-write-only", "#2", 'unknown action "s3:PutObjekt"')
    assert str(e) == 'policy "uploads-write-only", statement #2: unknown action "s3:PutObjekt"'
    e = error(doc(allow("s3:PutObjekt", Sid="AllowUploads")))
    assert e.statement == "AllowUploads"
    assert str(e) == 'policy "p", statement "AllowUploads": unknown action "s3:PutObjekt"'
    e = error({"Statement": [allow()]})
    assert e.statement is None
    assert str(e).startswith('policy "p": Version must be')
    assert pickle.loads(pickle.dumps(e)).problem == e.problem


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("{", "malformed JSON"),
        ("[]", "must be a JSON object"),
        ('{"Version": "2012-10-17", "Statement": [], "Version": "2012-10-17"}', 'duplicate key "Version"'),
        ({"Version": "2012-10-17"}, "no Statement"),
        ({"Version": "2012-10-17", "Statement": []}, "empty"),
        ({"Version": "2013-01-01", "Statement": [allow()]}, "Version must be"),
        ({"Version": "2012-10-17", "Id": 5, "Statement": [allow()]}, "Id must be a string"),
        ({"Version": "2012-10-17", "Statements": [allow()]}, 'unknown element "Statements"'),
    ],
)
def test_document_errors(document: Any, problem: str) -> None:
    e = error(document)
    assert e.statement is None
    assert problem in e.problem


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        (allow(Principal={"AWS": "*"}), "Principal is not allowed in an identity policy"),
        (allow(NotPrincipal="*"), "NotPrincipal is not allowed"),
        ({"Effect": "allow", "Action": "*", "Resource": "*"}, "Effect must be"),
        ({"Action": "*", "Resource": "*"}, "Effect must be"),
        (allow(NotAction="s3:GetObject"), "both Action and NotAction"),
        ({"Effect": "Allow", "Resource": "*"}, "needs Action or NotAction"),
        (allow(NotResource="*"), "both Resource and NotResource"),
        ({"Effect": "Allow", "Action": "*"}, "needs Resource or NotResource"),
        (allow([]), "Action is an empty list"),
        (allow(["s3:GetObject", 3]), "must be a string or a list of strings"),
        (allow("kms:Decrypt"), 'sealgate authorizes only s3 actions, not "kms:Decrypt"'),
        (allow("*:GetObject"), "sealgate authorizes only s3 actions"),
        (allow("GetObject"), "malformed action"),
        (allow("s3:"), "malformed action"),
        (allow("s3:Frobnicate*"), 'unknown action "s3:Frobnicate*"'),
        (allow(resource="arn:aws:iam::123456789012:user/alice"), "unsupported resource"),
        (allow(resource="arn:aws:s3:us-east-1:123456789012:accesspoint/x"), "unsupported resource"),
        (allow(resource="arn:aws:s3:::"), "unsupported resource"),
        (allow(resource="photos/*"), "unsupported resource"),
        (allow(Resources="*"), 'unknown element "Resources"'),
        (allow(resource="arn:aws:s3:::b/${aws:PrincipalTag/team}"), "unknown policy variable"),
        (allow(resource="arn:aws:s3:::b/${aws:username"), "unterminated policy variable"),
        (allow(resource="arn:aws:s3:::b/${aws:username, nobody}"), "malformed policy variable"),
        (allow(Condition=[]), "Condition must be an object"),
        (allow(Condition={"StringEquals": {"s3:foo": "x"}}), 'unknown condition key "s3:foo"'),
        (allow(Condition={"StringEqualz": {"s3:prefix": "x"}}), 'unknown condition operator "StringEqualz"'),
        (allow(Condition={"ArnLike": {"s3:prefix": "x"}}), "unknown condition operator"),
        (allow(Condition={"NullIfExists": {"s3:prefix": "true"}}), "unknown condition operator"),
        (allow(Condition={"ForAnyValue:Null": {"s3:prefix": "true"}}), "unknown condition operator"),
        (allow(Condition={"ForSomeValues:StringEquals": {"s3:prefix": "x"}}), "unknown set qualifier"),
        (allow(Condition={"StringEquals": {}}), "must be an object of condition keys"),
        (allow(Condition={"StringEquals": {"s3:prefix": []}}), "has no values"),
        (allow(Condition={"StringEquals": {"s3:prefix": {"a": 1}}}), "must be strings, numbers or booleans"),
        (allow(Condition={"IpAddress": {"aws:SourceIp": "10.0.0.300/8"}}), 'not "10.0.0.300/8"'),
        (allow(Condition={"IpAddress": {"aws:SourceIp": "${aws:username}"}}), "needs a CIDR"),
        (allow(Condition={"NumericLessThan": {"s3:max-keys": "ten"}}), "needs a number"),
        (allow(Condition={"NumericLessThan": {"s3:max-keys": "inf"}}), "needs a number"),
        (allow(Condition={"DateLessThan": {"aws:CurrentTime": "tomorrow"}}), "needs a date"),
        (allow(Condition={"Bool": {"aws:SecureTransport": "yes"}}), "needs true or false"),
        (allow(Condition={"Null": {"s3:prefix": "maybe"}}), "Null needs true or false"),
        (allow(Sid=7), "Sid must be"),
        (allow(Sid="#1"), "Sid must be"),
        ("not an object", "a statement must be an object"),
    ],
)
def test_statement_errors(statement: Any, problem: str) -> None:
    e = error(doc(statement))
    assert e.statement == "#1"
    assert problem in e.problem, e.problem


def test_duplicate_sids_are_an_error() -> None:
    e = error(doc(allow(Sid="A"), allow(Sid="A")))
    assert (e.statement, e.problem) == ("#2", 'Sid "A" is used twice')


def test_the_condition_keys_are_the_supported_ones() -> None:
    assert {"s3:prefix", "aws:sourceip", "aws:username", "aws:currenttime"} <= CONDITION_KEYS
    assert all(key == key.lower() for key in CONDITION_KEYS)


# --- properties ----------------------------------------------------------------------------------

# Wildcard patterns with the characters that regexes, fnmatch or IAM treat specially; no "{", so
# that no policy variable forms.
_PATTERN_CHARS = "ab/*?.[]\\$^+()\n"
_TEXT_CHARS = "ab/*?.[]\\$^+()\n"


def _reference(pattern: str, text: str) -> bool:
    # fnmatch minus its [...] classes is exactly IAM's wildcard language.
    return re.fullmatch(fnmatch.translate(pattern.replace("[", "[[]")), text) is not None


@given(st.text(_PATTERN_CHARS, min_size=1, max_size=8), st.text(_TEXT_CHARS, max_size=10))
@settings(max_examples=400)
def test_resource_wildcards_agree_with_fnmatch(pattern: str, text: str) -> None:
    statement = allow(resource=f"arn:aws:s3:::{pattern}")
    assert decide(statement, resource=f"arn:aws:s3:::{text}").allowed == _reference(pattern, text)


@given(st.text(_PATTERN_CHARS, max_size=8), st.text(_TEXT_CHARS, max_size=10))
@settings(max_examples=400)
def test_string_like_agrees_with_fnmatch(pattern: str, text: str) -> None:
    condition = {"StringLike": {"s3:prefix": pattern}}
    assert allows_when(condition, {**CTX, "s3:prefix": text}) == _reference(pattern, text)
    negated = {"StringNotLike": {"s3:prefix": pattern}}
    assert allows_when(negated, {**CTX, "s3:prefix": text}) != _reference(pattern, text)


_ACTION_NAMES = sorted(a[3:] for a in KNOWN_S3_ACTIONS)


@st.composite
def action_patterns(draw: st.DrawFn) -> str:
    """A known action's name with some characters turned into wildcards and its case shuffled."""
    name = draw(st.sampled_from(_ACTION_NAMES))
    chars = [draw(st.sampled_from([c, c.lower(), c.upper(), "?", "*"])) if draw(st.booleans()) else c for c in name]
    return "s3:" + "".join(chars)


@given(action_patterns(), st.sampled_from(sorted(KNOWN_S3_ACTIONS)))
def test_action_wildcards_agree_with_fnmatch_ignoring_case(pattern: str, action: str) -> None:
    expected = fnmatch.fnmatchcase(action.lower(), pattern.lower())
    assert decide(allow(pattern), action).allowed == expected


@given(st.lists(action_patterns(), min_size=1, max_size=3), st.sampled_from(sorted(KNOWN_S3_ACTIONS)))
def test_not_action_is_the_complement_of_action(patterns: list[str], action: str) -> None:
    with_action = decide(allow(patterns), action).allowed
    with_not_action = decide({"Effect": "Allow", "NotAction": patterns, "Resource": "*"}, action).allowed
    assert with_action != with_not_action


@given(
    st.lists(st.text(_PATTERN_CHARS, min_size=1, max_size=6), min_size=1, max_size=3),
    st.text(_TEXT_CHARS, max_size=8),
)
def test_not_resource_is_the_complement_of_resource(patterns: list[str], text: str) -> None:
    arns = [f"arn:aws:s3:::{p}" for p in patterns]
    resource = f"arn:aws:s3:::{text}"
    with_resource = decide(allow(resource=arns), resource=resource).allowed
    with_not_resource = decide({"Effect": "Allow", "Action": "*", "NotResource": arns}, resource=resource).allowed
    assert with_resource != with_not_resource


# Random statements over a small world, so that they often meet the request.
_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:ListBucket"]
_RESOURCES = [BUCKET, OBJECT, f"{BUCKET}/2024/b.jpg"]
_ACTION_OPTIONS = ["*", "s3:*", "s3:Get*", "s3:GetObject", "s3:PutObject", "s3:List*", "s3:?utObject"]
_RESOURCE_OPTIONS = ["*", BUCKET, f"{BUCKET}/*", f"{BUCKET}/2024/?.jpg", "arn:aws:s3:::photos*", "arn:aws:s3:::other/*"]
_CONDITIONS: list[dict[str, Any]] = [
    {"StringEquals": {"aws:username": "alice"}},
    {"StringNotEquals": {"aws:username": "alice"}},
    {"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}},
    {"NotIpAddress": {"aws:SourceIp": "127.0.0.0/8"}},
    {"Bool": {"aws:SecureTransport": "false"}},
    {"StringLikeIfExists": {"s3:prefix": "home/*"}},
    {"Null": {"s3:prefix": "true"}},
    {"DateLessThan": {"aws:CurrentTime": "2026-06-01T00:00:00Z"}},
]


@st.composite
def statements(draw: st.DrawFn) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": draw(st.sampled_from(["Allow", "Deny"]))}
    actions = draw(st.lists(st.sampled_from(_ACTION_OPTIONS), min_size=1, max_size=2))
    statement["NotAction" if draw(st.booleans()) else "Action"] = actions
    resources = draw(st.lists(st.sampled_from(_RESOURCE_OPTIONS), min_size=1, max_size=2))
    statement["NotResource" if draw(st.integers(0, 3)) == 0 else "Resource"] = resources
    if draw(st.booleans()):
        statement["Condition"] = draw(st.sampled_from(_CONDITIONS))
    return statement


policy_lists = st.lists(st.lists(statements(), min_size=1, max_size=4), min_size=1, max_size=3)
contexts = st.sampled_from(
    [
        CTX,
        {**CTX, "aws:username": "bob", "aws:sourceip": "10.0.0.1", "aws:securetransport": "false"},
        {**CTX, "s3:prefix": "home/alice/"},
        {"aws:securetransport": "true"},
    ]
)


def _compile(documents: list[list[dict[str, Any]]]) -> list[Policy]:
    return [parse_policy(f"p{i}", doc(*statements)) for i, statements in enumerate(documents)]


@given(policy_lists, st.sampled_from(_ACTIONS), st.sampled_from(_RESOURCES), contexts)
@settings(max_examples=300)
def test_evaluation_is_deny_over_allow_over_implicit_deny(
    documents: list[list[dict[str, Any]]], action: str, resource: str, context: Context
) -> None:
    # The reference: each statement judged alone, then combined by IAM's rule.
    alone = [evaluate([parse_policy("one", doc(s))], action, resource, context).effect for d in documents for s in d]
    expected = "Deny" if "Deny" in alone else "Allow" if "Allow" in alone else "ImplicitDeny"
    decision = evaluate(_compile(documents), action, resource, context)
    assert decision.effect == expected
    assert decision.allowed == (expected == "Allow")


@given(
    policy_lists,
    st.sampled_from(_ACTIONS),
    st.sampled_from(_RESOURCES),
    contexts,
    st.integers(0, 10),
    st.integers(0, 10),
)
def test_a_matching_deny_always_wins(
    documents: list[list[dict[str, Any]]], action: str, resource: str, context: Context, where: int, at: int
) -> None:
    target = documents[where % len(documents)]
    target.insert(at % (len(target) + 1), {"Sid": "Stop", "Effect": "Deny", "Action": action, "Resource": resource})
    decision = evaluate(_compile(documents), action, resource, context)
    assert not decision.allowed
    assert decision.effect == "Deny"


@given(policy_lists, st.sampled_from(_ACTIONS), st.sampled_from(_RESOURCES), contexts, st.randoms())
def test_evaluation_is_independent_of_order(
    documents: list[list[dict[str, Any]]], action: str, resource: str, context: Context, rng: Any
) -> None:
    before = evaluate(_compile(documents), action, resource, context)
    shuffled = [rng.sample(statements, len(statements)) for statements in documents]
    rng.shuffle(shuffled)
    after = evaluate(_compile(shuffled), action, resource, context)
    assert (after.allowed, after.effect) == (before.allowed, before.effect)


def test_many_stars_against_a_long_key_stay_fast() -> None:
    # A backtracking regex takes seconds here (polynomial in the key's length, stars as the exponent).
    started = time.perf_counter()
    statement = allow(resource="arn:aws:s3:::photos/*a*a*a*a*a*b")
    assert not decide(statement, resource="arn:aws:s3:::photos/" + "a" * 1024).allowed
    assert decide(statement, resource="arn:aws:s3:::photos/" + "a" * 1024 + "b").allowed
    like = {"StringLike": {"s3:prefix": "*${aws:username}*a*a*a*b"}}
    assert not allows_when(like, {**CTX, "s3:prefix": "alice" + "a" * 1024})
    assert time.perf_counter() - started < 1


def _escaped(text: str) -> str:
    # For fnmatch: every character of a substituted value is literal.
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


@given(
    st.text(_PATTERN_CHARS, max_size=5),
    st.text(_PATTERN_CHARS, max_size=5),
    st.text(_TEXT_CHARS, min_size=1, max_size=4),
    st.text(_TEXT_CHARS, max_size=12),
)
@settings(max_examples=300)
def test_patterns_with_a_variable_agree_with_fnmatch(before: str, after: str, user: str, text: str) -> None:
    pattern = f"{before}${{aws:username}}{after}"
    reference = fnmatch.translate(before.replace("[", "[[]") + _escaped(user) + after.replace("[", "[[]"))
    expected = re.fullmatch(reference, text) is not None
    ctx = {**CTX, "aws:username": user}
    statement = allow(resource=f"arn:aws:s3:::{pattern}")
    assert decide(statement, resource=f"arn:aws:s3:::{text}", context=ctx).allowed == expected
    assert allows_when({"StringLike": {"s3:prefix": pattern}}, {**ctx, "s3:prefix": text}) == expected
