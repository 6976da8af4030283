"""The copy of a keyring object the first process hands a replacement worker
(proxy/kms/keyring_handover.py): taken once, only for the object it is of."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from proxy.kms.keyring_handover import ENV, KeyringCopy, read_copy, write_copy


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as a replacement: the copy's descriptor in the environment."""
    f = write_copy(KeyringCopy("s3://ring/.sealgate/keyring", b"\x00sealed\nbytes\xff", '"etag-1"', 1234.5))
    fd = os.dup(f.fileno())
    f.close()
    monkeypatch.setenv(ENV, str(fd))
    yield
    try:
        os.close(fd)
    except OSError:
        pass  # read_copy closed it


def test_the_copy_is_read_once_with_its_etag_and_since_when_the_object_fails(handed: None) -> None:
    assert read_copy("s3://ring/.sealgate/keyring") == KeyringCopy(
        "s3://ring/.sealgate/keyring", b"\x00sealed\nbytes\xff", '"etag-1"', 1234.5
    )
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


def test_a_replacement_counts_the_failure_from_when_the_first_process_saw_it() -> None:
    """The reason /-/readyz gives says for how long the object has failed, not for how long
    this process has run; a time ahead of this process's clock counts from now."""
    import time

    from proxy.kms.keyring_watch import KeyringWatch

    def never() -> None:
        raise AssertionError("no look in this test")

    def watch(since: float | None) -> KeyringWatch:
        return KeyringWatch(never, lambda store: never(), 60.0, "keyring object gone", since)  # type: ignore[arg-type]

    assert watch(time.monotonic() - 100).failing == "keyring object gone (for 100 s)"
    assert watch(time.monotonic() + 100).failing == "keyring object gone (for 0 s)"
    assert watch(None).failing == "keyring object gone (for 0 s)"
    assert KeyringWatch(never, lambda store: never(), 60.0).failing_since is None  # type: ignore[arg-type]
