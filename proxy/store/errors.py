"""What a client sees of a keyring failure: the S3 error each kind of `KeyringError` becomes.

The keyrings say what went wrong (kms/base.py) and nothing about HTTP; this is where the object
layer, and the server for errors that reach it, turn that into an S3 error.
"""

from __future__ import annotations

from proxy.kms.base import InvalidWrappedKey, KeyAccessDenied, KeyringError, KeyUnavailable
from proxy.s3.errors import S3Error


def keyring_error(exc: KeyringError) -> S3Error:
    """ServiceUnavailable (retry later) when the key service or the audit log is unavailable,
    AccessDenied for a key that may not be used, ObjectIntegrityError for a wrapped key that
    does not open."""
    if isinstance(exc, KeyUnavailable):
        return S3Error("ServiceUnavailable", exc.message, 503)
    if isinstance(exc, KeyAccessDenied):
        return S3Error("AccessDenied", exc.message, 403)
    if isinstance(exc, InvalidWrappedKey):
        return S3Error("ObjectIntegrityError", exc.message, 500)
    return S3Error("InternalError", exc.message, 500)
