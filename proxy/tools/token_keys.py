"""`sealgate keys create / list / rotate --config FILE`: the master keys of the config's
``[kms]`` keyring when it is a PKCS#11 token (``pkcs11``) or a KMIP key manager (``kmip``).

Keys are made where they stay: on the token (an AES-256 secret key object, sensitive and not
extractable) or in the key manager (an Active AES-256 symmetric key with the Encrypt and
Decrypt usage bits). Rotation adds a version: a new object under the same label / name (see
proxy/kms/pkcs11.py and proxy/kms/kmip.py); older versions keep unwrapping.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from proxy.config import Config, ConfigError, load_config
from proxy.kms.base import KeyringError
from proxy.tools.options import config_option as _config_option
from proxy.tools.options import config_was_chosen

if TYPE_CHECKING:
    from proxy.kms.keystore import Where
    from proxy.kms.kmip import KmipKeyring
    from proxy.kms.pkcs11 import Pkcs11Keyring


#: ``-c/--config FILE`` of the ``keys`` commands (or $SEALGATE_CONFIG, or quickstart's).
config_option = _config_option(
    required=False,
    help="sealgate config: the keys of its [kms] keyring (pkcs11, kmip or local) instead of --keyring.",
)


def _keyring_named() -> bool:
    """Whether the command line named a keyring or passphrase itself (then a config found only
    where quickstart leaves one is not used)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    given = click.core.ParameterSource.COMMANDLINE
    return any(ctx.get_parameter_source(p) == given for p in ("keyring", "passphrase_file", "passphrase_env"))


class KeyAdminError(Exception):
    """A key administration step that failed; the message is one line for the operator."""


def load(config_path: Path) -> Config:
    """The config at `config_path`, or KeyAdminError naming what is wrong with it."""
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise KeyAdminError(str(exc)) from None


def local_keyring(config: Config) -> tuple[Where, Path | None, str | None] | None:
    """(keyring file or object, passphrase file, passphrase variable) of a ``local`` config, else None."""
    from proxy.wiring import keyring_where

    kms = config.kms
    if kms.provider != "local":
        return None
    return keyring_where(kms, config.backend), kms.passphrase_file, kms.passphrase_env


def with_config(
    config_path: Path | None, run: Callable[[Config], str | list[str]]
) -> tuple[Where, Path | None, str] | None:
    """For a ``keys`` command given --config: `run` on a pkcs11 / kmip config, printing what it
    says, and exit; for a local config, its (keyring file or object, passphrase file, passphrase
    variable) for the command's own code. Without --config: None."""
    if config_path is None or (not config_was_chosen() and _keyring_named()):
        return None
    try:
        config = load(config_path)
        local = local_keyring(config)
        if local is not None:
            return local[0], local[1], local[2] or ""
        said = run(config)
    except KeyAdminError as exc:
        click.echo(f"sealgate: {exc}", err=True)
        sys.exit(2)
    click.echo(said if isinstance(said, str) else "\n".join(said))
    sys.exit(0)


def rotation(key_id: str | None, due: bool, dry_run: bool = False) -> Callable[[Config], str]:
    """`keys rotate` of a pkcs11 / kmip config: a new version of `key_id` (no --due here)."""

    def rotate(config: Config) -> str:
        if due:
            raise KeyAdminError(f"{config.kms.provider} keys have no rotation schedule here: rotate KEY_ID")
        if dry_run:
            raise KeyAdminError(
                f"--dry-run previews local keyrings only: a {config.kms.provider} rotation adds one key object "
                f"under {key_id}, and `sealgate keys list` shows its versions"
            )
        return create(config, key_id or "", "aes-256", rotate=True)

    return rotate


def _admin(config: Config) -> Pkcs11Keyring | KmipKeyring:
    from proxy.kms.kmip import KmipKeyring
    from proxy.kms.pkcs11 import Pkcs11Keyring
    from proxy.wiring import make_keyring

    if config.kms.provider not in ("pkcs11", "kmip"):
        raise KeyAdminError(
            f'provider = "{config.kms.provider}" keys are not managed here: aws-kms keys in KMS, local keys '
            "with --keyring"
        )
    try:
        keyring = make_keyring(config)
    except RuntimeError as exc:  # the PIN cannot be read
        raise KeyAdminError(str(exc)) from None
    assert isinstance(keyring, Pkcs11Keyring | KmipKeyring)
    return keyring


def _close(keyring: Pkcs11Keyring | KmipKeyring) -> None:
    asyncio.run(keyring.close())


def create(config: Config, key_id: str, key_type: str, *, rotate: bool = False) -> str:
    """Make master key `key_id` (or with `rotate` its next version); what was done, one line."""
    from proxy.kms.pkcs11 import Pkcs11Keyring

    if key_type != "aes-256":
        raise KeyAdminError(f"{config.kms.provider} keyrings hold aes-256 master keys only (not {key_type})")
    keyring = _admin(config)
    try:
        if isinstance(keyring, Pkcs11Keyring):
            info = keyring.create_key(key_id, rotate=rotate)
            where = f"on PKCS#11 token {config.kms.pkcs11_token_label}"
            return f"{'rotated' if rotate else 'created'} key {info.label} {where}: now version {info.current}"
        made = keyring.create_key(key_id, rotate=rotate)
        verb = "rotated" if rotate else "created"
        return f"{verb} key {key_id} in the KMIP key manager: now unique identifier {made.uid}"
    except KeyringError as exc:
        raise KeyAdminError(exc.message) from None
    finally:
        _close(keyring)


def listing(as_json: bool = False) -> Callable[[Config], str | list[str]]:
    """`keys list` of a pkcs11 / kmip config: a table of its master keys, or with `as_json` one
    JSON object (``{"provider": ..., "keys": [...]}``, a row per key or KMIP key version)."""

    def run(config: Config) -> str | list[str]:
        rows = key_rows(config)
        if as_json:
            return json.dumps({"provider": config.kms.provider, "keys": rows})
        if config.kms.provider == "pkcs11":
            out = [f"{'LABEL':<24} {'VERSIONS':<16} {'CURRENT':>7}  ENCRYPT DECRYPT"]
            for row in rows:
                versions = ",".join(str(v) for v in cast("list[int]", row["versions"]))
                out.append(
                    f"{row['id']!s:<24} {versions:<16} {row['current_version']!s:>7}  {row['encrypts']!s:<7} "
                    f"{row['decrypts']}"
                )
            return out
        out = [f"{'NAME':<24} {'UNIQUE ID':<40} STATE     ENCRYPT DECRYPT"]
        for row in rows:
            if "error" in row:
                out.append(f"{row['id']!s:<24} ({row['error']})")
                continue
            state = "Active" if row["active"] else "inactive"
            flags = f"{row['encrypts']!s:<7} {row['decrypts']}"
            out.append(f"{row['id']!s:<24} {row['unique_id']!s:<40} {state:<9} {flags}")
        return out

    return run


def key_rows(config: Config) -> list[dict[str, object]]:
    """The master keys: every AES-256 key on a token; for KMIP, the keys the config names (KMIP
    has no listing by name), a row for each version, newest first (or for the error of one)."""
    from proxy.kms.pkcs11 import Pkcs11Keyring

    keyring = _admin(config)
    try:
        if isinstance(keyring, Pkcs11Keyring):
            return [
                {
                    "id": key.label,
                    "versions": list(key.versions),
                    "current_version": key.current,
                    "encrypts": key.encrypts,
                    "decrypts": key.decrypts,
                }
                for key in keyring.list_keys()
            ]
        rows: list[dict[str, object]] = []
        for name in _named_keys(config):
            try:
                found = keyring.versions(name)
            except KeyringError as exc:
                rows.append({"id": name, "error": exc.message})
                continue
            for v in found:
                row = {"id": name, "unique_id": v.uid, "active": v.active, "encrypts": v.encrypts}
                rows.append({**row, "decrypts": v.decrypts})
        return rows
    except KeyringError as exc:
        raise KeyAdminError(exc.message) from None
    finally:
        _close(keyring)


def _named_keys(config: Config) -> list[str]:
    names = [config.kms.default_key]
    names += [rule.key for rule in config.buckets if rule.key is not None]
    names += [policy.id for policy in config.keys]
    return list(dict.fromkeys(names))
