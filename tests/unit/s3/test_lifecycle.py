"""Lifecycle rules that could act on sealgate's records apart from their objects are refused."""

from __future__ import annotations

import pytest

from proxy.s3.errors import S3Error
from proxy.s3.lifecycle import check_lifecycle

RESERVED = ".sealgate/"


def _doc(*rules: str) -> bytes:
    return (
        "<LifecycleConfiguration>" + "".join(f"<Rule>{r}</Rule>" for r in rules) + "</LifecycleConfiguration>"
    ).encode()


EXPIRE = "<Status>Enabled</Status><Expiration><Days>30</Days></Expiration>"


@pytest.mark.parametrize(
    "rule",
    [
        f"<ID>all</ID><Filter><Prefix></Prefix></Filter>{EXPIRE}",
        f"<ID>logs</ID><Filter><Prefix>logs/</Prefix></Filter>{EXPIRE}",
        f"<ID>old-form</ID><Prefix>tmp/</Prefix>{EXPIRE}",
        f"<ID>tagged</ID><Filter><Tag><Key>k</Key><Value>v</Value></Tag></Filter>{EXPIRE}",
        f"<ID>small-tagged</ID><Filter><And><Tag><Key>k</Key><Value>v</Value></Tag>"
        f"<ObjectSizeLessThan>100</ObjectSizeLessThan></And></Filter>{EXPIRE}",
        "<ID>disabled</ID><Filter><Prefix>.</Prefix></Filter><Status>Disabled</Status><Expiration><Days>1</Days></Expiration>",
        "<ID>uploads</ID><Filter><Prefix>.</Prefix></Filter><Status>Enabled</Status>"
        "<AbortIncompleteMultipartUpload><DaysAfterInitiation>1</DaysAfterInitiation></AbortIncompleteMultipartUpload>",
        f"<ID>sized-prefix</ID><Filter><And><Prefix>big/</Prefix><ObjectSizeGreaterThan>1</ObjectSizeGreaterThan>"
        f"</And></Filter>{EXPIRE}",
    ],
)
def test_rules_that_spare_the_records_pass(rule: str) -> None:
    check_lifecycle(_doc(rule), RESERVED)


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        (f"<ID>dot</ID><Filter><Prefix>.</Prefix></Filter>{EXPIRE}", "prefix '.'"),
        (f"<ID>records</ID><Filter><Prefix>.sealgate/mp/</Prefix></Filter>{EXPIRE}", "prefix '.sealgate/mp/'"),
        (f"<ID>old</ID><Prefix>.seal</Prefix>{EXPIRE}", "prefix '.seal'"),
        (f"<ID>small</ID><Filter><ObjectSizeLessThan>1024</ObjectSizeLessThan></Filter>{EXPIRE}", "size filter"),
        (
            "<ID>move</ID><Filter><And><Prefix></Prefix><ObjectSizeLessThan>9</ObjectSizeLessThan></And></Filter>"
            "<Status>Enabled</Status><Transition><Days>1</Days><StorageClass>GLACIER</StorageClass></Transition>",
            "size filter",
        ),
    ],
)
def test_rules_that_could_reach_records_alone_are_refused(rule: str, words: str) -> None:
    with pytest.raises(S3Error) as err:
        check_lifecycle(_doc(f"<ID>fine</ID><Filter><Prefix>a/</Prefix></Filter>{EXPIRE}", rule), RESERVED)
    assert (err.value.code, err.value.status) == ("InvalidArgument", 400)
    assert words in err.value.message
