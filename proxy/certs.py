"""`sealgate certs init`: a local CA and a server certificate signed by it (ECDSA P-256).

For development and private deployments: clients trust ``ca.pem`` and the proxy serves
``server.pem`` / ``server-key.pem``. Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA_DAYS", "SERVER_CERT_DAYS", "CertPaths", "init_certs"]

#: Mozilla's "intermediate" profile wants server certificates of 90 to 366 days (Apple platforms
#: refuse more than 398); `sealgate certs init --force` issues a new one under the same CA, and
#: a running sealgate picks it up without a restart (server.tls_reload_seconds).
SERVER_CERT_DAYS = 365
CA_DAYS = 10 * 365
# Backdating absorbs small clock differences between this machine and its clients.
_BACKDATE = dt.timedelta(hours=1)
# An existing CA this close to expiry is not reused: its certificates would soon stop working.
_CA_MIN_REMAINING = dt.timedelta(days=30)

_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*$")


@dataclass(frozen=True)
class CertPaths:
    """The files of a certificate directory."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> CertPaths:
        """The standard file names inside `directory`."""
        return cls(
            ca_cert=directory / "ca.pem",
            ca_key=directory / "ca-key.pem",
            server_cert=directory / "server.pem",
            server_key=directory / "server-key.pem",
        )


@dataclass(frozen=True)
class _Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def init_certs(
    directory: Path,
    hostnames: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    *,
    overwrite: bool = False,
) -> CertPaths:
    """Make a local CA and a server certificate for `hostnames` (DNS names or IPs) in `directory`.

    Writes ``ca.pem``, ``ca-key.pem``, ``server.pem`` (the leaf only: clients must trust
    ``ca.pem`` anyway) and ``server-key.pem``. A usable CA already in the directory is reused,
    so re-issuing the server certificate for new host names keeps clients' trust. Existing
    files are never replaced unless `overwrite` is true (FileExistsError otherwise); with
    `overwrite`, an unusable CA (expired, mismatched key, half present) is replaced too.
    ValueError for a host name that is neither a DNS name nor an IP address.
    """
    names = _general_names(hostnames)
    paths = CertPaths.in_directory(directory)
    now = dt.datetime.now(dt.UTC)
    # Decide everything before writing anything, so a refusal leaves the directory untouched.
    authority = _existing_authority(paths, now, overwrite)
    if not overwrite:
        for path in (paths.server_cert, paths.server_key):
            if path.exists():
                raise FileExistsError(f"{path} exists")
    directory.mkdir(parents=True, exist_ok=True)
    if authority is None:
        authority = _new_authority(now)
        _write(paths.ca_key, _private_pem(authority.key), 0o600)
        _write(paths.ca_cert, authority.cert.public_bytes(serialization.Encoding.PEM), 0o644)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _server_certificate(authority, key, names, now)
    _write(paths.server_key, _private_pem(key), 0o600)
    _write(paths.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths


def _general_names(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for raw in hostnames:
        name = raw.strip()
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            if not (name.isascii() and _DNS_NAME.match(name) and len(name) <= 253):
                raise ValueError(f"not a DNS name or IP address: {raw!r}") from None
            entry = x509.DNSName(name.lower())
        if entry not in names:
            names.append(entry)
    if not names:
        raise ValueError("at least one host name is required")
    return names


def _existing_authority(paths: CertPaths, now: dt.datetime, overwrite: bool) -> _Authority | None:
    """The CA to reuse, None to make a new one; FileExistsError if one is in the way."""
    present = [p for p in (paths.ca_cert, paths.ca_key) if p.exists()]
    if not present:
        return None
    if len(present) == 1:
        other = paths.ca_key if present[0] == paths.ca_cert else paths.ca_cert
        problem = f"{present[0]} exists without {other}"
    else:
        try:
            return _load_authority(paths, now)
        except ValueError as exc:
            problem = f"{paths.ca_cert} exists but cannot be reused: {exc}"
    if overwrite:
        return None
    raise FileExistsError(problem)


def _load_authority(paths: CertPaths, now: dt.datetime) -> _Authority:
    cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    if cert.public_key() != key.public_key():
        raise ValueError("ca-key.pem does not belong to ca.pem")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ValueError("it is not a CA certificate")
    if cert.not_valid_after_utc - now < _CA_MIN_REMAINING:
        raise ValueError(f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}")
    return _Authority(cert, key)


def _new_authority(now: dt.datetime) -> _Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    # A random suffix tells this CA apart from other sealgate installs in a trust store.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sealgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"sealgate local CA {secrets.token_hex(4)}"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Authority(cert, key)


def _server_certificate(
    authority: _Authority,
    key: ec.EllipticCurvePrivateKey,
    names: list[x509.GeneralName],
    now: dt.datetime,
) -> x509.Certificate:
    # Clients match on the SAN; the CN is only a label for people reading the certificate.
    label = str(names[0].value)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sealgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, label if len(label) <= 64 else "sealgate"),
        ]
    )
    # Never outlive the issuing CA.
    not_after = min(now + dt.timedelta(days=SERVER_CERT_DAYS), authority.cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file and rename, so `path` is never seen half-written or too open."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            # The umask may only narrow the mode given to open(); set it exactly.
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
