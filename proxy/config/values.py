"""What the config's sections share: the error type, value checks (addresses, URLs, paths) and the base model."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict


class ConfigError(Exception):
    """A config file that cannot be used; ``str()`` is one line: ``file: key.path: problem``."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + problem)


Loc = tuple[str | int, ...]
"""A key path: table names, keys and array indexes (``clients``, 0, ``name``)."""


class Invalid(ValueError):
    """A validator's complaint about a key below the model that raised it."""

    def __init__(self, key: Loc, problem: str) -> None:
        super().__init__(problem)
        self.key = key


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
"""A DNS host name (labels of letters, digits and hyphens)."""


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
    elif not HOSTNAME.match(host):
        raise ValueError(f'"{host}" is not a valid host name or IP address')
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f'port must be a number from 1 to 65535, got "{port_text}"')
    return host, int(port_text)


def check_address(value: str | None) -> str | None:
    """`value` unchanged if it is a valid ``host:port``; ValueError otherwise."""
    if value is not None:
        parse_address(value)
    return value


def check_url(value: str | None) -> str | None:
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


def as_path(value: object) -> Path:
    """A path string from the file, made absolute against the working directory."""
    if isinstance(value, Path):
        return value.expanduser().absolute()
    if not isinstance(value, str):
        raise ValueError("must be a path string")
    if not value.strip():
        raise ValueError("must not be empty")
    return Path(value).expanduser().absolute()


ConfigPath = Annotated[Path, BeforeValidator(as_path)]
"""A file path as written in the config, resolved against the current working directory."""


def require_pair(first: tuple[str, object], second: tuple[str, object], why: str = "") -> None:
    """Both keys set or neither; Invalid names the missing one."""
    (name_a, a), (name_b, b) = first, second
    if (a is None) != (b is None):
        missing = name_b if a is not None else name_a
        other = name_a if a is not None else name_b
        raise Invalid((missing,), f"required when {other} is set{why}")


def not_set_unless(model: BaseModel, keys: tuple[str, ...], condition: str) -> None:
    """Invalid unless every key in `keys` is unset on `model`; `condition` says when they are used."""
    for key in keys:
        if getattr(model, key) is not None:
            raise Invalid((key,), f"only used when {condition}; remove it")


class Section(BaseModel):
    """A config table: frozen, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")
