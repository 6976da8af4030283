"""Where `sealgate encrypt` / `decrypt` get master keys: a config's [kms] section, a local
keyring file, or AWS KMS; the click options that choose one; and the keyring's async calls run
from these synchronous commands."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from proxy.kms.base import Keyring
from proxy.tools.offline.files import OfflineError

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from proxy.config import Config


@dataclass(frozen=True)
class KeySource:
    """Where the master keys come from: a config's [kms] section, a local keyring file, or
    AWS KMS with boto3's default credentials (no config needed, for recovery anywhere)."""

    config: Path | None = None
    keyring: Path | None = None
    passphrase_file: Path | None = None
    passphrase_env: str = "SEALGATE_KEYRING_PASSPHRASE"
    aws_kms: bool = False
    region: str | None = None
    kms_endpoint: str | None = None

    def check(self) -> None:
        """click.UsageError unless exactly one source is given, with only its own options."""
        chosen = [
            n for n, on in (("--config", self.config), ("--keyring", self.keyring), ("--aws-kms", self.aws_kms)) if on
        ]
        if len(chosen) != 1:
            raise click.UsageError(
                "give one of --config FILE (the keyring of its [kms] section), --keyring FILE (a local "
                "keyring) or --aws-kms (AWS KMS with the default credentials)"
                + (f"; got {' and '.join(chosen)}" if chosen else "")
            )
        if self.keyring is not None and str(self.keyring).startswith("s3:"):
            raise click.UsageError(
                f"--keyring {self.keyring}: a keyring object is reached with the backend of a config: give "
                "--config FILE whose kms.keyring names it"
            )
        if self.passphrase_file is not None and self.keyring is None:
            raise click.UsageError("--passphrase-file goes with --keyring")
        if (self.region or self.kms_endpoint) and not self.aws_kms:
            raise click.UsageError("--region and --kms-endpoint go with --aws-kms")

    def open(self, key_ref: str | None = None) -> tuple[Keyring, Config | None]:
        """The keyring, and the config when one was given. `key_ref` (a key ARN) supplies the
        region for --aws-kms when neither --region nor the environment does."""
        if self.config is not None:
            from proxy.config import load_config
            from proxy.wiring import make_keyring

            cfg = load_config(self.config)
            return make_keyring(cfg), cfg
        if self.aws_kms:
            from proxy.kms.aws import AwsKmsKeyring

            region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region is None and key_ref and key_ref.startswith("arn:"):
                region = key_ref.split(":")[3] or None
            try:
                return AwsKmsKeyring(region=region, endpoint_url=self.kms_endpoint), None
            except ValueError as exc:
                raise OfflineError(f"{exc} (--region)") from None
        from proxy.kms.keystore import LocalKeyStore, passphrase_from
        from proxy.kms.local import LocalKeyring

        assert self.keyring is not None
        env = None if self.passphrase_file else self.passphrase_env
        passphrase = passphrase_from(env, self.passphrase_file)
        return LocalKeyring(LocalKeyStore.open(self.keyring, passphrase)), None


_KEY_SOURCE_OPTIONS = (
    click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="sealgate config file: its [kms] section gives the keyring (local or aws-kms).",
    ),
    click.option(
        "--keyring",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="A local keyring file (instead of --config).",
    ),
    click.option(
        "--passphrase-file",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="File holding the --keyring passphrase (mode 0600).",
    ),
    click.option(
        "--passphrase-env",
        default="SEALGATE_KEYRING_PASSPHRASE",
        show_default=True,
        help="Environment variable holding the --keyring passphrase (when no file is given).",
    ),
    click.option(
        "--aws-kms",
        is_flag=True,
        help="AWS KMS with boto3's default credentials (instead of --config).",
    ),
    click.option("--region", default=None, help="--aws-kms region. [default: AWS_REGION, else the key ARN's]"),
    click.option("--kms-endpoint", default=None, help="--aws-kms endpoint URL (a KMS-compatible service)."),
)


def key_source_options(f: Callable[..., None]) -> Callable[..., None]:
    """Add the key-source options to a command; it receives them as `keys: KeySource`."""

    @functools.wraps(f)
    def wrapper(
        *,
        config_path: Path | None,
        keyring: Path | None,
        passphrase_file: Path | None,
        passphrase_env: str,
        aws_kms: bool,
        region: str | None,
        kms_endpoint: str | None,
        **kwargs: Any,
    ) -> None:
        keys = KeySource(config_path, keyring, passphrase_file, passphrase_env, aws_kms, region, kms_endpoint)
        keys.check()
        f(keys=keys, **kwargs)

    out: Callable[..., None] = wrapper
    for option in reversed(_KEY_SOURCE_OPTIONS):
        out = option(out)
    return out


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """The result of a keyring call, from synchronous code."""
    return asyncio.run(coro)


def close_keyring(keyring: Keyring) -> None:
    """Close the keyring; a failure to close is not worth reporting over the real outcome."""
    with contextlib.suppress(Exception):
        run_sync(keyring.close())
