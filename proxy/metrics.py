"""Prometheus metrics, served on /-/metrics: requests, bytes, latency, KMS calls, cache use."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "sealgate_requests_total", "S3 requests by operation and HTTP status.", ["operation", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "sealgate_request_seconds",
    "Time to the end of the response, by operation.",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
BYTES_IN = Counter("sealgate_plaintext_bytes_received_total", "Object bytes received from clients.", registry=REGISTRY)
BYTES_OUT = Counter("sealgate_response_bytes_sent_total", "Response body bytes sent to clients.", registry=REGISTRY)
ACTIVE = Gauge("sealgate_requests_in_flight", "Requests being served now.", registry=REGISTRY)
CONNECTIONS = Gauge("sealgate_connections_open", "Client connections open now.", registry=REGISTRY)
KMS_CALLS = Counter(
    "sealgate_keyring_calls_total",
    "Keyring / KMS calls by operation and outcome.",
    ["operation", "outcome"],
    registry=REGISTRY,
)
KEY_CACHE = Counter(
    "sealgate_key_cache_total",
    "Data-key cache lookups by kind (shared, unwrapped) and result.",
    ["kind", "result"],
    registry=REGISTRY,
)

BACKEND_RETRIES = Counter(
    "sealgate_backend_retries_total",
    "Backend requests sent again after a connection failure or a 500/502/503/504.",
    registry=REGISTRY,
)


def render() -> bytes:
    """The text exposition of every metric."""
    out: bytes = generate_latest(REGISTRY)
    return out


_finished: dict[tuple[str, int], tuple[Any, Any]] = {}


def request_finished(operation: str, status: int, seconds: float) -> None:
    """Count one request and its latency; the labelled series are looked up once per
    (operation, status) rather than per request (prometheus_client's `labels` is not free)."""
    series = _finished.get((operation, status))
    if series is None:
        series = _finished[(operation, status)] = (REQUESTS.labels(operation, str(status)), LATENCY.labels(operation))
    series[0].inc()
    series[1].observe(seconds)
