"""`sealgate policy check`: the server's own evaluator, from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import main

CONFIG = """
[server]
tls = false
plain_http_listen = "127.0.0.1:8080"

[backend]
endpoint = "http://127.0.0.1:9000"
region = "us-east-1"
access_key_id = "backend-key"
secret_access_key = "backend-secret-0123456789"

[kms]
provider = "local"
keyring = "keyring"
passphrase_file = "passphrase"
default_key = "default"

[[clients]]
name = "alice"
access_key_id = "SGALICE0000000000001"
secret_access_key = "alice-secret-0123456789"
groups = ["staff"]

[[clients]]
name = "bob"
access_key_id = "SGBOB000000000000001"
secret_access_key = "bob-secret-0123456789ab"

[[policies]]
name = "home"
principals = ["group:staff"]
document = '''{"Version": "2012-10-17", "Statement": [
  {"Sid": "OwnObjects", "Effect": "Allow", "Action": "s3:*Object", "Resource": "arn:aws:s3:::home/${aws:username}/*"},
  {"Sid": "ListOwn", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::home",
   "Condition": {"StringLike": {"s3:prefix": "${aws:username}/*"}}},
  {"Sid": "OfficeOnly", "Effect": "Deny", "Action": "s3:*", "Resource": "*",
   "Condition": {"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}, "Null": {"aws:SourceIp": "false"}}}]}'''
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keyring").write_text("x")
    (tmp_path / "passphrase").write_text("x")
    path = tmp_path / "sealgate.toml"
    path.write_text(CONFIG)
    return path


def run(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["policy", "check", "--config", str(config), *args])
    return result.exit_code, result.output


def test_allowed_and_the_statement_that_decided(config: Path) -> None:
    code, out = run(config, "--as", "alice", "s3:PutObject", "arn:aws:s3:::home/alice/notes.txt")
    assert code == 0 and out.startswith("allowed:") and "OwnObjects" in out


def test_denied_without_an_allow(config: Path) -> None:
    code, out = run(config, "--as", "alice", "s3:GetObject", "home/bob/notes.txt")
    assert code == 1 and out.startswith("denied:")
    code, out = run(config, "--as", "bob", "s3:GetObject", "home/bob/notes.txt")
    assert code == 1 and out.startswith("denied:")


def test_context_keys(config: Path) -> None:
    code, out = run(config, "--as", "alice", "s3:ListBucket", "arn:aws:s3:::home", "--context", "s3:prefix=alice/")
    assert code == 0, out
    code, out = run(config, "--as", "alice", "s3:ListBucket", "arn:aws:s3:::home", "--context", "s3:prefix=bob/")
    assert code == 1, out
    args = ["--as", "alice", "s3:GetObject", "home/alice/x", "--context"]
    code, out = run(config, *args, "aws:SourceIp=192.0.2.1")
    assert code == 1 and "OfficeOnly" in out
    assert run(config, *args, "aws:SourceIp=10.1.2.3")[0] == 0


def test_bad_arguments(config: Path) -> None:
    assert run(config, "--as", "mallory", "s3:GetObject", "home/x")[0] == 2
    assert run(config, "--as", "alice", "s3:GetObjekt", "home/x")[0] == 2
    assert run(config, "--as", "alice", "s3:GetObject", "home/x", "--context", "s3:nope=1")[0] == 2
    assert run(config, "--as", "alice", "s3:GetObject", "arn:aws:iam::123:user/x")[0] == 2
