"""``[backend]`` and ``[kms]``: the S3 storage and the key service sealgate calls."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, SecretStr, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from proxy.config.values import ConfigPath, Invalid, Section, check_url, not_set_unless, require_pair

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

    _check_endpoint = field_validator("endpoint")(check_url)

    @property
    def uploads_per_client(self) -> int:
        """Streamed uploads one client may send at once (``streamed_uploads_per_client``)."""
        if self.streamed_uploads_per_client is not None:
            return self.streamed_uploads_per_client
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
        per_client = self.streamed_uploads_per_client
        if per_client is not None and per_client > self.pool_size:
            raise Invalid(
                ("streamed_uploads_per_client",), f"must be at most pool_size ({self.pool_size}), got {per_client}"
            )
        return self


class KeyCacheConfig(Section):
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


class KmsConfig(Section):
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

    _check_endpoint = field_validator("endpoint")(check_url)

    @model_validator(mode="before")
    @classmethod
    def _default_key_present(cls, data: Any) -> Any:
        # Checked before field validation so the message can say why it is required.
        if isinstance(data, dict) and "default_key" not in data:
            provider = data.get("provider")
            if provider in ("aws-kms", "local"):
                raise Invalid(("default_key",), f'required when provider = "{provider}"')
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
            not_set_unless(self, ("keyring", "passphrase_file", "passphrase_env"), 'provider = "local"')
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
        else:
            if self.rsa_keys:
                raise Invalid(("rsa_keys",), 'only used when provider = "aws-kms"; remove it')
            not_set_unless(
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
                raise Invalid(("keyring",), 'required when provider = "local"')
            if self.passphrase_file is None and self.passphrase_env is None:
                raise Invalid(
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
