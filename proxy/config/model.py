"""The whole `Config` with its cross-section checks and look-ups; ``[encryption]``, ``[[buckets]]``, ``[audit]``."""

from __future__ import annotations

import re
from datetime import datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Literal

from pydantic import PrivateAttr, SecretStr, StrictBool, StrictStr, field_validator, model_validator

from proxy.config.access import ClientConfig, KeyPolicy, PolicyConfig
from proxy.config.server import ServerConfig
from proxy.config.services import BackendConfig, KmsConfig, aws_key_problem
from proxy.config.values import ConfigPath, Invalid, Section, not_set_unless

if TYPE_CHECKING:
    from proxy.access.policy import Policy


_BUCKET_GLOB = re.compile(r"^[a-z0-9.\-*?\[\]!]{1,63}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:[Zz]|[+-]\d{2}:\d{2})$")


class EncryptionConfig(Section):
    """``[encryption]``: how new objects are sealed."""

    # The segment size is not configurable: format v1 writes 64 KiB segments, so that listings
    # can turn stored sizes into plaintext sizes without reading each object's metadata.
    #: ``md5`` makes every upload's ETag the plaintext MD5 (costs an MD5 pass over the body).
    etag: Literal["auto", "md5"] = "auto"
    #: Optional secret shared by all replicas. When set, a multipart upload id also carries the
    #: data key sealed under it, so parts are served without a KMS call, and uploads work under
    #: encrypt-only (public) keys that the gateway cannot unwrap. Give it as ${ENV}.
    upload_secret: SecretStr | None = None


class BucketRule(Section):
    """``[[buckets]]``: settings for buckets whose name matches the glob `name`."""

    name: StrictStr
    #: Only objects whose key starts with this prefix (default: all of the bucket).
    prefix: StrictStr = ""
    #: Master key for new objects in these buckets (default: ``kms.default_key``).
    key: StrictStr | None = None
    #: Serve objects sealgate did not write as they are (for migrating existing buckets), if
    #: they are older than `unencrypted_before`.
    allow_unencrypted_reads: StrictBool = False
    #: The cut-over (required with `allow_unencrypted_reads`): an object without an envelope is
    #: served only if the backend's LastModified is before it; a newer one is refused as tampered.
    unencrypted_before: datetime | None = None
    #: S3 Encryption Client objects above the verify-first limit (64 MiB) are served with the tag
    #: checked at the end (a failure aborts the connection) instead of being refused.
    s3ec_delayed_authentication: StrictBool = False
    #: Objects with neither a sealgate nor an S3EC envelope in their metadata are looked up in
    #: ``KEY.instruction`` (S3EC V1/V2 instruction files; one extra backend GET per such read).
    #: Always on in ``format = "s3ec-v3"`` buckets. V3 objects that need their instruction file
    #: say so in their own metadata and are always served.
    s3ec_instruction_files: StrictBool = False
    #: Serve legacy S3EC V1 objects (``x-amz-key``, AES-CBC: unauthenticated, so tampering goes
    #: unnoticed). Off by default; each such read is logged as a warning.
    allow_s3ec_v1: StrictBool = False
    #: Serve S3EC objects that carry no sealgate name binding (written by the official client or
    #: another S3EC; not bound to their name, so the backend can move them) from buckets whose
    #: ``format`` is not ``"s3ec-v3"``. Off by default; s3ec-v3 buckets always serve them.
    s3ec_unbound_reads: StrictBool = False
    #: How new objects are written: sealgate's own format, or the AWS S3 Encryption Client's V3
    #: (kms+context) so that the official client reads them straight from the backend.
    #: Multipart uploads then need their parts in order, sent to one sealgate process.
    format: Literal["sealgate", "s3ec-v3"] = "sealgate"

    @field_validator("name")
    @classmethod
    def _check_glob(cls, name: str) -> str:
        if not _BUCKET_GLOB.match(name):
            raise ValueError(f'must be a bucket name or glob (lower-case a-z 0-9 . - and * ? [ ]), got "{name}"')
        return name

    @field_validator("key")
    @classmethod
    def _check_key(cls, key: str | None) -> str | None:
        if key is not None and not key.strip():
            raise ValueError("must not be empty")
        return key

    @field_validator("unencrypted_before", mode="before")
    @classmethod
    def _check_cut_over(cls, value: object) -> datetime:
        # A TOML offset date-time arrives parsed; a local one (no zone) would be ambiguous.
        shown = value.isoformat() if isinstance(value, datetime) else repr(value)
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, str) and _RFC3339.match(value):
            try:
                parsed = datetime.fromisoformat(value.upper())
            except ValueError:
                raise ValueError(f"is not a valid time: {shown}") from None
        else:
            raise ValueError(f'must be an RFC 3339 time with a zone, such as "2026-01-31T00:00:00Z", got {shown}')
        if parsed.utcoffset() is None:
            raise ValueError(f'must give its zone (such as "Z" or "+02:00"), got {shown}')
        return parsed

    @model_validator(mode="after")
    def _require_cut_over(self) -> BucketRule:
        if self.allow_unencrypted_reads and self.unencrypted_before is None:
            raise Invalid(
                ("unencrypted_before",),
                "required when allow_unencrypted_reads = true: the cut-over, an RFC 3339 time such as "
                '"2026-01-31T00:00:00Z"; objects without an envelope written after it are refused',
            )
        if not self.allow_unencrypted_reads:
            not_set_unless(self, ("unencrypted_before",), "allow_unencrypted_reads = true")
        return self

    def matches(self, bucket: str, key: str = "") -> bool:
        """Whether this rule applies to `bucket` (and object `key`)."""
        return fnmatchcase(bucket, self.name) and key.startswith(self.prefix)


class AuditConfig(Section):
    """``[audit]``: the hash-chained record of every key use (off unless `path` is set)."""

    #: The log file; with ``workers > 1`` each worker appends to ``<path>.w<N>``.
    path: ConfigPath | None = None
    #: Makes the chain an HMAC chain, so an edited file cannot be re-hashed (give as ${ENV}).
    hmac_key: SecretStr | None = None


class AccessConfig(Section):
    """``[access]``: requests that carry no signature."""

    #: Serve unsigned (anonymous) requests where a bucket policy allows everyone (``"*"``) and
    #: the bucket does not restrict public policies; every other unsigned request is refused.
    #: Off: every unsigned request is refused before any backend call.
    anonymous: StrictBool = False


class Config(Section):
    """The whole validated config."""

    server: ServerConfig
    backend: BackendConfig
    kms: KmsConfig
    clients: tuple[ClientConfig, ...] = ()
    encryption: EncryptionConfig = EncryptionConfig()
    buckets: tuple[BucketRule, ...] = ()
    keys: tuple[KeyPolicy, ...] = ()
    policies: tuple[PolicyConfig, ...] = ()
    audit: AuditConfig = AuditConfig()
    access: AccessConfig = AccessConfig()

    _clients_by_akid: dict[str, ClientConfig] = PrivateAttr(default_factory=dict)
    _clients_by_name: dict[str, ClientConfig] = PrivateAttr(default_factory=dict)
    _policies_by_client: dict[str, tuple[Policy, ...]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Config:
        if not self.clients:
            raise Invalid(("clients",), "at least one [[clients]] table is required")
        seen_akid: dict[str, int] = {}
        seen_name: dict[str, int] = {}
        for i, client in enumerate(self.clients):
            if client.access_key_id in seen_akid:
                raise Invalid(
                    ("clients", i, "access_key_id"),
                    f"duplicate of clients[{seen_akid[client.access_key_id]}].access_key_id",
                )
            if client.name in seen_name:
                raise Invalid(("clients", i, "name"), f"duplicate of clients[{seen_name[client.name]}].name")
            seen_akid[client.access_key_id] = i
            seen_name[client.name] = i
        self._check_policies()
        if self.kms.provider == "aws-kms":
            for i, rule in enumerate(self.buckets):
                problem = aws_key_problem(rule.key) if rule.key is not None else None
                if problem:
                    raise Invalid(("buckets", i, "key"), problem)
        return self

    def _check_policies(self) -> None:
        names = {c.name for c in self.clients}
        groups = {g for c in self.clients for g in c.groups}
        seen: dict[str, int] = {}
        for i, pol in enumerate(self.policies):
            if pol.name in seen:
                raise Invalid(("policies", i, "name"), f"duplicate of policies[{seen[pol.name]}].name")
            seen[pol.name] = i
            for j, p in enumerate(pol.principals):
                if p.startswith("group:") and p[len("group:") :] not in groups:
                    raise Invalid(("policies", i, "principals", j), f'no [[clients]] entry is in group "{p[6:]}"')
                if p != "*" and not p.startswith("group:") and p not in names:
                    raise Invalid(("policies", i, "principals", j), f'no [[clients]] entry is named "{p}"')

    def model_post_init(self, context: Any, /) -> None:
        """Index the clients by access key id and name, and each client's policies, once."""
        self._clients_by_akid = {c.access_key_id: c for c in self.clients}
        self._clients_by_name = {c.name: c for c in self.clients}
        self._policies_by_client = {
            c.name: tuple(p.policy for p in self.policies if p.applies_to(c)) for c in self.clients
        }

    def client_by_name(self, name: str) -> ClientConfig | None:
        """The client with this name, if one is configured."""
        return self._clients_by_name.get(name)

    def policies_for(self, identity: str) -> tuple[Policy, ...] | None:
        """The identity policies of client `identity`; None when the config has no ``[[policies]]``
        (then every client may do everything, as before policies existed)."""
        if not self.policies:
            return None
        return self._policies_by_client.get(identity, ())

    def client_by_access_key(self, access_key_id: str) -> ClientConfig | None:
        """The client with this access key id, if one is configured."""
        return self._clients_by_akid.get(access_key_id)

    def rule_for_bucket(self, bucket: str, key: str = "") -> BucketRule | None:
        """The first ``[[buckets]]`` rule whose glob (and prefix) matches."""
        for rule in self.buckets:
            if rule.matches(bucket, key):
                return rule
        return None

    def key_for_bucket(self, bucket: str, key: str = "") -> str:
        """The master key for new objects in `bucket` (under `key`)."""
        rule = self.rule_for_bucket(bucket, key)
        if rule is not None and rule.key is not None:
            return rule.key
        return self.kms.default_key

    def encrypt_only(self, key: str) -> bool:
        """Whether master key `key` (an id or a stored key reference) has ``mode = "encrypt-only"``."""
        return any(p.mode == "encrypt-only" and (p.id == key or p.names(key)) for p in self.keys)

    def may_use_key(self, identity: str, action: str, key: str) -> bool:
        """Key policy: may client `identity` `action` with master key `key` (an id or a stored
        key reference)? Without any ``[[keys]]`` table every client may use every key."""
        if not self.keys:
            return True
        client = self._clients_by_name.get(identity)
        if client is None:
            return False
        for policy in self.keys:
            if policy.id == key or policy.names(key):
                return policy.allows(action, client)
        return False
