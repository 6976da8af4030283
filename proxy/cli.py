"""The `sealgate` command: serve, quickstart, certs and keys."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from proxy import __version__
from proxy.tools.options import config_option, dry_run_option, json_option, verbosity, verbosity_options
from proxy.tools.token_keys import config_option as _config_opt

if TYPE_CHECKING:
    from proxy.kms.keystore import KeyInfo, LocalKeyStore, Where

T = TypeVar("T")


def _setup_logging(json_logs: bool = False) -> None:
    """serve's and quickstart's logging: INFO (the access log) on stderr, DEBUG with -v, only
    warnings and errors with -q."""
    from proxy.logs import setup_logging

    chosen = verbosity()
    setup_logging(chosen.verbose, json_logs, quiet=chosen.quiet)


def _fail(message: str) -> None:
    click.echo(f"sealgate: {message}", err=True)
    sys.exit(2)


#: The variable that asks `sealgate` for shell completions (click's, named for the program).
COMPLETE_VAR = "_SEALGATE_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


class _LazyGroup(click.Group):
    """A group whose `lazy` commands ("name": "module:attribute") are imported when first asked
    for: `sealgate serve` and its workers do not load the code of every tool."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


class _Commands(_LazyGroup):
    """The top-level help lists each command with its whole first sentence (wrapped), not cut at
    45 characters; completion requests are `COMPLETE_VAR` however sealgate was started (the
    `sealgate` script, or ``python -m proxy.cli``, which click would name otherwise)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("complete_var", COMPLETE_VAR)
        return super().main(*args, **kwargs)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(
    cls=_Commands,
    invoke_without_command=True,
    lazy={
        "encrypt": "proxy.tools.offline.commands:encrypt_cmd",
        "decrypt": "proxy.tools.offline.commands:decrypt_cmd",
        "audit": "proxy.tools.audit:audit_group",
        "convert": "proxy.tools.convert:convert_cmd",
        "copy": "proxy.tools.copy:copy_cmd",
        "rewrap": "proxy.tools.rewrap:rewrap_cmd",
        "gc": "proxy.tools.gc:gc_cmd",
        "policy": "proxy.tools.policy_check:policy_group",
        "health": "proxy.tools.health:health_cmd",
    },
)
@click.version_option(__version__, prog_name="sealgate")
@click.pass_context
@verbosity_options
def main(ctx: click.Context) -> None:
    """sealgate: a TLS-terminating, envelope-encrypting S3 proxy. Start with `sealgate quickstart`."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@main.command()
@config_option()
@click.option("--json-logs", is_flag=True, help="One JSON object per log line (for log shippers).")
@click.option(
    "--join",
    is_flag=True,
    help="Share the port with a sealgate already running there (zero-downtime restart: start the "
    "new one with --join, then SIGTERM the old one).",
)
@click.option("--worker", is_flag=True, hidden=True, help="Internal: a replacement worker of a running sealgate.")
@verbosity_options
def serve(config_path: Path, json_logs: bool, join: bool, worker: bool) -> None:
    """Run the proxy with the given config."""
    from proxy.config import ConfigError, load_config
    from proxy.server.run import serve as run_serve

    _setup_logging(json_logs)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _fail(str(exc))
        return
    _tune_gc()
    try:
        run_serve(config, config_path, join=join or worker, worker=worker)
    except Exception as exc:  # noqa: BLE001 - a start-up failure is reported in one line
        from proxy.kms.keystore import KeyringFileError

        if isinstance(exc, (KeyringFileError, OSError, RuntimeError)):
            _fail(str(exc))
        raise


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running server.

    Request handling frees almost everything by reference counting; the cyclic collector mostly
    re-scans the ~300k long-lived objects from imports (6% of a small request's CPU). Freezing
    them moves them out of its sight (and keeps forked workers' copies of those pages shared),
    and a larger first-generation threshold runs it less often."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


@main.group()
@verbosity_options
def certs() -> None:
    """TLS certificates."""


@certs.command("init")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("certs"), show_default=True)
@click.option("--hostname", "hostnames", multiple=True, help="Extra DNS name or IP for the server cert.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@verbosity_options
def certs_init(directory: Path, hostnames: tuple[str, ...], force: bool) -> None:
    """Make a local CA and a server certificate signed by it."""
    from proxy.certs import init_certs

    names = ("localhost", "127.0.0.1", "::1", *hostnames)
    try:
        paths = init_certs(directory, names, overwrite=force)
    except FileExistsError as exc:
        _fail(f"{exc}; use --force to replace")
        return
    except ValueError as exc:
        _fail(str(exc))
        return
    click.echo(f"CA certificate:     {paths.ca_cert}  (give this to clients)")
    click.echo(f"server certificate: {paths.server_cert}")
    click.echo(f"server key:         {paths.server_key}")


@main.group(cls=_LazyGroup, lazy={"publish": "proxy.tools.keyring_publish:publish_cmd"})
@verbosity_options
def keys() -> None:
    """Master keys in a local keyring (--keyring), or in the [kms] keyring of --config FILE."""


def _passphrase(env: str | None, file: Path | None) -> bytes:
    from proxy.kms.keystore import passphrase_from

    try:
        return passphrase_from(env, file)
    except Exception as exc:  # noqa: BLE001
        _fail(str(exc))
        raise


_keyring_opt = click.option(
    "--keyring", type=click.Path(path_type=Path), default=Path(".sealgate/keyring"), show_default=True
)
_pass_file_opt = click.option(
    "--passphrase-file", type=click.Path(path_type=Path), default=None, help="File holding the passphrase."
)
_pass_env_opt = click.option(
    "--passphrase-env",
    default="SEALGATE_KEYRING_PASSPHRASE",
    show_default=True,
    help="Environment variable holding the passphrase (used when no file is given).",
)


def _where(keyring: Where) -> Where:
    if isinstance(keyring, Path) and str(keyring).startswith("s3:"):
        _fail(
            f"{keyring}: a keyring object is reached with the backend of a config: give --config FILE "
            "whose kms.keyring names it"
        )
    return keyring


def _change(
    keyring: Where,
    passphrase_file: Path | None,
    passphrase_env: str,
    change: Callable[[LocalKeyStore], T],
    *,
    create: bool = False,
) -> T:
    """`change` the keyring and save it, losing no concurrent change (proxy/kms/keyring_edits.py);
    with `create`, the keyring is made if there is none. Exits with one line on failure."""
    from proxy.kms.keyring_edits import edit, open_or_create
    from proxy.kms.keystore import KeyringFileError, LocalKeyStore

    where = _where(keyring)
    passphrase = _passphrase(None if passphrase_file else passphrase_env, passphrase_file)
    try:
        if create and isinstance(where, Path):
            where.parent.mkdir(parents=True, exist_ok=True)  # for the lock beside the keyring
        opener = open_or_create if create else LocalKeyStore.open
        return edit(where, lambda: opener(where, passphrase), change)
    except (KeyringFileError, ValueError, KeyError) as exc:
        _fail(str(exc))
        raise


@keys.command("create")
@click.argument("key_id")
@click.option(
    "--type",
    "key_type",
    type=click.Choice(["aes-256", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384", "ed25519-signing"]),
    default="aes-256",
    show_default=True,
    help="Asymmetric keys let a gateway holding only the public key encrypt (see keys export-public); "
    "an ed25519-signing key signs what this keyring's gateway writes (readers trust it: [[keys]] trusted_signers).",
)
@_keyring_opt
@_pass_file_opt
@_pass_env_opt
@_config_opt
@verbosity_options
def keys_create(
    key_id: str,
    key_type: str,
    keyring: Path,
    passphrase_file: Path | None,
    passphrase_env: str,
    config_path: Path | None,
) -> None:
    """Create a master key KEY_ID (creates the keyring file or object if needed; with a pkcs11 /
    kmip --config on the token or in the key manager)."""
    from proxy.tools.token_keys import create, with_config

    where: Where = keyring
    local = with_config(config_path, lambda config: create(config, key_id, key_type))
    if local is not None:
        where, passphrase_file, passphrase_env = local

    def change(store: LocalKeyStore) -> KeyInfo:
        return store.create_key(key_id) if key_type == "aes-256" else store.create_asymmetric_key(key_id, key_type)

    info = _change(where, passphrase_file, passphrase_env, change, create=True)
    click.echo(f"created key {info.id} (version {info.current_version}) in {where}")


@keys.command("list")
@_keyring_opt
@_pass_file_opt
@_pass_env_opt
@_config_opt
@json_option
@verbosity_options
def keys_list(
    keyring: Path, passphrase_file: Path | None, passphrase_env: str, config_path: Path | None, as_json: bool
) -> None:
    """List master keys (ids and versions, never material)."""
    from proxy.kms.keystore import KeyringFileError, LocalKeyStore
    from proxy.tools.token_keys import listing, with_config

    where: Where = keyring
    local = with_config(config_path, listing(as_json))
    if local is not None:
        where, passphrase_file, passphrase_env = local

    passphrase = _passphrase(None if passphrase_file else passphrase_env, passphrase_file)
    try:
        store = LocalKeyStore.open(_where(where), passphrase)
    except KeyringFileError as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps({"provider": "local", "keys": [_key_row(info) for info in store.list_keys()]}))
        return
    click.echo(
        f"{'ID':<20} {'TYPE':<8} {'VERSIONS':>8} {'CURRENT':>7}  {'ORIGIN':<10} {'ROTATION':<9} CREATED / LAST ROTATED"
    )
    for info in store.list_keys():
        rotation = f"{info.rotation_period_days}d" if info.rotation_period_days else "manual"
        last = info.last_rotated.isoformat() if info.last_rotated else "-"
        click.echo(
            f"{info.id:<20} {info.type:<8} {info.versions:>8} {info.current_version:>7}  {info.origin:<10} "
            f"{rotation:<9} {info.created.isoformat()} / {last}"
        )


def _key_row(info: KeyInfo) -> dict[str, object]:
    """A local key as `keys list --json` shows it."""
    return {
        "id": info.id,
        "type": info.type,
        "versions": info.versions,
        "current_version": info.current_version,
        "origin": info.origin,
        "rotation_period_days": info.rotation_period_days,
        "created": info.created.isoformat(),
        "last_rotated": info.last_rotated.isoformat() if info.last_rotated else None,
    }


def _open_store(keyring: Where, passphrase_file: Path | None, passphrase_env: str) -> LocalKeyStore:
    from proxy.kms.keystore import KeyringFileError, LocalKeyStore

    passphrase = _passphrase(None if passphrase_file else passphrase_env, passphrase_file)
    try:
        return LocalKeyStore.open(_where(keyring), passphrase)
    except KeyringFileError as exc:
        _fail(str(exc))
        raise


@keys.command("rotate")
@click.argument("key_id", required=False)
@click.option("--due", is_flag=True, help="Rotate every generated key whose rotation period has passed.")
@_keyring_opt
@_pass_file_opt
@_pass_env_opt
@_config_opt
@dry_run_option("Only say which keys would rotate, to which version; change nothing.")
@verbosity_options
def keys_rotate(
    key_id: str | None,
    due: bool,
    keyring: Path,
    passphrase_file: Path | None,
    passphrase_env: str,
    config_path: Path | None,
    dry_run: bool,
) -> None:
    """Give KEY_ID a new current version (older versions keep decrypting), or every --due key.

    Run `keys rotate --due` daily (cron, a systemd timer) for scheduled rotation; running
    sealgate processes pick up new versions from the file within a second (from a keyring
    object, within kms.keyring_poll_seconds)."""
    from proxy.kms.keystore import KeyringFileError

    if due == bool(key_id):
        _fail("give either KEY_ID or --due")
    from proxy.tools.token_keys import rotation, with_config

    where: Where = keyring
    local = with_config(config_path, rotation(key_id, due, dry_run))
    if local is not None:
        where, passphrase_file, passphrase_env = local

    def rotate(store: LocalKeyStore) -> list[KeyInfo]:
        # Runs again on a fresh copy if another host changed a keyring object first.
        return [store.rotate_key(target) for target in (store.due_for_rotation() if due else [key_id or ""])]

    if dry_run:  # in memory: checks it all, then saves nothing
        try:
            infos = rotate(_open_store(where, passphrase_file, passphrase_env))
        except KeyringFileError as exc:
            _fail(str(exc))
            return
    else:  # no rotation is lost to a concurrent one (another cron run, POST /-/keys/<id>/rotate)
        infos = _change(where, passphrase_file, passphrase_env, rotate)
    for info in infos:
        verb = "would rotate" if dry_run else "rotated"
        click.echo(f"{verb} {info.id}: {'to' if dry_run else 'now'} version {info.current_version}")
    if due and not infos:
        click.echo("no key is due for rotation")


def _local(
    config_path: Path | None, keyring: Path, passphrase_file: Path | None, passphrase_env: str, command: str
) -> tuple[Where, Path | None, str]:
    """The keyring (file or object), passphrase file and variable a local-only command works on:
    --config's when it names a local keyring, else the command line's."""
    from proxy.config import Config
    from proxy.tools.token_keys import KeyAdminError, with_config

    def refuse(config: Config) -> str:
        raise KeyAdminError(f"keys {command} changes local keyrings; {config.kms.provider} keys are not changed here")

    local = with_config(config_path, refuse)
    return local if local is not None else (keyring, passphrase_file, passphrase_env)


@keys.command("import")
@click.argument("key_id")
@click.option(
    "--material-file",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="32 raw bytes, or 64 hex characters, of AES-256 key material.",
)
@click.option("--rotate", "as_rotation", is_flag=True, help="Add as a new version of an existing imported key.")
@_keyring_opt
@_pass_file_opt
@_pass_env_opt
@_config_opt
@verbosity_options
def keys_import(
    key_id: str,
    material_file: Path,
    as_rotation: bool,
    keyring: Path,
    passphrase_file: Path | None,
    passphrase_env: str,
    config_path: Path | None,
) -> None:
    """Import AES-256 key material as KEY_ID; imported keys rotate only by hand (--rotate)."""
    raw = material_file.read_bytes()
    text = raw.strip()
    is_hex = len(text) == 64 and all(c in b"0123456789abcdefABCDEF" for c in text)
    material = bytes.fromhex(text.decode()) if is_hex else raw
    where, passphrase_file, passphrase_env = _local(config_path, keyring, passphrase_file, passphrase_env, "import")

    def change(store: LocalKeyStore) -> KeyInfo:
        return store.rotate_key(key_id, material) if as_rotation else store.import_key(key_id, material)

    info = _change(where, passphrase_file, passphrase_env, change)
    click.echo(f"imported {info.id} (version {info.current_version})")


@keys.command("disable")
@click.argument("key_id")
@click.option("--enable", is_flag=True, help="Re-enable instead.")
@_keyring_opt
@_pass_file_opt
@_pass_env_opt
@_config_opt
@verbosity_options
def keys_disable(
    key_id: str,
    enable: bool,
    keyring: Path,
    passphrase_file: Path | None,
    passphrase_env: str,
    config_path: Path | None,
) -> None:
    """Disable KEY_ID: it no longer wraps or unwraps anything (until --enable)."""
    where, passphrase_file, passphrase_env = _local(config_path, keyring, passphrase_file, passphrase_env, "disable")
    _change(where, passphrase_file, passphrase_env, lambda store: store.set_enabled(key_id, enable))
    click.echo(f"{key_id} {'enabled' if enable else 'disabled'}")


@keys.command("export-public")
@click.argument("key_id")
@_keyring_opt
@_pass_file_opt
@_pass_env_opt
@_config_opt
@verbosity_options
def keys_export_public(
    key_id: str, keyring: Path, passphrase_file: Path | None, passphrase_env: str, config_path: Path | None
) -> None:
    """Print the public key of an asymmetric KEY_ID (PEM), for an encrypt-only gateway; of a
    signing key, the ``ed25519:<base64>`` line for readers' ``trusted_signers``."""
    from proxy.kms.keystore import KeyringFileError

    where, passphrase_file, passphrase_env = _local(
        config_path, keyring, passphrase_file, passphrase_env, "export-public"
    )
    store = _open_store(where, passphrase_file, passphrase_env)
    try:
        click.echo(store.public_key_pem(key_id).decode(), nl=False)
    except KeyringFileError as exc:
        _fail(str(exc))


@keys.command("import-pem")
@click.argument("key_id")
@click.argument("pem_file", type=click.Path(path_type=Path, exists=True))
@_keyring_opt
@_pass_file_opt
@_pass_env_opt
@_config_opt
@verbosity_options
def keys_import_pem(
    key_id: str,
    pem_file: Path,
    keyring: Path,
    passphrase_file: Path | None,
    passphrase_env: str,
    config_path: Path | None,
) -> None:
    """Import an RSA/EC key pair or a PUBLIC key (PEM). With only the public key, this keyring
    encrypts uploads it can never read back: the MITM-safe upload gateway."""
    where, passphrase_file, passphrase_env = _local(config_path, keyring, passphrase_file, passphrase_env, "import-pem")
    pem = pem_file.read_bytes()
    info = _change(
        where, passphrase_file, passphrase_env, lambda store: store.import_asymmetric_key(key_id, pem), create=True
    )
    click.echo(f"imported {info.type} key {info.id}")


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path(".sealgate"), show_default=True)
@click.option("--port", default=8443, show_default=True, help="HTTPS port for sealgate.")
@click.option("--backend-port", default=9000, show_default=True, help="Port of the in-memory demo store.")
@verbosity_options
def quickstart(directory: Path, port: int, backend_port: int) -> None:
    """Set up ./.sealgate/ and run sealgate in front of an in-memory demo S3 store."""
    from proxy.config import load_config
    from proxy.server.run import serve as run_serve
    from proxy.server.sites import port_in_use
    from proxy.tools.quickstart import banner, set_up

    _setup_logging()
    # Checked before anything is written, so a busy port changes nothing in `directory`.
    for flag, number, what in (
        ("--port", port, "sealgate's HTTPS port"),
        ("--backend-port", backend_port, "the demo store's port"),
    ):
        if port_in_use("127.0.0.1", number):
            _fail(f"port {number} ({what}) is already in use; pick another with {flag} N")
            return
    demo = set_up(directory, port, backend_port)
    config = load_config(demo.config)

    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        _fail("quickstart needs the demo store: pip install 'sealgate[demo]' (moto[server])")
        return
    store_server = ThreadedMotoServer(ip_address="127.0.0.1", port=backend_port, verbose=False)
    try:
        store_server.start()
    except OSError as exc:  # taken since the check above
        _fail(f"cannot start the demo store on port {backend_port}: {exc.strerror}; pick another with --backend-port N")
        return
    click.echo(banner(demo), err=False)
    try:
        run_serve(config)
    finally:
        store_server.stop()


@main.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@verbosity_options
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    Load it from the shell's start-up file: `eval "$(sealgate completion bash)"` in ~/.bashrc,
    `eval "$(sealgate completion zsh)"` in ~/.zshrc, or `sealgate completion fish >
    ~/.config/fish/completions/sealgate.fish`."""
    from click.shell_completion import get_completion_class

    script = get_completion_class(shell)
    assert script is not None  # one of SHELLS, all click's own
    click.echo(script(main, {}, "sealgate", COMPLETE_VAR).source())


if __name__ == "__main__":
    main()
