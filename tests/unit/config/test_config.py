"""Config loading: the examples load, every mistake is one line naming its key, secrets stay hidden."""

from __future__ import annotations

import os
import shutil
from datetime import UTC
from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.config import Config, ConfigError, available_cores, load_config, parse_address

REPO = Path(__file__).resolve().parents[3]
ALICE_SECRET = "alice-secret-0123456789-XYZZY"
BACKEND_SECRET = "backend-secret-abcdef-PLUGH"

SERVER = """
listen = "127.0.0.1:8443"
tls_cert = "certs/server.pem"
tls_key = "certs/server-key.pem"
"""
KMS = """
provider = "local"
keyring = "keyring"
passphrase_file = "passphrase"
default_key = "default"
"""
ALICE = """
name = "alice"
access_key_id = "SGALICE0000000000001"
secret_access_key = "${ALICE_SECRET}"
"""
BASE: dict[str, str | list[str]] = {
    "server": SERVER,
    "backend": f"""
endpoint = "http://127.0.0.1:9000"
region = "us-east-1"
access_key_id = "backend-key"
secret_access_key = "{BACKEND_SECRET}"
""",
    "kms": KMS,
    "clients": [ALICE],
}
ENV = {"ALICE_SECRET": ALICE_SECRET}


def render(**sections: str | list[str] | None) -> str:
    """BASE with some sections replaced (a list is an array of tables, None drops it)."""
    merged = {**BASE, **sections}
    out = []
    for name, body in merged.items():
        if body is None:
            continue
        if isinstance(body, list):
            out += [f"[[{name}]]\n{item}" for item in body]
        else:
            out.append(f"[{name}]\n{body}")
    return "\n".join(out)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the files BASE names."""
    monkeypatch.chdir(tmp_path)
    for name in ("certs/server.pem", "certs/server-key.pem", "keyring", "passphrase"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    return tmp_path


def write(workdir: Path, text: str) -> Path:
    path = workdir / "sealgate.toml"
    path.write_text(text)
    return path


def error_of(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, ENV if env is None else env)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    # The ValidationError (which carries input values) must not ride along in a traceback.
    exc = info.value
    assert exc.__cause__ is None and (exc.__suppress_context__ or exc.__context__ is None)
    return message[len(f"{path}: ") :]


# --- the example configs ---------------------------------------------------------------------


def _copy_example(name: str, workdir: Path) -> Path:
    return Path(shutil.copy(REPO / "config" / name, workdir / name))


def test_production_example_loads(workdir: Path) -> None:
    env = {
        "SEALGATE_BACKEND_KEY_ID": "AKIAEXAMPLE",
        "SEALGATE_BACKEND_SECRET": BACKEND_SECRET,
        "SEALGATE_ALICE_SECRET": ALICE_SECRET,
        "SEALGATE_BACKUP_SECRET": "backup-secret-0123456789",
    }
    config = load_config(_copy_example("sealgate.toml", workdir), env)
    assert config.kms.provider == "aws-kms"
    assert config.backend.endpoint == "https://s3.eu-west-2.amazonaws.com"
    assert config.server.listen_address == ("0.0.0.0", 8443)
    assert config.server.tls_cert == workdir / "certs" / "server.pem"
    assert config.key_for_bucket("legacy-photos") == "alias/legacy"
    assert config.key_for_bucket("invoices") == "alias/sealgate"
    alice = config.client_by_access_key("SGALICE0000000000001")
    assert alice is not None and alice.secret_access_key.get_secret_value() == ALICE_SECRET


def test_local_example_loads(workdir: Path) -> None:
    (workdir / ".sealgate").mkdir()
    (workdir / ".sealgate" / "keyring").write_text("x")
    env = {"SEALGATE_KEYRING_PASSPHRASE": "pass phrase", "SEALGATE_DEV_SECRET": ALICE_SECRET}
    config = load_config(_copy_example("local.toml", workdir), env)
    assert config.kms.provider == "local"
    assert config.kms.keyring == workdir / ".sealgate" / "keyring"
    assert parse_address(config.backend.endpoint.split("//")[1]) == ("127.0.0.1", 9000)
    assert config.key_for_bucket("anything") == "default"


def test_example_names_its_missing_variable(workdir: Path) -> None:
    path = _copy_example("sealgate.toml", workdir)
    problem = error_of(path, {})
    assert problem == "backend.access_key_id: environment variable SEALGATE_BACKEND_KEY_ID is not set"


# --- one line per mistake --------------------------------------------------------------------

AWS_KMS = 'provider = "aws-kms"\nregion = "eu-west-2"\n'

CASES: list[tuple[str, dict[str, str | list[str] | None], str]] = [
    (
        "typo",
        {"server": SERVER.replace("listen", "listne")},
        'server.listne: unknown key (did you mean "listen"?)',
    ),
    ("unknown section", {"serverr": "x = 1\n"}, 'serverr: unknown key (did you mean "server"?)'),
    ("missing section", {"backend": None}, "backend: required"),
    (
        "misspelt section",  # the typo is named first, with its did-you-mean, not hidden behind "required"
        {"backend": None, "backendd": 'endpoint = "http://x:1"\n'},
        'backendd: unknown key (did you mean "backend"?); also backend: required',
    ),
    (
        "no port",
        {"server": 'listen = "0.0.0.0"\ntls_cert = "c"\ntls_key = "k"\n'},
        'server.listen: must be "host:port", got "0.0.0.0"',
    ),
    (
        "bad port",
        {"server": 'listen = "[::1]:70000"\ntls_cert = "c"\ntls_key = "k"\n'},
        'server.listen: port must be a number from 1 to 65535, got "70000"',
    ),
    (
        "bare ipv6",
        {"server": 'listen = "::1:8443"\ntls_cert = "c"\ntls_key = "k"\n'},
        'server.listen: IPv6 addresses need brackets, like "[::1]:8443", got "::1:8443"',
    ),
    (
        "no host",
        {"server": 'listen = ":8443"\ntls_cert = "c"\ntls_key = "k"\n'},
        'server.listen: host is missing in ":8443" (use 0.0.0.0 for all interfaces)',
    ),
    (
        "no cert",
        {"server": 'listen = "0.0.0.0:8443"\ntls_key = "k"\n'},
        "server.tls_cert: required when tls = true (the default)",
    ),
    (
        "plain only without listener",
        {"server": "tls = false\n"},
        "server.plain_http_listen: required when tls = false",
    ),
    (
        "plain only with tls keys",
        {"server": 'tls = false\nplain_http_listen = "127.0.0.1:8080"\ntls_cert = "c"\n'},
        "server.tls_cert: not used when tls = false; remove it or set tls = true",
    ),
    (
        "listeners collide",
        {"server": SERVER + 'plain_http_listen = "127.0.0.1:8443"\n'},
        "server.plain_http_listen: is the same address as listen",
    ),
    (
        "string workers",
        {"server": SERVER + 'workers = "2"\n'},
        "server.workers: must be an integer",
    ),
    (
        "zero workers",
        {"server": SERVER + "workers = 0\n"},
        "server.workers: must be greater than or equal to 1",
    ),
    (
        "bad domain",
        {"server": SERVER + 'virtual_host_domains = ["ok.example", "bad domain"]\n'},
        'server.virtual_host_domains[1]: "bad domain" is not a valid domain name',
    ),
    (
        "endpoint scheme",
        {"backend": 'endpoint = "ftp://store"\nregion = "us-east-1"\n'},
        'backend.endpoint: must be an http:// or https:// URL, got "ftp://store"',
    ),
    (
        "endpoint path",
        {"backend": 'endpoint = "https://store/bucket"\nregion = "us-east-1"\n'},
        'backend.endpoint: must be just scheme://host[:port], got "https://store/bucket"',
    ),
    (
        "half credentials",
        {"backend": 'endpoint = "http://store"\nregion = "us-east-1"\naccess_key_id = "k"\n'},
        "backend.secret_access_key: required when access_key_id is set "
        "(or leave out both to use the AWS default chain)",
    ),
    (
        "addressing style",
        {"backend": 'endpoint = "http://s"\nregion = "us-east-1"\naddressing_style = "vhost"\n'},
        'backend.addressing_style: must be "path" or "virtual"',
    ),
    (
        "ca bundle over http",
        {"backend": 'endpoint = "http://s"\nregion = "us-east-1"\nca_bundle = "ca.pem"\n'},
        "backend.ca_bundle: only used with an https:// endpoint",
    ),
    (
        "aws-kms without key",
        {"kms": AWS_KMS},
        'kms.default_key: required when provider = "aws-kms"',
    ),
    (
        "aws-kms bad key",
        {"kms": AWS_KMS + 'default_key = "sealgate"\n'},
        'kms.default_key: must be a KMS key id, key ARN or "alias/NAME", got "sealgate"',
    ),
    (
        "aws-kms with keyring",
        {"kms": AWS_KMS + 'default_key = "alias/x"\nkeyring = "k"\n'},
        'kms.keyring: only used when provider = "local"; remove it',
    ),
    (
        "unknown provider",
        {"kms": 'provider = "vault"\ndefault_key = "k"\n'},
        'kms.provider: must be "aws-kms", "local", "pkcs11" or "kmip"',
    ),
    (
        "local without keyring",
        {"kms": 'provider = "local"\ndefault_key = "k"\npassphrase_file = "p"\n'},
        'kms.keyring: required when provider = "local"',
    ),
    (
        "local without passphrase",
        {"kms": 'provider = "local"\ndefault_key = "k"\nkeyring = "k"\n'},
        'kms.passphrase_file: set passphrase_file or passphrase_env when provider = "local"',
    ),
    (
        "local with region",
        {"kms": KMS + 'region = "eu-west-2"\n'},
        'kms.region: only used when provider = "aws-kms"; remove it',
    ),
    (
        "passphrase env name",
        {"kms": 'provider = "local"\ndefault_key = "k"\nkeyring = "k"\npassphrase_env = "1X"\n'},
        'kms.passphrase_env: "1X" is not an environment variable name',
    ),
    (
        "lower-case access key id",
        {"clients": ['name = "a"\naccess_key_id = "sgalice0000000000001"\nsecret_access_key = "0123456789abcdef"\n']},
        'clients[0].access_key_id: must be 16-128 characters of A-Z and 0-9, got "sgalice0000000000001"',
    ),
    (
        "short access key id",
        {"clients": ['name = "a"\naccess_key_id = "SGSHORT"\nsecret_access_key = "0123456789abcdef"\n']},
        'clients[0].access_key_id: must be 16-128 characters of A-Z and 0-9, got "SGSHORT"',
    ),
    (
        "duplicate access key id",
        {
            "clients": [
                ALICE,
                'name = "bob"\naccess_key_id = "SGALICE0000000000001"\nsecret_access_key = "0123456789abcdef"\n',
            ]
        },
        "clients[1].access_key_id: duplicate of clients[0].access_key_id",
    ),
    ("no clients", {"clients": None}, "clients: at least one [[clients]] table is required"),
    ("clients as a table", {"clients": 'name = "a"\n'}, "clients: must be an array"),
    (
        "segment size is fixed by the format",
        {"encryption": "segment_size = 65536\n"},
        "encryption.segment_size: unknown key",
    ),
    ("etag", {"encryption": 'etag = "sha"\n'}, 'encryption.etag: must be "auto" or "md5"'),
    (
        "bucket glob",
        {"buckets": ['name = "Legacy-*"\n']},
        'buckets[0].name: must be a bucket name or glob (lower-case a-z 0-9 . - and * ? [ ]), got "Legacy-*"',
    ),
    (
        "bucket rule with a bad kms key",
        {"kms": AWS_KMS + 'default_key = "alias/x"\n', "buckets": ['name = "a"\nkey = "legacy"\n']},
        'buckets[0].key: must be a KMS key id, key ARN or "alias/NAME", got "legacy"',
    ),
    (
        "bool as string",
        {"buckets": ['name = "a"\nallow_unencrypted_reads = "yes"\n']},
        "buckets[0].allow_unencrypted_reads: must be true or false",
    ),
    (
        "more downloads per client than the pool",
        {"backend": str(BASE["backend"]) + "pool_size = 8\nstreamed_downloads_per_client = 9\n"},
        "backend.streamed_downloads_per_client: must be at most pool_size (8), got 9",
    ),
    (
        "PROXY protocol from no one",
        {"server": SERVER + "proxy_protocol = true\n"},
        "server.trusted_proxies: required when proxy_protocol = true: the balancers' networks (CIDR) that may "
        "send PROXY headers",
    ),
    (
        "trusted proxy not a network",
        {"server": SERVER + 'trusted_proxies = ["10.0.0.0/8", "balancer"]\n'},
        'server.trusted_proxies[1]: "balancer" is not a network (CIDR like "10.0.0.0/8" or an address)',
    ),
]


@pytest.mark.parametrize(("case", "sections", "expected"), CASES, ids=[c[0] for c in CASES])
def test_one_line_error_naming_the_key(
    workdir: Path, case: str, sections: dict[str, str | list[str] | None], expected: str
) -> None:
    assert error_of(write(workdir, render(**sections))) == expected


def test_short_client_secret_is_named_not_shown(workdir: Path) -> None:
    text = render(clients=['name = "a"\naccess_key_id = "SGALICE0000000000001"\nsecret_access_key = "${S}"\n'])
    problem = error_of(write(workdir, text), {"S": "tiny-PLUGH"})
    assert problem == "clients[0].secret_access_key: must be at least 16 characters"
    assert "PLUGH" not in problem


def test_credentials_in_endpoint_are_not_echoed(workdir: Path) -> None:
    text = render(backend='endpoint = "https://user:hunter2hunter2@s3.example"\nregion = "us-east-1"\n')
    problem = error_of(write(workdir, text))
    assert problem.startswith("backend.endpoint: must not contain credentials")
    assert "hunter2" not in problem


def test_missing_files_are_named(workdir: Path) -> None:
    (workdir / "certs" / "server-key.pem").unlink()
    problem = error_of(write(workdir, render()))
    assert problem == (
        f"server.tls_key: file not found: {workdir / 'certs' / 'server-key.pem'} "
        "(relative paths are resolved against the working directory)"
    )


def test_passphrase_env_must_be_set_when_it_is_the_only_source(workdir: Path) -> None:
    kms = 'provider = "local"\ndefault_key = "k"\nkeyring = "keyring"\npassphrase_env = "SG_PASS"\n'
    path = write(workdir, render(kms=kms))
    assert error_of(path) == "kms.passphrase_env: environment variable SG_PASS is not set or empty"
    assert load_config(path, {**ENV, "SG_PASS": "p"}).kms.passphrase_env == "SG_PASS"


def test_toml_syntax_error_gives_line_and_column(workdir: Path) -> None:
    problem = error_of(write(workdir, '[server]\nlisten = "0.0.0.0:8443\n'))
    assert problem.startswith("invalid TOML: ")
    assert "line 2" in problem and "column" in problem


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == f"{path}: config file not found"


def test_config_file_not_utf8(workdir: Path) -> None:
    path = workdir / "bad.toml"
    path.write_bytes(b'[server]\nlisten = "\xff"\n')
    assert error_of(path) == "not UTF-8 text"


# --- ${VAR} ----------------------------------------------------------------------------------


def test_variables_are_substituted_everywhere(workdir: Path) -> None:
    (workdir / "elsewhere").mkdir()
    (workdir / "elsewhere" / "keyring").write_text("x")
    text = render(
        server=SERVER + 'virtual_host_domains = ["${DOMAIN}"]\n',
        kms='provider = "local"\nkeyring = "${DIR}/keyring"\npassphrase_file = "passphrase"\ndefault_key = "k-${N}"\n',
    )
    env = {**ENV, "DOMAIN": "s3.example", "DIR": "elsewhere", "N": "7"}
    config = load_config(write(workdir, text), env)
    assert config.server.virtual_host_domains == ("s3.example",)
    assert config.kms.keyring == workdir / "elsewhere" / "keyring"
    assert config.kms.default_key == "k-7"
    assert config.clients[0].secret_access_key.get_secret_value() == ALICE_SECRET


def test_dollar_dollar_brace_is_a_literal(workdir: Path) -> None:
    text = render(kms=KMS.replace('"default"', '"a$${B}c$d"'))
    assert load_config(write(workdir, text), ENV).kms.default_key == "a${B}c$d"


def test_missing_variable_names_key_and_variable(workdir: Path) -> None:
    problem = error_of(write(workdir, render()), {})
    assert problem == "clients[0].secret_access_key: environment variable ALICE_SECRET is not set"


def test_malformed_reference(workdir: Path) -> None:
    text = render(kms=KMS.replace('"default"', '"${1X}"'))
    problem = error_of(write(workdir, text))
    assert problem.startswith('kms.default_key: malformed "${...}"')


def test_os_environ_is_the_default(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALICE_SECRET", ALICE_SECRET)
    config = load_config(write(workdir, render()))
    assert config.clients[0].secret_access_key.get_secret_value() == ALICE_SECRET


# --- secrets ---------------------------------------------------------------------------------


def test_secrets_never_shown(workdir: Path) -> None:
    kms = AWS_KMS + 'default_key = "alias/x"\naccess_key_id = "KMSKEYID"\nsecret_access_key = "KMS-SECRET-QUUX"\n'
    config = load_config(write(workdir, render(kms=kms)), ENV)
    for text in (repr(config), str(config), config.model_dump_json(), repr(config.model_dump())):
        for secret in (ALICE_SECRET, BACKEND_SECRET, "KMS-SECRET-QUUX", "KMSKEYID", "backend-key"):
            assert secret not in text
    assert config.kms.secret_access_key is not None
    assert config.kms.secret_access_key.get_secret_value() == "KMS-SECRET-QUUX"


def test_secret_not_in_error_about_another_key(workdir: Path) -> None:
    problem = error_of(write(workdir, render(encryption='etag = "x"\n')))
    assert ALICE_SECRET not in problem and BACKEND_SECRET not in problem


# --- typed values and helpers ----------------------------------------------------------------


def test_paths_resolve_against_the_working_directory(workdir: Path) -> None:
    sub = workdir / "config"
    sub.mkdir()
    config = load_config(write(sub, render()), ENV)
    # Relative to the cwd (workdir), not to the config file's directory (workdir/config).
    assert config.server.tls_cert == workdir / "certs" / "server.pem"
    assert config.kms.passphrase_file == workdir / "passphrase"


def test_ipv6_listen_and_plain_only_server(workdir: Path) -> None:
    text = render(server='tls = false\nplain_http_listen = "[::1]:8080"\n')
    server = load_config(write(workdir, text), ENV).server
    assert not server.tls
    assert server.plain_http_address == ("::1", 8080)
    with pytest.raises(ValueError):
        _ = server.listen_address


def test_defaults(workdir: Path) -> None:
    config = load_config(write(workdir, render()), ENV)
    assert config.server.client_max_skew_seconds == 900
    assert config.server.workers == len(os.sched_getaffinity(0))  # one per core it may use
    assert config.server.direct_body_min_bytes == 1024 * 1024
    assert config.server.plain_http_listen is None
    assert config.backend.verify_tls and config.backend.addressing_style == "path"
    assert config.encryption.etag == "auto"
    assert config.buckets == ()


def test_presign_max_seconds(workdir: Path) -> None:
    assert load_config(write(workdir, render()), ENV).server.presign_max_seconds == 604800  # a week
    config = load_config(write(workdir, render(server=SERVER + "presign_max_seconds = 3600\n")), ENV)
    assert config.server.presign_max_seconds == 3600
    for bad, problem in (("0", "must be greater than or equal to 1"), ('"1h"', "must be an integer")):
        text = render(server=SERVER + f"presign_max_seconds = {bad}\n")
        assert error_of(write(workdir, text)) == f"server.presign_max_seconds: {problem}"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),  # no cgroup files: the affinity alone
        ({"cpu.max": "max 100000\n"}, None),  # v2 without a quota
        ({"cpu.max": "50000 100000\n"}, 1),  # v2, half a CPU: one worker
        ({"cpu.max": "150000 100000\n"}, 2),  # v2, 1.5 CPUs: rounded up
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, none
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1, one CPU
    ],
)
def test_default_workers_respect_a_cpu_quota(tmp_path: Path, files: dict[str, str], expected: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(tmp_path) == (affinity if expected is None else min(affinity, expected))


def test_frozen(workdir: Path) -> None:
    config = load_config(write(workdir, render()), ENV)
    with pytest.raises(ValidationError):
        field = "workers"
        setattr(config.server, field, 4)


def test_helpers(workdir: Path) -> None:
    text = render(
        clients=[
            ALICE,
            'name = "bob"\naccess_key_id = "SGBOB000000000000001"\nsecret_access_key = "0123456789abcdef"\n',
        ],
        buckets=[
            'name = "legacy-keep"\n',
            'name = "legacy-*"\nkey = "old"\nallow_unencrypted_reads = true\n'
            'unencrypted_before = "2026-01-31T00:00:00Z"\n',
            'name = "logs-[0-9]*"\nkey = "logs"\n',
        ],
    )
    config = load_config(write(workdir, text), ENV)
    bob = config.client_by_access_key("SGBOB000000000000001")
    assert bob is not None and bob.name == "bob"
    assert config.client_by_access_key("SGNOBODY000000000001") is None
    # First match wins: the specific rule shadows the glob after it.
    keep = config.rule_for_bucket("legacy-keep")
    assert keep is not None and keep.key is None and not keep.allow_unencrypted_reads
    assert config.key_for_bucket("legacy-keep") == "default"
    legacy = config.rule_for_bucket("legacy-photos")
    assert legacy is not None and legacy.allow_unencrypted_reads
    assert config.key_for_bucket("legacy-photos") == "old"
    assert config.key_for_bucket("logs-2024") == "logs"
    assert config.rule_for_bucket("logs-x") is None
    assert config.key_for_bucket("other") == "default"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:8443", ("0.0.0.0", 8443)),
        ("[::]:8443", ("::", 8443)),
        ("localhost:1", ("localhost", 1)),
        ("sealgate.internal:65535", ("sealgate.internal", 65535)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["8443", "host:0", "host:x", "[nope]:1", "bad host:1", "[::1]"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_model_validate_without_a_file() -> None:
    """The models work on plain dicts too (no file checks), e.g. for generated configs."""
    config = Config.model_validate(
        {
            "server": {"tls": False, "plain_http_listen": "127.0.0.1:8080"},
            "backend": {"endpoint": "https://s3.example/", "region": "eu-west-2"},
            "kms": {"provider": "aws-kms", "default_key": "alias/sealgate"},
            "clients": [{"name": "a", "access_key_id": "SGA0000000000000001", "secret_access_key": "x" * 16}],
        }
    )
    assert config.backend.endpoint == "https://s3.example"
    assert config.kms.region is None


# --- asymmetric aws-kms keys and encrypt-only keys ----------------------------------------------

RSA_ARN = "arn:aws:kms:eu-west-2:111122223333:key/11111111-2222-3333-4444-555555555555"


def test_rsa_keys_and_encrypt_only_mode(workdir: Path) -> None:
    kms = AWS_KMS + f'default_key = "{RSA_ARN}"\nrsa_keys = ["{RSA_ARN}"]\n'
    keys = [f'id = "{RSA_ARN}"\nencrypt = ["alice"]\nmode = "encrypt-only"\n']
    config = load_config(write(workdir, render(kms=kms, keys=keys)), ENV)
    assert config.kms.rsa_keys == (RSA_ARN,)
    # Stored references of RSA KMS keys are marked; the policy still names them by ARN.
    assert config.encrypt_only(f"kms-rsa:{RSA_ARN}")
    assert config.encrypt_only(RSA_ARN)
    assert not config.encrypt_only("arn:aws:kms:eu-west-2:111122223333:key/other")
    assert config.may_use_key("alice", "encrypt", f"kms-rsa:{RSA_ARN}")
    assert not config.may_use_key("alice", "decrypt", f"kms-rsa:{RSA_ARN}")


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        (
            {"kms": AWS_KMS + 'default_key = "alias/a"\nrsa_keys = ["not a key"]\n'},
            "kms.rsa_keys[0]: must be a KMS key id",
        ),
        ({"kms": KMS + 'rsa_keys = ["alias/a"]\n'}, 'kms.rsa_keys: only used when provider = "aws-kms"'),
        ({"keys": ['id = "default"\nmode = "write-only"\n']}, 'keys[0].mode: must be "read-write" or "encrypt-only"'),
    ],
)
def test_rsa_keys_and_mode_errors(workdir: Path, sections: dict[str, str | list[str]], expected: str) -> None:
    assert expected in error_of(write(workdir, render(**sections)))


# --- [[policies]] ------------------------------------------------------------------------------

FULL = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'


def _policy(body: str, name: str = "p1", principals: str = '["alice"]') -> str:
    return f'name = "{name}"\nprincipals = {principals}\n{body}\n'


def test_policies_load_from_text_and_file(workdir: Path) -> None:
    (workdir / "home.json").write_text(
        '{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "s3:GetObject",'
        ' "Resource": "arn:aws:s3:::home/${aws:username}/*"}}'
    )
    text = render(policies=[_policy(f"document = '{FULL}'"), _policy('file = "home.json"', name="p2")])
    config = load_config(write(workdir, text), ENV)
    assert [p.name for p in config.policies] == ["p1", "p2"]
    assert [p.name for p in config.policies_for("alice") or ()] == ["p1", "p2"]
    assert config.policies_for("nobody") == ()


def test_without_policies_nothing_is_enforced(workdir: Path) -> None:
    assert load_config(write(workdir, render()), ENV).policies_for("alice") is None


def test_policy_documents_are_not_environment_substituted(workdir: Path) -> None:
    doc = FULL.replace('"Resource": "*"', '"Resource": "arn:aws:s3:::b/${aws:username}/*"')
    config = load_config(write(workdir, render(policies=[_policy(f"document = '{doc}'")])), ENV)
    assert config.policies[0].document is not None and "${aws:username}" in config.policies[0].document


@pytest.mark.parametrize(
    ("body", "principals", "expected"),
    [
        ("document = '{\"Statement\": '", '["alice"]', 'policies[0].document: policy "p1"'),
        (
            'document = \'{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",'
            ' "Resource": "*"}, {"Sid": "Two", "Effect": "Allow", "Action": "s3:PutObjekt", "Resource": "*"}]}\'',
            '["alice"]',
            'statement "Two"',
        ),
        (
            'document = \'{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",'
            ' "Resource": "*", "Condition": {"StringEquals": {"s3:nosuchkey": "x"}}}]}\'',
            '["alice"]',
            "statement #1",
        ),
        (f"document = '{FULL}'\nfile = \"x.json\"", '["alice"]', "give exactly one of document"),
        ('file = "missing.json"', '["alice"]', "policies[0].file: file not found"),
        (f"document = '{FULL}'", '["alcie"]', 'policies[0].principals[0]: no [[clients]] entry is named "alcie"'),
        (f"document = '{FULL}'", '["group:nope"]', 'no [[clients]] entry is in group "nope"'),
        (f"document = '{FULL}'", "[]", "policies[0].principals: must name at least one"),
    ],
)
def test_policy_mistakes_are_start_up_errors(workdir: Path, body: str, principals: str, expected: str) -> None:
    message = error_of(write(workdir, render(policies=[_policy(body, principals=principals)])))
    assert expected in message, message


def test_duplicate_policy_names(workdir: Path) -> None:
    text = render(policies=[_policy(f"document = '{FULL}'"), _policy(f"document = '{FULL}'")])
    assert "policies[1].name: duplicate of policies[0].name" in error_of(write(workdir, text))


MIGRATION = 'name = "legacy-*"\nallow_unencrypted_reads = true\n'


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            MIGRATION,
            "buckets[0].unencrypted_before: required when allow_unencrypted_reads = true: the cut-over, an RFC 3339 "
            'time such as "2026-01-31T00:00:00Z"; objects without an envelope written after it are refused',
        ),
        (
            MIGRATION + 'unencrypted_before = "2026-01-31"\n',
            'buckets[0].unencrypted_before: must be an RFC 3339 time with a zone, such as "2026-01-31T00:00:00Z", '
            "got '2026-01-31'",
        ),
        (
            MIGRATION + 'unencrypted_before = "2026-01-31T00:00:00"\n',
            'buckets[0].unencrypted_before: must be an RFC 3339 time with a zone, such as "2026-01-31T00:00:00Z", '
            "got '2026-01-31T00:00:00'",
        ),
        (
            MIGRATION + 'unencrypted_before = "31 Jan 2026 00:00:00 GMT"\n',
            "buckets[0].unencrypted_before: must be an RFC 3339 time with a zone",
        ),
        (
            MIGRATION + 'unencrypted_before = "2026-02-30T00:00:00Z"\n',
            "buckets[0].unencrypted_before: is not a valid time: '2026-02-30T00:00:00Z'",
        ),
        # A TOML local date-time (no quotes, no zone) is parsed by TOML, but has no zone.
        (
            MIGRATION + "unencrypted_before = 2026-01-31T00:00:00\n",
            'buckets[0].unencrypted_before: must give its zone (such as "Z" or "+02:00"), got 2026-01-31T00:00:00',
        ),
        (MIGRATION + "unencrypted_before = 1769817600\n", "buckets[0].unencrypted_before: must be an RFC 3339 time"),
        (
            'name = "a"\nunencrypted_before = "2026-01-31T00:00:00Z"\n',
            "buckets[0].unencrypted_before: only used when allow_unencrypted_reads = true; remove it",
        ),
    ],
)
def test_migration_needs_a_cut_over(workdir: Path, rule: str, expected: str) -> None:
    message = error_of(write(workdir, render(buckets=[rule])))
    assert message.startswith(expected), message


@pytest.mark.parametrize(
    ("value", "utc"),
    [
        ('"2026-01-31T00:00:00Z"', "2026-01-31T00:00:00+00:00"),
        ('"2026-01-31t01:30:00.25+01:30"', "2026-01-31T00:00:00.250000+00:00"),
        ('"2026-01-31 02:00:00+02:00"', "2026-01-31T00:00:00+00:00"),
        ("2026-01-31T00:00:00-00:00", "2026-01-31T00:00:00+00:00"),  # a TOML offset date-time
    ],
)
def test_cut_over_is_an_aware_time(workdir: Path, value: str, utc: str) -> None:
    config = load_config(write(workdir, render(buckets=[MIGRATION + f"unencrypted_before = {value}\n"])), ENV)
    rule = config.rule_for_bucket("legacy-photos")
    assert rule is not None and rule.unencrypted_before is not None
    assert rule.unencrypted_before.astimezone(UTC).isoformat() == utc
