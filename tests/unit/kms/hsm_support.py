"""Real key services for the pkcs11 and kmip keyring tests: a SoftHSM2 token store and a
PyKMIP server on loopback with trustme-made certificates for server and client."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

SOFTHSM_MODULE = os.environ.get("SEALGATE_TEST_SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
PIN = "1234-pin"
SO_PIN = "5678-so-pin"
#: Initialised once per test process, before the module is first loaded: SoftHSM reads its
#: config and token directory when a process initialises it, and sees no token made later.
TOKENS = ("sg-main", "sg-pin", "sg-e2e", "sg-cli")

try:
    import pkcs11  # noqa: F401

    _HAVE_PKCS11 = True
except ImportError:  # the lower-bounds run installs no optional extra
    _HAVE_PKCS11 = False

needs_softhsm = pytest.mark.skipif(
    not Path(SOFTHSM_MODULE).exists() or shutil.which("softhsm2-util") is None or not _HAVE_PKCS11,
    reason=f"SoftHSM2 ({SOFTHSM_MODULE}, apt-get install softhsm2) or python-pkcs11 (the hsm extra) is missing",
)


@dataclass(frozen=True)
class SoftHsm:
    """The process's SoftHSM: module path, config (also in SOFTHSM2_CONF) and user PIN."""

    module: str
    conf: Path
    pin: str = PIN


_softhsm: SoftHsm | None = None


def softhsm() -> SoftHsm:
    """The SoftHSM token store of this test process, with the tokens in TOKENS, made once."""
    global _softhsm
    if _softhsm is None:
        root = Path(tempfile.mkdtemp(prefix="sealgate-softhsm-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        (root / "tokens").mkdir()
        conf = root / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        for label in TOKENS:
            subprocess.run(
                ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN],
                check=True,
                capture_output=True,
            )
        _softhsm = SoftHsm(SOFTHSM_MODULE, conf)
    return _softhsm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class KmipServer:
    """A PyKMIP server on loopback and the files a client needs."""

    endpoint: str
    ca: Path
    client_cert: Path
    client_key: Path
    #: A client certificate from the same CA but another identity (not the keys' owner).
    other_cert: Path
    other_key: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        # Killed, not terminated: PyKMIP's server waits seconds for its session threads, and a
        # key manager that vanishes is what the failure tests want anyway. The whole process
        # group: the processes PyKMIP forks for its sessions would outlive the server otherwise.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


_SERVER = """
import logging, sys
from kmip.services.server import KmipServer
d, port = sys.argv[1], int(sys.argv[2])
server = KmipServer(hostname="127.0.0.1", port=port, certificate_path=d + "/server.pem",
    key_path=d + "/server-key.pem", ca_path=d + "/ca.pem", auth_suite="TLS1.2", config_path=None,
    log_path=d + "/server.log", policy_path=None, enable_tls_client_auth=True,
    database_path=d + "/kmip.sqlite", logging_level=logging.INFO)
with server:
    server.serve()
"""


def start_kmip_server(d: Path) -> KmipServer:
    """A fresh PyKMIP server (its own database) serving in directory `d`."""
    d.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    # PyKMIP's server takes a client's identity from the certificate's common name.
    client = ca.issue_cert("sealgate-gateway", common_name="sealgate")
    other = ca.issue_cert("someone-else", common_name="someone-else")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server.private_key_pem.write_to_path(str(d / "server-key.pem"))
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    for name, cert in (("client", client), ("other", other)):
        cert.private_key_pem.write_to_path(str(d / f"{name}-key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(d / f"{name}.pem"))
        (d / f"{name}-key.pem").chmod(0o600)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", _SERVER, str(d), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=open(d / "server.err", "wb"),  # noqa: SIM115 - the child holds it
        start_new_session=True,  # its own process group, so that `stop` ends its forks too
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError(
                    "the PyKMIP server did not start: " + (d / "server.err").read_text()[-2000:]
                ) from None
            time.sleep(0.1)
    return KmipServer(
        f"127.0.0.1:{port}",
        d / "ca.pem",
        d / "client.pem",
        d / "client-key.pem",
        d / "other.pem",
        d / "other-key.pem",
        proc,
    )


try:
    import kmip  # noqa: F401

    _HAVE_PYKMIP = True
except ImportError:
    _HAVE_PYKMIP = False

needs_pykmip = pytest.mark.skipif(not _HAVE_PYKMIP, reason="PyKMIP is not installed (pip install -e '.[hsm]')")


@pytest.fixture(scope="module")
def kmip_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmipServer]:
    """A PyKMIP server for the tests of one module."""
    server = start_kmip_server(tmp_path_factory.mktemp("kmip"))
    yield server
    server.stop()
