"""``[backend]`` and ``[kms]``: the S3 storage and the key service sealgate calls."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PlainValidator,
    SecretStr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from proxy.config.values import (
    ConfigPath,
    Invalid,
    Section,
    as_path,
    check_address,
    check_url,
    not_set_unless,
    require_pair,
)
from proxy.kms.keyring_object import ObjectLocation, parse_location

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_AWS_KEY_ID = re.compile(r"^(?:[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}|mrk-[0-9a-f]{32})$")


class BackendConfig(Section):
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
    #: Connections to the backend this process keeps open at most (its pool).
    pool_size: StrictInt = Field(default=256, ge=1, le=65536)
    #: A request that finds every pooled connection busy waits this long for one, then gets
    #: 503 SlowDown (SDKs retry with backoff) instead of hanging.
    pool_wait_seconds: float = Field(default=2.0, gt=0, le=300)
    #: Streamed uploads (bodies above 256 KiB, multipart parts) one client may be sending to the
    #: backend at once, each holding a pooled connection until its body ends; one more waits up
    #: to ``pool_wait_seconds`` for one of them to end, then gets 503 SlowDown. Default: a
    #: quarter of ``pool_size``, so one client never holds the pool.
    streamed_uploads_per_client: StrictInt | None = Field(default=None, ge=1, le=65536)
    #: Object downloads (GetObject) one client may be reading at once, each holding a pooled
    #: connection until the client has taken the body; one more waits up to
    #: ``pool_wait_seconds``, then gets 503 SlowDown. Default: a quarter of ``pool_size``.
    #: Unsigned (public) reads count per client address.
    streamed_downloads_per_client: StrictInt | None = Field(default=None, ge=1, le=65536)

    _check_endpoint = field_validator("endpoint")(check_url)

    @property
    def uploads_per_client(self) -> int:
        """Streamed uploads one client may send at once (``streamed_uploads_per_client``)."""
        if self.streamed_uploads_per_client is not None:
            return self.streamed_uploads_per_client
        return max(1, self.pool_size // 4)

    @property
    def downloads_per_client(self) -> int:
        """Downloads one client may be reading at once (``streamed_downloads_per_client``)."""
        if self.streamed_downloads_per_client is not None:
            return self.streamed_downloads_per_client
        return max(1, self.pool_size // 4)

    @field_validator("region")
    @classmethod
    def _check_region(cls, region: str) -> str:
        if not re.fullmatch(r"[a-z0-9-]{1,64}", region):
            raise ValueError(f'must be a region name like "eu-west-2", got "{region}"')
        return region

    @model_validator(mode="after")
    def _check(self) -> BackendConfig:
        require_pair(
            ("access_key_id", self.access_key_id),
            ("secret_access_key", self.secret_access_key),
            " (or leave out both to use the AWS default chain)",
        )
        if self.ca_bundle is not None:
            if not self.endpoint.startswith("https:"):
                raise Invalid(("ca_bundle",), "only used with an https:// endpoint")
            if not self.verify_tls:
                raise Invalid(("ca_bundle",), "has no effect with verify_tls = false")
        for name in ("streamed_uploads_per_client", "streamed_downloads_per_client"):
            per_client = getattr(self, name)
            if per_client is not None and per_client > self.pool_size:
                raise Invalid((name,), f"must be at most pool_size ({self.pool_size}), got {per_client}")
        return self


class KeyCacheConfig(Section):
    """``[kms.cache]``: sharing generated data keys and keeping unwrapped ones.

    ``enabled`` defaults to on for ``aws-kms``, ``pkcs11`` and ``kmip`` (each call to the key
    service costs time, and for KMS money) and off for ``local``. A shared data key is wrapped
    for its bucket only; objects bind their names with a tag instead, and each still has its
    own salt and derived keys.
    """

    enabled: StrictBool | None = None
    max_objects: StrictInt = Field(default=1000, ge=1, le=1_000_000)
    max_seconds: StrictInt = Field(default=300, ge=1, le=86_400)
    max_bytes: StrictInt = Field(default=2**40, ge=1)
    decrypt_seconds: StrictInt = Field(default=60, ge=0, le=3600)


#: Which provider each provider-specific key of ``[kms]`` belongs to; set under another
#: provider it is an error (a half-edited switch of provider is caught, not ignored).
_PROVIDER_KEYS: dict[str, tuple[str, ...]] = {
    "aws-kms": (
        "region",
        "access_key_id",
        "secret_access_key",
        "ca_bundle",
        "max_attempts",
    ),
    "local": ("keyring", "passphrase_file", "passphrase_env", "keyring_poll_seconds"),
    "pkcs11": ("pkcs11_module", "pkcs11_token_label", "pkcs11_pin_env", "pkcs11_pin_file", "pkcs11_sessions"),
    "kmip": ("kmip_ca", "kmip_client_cert", "kmip_client_key", "kmip_connections"),
}
#: Keys that more than one provider uses.
_SHARED_KEYS: dict[str, tuple[str, ...]] = {
    "endpoint": ("aws-kms", "kmip"),
    "timeout_seconds": ("aws-kms", "kmip", "pkcs11"),
}
#: Master key names of the pkcs11 and kmip keyrings: they go into key references
#: (``pkcs11:<label>:<version>``, ``kmip:<name>:<uid>``), so no colon.
_TOKEN_KEY_NAME = re.compile(r"^[A-Za-z0-9_./@+-]{1,64}$")


def _keyring_place(value: object) -> Path | ObjectLocation:
    if isinstance(value, str) and value.startswith("s3://"):
        return parse_location(value)
    if isinstance(value, str) and "://" in value:
        raise ValueError(f'must be a file path or "s3://bucket/key", got "{value}"')
    return as_path(value)


#: ``kms.keyring``: a file path, or ``s3://bucket/key`` for a keyring object on the backend.
KeyringPlace = Annotated[Path | ObjectLocation, PlainValidator(_keyring_place)]


def _providers(names: tuple[str, ...]) -> str:
    return " or ".join(f'provider = "{n}"' for n in names)


class KmsConfig(Section):
    """``[kms]``: where master keys live: AWS KMS (``aws-kms``), a local keyring file
    (``local``), a PKCS#11 token such as an HSM (``pkcs11``) or a KMIP key manager (``kmip``).

    Keys of the other providers are errors rather than being ignored, so a half-edited
    switch from one provider to another is caught. docs/KEYRINGS.md describes pkcs11 and kmip.
    """

    provider: Literal["aws-kms", "local", "pkcs11", "kmip"]
    #: Master key for new objects unless a bucket rule names another.
    default_key: StrictStr
    # aws-kms (endpoint: a URL); kmip (endpoint: host:port)
    region: StrictStr | None = None
    endpoint: StrictStr | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    ca_bundle: ConfigPath | None = None
    #: Longest wait for one answer of the key service (aws-kms, kmip, pkcs11); a slow one fails
    #: the request (503) rather than hanging it.
    timeout_seconds: float | None = Field(default=None, gt=0, le=300)
    #: Attempts per KMS call (botocore's standard retry mode: throttling and 5xx, with backoff).
    max_attempts: StrictInt | None = Field(default=None, ge=1, le=10)
    #: Asymmetric KMS keys (KeySpec RSA_3072/RSA_4096, KeyUsage ENCRYPT_DECRYPT), as named in
    #: ``default_key`` / bucket rules: data keys are wrapped here with the public key
    #: (GetPublicKey, once) and unwrapped by KMS Decrypt (RSAES_OAEP_SHA_256).
    rsa_keys: tuple[StrictStr, ...] = ()
    # local
    #: A keyring file, or ``s3://bucket/key``: a keyring object on the backend (``[backend]``'s
    #: credentials) that every host reads, so a rotation on one reaches all.
    keyring: KeyringPlace | None = None
    #: How often a keyring object is asked whether it changed (a 304 when it has not).
    keyring_poll_seconds: float | None = Field(default=None, gt=0, le=3600)
    passphrase_file: ConfigPath | None = None
    passphrase_env: StrictStr | None = None
    # pkcs11
    #: The token's PKCS#11 module (a shared library), e.g. ``/usr/lib/softhsm/libsofthsm2.so``.
    pkcs11_module: ConfigPath | None = None
    pkcs11_token_label: StrictStr | None = None
    #: The user PIN, from an environment variable or a file (mode 0600); one of the two.
    pkcs11_pin_env: StrictStr | None = None
    pkcs11_pin_file: ConfigPath | None = None
    #: Sessions (and threads) per worker process: at most this many token calls at once.
    pkcs11_sessions: StrictInt | None = Field(default=None, ge=1, le=64)
    # kmip
    #: CA certificate(s) the key manager's TLS certificate must chain to.
    kmip_ca: ConfigPath | None = None
    #: This gateway's client certificate and key (mutual TLS; the key manager's identity of us).
    kmip_client_cert: ConfigPath | None = None
    kmip_client_key: ConfigPath | None = None
    #: Connections (and threads) per worker process: at most this many KMIP calls at once.
    kmip_connections: StrictInt | None = Field(default=None, ge=1, le=64)
    cache: KeyCacheConfig = KeyCacheConfig()
    #: ``[kms.previous]``: a keyring of another provider that objects were written under before
    #: (a ``[kms]`` table of its own). Objects whose key reference is of its provider are
    #: unwrapped by it; new data keys, copies and ``sealgate rewrap`` use the main keyring, so
    #: rewrap moves objects from it to this one (and back, with the two tables swapped).
    previous: KmsConfig | None = None

    @property
    def cache_enabled(self) -> bool:
        """Whether data keys are shared and unwrapped keys kept (see KeyCacheConfig)."""
        if self.cache.enabled is not None:
            return self.cache.enabled
        return self.provider != "local"

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, endpoint: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("provider") == "kmip":
            if endpoint is not None and "://" in endpoint:
                raise ValueError(f'must be "host:port" (KMIP has no URL scheme), got "{endpoint}"')
            return check_address(endpoint)
        return check_url(endpoint)

    @model_validator(mode="before")
    @classmethod
    def _default_key_present(cls, data: Any) -> Any:
        # Checked before field validation so the message can say why it is required.
        if isinstance(data, dict) and "default_key" not in data:
            provider = data.get("provider")
            if provider in ("aws-kms", "local", "pkcs11", "kmip"):
                raise Invalid(("default_key",), f'required when provider = "{provider}"')
        return data

    @field_validator("default_key")
    @classmethod
    def _check_default_key(cls, key: str) -> str:
        if not key.strip():
            raise ValueError("must not be empty")
        return key

    @field_validator("passphrase_env", "pkcs11_pin_env")
    @classmethod
    def _check_env_name(cls, name: str | None) -> str | None:
        if name is not None and not _ENV_NAME.match(name):
            raise ValueError(f'"{name}" is not an environment variable name')
        return name

    def _check_other_providers_keys(self) -> None:
        for provider, keys in _PROVIDER_KEYS.items():
            if provider != self.provider:
                not_set_unless(self, keys, _providers((provider,)))
        for key, owners in _SHARED_KEYS.items():
            if self.provider not in owners:
                not_set_unless(self, (key,), _providers(owners))
        if self.rsa_keys and self.provider != "aws-kms":
            raise Invalid(("rsa_keys",), 'only used when provider = "aws-kms"; remove it')

    @model_validator(mode="after")
    def _check(self) -> KmsConfig:
        self._check_other_providers_keys()
        if self.previous is not None:
            if self.previous.provider == self.provider:
                raise Invalid(
                    ("previous", "provider"),
                    f'must differ from kms.provider ("{self.provider}"): key references tell the two apart by provider',
                )
            if self.previous.previous is not None:
                raise Invalid(("previous", "previous"), "one previous keyring only; remove it")
        if self.provider == "aws-kms":
            self._check_aws()
        elif self.provider == "local":
            if self.keyring is None:
                raise Invalid(("keyring",), 'required when provider = "local"')
            if self.keyring_poll_seconds is not None and not isinstance(self.keyring, ObjectLocation):
                raise Invalid(("keyring_poll_seconds",), 'only used when keyring = "s3://bucket/key"; remove it')
            if self.passphrase_file is None and self.passphrase_env is None:
                raise Invalid(
                    ("passphrase_file",),
                    'set passphrase_file or passphrase_env when provider = "local"',
                )
        elif self.provider == "pkcs11":
            self._check_pkcs11()
        else:
            self._check_kmip()
        return self

    def _check_aws(self) -> None:
        require_pair(
            ("access_key_id", self.access_key_id),
            ("secret_access_key", self.secret_access_key),
            " (or leave out both to use the AWS default chain)",
        )
        problem = aws_key_problem(self.default_key)
        if problem:
            raise Invalid(("default_key",), problem)
        for i, key in enumerate(self.rsa_keys):
            problem = aws_key_problem(key)
            if problem:
                raise Invalid(("rsa_keys", i), problem)

    def _check_pkcs11(self) -> None:
        for key in ("pkcs11_module", "pkcs11_token_label"):
            if getattr(self, key) is None:
                raise Invalid((key,), 'required when provider = "pkcs11"')
        if (self.pkcs11_pin_env is None) == (self.pkcs11_pin_file is None):
            raise Invalid(("pkcs11_pin_env",), 'set one of pkcs11_pin_env or pkcs11_pin_file when provider = "pkcs11"')
        if self.pkcs11_token_label is not None and not 0 < len(self.pkcs11_token_label.encode()) <= 32:
            raise Invalid(("pkcs11_token_label",), "must be 1 to 32 bytes (a PKCS#11 token label)")
        self._check_key_name()

    def _check_kmip(self) -> None:
        for key in ("endpoint", "kmip_ca", "kmip_client_cert", "kmip_client_key"):
            if getattr(self, key) is None:
                why = " (host:port of the key manager)" if key == "endpoint" else " (KMIP uses mutual TLS)"
                raise Invalid((key,), f'required when provider = "kmip"{why}')
        self._check_key_name()

    def _check_key_name(self) -> None:
        if not _TOKEN_KEY_NAME.match(self.default_key):
            raise Invalid(
                ("default_key",),
                f"must be 1-64 letters, digits and _./@+- (no colon: it goes into key references), "
                f'got "{self.default_key}"',
            )


def aws_key_problem(key: str) -> str | None:
    """Why `key` cannot name an AWS KMS key (id, ARN or ``alias/NAME``), or None if it can."""
    if key.startswith("alias/") and len(key) > len("alias/"):
        return None
    if key.startswith("arn:") and ":kms:" in key:
        return None
    if _AWS_KEY_ID.match(key):
        return None
    return f'must be a KMS key id, key ARN or "alias/NAME", got "{key}"'
