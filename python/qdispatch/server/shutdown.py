"""A graceful stop on SIGTERM or SIGINT: :class:`GracefulServer`, the uvicorn server that
``qdispatch serve`` runs.

The first signal:

1. the scheduler starts no more jobs, and the drain deadline is set (``drain_timeout``
   seconds from the signal); every ``/stream`` WebSocket is closed with 1001;
2. uvicorn stops listening and lets the requests in flight finish (up to its graceful
   timeout): a ``POST /jobs`` answers 2xx only once its job is committed to the store,
   and one cut off before that leaves nothing behind;
3. the running jobs finish and their outcomes are stored, until none runs or the deadline;
4. jobs still running are stopped and requeued (the run does not count as an attempt),
   the workers are stopped, outcomes the store refused are tried a few times more and
   then spooled beside the store (:mod:`qdispatch.server.spool`); the store is closed.

A second signal, at any point, ends the waiting at once: the requests still in flight are
cut, the running jobs are requeued, the outcomes are tried once more and spooled. Either
way the process exits with status 0 once every job is stored, requeued or spooled (and
not by re-raising the signal, as uvicorn would).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from .service import Service

log = logging.getLogger(__name__)


class GracefulServer(uvicorn.Server):
    """uvicorn's server for ``app`` (made by :func:`~qdispatch.server.app.create_app`),
    with the service's drain woven into its shutdown."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    def _service(self) -> Service | None:
        # Set by the application's lifespan once it has started.
        service = getattr(self._app.state, "service", None)
        return service if isinstance(service, Service) else None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving; remember the loop, which the signal handler hands work to."""
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first SIGTERM/SIGINT begins the graceful stop; a second ends it at once."""
        self._captured_signals.append(sig)
        if self.should_exit:
            # uvicorn would skip the application's shutdown on a second Ctrl-C; the jobs
            # must still be requeued and the outcomes kept: only the waiting is cut short.
            self.force_exit = True
            service = self._service()
            if service is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(service.hurry)
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain the jobs alongside the requests, then stop the application."""
        service = self._service()
        if service is not None:
            await service.begin_shutdown()
        await super().shutdown(sockets)
        if service is not None and not service.stopped:
            # A second signal made uvicorn skip the lifespan's shutdown: the requests still
            # in flight are cut, and the application's shutdown runs anyway.
            for task in self.server_state.tasks:
                task.cancel()
            await self.lifespan.shutdown()
        # The exit status is the service's to say (``qdispatch serve`` returns it), not
        # a re-raised SIGTERM's.
        self._captured_signals.clear()

    @property
    def clean(self) -> bool:
        """Whether the service stopped having stored, requeued or spooled every job."""
        service = self._service()
        report = service.stop_report if service is not None else None
        return report is not None and not report.lost
