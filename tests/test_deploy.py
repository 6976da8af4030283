"""The deployment recipes in deploy/ stay true to the code: their configs are valid sealgate
configs, their YAML parses, and the probes and ports they name are sealgate's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from proxy.config import Config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _valid(text: str) -> Config:
    # ${VARS} stand for secrets the recipe passes in; any value of the right shape will do.
    filled = re.sub(r"\$\{[A-Z_]+\}", "x" * 24, text)
    return Config.model_validate(tomllib.loads(filled))


def test_kubernetes_recipe() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "sealgate.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    config = _valid(kinds["ConfigMap"]["data"]["sealgate.toml"])
    assert kinds["Deployment"]["spec"]["replicas"] >= 2
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    (ingress,) = kinds["NetworkPolicy"]["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": config.server.listen_address[1]}]
    assert config.server.listen_address[1] == 8443
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthz"
    # Secrets as sealgate accepts them: readable by the pod's group only.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    assert all(v["secret"]["defaultMode"] == 0o440 for v in pod["volumes"] if "secret" in v)


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
def test_kubernetes_manifests_match_the_kubernetes_schemas(version: str) -> None:
    """Strict: a misspelt or misplaced field is an error, not something kubectl drops."""
    for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "sealgate.yaml").read_text()):
        kubernetes_validate.validate(doc, version, strict=True)


def test_compose_recipe() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    assert {"minio", "sealgate"} <= set(compose["services"])
    config = _valid((DEPLOY / "compose" / "sealgate.toml").read_text())
    assert config.backend.endpoint == "http://minio:9000"


def test_balancer_recipes_check_readiness_and_pass_tls_through() -> None:
    haproxy = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert "mode tcp" in haproxy and "GET /-/readyz" in haproxy
    nginx = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "stream {" in nginx and "ssl_certificate" not in nginx


def test_dockerfile_is_pinned_and_checks_the_configured_listener() -> None:
    dockerfile = (DEPLOY.parent / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert re.fullmatch(r"python:[\w.-]+@sha256:[0-9a-f]{64}", base), base
    # `sealgate health` asks the port $SEALGATE_CONFIG names, not a fixed address.
    assert 'CMD ["sealgate", "health"]' in dockerfile and "127.0.0.1" not in dockerfile
    assert "ENV SEALGATE_CONFIG=" in dockerfile and "USER sealgate" in dockerfile


def _commented_config(recipe: str) -> Config:
    """The ``[server]`` settings a balancer recipe tells the replicas to use, as a whole config."""
    lines = [line.removeprefix("#").strip() for line in recipe.splitlines() if line.startswith("#   ")]
    server = "\n".join(line for line in lines if "=" in line and not line.startswith("["))
    base = (DEPLOY / "compose" / "sealgate.toml").read_text()
    return _valid(base.replace("[server]\n", f"[server]\n{server}\n", 1))


def test_balancer_recipes_pass_client_addresses_as_sealgate_reads_them() -> None:
    haproxy = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert "send-proxy-v2" in haproxy and "check-send-proxy" in haproxy  # health checks too
    nginx = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "proxy_protocol on;" in nginx
    for recipe in (haproxy, nginx):
        server = _commented_config(recipe).server
        assert server.proxy_protocol and server.trusted_proxies == ("10.0.0.5/32",)
