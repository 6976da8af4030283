"""AWS KMS, or any KMS-compatible endpoint, as a keyring through boto3.

Data keys come from ``GenerateDataKey`` (AES_256) and are unwrapped with ``Decrypt``, both
with the object's encryption context, which KMS binds to the ciphertext. ``key_ref`` is the
key ARN KMS returns, and ``Decrypt`` is pinned to it. botocore errors become keyring errors
here: unreachable, throttled or failing -> `KeyUnavailable` (503); refused key ->
`KeyAccessDenied` (403); a ciphertext that does not open -> `InvalidWrappedKey`.

Asymmetric KMS keys (KeySpec RSA_3072 / RSA_4096, KeyUsage ENCRYPT_DECRYPT), listed in
``rsa_keys``: the public key is fetched once with ``GetPublicKey`` and each data key is wrapped
locally (`asymmetric.wrap_for_kms`), so uploads cost no KMS call; ``key_ref`` is
``kms-rsa:<key ARN>``. Reads unwrap with ``Decrypt`` (``RSAES_OAEP_SHA_256``), unless the key is
encrypt-only at this gateway (checked by the key policy before any keyring call).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.kms import asymmetric
from proxy.kms.base import (
    DataKey,
    InvalidWrappedKey,
    KeyAccessDenied,
    KeyringError,
    KeyUnavailable,
)
from proxy.kms.local import wrap_aad

DATA_KEY_SIZE = 32
#: Prefix of the key reference of a data key wrapped locally under an RSA KMS key's public key.
RSA_REF_PREFIX = "kms-rsa:"
_RSA_ALGORITHM = "RSAES_OAEP_SHA_256"
# Matches botocore's default connection pool, so no call waits for a connection while
# holding a thread.
_WORKERS = 10

_UNAVAILABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
    }
)
_DENIED_CODES = frozenset(
    {
        "NotFoundException",
        "DisabledException",
        "AccessDeniedException",
        "KMSInvalidStateException",
        "InvalidKeyUsageException",
        "IncorrectKeyException",
        # Bad or expired credentials: retrying will not help, so 403 rather than 503.
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
    }
)
_MAX_MESSAGE = 200


def _translate(exc: Exception, operation: str, key: str) -> KeyringError:
    """The keyring error for a botocore failure of `operation` on key `key`.

    Messages carry the operation, the key id or ARN and KMS's error code and message; none
    of these can contain a plaintext data key, which is never a request parameter.
    """
    where = f"KMS {operation} with key {key[:256]!r}"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return KeyAccessDenied(
            f"{where}: no usable AWS credentials; configure an access key for the KMS "
            "keyring or provide credentials through the AWS default chain"
        )
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        # Endpoint unreachable, connect/read timeout, connection closed, TLS failure.
        return KeyUnavailable(f"{where}: key service unreachable ({type(exc).__name__})")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        detail = str(error.get("Message", ""))[:_MAX_MESSAGE]
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        said = f"{code or status}: {detail}" if detail else f"{code or status}"
        if code == "InvalidCiphertextException":
            return InvalidWrappedKey(f"{where}: wrapped key does not decrypt ({said})")
        if code in _UNAVAILABLE_CODES or (isinstance(status, int) and status >= 500):
            return KeyUnavailable(f"{where}: key service unavailable ({said})")
        if code in _DENIED_CODES:
            return KeyAccessDenied(f"{where}: refused ({said})")
        return KeyAccessDenied(f"{where}: request rejected ({said})")
    if isinstance(exc, ParamValidationError):
        # boto3 refused the parameters before sending: for Decrypt that means the stored
        # wrapped key or key_ref is not something KMS could have produced.
        if operation == "Decrypt":
            return InvalidWrappedKey(f"{where}: wrapped key or key reference is malformed")
        return KeyAccessDenied(f"{where}: invalid key id or context")
    if isinstance(exc, BotoCoreError):
        return KeyUnavailable(f"{where}: key service call failed ({type(exc).__name__})")
    raise exc


class AwsKmsKeyring:
    """A `Keyring` backed by AWS KMS (or a KMS-compatible endpoint)."""

    def __init__(
        self,
        *,
        region: str | None,
        endpoint_url: str | None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        ca_bundle: str | None = None,
        connect_timeout: float = 3,
        read_timeout: float = 10,
        max_attempts: int = 3,
        rsa_keys: Collection[str] = (),
    ) -> None:
        """Create the KMS client. Credentials are explicit if given, else boto3's chain.
        Keys in `rsa_keys` (as written in the config) are asymmetric RSA KMS keys."""
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        session = boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
        )
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": max_attempts},
            max_pool_connections=_WORKERS,
        )
        try:
            # verify=None keeps botocore's default (which honours AWS_CA_BUNDLE).
            self._client: Any = session.client(
                "kms", endpoint_url=endpoint_url, verify=ca_bundle or None, config=config
            )
        except NoRegionError:
            raise ValueError("the AWS KMS keyring needs a region (set it in the config or AWS_REGION)") from None
        # A pool of our own rather than the loop's default executor: KMS calls can block for
        # the whole timeout-and-retry budget and must not starve unrelated blocking work.
        self._pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="sealgate-kms")
        self._closed = False
        self._rsa_keys = frozenset(rsa_keys)
        self._public: dict[str, tuple[rsa.RSAPublicKey, str]] = {}
        self._public_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"AwsKmsKeyring(endpoint={self._client.meta.endpoint_url!r})"

    async def _call(self, operation: str, key: str, fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        if self._closed:
            raise KeyUnavailable("the KMS keyring is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, **kwargs))
        except asyncio.CancelledError:
            # close() cancels queued calls; unless our own task is being cancelled, that is
            # the keyring going away, which callers should see as a keyring error.
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                raise KeyUnavailable("the KMS keyring is closed") from None
            raise
        except RuntimeError:
            # submit() after shutdown raises RuntimeError: closed while we were called.
            if self._closed:
                raise KeyUnavailable("the KMS keyring is closed") from None
            raise
        except Exception as exc:
            raise _translate(exc, operation, key) from None

    async def _public_key(self, key_id: str) -> tuple[rsa.RSAPublicKey, str]:
        """The RSA public key and ARN of asymmetric KMS key `key_id`: one GetPublicKey per key."""
        cached = self._public.get(key_id)
        if cached is not None:
            return cached
        if self._public_lock is None:
            self._public_lock = asyncio.Lock()
        async with self._public_lock:  # concurrent first uses share one call
            cached = self._public.get(key_id)
            if cached is not None:
                return cached
            resp = await self._call("GetPublicKey", key_id, self._client.get_public_key, KeyId=key_id)
            der, arn = resp.get("PublicKey"), resp.get("KeyId")
            where = f"KMS key {key_id!r}"
            if resp.get("KeyUsage") != "ENCRYPT_DECRYPT" or _RSA_ALGORITHM not in resp.get("EncryptionAlgorithms", []):
                raise KeyAccessDenied(f"{where} is not an RSA key for ENCRYPT_DECRYPT with {_RSA_ALGORITHM}")
            try:
                public = asymmetric.load_public(der) if isinstance(der, bytes) else None
            except ValueError:
                public = None
            if not isinstance(public, rsa.RSAPublicKey) or public.key_size not in (3072, 4096):
                raise KeyAccessDenied(f"{where}: GetPublicKey gave no RSA 3072/4096 public key")
            if not isinstance(arn, str) or not arn.startswith("arn:"):
                # AWS answers with the ARN; some KMS-compatible servers with the bare key id.
                described = await self._call("DescribeKey", key_id, self._client.describe_key, KeyId=key_id)
                arn = described.get("KeyMetadata", {}).get("Arn")
                if not isinstance(arn, str) or not arn:
                    raise KeyUnavailable(f"KMS DescribeKey with key {key_id!r}: malformed response")
            self._public[key_id] = (public, arn)
            return public, arn

    async def _wrap_rsa(self, key_id: str, plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        public, arn = await self._public_key(key_id)
        key_ref = RSA_REF_PREFIX + arn
        wrapped = asymmetric.wrap_for_kms(public, plaintext, wrap_aad(key_ref, context))
        return DataKey(plaintext=plaintext, wrapped=wrapped, key_ref=key_ref)

    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """A fresh AES-256 data key from KMS under `key_id`, bound to `context` (for an RSA key:
        made here and wrapped with its public key)."""
        if key_id in self._rsa_keys:
            if self._closed:
                raise KeyUnavailable("the KMS keyring is closed")
            return await self._wrap_rsa(key_id, os.urandom(DATA_KEY_SIZE), context)
        resp = await self._call(
            "GenerateDataKey",
            key_id,
            self._client.generate_data_key,
            KeyId=key_id,
            KeySpec="AES_256",
            EncryptionContext=dict(context),
        )
        plaintext = resp.get("Plaintext")
        wrapped = resp.get("CiphertextBlob")
        arn = resp.get("KeyId")
        if (
            not isinstance(plaintext, bytes)
            or len(plaintext) != DATA_KEY_SIZE
            or not isinstance(wrapped, bytes)
            or not wrapped
            or not isinstance(arn, str)
            or not arn
        ):
            raise KeyUnavailable(f"KMS GenerateDataKey with key {key_id!r}: malformed response")
        return DataKey(plaintext=plaintext, wrapped=wrapped, key_ref=arn)

    async def wrap_data_key(self, key_id: str, plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        """KMS Encrypt of an existing data key under `key_id` with `context` (copies, rewrap)."""
        if key_id in self._rsa_keys:
            if self._closed:
                raise KeyUnavailable("the KMS keyring is closed")
            return await self._wrap_rsa(key_id, plaintext, context)
        resp = await self._call(
            "Encrypt",
            key_id,
            self._client.encrypt,
            KeyId=key_id,
            Plaintext=plaintext,
            EncryptionContext=dict(context),
        )
        wrapped = resp.get("CiphertextBlob")
        arn = resp.get("KeyId")
        if not isinstance(wrapped, bytes) or not wrapped or not isinstance(arn, str) or not arn:
            raise KeyUnavailable(f"KMS Encrypt with key {key_id!r}: malformed response")
        return DataKey(plaintext=plaintext, wrapped=wrapped, key_ref=arn)

    async def decrypt_data_key(self, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """Decrypt `wrapped` with KeyId pinned to `key_ref` and exactly `context`."""
        if key_ref.startswith(RSA_REF_PREFIX):
            return await self._decrypt_rsa(key_ref, wrapped, context)
        resp = await self._call(
            "Decrypt",
            key_ref,
            self._client.decrypt,
            CiphertextBlob=wrapped,
            KeyId=key_ref,
            EncryptionContext=dict(context),
        )
        plaintext = resp.get("Plaintext")
        if not isinstance(plaintext, bytes) or len(plaintext) != DATA_KEY_SIZE:
            # Not a key this keyring made: KMS data keys are always 32 bytes here.
            raise InvalidWrappedKey(f"KMS Decrypt with key {key_ref!r}: not a 32-byte data key")
        return plaintext

    async def _decrypt_rsa(self, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        arn = key_ref[len(RSA_REF_PREFIX) :]
        resp = await self._call(
            "Decrypt",
            arn,
            self._client.decrypt,
            CiphertextBlob=wrapped,
            KeyId=arn,
            EncryptionAlgorithm=_RSA_ALGORITHM,
        )
        plaintext = resp.get("Plaintext")
        if not isinstance(plaintext, bytes):
            raise InvalidWrappedKey(f"KMS Decrypt with key {arn!r}: malformed response")
        return asymmetric.open_from_kms(plaintext, wrap_aad(key_ref, context))

    async def ready(self, key_id: str) -> None:
        """KeyringError unless KMS answers for `key_id` and the key is enabled (readiness)."""
        resp = await self._call("DescribeKey", key_id, self._client.describe_key, KeyId=key_id)
        if not resp.get("KeyMetadata", {}).get("Enabled", False):
            raise KeyAccessDenied(f"KMS key {key_id!r} is disabled")

    async def close(self) -> None:
        """Wait for calls in flight, stop the thread pool and close the HTTP client."""
        if self._closed:
            return
        self._closed = True
        # shutdown(wait=True) blocks for up to the timeout budget of calls in flight.
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
        self._client.close()
