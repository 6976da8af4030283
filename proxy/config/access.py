"""Who may use sealgate: ``[[clients]]`` (credentials), ``[[keys]]`` (key policies), ``[[policies]]`` (IAM)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import PrivateAttr, SecretStr, StrictStr, field_validator, model_validator

from proxy.config.values import ConfigPath, Invalid, Section

if TYPE_CHECKING:
    from proxy.access.policy import Policy


_ACCESS_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_POLICY_NAME = re.compile(r"^[A-Za-z0-9+=,.@_-]{1,128}$")
MIN_SECRET_LENGTH = 16
#: How ``[[clients]] cert_identities`` name a certificate: subject CN, or a SAN of that type.
CERT_IDENTITY_KINDS = ("CN=", "DNS:", "email:", "URI:")


class ClientConfig(Section):
    """``[[clients]]``: one set of S3 credentials that may use sealgate."""

    name: StrictStr
    access_key_id: StrictStr
    secret_access_key: SecretStr
    #: Groups this client belongs to, for key policies (``group:NAME``).
    groups: tuple[StrictStr, ...] = ()
    #: Mutual TLS: client certificates that are this client, as ``CN=name`` (subject common
    #: name) or a subject alternative name ``DNS:host``, ``email:addr``, ``URI:uri``. When set,
    #: this client's keys are accepted only over a connection with such a certificate.
    cert_identities: tuple[StrictStr, ...] = ()

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _CLIENT_NAME.match(name):
            raise ValueError(f'must be 1-64 characters of A-Z a-z 0-9 . _ @ -, got "{name}"')
        return name

    @field_validator("cert_identities")
    @classmethod
    def _check_cert_identities(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for i, name in enumerate(names):
            kind = next((k for k in CERT_IDENTITY_KINDS if name.startswith(k)), None)
            if kind is None or not name[len(kind) :].strip():
                raise Invalid((i,), f'must be "CN=name", "DNS:host", "email:addr" or "URI:uri", got "{name}"')
        return names

    @field_validator("access_key_id")
    @classmethod
    def _check_akid(cls, akid: str) -> str:
        if not _ACCESS_KEY_ID.match(akid):
            raise ValueError(f'must be 16-128 characters of A-Z and 0-9, got "{akid}"')
        return akid

    @field_validator("secret_access_key")
    @classmethod
    def _check_secret(cls, secret: SecretStr) -> SecretStr:
        if len(secret.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return secret


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


class KeyPolicy(Section):
    """``[[keys]]``: who may use one master key. Principals are client names, ``group:NAME``
    or ``*``. Once any ``[[keys]]`` table exists, a key without one may not be used at all."""

    id: StrictStr
    encrypt: tuple[StrictStr, ...] = ()
    decrypt: tuple[StrictStr, ...] = ()
    admin: tuple[StrictStr, ...] = ()
    #: ``encrypt-only``: this gateway encrypts new objects under the key but refuses every read
    #: of objects under it (403), whatever ``decrypt`` says.
    mode: Literal["read-write", "encrypt-only"] = "read-write"
    #: Sender authentication (docs/FORMAT.md §3a): ``"ed25519:<base64>"`` public halves of the
    #: writing gateways' signing keys (`sealgate keys export-public`). When set, an object under
    #: this key is served only if one of them signed it; for public-key (encrypt-only) keys,
    #: whose objects anyone with the public key can make.
    trusted_signers: tuple[StrictStr, ...] = ()

    @field_validator("trusted_signers")
    @classmethod
    def _check_signers(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        from proxy.crypto.signing import parse_public

        for i, text in enumerate(keys):
            try:
                parse_public(text)
            except ValueError as exc:
                raise Invalid((i,), str(exc)) from None
        return keys

    def signer_keys(self) -> tuple[bytes, ...]:
        """The raw public keys of `trusted_signers`."""
        from proxy.crypto.signing import parse_public

        return tuple(parse_public(t) for t in self.trusted_signers)

    def names(self, key_ref: str) -> bool:
        """Whether this policy is about the key a stored key reference points to.

        Local references are ``local:<id>:<version>`` (``pkcs11:<label>:<version>`` and
        ``kmip:<name>:<unique id>`` alike); KMS references are key ARNs, which match a
        policy written with the ARN or the bare key id (aliases cannot be matched offline)."""
        if key_ref.startswith("kms-rsa:"):
            key_ref = key_ref[len("kms-rsa:") :]  # an RSA KMS key's ARN, marked as such
        if key_ref == self.id:
            return True
        if key_ref.startswith(("local:", "pkcs11:", "kmip:")):  # <provider>:<key id>:<version>
            return key_ref.split(":")[1] == self.id
        return key_ref.endswith("/" + self.id)

    def allows(self, action: str, client: ClientConfig) -> bool:
        """Whether `client` may `action` ("encrypt", "decrypt", "admin") with this key."""
        principals: tuple[str, ...] = getattr(self, action)
        return any(p == "*" or p == client.name or p in {f"group:{g}" for g in client.groups} for p in principals)


class PolicyConfig(Section):
    """``[[policies]]``: an identity policy in AWS IAM's JSON grammar and the clients it applies
    to. Once any ``[[policies]]`` table exists, a request is refused unless a policy allows it."""

    name: StrictStr
    #: Client names, ``group:NAME`` or ``*``: the grammar of ``[[keys]]``.
    principals: tuple[StrictStr, ...]
    #: The policy document (JSON text), or `file`: a path to one.
    document: StrictStr | None = None
    file: ConfigPath | None = None

    _policy: Policy = PrivateAttr()

    @field_validator("name")
    @classmethod
    def _check_policy_name(cls, name: str) -> str:
        if not _POLICY_NAME.match(name):
            raise ValueError(f'must be 1-128 characters of A-Z a-z 0-9 + = , . @ _ -, got "{name}"')
        return name

    @field_validator("principals")
    @classmethod
    def _check_principals(cls, principals: tuple[str, ...]) -> tuple[str, ...]:
        if not principals:
            raise ValueError("must name at least one client, group:NAME or *")
        for i, p in enumerate(principals):
            name = p[len("group:") :] if p.startswith("group:") else p
            if p != "*" and not _CLIENT_NAME.match(name):
                raise Invalid((i,), f'must be a client name, "group:NAME" or "*", got "{p}"')
        return principals

    @model_validator(mode="after")
    def _parse(self) -> PolicyConfig:
        if (self.document is None) == (self.file is None):
            raise Invalid(("document",), "give exactly one of document (JSON text) and file (a path)")
        if self.file is not None:
            try:
                text = self.file.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise Invalid(("file",), f"file not found: {self.file}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise Invalid(("file",), f"cannot read {self.file}: {exc}") from None
        else:
            assert self.document is not None
            text = self.document
        from proxy.access.policy import PolicyError, parse_policy  # only configs with policies need it

        try:
            self._policy = parse_policy(self.name, text)
        except PolicyError as exc:
            raise Invalid(("document" if self.file is None else "file",), str(exc)) from None
        return self

    @property
    def policy(self) -> Policy:
        """The parsed document."""
        return self._policy

    def applies_to(self, client: ClientConfig) -> bool:
        """Whether this policy is one of `client`'s."""
        groups = {f"group:{g}" for g in client.groups}
        return any(p == "*" or p == client.name or p in groups for p in self.principals)
