"""What ``qdispatch serve`` can be told: :class:`ServiceConfig`, read by the CLI and by
:func:`~qdispatch.server.app.create_app`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ServiceConfig:
    """Everything ``qdispatch serve`` can be told."""

    db: Path
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    executor: str = "local"
    scheduler_address: str | None = None
    threads_per_worker: int = 1
    max_active_jobs: int | None = None
    max_request_bytes: int = 64 * 1024 * 1024
    heartbeat_seconds: float = 10.0
    max_attempts: int = 3
    state_file: Path | None = None
    local_user: str | None = None
    idle_timeout: float | None = None
    programs_dir: Path | None = None
    #: TLS: the certificate chain and private key (PEM) the service serves HTTPS/WSS with
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    #: plain HTTP on a non-loopback address, for a TLS-terminating proxy in front
    plaintext: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        """Whether the service itself speaks TLS."""
        return self.ssl_certfile is not None

    @property
    def url(self) -> str:
        """The service's base URL (IPv6 addresses in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def plaintext_refusal(self) -> str | None:
        """Why the service must not start as configured: plain HTTP on a non-loopback
        address (tokens, circuits and results would cross the network in clear) unless
        the operator said ``--plaintext``; ``None`` when it may start."""
        if self.tls or self.loopback or self.plaintext:
            return None
        return (
            f"refusing to serve plain HTTP on {self.host}: tokens, circuits and results "
            "would cross the network in clear. Give --ssl-certfile CERT --ssl-keyfile KEY, "
            "or --plaintext if a TLS-terminating proxy is in front of this service"
        )

    @property
    def loopback(self) -> bool:
        """Whether the service listens on a loopback address only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
