"""Queues and dispatch: one queue per backend, fair share between users.

Jobs wait in per-backend, per-user FIFO queues. Whenever the executor has a free slot the
scheduler takes the head of the user queue that ranks first by fair share, over all
backends (the workers are shared): the user with the fewest jobs running goes first, then
the one who has used the least execution time lately (usage decays with a half-life of
``USAGE_HALF_LIFE`` seconds), then the one whose next job is oldest. One user's ten
thousand jobs therefore never starve another user's one.

The queues come in two tiers: jobs of ``dedicated`` sessions wait in the first, every
other job in the second. A dedicated session's jobs go first on a share of the workers
only, so that they can never starve anyone else: with ``capacity`` workers and a
``dedicated_share`` ``s`` (0 to 1), ``priority_slots = floor(s * capacity)``. When a slot
is free and fewer than ``priority_slots`` jobs of the first tier are running, the next job
is the first tier's, by the fair-share rule among its users (two users' dedicated
sessions share fairly). Otherwise the next job is the one that ranks first by fair share
among the jobs of both tiers, so the other ``capacity - priority_slots`` workers serve
everyone, and a dedicated session's jobs never wait longer than they would without a
session. With 2 workers and ``s = 0.5`` a dedicated session's jobs keep one worker
busy ahead of the queue, and the other runs the rest by fair share (the session's owner
already having a job running, others go first there); with 1 worker and ``s = 0.5``
sessions take no slot ahead of others; ``s = 1`` gives them every worker, as before this
rule, and lets a session starve the others. A session's mode never changes, and its
queued jobs leave the queue when it is cancelled or expires, so a job's tier is fixed
when it is queued.

Queue positions follow the same rule, simulated: the slots free up as the running jobs'
estimated ends come (the earliest first) and each queued job takes the estimated time of
its experiments, so a dedicated session's priority slot is taken again each time its
job ends; the fair-share counts of the simulation only grow (as if each job ahead were
still running when the next starts), and only the backend's own queue is simulated (the
workers' other jobs count while they run). Estimated start times are the simulated ones,
from the execution rate measured per backend (an exponential moving average of seconds
per experiment, kept in the store so that it survives restarts). A job whose result, as
encoded, is larger than ``max_result_bytes`` ends ``ERROR`` with ``result_too_large``,
its result not stored.

Faults (docs/service.md, "Faults"): a slot is held exactly while a job's task lives — it
is freed by the task's done callback, which runs even for a task cancelled before it
started. The dispatch loop survives errors (it logs, backs off and goes on); an outcome
that cannot be stored is kept and stored again later, never dropped; a job whose worker
died or whose executor lost it is requeued until it has been tried ``max_attempts`` times.
A watchdog checks every few seconds that each held slot belongs to a live job.

Stopping (docs/service.md, "Faults"): :meth:`Scheduler.begin_drain` stops dispatching,
:meth:`Scheduler.drain` waits (up to a deadline) for the running jobs to finish and their
outcomes to be stored, and :meth:`Scheduler.stop` requeues what still runs, tries the
outcomes the store refused a few more times and writes those it still refuses to the
:class:`~qdispatch.server.spool.Spool`, which the next :meth:`Scheduler.start` stores
before it dispatches anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from .. import _native
from .. import codes as E
from ..constants import CANCELLED, DONE, ERROR, FINAL_STATUSES, QUEUED, RUNNING
from .errors import StorageFull
from .executors import Executor, Outcome, Task, time_limit_outcome
from .programs import ProgramRef, sharding
from .shards import SHARD_MIN_PUBS, ShardedJob, ShardSpan, plan
from .spool import Spool
from .store import Event, Job, Store, compress
from .stream import Hub

log = logging.getLogger(__name__)

USAGE_HALF_LIFE = 600.0
_DEFAULT_RATE = 0.002  # seconds per experiment until a backend has been measured
_RATE_WEIGHT = 0.2
#: What one interim result or log line costs against a job's event budget
#: (``max_event_bytes``) besides its payload: 64 MiB holds at most ~262,000 events.
EVENT_OVERHEAD_BYTES = 256
WATCHDOG_INTERVAL = 5.0  # seconds between the watchdog's checks and retries of outcomes
_MAX_BACKOFF = 30.0  # the longest the dispatch loop waits after an error
_SETTLE_PAUSE = 0.5  # seconds before the 2nd try at stop to store a refused outcome (then 2x…)
# A result larger than this is checked and compressed in a worker thread.
_BIG_RESULT = 1024 * 1024


# Tiers of queues: the first goes ahead of the second on ``priority_slots`` workers.
_DEDICATED = 0  # jobs of dedicated sessions
_SHARED = 1  # every other job

# backend → user → FIFO of that user's jobs for the backend
_Queues = dict[str, dict[str, "deque[_Queued]"]]
# A finished job's error (or None) and its result, compressed.
_Prepared = tuple[dict[str, Any] | None, bytes]
# One reading of the clocks queue estimates are made from: (time.monotonic(), UTC now).
Clock = tuple[float, datetime]


def now() -> Clock:
    """The clocks read once, for :meth:`Scheduler.queue_info` of several jobs."""
    return time.monotonic(), datetime.now(timezone.utc)


@dataclass
class _Queued:
    job_id: str
    owner: str
    backend: str
    n_experiments: int
    order: int  # arrival order, for fairness ties and for "oldest head first"
    tier: int
    #: a shard of a sharded job (``job_id`` is then the shard's key, ``parent`` the job's)
    shard: int | None = None
    parent: str | None = None


@dataclass
class _Running:
    owner: str
    backend: str
    n_experiments: int
    started: float
    session_id: str | None = None
    kind: str = "circuit"
    tier: int = _SHARED
    task: asyncio.Task[None] | None = None
    cancelled: bool = False
    on_worker: bool = False
    recorded: bool = False  # RUNNING is in the store (and the attempt counted)
    released: bool = False  # its slot has been given back
    event_bytes: int = 0  # interim results and log lines stored for it so far
    #: with ``quota_bound``, what those may reach instead of the per-job budget: what was
    #: left of the owner's storage quota as the job started, when that is less
    event_limit: int | None = None
    quota_bound: bool = False
    shard: int | None = None  # the slot of a sharded job's shard (keyed by its shard key)


@dataclass
class StopReport:
    """What :meth:`Scheduler.stop` did with the jobs it found unfinished: ``requeued`` ran
    past the drain and are QUEUED again, ``spooled`` had outcomes the store refused that
    are now in the spool, ``lost`` had outcomes that could be neither stored nor spooled
    (their jobs stay RUNNING in the store, and the next start requeues them)."""

    finished: int = 0  # jobs that finished while the scheduler drained
    requeued: list[str] = field(default_factory=list)
    spooled: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


class Scheduler:
    """Owns the queues and the executor; every status change goes through here."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        executor: Executor,
        max_attempts: int = 3,
        programs: Callable[[str], ProgramRef | None] | None = None,
        watchdog_interval: float = WATCHDOG_INTERVAL,
        dedicated_share: float = 0.5,
        max_result_bytes: int | None = None,
        max_event_bytes: int | None = None,
        spool: Spool | None = None,
        max_user_store_bytes: int | None = None,
        shard_min_pubs: int = SHARD_MIN_PUBS,
        shard_max_pubs: int = sharding.SHARD_MAX_PUBS,
    ):
        self.store = store
        self.shard_min_pubs = shard_min_pubs
        self.shard_max_pubs = shard_max_pubs
        # Jobs running as shards (docs/service.md, "Sharding"), by job id.
        self._sharded: dict[str, ShardedJob] = {}
        # Tasks merging and storing a sharded job whose last shard has given back its slot.
        self._finishing: set[asyncio.Task[None]] = set()
        self.hub = hub
        self.executor = executor
        self.max_attempts = max_attempts
        self.dedicated_share = dedicated_share
        self.max_result_bytes = max_result_bytes
        self.max_event_bytes = max_event_bytes
        self.max_user_store_bytes = max_user_store_bytes
        self._programs = programs or (lambda program_id: None)
        self._tiers: tuple[_Queues, _Queues] = (defaultdict(dict), defaultdict(dict))
        self._queued: dict[str, _Queued] = {}
        self._running: dict[str, _Running] = {}
        self._running_per_user: dict[str, int] = defaultdict(int)
        self._usage: dict[str, tuple[float, float]] = {}  # user -> (seconds, as of when)
        self._arrivals = itertools.count()
        self._rates: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._watchdog_interval = watchdog_interval
        # Outcomes the store refused (job id → what to store), retried by the watchdog.
        self._unsettled: dict[str, tuple[_Running, Outcome, _Prepared | None]] = {}
        self._order_cache: dict[str, tuple[int, dict[str, tuple[int, float]]]] = {}
        self._version = 0
        # The job being submitted, with its inputs, while submit() dispatches: _start takes
        # them from here rather than from the store.
        self._fresh: tuple[Job, bytes | None] | None = None
        # Where outcomes the store still refuses at stop are kept for the next start.
        self._spool = spool
        self._draining = False
        self._finished_in_drain = 0
        #: backends an operator paused: their jobs queue, none starts
        self.paused: set[str] = set()

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> tuple[list[str], list[str]]:
        """Store the outcomes spooled by the last stop, recover after a restart, load the
        queues from the store, start dispatching."""
        self._settle_spooled()  # before recovery would requeue their jobs
        requeued, failed = self.store.recover(self.max_attempts)
        for job_id in requeued + failed:
            job = self.store.job(job_id)
            if job is not None:
                self.hub.publish(job, self.store.events_since(job_id, job.last_seq - 1))
        for job in self.store.jobs_with_status(QUEUED):
            self._enqueue(job)
        await self.executor.start()
        loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._dispatch_loop())
        self._watchdog_task = loop.create_task(self._watchdog())
        return requeued, failed

    def begin_drain(self) -> None:
        """Start no more jobs (queued ones stay QUEUED in the store, for the next start);
        jobs on workers run on. A job still waiting for a free worker stops waiting: it
        never left QUEUED in the store."""
        self._draining = True
        for running in list(self._running.values()):
            if not running.on_worker and running.task is not None:
                running.task.cancel()
        self._changed()

    async def drain(self, deadline: float, hurry: asyncio.Event) -> int:
        """Wait until no job runs, the ``time.monotonic()`` ``deadline`` passes or
        ``hurry`` is set; outcomes are stored as jobs finish meanwhile. Returns how many
        jobs still run."""
        if not self._draining:
            self.begin_drain()
        hurried = asyncio.ensure_future(hurry.wait())
        try:
            while (self._running or self._finishing) and not hurry.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.wait({hurried}, timeout=min(left, 0.05))
        finally:
            hurried.cancel()
        return len(self._running)

    async def stop(self, settle_tries: int = 1) -> StopReport:
        """Stop dispatching and the jobs that still run: they are requeued without counting
        the run as an attempt (the service's stop is not the job's fault; a crash leaves
        them RUNNING, and the next start requeues them counting it). Outcomes the store
        refused are tried ``settle_tries`` times more, pausing between tries; those it
        still refuses go to the spool (if there is one) for the next start."""
        report = StopReport(finished=self._finished_in_drain)
        self._draining = True
        for background in (self._watchdog_task, self._loop_task):
            if background:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        running = list(self._running.items())
        tasks = [r.task for _, r in running if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Sharded jobs whose shards are all in are being merged and stored: let them end.
        await asyncio.gather(*self._finishing, return_exceptions=True)
        await self.executor.close()
        unfinished = [
            (sharded.job_id, sharded.parent)
            for sharded in self._sharded.values()
            if not sharded.ended and not sharded.parent.cancelled
        ]
        self._sharded.clear()
        for job_id, run in [*((k, r) for k, r in running if r.shard is None), *unfinished]:
            if run.on_worker and not run.cancelled and run.recorded:
                try:
                    self.store.set_status(
                        job_id,
                        QUEUED,
                        step="REQUEUED",
                        note="the service stopped before the job finished",
                        attempts_delta=-1,
                    )
                except Exception:  # it stays RUNNING: the next start requeues it
                    log.exception("could not requeue job %s at stop", job_id)
                else:
                    report.requeued.append(job_id)
        for attempt in range(settle_tries):
            if not self._unsettled:
                break
            if attempt:
                await asyncio.sleep(_SETTLE_PAUSE * 2 ** (attempt - 1))
            self._retry_unsettled()
        self._spool_unsettled(report)
        return report

    def _spool_unsettled(self, report: StopReport) -> None:
        """Write the outcomes the store still refuses to the spool (or say they are lost:
        their jobs stay RUNNING in the store and run again after the next start)."""
        for job_id, (running, outcome, prepared) in list(self._unsettled.items()):
            if self._spool is None:
                log.error("the outcome of job %s could not be stored and is lost", job_id)
                report.lost.append(job_id)
                continue
            header, blob = self._spool_form(job_id, running, outcome, prepared)
            try:
                path = self._spool.put(job_id, header, blob)
            except Exception:
                log.exception("the outcome of job %s could be neither stored nor spooled", job_id)
                report.lost.append(job_id)
                continue
            log.warning("the store refused the outcome of job %s: spooled to %s", job_id, path)
            report.spooled.append(job_id)
            del self._unsettled[job_id]

    def _spool_form(
        self, job_id: str, running: _Running, outcome: Outcome, prepared: _Prepared | None
    ) -> tuple[dict[str, Any], bytes | None]:
        """An unsettled outcome as a spool file's header and blob: what :meth:`_finish`
        needs, with the result already in its stored form (a result over the limit as
        the error it becomes, so the limit of this run decides, not the next's)."""
        if (
            outcome.status == "done"
            and outcome.result is not None
            and prepared is None
            and self._too_large(outcome.result)
        ):
            outcome = Outcome(
                "error",
                error=_too_large_error(len(outcome.result), self.max_result_bytes)["message"],
                seconds=outcome.seconds,
                code=E.RESULT_TOO_LARGE,
                timings=outcome.timings,
            )
        header = {
            "version": 1,
            "job_id": job_id,
            "status": outcome.status,
            "error": outcome.error,
            "code": outcome.code,
            "seconds": outcome.seconds,
            "timings": outcome.timings,
            "transient": outcome.transient,
            "kind": running.kind,
            "backend": running.backend,
            "n_experiments": running.n_experiments,
            "on_worker": running.on_worker,
            "prepared": prepared is not None,
            "result_error": prepared[0] if prepared is not None else None,
        }
        return header, (prepared[1] if prepared is not None else None)

    def _settle_spooled(self) -> None:
        """Store the outcomes the last stop spooled; a spool file goes once its outcome is
        stored, or when its job has ended otherwise. One the store refuses again stays,
        and its job is requeued by recovery (it runs again)."""
        if self._spool is None:
            return
        for job_id, header, blob in self._spool.entries():
            try:
                job = self.store.job(job_id)
                if job is None or job.status in FINAL_STATUSES:
                    self._spool.remove(job_id)  # deleted, or ended by a later run
                    continue
                outcome = Outcome(
                    header["status"],
                    error=header.get("error"),
                    seconds=float(header.get("seconds") or 0.0),
                    code=header.get("code") or "execution_failed",
                    timings=header.get("timings"),
                    transient=bool(header.get("transient")),
                )
                prepared = (header.get("result_error"), blob or b"") if header["prepared"] else None
                running = _Running(
                    job.owner,
                    header.get("backend") or job.backend,
                    int(header.get("n_experiments") or job.n_experiments),
                    time.monotonic(),
                    session_id=job.session_id,
                    kind=header.get("kind") or job.kind,
                    on_worker=bool(header.get("on_worker")),
                    recorded=job.status == RUNNING,
                    released=True,  # it holds no slot here
                )
                if running.on_worker and outcome.status != "cancelled":
                    self._record_start(job_id, running)
                self._finish(job_id, running, outcome, prepared)
            except Exception:
                log.exception(
                    "could not store the spooled outcome of job %s; it stays in %s",
                    job_id,
                    self._spool.path,
                )
                continue
            self._spool.remove(job_id)
            log.warning("stored the outcome of job %s spooled by the last stop", job_id)

    # -- queueing -----------------------------------------------------------------------

    def submit(self, job: Job, inputs: bytes | None = None) -> None:
        """Queue a job the store has just accepted and, if a worker is free, start it now:
        the worker has it while the answer to its ``POST`` is on its way (a small job's
        round trip, docs/service.md). ``inputs`` are the job's inputs as stored, which
        the store would otherwise be asked for again."""
        self._enqueue(job)
        self._fresh = (job, inputs)
        try:
            self._dispatch()
        except Exception:
            # The job is stored and queued: the dispatch loop, woken by _enqueue, retries.
            log.exception("dispatching at the submission of job %s failed", job.id)
        finally:
            self._fresh = None

    def _enqueue(self, job: Job) -> None:
        if job.id in self._queued or job.id in self._running or job.id in self._sharded:
            return  # already here (the watchdog found it while its route was queueing it)
        dedicated = job.session_id and self.store.session_mode(job.session_id) == "dedicated"
        tier = _DEDICATED if dedicated else _SHARED
        entry = _Queued(
            job.id, job.owner, job.backend, job.n_experiments, next(self._arrivals), tier
        )
        self._tiers[tier][job.backend].setdefault(job.owner, deque()).append(entry)
        self._queued[job.id] = entry
        self._changed()

    def pause(self, backend: str, paused: bool) -> None:
        """Pause (no queued job of ``backend`` starts; running ones finish) or resume it."""
        if paused:
            self.paused.add(backend)
        else:
            self.paused.discard(backend)
        self._changed()

    def wake(self) -> None:
        """Dispatch again: the executor's capacity changed (a Dask cluster's workers came
        or went, its scheduler was lost or is back)."""
        self._changed()

    def _changed(self) -> None:
        self._version += 1
        self._wake.set()

    def active_jobs(self) -> int:
        """How many jobs are queued or running, on every backend."""
        return len(self._queued) + len(self._running)

    def active_jobs_of(self, user: str) -> int:
        """How many of ``user``'s jobs are queued or running, on every backend (a job
        running as shards counts once)."""
        queued = sum(
            1
            for tier in self._tiers
            for b in tier
            for entry in tier[b].get(user, ())
            if entry.shard is None
        )
        running = sum(1 for r in self._running.values() if r.owner == user and r.shard is None)
        sharded = sum(1 for s in self._sharded.values() if s.owner == user)
        return queued + running + sharded

    def priority_slots(self) -> int:
        """How many workers the jobs of dedicated sessions may take ahead of other jobs:
        ``floor(dedicated_share * capacity)``."""
        # The epsilon keeps 0.3 * 10 at 3 where floating point says 2.9999999999999996.
        return math.floor(self.dedicated_share * self.executor.capacity + 1e-9)

    def _dedicated_running(self) -> int:
        return sum(1 for r in self._running.values() if r.tier == _DEDICATED)

    def pending_jobs(self, backend: str) -> int:
        """How many jobs wait in ``backend``'s queue (shards of running jobs are not)."""
        return sum(
            1
            for tier in self._tiers
            for q in tier.get(backend, {}).values()
            for entry in q
            if entry.shard is None
        )

    def _recent_usage(self, user: str, now: float) -> float:
        seconds, since = self._usage.get(user, (0.0, now))
        return seconds * 0.5 ** ((now - since) / USAGE_HALF_LIFE)

    def _charge(self, user: str, seconds: float) -> None:
        now = time.monotonic()
        self._usage[user] = (self._recent_usage(user, now) + seconds, now)

    def _fair_order(self, backend: str) -> dict[str, tuple[int, float]]:
        """Every queued job of ``backend`` → (1-based position in dispatch order, its
        estimated start as a ``time.monotonic()`` value), by the simulation the module's
        docstring describes. Cached until the queues next change."""
        cached = self._order_cache.get(backend)
        if cached and cached[0] == self._version:
            return cached[1]
        now = time.monotonic()
        # Slots as (when it frees, tie-break, whether its job is a dedicated session's).
        slots = [
            (now + max(0.0, self._rate(r.backend) * r.n_experiments - (now - r.started)), i, r.tier)
            for i, r in enumerate(self._running.values())
        ]
        ticket = itertools.count(len(slots))
        free = max(1, self.executor.capacity) - len(slots)
        slots += [(now, next(ticket), _SHARED) for _ in range(free)]
        heapq.heapify(slots)
        dedicated_running = sum(1 for slot in slots if slot[2] == _DEDICATED)
        priority = self.priority_slots()
        rate = self._rate(backend)
        running = dict(self._running_per_user)
        usage: dict[str, float] = {}
        queues = {
            (tier, user): queue
            for tier, users in enumerate(self._tiers)
            for user, queue in users.get(backend, {}).items()
            if queue
        }
        taken = dict.fromkeys(queues, 0)  # how many of each queue the simulation has started
        first: list[tuple[int, float, int, str, int]] = []  # heads of the dedicated tier
        anyone: list[tuple[int, float, int, str, int]] = []  # heads of both tiers

        def push(tier: int, user: str) -> None:
            queue, index = queues[(tier, user)], taken[(tier, user)]
            if index < len(queue):
                if user not in usage:
                    usage[user] = self._recent_usage(user, now)
                key = (running.get(user, 0), usage[user], queue[index].order, user, tier)
                heapq.heappush(anyone, key)
                if tier == _DEDICATED:
                    heapq.heappush(first, key)

        def pop(heads: list[tuple[int, float, int, str, int]]) -> tuple[int, str] | None:
            while heads:
                n_running, _, order, user, tier = heapq.heappop(heads)
                queue, index = queues[(tier, user)], taken[(tier, user)]
                if index >= len(queue) or queue[index].order != order:
                    continue  # started already, through the other heap
                if n_running != running.get(user, 0):
                    # The user has started a job since (counts only grow): rank it again.
                    key = (running.get(user, 0), usage[user], order, user, tier)
                    heapq.heappush(heads, key)
                    continue
                return tier, user
            return None

        for tier, user in queues:
            push(tier, user)
        order: dict[str, tuple[int, float]] = {}
        while anyone:
            free_at, _, freed_tier = heapq.heappop(slots)
            if freed_tier == _DEDICATED:
                dedicated_running -= 1
            picked = pop(first) if dedicated_running < priority else None
            picked = picked or pop(anyone)
            if picked is None:
                break
            tier, user = picked
            entry = queues[picked][taken[picked]]
            taken[picked] += 1
            order[entry.job_id] = (len(order) + 1, free_at)
            running[user] = running.get(user, 0) + 1
            if tier == _DEDICATED:
                dedicated_running += 1
            heapq.heappush(slots, (free_at + rate * entry.n_experiments, next(ticket), tier))
            push(tier, user)
        self._order_cache[backend] = (self._version, order)
        return order

    def _best(self, tiers: tuple[int, ...], now: float) -> _Queued | None:
        """The head that ranks first by fair share among the queues of ``tiers``; the
        queues of paused backends are skipped."""
        best: _Queued | None = None
        best_key: tuple[int, float, int] | None = None
        for tier in tiers:
            for backend, users in self._tiers[tier].items():
                if backend in self.paused:
                    continue
                for user, queue in users.items():
                    if not queue:
                        continue
                    key = (
                        self._running_per_user.get(user, 0),
                        self._recent_usage(user, now),
                        queue[0].order,
                    )
                    if best_key is None or key < best_key:
                        best, best_key = queue[0], key
        return best

    def _next(self) -> _Queued | None:
        now = time.monotonic()
        if self._dedicated_running() < self.priority_slots():
            best = self._best((_DEDICATED,), now)
            if best is not None:
                return best
        return self._best((_DEDICATED, _SHARED), now)

    def _dequeue(self, entry: _Queued) -> None:
        users = self._tiers[entry.tier][entry.backend]
        queue = users[entry.owner]
        queue.remove(entry)
        if not queue:
            del users[entry.owner]
        del self._queued[entry.job_id]
        self._changed()

    # -- dispatch and completion --------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        # Supervised: an error (a store that cannot be read) is logged and dispatch goes
        # on after a pause, doubling up to _MAX_BACKOFF while it keeps failing.
        backoff = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._dispatch()
                backoff = 0.1
            except Exception:
                log.exception("dispatching failed; trying again in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                self._wake.set()

    def _dispatch(self) -> None:
        while not self._draining and len(self._running) < self.executor.capacity:
            entry = self._next()
            if entry is None:
                break
            self._dequeue(entry)
            try:
                self._start(entry)
            except Exception:
                self._put_back(entry)
                raise

    def _limit_events(self, job: Job, running: _Running, quota_left: int | None) -> None:
        """Sets what ``job``'s events may still cost. The budget is the job's, not an
        attempt's: a requeued job (a lost worker, a restart) starts with what its earlier
        attempts published; and it is what is left of the owner's quota when that is less."""
        if job.attempts:
            running.event_bytes = self.store.event_bytes(job.id, EVENT_OVERHEAD_BYTES)
        budget = self.max_event_bytes
        if quota_left is not None and (budget is None or quota_left < budget):
            running.event_limit, running.quota_bound = running.event_bytes + quota_left, True

    def _storage_left(self, owner: str) -> int | None:
        """What ``owner`` may still store under their quota (``None``: no quota)."""
        if not self.max_user_store_bytes:
            return None
        return self.max_user_store_bytes - self.store.stored_bytes(owner)

    def _put_back(self, entry: _Queued) -> None:
        """Return an entry that could not be started to the head of its queue."""
        users = self._tiers[entry.tier][entry.backend]
        users.setdefault(entry.owner, deque()).appendleft(entry)
        self._queued[entry.job_id] = entry
        self._changed()

    def _start(self, entry: _Queued) -> None:
        if entry.shard is not None:
            self._start_shard(entry)
            return
        fresh = self._fresh
        inputs: bytes | None = None
        if fresh is not None and fresh[0].id == entry.job_id:
            job: Job | None
            job, inputs = fresh
        else:
            job = self.store.job(entry.job_id)
        if job is None or job.status != QUEUED:
            return
        quota_left = self._storage_left(job.owner)
        if quota_left is not None and quota_left <= 0:
            # Admitted under the quota, but jobs before it have filled it since: it would
            # store a result and events on top. It ends here, saying why; its inputs stay.
            message = (
                f"user '{job.owner}' stores as much as their storage quota of "
                f"{self.max_user_store_bytes} bytes allows (reached by jobs that ran after "
                "this one was submitted); delete finished jobs and submit it again"
            )
            events = self.store.set_status(
                job.id, ERROR, error={"code": E.STORAGE_QUOTA, "message": message}
            )
            self._publish(job.id, events)
            return
        program = None
        if job.kind == "program":
            program = self._programs(job.program_id or "")
            if program is None:  # registered when it was submitted, gone since a restart
                message = f"program '{job.program_id}' is no longer registered on this service"
                events = self.store.set_status(
                    job.id, ERROR, error={"code": "unknown_program", "message": message}
                )
                self._publish(job.id, events)
                return
        spans = self._shard_plan(job, program)
        if program is not None and spans:
            self._start_sharded(job, entry, program, spans, quota_left, inputs)
            return
        # Everything that can fail comes before the slot is taken: nothing to undo.
        if inputs is None:
            inputs = self.store.inputs(job.id)
        task = Task(job.id, job.backend, job.kind, inputs, program)
        running = _Running(
            entry.owner,
            entry.backend,
            entry.n_experiments,
            time.monotonic(),
            session_id=job.session_id,
            kind=job.kind,
            tier=entry.tier,
        )
        self._limit_events(job, running, quota_left)
        self._running[job.id] = running
        self._running_per_user[job.owner] += 1
        running.task = asyncio.get_running_loop().create_task(self._run(task, running))
        # The slot is given back when the task ends, however it ends: a task cancelled
        # before its first step never runs its coroutine's ``finally``, but this runs.
        running.task.add_done_callback(lambda _: self._release(job.id, running))

    # -- sharded jobs (server/shards.py) -------------------------------------------------

    def _shard_plan(self, job: Job, program: ProgramRef | None) -> list[ShardSpan]:
        """The shards ``job`` runs as if dispatched now (``[]``: not sharded)."""
        free = self.executor.capacity - len(self._running)
        if program is None or free < 2 or self.shard_min_pubs <= 0 or self.shard_max_pubs <= 0:
            return []
        if not sharding.shardable(program):
            return []
        stored = self.store.pub_runs(job.id)
        if stored is None:  # not a primitive job, or stored before pub runs were kept
            return []
        try:
            runs = sharding.read_pub_runs(stored, self.shard_max_pubs)
        except ValueError as exc:
            log.error("job %s: its pubs' executions do not read (%s); not sharded", job.id, exc)
            return []
        if runs is None:  # more pubs than ``shard_max_pubs`` (kept before the bound, or under
            return []  # a larger one): read no further, as if never kept
        return plan(program, runs, free, self.shard_min_pubs)

    def _start_sharded(
        self,
        job: Job,
        entry: _Queued,
        program: ProgramRef,
        spans: list[ShardSpan],
        quota_left: int | None,
        inputs: bytes | None = None,
    ) -> None:
        """Start ``job`` as the shards ``spans``: the first takes the slot the job was
        given, the others wait at the head of the owner's queue, ranked by fair share.
        ``inputs``: the job's stored inputs when at hand (a job started at its
        submission), else read from the store."""
        parent = _Running(
            entry.owner,
            entry.backend,
            entry.n_experiments,
            time.monotonic(),
            session_id=job.session_id,
            kind=job.kind,
            tier=entry.tier,
            released=True,  # the job holds no slot: its shards do
        )
        self._limit_events(job, parent, quota_left)
        sharded = ShardedJob(
            job.id,
            entry.owner,
            program,
            inputs if inputs is not None else self.store.inputs(job.id),
            spans,
            parent,
            entry.tier,
            # This run is one of the job's attempts: its shards may rerun what is left.
            attempt=job.attempts + 1,
        )
        self._sharded[job.id] = sharded
        for index in reversed(range(sharded.count)):
            self._queue_shard(sharded, index)
        log.info(
            "job %s runs as %d shards (pubs %s)",
            job.id,
            sharded.count,
            ", ".join(f"{s.start}-{s.stop - 1}" for s in spans),
        )
        first = self._tiers[entry.tier][entry.backend][entry.owner][0]
        self._dequeue(first)
        self._start_shard(first)

    def _queue_shard(self, sharded: ShardedJob, index: int) -> None:
        """Queue shard ``index`` at the head of its owner's queue."""
        parent = sharded.parent
        entry = _Queued(
            sharding.shard_key(sharded.job_id, index),
            sharded.owner,
            parent.backend,
            sharded.spans[index].executions,
            next(self._arrivals),
            sharded.tier,
            shard=index,
            parent=sharded.job_id,
        )
        self._put_back(entry)

    def _start_shard(self, entry: _Queued) -> None:
        sharded = self._sharded.get(entry.parent or "")
        if sharded is None or sharded.ended or entry.shard is None:
            return
        index = entry.shard
        span = sharded.spans[index]
        task = Task(
            entry.job_id,
            entry.backend,
            "program",
            sharded.inputs,
            sharded.program,
            pubs=(span.start, span.stop),
        )
        running = _Running(
            entry.owner,
            entry.backend,
            entry.n_experiments,
            time.monotonic(),
            session_id=sharded.parent.session_id,
            kind="program",
            tier=entry.tier,
            shard=index,
        )
        self._running[entry.job_id] = running
        self._running_per_user[entry.owner] += 1
        sharded.running[index] = running
        running.task = asyncio.get_running_loop().create_task(
            self._run_shard(sharded, index, task, running)
        )
        key = entry.job_id
        running.task.add_done_callback(lambda _: self._release(key, running))

    def _shard_started(self, sharded: ShardedJob, running: _Running) -> None:
        """A worker has taken a shard: the job is RUNNING from its first shard on (one
        attempt for the whole run), and the time limit's check moves."""
        running.started = time.monotonic()
        running.on_worker = True
        parent = sharded.parent
        parent.on_worker = True
        sharded.arm(self._time_limit(), self._shard_time_up)
        if parent.cancelled or sharded.ended:
            return
        try:
            self._record_start(sharded.job_id, parent)
        except Exception:  # the shards run on; RUNNING is written before the outcome
            log.exception("could not record the start of job %s; will retry", sharded.job_id)

    def _time_limit(self) -> float | None:
        limit: float | None = getattr(self.executor, "time_limit", None)
        return limit

    async def _run_shard(
        self, sharded: ShardedJob, index: int, task: Task, running: _Running
    ) -> None:
        job_id = sharded.job_id
        try:
            outcome = await self.executor.execute(
                task,
                lambda: self._shard_started(sharded, running),
                lambda kind, data: self._event(job_id, sharded.parent, kind, data),
            )
            part = None
            too_large = False
            if outcome.status == "done" and outcome.result is not None:
                sharded.result_bytes += len(outcome.result)
                # Parsed parts are held until the merge: stop before holding more.
                too_large = self._too_large_so_far(sharded)
                if not too_large:
                    part = await _read_part(outcome.result)
        except asyncio.CancelledError:
            raise  # the service is stopping: the job stays RUNNING and is requeued
        except Exception as exc:  # an executor bug, or a reply that is no shard's
            log.exception("shard %d of job %s failed", index, job_id)
            outcome = Outcome(
                "error", error=f"internal error while running the job: {exc}", transient=True
            )
            part, too_large = None, False
        finally:
            self._release(task.job_id, running)
            if sharded.running.get(index) is running:
                del sharded.running[index]
        if sharded.ended or running.cancelled or sharded.parent.cancelled:
            return
        if too_large:
            self._end_sharded(sharded)
            self._settle(job_id, sharded.parent, self._shards_too_large(sharded), None)
            return
        if part is not None:
            sharded.finished(index, part, outcome.seconds, outcome.timings)
            sharded.arm(self._time_limit(), self._shard_time_up)
            self._event(
                job_id,
                sharded.parent,
                "interim",
                sharding.progress(list(sharded.parts.values()), sharded.count),
            )
            if sharded.done:
                # Its last slot is given back already: a drain and a stop wait for the
                # merge through this set, or they would leave the job RUNNING.
                finishing = asyncio.current_task()
                if finishing is not None:
                    self._finishing.add(finishing)
                try:
                    await self._finish_sharded(sharded)
                finally:
                    self._finishing.discard(finishing)
            return
        if outcome.status == "cancelled" and self._cancelled_in_store(job_id):
            # Stopped because the job was cancelled by a path that did not end its shards
            # here: end them, and nothing more (its final status is written already).
            sharded.parent.cancelled = True
            self._end_sharded(sharded)
            return
        if outcome.status == "cancelled" or (outcome.status == "error" and outcome.transient):
            # Lost through no fault of the job (a dead worker, a lost executor run, a stop
            # by anything but the job's end): run again within the job's attempts.
            span = sharded.spans[index]
            what = f"shard {index + 1} of {sharded.count} (pubs {span.start}-{span.stop - 1})"
            reason = outcome.error or (
                "its run was stopped" if outcome.status == "cancelled" else "its run was lost"
            )
            lost = sharded.attempt + sharded.reruns
            if sharded.may_rerun(self.max_attempts):
                sharded.reruns += 1
                note = (
                    f"qdispatch: {what}: {reason}; requeued "
                    f"(attempt {lost} of {self.max_attempts})\n"
                )
                self._event(job_id, sharded.parent, "log", note)
                self._queue_shard(sharded, index)
                sharded.arm(self._time_limit(), self._shard_time_up)
                return
            outcome = Outcome(
                "error",
                error=f"{what}: {reason}; not trying again after {lost} attempts "
                f"(each shard rerun counts one)",
                seconds=sharded.seconds + outcome.seconds,
                code=outcome.code,
            )
        self._end_sharded(sharded)
        self._settle(job_id, sharded.parent, outcome, None)

    def _cancelled_in_store(self, job_id: str) -> bool:
        """Whether the store says the job is CANCELLED (a store that cannot say: no)."""
        try:
            job = self.store.job(job_id)
        except Exception:
            log.exception("could not read job %s", job_id)
            return False
        return job is not None and job.status == CANCELLED

    async def _finish_sharded(self, sharded: ShardedJob) -> None:
        """Every shard is in: store the job's result, the pubs' results in pub order.
        The job stays among the sharded ones until then (the watchdog leaves it be, and a
        cancel meanwhile wins)."""
        sharded.end()
        try:
            parts = list(sharded.parts.values())
            try:
                result = await asyncio.to_thread(sharding.merge, parts)
            except ValueError as exc:
                log.error("the shards of job %s do not make a result: %s", sharded.job_id, exc)
                error = Outcome("error", error=f"internal error while running the job: {exc}")
                self._settle(sharded.job_id, sharded.parent, error, None)
                return
            outcome = Outcome(
                "done", result=result, seconds=sharded.seconds, timings=sharded.timings or None
            )
            prepared = None
            if not self._too_large(result):
                prepared = await _prepare(result, False)
            if sharded.parent.cancelled:
                return  # cancelled while the result was prepared: that stands
            self._settle(sharded.job_id, sharded.parent, outcome, prepared)
        finally:
            if self._sharded.get(sharded.job_id) is sharded:
                del self._sharded[sharded.job_id]

    def _too_large_so_far(self, sharded: ShardedJob) -> bool:
        limit = self.max_result_bytes
        return limit is not None and sharded.result_bytes > limit

    def _shards_too_large(self, sharded: ShardedJob) -> Outcome:
        error = _too_large_error(sharded.result_bytes, self.max_result_bytes)
        return Outcome(
            "error",
            error=error["message"],
            code=error["code"],
            seconds=sharded.seconds,
        )

    def _shard_time_up(self, sharded: ShardedJob) -> None:
        """The time limit's check: the job's shards have used its whole time limit."""
        limit = self._time_limit()
        if sharded.ended:
            return
        if not sharded.over(limit):
            sharded.arm(limit, self._shard_time_up)  # a shard ended meanwhile
            return
        used = sharded.used(time.monotonic())
        log.warning("job %s used its time limit over its shards: stopping it", sharded.job_id)
        self._end_sharded(sharded)
        self._settle(sharded.job_id, sharded.parent, time_limit_outcome(limit or 0.0, used), None)

    def _end_sharded(self, sharded: ShardedJob) -> None:
        """Start no more shards of the job and stop those that run."""
        sharded.end()
        self._sharded.pop(sharded.job_id, None)
        for index in range(sharded.count):
            entry = self._queued.get(sharding.shard_key(sharded.job_id, index))
            if entry is not None:
                self._dequeue(entry)
        for running in list(sharded.running.values()):
            running.cancelled = True
            if running.on_worker:
                self.executor.cancel(sharding.shard_key(sharded.job_id, running.shard or 0))
            elif running.task is not None:
                running.task.cancel()

    def _release(self, job_id: str, running: _Running) -> None:
        """Give back a job's slot (once)."""
        if self._running.get(job_id) is running:
            del self._running[job_id]
        if running.released:
            return
        running.released = True
        self._running_per_user[running.owner] -= 1
        if self._running_per_user[running.owner] <= 0:
            del self._running_per_user[running.owner]
        self._charge(running.owner, time.monotonic() - running.started)
        self._changed()

    def _started(self, job_id: str, running: _Running) -> None:
        """A worker has taken the job: only now is it RUNNING (and an attempt counted)."""
        running.started = time.monotonic()
        running.on_worker = True
        if running.cancelled:
            return
        try:
            self._record_start(job_id, running)
        except Exception:  # the job runs on; RUNNING is written before its outcome
            log.exception("could not record the start of job %s; will retry", job_id)

    def _record_start(self, job_id: str, running: _Running) -> None:
        if running.recorded:
            return
        events = self.store.set_status(job_id, RUNNING, attempts_delta=1)
        running.recorded = True
        self._publish(job_id, events)
        if running.session_id is not None:
            try:
                self.store.session_started(running.session_id)
            except Exception:
                log.exception("could not start the clock of session %s", running.session_id)

    def _event(self, job_id: str, running: _Running, kind: str, data: Any) -> None:
        """Store and publish an interim result or log line of a running job, in order."""
        if running.cancelled:
            return  # the job is CANCELLED already: nothing may follow its final status
        if kind == "interim" and isinstance(data, bytes):
            payload = data
        elif kind == "log" and isinstance(data, str):
            payload = orjson.dumps({"text": data})
        else:
            log.warning("job %s sent an event of unknown kind %r; dropped", job_id, kind)
            return
        limit = running.event_limit if running.quota_bound else self.max_event_bytes
        # Each event costs a row, an index entry and a message besides its payload: an
        # overhead is charged so that a budget of bytes also bounds the number of events.
        cost = len(payload) + EVENT_OVERHEAD_BYTES
        if limit is not None and running.event_bytes + cost > limit:
            # A program that publishes without end would fill the store (and every
            # subscriber's socket): past its budget the job's events are dropped, once
            # said in its log; the job itself runs on and its result is kept.
            if running.event_bytes <= limit:
                running.event_bytes = limit + 1
                log.warning("job %s is over its %d bytes of events; dropping more", job_id, limit)
                what = (
                    f"what was left of its owner's storage quota ({limit} bytes)"
                    if running.quota_bound
                    else f"the service's limit of {limit} bytes"
                )
                note = orjson.dumps(
                    {
                        "text": f"qdispatch: this job's interim results and log lines "
                        f"passed {what}; later ones are dropped\n"
                    }
                )
                self._publish(job_id, [self.store.append_event(job_id, "log", note)])
            return
        running.event_bytes += cost
        self._publish(job_id, [self.store.append_event(job_id, kind, payload)])

    async def _run(self, task: Task, running: _Running) -> None:
        prepared: _Prepared | None = None
        try:
            outcome = await self.executor.execute(
                task,
                lambda: self._started(task.job_id, running),
                lambda kind, data: self._event(task.job_id, running, kind, data),
            )
            if (
                outcome.status == "done"
                and outcome.result is not None
                and not self._too_large(outcome.result)
            ):
                # Still counted as running: a cancel meanwhile marks it, and wins.
                prepared = await _prepare(outcome.result, running.kind == "circuit")
        except asyncio.CancelledError:
            raise  # the service is stopping: the job stays RUNNING and is requeued on start
        except Exception as exc:  # an executor bug must not kill the dispatcher
            log.exception("executor failed on job %s", task.job_id)
            outcome = Outcome(
                "error", error=f"internal error while running the job: {exc}", transient=True
            )
        finally:
            self._release(task.job_id, running)
        if running.cancelled:
            return  # already CANCELLED when cancel() was called
        self._settle(task.job_id, running, outcome, prepared)
        if self._draining:
            self._finished_in_drain += 1

    def _settle(
        self, job_id: str, running: _Running, outcome: Outcome, prepared: _Prepared | None
    ) -> None:
        """Store the outcome; if the store refuses, keep it and let the watchdog retry."""
        try:
            if running.on_worker and outcome.status != "cancelled":
                self._record_start(job_id, running)  # if _started could not
            self._finish(job_id, running, outcome, prepared)
        except StorageFull:
            # Expected while the disk is full, and retried every few seconds: no traceback.
            log.warning("the store is full: the outcome of job %s is kept until it fits", job_id)
            self._unsettled[job_id] = (running, outcome, prepared)
        except Exception:
            log.exception("could not store the outcome of job %s; keeping it to retry", job_id)
            self._unsettled[job_id] = (running, outcome, prepared)
        else:
            self._unsettled.pop(job_id, None)

    def _retry_unsettled(self) -> None:
        for job_id, (running, outcome, prepared) in list(self._unsettled.items()):
            try:
                job = self.store.job(job_id)
            except Exception:
                log.warning("the store is still failing; %d outcomes kept", len(self._unsettled))
                return
            if job is None or job.status in FINAL_STATUSES:
                # Cancelled (or ended otherwise) while its outcome waited: that stands.
                self._unsettled.pop(job_id, None)
                continue
            self._settle(job_id, running, outcome, prepared)

    def _finish(
        self, job_id: str, running: _Running, outcome: Outcome, prepared: _Prepared | None
    ) -> None:
        if outcome.status == "error" and outcome.transient:
            self._transient(job_id, outcome)
            return
        if outcome.status == "cancelled":
            events = self.store.set_status(job_id, CANCELLED)
        elif (
            outcome.status == "done"
            and outcome.result is not None
            and self._too_large(outcome.result)
        ):
            events = self.store.set_status(
                job_id,
                ERROR,
                error=_too_large_error(len(outcome.result), self.max_result_bytes),
                run_seconds=outcome.seconds,
                timings=outcome.timings,
            )
        elif outcome.status == "done" and prepared is not None:
            error, blob = prepared
            events = self.store.set_status(
                job_id,
                ERROR if error else DONE,
                result_blob=blob,
                error=error,
                run_seconds=outcome.seconds,
                timings=outcome.timings,
            )
            if running.kind == "circuit":
                # A program's time includes whatever Python it runs: only circuit jobs
                # measure the backend's rate, and only their results are Qobj results.
                # After the outcome is stored, so that an outcome retried (the store was
                # full) is measured once; the rate is an estimate, its write may fail.
                # Its write (a commit of its own) waits for the loop's next turn, behind
                # the streams that carry this job's DONE to its client.
                measure = (running.backend, outcome.seconds, running.n_experiments)
                try:
                    asyncio.get_running_loop().call_soon(self._measure, *measure)
                except RuntimeError:  # no loop running (not the service's case): now
                    self._measure(*measure)
        else:
            events = self.store.set_status(
                job_id,
                ERROR,
                error={"code": outcome.code, "message": outcome.error or "unknown error"},
                run_seconds=outcome.seconds,
                timings=outcome.timings,
            )
        self._publish(job_id, events)

    def _transient(self, job_id: str, outcome: Outcome) -> None:
        """The job's run ended through no fault of its own: run it again, up to
        ``max_attempts`` runs, then fail it saying why."""
        job = self.store.job(job_id)
        if job is None:
            return
        reason = outcome.error or "the job's run was lost"
        if job.attempts < self.max_attempts:
            note = f"{reason}; requeued (attempt {job.attempts} of {self.max_attempts})"
            events = self.store.set_status(job_id, QUEUED, step="REQUEUED", note=note)
            self._publish(job_id, events)
            self._enqueue(job)
            return
        message = f"{reason}; not trying again after {job.attempts} attempts"
        events = self.store.set_status(
            job_id,
            ERROR,
            error={"code": outcome.code, "message": message},
            run_seconds=outcome.seconds,
        )
        self._publish(job_id, events)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self._watchdog_interval)
            try:
                self.check()
            except Exception:  # one failed check must not end the watchdog
                log.exception("the watchdog's check failed")

    def check(self) -> None:
        """Free slots held by no live job (loudly: it is a bug), let the executor check its
        workers, store outcomes the store refused before, and queue QUEUED jobs that are
        in no queue."""
        for job_id, running in list(self._running.items()):
            if running.task is None or running.task.done():
                log.warning("job %s held a worker slot with no live task; freeing it", job_id)
                self._release(job_id, running)
        self.executor.audit()
        self._retry_unsettled()
        for job in self.store.jobs_with_status(QUEUED):
            if job.id not in self._queued and job.id not in self._running:
                if job.id in self._unsettled or job.id in self._sharded:
                    continue
                log.warning("job %s was QUEUED in the store but in no queue; queueing it", job.id)
                self._enqueue(job)

    def health(self) -> dict[str, Any]:
        """What ``GET /info`` shows of the scheduler: jobs queued and running, and the
        executor's workers."""
        return {
            "queued_jobs": len(self._queued),
            "running_jobs": len(self._running),
            "workers": self.executor.workers(),
            # outcomes of finished runs the store refused (a full disk), retried every
            # few seconds: their jobs still read RUNNING
            "held_outcomes": len(self._unsettled),
        }

    def running_on_workers(self) -> set[str]:
        """Ids of the jobs the scheduler believes a worker has."""
        return {job_id for job_id, r in self._running.items() if r.on_worker}

    def _too_large(self, result: bytes) -> bool:
        return self.max_result_bytes is not None and len(result) > self.max_result_bytes

    def _measure(self, backend: str, seconds: float, n_experiments: int) -> None:
        try:
            self._measured(backend, seconds, n_experiments)
        except Exception:
            log.warning("could not store the rate of %s", backend, exc_info=True)

    def _measured(self, backend: str, seconds: float, n_experiments: int) -> None:
        sample = seconds / max(1, n_experiments)
        old = self._rate(backend)
        self._rates[backend] = (
            old + _RATE_WEIGHT * (sample - old) if backend in self._rates else sample
        )
        self.store.set_meta(f"rate:{backend}", repr(self._rates[backend]))

    def seconds_per_experiment(self, backend: str) -> float:
        """The measured execution time per experiment of ``backend`` (a moving average)."""
        return self._rate(backend)

    def least_busy(self, backends: list[str]) -> str:
        """The backend of ``backends`` with the fewest queued jobs (the first by name on
        a tie)."""
        return min(sorted(backends), key=self.pending_jobs)

    def _rate(self, backend: str) -> float:
        if backend not in self._rates:
            stored = self.store.meta(f"rate:{backend}")
            if stored is None:
                return _DEFAULT_RATE
            self._rates[backend] = float(stored)
        return self._rates[backend]

    def _publish(self, job_id: str, events: list[Event]) -> None:
        # The events are stored already: a failure to publish them must not look like a
        # failure to store them (streams catch up from the store by sequence number).
        try:
            job = self.store.job(job_id)
            if job is not None:
                self.hub.publish(job, events)
        except Exception:
            log.exception("could not publish %d events of job %s", len(events), job_id)

    # -- requests -----------------------------------------------------------------------

    def cancel(self, job: Job) -> list[Event]:
        """Cancel a queued or running job (the caller checked it is not final)."""
        return self.end(job, CANCELLED)

    def end(self, job: Job, status: str, error: dict[str, Any] | None = None) -> list[Event]:
        """End a queued or running job before it finishes, as ``status`` (``CANCELLED``, or
        ``ERROR`` with ``error``), and publish the change."""
        # The store first: if it fails, nothing has changed here either.
        events = self.store.set_status(job.id, status, error=error)
        self._unsettled.pop(job.id, None)
        entry = self._queued.get(job.id)
        if entry is not None:
            self._dequeue(entry)
        running = self._running.get(job.id)
        if running is not None:
            running.cancelled = True
            if running.on_worker:
                self.executor.cancel(job.id)
            elif running.task is not None:
                running.task.cancel()  # still waiting for a free worker: just stop waiting
        sharded = self._sharded.get(job.id)
        if sharded is not None:
            sharded.parent.cancelled = True
            self._end_sharded(sharded)
        self._publish(job.id, events)
        return events

    def queue_info(self, job: Job, clock: Clock | None = None) -> dict[str, Any] | None:
        """Position and estimated start/completion of a queued job; ``None`` otherwise.

        ``clock`` (:func:`now`), read once for a request about several jobs, keeps their
        estimates in the order of their positions: a job due now is estimated to start at
        the clock's time, and two readings of the clock would differ."""
        if job.status != QUEUED or job.id not in self._queued:
            return None
        position, start_at = self._fair_order(job.backend)[job.id]
        rate = self._rate(job.backend)
        monotonic, utc = clock or now()
        start_in = max(0.0, start_at - monotonic)
        start = utc + timedelta(seconds=start_in)
        complete = start + timedelta(seconds=rate * job.n_experiments)
        return {
            "position": position,
            "status": "PENDING_IN_QUEUE",
            "estimated_start_time": start.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "estimated_complete_time": complete.isoformat(timespec="microseconds").replace(
                "+00:00", "Z"
            ),
            "seconds_per_experiment": rate,
        }


async def _read_part(reply: bytes) -> sharding.Part:
    """A shard's reply, read (a big one in a worker thread)."""
    if len(reply) <= _BIG_RESULT:
        return sharding.read_part(reply)
    return await asyncio.to_thread(sharding.read_part, reply)


def _too_large_error(size: int, limit: int | None) -> dict[str, Any]:
    """The error of a job whose result (``size`` bytes) is over ``max_result_bytes``."""
    return {
        "code": E.RESULT_TOO_LARGE,
        "message": f"the job's result is {size} bytes, over the limit of {limit} "
        "bytes (max_result_bytes); it was not kept. Split the work into smaller "
        "jobs, or ask for less (memory, fewer shots)",
    }


async def _prepare(result: bytes, circuit: bool) -> _Prepared:
    """A finished job's error (for a circuit job's result that says some experiments
    failed) and its result compressed for the store. A big result (100k shots of memory
    x 300 experiments is hundreds of megabytes) is prepared in a worker thread, without
    ever being parsed whole: the event loop serves everyone else meanwhile."""
    if len(result) <= _BIG_RESULT:
        return (_result_error(result) if circuit else None), compress(result)
    return await asyncio.to_thread(_prepare_big, result, circuit)


def _prepare_big(result: bytes, circuit: bool) -> _Prepared:
    error = None
    if circuit:
        # The Rust core cuts `results` off (without the GIL); only the small rest is
        # parsed, to read `success`.
        top, _ = _native.split_member(result, "results", "result")
        if not orjson.loads(top).get("success", True):
            error = {
                "code": "experiments_failed",
                "message": "some experiment(s) failed; partial results are available. "
                "The result is too large to list which here: see its experiments' status.",
            }
    return error, compress(result)


def _result_error(result: bytes) -> dict[str, Any] | None:
    """The job's error if the result says some experiments failed (it is kept, partial)."""
    parsed = orjson.loads(result)
    if parsed.get("success", True):
        return None
    failed = [
        f"experiment {i}: {r.get('status', 'failed')}"
        for i, r in enumerate(parsed.get("results", []))
        if not r.get("success", False)
    ]
    return {
        "code": "experiments_failed",
        "message": f"{len(failed)} experiment(s) failed; partial results are available. "
        + "; ".join(failed[:5]),
    }
