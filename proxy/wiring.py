"""The gateway's parts, built from the config: keyring, data-key cache, backend client, audit log.

`serve` (proxy/server/run.py) and the operator tools (rewrap, gc, copy, convert, offline) build
them here, one way. The server adds listeners and workers; a tool adds its run's audit identity
(`audited_gateway`).
"""

from __future__ import annotations

import getpass
import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from proxy.audit import AuditContext, AuditLog, audit_context
from proxy.config import BackendConfig, Config, KmsConfig
from proxy.kms.audited import AuditingKeyring, cache_hit_recorder
from proxy.kms.base import Keyring
from proxy.kms.keyring_handover import read_copy
from proxy.kms.keyring_object import BackendAccess, KeyringObject
from proxy.kms.keystore import KeyringFileError, LocalKeyStore, Where, passphrase_from
from proxy.kms.local import LocalKeyring
from proxy.kms.materials import Materials, ReuseLimits
from proxy.kms.routing import RoutingKeyring
from proxy.store.backend import Backend, BackendSettings
from proxy.store.gateway import Gateway
from proxy.tls_files import backend_ssl_context

log = logging.getLogger("proxy.kms.local")


def make_keyring(config: Config) -> Keyring:
    """The keyring the config names (with ``[kms.previous]``, both behind a `RoutingKeyring`);
    opening a local keyring checks its passphrase now, a pkcs11 keyring reads its PIN now (the
    token is first used by the first call)."""
    main = _keyring_for(config.kms, config.backend)
    previous = config.kms.previous
    if previous is None:
        return main
    return RoutingKeyring(main, _keyring_for(previous, config.backend), previous.provider, previous.default_key)


def keyring_where(kms: KmsConfig, backend: BackendConfig) -> Where:
    """The local keyring `kms` names: its file, or its object on the backend (reached with the
    backend's own endpoint and credentials)."""
    assert kms.keyring is not None
    if isinstance(kms.keyring, Path):
        return kms.keyring
    return KeyringObject(kms.keyring, backend_access(backend))


def backend_access(backend: BackendConfig) -> BackendAccess:
    """How a keyring object's client reaches the backend: as sealgate's own client does."""
    verify: bool | str = (str(backend.ca_bundle) if backend.ca_bundle else True) if backend.verify_tls else False
    return BackendAccess(
        endpoint=backend.endpoint,
        region=backend.region,
        access_key_id=backend.access_key_id.get_secret_value() if backend.access_key_id else None,
        secret_access_key=backend.secret_access_key.get_secret_value() if backend.secret_access_key else None,
        verify=verify if backend.endpoint.startswith("https") else False,
        addressing_style=backend.addressing_style,
        connect_timeout=backend.connect_timeout_seconds,
        read_timeout=min(backend.read_timeout_seconds, 30.0),
        max_attempts=backend.max_attempts,
    )


def _local_keyring(kms: KmsConfig, backend: BackendConfig) -> LocalKeyring:
    """The local keyring; of a keyring object that cannot be read now, the copy the first
    process handed over when this process replaces a dead worker (proxy/kms/keyring_handover.py)."""
    passphrase = passphrase_from(kms.passphrase_env, kms.passphrase_file)
    where = keyring_where(kms, backend)
    poll = kms.keyring_poll_seconds or 5.0
    copy = read_copy(str(where.location)) if isinstance(where, KeyringObject) else None
    try:
        return LocalKeyring(LocalKeyStore.open(where, passphrase), poll_seconds=poll)
    except KeyringFileError as exc:
        if copy is None:
            raise
        store = LocalKeyStore.open(where, passphrase, copy=(copy.sealed, copy.etag))
        log.warning("%s: serving the copy of the keyring the first process handed over", exc)
        return LocalKeyring(store, poll_seconds=poll, failing=str(exc), failing_since=copy.failing_since)


def _keyring_for(kms: KmsConfig, backend: BackendConfig) -> Keyring:
    if kms.provider == "local":
        return _local_keyring(kms, backend)
    if kms.provider == "pkcs11":
        from proxy.kms.pkcs11 import Pkcs11Keyring, pin_from

        assert kms.pkcs11_module is not None and kms.pkcs11_token_label is not None
        return Pkcs11Keyring(
            str(kms.pkcs11_module),
            kms.pkcs11_token_label,
            pin_from(kms.pkcs11_pin_env, kms.pkcs11_pin_file),
            sessions=kms.pkcs11_sessions or 4,
            timeout=kms.timeout_seconds or 30.0,
        )
    if kms.provider == "kmip":
        from proxy.kms.kmip import KmipKeyring, KmipSettings

        assert kms.endpoint and kms.kmip_ca and kms.kmip_client_cert and kms.kmip_client_key
        return KmipKeyring(
            KmipSettings(
                endpoint=kms.endpoint,
                ca=kms.kmip_ca,
                client_cert=kms.kmip_client_cert,
                client_key=kms.kmip_client_key,
                timeout=kms.timeout_seconds or 10.0,
                connections=kms.kmip_connections or 4,
            )
        )
    from proxy.kms.aws import AwsKmsKeyring

    return AwsKmsKeyring(
        region=kms.region,
        endpoint_url=kms.endpoint,
        access_key_id=kms.access_key_id.get_secret_value() if kms.access_key_id else None,
        secret_access_key=kms.secret_access_key.get_secret_value() if kms.secret_access_key else None,
        ca_bundle=str(kms.ca_bundle) if kms.ca_bundle else None,
        read_timeout=kms.timeout_seconds or 10.0,
        connect_timeout=min(kms.timeout_seconds or 3.0, 3.0),
        max_attempts=kms.max_attempts or 3,
        rsa_keys=kms.rsa_keys,
    )


def make_materials(config: Config, keyring: Keyring, audit: AuditLog | None = None) -> Materials:
    """The keyring behind the data-key cache the config asks for (cache hits audited into `audit`)."""
    cache = config.kms.cache
    if not config.kms.cache_enabled:
        return Materials(keyring)
    return Materials(
        keyring,
        reuse=ReuseLimits(cache.max_objects, cache.max_seconds, cache.max_bytes),
        decrypt_seconds=cache.decrypt_seconds,
        on_cache_hit=cache_hit_recorder(audit) if audit is not None else None,
    )


def make_backend(config: Config) -> Backend:
    """The backend client the config describes."""
    b = config.backend
    return Backend(
        BackendSettings(
            endpoint=b.endpoint,
            region=b.region,
            access_key_id=b.access_key_id.get_secret_value() if b.access_key_id else None,
            secret_access_key=b.secret_access_key.get_secret_value() if b.secret_access_key else None,
            ssl=backend_ssl_context(b.ca_bundle, b.verify_tls) if b.endpoint.startswith("https") else False,
            addressing_style=b.addressing_style,
            connect_timeout=b.connect_timeout_seconds,
            read_timeout=b.read_timeout_seconds,
            max_attempts=b.max_attempts,
            upload_checksum=b.upload_checksum,
            pool_size=b.pool_size,
            pool_wait=b.pool_wait_seconds,
            uploads_per_client=b.uploads_per_client,
            downloads_per_client=b.downloads_per_client,
        )
    )


def open_audit(config: Config, *, per_process: bool = False, tool: str | None = None) -> AuditLog | None:
    """The audit log the config asks for, or None. One writer per file: `per_process` (several
    workers serve) gives each process ``<path>.w<pid>``, an operator `tool` ``<path>.<tool>``."""
    cfg = config.audit
    if cfg.path is None:
        return None
    path = cfg.path
    if per_process:
        path = path.with_name(f"{path.name}.w{os.getpid()}")
    if tool is not None:
        path = path.with_name(f"{path.name}.{tool}")
    key = cfg.hmac_key.get_secret_value().encode() if cfg.hmac_key is not None else None
    return AuditLog(path, hmac_key=key)


def make_gateway(
    config: Config,
    *,
    keyring: Keyring | None = None,
    audit: AuditLog | None = None,
    audit_cache_hits: bool = True,
) -> Gateway:
    """The parts of a gateway, not started (see `started`): `keyring` (default: the config's
    own) with every call audited into `audit` when there is one, and uses served from the
    data-key cache too unless `audit_cache_hits` is off."""
    base = keyring if keyring is not None else make_keyring(config)
    used = AuditingKeyring(base, audit) if audit is not None else base
    main = base.main if isinstance(base, RoutingKeyring) else base  # signing and S3EC: the main keyring
    previous = base.previous if isinstance(base, RoutingKeyring) else None
    local = next((k for k in (main, previous) if isinstance(k, LocalKeyring)), None)
    return Gateway(
        config=config,
        backend=make_backend(config),
        materials=make_materials(config, used, audit if audit_cache_hits else None),
        audit=audit,
        local_keys=main if isinstance(main, LocalKeyring) else None,
        local_keyring=local,
    )


@asynccontextmanager
async def started(gw: Gateway) -> AsyncIterator[Gateway]:
    """`gw` with its backend client started; backend, keyring and audit log closed when the block ends."""
    await gw.backend.start()
    try:
        yield gw
    finally:
        await gw.backend.close()
        await gw.materials.close()
        if gw.audit is not None:
            gw.audit.close()


@asynccontextmanager
async def operator_gateway(config: Config) -> AsyncIterator[Gateway]:
    """The backend and keys of `config` for an operator tool (rewrap, gc, copy, convert): a
    `Gateway` without a server, closed when the block ends. Key uses are not audited; see
    `audited_gateway`."""
    async with started(make_gateway(config)) as gw:
        yield gw


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in the environment nor the password database
        return "unknown"


@asynccontextmanager
async def audited_gateway(config: Config, tool: str, identity: str | None = None) -> AsyncIterator[Gateway]:
    """An operator tool's `Gateway` whose key uses are audited, as the server's are.

    With ``[audit] path`` set, every keyring call (decrypt, wrap) and policy denial of this run
    goes to ``<path>.<tool>`` (a file of its own: one writer per file, and the server holds
    ``<path>``), with identity `identity` or ``operator:<login>`` and one request id for the run.
    A log that cannot be opened (another run of the same tool holds it) stops the run before
    any key use: `AuditError`."""
    audit = open_audit(config, tool=tool)
    try:
        # Uses served from the tool's data-key cache are not recorded (the tools never did).
        async with started(make_gateway(config, audit=audit, audit_cache_hits=False)) as gw:
            who = identity or f"operator:{_login()}"
            token = audit_context.set(
                AuditContext(identity=who, source=f"sealgate {tool}", request_id=uuid.uuid4().hex)
            )
            try:
                yield gw
            finally:
                audit_context.reset(token)
    finally:
        if audit is not None:
            audit.close()
