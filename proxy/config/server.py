"""``[server]``: the listeners, TLS, timeouts and limits; the worker count defaults to the cores available."""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from proxy.config.values import HOSTNAME, ConfigPath, Invalid, Section, check_address, parse_address


def _cgroup_cpu_limit(root: Path) -> float | None:
    """The CPUs a cgroup quota allows this process (a container's ``--cpus``): cgroup v2's
    ``cpu.max``, else v1's CFS quota and period; None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use, 1 to 256: its CPU affinity (a cpuset) where the OS has
    one, and no more than a cgroup CPU quota allows, rounded up."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS: no affinity API
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup)
    if limit is not None and limit > 0:
        cores = min(cores, math.ceil(limit))
    return max(1, min(cores, 256))


class ServerConfig(Section):
    """``[server]``: where sealgate listens.

    TLS is on unless the file says ``tls = false``. With TLS on, ``listen``, ``tls_cert`` and
    ``tls_key`` are required and ``plain_http_listen`` may add a second, unencrypted listener.
    With ``tls = false`` only ``plain_http_listen`` is served, and ``listen`` / ``tls_cert`` /
    ``tls_key`` must not be set. A plain-only server is therefore always a written-down
    decision, never the side effect of a forgotten certificate path.
    """

    listen: StrictStr | None = None
    tls: StrictBool = True
    tls_cert: ConfigPath | None = None
    tls_key: ConfigPath | None = None
    plain_http_listen: StrictStr | None = None
    client_max_skew_seconds: StrictInt = Field(default=900, ge=1, le=3600)
    #: Longest lifetime of a presigned URL: a SigV2 URL whose Expires is further ahead is refused,
    #: and so is a SigV4 X-Amz-Expires above it (SigV4's are never more than 604800, seven days).
    presign_max_seconds: StrictInt = Field(default=604800, ge=1)
    #: Processes sharing the listening port; by default one per core this process may use
    #: (CPU affinity, capped by a cgroup CPU quota).
    workers: StrictInt = Field(default_factory=available_cores, ge=1, le=256)
    #: A client body that sends nothing for this long is cut off (nothing is stored).
    body_stall_timeout_seconds: StrictInt = Field(default=60, ge=1, le=3600)
    #: Plaintext that verify-first reads of S3 Encryption Client objects (held whole until their
    #: GCM tag has checked) may hold at once in this process, shared by all its connections; a
    #: read that does not fit within a second gets 503 SlowDown. Objects larger than this are
    #: treated as above the verify-first limit. A reader that takes nothing of the response for
    #: ``body_stall_timeout_seconds`` is cut off and its share returned. 128 MiB: two objects at
    #: the 64 MiB verify-first limit at once, per worker process.
    verify_first_memory_bytes: StrictInt = Field(default=128 * 1024 * 1024, ge=1)
    #: Request bodies at least this long are read straight off the connection, past aiohttp's
    #: parser (fewer copies; see proxy/server/direct.py); the connection then carries on, unless
    #: the body ended early. 0 turns this off.
    direct_body_min_bytes: StrictInt = Field(default=1024 * 1024, ge=0)
    #: Idle keep-alive connections are closed after this long.
    keepalive_timeout_seconds: StrictInt = Field(default=75, ge=1, le=3600)
    #: Longest request line or header line, and most header fields, accepted.
    max_header_bytes: StrictInt = Field(default=16384, ge=1024, le=1048576)
    max_headers: StrictInt = Field(default=128, ge=16, le=4096)
    #: Host suffixes for virtual-hosted-style requests (``bucket.<domain>``).
    virtual_host_domains: tuple[StrictStr, ...] = ("localhost",)
    #: Mutual TLS: clients must present a certificate issued by this CA (PEM bundle).
    tls_client_ca: ConfigPath | None = None
    #: How often the certificate, key and client CA files are checked for changes (0: only on
    #: SIGHUP). A changed set that does not load is logged and the running one kept.
    tls_reload_seconds: float = Field(default=5.0, ge=0, le=3600)
    #: The TLS handshake, and each request's headers, must be complete within this long
    #: (counted from the connection, or from the first byte of a request on a kept-alive one).
    header_timeout_seconds: float = Field(default=15.0, gt=0, le=3600)
    #: Open client connections per process; at the cap sealgate stops accepting until one closes.
    max_connections: StrictInt = Field(default=1024, ge=1, le=1_000_000)
    #: On SIGTERM: how long requests in flight may still run before their connections are cut.
    shutdown_timeout_seconds: float = Field(default=30.0, ge=0, le=3600)
    #: Connections not yet authenticated (no request on them has passed SigV4 verification:
    #: health and admin paths, CORS preflights, bad signatures) may hold this many of the
    #: ``max_connections`` slots; the rest stay for authenticated ones. Default: half.
    anonymous_connections: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    #: Of those, at most this many from one source address (IPv4 address, IPv6 /64); 0: no such
    #: cap (behind a proxy that hides client addresses). Default: 64, or the anonymous share if less.
    anonymous_connections_per_address: StrictInt | None = Field(default=None, ge=0, le=1_000_000)
    #: An anonymous connection waiting this long for a request (its first or the next) is closed.
    anonymous_idle_timeout_seconds: float = Field(default=5.0, gt=0, le=3600)
    #: A request body must bring at least this many bytes per second sealgate waits for it,
    #: averaged over each span of ``body_stall_timeout_seconds`` (0: only the stall timeout
    #: applies): a trickle that keeps just inside the stall timeout would hold its connections,
    #: and for a streamed upload a backend connection, for hours.
    body_min_bytes_per_second: StrictInt = Field(default=1024, ge=0, le=1024**3)
    #: A client reading an object must take at least this many bytes per second sealgate waits
    #: for it, averaged over each span of ``download_grace_seconds`` (0: no such limit): a slow
    #: reader holds its download's backend connection as long as it reads.
    download_min_bytes_per_second: StrictInt = Field(default=1024, ge=0, le=1024**3)
    download_grace_seconds: float = Field(default=30.0, ge=1, le=3600)
    #: s3ec-v3 multipart uploads in progress whose GCM stream state this process holds, and how
    #: many of them one client may have (default: a sixteenth of the total), so that one client
    #: cannot take them all.
    s3ec_uploads: StrictInt = Field(default=4096, ge=1, le=1_000_000)
    s3ec_uploads_per_client: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    #: Who may read ``/-/metrics`` (traffic volumes, key-use counts) and the reasons ``/-/readyz``
    #: gives: source networks (CIDR). Others get 403 from metrics and only ready / not ready.
    #: Add the Prometheus scraper's network (a pod CIDR on Kubernetes).
    metrics_allow: tuple[StrictStr, ...] = ("127.0.0.0/8", "::1/128")
    #: Balancers and proxies (CIDR) whose connections may say whom they carry: a PROXY protocol
    #: header, and ``X-Forwarded-For`` (the right-most address in it that is not one of these
    #: is the client), are believed from them only. The client's address is then what the access
    #: and audit logs show, ``aws:SourceIp`` and ``metrics_allow`` check and the per-address
    #: connection cap counts.
    trusted_proxies: tuple[StrictStr, ...] = ()
    #: Every connection to the public listener (``listen``; ``plain_http_listen`` when
    #: ``tls = false``) starts with a PROXY protocol header, v1 or v2, from ``trusted_proxies``
    #: (HAProxy ``send-proxy-v2``, nginx ``proxy_protocol on``); others are closed.
    proxy_protocol: StrictBool = False

    _check_listen = field_validator("listen", "plain_http_listen")(check_address)

    @field_validator("virtual_host_domains")
    @classmethod
    def _check_domains(cls, domains: tuple[str, ...]) -> tuple[str, ...]:
        for i, domain in enumerate(domains):
            if not HOSTNAME.match(domain):
                raise Invalid((i,), f'"{domain}" is not a valid domain name')
        return domains

    @field_validator("metrics_allow", "trusted_proxies")
    @classmethod
    def _check_networks(cls, networks: tuple[str, ...]) -> tuple[str, ...]:
        for i, text in enumerate(networks):
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise Invalid((i,), f'"{text}" is not a network (CIDR like "10.0.0.0/8" or an address)') from None
        return networks

    def metrics_allowed(self, address: str | None) -> bool:
        """Whether a client at `address` may read metrics and readiness details."""
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.metrics_allow)

    @model_validator(mode="after")
    def _check_listeners(self) -> ServerConfig:
        if self.tls:
            for key in ("listen", "tls_cert", "tls_key"):
                if getattr(self, key) is None:
                    raise Invalid((key,), "required when tls = true (the default)")
        else:
            if self.plain_http_listen is None:
                raise Invalid(("plain_http_listen",), "required when tls = false")
            for key in ("listen", "tls_cert", "tls_key", "tls_client_ca"):
                if getattr(self, key) is not None:
                    raise Invalid((key,), "not used when tls = false; remove it or set tls = true")
        plain = self.plain_http_listen
        if self.tls and plain is not None and parse_address(plain) == self.listen_address:
            raise Invalid(("plain_http_listen",), "is the same address as listen")
        if self.proxy_protocol and not self.trusted_proxies:
            raise Invalid(
                ("trusted_proxies",),
                "required when proxy_protocol = true: the balancers' networks (CIDR) that may send PROXY headers",
            )
        self._check_shares()
        return self

    def _check_shares(self) -> None:
        if self.anonymous_connections is not None and self.anonymous_connections > self.max_connections:
            raise Invalid(
                ("anonymous_connections",),
                f"must be at most max_connections ({self.max_connections}), got {self.anonymous_connections}",
            )
        per_address = self.anonymous_connections_per_address
        if per_address is not None and per_address > self.anonymous_share:
            raise Invalid(
                ("anonymous_connections_per_address",),
                f"must be at most the anonymous share ({self.anonymous_share}: anonymous_connections, "
                f"or half of max_connections), got {per_address}",
            )
        per_client = self.s3ec_uploads_per_client
        if per_client is not None and per_client > self.s3ec_uploads:
            raise Invalid(
                ("s3ec_uploads_per_client",),
                f"must be at most s3ec_uploads ({self.s3ec_uploads}), got {per_client}",
            )

    @property
    def anonymous_share(self) -> int:
        """Slots connections not yet authenticated may hold (``anonymous_connections``, default half)."""
        if self.anonymous_connections is not None:
            return self.anonymous_connections
        return max(1, self.max_connections // 2)

    @property
    def anonymous_per_address(self) -> int:
        """Anonymous connections one source address may hold (0: no cap)."""
        if self.anonymous_connections_per_address is not None:
            return self.anonymous_connections_per_address
        return min(64, self.anonymous_share)

    @property
    def s3ec_uploads_quota(self) -> int:
        """s3ec-v3 uploads in progress one client may have in this process."""
        if self.s3ec_uploads_per_client is not None:
            return self.s3ec_uploads_per_client
        return max(1, self.s3ec_uploads // 16)

    @property
    def listen_address(self) -> tuple[str, int]:
        """``(host, port)`` of the TLS listener."""
        if self.listen is None:
            raise ValueError("no TLS listener configured (tls = false)")
        return parse_address(self.listen)

    @property
    def plain_http_address(self) -> tuple[str, int]:
        """``(host, port)`` of the plain-HTTP listener."""
        if self.plain_http_listen is None:
            raise ValueError("no plain-HTTP listener configured")
        return parse_address(self.plain_http_listen)
