"""Connections before they are requests: a deadline on request headers, and the number
of open files the service may hold.

Everything the front door does (``front.py``) starts once a request's headers are in. A
client that opens connections and never finishes its headers (slowloris) is not yet a
request: without a deadline each such connection would be held for as long as the client
liked, and enough of them would use up the process's file descriptors for everyone.
:func:`header_deadline_protocol` gives uvicorn's HTTP protocol a deadline: a connection
whose request headers are not complete ``timeout`` seconds after it opened (or after the
request's first byte, for the later requests of a kept-alive connection) is closed.
Idle kept-alive connections are closed by uvicorn's own ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


class _HeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers."""

    header_timeout: float = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info(
                "closed a connection from %s: no complete request headers within %g s",
                self.client,
                self.header_timeout,
            )
            self.transport.close()


def header_deadline_protocol(timeout: float) -> type[Any]:
    """uvicorn's HTTP protocol class, closing connections whose request headers take
    longer than ``timeout`` seconds."""
    return type("HeaderDeadlineProtocol", (_HeaderDeadline,), {"header_timeout": timeout})


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files towards ``wanted`` (never above the
    hard limit); answers the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise the open files limit from %d to %d", soft, target)
    return soft
