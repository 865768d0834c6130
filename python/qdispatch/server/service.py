"""The service's state, shared by every route: :class:`Service`.

One ``Service`` per application, built by the lifespan of
:func:`~qdispatch.server.app.create_app`: the store, the backends' catalog and the
native checks made from it, the event hub, the program registry, the scheduler with its
executor, and the sessions. :meth:`Service.start` and :meth:`Service.stop` are its life
cycle: recover jobs left over from a previous run, start dispatching, and (for a service
on loopback) write the state file that local clients find it by. :meth:`Service.begin_shutdown`
(on the first SIGTERM/SIGINT) and :meth:`Service.hurry` (on the second) drive a graceful
stop; :mod:`qdispatch.server.shutdown` says in which order.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import orjson

from .. import __version__
from ..constants import utcnow
from ..storelock import this_host
from . import backends as bk
from .access import Access
from .config import ServiceConfig
from .executors import MESSAGE_OVERHEAD_BYTES, DaskExecutor, Executor, LocalExecutor
from .metrics import Metrics
from .programs import Limits, Registry
from .programs.checker import InputChecker, user_running
from .retention import Retention
from .scheduler import Scheduler, StopReport
from .sessions import Sessions
from .spool import Spool
from .store import Job, Store
from .stream import Hub

log = logging.getLogger(__name__)

# The store's meta key of the paused backends (a JSON list).
_PAUSED = "paused_backends"
# How long a stop waits for the streams to be closed (1001) before the connections go.
_STREAMS_CLOSE_WAIT = 1.0
# Tries (after the first) to store an outcome the store refused, at stop, before spooling.
_SETTLE_TRIES = 3


def spool_path(db: Path) -> Path:
    """Where outcomes the store refused at stop wait for the next start: beside the store."""
    return Path(f"{db}.spool")


class Service:
    """State shared by the routes: the store, the backends, the scheduler, the hub."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.store = Store(config.db, config.max_store_bytes)
        self.access = Access(
            self.store.user_for_token,
            rate=config.rate_limit,
            burst=config.rate_burst,
            max_uploads=config.max_uploads,
            max_uploads_per_user=config.max_uploads_per_user,
            max_streams_per_user=config.max_streams_per_user,
        )
        self.catalog = bk.catalog()
        self.specs = {name: bk.native_spec(defn) for name, defn in self.catalog.items()}
        self.input_checker = InputChecker(
            config.programs_dir,
            config.check_processes,
            memory_bytes=config.check_memory_bytes,
            user_running=user_running(config.check_processes),
            user_checks=config.max_checks_per_user,
        )
        self.hub = Hub(self.visible)
        self.programs = Registry.discover(config.programs_dir)
        self.scheduler = Scheduler(
            self.store,
            self.hub,
            self._executor(),
            config.max_attempts,
            self.programs.ref,
            dedicated_share=config.dedicated_share,
            max_result_bytes=config.max_result_bytes,
            max_event_bytes=config.max_job_event_bytes or None,
            spool=Spool(spool_path(config.db)),
            max_user_store_bytes=config.max_user_store_bytes or None,
            shard_min_pubs=config.shard_min_pubs,
            shard_max_pubs=config.shard_max_pubs,
        )
        self.sessions = Sessions(self.store, self.scheduler, config.session_idle_timeout)
        self.retention = Retention(self.store, config.retention) if config.retention else None
        self.metrics = Metrics(self.store, self.scheduler, lambda: self.catalog, config.executor)
        self.hub.observe(self.metrics.observe)
        #: backend → id of its properties snapshot in the store (noisy devices only)
        self.properties_ids: dict[str, int] = {}
        self.last_request = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._state_written = False
        # A graceful stop: when the drain ends (time.monotonic()), and the second signal.
        self._drain_deadline: float | None = None
        self._hurry = asyncio.Event()
        #: what the stop did with unfinished jobs (``None`` until it has stopped)
        self.stop_report: StopReport | None = None

    def _executor(self) -> Executor:
        if self.config.executor == "local":
            return LocalExecutor(
                self.config.workers,
                self.config.threads_per_worker,
                self.config.job_time_limit,
                memory_mb=self.config.worker_memory_mb or 0,
                max_message_bytes=self.config.max_result_bytes + MESSAGE_OVERHEAD_BYTES,
            )
        if self.config.executor == "dask":
            return DaskExecutor(
                self.config.scheduler_address,
                self.config.threads_per_worker,
                self.config.job_time_limit,
                cluster=self.config.dask_cluster,
                min_workers=self.config.dask_min_workers,
                max_workers=self.config.dask_max_workers,
                demand=self._dask_demand,
                on_capacity=self._capacity_changed,
                insecure=self.config.dask_insecure,
            )
        raise ValueError(f"unknown executor {self.config.executor!r} (local, dask)")

    def _dask_demand(self) -> int:
        """Job slots the Dask cluster should have: every job queued or running, but
        those queued for a paused backend (they will not start)."""
        paused = sum(self.scheduler.pending_jobs(backend) for backend in self.scheduler.paused)
        return self.scheduler.active_jobs() - paused

    def _capacity_changed(self) -> None:
        # Called by the executor, which is made before the scheduler: the scheduler
        # exists by the time the cluster's capacity first changes (at start).
        self.scheduler.wake()

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Snapshot the backends' properties, expire the sessions that ran out while the
        service was down, recover and start dispatching, then write the state file and
        start the idle watchdog (when configured)."""
        self.calibrate()
        # An operator's pause outlives a restart: a queue paused for maintenance must not
        # start jobs because the service was restarted.
        self.scheduler.paused.update(orjson.loads(self.store.meta(_PAUSED, "[]") or "[]"))
        self._tasks.append(self.sessions.watch_deadlines())  # before any job is dispatched
        requeued, failed = await self.scheduler.start()
        if requeued or failed:
            log.warning(
                "recovered after restart: %d requeued, %d failed", len(requeued), len(failed)
            )
        if self.retention is not None:
            self._tasks.append(self.retention.start())
        if self.config.state_file:
            self._state_written = self._write_state()
        if self.config.idle_timeout:
            self._tasks.append(asyncio.get_running_loop().create_task(self._stop_when_idle()))

    async def begin_shutdown(self) -> None:
        """The first step of a graceful stop (the first SIGTERM or SIGINT): no job starts
        any more, running jobs have ``drain_timeout`` seconds from now to finish, and every
        event stream is closed with 1001 (waiting up to a second for the close frames to
        go out). Requests already being served go on."""
        if self._drain_deadline is not None:
            return
        timeout = self.config.drain_timeout
        self._drain_deadline = time.monotonic() + timeout
        for task in self._tasks:
            task.cancel()  # the idle watchdog must not signal again meanwhile
        self.scheduler.begin_drain()
        running = self.scheduler.health()["running_jobs"]
        log.warning(
            "stopping: no new job starts; %d running jobs have %g s to finish "
            "(a second SIGTERM or Ctrl-C requeues them at once)",
            running,
            timeout,
        )
        self.hub.going_away()
        deadline = time.monotonic() + _STREAMS_CLOSE_WAIT
        while self.hub.subscriptions() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def hurry(self) -> None:
        """End the drain at once (the second SIGTERM or SIGINT): jobs still running are
        requeued, and outcomes the store refuses are spooled after one more try."""
        if not self._hurry.is_set():
            log.warning("stopping now: running jobs are requeued")
        self._hurry.set()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` has run."""
        return self.stop_report is not None

    async def stop(self) -> None:
        """Drain (see :meth:`begin_shutdown`; begun here if no signal began it), then
        requeue the jobs still running, store or spool the outcomes held in memory, close
        the store, and remove the state file if it is still this process's."""
        await self.begin_shutdown()
        assert self._drain_deadline is not None
        for task in reversed(self._tasks):
            task.cancel()
        await self.scheduler.drain(self._drain_deadline, self._hurry)
        tries = 1 if self._hurry.is_set() else _SETTLE_TRIES
        report = await self.scheduler.stop(settle_tries=tries)
        self.stop_report = report
        log.warning(
            "stopped: %d jobs finished while draining, %d requeued, %d outcomes spooled, "
            "%d outcomes lost",
            report.finished,
            len(report.requeued),
            len(report.spooled),
            len(report.lost),
        )
        self.input_checker.close()
        self.store.close()
        state_file = self.config.state_file
        if self._state_written and state_file and state_file.exists():
            with contextlib.suppress(OSError):
                if orjson.loads(state_file.read_bytes()).get("pid") == os.getpid():
                    state_file.unlink()

    def calibrate(self) -> None:
        """Snapshot each noisy device's properties, dated when this store first saw them."""
        for name, defn in self.catalog.items():
            key = f"calibration_date:{name}"
            date = self.store.meta(key)
            if date is None:
                date = utcnow()
                self.store.set_meta(key, date)
            props = bk.properties(defn, datetime.fromisoformat(date.replace("Z", "+00:00")))
            if props is not None:
                self.properties_ids[name] = self.store.properties_snapshot(
                    name, orjson.dumps(props), props["last_update_date"]
                )

    async def _stop_when_idle(self) -> None:
        """Stop the service (as SIGTERM would) once it has had no job queued or running,
        no stream open and no request for ``idle_timeout`` seconds: the local service
        started by ``qdispatch.connect()`` goes away by itself when nobody needs it."""
        timeout = self.config.idle_timeout or 0.0
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            busy = self.scheduler.active_jobs() or self.hub.subscriptions()
            if busy:
                self.last_request = time.monotonic()
            elif time.monotonic() - self.last_request > timeout:
                log.warning("idle for %.0f s: stopping", timeout)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def _write_state(self) -> bool:
        """Write the state file local clients find the service by (url, token, pid), mode
        0600."""
        config = self.config
        assert config.state_file is not None
        token = None
        if config.loopback:
            # One local user, with a fresh token each start: clients read it from this
            # file. Tokens of earlier starts are revoked: only the state file's is valid.
            # No live service is left holding one: this process holds the store's lock
            # (one service per store), and local clients of the earlier one re-read this
            # file when their token is refused or their service is gone.
            user = config.local_user or getpass.getuser()
            self.store.revoke_tokens(user, origin="state-file")
            token = self.store.create_token(user, origin="state-file")
        state = {
            "url": config.url,
            "token": token,
            "pid": os.getpid(),
            # A loopback URL means nothing on another host (a shared home directory).
            "host": this_host(),
            "db": str(config.db),
            "version": __version__,
            "started": utcnow(),
        }
        path = config.state_file
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # O_CREAT keeps the mode of a file already there
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(state))
        os.replace(tmp, path)
        return True

    # -- what the routes and the stream share -------------------------------------------

    def visible(self, user: str, project: str | None, job: Job) -> bool:
        """Whether ``user`` (of ``project``) may see ``job``: its owner, anyone for a
        ``global`` job, the owner's project for a ``project`` one."""
        if job.owner == user or job.share_level == "global":
            return True
        if job.share_level != "project" or project is None:
            return False
        return self.store.project_of(job.owner) == project

    def limits(self, backend: str) -> Limits:
        """What one job on ``backend`` may ask for (docs/service.md, "Limits")."""
        return Limits(
            backend,
            self.catalog[backend].max_shots,
            self.config.max_job_shots,
            self.config.max_result_bytes,
        )

    def pause(self, backend: str, paused: bool) -> None:
        """Pause or resume ``backend``'s queue, durably."""
        self.scheduler.pause(backend, paused)
        self.store.set_meta(_PAUSED, orjson.dumps(sorted(self.scheduler.paused)).decode())

    def backend_names(self) -> str:
        """The catalog's backends, as error messages list them."""
        return ", ".join(sorted(self.catalog))
