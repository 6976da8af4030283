"""Authorization decisions: may this caller do what a request needs? No I/O but the audit line.

Identity policies (``[[policies]]``, `proxy.access.policy`) are evaluated here for every `Need`
of a request (`proxy.access.actions`); key policies (``[[keys]]``) are checked separately where
a key is about to be used, and both must allow. The operator running a tool on the machine is
a `Caller` too, one that policies do not bind (it holds the backend credentials anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from proxy.access.actions import DESTRUCTIVE, Need
from proxy.access.bucket_policy import BucketPolicy
from proxy.access.policy import Context, Decision, evaluate
from proxy.audit import AuditLog
from proxy.config import Config
from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import ANONYMOUS

log = logging.getLogger("sealgate.authz")

#: The decision when the config has no ``[[policies]]`` (every client may do everything), and
#: for the operator.
OPEN = Decision(allowed=True, effect="Allow", policy=None, statement=None)
#: What identity policies say to an anonymous request.
NOBODY = Decision(allowed=False, effect="ImplicitDeny", policy=None, statement=None)


@dataclass(frozen=True)
class Caller:
    """Who is asking: a configured client over the network, or the operator (identity None)."""

    identity: str | None
    source_ip: str | None = None
    secure_transport: bool = True

    @classmethod
    def operator(cls) -> Caller:
        """The operator running a sealgate tool with the config's own backend credentials."""
        return cls(identity=None)

    @property
    def anonymous(self) -> bool:
        """Whether this is an unsigned request (only bucket policies can allow it anything)."""
        return self.identity == ANONYMOUS

    @property
    def is_operator(self) -> bool:
        """Whether this is the operator (no policy applies)."""
        return self.identity is None


def context_for(caller: Caller, need: Need, now: datetime) -> Context:
    """The condition keys of one need: the caller's (aws:*) and the request's (s3:*)."""
    ctx: dict[str, str | tuple[str, ...]] = {
        "aws:securetransport": "true" if caller.secure_transport else "false",
        "aws:currenttime": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "aws:epochtime": str(int(now.timestamp())),
    }
    if caller.identity is not None and not caller.anonymous:
        ctx["aws:username"] = caller.identity
        ctx["aws:userid"] = caller.identity
    if caller.source_ip:
        ctx["aws:sourceip"] = caller.source_ip
    ctx.update(need.context)
    return ctx


#: A bucket's policy, by bucket name, and whether the bucket restricts public policies
#: (RestrictPublicBuckets): what `decide` needs beyond the config.
BucketPolicies = Mapping[str, tuple[BucketPolicy, bool]]


def decide(
    config: Config, caller: Caller, need: Need, now: datetime | None = None, buckets: BucketPolicies | None = None
) -> Decision:
    """The decision for one need (no audit, no exception): identity policies and the policy of
    the need's bucket, combined as AWS does within one account. An explicit Deny in either
    wins; else an Allow in either (a bucket policy grants to whom its Principal names); else
    implicit deny. Without ``[[policies]]`` the identity side allows everything, so a bucket
    policy can only deny."""
    if caller.is_operator:
        return OPEN
    assert caller.identity is not None
    policies = config.policies_for(caller.identity)
    held = buckets.get(need.bucket) if buckets and need.bucket else None
    # No identity policy is about an unsigned request, not even "no [[policies]]".
    fixed = NOBODY if caller.anonymous else OPEN if policies is None else None
    if fixed is not None and held is None:
        return fixed  # nothing to evaluate, so no condition keys to gather (most requests)
    context = context_for(caller, need, now or datetime.now(UTC))
    own = fixed if fixed is not None else evaluate(policies or (), need.action, need.resource, context)
    if held is None or own.effect == "Deny":
        return own
    policy, restrict_public = held
    who = None if caller.anonymous else caller.identity
    theirs = policy.decide(who, need.action, need.resource, context, restrict_public)
    if theirs.effect == "Deny" or (theirs.allowed and not own.allowed):
        return theirs
    return own


def denied_error() -> S3Error:
    """What a refused request answers: S3's own AccessDenied (it names neither policy nor rule)."""
    return S3Error("AccessDenied", "Access Denied", 403)


def record(audit: AuditLog | None, caller: Caller, need: Need, decision: Decision) -> None:
    """The audit line of a refusal or of an allowed destructive action (nothing otherwise)."""
    if decision.allowed and need.action not in DESTRUCTIVE:
        return
    if not decision.allowed:
        log.warning(
            "access denied: %s may not %s on %s (%s)", caller.identity, need.action, need.resource, decision.describe()
        )
    if audit is not None:
        audit.record(
            need.action,
            "allowed" if decision.allowed else "denied",
            reason=decision.describe() if decision is not OPEN else "no [[policies]]: every client may",
            bucket=need.bucket,
            object_key=need.key,
        )


def check(
    config: Config,
    audit: AuditLog | None,
    caller: Caller,
    need: Need,
    now: datetime | None = None,
    buckets: BucketPolicies | None = None,
) -> Decision:
    """Decide one need and audit it; the caller acts on the decision (DeleteObjects per key)."""
    decision = decide(config, caller, need, now, buckets)
    record(audit, caller, need, decision)
    return decision


def require(
    config: Config,
    audit: AuditLog | None,
    caller: Caller,
    needs: Iterable[Need],
    now: datetime | None = None,
    buckets: BucketPolicies | None = None,
) -> None:
    """AccessDenied unless every need is allowed; decided before any backend or keyring call.

    All needs are decided before any is audited as allowed, so a refused copy does not leave an
    "allowed" line for the half of it that was."""
    when = now or datetime.now(UTC)
    decided = [(need, decide(config, caller, need, when, buckets)) for need in needs]
    refused = next(((n, d) for n, d in decided if not d.allowed), None)
    if refused is not None:
        record(audit, caller, *refused)
        raise denied_error()
    for need, decision in decided:
        record(audit, caller, need, decision)
