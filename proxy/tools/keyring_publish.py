"""`sealgate keys publish s3://bucket/key --config FILE`: move a keyring file to a keyring object
on the config's backend, for several hosts to share (proxy/kms/keyring_object.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from proxy.tools.options import config_option, verbosity_options


def _fail(message: str) -> None:
    click.echo(f"sealgate: {message}", err=True)
    sys.exit(2)


@click.command("publish")
@click.argument("destination")
@click.option(
    "--keyring",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The keyring file to publish. Default: the config's kms.keyring.",
)
@config_option(
    help="sealgate config: its [backend] is where the keyring object goes, and its [kms] passphrase opens it."
)
@verbosity_options
def publish_cmd(destination: str, keyring: Path | None, config_path: Path) -> None:
    """Copy the keyring file to the object DESTINATION (s3://bucket/key) on the config's backend,
    unchanged (still sealed under its passphrase), only if no object is there. Then set
    kms.keyring = DESTINATION in every host's config and restart them: each re-reads the object
    when it changes, so a rotation on one host reaches all."""
    from proxy.kms.keyring_object import KeyringConflict, KeyringObject, parse_location
    from proxy.kms.keystore import KeyringFileError, LocalKeyStore, passphrase_from
    from proxy.tools.token_keys import KeyAdminError, load
    from proxy.wiring import backend_access

    try:
        config = load(config_path)
        location = parse_location(destination)
    except (KeyAdminError, ValueError) as exc:
        _fail(str(exc))
        return
    kms = config.kms
    source = keyring or (kms.keyring if isinstance(kms.keyring, Path) else None)
    if kms.provider != "local" or source is None:
        _fail("give --keyring FILE: the config names no local keyring file to publish")
        return
    target = KeyringObject(location, backend_access(config.backend))
    try:
        passphrase = passphrase_from(kms.passphrase_env, kms.passphrase_file)
        # Opened first: what is published opens with the passphrase the hosts will use.
        keys = LocalKeyStore.open(source, passphrase).list_keys()
        target.put(source.read_bytes(), None)  # probes the backend's conditional writes first
        published = LocalKeyStore.open(target, passphrase).list_keys()
    except KeyringConflict:
        _fail(f"{location} already exists: change its keys with `sealgate keys ... --config` on a host using it")
        return
    except (KeyringFileError, OSError) as exc:
        _fail(str(exc))
        return
    assert published == keys
    click.echo(f"published {source} ({len(keys)} keys) to {location}")
    click.echo(
        f'now set kms.keyring = "{location}" in every host\'s config and restart them; the file is not read then'
    )
