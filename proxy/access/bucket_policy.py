"""Bucket policies: AWS's resource-policy grammar for one bucket, parsed once, decided per request.

A bucket policy is an identity policy's grammar (`proxy.access.policy`: actions, resources,
conditions, variables) plus a ``Principal`` per statement. sealgate has no AWS accounts, so
principals are read as follows:

- ``"*"`` or ``{"AWS": "*"}``: everyone, including anonymous requests where the config lets them
  in (``[access] anonymous``) and the bucket does not restrict public policies;
- ``{"AWS": NAME}`` or ``{"AWS": "arn:aws:iam::ACCOUNT:user/NAME"}`` (a string or a list): the
  sealgate client NAME (a ``[[clients]]`` name; unknown names are refused when the policy is put);
- an account (``"arn:aws:iam::ACCOUNT:root"`` or a bare account id): all of sealgate's clients,
  as an account in AWS is its users. As in AWS, an ``Allow`` to one's own account grants
  nothing by itself (the clients' identity policies decide), a ``Deny`` binds every client.

Refused when put (S3's ``MalformedPolicy``): ``NotPrincipal``, ``Service``, ``Federated`` and
``CanonicalUser`` principals, a resource that cannot be in the bucket, a document over 20 KiB,
and everything the identity-policy grammar refuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.access.patterns import Context, Invalid, quote
from proxy.access.policy import Decision, Policy, PolicyError, Statement, evaluate, parse_policy

#: S3's limit on a bucket policy document.
MAX_POLICY_BYTES = 20 * 1024

_ACCOUNT = re.compile(r"^(?:arn:aws:iam::[^:/]+:root|[0-9]{12})$")
_USER_ARN = re.compile(r"^arn:aws:iam::[^:/]*:user/(.+)$")
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


class MalformedPolicy(Exception):
    """A bucket policy sealgate will not store; the message is what the client is told."""


@dataclass(frozen=True)
class Principals:
    """Whom one statement is about."""

    everyone: bool = False
    account: bool = False
    names: frozenset[str] = frozenset()

    def covers(self, identity: str | None, allow: bool, restrict_public: bool) -> bool:
        """Whether the statement applies to `identity` (None: an anonymous request)."""
        if self.everyone:
            return identity is not None or not restrict_public
        if identity is None:
            return False
        if self.account:
            return not allow  # an Allow to the own account defers to identity policies
        return identity in self.names


@dataclass(frozen=True)
class BucketPolicy:
    """One bucket's policy: its document exactly as put, and its compiled statements."""

    bucket: str
    text: str
    statements: tuple[tuple[Principals, Statement], ...]
    #: Whether a statement allows everyone without an address condition (AWS's "public").
    public: bool

    @property
    def name(self) -> str:
        """How decisions and audit lines name it."""
        return f"bucket policy of {self.bucket}"

    def decide(
        self, identity: str | None, action: str, resource: str, context: Context, restrict_public: bool = False
    ) -> Decision:
        """The policy's own decision for one request: Deny, Allow or implicit deny."""
        chosen = tuple(
            statement
            for principals, statement in self.statements
            if principals.covers(identity, statement.effect == "Allow", restrict_public and self.public)
        )
        return evaluate((Policy(self.name, chosen),), action, resource, context)


def _principal_values(raw: Any) -> list[str]:
    if raw == "*":
        return ["*"]
    if not isinstance(raw, Mapping) or not raw:
        raise Invalid("Invalid principal in policy")
    unknown = sorted(set(raw) - {"AWS"})
    if unknown:
        raise Invalid(f"Invalid principal in policy: sealgate has no {quote(unknown[0])} principals")
    values = raw["AWS"] if isinstance(raw["AWS"], list) else [raw["AWS"]]
    if not values or not all(isinstance(v, str) for v in values):
        raise Invalid("Invalid principal in policy")
    return values


def parse_principals(raw: Any, known: Callable[[str], bool]) -> Principals:
    """A statement's Principal; `known` says whether a client name exists."""
    everyone = account = False
    names: set[str] = set()
    for value in _principal_values(raw):
        user = _USER_ARN.match(value)
        if value == "*":
            everyone = True
        elif _ACCOUNT.match(value):
            account = True
        elif user or _CLIENT_NAME.match(value):
            name = user.group(1) if user else value
            if not known(name):
                raise Invalid(f"Invalid principal in policy: no client is named {quote(name)}")
            names.add(name)
        else:
            raise Invalid(f"Invalid principal in policy: {quote(value)}")
    return Principals(everyone=everyone, account=account, names=frozenset(names))


def _literal_prefix(pattern: str) -> str:
    return re.split(r"[*?$]", pattern, maxsplit=1)[0]


def _check_resources(raw: Mapping[str, Any], bucket: str) -> None:
    """Each Resource must be able to name the bucket or an object in it (AWS: invalid resource)."""
    resources = raw.get("Resource")
    if resources is None:
        return  # NotResource: whatever it excludes, the statement is about this bucket
    own = f"arn:aws:s3:::{bucket}"
    for pattern in resources if isinstance(resources, list) else [resources]:
        if not isinstance(pattern, str) or pattern == "*":
            continue
        prefix = _literal_prefix(pattern)
        if pattern == own or (own + "/").startswith(prefix) or prefix.startswith(own + "/"):
            continue
        raise Invalid(f"Policy has invalid resource {quote(pattern)}: it is not in bucket {quote(bucket)}")


def _is_public(principals: Principals, raw: Mapping[str, Any]) -> bool:
    if not principals.everyone or raw.get("Effect") != "Allow":
        return False
    condition = raw.get("Condition")
    if isinstance(condition, Mapping):
        for operator, tests in condition.items():
            fixed = str(operator).split(":")[-1].lower().startswith("ipaddress")
            if fixed and isinstance(tests, Mapping) and any(str(k).lower() == "aws:sourceip" for k in tests):
                return False
    return True


def _split(document: Any, bucket: str, known: Callable[[str], bool]) -> tuple[dict[str, Any], list[Principals], bool]:
    """The document without its principals (for the identity grammar), the principals, public?"""
    if not isinstance(document, Mapping):
        raise Invalid("a policy must be a JSON object")
    raw_statements = document.get("Statement")
    if raw_statements is None:
        return dict(document), [], False  # the identity grammar says what is missing
    listed = raw_statements if isinstance(raw_statements, list) else [raw_statements]
    principals: list[Principals] = []
    stripped: list[Any] = []
    public = False
    for number, raw in enumerate(listed, start=1):
        if not isinstance(raw, Mapping):
            stripped.append(raw)
            continue
        label = raw.get("Sid") or f"#{number}"
        try:
            if "NotPrincipal" in raw:
                raise Invalid("sealgate does not support NotPrincipal; write a Deny with a Condition instead")
            if "Principal" not in raw:
                raise Invalid("Missing required field Principal")
            found = parse_principals(raw["Principal"], known)
            _check_resources(raw, bucket)
        except Invalid as exc:
            raise Invalid(f"statement {quote(str(label))}: {exc}") from None
        public = public or _is_public(found, raw)
        principals.append(found)
        stripped.append({k: v for k, v in raw.items() if k != "Principal"})
    return {**document, "Statement": stripped}, principals, public


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two "Effect"s silently; a policy must mean one thing.
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise Invalid(f"duplicate key {quote(key)} in the JSON")
    return dict(pairs)


def parse_bucket_policy(bucket: str, text: str, known: Callable[[str], bool] = lambda name: True) -> BucketPolicy:
    """Parse and check one bucket's policy; MalformedPolicy (with S3's kind of message) if it is not valid."""
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise MalformedPolicy(f"Policies must be less than {MAX_POLICY_BYTES // 1024} KB")
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates)
        stripped, principals, public = _split(document, bucket, known)
    except json.JSONDecodeError as exc:
        raise MalformedPolicy(f"Policies must be valid JSON: {exc}") from None
    except Invalid as exc:
        raise MalformedPolicy(str(exc)) from None
    try:
        compiled = parse_policy(f"bucket policy of {bucket}", stripped)
    except PolicyError as exc:
        where = f"statement {quote(exc.statement)}: " if exc.statement else ""
        raise MalformedPolicy(where + exc.problem) from None
    return BucketPolicy(bucket, text, tuple(zip(principals, compiled.statements, strict=True)), public)
