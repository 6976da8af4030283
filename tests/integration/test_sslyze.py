"""sslyze against a running sealgate: the Mozilla "intermediate" TLS configuration, checked.

sslyze pins its own cryptography and nassl, which conflict with ours, so it lives in a separate
virtualenv: .ci/run creates it and sets SEALGATE_SSLYZE_PYTHON to its interpreter. Without that
variable the test is skipped and says why.

The scan trusts the test CA (sslyze's custom CA file), and the server certificate is issued the
way the profile wants one (ECDSA P-256, SHA-256, valid for 90 days), so the whole profile is
checked, certificate rules included, with no exceptions carved out. The certificate rules judge
the deployment's certificate, not sealgate; the TLS configuration rules (versions, suites,
groups, renegotiation, compression, known vulnerabilities) are sealgate's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import SealgateThread, free_port, write_config

SCAN = r"""
import json, sys
from pathlib import Path
from sslyze import (
    CertificateInfoExtraArgument, Scanner, ScanCommandsExtraArguments, ServerNetworkLocation, ServerScanRequest,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER, MozillaTlsConfiguration, ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum, check_server_against_tls_configuration,
)

port, ca = int(sys.argv[1]), Path(sys.argv[2])
request = ServerScanRequest(
    server_location=ServerNetworkLocation("localhost", port, ip_address="127.0.0.1"),
    scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    scan_commands_extra_arguments=ScanCommandsExtraArguments(
        certificate_info=CertificateInfoExtraArgument(custom_ca_file=ca)
    ),
)
scanner = Scanner()
scanner.queue_scans([request])
(result,) = list(scanner.get_results())
scan = result.scan_result
accepted = {}
for version in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2", "tls_1_3"):
    attempt = getattr(scan, f"{version}_cipher_suites")
    accepted[version] = sorted(s.cipher_suite.openssl_name for s in attempt.result.accepted_cipher_suites)
curves = sorted(c.name for c in scan.elliptic_curves.result.supported_curves or [])
issues = {}
profile = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
try:
    check_server_against_tls_configuration(result, profile)
except ServerNotCompliantWithTlsConfiguration as exc:
    issues = exc.issues
print(json.dumps({"issues": issues, "accepted": accepted, "curves": curves}))
"""


@pytest.fixture(scope="module")
def sslyze_python() -> str:
    python = os.environ.get("SEALGATE_SSLYZE_PYTHON")
    if not python:
        pytest.skip("SEALGATE_SSLYZE_PYTHON is not set (.ci/run sets it to a virtualenv with sslyze)")
    return python


def issue(tmp_path: Path) -> dict[str, Path]:
    """A CA and a server certificate as the profile wants them: ECDSA P-256, SHA-256, 90 days.

    (trustme's certificates mark the SAN critical next to a non-empty subject, which strict
    path validation, sslyze's included, rejects.)
    """
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sslyze test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem", "key": tmp_path / "server-key.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def test_mozilla_intermediate_profile(sslyze_python: str, moto_url: str, tmp_path: Path) -> None:
    tls = issue(tmp_path)
    gate = SealgateThread(write_config(tmp_path, backend=moto_url, tls=tls, port=free_port())).start()
    try:
        out = subprocess.run(
            [sslyze_python, "-c", SCAN, str(gate.running.tls_port), str(tls["ca"])],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        gate.stop()
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    # The TLS configuration itself, spelled out so a failure says what changed:
    accepted = report["accepted"]
    assert not any(accepted[v] for v in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1")), accepted
    assert accepted["tls_1_2"] and all("GCM" in s or "CHACHA20" in s for s in accepted["tls_1_2"])
    assert all(s.startswith("ECDHE-") for s in accepted["tls_1_2"])
    assert accepted["tls_1_3"]
    assert "X25519" in report["curves"] or "prime256v1" in report["curves"], report["curves"]
    # ...and Mozilla's verdict on all of it (versions, suites, curves, vulnerabilities, certificate).
    assert report["issues"] == {}
