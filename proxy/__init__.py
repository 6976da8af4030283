"""sealgate: a TLS-terminating, envelope-encrypting S3 proxy."""

from __future__ import annotations

import sys

__version__ = "0.1.0"


def _botocore_without_awscrt() -> None:
    """Import botocore with awscrt hidden from it.

    botocore imports ``awscrt.auth`` whenever awscrt is installed (about 7 MiB in every
    process), for SigV4a and its own CRT checksums, neither of which sealgate uses: it signs with
    botocore's SigV4 in Python, and ``proxy.s3.checksums`` imports awscrt itself when a request
    carries a CRC32C or CRC64NVME checksum. If botocore or awscrt is already imported (a program
    that imported boto3 first), nothing changes."""
    if "botocore.compat" in sys.modules or "awscrt" in sys.modules:
        return
    sys.modules["awscrt"] = None  # type: ignore[assignment]  # makes `import awscrt` fail
    try:
        import botocore.compat  # noqa: F401
    finally:
        del sys.modules["awscrt"]


_botocore_without_awscrt()
