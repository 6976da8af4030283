"""What a POST Object form needs allowed: PutObject on its key, plus what its fields add."""

from __future__ import annotations

from multidict import CIMultiDict

from proxy.access.actions import needs


def _needs(**headers: str) -> list[tuple[str, str]]:
    h = CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})
    return [(n.action, n.resource) for n in needs("PostObject", "b", "up/k", {}, h)]


def test_a_form_needs_put_object_on_its_key() -> None:
    assert _needs() == [("s3:PutObject", "arn:aws:s3:::b/up/k")]


def test_form_fields_add_actions_as_put_object_headers_do() -> None:
    got = _needs(x_amz_tagging="a=b", x_amz_object_lock_legal_hold="ON", x_amz_object_lock_mode="GOVERNANCE")
    assert got == [
        ("s3:PutObject", "arn:aws:s3:::b/up/k"),
        ("s3:PutObjectTagging", "arn:aws:s3:::b/up/k"),
        ("s3:PutObjectRetention", "arn:aws:s3:::b/up/k"),
        ("s3:PutObjectLegalHold", "arn:aws:s3:::b/up/k"),
    ]
    acl = needs("PostObject", "b", "k", {}, CIMultiDict({"x-amz-acl": "public-read"}))
    assert acl[0].context == {"s3:x-amz-acl": "public-read"}
