"""Queues and dispatch: one queue per backend, fair share between users.

Jobs wait in per-backend, per-user FIFO queues. Whenever the executor has a free slot the
scheduler takes the head of the user queue that ranks first by fair share, over all
backends (the workers are shared): the user with the fewest jobs running goes first, then
the one who has used the least execution time lately (usage decays with a half-life of
``USAGE_HALF_LIFE`` seconds), then the one whose next job is oldest. One user's ten
thousand jobs therefore never starve another user's one.

The queues come in two tiers. Jobs of ``dedicated`` sessions wait in the first, every
other job in the second, and no job of the second tier starts while the first holds one:
a dedicated session has the workers to itself until its queued jobs have run. Within a
tier the fair-share rule above applies (two users' dedicated sessions share fairly).
A session's mode never changes, and its queued jobs leave the queue when it is cancelled
or expires, so a job's tier is fixed when it is queued.

Queue positions follow the same rule, and estimated start and completion times come from
the execution rate measured per backend (an exponential moving average of seconds per
experiment, kept in the store so that it survives restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from ..constants import CANCELLED, DONE, ERROR, QUEUED, RUNNING
from .executors import Executor, Outcome, Task
from .programs import ProgramRef
from .store import Event, Job, Store
from .stream import Hub

log = logging.getLogger(__name__)

USAGE_HALF_LIFE = 600.0
_DEFAULT_RATE = 0.002  # seconds per experiment until a backend has been measured
_RATE_WEIGHT = 0.2


# Tiers of queues, dispatched strictly in this order.
_DEDICATED = 0  # jobs of dedicated sessions
_SHARED = 1  # every other job

# backend → user → FIFO of that user's jobs for the backend
_Queues = dict[str, dict[str, "deque[_Queued]"]]


@dataclass
class _Queued:
    job_id: str
    owner: str
    backend: str
    n_experiments: int
    order: int  # arrival order, for fairness ties and for "oldest head first"
    tier: int


@dataclass
class _Running:
    owner: str
    backend: str
    n_experiments: int
    started: float
    session_id: str | None = None
    kind: str = "circuit"
    task: asyncio.Task[None] | None = None
    cancelled: bool = False
    on_worker: bool = False


class Scheduler:
    """Owns the queues and the executor; every status change goes through here."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        executor: Executor,
        max_attempts: int = 3,
        programs: Callable[[str], ProgramRef | None] | None = None,
    ):
        self.store = store
        self.hub = hub
        self.executor = executor
        self.max_attempts = max_attempts
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
        self._order_cache: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {}
        self._version = 0
        #: backends an operator paused: their jobs queue, none starts
        self.paused: set[str] = set()

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> tuple[list[str], list[str]]:
        """Recover after a restart, load the queues from the store, start dispatching."""
        requeued, failed = self.store.recover(self.max_attempts)
        for job_id in requeued + failed:
            job = self.store.job(job_id)
            if job is not None:
                self.hub.publish(job, self.store.events_since(job_id, job.last_seq - 1))
        for job in self.store.jobs_with_status(QUEUED):
            self._enqueue(job)
        await self.executor.start()
        self._loop_task = asyncio.get_running_loop().create_task(self._dispatch_loop())
        return requeued, failed

    async def stop(self) -> None:
        """Stop dispatching. Running jobs stay RUNNING in the store and are requeued by the
        next start, so a clean stop and a crash recover the same way."""
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        running = list(self._running.items())
        tasks = [r.task for _, r in running if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.executor.close()
        # A clean stop is not the job's fault: requeue without counting the attempt (a
        # crash leaves them RUNNING, and the next start requeues them counting it).
        for job_id, run in running:
            if run.on_worker and not run.cancelled:
                self.store.set_status(
                    job_id, QUEUED, step="REQUEUED", note="the service stopped", attempts_delta=-1
                )

    # -- queueing -----------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job the store has just accepted."""
        self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
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

    def _changed(self) -> None:
        self._version += 1
        self._wake.set()

    def active_jobs(self) -> int:
        """How many jobs are queued or running, on every backend."""
        return len(self._queued) + len(self._running)

    def pending_jobs(self, backend: str) -> int:
        """How many jobs wait in ``backend``'s queue."""
        return sum(len(q) for tier in self._tiers for q in tier.get(backend, {}).values())

    def _recent_usage(self, user: str, now: float) -> float:
        seconds, since = self._usage.get(user, (0.0, now))
        return seconds * 0.5 ** ((now - since) / USAGE_HALF_LIFE)

    def _charge(self, user: str, seconds: float) -> None:
        now = time.monotonic()
        self._usage[user] = (self._recent_usage(user, now) + seconds, now)

    def _fair_order(self, backend: str) -> dict[str, tuple[int, int]]:
        """Every queued job of ``backend`` → (1-based position in dispatch order, number of
        experiments queued ahead of it). Cached until the queues next change."""
        cached = self._order_cache.get(backend)
        if cached and cached[0] == self._version:
            return cached[1]
        # Dispatch is simulated as if every job ahead were still running when the next
        # starts; the counts carry over from the first tier to the second.
        running = dict(self._running_per_user)
        now = time.monotonic()
        order: dict[str, tuple[int, int]] = {}
        ahead = 0
        for tier in self._tiers:
            users = tier.get(backend, {})
            heads = [
                (running.get(user, 0), self._recent_usage(user, now), q[0].order, user, 0)
                for user, q in users.items()
                if q
            ]
            heapq.heapify(heads)
            while heads:
                n_running, usage, _, user, index = heapq.heappop(heads)
                queue = users[user]
                order[queue[index].job_id] = (len(order) + 1, ahead)
                ahead += queue[index].n_experiments
                running[user] = n_running + 1
                if index + 1 < len(queue):
                    nxt = (n_running + 1, usage, queue[index + 1].order, user, index + 1)
                    heapq.heappush(heads, nxt)
        self._order_cache[backend] = (self._version, order)
        return order

    def _next(self) -> _Queued | None:
        now = time.monotonic()
        for tier in self._tiers:
            best: _Queued | None = None
            best_key: tuple[int, float, int] | None = None
            for backend, users in tier.items():
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
            if best is not None:
                return best
        return None

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
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self._running) < self.executor.capacity:
                entry = self._next()
                if entry is None:
                    break
                self._dequeue(entry)
                self._start(entry)

    def _start(self, entry: _Queued) -> None:
        job = self.store.job(entry.job_id)
        if job is None or job.status != QUEUED:
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
        running = _Running(
            entry.owner,
            entry.backend,
            entry.n_experiments,
            time.monotonic(),
            session_id=job.session_id,
            kind=job.kind,
        )
        self._running[job.id] = running
        self._running_per_user[job.owner] += 1
        task = Task(job.id, job.backend, job.kind, self.store.inputs(job.id), program)
        running.task = asyncio.get_running_loop().create_task(self._run(task, running))

    def _started(self, job_id: str, running: _Running) -> None:
        """A worker has taken the job: only now is it RUNNING (and an attempt counted)."""
        running.started = time.monotonic()
        running.on_worker = True
        if not running.cancelled:
            self._publish(job_id, self.store.set_status(job_id, RUNNING, attempts_delta=1))
            if running.session_id is not None:
                self.store.session_started(running.session_id)

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
        self._publish(job_id, [self.store.append_event(job_id, kind, payload)])

    async def _run(self, task: Task, running: _Running) -> None:
        try:
            outcome = await self.executor.execute(
                task,
                lambda: self._started(task.job_id, running),
                lambda kind, data: self._event(task.job_id, running, kind, data),
            )
        except asyncio.CancelledError:
            raise  # the service is stopping: the job stays RUNNING and is requeued on start
        except Exception as exc:  # an executor bug must not kill the dispatcher
            log.exception("executor failed on job %s", task.job_id)
            outcome = Outcome("error", error=f"internal error while running the job: {exc}")
        finally:
            self._running.pop(task.job_id, None)
            self._running_per_user[running.owner] -= 1
            self._charge(running.owner, time.monotonic() - running.started)
            self._changed()
        if running.cancelled:
            return  # already CANCELLED when cancel() was called
        self._finish(task.job_id, running, outcome)

    def _finish(self, job_id: str, running: _Running, outcome: Outcome) -> None:
        if outcome.status == "cancelled":
            events = self.store.set_status(job_id, CANCELLED)
        elif outcome.status == "done" and outcome.result is not None:
            error = None
            if running.kind == "circuit":
                # A program's time includes whatever Python it runs: only circuit jobs
                # measure the backend's rate, and only their results are Qobj results.
                self._measured(running.backend, outcome.seconds, running.n_experiments)
                error = _result_error(outcome.result)
            events = self.store.set_status(
                job_id,
                ERROR if error else DONE,
                result=outcome.result,
                error=error,
                run_seconds=outcome.seconds,
                timings=outcome.timings,
            )
        else:
            events = self.store.set_status(
                job_id,
                ERROR,
                error={"code": outcome.code, "message": outcome.error or "unknown error"},
                run_seconds=outcome.seconds,
                timings=outcome.timings,
            )
        self._publish(job_id, events)

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
        job = self.store.job(job_id)
        if job is not None:
            self.hub.publish(job, events)

    # -- requests -----------------------------------------------------------------------

    def cancel(self, job: Job) -> list[Event]:
        """Cancel a queued or running job (the caller checked it is not final)."""
        return self.end(job, CANCELLED)

    def end(self, job: Job, status: str, error: dict[str, Any] | None = None) -> list[Event]:
        """End a queued or running job before it finishes, as ``status`` (``CANCELLED``, or
        ``ERROR`` with ``error``), and publish the change."""
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
        events = self.store.set_status(job.id, status, error=error)
        self._publish(job.id, events)
        return events

    def queue_info(self, job: Job) -> dict[str, Any] | None:
        """Position and estimated start/completion of a queued job; ``None`` otherwise."""
        if job.status != QUEUED or job.id not in self._queued:
            return None
        position, ahead = self._fair_order(job.backend)[job.id]
        rate = self._rate(job.backend)
        now = time.monotonic()
        busy = sum(
            max(0.0, self._rate(r.backend) * r.n_experiments - (now - r.started))
            for r in self._running.values()
        )
        capacity = max(1, self.executor.capacity)
        start_in = (busy + rate * ahead) / capacity
        utc = datetime.now(timezone.utc)
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
