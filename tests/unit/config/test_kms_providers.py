"""``[kms]`` for the pkcs11 and kmip keyrings: what each needs, and other providers' keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import load_config
from tests.unit.config.test_config import ENV, error_of, render, workdir, write

__all__ = ["workdir"]  # the fixture, shared

PKCS11 = """
provider = "pkcs11"
pkcs11_module = "/usr/lib/softhsm/libsofthsm2.so"
pkcs11_token_label = "sealgate"
pkcs11_pin_env = "SEALGATE_PKCS11_PIN"
default_key = "sealgate-master"
"""
KMIP = """
provider = "kmip"
endpoint = "kms.example:5696"
kmip_ca = "kmip-ca.pem"
kmip_client_cert = "client.pem"
kmip_client_key = "client-key.pem"
default_key = "sealgate-master"
"""


def test_pkcs11_config_loads(workdir: Path) -> None:
    kms = load_config(write(workdir, render(kms=PKCS11 + "pkcs11_sessions = 4\n")), ENV).kms
    assert kms.provider == "pkcs11"
    assert kms.pkcs11_module == Path("/usr/lib/softhsm/libsofthsm2.so")
    assert kms.pkcs11_token_label == "sealgate"
    assert kms.pkcs11_pin_env == "SEALGATE_PKCS11_PIN"
    assert kms.pkcs11_sessions == 4
    assert kms.cache_enabled  # every token call costs a round trip to the HSM


def test_kmip_config_loads(workdir: Path) -> None:
    kms = load_config(write(workdir, render(kms=KMIP + "timeout_seconds = 5\n")), ENV).kms
    assert kms.provider == "kmip"
    assert kms.endpoint == "kms.example:5696"
    assert kms.kmip_ca == workdir / "kmip-ca.pem"
    assert kms.timeout_seconds == 5
    assert kms.cache_enabled


@pytest.mark.parametrize(
    ("case", "kms", "expected"),
    [
        (
            "pkcs11 without key",
            PKCS11.replace('default_key = "sealgate-master"\n', ""),
            'kms.default_key: required when provider = "pkcs11"',
        ),
        (
            "pkcs11 without module",
            PKCS11.replace('pkcs11_module = "/usr/lib/softhsm/libsofthsm2.so"\n', ""),
            'kms.pkcs11_module: required when provider = "pkcs11"',
        ),
        (
            "pkcs11 without token",
            PKCS11.replace('pkcs11_token_label = "sealgate"\n', ""),
            'kms.pkcs11_token_label: required when provider = "pkcs11"',
        ),
        (
            "pkcs11 without pin",
            PKCS11.replace('pkcs11_pin_env = "SEALGATE_PKCS11_PIN"\n', ""),
            'kms.pkcs11_pin_env: set one of pkcs11_pin_env or pkcs11_pin_file when provider = "pkcs11"',
        ),
        (
            "pkcs11 with two pins",
            PKCS11 + 'pkcs11_pin_file = "pin"\n',
            'kms.pkcs11_pin_env: set one of pkcs11_pin_env or pkcs11_pin_file when provider = "pkcs11"',
        ),
        (
            "pkcs11 pin env name",
            PKCS11.replace('"SEALGATE_PKCS11_PIN"', '"1PIN"'),
            'kms.pkcs11_pin_env: "1PIN" is not an environment variable name',
        ),
        (
            "pkcs11 long token label",
            PKCS11.replace('"sealgate"', '"' + "t" * 33 + '"'),
            "kms.pkcs11_token_label: must be 1 to 32 bytes (a PKCS#11 token label)",
        ),
        (
            "pkcs11 key with colon",
            PKCS11.replace('"sealgate-master"', '"a:b"'),
            "kms.default_key: must be 1-64 letters, digits and _./@+- (no colon: it goes into key references), "
            'got "a:b"',
        ),
        (
            "pkcs11 too many sessions",
            PKCS11 + "pkcs11_sessions = 65\n",
            "kms.pkcs11_sessions: must be less than or equal to 64",
        ),
        (
            "pkcs11 with keyring",
            PKCS11 + 'keyring = "k"\n',
            'kms.keyring: only used when provider = "local"; remove it',
        ),
        (
            "pkcs11 with region",
            PKCS11 + 'region = "eu-west-2"\n',
            'kms.region: only used when provider = "aws-kms"; remove it',
        ),
        (
            "pkcs11 with kmip ca",
            PKCS11 + 'kmip_ca = "ca.pem"\n',
            'kms.kmip_ca: only used when provider = "kmip"; remove it',
        ),
        (
            "pkcs11 with endpoint",
            PKCS11 + 'endpoint = "https://kms.example"\n',
            'kms.endpoint: only used when provider = "aws-kms" or provider = "kmip"; remove it',
        ),
        (
            "kmip without endpoint",
            KMIP.replace('endpoint = "kms.example:5696"\n', ""),
            'kms.endpoint: required when provider = "kmip" (host:port of the key manager)',
        ),
        (
            "kmip endpoint as url",
            KMIP.replace('"kms.example:5696"', '"https://kms.example:5696"'),
            'kms.endpoint: must be "host:port" (KMIP has no URL scheme), got "https://kms.example:5696"',
        ),
        (
            "kmip without client key",
            KMIP.replace('kmip_client_key = "client-key.pem"\n', ""),
            'kms.kmip_client_key: required when provider = "kmip" (KMIP uses mutual TLS)',
        ),
        (
            "kmip with pin",
            KMIP + 'pkcs11_pin_env = "PIN"\n',
            'kms.pkcs11_pin_env: only used when provider = "pkcs11"; remove it',
        ),
        (
            "kmip with max attempts",
            KMIP + "max_attempts = 2\n",
            'kms.max_attempts: only used when provider = "aws-kms"; remove it',
        ),
        (
            "kmip with rsa keys",
            KMIP + 'rsa_keys = ["k"]\n',
            'kms.rsa_keys: only used when provider = "aws-kms"; remove it',
        ),
        (
            "local with kmip connections",
            'provider = "local"\nkeyring = "k"\npassphrase_env = "P"\ndefault_key = "k"\nkmip_connections = 2\n',
            'kms.kmip_connections: only used when provider = "kmip"; remove it',
        ),
        (
            "aws with token label",
            'provider = "aws-kms"\nregion = "eu-west-2"\ndefault_key = "alias/k"\npkcs11_token_label = "t"\n',
            'kms.pkcs11_token_label: only used when provider = "pkcs11"; remove it',
        ),
    ],
)
def test_bad_kms_config_names_the_key(workdir: Path, case: str, kms: str, expected: str) -> None:
    assert error_of(write(workdir, render(kms=kms))) == expected


LOCAL = 'provider = "local"\nkeyring = "keyring"\npassphrase_file = "passphrase"\ndefault_key = "default"\n'


def test_previous_keyring_of_another_provider(workdir: Path) -> None:
    text = render(kms=PKCS11) + "\n[kms.previous]\n" + LOCAL
    kms = load_config(write(workdir, text), ENV).kms
    assert kms.provider == "pkcs11"
    assert kms.previous is not None and kms.previous.provider == "local"
    assert kms.previous.keyring == workdir / "keyring"


@pytest.mark.parametrize(
    ("case", "previous", "expected"),
    [
        (
            "same provider",
            PKCS11,
            'kms.previous.provider: must differ from kms.provider ("pkcs11"): key references tell the two apart '
            "by provider",
        ),
        (
            "its own keys checked",
            LOCAL + 'pkcs11_pin_env = "P"\n',
            'kms.previous.pkcs11_pin_env: only used when provider = "pkcs11"; remove it',
        ),
        (
            "chained",
            LOCAL + "[kms.previous.previous]\n" + KMIP,
            "kms.previous.previous: one previous keyring only; remove it",
        ),
    ],
)
def test_bad_previous_keyring(workdir: Path, case: str, previous: str, expected: str) -> None:
    text = render(kms=PKCS11) + "\n[kms.previous]\n" + previous
    assert error_of(write(workdir, text)) == expected


def test_key_policies_name_token_and_key_manager_references(workdir: Path) -> None:
    keys = [
        'id = "sealgate-master"\nencrypt = ["alice"]\ndecrypt = ["alice"]\n',
        'id = "archive"\nmode = "encrypt-only"\n',
    ]
    config = load_config(write(workdir, render(kms=PKCS11, keys=keys)), ENV)
    assert config.may_use_key("alice", "decrypt", "pkcs11:sealgate-master:2")
    assert config.may_use_key("alice", "decrypt", "kmip:sealgate-master:6f1c-uid")
    assert not config.may_use_key("alice", "decrypt", "pkcs11:other:1")
    assert not config.may_use_key("alice", "decrypt", "pkcs11:sealgate-master-2:1")
    assert config.encrypt_only("pkcs11:archive:3") and config.encrypt_only("kmip:archive:17")
    assert not config.encrypt_only("pkcs11:sealgate-master:1")
