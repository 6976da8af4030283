"""``kms.keyring = "s3://bucket/key"``: a keyring object on the backend, checked at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.kms.keyring_object import ObjectLocation
from tests.unit.config.test_config import BASE, ENV, error_of, render, workdir, write

__all__ = ["workdir"]  # the fixture

LOCAL = 'provider = "local"\npassphrase_file = "passphrase"\ndefault_key = "default"\n'


def test_an_object_needs_no_keyring_file(workdir: Path) -> None:
    (workdir / "keyring").unlink()
    kms = LOCAL + 'keyring = "s3://keyrings/.sealgate/keyring"\nkeyring_poll_seconds = 2.5\n'
    config = load_config(write(workdir, render(kms=kms)), ENV)
    assert config.kms.keyring == ObjectLocation("keyrings", ".sealgate/keyring")
    assert str(config.kms.keyring) == "s3://keyrings/.sealgate/keyring"
    assert config.kms.keyring_poll_seconds == 2.5


@pytest.mark.parametrize(
    ("keyring", "expected"),
    [
        ("s3://Keyrings/k", '"s3://Keyrings/k": "Keyrings" is not a bucket name (3-63 of a-z 0-9 . -)'),
        (
            "s3://keyrings",
            '"s3://keyrings": name the keyring object after the bucket, e.g. s3://keyrings/.sealgate/keyring',
        ),
        (
            "s3://keyrings/",
            '"s3://keyrings/": name the keyring object after the bucket, e.g. s3://keyrings/.sealgate/keyring',
        ),
        ("s3:///keyring", '"s3:///keyring": "" is not a bucket name (3-63 of a-z 0-9 . -)'),
        ("https://keyrings/k", 'must be a file path or "s3://bucket/key", got "https://keyrings/k"'),
    ],
)
def test_a_malformed_location_is_one_line(workdir: Path, keyring: str, expected: str) -> None:
    path = write(workdir, render(kms=LOCAL + f'keyring = "{keyring}"\n'))
    assert error_of(path) == f"kms.keyring: {expected}"


def test_the_poll_interval_is_for_objects_only(workdir: Path) -> None:
    path = write(workdir, render(kms=LOCAL + 'keyring = "keyring"\nkeyring_poll_seconds = 5\n'))
    assert error_of(path) == 'kms.keyring_poll_seconds: only used when keyring = "s3://bucket/key"; remove it'
    path = write(workdir, render(kms=LOCAL + 'keyring = "s3://keyrings/k"\nkeyring_poll_seconds = 0\n'))
    assert error_of(path).startswith("kms.keyring_poll_seconds: ")
    assert BASE["kms"]  # the file way is unchanged
