"""What every handler needs, built once per process and kept on the aiohttp Application."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.backend import Backend
from proxy.config import Config
from proxy.kms.materials import Materials


@dataclass
class Gateway:
    """The proxy's shared state: parsed config, backend client and key materials."""

    config: Config
    backend: Backend
    materials: Materials
