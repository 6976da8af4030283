"""make_keyring / make_gateway for the pkcs11 and kmip providers and [kms.previous]; and the
bindings stay unimported for a config that uses neither."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import Config, load_config
from proxy.kms.local import LocalKeyring
from proxy.kms.routing import RoutingKeyring
from proxy.wiring import make_gateway, make_keyring
from tests.conftest import make_keyring as make_local_keyring
from tests.conftest import write_config
from tests.unit.kms.hsm_support import needs_pykmip, needs_softhsm


def config(tmp_path: Path, kms: str | None) -> Config:
    tls = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    for path in tls.values():
        path.touch(mode=0o600)
    return load_config(write_config(tmp_path, backend="http://127.0.0.1:9", tls=tls, port=8443, kms=kms))


PKCS11 = (
    'provider = "pkcs11"\npkcs11_module = "/usr/lib/softhsm/libsofthsm2.so"\npkcs11_token_label = "t"\n'
    'pkcs11_pin_env = "SEALGATE_TEST_WIRING_PIN"\ndefault_key = "m"\n'
)


@needs_softhsm
def test_pkcs11_reads_its_pin_now_and_touches_no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.kms.pkcs11 import PinUnavailable, Pkcs11Keyring

    monkeypatch.delenv("SEALGATE_TEST_WIRING_PIN", raising=False)
    with pytest.raises(PinUnavailable, match="SEALGATE_TEST_WIRING_PIN is unset"):
        make_keyring(config(tmp_path, PKCS11))
    monkeypatch.setenv("SEALGATE_TEST_WIRING_PIN", "1234")
    # Token "t" does not exist: nothing looks for it before the first key use.
    assert isinstance(make_keyring(config(tmp_path, PKCS11)), Pkcs11Keyring)


@needs_softhsm
def test_pin_file_must_be_private(tmp_path: Path) -> None:
    from proxy.kms.pkcs11 import PinUnavailable, pin_from

    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    pin.chmod(0o644)
    with pytest.raises(PinUnavailable, match="readable by others"):
        pin_from(None, pin)
    pin.chmod(0o600)
    assert pin_from(None, pin) == "1234"


@needs_pykmip
def test_kmip_keyring_from_the_config(tmp_path: Path) -> None:
    from proxy.kms.kmip import KmipKeyring

    kms = (
        f'provider = "kmip"\nendpoint = "127.0.0.1:5696"\nkmip_ca = "{tmp_path}/ca.pem"\n'
        f'kmip_client_cert = "{tmp_path}/c.pem"\nkmip_client_key = "{tmp_path}/k.pem"\ndefault_key = "m"\n'
    )
    assert isinstance(make_keyring(config(tmp_path, kms)), KmipKeyring)


@needs_softhsm
def test_previous_keyring_routes_and_the_main_one_signs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALGATE_TEST_WIRING_PIN", "1234")
    make_local_keyring(tmp_path / "keyring")
    local = (
        f'provider = "local"\nkeyring = "{tmp_path / "keyring"}"\npassphrase_file = "{tmp_path / "keyring"}.pass"\n'
        'default_key = "default"\n'
    )
    gw = make_gateway(config(tmp_path, PKCS11 + "[kms.previous]\n" + local))
    assert isinstance(gw.materials.keyring, RoutingKeyring)
    assert gw.local_keys is None  # signing and S3EC follow the main keyring, a token here
    back = make_gateway(config(tmp_path, local + "[kms.previous]\n" + PKCS11))
    assert isinstance(back.local_keys, LocalKeyring)


def test_a_local_config_imports_neither_binding_nor_boto3_nor_awscrt(tmp_path: Path) -> None:
    """Serving a local-keyring config loads no HSM or KMIP binding, no boto3, no awscrt (botocore
    would import it, about 7 MiB) and none of the tools' commands; the first CRC32C or CRC64NVME
    checksum imports awscrt and gives the standard check values."""
    config(tmp_path, None)  # writes sealgate.toml with a local keyring
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from proxy.config import load_config\nfrom proxy.wiring import make_gateway\n"
        f"make_gateway(load_config(Path({str(tmp_path / 'sealgate.toml')!r})))\n"
        "import proxy.cli, proxy.server.run\n"
        "heavy = ('pkcs11', 'kmip', 'sqlalchemy', 'boto3', 'awscrt')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('proxy.tools.')))\n"
        "from proxy.s3.checksums import new_checksum\n"
        "for name in ('crc32c', 'crc64nvme'):\n"
        "    c = new_checksum(name)\n    c.update(b'12345')\n    c.update(memoryview(b'6789'))\n"
        "    print(c.digest().hex())\n"
        "print('awscrt' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "[]"
    # The tools' commands (convert, copy, gc, ...) load when asked for, not with `serve`.
    assert lines[1] == "['proxy.tools.options', 'proxy.tools.token_keys']"
    assert lines[2:] == ["e3069283", "ae8b14860a799888", "True"]


def test_keys_commands_with_a_local_config_use_its_keyring(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from proxy.cli import main
    from proxy.kms.keystore import LocalKeyStore
    from tests.conftest import PASSPHRASE

    cfg = config(tmp_path, None)  # a local keyring with key "default", its passphrase in a file
    runner = CliRunner()
    made = runner.invoke(main, ["keys", "create", "second", "--config", str(tmp_path / "sealgate.toml")])
    assert made.exit_code == 0, made.output
    rotated = runner.invoke(main, ["keys", "rotate", "second", "--config", str(tmp_path / "sealgate.toml")])
    assert rotated.exit_code == 0 and "now version 2" in rotated.output
    assert cfg.kms.keyring is not None
    store = LocalKeyStore.open(cfg.kms.keyring, PASSPHRASE.encode())
    assert {k.id: k.current_version for k in store.list_keys()} == {"default": 1, "second": 2}
    missing = runner.invoke(
        main, ["keys", "list", "--config", str(tmp_path / "sealgate.toml").replace("sealgate.toml", "nope.toml")]
    )
    assert missing.exit_code == 2 and "nope.toml" in missing.output
