"""``[[keys]] trusted_signers``: Ed25519 public keys written as ``ed25519:<base64>``, checked at load."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from proxy.config.access import KeyPolicy
from proxy.crypto import signing


def test_trusted_signers_parse() -> None:
    public = signing.public_key(signing.generate_seed())
    policy = KeyPolicy(id="uploads", trusted_signers=(signing.public_text(public),))
    assert policy.signer_keys() == (public,)
    assert KeyPolicy(id="uploads").signer_keys() == ()


@pytest.mark.parametrize("bad", ["AAAA", "ed25519:***", "ed25519:AAAA", "rsa:" + "A" * 44])
def test_bad_signer_is_a_config_error(bad: str) -> None:
    with pytest.raises(ValidationError, match="trusted_signers"):
        KeyPolicy(id="uploads", trusted_signers=(bad,))
