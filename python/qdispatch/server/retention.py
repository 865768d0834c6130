"""Retention inside the service: ``qdispatch serve --retention 30d``.

:class:`Retention` deletes the finished jobs (DONE, ERROR, CANCELLED) that ended longer ago
than the retention, with their events, inputs, results and tags, and the ended sessions
left without jobs: shortly after the service starts, then every ``SWEEP_EVERY`` seconds.

It runs on the service's own store, on the event loop like every other use of it, one
small transaction of at most ``SWEEP_BATCH`` jobs at a time
(:meth:`~qdispatch.server.store.Store.sweep_finished`), and gives the loop back between
two of them, so requests and dispatch wait at most one batch. It never opens a second
connection to the store: closing one would drop the POSIX locks of the service's own
connection, which is how SQLite databases get corrupted.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from ..constants import utc_iso, utcnow
from .store import Store

log = logging.getLogger(__name__)

SWEEP_EVERY = 600.0  # seconds between two sweeps
FIRST_SWEEP_AFTER = 5.0  # seconds after the service has started
SWEEP_BATCH = 100  # jobs looked at (and at most deleted) per transaction


class Retention:
    """Deletes the store's finished jobs older than ``seconds``, periodically."""

    def __init__(
        self,
        store: Store,
        seconds: float,
        every: float = SWEEP_EVERY,
        first_after: float = FIRST_SWEEP_AFTER,
        batch: int = SWEEP_BATCH,
    ) -> None:
        if seconds <= 0:
            raise ValueError("the retention must be positive")
        self.store = store
        self.seconds = seconds
        self.every = every
        self.first_after = first_after
        self.batch = batch
        self.deleted = 0  # jobs deleted since the service started
        self.last_sweep: str | None = None  # when the last sweep ended (UTC ISO)
        self.last_deleted = 0  # jobs the last sweep deleted

    def start(self) -> asyncio.Task[None]:
        """Start sweeping in the background; cancel the task to stop."""
        return asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        await asyncio.sleep(self.first_after)
        while True:
            try:
                await self.sweep()
            except Exception:  # one failed sweep (a lock held too long) must not end them
                log.exception("the retention sweep failed; trying again in %.0f s", self.every)
            await asyncio.sleep(self.every)

    async def sweep(self) -> int:
        """One sweep: delete what ended before now minus the retention; answers how many
        jobs it deleted."""
        cutoff = utc_iso(datetime.now(timezone.utc) - timedelta(seconds=self.seconds))
        deleted = 0
        for count in self.store.sweep_finished(cutoff, self.batch):
            deleted += count
            await asyncio.sleep(0)  # between two transactions: let everyone else in
        self.deleted += deleted
        self.last_deleted = deleted
        self.last_sweep = utcnow()
        if deleted:
            # At the default log level: deleting users' jobs is something operators look
            # for in the log.
            log.warning("retention: deleted %d finished jobs that ended before %s", deleted, cutoff)
        return deleted

    def state(self) -> dict[str, Any]:
        """What ``GET /info`` shows: the retention, and what the sweeps have deleted."""
        return {
            "seconds": self.seconds,
            "sweep_every": self.every,
            "last_sweep": self.last_sweep,
            "last_deleted": self.last_deleted,
            "deleted": self.deleted,
        }
