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

The file's sections are in `server`, `services` (backend, kms), `access` (clients, keys, policies)
and `model` (buckets, encryption, audit, `Config`); `values` holds what they share and `loading`
turns a file into a `Config`.
"""

from __future__ import annotations

from proxy.config.access import CERT_IDENTITY_KINDS, MIN_SECRET_LENGTH, ClientConfig, KeyPolicy, PolicyConfig
from proxy.config.loading import load_config
from proxy.config.model import AuditConfig, BucketRule, Config, EncryptionConfig
from proxy.config.server import ServerConfig, available_cores
from proxy.config.services import BackendConfig, KeyCacheConfig, KmsConfig, aws_key_problem
from proxy.config.values import ConfigError, ConfigPath, Loc, parse_address

__all__ = [
    "CERT_IDENTITY_KINDS",
    "MIN_SECRET_LENGTH",
    "AuditConfig",
    "BackendConfig",
    "BucketRule",
    "ClientConfig",
    "Config",
    "ConfigError",
    "ConfigPath",
    "EncryptionConfig",
    "KeyCacheConfig",
    "KeyPolicy",
    "KmsConfig",
    "Loc",
    "PolicyConfig",
    "ServerConfig",
    "available_cores",
    "aws_key_problem",
    "load_config",
    "parse_address",
]
