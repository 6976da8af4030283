"""Reading the file: TOML, ``${VAR}`` substitution, one-line error descriptions, and checks of the files it names."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from proxy.config.access import ClientConfig, KeyPolicy, PolicyConfig
from proxy.config.model import BucketRule, Config, EncryptionConfig
from proxy.config.server import ServerConfig
from proxy.config.services import BackendConfig, KmsConfig
from proxy.config.values import ConfigError, Invalid, Loc

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
    if isinstance(cause, Invalid):
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
        ("kms.keyring", config.kms.keyring if isinstance(config.kms.keyring, Path) else None),
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
        # An unknown key first: a typo'd name ("[kmss]") is the cause of the "required" beside it.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        key, problem = _describe(errors[0])
        others = [_describe(e) for e in errors[1:3]]
        if others:
            problem += "; also " + "; ".join(f"{k}: {p}" if k else p for k, p in others)
        if len(errors) > 3:
            more = len(errors) - 3
            problem += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(source, key or None, problem) from None
    missing = _check_environment(config, environ)
    if missing is not None:
        raise ConfigError(source, *missing)
    return config
