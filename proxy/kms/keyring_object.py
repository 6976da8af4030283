"""A local keyring kept as one object on the S3 backend, so that every sealgate host reads the
same master keys (``kms.keyring = "s3://bucket/key"``).

The object holds exactly the bytes of a keyring file (``SGKR1``, sealed under the passphrase,
see proxy/kms/keystore.py); the passphrase stays on the hosts. It is read and written with the
backend's own credentials by a small synchronous botocore client, used from threads.

Changes are read-modify-writes made safe by conditional PUTs: a new keyring is written with
``If-None-Match: *`` and a change with ``If-Match: <the ETag it was read at>``, so a writer that
lost a race gets 412 (`KeyringConflict`) and redoes its change on the fresh copy. Every save
draws a fresh nonce, so two saves never share an ETag. A backend that ignores these headers
would silently drop one of two concurrent changes: `check_conditional_writes` refuses it.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from proxy.kms.secret_files import KeyringFileError

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: Changed-by-someone-else answers: 412 PreconditionFailed, and AWS S3's 409
#: ConditionalRequestConflict for two conditional writes racing on one key.
_CONFLICT = frozenset({409, 412})


@dataclass(frozen=True)
class ObjectLocation:
    """Where a shared keyring lives on the backend."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def probe_key(self) -> str:
        """The object `check_conditional_writes` writes, beside the keyring."""
        return f"{self.key}.conditional-write-probe"


def parse_location(value: str) -> ObjectLocation:
    """``s3://bucket/key`` as an `ObjectLocation`; ValueError says what is wrong in one line."""
    if not value.startswith("s3://"):
        raise ValueError(f'must be "s3://bucket/key", got "{value}"')
    bucket, _, key = value[len("s3://") :].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f'"{value}": "{bucket}" is not a bucket name (3-63 of a-z 0-9 . -)')
    if not key or key.endswith("/") or "//" in key or len(key.encode()) > 900:
        raise ValueError(f'"{value}": name the keyring object after the bucket, e.g. s3://{bucket}/.sealgate/keyring')
    if any(ord(c) < 0x20 or c == "\x7f" for c in key):
        raise ValueError(f'"{value}": the object key holds a control character')
    return ObjectLocation(bucket, key)


@dataclass(frozen=True)
class BackendAccess:
    """How to reach the backend (from ``[backend]``): the keyring object's client settings."""

    endpoint: str
    region: str
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    #: True / False, or a CA bundle file to verify the backend's certificate with.
    verify: bool | str = True
    addressing_style: str = "path"
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 3


class KeyringConflict(KeyringFileError):
    """The keyring object changed (or appeared) since it was read: re-read and redo the change."""


class KeyringNotFound(KeyringFileError):
    """There is no keyring object at the location yet."""


class KeyringObject:
    """The keyring object at `location`, read and written through the backend `access`."""

    def __init__(self, location: ObjectLocation, access: BackendAccess) -> None:
        """No request is made before the first `get`."""
        self.location = location
        self._access = access
        self._lock = threading.Lock()
        self._client_of: tuple[int, Any] | None = None  # (pid, client): a forked worker makes its own
        self._probed = False

    def __str__(self) -> str:
        return str(self.location)

    def __repr__(self) -> str:
        return f"KeyringObject({str(self.location)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyringObject) and other.location == self.location

    def __hash__(self) -> int:
        return hash(self.location)

    def _client(self) -> Any:
        with self._lock:
            if self._client_of is None or self._client_of[0] != os.getpid():
                self._client_of = (os.getpid(), self._make_client())
            return self._client_of[1]

    def _make_client(self) -> Any:
        import botocore.session
        from botocore.config import Config

        a = self._access
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=a.endpoint,
            region_name=a.region,
            aws_access_key_id=a.access_key_id,
            aws_secret_access_key=a.secret_access_key,
            verify=a.verify,
            config=Config(
                s3={"addressing_style": a.addressing_style},
                connect_timeout=a.connect_timeout,
                read_timeout=a.read_timeout,
                retries={"max_attempts": a.max_attempts, "mode": "standard"},
                # A 304 answer has no body to check; botocore's checksum wrapper chokes on it.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def _failure(self, exc: Exception, doing: str) -> KeyringFileError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return KeyringFileError(f"cannot {doing} keyring object {self}: {err.get('Code', status)} ({status})")
        return KeyringFileError(f"cannot {doing} keyring object {self}: {type(exc).__name__}: {exc}")

    def get(self, if_none_match: str | None = None) -> tuple[bytes, str] | None:
        """(bytes, ETag) of the object; None when its ETag is still `if_none_match` (304)."""
        from botocore.exceptions import BotoCoreError, ClientError

        extra = {"IfNoneMatch": if_none_match} if if_none_match else {}
        try:
            got = self._client().get_object(Bucket=self.location.bucket, Key=self.location.key, **extra)
            return got["Body"].read(), str(got["ETag"])
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 304:
                return None
            if status == 404:
                raise KeyringNotFound(f"keyring object {self} does not exist") from None
            raise self._failure(exc, "read") from None
        except BotoCoreError as exc:
            raise self._failure(exc, "read") from None

    def put(self, blob: bytes, etag: str | None) -> str:
        """Replace the object if its ETag is still `etag` (None: create it, only if absent); the
        new ETag. KeyringConflict when someone else changed it first."""
        from botocore.exceptions import BotoCoreError, ClientError

        self.check_conditional_writes()
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            done = self._client().put_object(Bucket=self.location.bucket, Key=self.location.key, Body=blob, **condition)
            return str(done["ETag"])
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in _CONFLICT:
                what = "already exists" if etag is None else "was changed by another writer since it was read"
                raise KeyringConflict(f"keyring object {self} {what}") from None
            raise self._failure(exc, "write") from None
        except BotoCoreError as exc:
            raise self._failure(exc, "write") from None

    def check_conditional_writes(self) -> None:
        """KeyringFileError unless the backend refuses writes whose condition fails: a second
        ``If-None-Match: *`` PUT of a probe object beside the keyring, and an ``If-Match`` PUT
        with an ETag it does not have, must both get 412. Done once per `KeyringObject`."""
        from botocore.exceptions import BotoCoreError, ClientError

        if self._probed:
            return
        client, bucket, key = self._client(), self.location.bucket, self.location.probe_key
        probes = (
            ("If-None-Match", {"IfNoneMatch": "*"}),
            ("If-None-Match", {"IfNoneMatch": "*"}),
            ("If-Match", {"IfMatch": '"0"'}),
        )
        ignored: list[str] = []
        for attempt, (header, condition) in enumerate(probes):
            try:
                client.put_object(Bucket=bucket, Key=key, Body=b"sealgate conditional write probe\n", **condition)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") not in _CONFLICT:
                    raise self._failure(exc, "write a probe beside the") from None
                continue  # refused, as it should be (the first one too: the probe was there already)
            except BotoCoreError as exc:
                raise self._failure(exc, "write a probe beside the") from None
            if attempt > 0 and header not in ignored:
                ignored.append(header)
        if ignored:
            raise KeyringFileError(
                f"keyring object {self}: the backend ignores conditional writes ({' and '.join(ignored)} on PUT), "
                "so two hosts changing keys at once would lose a key version; keep the keyring in a backend "
                "that honours them (AWS S3, MinIO, Ceph), or use a KMS for several hosts"
            )
        self._probed = True
