"""The sealgate config file: TOML in, validated frozen objects out, checked once at start-up.

`load_config` reads the file, substitutes ``${VAR}`` references from the environment,
validates everything into a `Config`, and checks that the files it names exist. Whatever is
wrong becomes one `ConfigError` whose message is a single line naming the file, the key path
(``clients[0].secret_access_key``) and the problem. Secrets are `pydantic.SecretStr`, so
neither ``repr``, ``str``, logging nor ``model_dump_json`` shows them, and no error message
ever quotes a value that came from a secret field.

Relative paths (``tls_cert``, ``tls_key``, ``ca_bundle``, ``keyring``, ``passphrase_file``)
are resolved against the *current working directory*, not the config file's directory: the
documented usage is ``sealgate serve --config config/sealgate.toml`` run from the project
root with ``certs/...`` paths, and that is what a user reading the file expects. They are
stored absolute, so a later ``chdir`` cannot change what they mean.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from proxy.access.policy import Policy

__all__ = [
    "BackendConfig",
    "BucketRule",
    "ClientConfig",
    "Config",
    "ConfigError",
    "EncryptionConfig",
    "KmsConfig",
    "PolicyConfig",
    "ServerConfig",
    "aws_key_problem",
    "load_config",
    "parse_address",
]


class ConfigError(Exception):
    """A config file that cannot be used; ``str()`` is one line: ``file: key.path: problem``."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + problem)


Loc = tuple[str | int, ...]


class _Invalid(ValueError):
    """A validator's complaint about a key below the model that raised it."""

    def __init__(self, key: Loc, problem: str) -> None:
        super().__init__(problem)
        self.key = key


# --- value checks shared by the models -------------------------------------------------------

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ACCESS_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_POLICY_NAME = re.compile(r"^[A-Za-z0-9+=,.@_-]{1,128}$")
_BUCKET_GLOB = re.compile(r"^[a-z0-9.\-*?\[\]!]{1,63}$")
_AWS_KEY_ID = re.compile(r"^(?:[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}|mrk-[0-9a-f]{32})$")
MIN_SECRET_LENGTH = 16
#: How ``[[clients]] cert_identities`` name a certificate: subject CN, or a SAN of that type.
CERT_IDENTITY_KINDS = ("CN=", "DNS:", "email:", "URI:")


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:8443``) to ``(host, port)``; ValueError says what is wrong."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError(f'must be "host:port", got "{value}"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'"[{host}]" is not an IPv6 address') from None
    elif ":" in host:
        raise ValueError(f'IPv6 addresses need brackets, like "[::1]:8443", got "{value}"')
    elif not host:
        raise ValueError(f'host is missing in "{value}" (use 0.0.0.0 for all interfaces)')
    elif not _HOSTNAME.match(host):
        raise ValueError(f'"{host}" is not a valid host name or IP address')
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f'port must be a number from 1 to 65535, got "{port_text}"')
    return host, int(port_text)


def _check_address(value: str | None) -> str | None:
    if value is not None:
        parse_address(value)
    return value


def _check_url(value: str | None) -> str | None:
    """http(s) URL with a host and nothing after it; returned without a trailing slash."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'must be an http:// or https:// URL, got "{value}"')
    if parts.username is not None or parts.password is not None:
        # Never echo the value: it holds credentials.
        raise ValueError("must not contain credentials; use access_key_id / secret_access_key")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f'has an invalid port: "{value}"') from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f'must be just scheme://host[:port], got "{value}"')
    return value.rstrip("/")


def _as_path(value: object) -> Path:
    """A path string from the file, made absolute against the working directory."""
    if isinstance(value, Path):
        return value.expanduser().absolute()
    if not isinstance(value, str):
        raise ValueError("must be a path string")
    if not value.strip():
        raise ValueError("must not be empty")
    return Path(value).expanduser().absolute()


ConfigPath = Annotated[Path, BeforeValidator(_as_path)]
"""A file path as written in the config, resolved against the current working directory."""


def _require_pair(first: tuple[str, object], second: tuple[str, object], why: str = "") -> None:
    (name_a, a), (name_b, b) = first, second
    if (a is None) != (b is None):
        missing = name_b if a is not None else name_a
        other = name_a if a is not None else name_b
        raise _Invalid((missing,), f"required when {other} is set{why}")


def _not_set_unless(model: BaseModel, keys: tuple[str, ...], condition: str) -> None:
    for key in keys:
        if getattr(model, key) is not None:
            raise _Invalid((key,), f"only used when {condition}; remove it")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- the sections ----------------------------------------------------------------------------


def _cgroup_cpu_limit(root: Path) -> float | None:
    """The CPUs a cgroup quota allows this process (a container's ``--cpus``): cgroup v2's
    ``cpu.max``, else v1's CFS quota and period; None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use, 1 to 256: its CPU affinity (a cpuset) where the OS has
    one, and no more than a cgroup CPU quota allows, rounded up."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS: no affinity API
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup)
    if limit is not None and limit > 0:
        cores = min(cores, math.ceil(limit))
    return max(1, min(cores, 256))


class ServerConfig(_Model):
    """``[server]``: where sealgate listens.

    TLS is on unless the file says ``tls = false``. With TLS on, ``listen``, ``tls_cert`` and
    ``tls_key`` are required and ``plain_http_listen`` may add a second, unencrypted listener.
    With ``tls = false`` only ``plain_http_listen`` is served, and ``listen`` / ``tls_cert`` /
    ``tls_key`` must not be set. A plain-only server is therefore always a written-down
    decision, never the side effect of a forgotten certificate path.
    """

    listen: StrictStr | None = None
    tls: StrictBool = True
    tls_cert: ConfigPath | None = None
    tls_key: ConfigPath | None = None
    plain_http_listen: StrictStr | None = None
    client_max_skew_seconds: StrictInt = Field(default=900, ge=1, le=3600)
    #: Longest lifetime of a presigned URL: a SigV2 URL whose Expires is further ahead is refused,
    #: and so is a SigV4 X-Amz-Expires above it (SigV4's are never more than 604800, seven days).
    presign_max_seconds: StrictInt = Field(default=604800, ge=1)
    #: Processes sharing the listening port; by default one per core this process may use
    #: (CPU affinity, capped by a cgroup CPU quota).
    workers: StrictInt = Field(default_factory=available_cores, ge=1, le=256)
    #: A client body that sends nothing for this long is cut off (nothing is stored).
    body_stall_timeout_seconds: StrictInt = Field(default=60, ge=1, le=3600)
    #: Request bodies at least this long are read straight off the connection, past aiohttp's
    #: parser (fewer copies; see proxy/server/direct.py); the connection then carries on, unless
    #: the body ended early. 0 turns this off.
    direct_body_min_bytes: StrictInt = Field(default=1024 * 1024, ge=0)
    #: Idle keep-alive connections are closed after this long.
    keepalive_timeout_seconds: StrictInt = Field(default=75, ge=1, le=3600)
    #: Longest request line or header line, and most header fields, accepted.
    max_header_bytes: StrictInt = Field(default=16384, ge=1024, le=1048576)
    max_headers: StrictInt = Field(default=128, ge=16, le=4096)
    #: Host suffixes for virtual-hosted-style requests (``bucket.<domain>``).
    virtual_host_domains: tuple[StrictStr, ...] = ("localhost",)
    #: Mutual TLS: clients must present a certificate issued by this CA (PEM bundle).
    tls_client_ca: ConfigPath | None = None
    #: How often the certificate, key and client CA files are checked for changes (0: only on
    #: SIGHUP). A changed set that does not load is logged and the running one kept.
    tls_reload_seconds: float = Field(default=5.0, ge=0, le=3600)
    #: The TLS handshake, and each request's headers, must be complete within this long
    #: (counted from the connection, or from the first byte of a request on a kept-alive one).
    header_timeout_seconds: float = Field(default=15.0, gt=0, le=3600)
    #: Open client connections per process; at the cap sealgate stops accepting until one closes.
    max_connections: StrictInt = Field(default=1024, ge=1, le=1_000_000)
    #: On SIGTERM: how long requests in flight may still run before their connections are cut.
    shutdown_timeout_seconds: float = Field(default=30.0, ge=0, le=3600)

    _check_listen = field_validator("listen", "plain_http_listen")(_check_address)

    @field_validator("virtual_host_domains")
    @classmethod
    def _check_domains(cls, domains: tuple[str, ...]) -> tuple[str, ...]:
        for i, domain in enumerate(domains):
            if not _HOSTNAME.match(domain):
                raise _Invalid((i,), f'"{domain}" is not a valid domain name')
        return domains

    @model_validator(mode="after")
    def _check_listeners(self) -> ServerConfig:
        if self.tls:
            for key in ("listen", "tls_cert", "tls_key"):
                if getattr(self, key) is None:
                    raise _Invalid((key,), "required when tls = true (the default)")
        else:
            if self.plain_http_listen is None:
                raise _Invalid(("plain_http_listen",), "required when tls = false")
            for key in ("listen", "tls_cert", "tls_key", "tls_client_ca"):
                if getattr(self, key) is not None:
                    raise _Invalid((key,), "not used when tls = false; remove it or set tls = true")
        plain = self.plain_http_listen
        if self.tls and plain is not None and parse_address(plain) == self.listen_address:
            raise _Invalid(("plain_http_listen",), "is the same address as listen")
        return self

    @property
    def listen_address(self) -> tuple[str, int]:
        """``(host, port)`` of the TLS listener."""
        if self.listen is None:
            raise ValueError("no TLS listener configured (tls = false)")
        return parse_address(self.listen)

    @property
    def plain_http_address(self) -> tuple[str, int]:
        """``(host, port)`` of the plain-HTTP listener."""
        if self.plain_http_listen is None:
            raise ValueError("no plain-HTTP listener configured")
        return parse_address(self.plain_http_listen)


class BackendConfig(_Model):
    """``[backend]``: the S3-compatible storage behind sealgate.

    Leave out both credentials to use the AWS default chain (environment, profile, role).
    """

    endpoint: StrictStr
    region: StrictStr
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    ca_bundle: ConfigPath | None = None
    addressing_style: Literal["path", "virtual"] = "path"
    verify_tls: StrictBool = True
    #: Whether the backend lists multipart objects with S3's ``…-N`` ETags (AWS S3, MinIO, Ceph,
    #: moto). If not (``rclone serve s3``), listings look up every object's manifest, which
    #: costs one small request per listed object.
    multipart_etag_suffix: StrictBool = True
    #: Largest object the backend copies in one CopyObject (S3: 5 GiB); larger copies go part by
    #: part with UploadPartCopy, still server-side.
    max_copy_bytes: StrictInt = Field(default=5 * 1024**3, ge=5 * 1024**2)
    #: Attempts for a request whose body can be sent again (everything but streamed uploads)
    #: when the backend cannot be reached or answers 500/502/503/504; with backoff between.
    max_attempts: StrictInt = Field(default=3, ge=1, le=10)
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    #: Longest wait for the backend's next bytes (headers or body) before the request fails.
    read_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    #: Send streamed uploads (above 256 KiB, multipart parts) aws-chunked with a CRC32C of the
    #: ciphertext in a trailer, which the backend checks before storing (S3, MinIO; not
    #: ``rclone serve s3``, which refuses chunked uploads). Needed for buckets with Object Lock
    #: retention, which take uploads only with a checksum. Bodies sent whole always carry
    #: Content-MD5.
    upload_checksum: StrictBool = False

    _check_endpoint = field_validator("endpoint")(_check_url)

    @field_validator("region")
    @classmethod
    def _check_region(cls, region: str) -> str:
        if not re.fullmatch(r"[a-z0-9-]{1,64}", region):
            raise ValueError(f'must be a region name like "eu-west-2", got "{region}"')
        return region

    @model_validator(mode="after")
    def _check(self) -> BackendConfig:
        _require_pair(
            ("access_key_id", self.access_key_id),
            ("secret_access_key", self.secret_access_key),
            " (or leave out both to use the AWS default chain)",
        )
        if self.ca_bundle is not None:
            if not self.endpoint.startswith("https:"):
                raise _Invalid(("ca_bundle",), "only used with an https:// endpoint")
            if not self.verify_tls:
                raise _Invalid(("ca_bundle",), "has no effect with verify_tls = false")
        return self


class KeyCacheConfig(_Model):
    """``[kms.cache]``: sharing generated data keys and keeping unwrapped ones.

    ``enabled`` defaults to on for ``aws-kms`` (each KMS call costs time and money) and off for
    ``local``. A shared data key is wrapped for its bucket only; objects bind their names with a
    tag instead, and each still has its own salt and derived keys.
    """

    enabled: StrictBool | None = None
    max_objects: StrictInt = Field(default=1000, ge=1, le=1_000_000)
    max_seconds: StrictInt = Field(default=300, ge=1, le=86_400)
    max_bytes: StrictInt = Field(default=2**40, ge=1)
    decrypt_seconds: StrictInt = Field(default=60, ge=0, le=3600)


class KmsConfig(_Model):
    """``[kms]``: where master keys live, AWS KMS (``aws-kms``) or a local keyring file.

    Keys of the other provider are errors rather than being ignored, so a half-edited
    switch from one provider to the other is caught.
    """

    provider: Literal["aws-kms", "local"]
    #: Master key for new objects unless a bucket rule names another.
    default_key: StrictStr
    # aws-kms
    region: StrictStr | None = None
    endpoint: StrictStr | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    ca_bundle: ConfigPath | None = None
    #: Longest wait for one KMS answer; a slow KMS fails the request (503) rather than hanging it.
    timeout_seconds: float | None = Field(default=None, gt=0, le=300)
    #: Attempts per KMS call (botocore's standard retry mode: throttling and 5xx, with backoff).
    max_attempts: StrictInt | None = Field(default=None, ge=1, le=10)
    #: Asymmetric KMS keys (KeySpec RSA_3072/RSA_4096, KeyUsage ENCRYPT_DECRYPT), as named in
    #: ``default_key`` / bucket rules: data keys are wrapped here with the public key
    #: (GetPublicKey, once) and unwrapped by KMS Decrypt (RSAES_OAEP_SHA_256).
    rsa_keys: tuple[StrictStr, ...] = ()
    # local
    keyring: ConfigPath | None = None
    passphrase_file: ConfigPath | None = None
    passphrase_env: StrictStr | None = None
    cache: KeyCacheConfig = KeyCacheConfig()

    @property
    def cache_enabled(self) -> bool:
        """Whether data keys are shared and unwrapped keys kept (see KeyCacheConfig)."""
        if self.cache.enabled is not None:
            return self.cache.enabled
        return self.provider == "aws-kms"

    _check_endpoint = field_validator("endpoint")(_check_url)

    @model_validator(mode="before")
    @classmethod
    def _default_key_present(cls, data: Any) -> Any:
        # Checked before field validation so the message can say why it is required.
        if isinstance(data, dict) and "default_key" not in data:
            provider = data.get("provider")
            if provider in ("aws-kms", "local"):
                raise _Invalid(("default_key",), f'required when provider = "{provider}"')
        return data

    @field_validator("default_key")
    @classmethod
    def _check_default_key(cls, key: str) -> str:
        if not key.strip():
            raise ValueError("must not be empty")
        return key

    @field_validator("passphrase_env")
    @classmethod
    def _check_env_name(cls, name: str | None) -> str | None:
        if name is not None and not _ENV_NAME.match(name):
            raise ValueError(f'"{name}" is not an environment variable name')
        return name

    @model_validator(mode="after")
    def _check(self) -> KmsConfig:
        if self.provider == "aws-kms":
            _not_set_unless(self, ("keyring", "passphrase_file", "passphrase_env"), 'provider = "local"')
            _require_pair(
                ("access_key_id", self.access_key_id),
                ("secret_access_key", self.secret_access_key),
                " (or leave out both to use the AWS default chain)",
            )
            problem = aws_key_problem(self.default_key)
            if problem:
                raise _Invalid(("default_key",), problem)
            for i, key in enumerate(self.rsa_keys):
                problem = aws_key_problem(key)
                if problem:
                    raise _Invalid(("rsa_keys", i), problem)
        else:
            if self.rsa_keys:
                raise _Invalid(("rsa_keys",), 'only used when provider = "aws-kms"; remove it')
            _not_set_unless(
                self,
                (
                    "region",
                    "endpoint",
                    "access_key_id",
                    "secret_access_key",
                    "ca_bundle",
                    "timeout_seconds",
                    "max_attempts",
                ),
                'provider = "aws-kms"',
            )
            if self.keyring is None:
                raise _Invalid(("keyring",), 'required when provider = "local"')
            if self.passphrase_file is None and self.passphrase_env is None:
                raise _Invalid(
                    ("passphrase_file",),
                    'set passphrase_file or passphrase_env when provider = "local"',
                )
        return self


def aws_key_problem(key: str) -> str | None:
    """Why `key` cannot name an AWS KMS key (id, ARN or ``alias/NAME``), or None if it can."""
    if key.startswith("alias/") and len(key) > len("alias/"):
        return None
    if key.startswith("arn:") and ":kms:" in key:
        return None
    if _AWS_KEY_ID.match(key):
        return None
    return f'must be a KMS key id, key ARN or "alias/NAME", got "{key}"'


class ClientConfig(_Model):
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
                raise _Invalid((i,), f'must be "CN=name", "DNS:host", "email:addr" or "URI:uri", got "{name}"')
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


class EncryptionConfig(_Model):
    """``[encryption]``: how new objects are sealed."""

    # The segment size is not configurable: format v1 writes 64 KiB segments, so that listings
    # can turn stored sizes into plaintext sizes without reading each object's metadata.
    #: ``md5`` makes every upload's ETag the plaintext MD5 (costs an MD5 pass over the body).
    etag: Literal["auto", "md5"] = "auto"
    #: Optional secret shared by all replicas. When set, a multipart upload id also carries the
    #: data key sealed under it, so parts are served without a KMS call, and uploads work under
    #: encrypt-only (public) keys that the gateway cannot unwrap. Give it as ${ENV}.
    upload_secret: SecretStr | None = None


class KeyPolicy(_Model):
    """``[[keys]]``: who may use one master key. Principals are client names, ``group:NAME``
    or ``*``. Once any ``[[keys]]`` table exists, a key without one may not be used at all."""

    id: StrictStr
    encrypt: tuple[StrictStr, ...] = ()
    decrypt: tuple[StrictStr, ...] = ()
    admin: tuple[StrictStr, ...] = ()
    #: ``encrypt-only``: this gateway encrypts new objects under the key but refuses every read
    #: of objects under it (403), whatever ``decrypt`` says.
    mode: Literal["read-write", "encrypt-only"] = "read-write"

    def names(self, key_ref: str) -> bool:
        """Whether this policy is about the key a stored key reference points to.

        Local references are ``local:<id>:<version>``; KMS references are key ARNs, which match a
        policy written with the ARN or the bare key id (aliases cannot be matched offline)."""
        if key_ref.startswith("kms-rsa:"):
            key_ref = key_ref[len("kms-rsa:") :]  # an RSA KMS key's ARN, marked as such
        if key_ref == self.id:
            return True
        if key_ref.startswith("local:"):
            return key_ref.split(":")[1] == self.id
        return key_ref.endswith("/" + self.id)

    def allows(self, action: str, client: ClientConfig) -> bool:
        """Whether `client` may `action` ("encrypt", "decrypt", "admin") with this key."""
        principals: tuple[str, ...] = getattr(self, action)
        return any(p == "*" or p == client.name or p in {f"group:{g}" for g in client.groups} for p in principals)


class PolicyConfig(_Model):
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
                raise _Invalid((i,), f'must be a client name, "group:NAME" or "*", got "{p}"')
        return principals

    @model_validator(mode="after")
    def _parse(self) -> PolicyConfig:
        if (self.document is None) == (self.file is None):
            raise _Invalid(("document",), "give exactly one of document (JSON text) and file (a path)")
        if self.file is not None:
            try:
                text = self.file.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise _Invalid(("file",), f"file not found: {self.file}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise _Invalid(("file",), f"cannot read {self.file}: {exc}") from None
        else:
            assert self.document is not None
            text = self.document
        from proxy.access.policy import PolicyError, parse_policy  # only configs with policies need it

        try:
            self._policy = parse_policy(self.name, text)
        except PolicyError as exc:
            raise _Invalid(("document" if self.file is None else "file",), str(exc)) from None
        return self

    @property
    def policy(self) -> Policy:
        """The parsed document."""
        return self._policy

    def applies_to(self, client: ClientConfig) -> bool:
        """Whether this policy is one of `client`'s."""
        groups = {f"group:{g}" for g in client.groups}
        return any(p == "*" or p == client.name or p in groups for p in self.principals)


class BucketRule(_Model):
    """``[[buckets]]``: settings for buckets whose name matches the glob `name`."""

    name: StrictStr
    #: Only objects whose key starts with this prefix (default: all of the bucket).
    prefix: StrictStr = ""
    #: Master key for new objects in these buckets (default: ``kms.default_key``).
    key: StrictStr | None = None
    #: Serve objects sealgate did not write as they are (for migrating existing buckets).
    allow_unencrypted_reads: StrictBool = False
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

    def matches(self, bucket: str, key: str = "") -> bool:
        """Whether this rule applies to `bucket` (and object `key`)."""
        return fnmatchcase(bucket, self.name) and key.startswith(self.prefix)


class AuditConfig(_Model):
    """``[audit]``: the hash-chained record of every key use (off unless `path` is set)."""

    #: The log file; with ``workers > 1`` each worker appends to ``<path>.w<N>``.
    path: ConfigPath | None = None
    #: Makes the chain an HMAC chain, so an edited file cannot be re-hashed (give as ${ENV}).
    hmac_key: SecretStr | None = None


class Config(_Model):
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

    _clients_by_akid: dict[str, ClientConfig] = PrivateAttr(default_factory=dict)
    _clients_by_name: dict[str, ClientConfig] = PrivateAttr(default_factory=dict)
    _policies_by_client: dict[str, tuple[Policy, ...]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Config:
        if not self.clients:
            raise _Invalid(("clients",), "at least one [[clients]] table is required")
        seen_akid: dict[str, int] = {}
        seen_name: dict[str, int] = {}
        for i, client in enumerate(self.clients):
            if client.access_key_id in seen_akid:
                raise _Invalid(
                    ("clients", i, "access_key_id"),
                    f"duplicate of clients[{seen_akid[client.access_key_id]}].access_key_id",
                )
            if client.name in seen_name:
                raise _Invalid(("clients", i, "name"), f"duplicate of clients[{seen_name[client.name]}].name")
            seen_akid[client.access_key_id] = i
            seen_name[client.name] = i
        self._check_policies()
        if self.kms.provider == "aws-kms":
            for i, rule in enumerate(self.buckets):
                problem = aws_key_problem(rule.key) if rule.key is not None else None
                if problem:
                    raise _Invalid(("buckets", i, "key"), problem)
        return self

    def _check_policies(self) -> None:
        names = {c.name for c in self.clients}
        groups = {g for c in self.clients for g in c.groups}
        seen: dict[str, int] = {}
        for i, pol in enumerate(self.policies):
            if pol.name in seen:
                raise _Invalid(("policies", i, "name"), f"duplicate of policies[{seen[pol.name]}].name")
            seen[pol.name] = i
            for j, p in enumerate(pol.principals):
                if p.startswith("group:") and p[len("group:") :] not in groups:
                    raise _Invalid(("policies", i, "principals", j), f'no [[clients]] entry is in group "{p[6:]}"')
                if p != "*" and not p.startswith("group:") and p not in names:
                    raise _Invalid(("policies", i, "principals", j), f'no [[clients]] entry is named "{p}"')

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


# --- loading ---------------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")


def _key_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _substitute(value: Any, loc: Loc, env: Mapping[str, str]) -> Any:
    """``${VAR}`` from `env` in every string but policy documents; ``$${`` stands for a literal ``${``."""
    if isinstance(value, dict):
        return {k: _substitute(v, (*loc, k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*loc, i), env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    if len(loc) == 3 and loc[0] == "policies" and loc[2] == "document":
        return value  # IAM policy variables (${aws:username}) share the syntax: documents are literal

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        name = match.group(1)
        if name is None:
            raise ConfigError("", _key_path(loc), 'malformed "${...}": write ${NAME}, or $${ for a literal "${"')
        if name not in env:
            raise ConfigError("", _key_path(loc), f"environment variable {name} is not set")
        return env[name]

    return _REFERENCE.sub(replace, value)


_SECTIONS: dict[str, type[BaseModel]] = {
    "server": ServerConfig,
    "backend": BackendConfig,
    "kms": KmsConfig,
    "clients": ClientConfig,
    "encryption": EncryptionConfig,
    "buckets": BucketRule,
    "keys": KeyPolicy,
    "policies": PolicyConfig,
}


def _unknown_key(loc: Loc) -> str:
    model: type[BaseModel] | None = Config if len(loc) == 1 else None
    if len(loc) > 1 and isinstance(loc[0], str):
        model = _SECTIONS.get(loc[0])
    name = loc[-1]
    if model is None or not isinstance(name, str):
        return "unknown key"
    close = difflib.get_close_matches(name, list(model.model_fields), n=1)
    return f'unknown key (did you mean "{close[0]}"?)' if close else "unknown key"


_TYPE_PROBLEMS = {
    "missing": "required",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "dict_type": "must be a table",
    "tuple_type": "must be an array",
    "list_type": "must be an array",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
}


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """(key path, problem) for one pydantic error; never includes the offending input."""
    loc: Loc = tuple(p for p in error["loc"] if isinstance(p, int | str))
    kind = error["type"]
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, _Invalid):
        return _key_path((*loc, *cause.key)), str(cause)
    if kind == "value_error" and cause is not None:
        return _key_path(loc), str(cause)
    if kind == "extra_forbidden":
        return _key_path(loc), _unknown_key(loc)
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", '"')
        return _key_path(loc), f"must be {expected}"
    if kind in _TYPE_PROBLEMS:
        return _key_path(loc), _TYPE_PROBLEMS[kind]
    message = str(error["msg"])
    if message.startswith("Input should be "):
        message = "must be " + message[len("Input should be ") :]
    return _key_path(loc), message


def _check_environment(config: Config, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The first file or variable the config names that is not there."""
    files: list[tuple[str, Path | None]] = [
        ("server.tls_cert", config.server.tls_cert),
        ("server.tls_key", config.server.tls_key),
        ("backend.ca_bundle", config.backend.ca_bundle),
        ("kms.ca_bundle", config.kms.ca_bundle),
        ("kms.keyring", config.kms.keyring),
        ("kms.passphrase_file", config.kms.passphrase_file),
    ]
    for key, path in files:
        if path is not None and not path.is_file():
            what = "not a file" if path.exists() else "file not found"
            return key, f"{what}: {path} (relative paths are resolved against the working directory)"
    # With a passphrase file as well, the variable is optional: the file is the fallback.
    name = config.kms.passphrase_env
    if name is not None and config.kms.passphrase_file is None and not env.get(name):
        return "kms.passphrase_env", f"environment variable {name} is not set or empty"
    return None


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate the config at `path`; ConfigError says what is wrong.

    `env` supplies ``${VAR}`` values (default: ``os.environ``).
    """
    source = str(path)
    environ: Mapping[str, str] = os.environ if env is None else env
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(source, None, "config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(source, None, "not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line L, column C)" and never the value.
        raise ConfigError(source, None, f"invalid TOML: {exc}") from None
    try:
        data = _substitute(raw, (), environ)
    except ConfigError as exc:
        raise ConfigError(source, exc.key, exc.problem) from None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # `from None`: the ValidationError's own text includes input values, secrets among them.
        errors = exc.errors()
        key, problem = _describe(errors[0])
        if len(errors) > 1:
            more = len(errors) - 1
            problem += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(source, key or None, problem) from None
    missing = _check_environment(config, environ)
    if missing is not None:
        raise ConfigError(source, *missing)
    return config
