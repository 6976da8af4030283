"""The copy of a keyring object the first process hands a replacement worker
(proxy/kms/keyring_handover.py): taken once, only for the object it is of."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from proxy.kms.keyring_handover import ENV, read_copy, write_copy


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as a replacement: the copy's descriptor in the environment."""
    f = write_copy("s3://ring/.sealgate/keyring", b"\x00sealed\nbytes\xff", '"etag-1"')
    fd = os.dup(f.fileno())
    f.close()
    monkeypatch.setenv(ENV, str(fd))
    yield
    try:
        os.close(fd)
    except OSError:
        pass  # read_copy closed it


def test_the_copy_is_read_once_with_its_etag(handed: None) -> None:
    assert read_copy("s3://ring/.sealgate/keyring") == (b"\x00sealed\nbytes\xff", '"etag-1"')
    assert ENV not in os.environ
    assert read_copy("s3://ring/.sealgate/keyring") is None


def test_a_copy_of_another_object_is_not_used(handed: None) -> None:
    """The config names another keyring object now (reloaded, edited): the copy is not of it."""
    assert read_copy("s3://other/.sealgate/keyring") is None
    assert ENV not in os.environ


def test_no_copy_or_a_bad_descriptor_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert read_copy("s3://ring/.sealgate/keyring") is None
    r, w = os.pipe()
    os.write(w, b"not json\nbytes")
    os.close(w)
    monkeypatch.setenv(ENV, str(r))
    assert read_copy("s3://ring/.sealgate/keyring") is None
    monkeypatch.setenv(ENV, "99999")
    assert read_copy("s3://ring/.sealgate/keyring") is None
