"""Identity policies in AWS IAM's JSON grammar: parsed and checked once, then decided per request in microseconds.

Supported, with IAM's meaning (identity policies of one account, S3 actions only):

- Document: ``Version`` (required: "2012-10-17", or "2008-10-17" where ``${...}`` is plain text, as in
  IAM), optional ``Id``, ``Statement`` as one object or a list.
- Statement: optional ``Sid``, ``Effect`` Allow|Deny, exactly one of ``Action``/``NotAction`` and
  exactly one of ``Resource``/``NotResource`` (a string or a list), optional ``Condition``.
- Action: ``*``, or ``s3:`` and a name with ``*``/``?`` wildcards, case-insensitive, that names at
  least one of `KNOWN_S3_ACTIONS`.
- Resource: ``*``, ``arn:aws:s3:::bucket``, ``arn:aws:s3:::bucket/key``; ``*`` and ``?`` anywhere in
  the ARN (they span ``/``); case-sensitive.
- Condition: the String*, Numeric*, Date*, Bool, IpAddress/NotIpAddress and Null operators, each but
  Null also as ``...IfExists`` and with the ``ForAnyValue:``/``ForAllValues:`` qualifiers, on the
  keys in `CONDITION_KEYS` (case-insensitive names).
- Policy variables (2012-10-17 only): ``${key}`` for any key in `CONDITION_KEYS`, ``${key, 'default'}``,
  and ``${*}`` ``${?}`` ``${$}`` for those characters; in Resource and in String condition values.
- Decision: a matching explicit Deny wins, else a matching Allow, else implicit deny.

Refused when parsed, never silently ignored: ``Principal``/``NotPrincipal`` (whom a policy applies to
is sealgate's config, not the document), actions of other services, ARNs of other services or with a
region or account (access points, S3 Express), the ARN and Binary operators, unknown condition keys,
operators or elements, malformed values. Out of scope: resource (bucket) policies, permission
boundaries, session policies, SCPs and RCPs, cross-account access.

This module holds the documents, statements, actions, resources and the decision; `patterns` the
variables and wildcards, `conditions` the operators.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from proxy.access.conditions import Condition, compile_condition
from proxy.access.patterns import CONDITION_KEYS, Context, Glob, Invalid, compile_glob, quote

__all__ = [
    "CONDITION_KEYS",
    "KNOWN_S3_ACTIONS",
    "Context",
    "Decision",
    "Policy",
    "PolicyError",
    "Statement",
    "evaluate",
    "parse_policy",
]

# The "Actions defined by Amazon S3" table of AWS's service authorization reference, so that
# real-world policies parse and a typo ("s3:PutObjekt") is an error rather than a rule that never fires.
_S3_ACTION_NAMES = """
AbortMultipartUpload AllowVendedLogDeliveryForResource AssociateAccessGrantsIdentityCenter
BypassGovernanceRetention CreateAccessGrant CreateAccessGrantsInstance CreateAccessGrantsLocation
CreateAccessPoint CreateAccessPointForObjectLambda CreateBucket CreateBucketMetadataTableConfiguration
CreateJob CreateMultiRegionAccessPoint CreateStorageLensGroup DeleteAccessGrant DeleteAccessGrantsInstance
DeleteAccessGrantsInstanceResourcePolicy DeleteAccessGrantsLocation DeleteAccessPoint
DeleteAccessPointForObjectLambda DeleteAccessPointPolicy DeleteAccessPointPolicyForObjectLambda DeleteBucket
DeleteBucketMetadataTableConfiguration DeleteBucketPolicy DeleteBucketWebsite DeleteJobTagging
DeleteMultiRegionAccessPoint DeleteObject DeleteObjectAnnotation DeleteObjectTagging DeleteObjectVersion
DeleteObjectVersionAnnotation DeleteObjectVersionTagging DeleteStorageLensConfiguration
DeleteStorageLensConfigurationTagging DeleteStorageLensGroup DescribeJob DescribeMultiRegionAccessPointOperation
DissociateAccessGrantsIdentityCenter GetAccelerateConfiguration GetAccessGrant GetAccessGrantsInstance
GetAccessGrantsInstanceForPrefix GetAccessGrantsInstanceResourcePolicy GetAccessGrantsLocation GetAccessPoint
GetAccessPointConfigurationForObjectLambda GetAccessPointForObjectLambda GetAccessPointPolicy
GetAccessPointPolicyForObjectLambda GetAccessPointPolicyStatus GetAccessPointPolicyStatusForObjectLambda
GetAccountPublicAccessBlock GetAnalyticsConfiguration GetBucketAbac GetBucketAcl GetBucketCORS GetBucketLocation
GetBucketLogging GetBucketMetadataTableConfiguration GetBucketNotification GetBucketObjectLockConfiguration
GetBucketOwnershipControls GetBucketPolicy GetBucketPolicyStatus GetBucketPublicAccessBlock
GetBucketRequestPayment GetBucketTagging GetBucketVersioning GetBucketWebsite GetDataAccess
GetEncryptionConfiguration GetIntelligentTieringConfiguration GetInventoryConfiguration GetJobTagging
GetLifecycleConfiguration GetMetricsConfiguration GetMultiRegionAccessPoint GetMultiRegionAccessPointPolicy
GetMultiRegionAccessPointPolicyStatus GetMultiRegionAccessPointRoutes GetObject GetObjectAcl
GetObjectAnnotation GetObjectAttributes GetObjectLegalHold GetObjectRetention GetObjectTagging
GetObjectTorrent GetObjectVersion GetObjectVersionAcl GetObjectVersionAnnotation
GetObjectVersionAnnotationForReplication GetObjectVersionAttributes GetObjectVersionForReplication
GetObjectVersionTagging GetObjectVersionTorrent GetReplicationConfiguration GetStorageLensConfiguration
GetStorageLensConfigurationTagging GetStorageLensDashboard GetStorageLensGroup InitiateReplication
ListAccessGrants ListAccessGrantsInstances ListAccessGrantsLocations ListAccessPoints
ListAccessPointsForObjectLambda ListAllMyBuckets ListBucket ListBucketMultipartUploads ListBucketVersions
ListCallerAccessGrants ListJobs ListMultiRegionAccessPoints ListMultipartUploadParts ListObjectAnnotations
ListObjectVersionAnnotations ListStorageLensConfigurations ListStorageLensGroups ListTagsForResource
ObjectOwnerOverrideToBucketOwner PauseReplication PutAccelerateConfiguration
PutAccessGrantsInstanceResourcePolicy PutAccessPointConfigurationForObjectLambda PutAccessPointPolicy
PutAccessPointPolicyForObjectLambda PutAccessPointPublicAccessBlock PutAccountPublicAccessBlock
PutAnalyticsConfiguration PutBucketAbac PutBucketAcl PutBucketCORS PutBucketLogging PutBucketNotification
PutBucketObjectLockConfiguration PutBucketOwnershipControls PutBucketPolicy PutBucketPublicAccessBlock
PutBucketRequestPayment PutBucketTagging PutBucketVersioning PutBucketWebsite PutEncryptionConfiguration
PutIntelligentTieringConfiguration PutInventoryConfiguration PutJobTagging PutLifecycleConfiguration
PutMetricsConfiguration PutMultiRegionAccessPointPolicy PutObject PutObjectAcl PutObjectAnnotation
PutObjectLegalHold PutObjectRetention PutObjectTagging PutObjectVersionAcl PutObjectVersionAnnotation
PutObjectVersionTagging PutReplicationConfiguration PutStorageLensConfiguration
PutStorageLensConfigurationTagging ReplicateDelete ReplicateObject ReplicateObjectAnnotation ReplicateTags
RestoreObject SubmitMultiRegionAccessPointRoutes TagResource UntagResource UpdateAccessGrantsLocation
UpdateBucketMetadataAnnotationTableConfiguration UpdateBucketMetadataInventoryTableConfiguration
UpdateBucketMetadataJournalTableConfiguration UpdateJobPriority UpdateJobStatus UpdateObjectEncryption
UpdateStorageLensGroup
"""

KNOWN_S3_ACTIONS: frozenset[str] = frozenset("s3:" + name for name in _S3_ACTION_NAMES.split())
"""Every S3 action IAM defines, in AWS's spelling ("s3:GetObject")."""

_KNOWN_LOWER: dict[str, str] = {action.lower(): action for action in KNOWN_S3_ACTIONS}

_VERSIONS = ("2012-10-17", "2008-10-17")
_DOCUMENT_ELEMENTS = frozenset({"Version", "Id", "Statement"})
_STATEMENT_ELEMENTS = frozenset({"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"})
_S3_ARN_PREFIX = "arn:aws:s3:::"


def _label(statement: str) -> str:
    # "#N" labels a statement without a Sid; a Sid is quoted (Sids may not start with "#").
    return statement if statement.startswith("#") else quote(statement)


class PolicyError(Exception):
    """A policy sealgate cannot enforce as written; `statement` is its Sid, "#N", or None for the document."""

    policy: str
    statement: str | None
    problem: str

    def __init__(self, policy: str, statement: str | None, problem: str) -> None:
        super().__init__(policy, statement, problem)
        self.policy = policy
        self.statement = statement
        self.problem = problem

    def __str__(self) -> str:
        where = f"policy {quote(self.policy)}"
        if self.statement is not None:
            where += f", statement {_label(self.statement)}"
        return f"{where}: {self.problem}"


# --- actions and resources ----------------------------------------------------------------------


def _as_strings(value: Any, element: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise Invalid(f"{element} is an empty list")
    for item in items:
        if not isinstance(item, str):
            raise Invalid(f"{element} must be a string or a list of strings, not {json.dumps(item)}")
    return items


def _compile_actions(patterns: list[str]) -> tuple[bool, frozenset[str], tuple[Glob, ...]]:
    """(every action?, the known actions matched, lower case; the patterns, for actions not in the table)."""
    globs: list[Glob] = []
    matched: set[str] = set()
    for pattern in patterns:
        if pattern == "*":
            return True, frozenset(), ()
        service, colon, name = pattern.partition(":")
        if not colon or not name:
            raise Invalid(f'malformed action {quote(pattern)}: write "s3:Name" or "*"')
        if service.lower() != "s3":
            raise Invalid(f"sealgate authorizes only s3 actions, not {quote(pattern)}")
        glob = compile_glob("s3:" + name, variables=False, flags=re.IGNORECASE | re.DOTALL)
        hits = {lower for lower in _KNOWN_LOWER if glob.matches(lower, {})}
        if not hits:
            raise Invalid(f"unknown action {quote(pattern)}")
        matched |= hits
        globs.append(glob)
    return False, frozenset(matched), tuple(globs)


def _check_resource(pattern: str) -> None:
    if pattern == "*":
        return
    if not pattern.startswith(_S3_ARN_PREFIX) or len(pattern) == len(_S3_ARN_PREFIX):
        raise Invalid(
            f"unsupported resource {quote(pattern)}: sealgate takes"
            ' "*", "arn:aws:s3:::bucket" and "arn:aws:s3:::bucket/key" (wildcards allowed)'
        )


@dataclass(frozen=True)
class _Resources:
    """A statement's resource patterns: the simple ones as one regex, the others one by one."""

    simple: re.Pattern[str] | None
    others: tuple[Glob, ...]

    def matches(self, resource: str, context: Context) -> bool:
        if self.simple is not None and self.simple.fullmatch(resource):
            return True
        return any(glob.matches(resource, context) for glob in self.others)


def _compile_resources(patterns: list[str], variables: bool) -> _Resources:
    simple: list[str] = []
    others: list[Glob] = []
    for pattern in patterns:
        _check_resource(pattern)
        glob = compile_glob(pattern, variables)
        if glob.regex is not None:
            simple.append(glob.regex.pattern)
        else:
            others.append(glob)
    regex = re.compile("|".join(f"(?:{s})" for s in simple), re.DOTALL) if simple else None
    return _Resources(regex, tuple(others))


# --- statements, policies, decisions ------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One statement, compiled: `label` is its Sid or "#N"; the other fields are precompiled matchers."""

    label: str
    sid: str | None
    effect: Literal["Allow", "Deny"]
    all_actions: bool
    actions: frozenset[str]
    action_globs: tuple[Glob, ...]
    not_action: bool
    resources: _Resources
    not_resource: bool
    conditions: tuple[Condition, ...]

    def applies(self, action: str, resource: str, context: Context) -> bool:
        """Whether the statement covers this request; `action` in lower case."""
        if self.all_actions:
            hit = True
        elif action in _KNOWN_LOWER:
            hit = action in self.actions
        else:
            hit = any(glob.matches(action, {}) for glob in self.action_globs)
        if hit == self.not_action:
            return False
        if self.resources.matches(resource, context) == self.not_resource:
            return False
        return all(test.holds(context) for test in self.conditions)


@dataclass(frozen=True)
class Policy:
    """A named identity policy, parsed and compiled."""

    name: str
    statements: tuple[Statement, ...]


def _one_of(raw: Mapping[str, Any], positive: str, negative: str) -> tuple[Any, bool]:
    if positive in raw and negative in raw:
        raise Invalid(f"has both {positive} and {negative}")
    if positive in raw:
        return raw[positive], False
    if negative in raw:
        return raw[negative], True
    raise Invalid(f"needs {positive} or {negative}")


def _parse_statement(raw: Any, label: str, variables: bool) -> Statement:
    if not isinstance(raw, Mapping):
        raise Invalid("a statement must be an object")
    for element in ("Principal", "NotPrincipal"):
        if element in raw:
            raise Invalid(
                f"{element} is not allowed in an identity policy (sealgate's config says whom a policy applies to)"
            )
    unknown = sorted(set(raw) - _STATEMENT_ELEMENTS)
    if unknown:
        raise Invalid(f"unknown element {quote(unknown[0])}")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise Invalid(f'Effect must be "Allow" or "Deny", not {json.dumps(effect)}')
    actions, not_action = _one_of(raw, "Action", "NotAction")
    all_actions, matched, action_globs = _compile_actions(_as_strings(actions, "NotAction" if not_action else "Action"))
    resources, not_resource = _one_of(raw, "Resource", "NotResource")
    compiled = _compile_resources(_as_strings(resources, "NotResource" if not_resource else "Resource"), variables)
    conditions = compile_condition(raw["Condition"], variables) if "Condition" in raw else ()
    sid = raw.get("Sid")
    return Statement(
        label=label,
        sid=sid,
        effect=effect,
        all_actions=all_actions,
        actions=matched,
        action_globs=action_globs,
        not_action=not_action,
        resources=compiled,
        not_resource=not_resource,
        conditions=conditions,
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two "Effect"s silently; a policy must mean one thing.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise Invalid(f"duplicate key {quote(key)} in the JSON")
        result[key] = value
    return result


def parse_policy(name: str, document: str | Mapping[str, Any]) -> Policy:
    """Parse and compile one identity policy (JSON text or its decoded object); PolicyError if it is not valid."""
    if isinstance(document, str):
        try:
            document = json.loads(document, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as e:
            raise PolicyError(name, None, f"malformed JSON: {e}") from None
        except Invalid as e:
            raise PolicyError(name, None, str(e)) from None
    if not isinstance(document, Mapping):
        raise PolicyError(name, None, "a policy must be a JSON object")
    unknown = sorted(set(document) - _DOCUMENT_ELEMENTS)
    if unknown:
        raise PolicyError(name, None, f"unknown element {quote(str(unknown[0]))}")
    version = document.get("Version")
    if version not in _VERSIONS:
        raise PolicyError(name, None, f'Version must be "2012-10-17" (or "2008-10-17"), not {json.dumps(version)}')
    if "Id" in document and not isinstance(document["Id"], str):
        raise PolicyError(name, None, "Id must be a string")
    raw_statements = document.get("Statement")
    if raw_statements is None:
        raise PolicyError(name, None, "no Statement")
    if not isinstance(raw_statements, list):
        raw_statements = [raw_statements]
    if not raw_statements:
        raise PolicyError(name, None, "Statement is an empty list")
    statements: list[Statement] = []
    sids: set[str] = set()
    for number, raw in enumerate(raw_statements, start=1):
        label = f"#{number}"
        sid = raw.get("Sid") if isinstance(raw, Mapping) else None
        if sid is not None:
            if not isinstance(sid, str) or not sid or sid.startswith("#"):
                raise PolicyError(
                    name, label, f"Sid must be a non-empty string not starting with #, not {json.dumps(sid)}"
                )
            if sid in sids:
                raise PolicyError(name, label, f"Sid {quote(sid)} is used twice")
            sids.add(sid)
            label = sid
        try:
            statements.append(_parse_statement(raw, label, variables=version == "2012-10-17"))
        except Invalid as e:
            raise PolicyError(name, label, str(e)) from None
    return Policy(name, tuple(statements))


@dataclass(frozen=True)
class Decision:
    """The outcome for one request and what decided it (policy name and statement Sid or "#N")."""

    allowed: bool
    effect: Literal["Allow", "Deny", "ImplicitDeny"]
    policy: str | None
    statement: str | None

    def describe(self) -> str:
        """For logs and audit: 'allowed by policy "x", statement "S"', 'no policy allows it', ..."""
        if self.effect == "ImplicitDeny":
            return "no policy allows it"
        verb = "allowed" if self.allowed else "denied"
        if self.policy is None:
            return f"{verb} without a policy"
        text = f"{verb} by policy {quote(self.policy)}"
        if self.statement is not None:
            text += f", statement {_label(self.statement)}"
        return text


_IMPLICIT_DENY = Decision(allowed=False, effect="ImplicitDeny", policy=None, statement=None)


def evaluate(policies: Sequence[Policy], action: str, resource: str, context: Context) -> Decision:
    """IAM's decision for one request: a matching Deny wins, else a matching Allow, else implicit deny.

    `action` is canonical ("s3:PutObject"), `resource` a full ARN ("arn:aws:s3:::photos/a.jpg", or
    "arn:aws:s3:::*" for ListAllMyBuckets). The deciding statement named is the first that matches,
    in the order of `policies` and their statements.
    """
    action = action.lower()
    allowed_by: tuple[Policy, Statement] | None = None
    for policy in policies:
        for statement in policy.statements:
            if allowed_by is not None and statement.effect == "Allow":
                continue  # only a Deny can change the answer now
            if statement.applies(action, resource, context):
                if statement.effect == "Deny":
                    return Decision(allowed=False, effect="Deny", policy=policy.name, statement=statement.label)
                allowed_by = (policy, statement)
    if allowed_by is None:
        return _IMPLICIT_DENY
    return Decision(allowed=True, effect="Allow", policy=allowed_by[0].name, statement=allowed_by[1].label)
