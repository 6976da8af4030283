"""The TOML config, validated once at start-up into frozen typed objects.

Strings may reference the environment as ``${VAR}`` (``$${`` is a literal ``${``), so that
secrets stay out of the file. Relative paths are taken relative to the current directory, as
the README's commands (run from the project root) assume.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

_ENV_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_AKID_RE = re.compile(r"^[A-Z0-9]{16,128}$")


class ConfigError(Exception):
    """A config that cannot be used; str() is one line naming the file, the key and the fault."""


def parse_address(text: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r} has no numeric port") from None
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerConfig(_Model):
    """[server]: where sealgate listens."""

    listen: str = "0.0.0.0:8443"
    #: Set false to serve only `plain_http_listen` (a sidecar on loopback).
    tls: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    plain_http_listen: str | None = None
    client_max_skew_seconds: int = Field(900, ge=1, le=3600)
    workers: int = Field(1, ge=1, le=256)
    #: Host names under which `<bucket>.<name>` is a virtual-hosted-style request.
    virtual_host_domains: tuple[str, ...] = ("localhost",)

    @field_validator("listen", "plain_http_listen")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None:
            parse_address(v)
        return v

    @model_validator(mode="after")
    def _tls_files(self) -> ServerConfig:
        if self.tls and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("tls_cert and tls_key are required (or set tls = false and plain_http_listen)")
        if not self.tls and not self.plain_http_listen:
            raise ValueError("with tls = false, plain_http_listen is required")
        return self

    @property
    def listen_address(self) -> tuple[str, int]:
        """(host, port) of the TLS listener."""
        return parse_address(self.listen)

    @property
    def plain_http_address(self) -> tuple[str, int]:
        """(host, port) of the plain-HTTP listener."""
        assert self.plain_http_listen is not None
        return parse_address(self.plain_http_listen)


class BackendConfig(_Model):
    """[backend]: the S3-compatible storage."""

    endpoint: str
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    ca_bundle: Path | None = None
    verify_tls: bool = True
    addressing_style: Literal["path", "virtual"] = "path"

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _pair(self) -> BackendConfig:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither (AWS default chain)")
        return self


class KmsConfig(_Model):
    """[kms]: where data keys come from."""

    provider: Literal["aws-kms", "local"]
    default_key: str | None = None
    region: str | None = None
    endpoint: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    ca_bundle: Path | None = None
    keyring: Path | None = None
    passphrase_file: Path | None = None
    passphrase_env: str | None = None

    @model_validator(mode="after")
    def _provider(self) -> KmsConfig:
        if self.provider == "local":
            if self.keyring is None:
                raise ValueError('keyring is required when provider = "local"')
            if self.passphrase_file is None and self.passphrase_env is None:
                raise ValueError('passphrase_file or passphrase_env is required when provider = "local"')
        elif self.default_key is None:
            raise ValueError('default_key is required when provider = "aws-kms"')
        return self


class ClientConfig(_Model):
    """[[clients]]: credentials sealgate issues to one S3 client."""

    name: str = Field(min_length=1, max_length=128)
    access_key_id: str
    secret_access_key: SecretStr

    @field_validator("access_key_id")
    @classmethod
    def _akid(cls, v: str) -> str:
        if not _AKID_RE.match(v):
            raise ValueError("must be 16 to 128 characters of A-Z and 0-9")
        return v

    @field_validator("secret_access_key")
    @classmethod
    def _secret(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return v


class EncryptionConfig(_Model):
    """[encryption]: how objects are sealed."""

    #: "auto": plaintext-MD5 ETags when the client sends Content-MD5 or a signed SHA-256
    #: payload hash, opaque ETags otherwise; "md5": always compute the plaintext MD5.
    etag: Literal["auto", "md5"] = "auto"


class BucketRule(_Model):
    """[[buckets]]: per-bucket settings; `name` is an fnmatch glob; first match wins."""

    name: str
    key: str | None = None
    allow_unencrypted_reads: bool = False


class Config(_Model):
    """The whole config."""

    server: ServerConfig
    backend: BackendConfig
    kms: KmsConfig
    clients: tuple[ClientConfig, ...] = Field(min_length=1)
    encryption: EncryptionConfig = EncryptionConfig()
    buckets: tuple[BucketRule, ...] = ()

    @model_validator(mode="after")
    def _unique_clients(self) -> Config:
        seen: set[str] = set()
        for c in self.clients:
            if c.access_key_id in seen:
                raise ValueError(f"clients: access key id {c.access_key_id} appears twice")
            seen.add(c.access_key_id)
        return self

    @cached_property
    def _clients_by_akid(self) -> dict[str, ClientConfig]:
        return {c.access_key_id: c for c in self.clients}

    def client_by_access_key(self, access_key_id: str) -> ClientConfig | None:
        """The client that owns this access key id, if any."""
        return self._clients_by_akid.get(access_key_id)

    def rule_for_bucket(self, bucket: str) -> BucketRule | None:
        """The first [[buckets]] rule whose glob matches."""
        for rule in self.buckets:
            if fnmatch.fnmatchcase(bucket, rule.name):
                return rule
        return None

    def key_for_bucket(self, bucket: str) -> str:
        """The master key new objects in this bucket are sealed under."""
        rule = self.rule_for_bucket(bucket)
        if rule is not None and rule.key:
            return rule.key
        # A local keyring without default_key uses its key named "default".
        return self.kms.default_key or "default"


def _substitute(value: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name = m.group(1)
            if name not in env:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return env[name]

        return _ENV_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, env, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("function-after",) and not str(part).startswith("function-"):
            out += f".{part}" if out else str(part)
    return out


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate; ConfigError with one clear line when anything is wrong."""
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        doc = _substitute(raw, env, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _loc(tuple(err["loc"])) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif err["type"] == "missing":
            msg = "required"
        raise ConfigError(f"{path}: {where}: {msg}") from None
