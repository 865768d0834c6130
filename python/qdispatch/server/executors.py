"""Where jobs run: a pool of local worker processes, or a dask.distributed cluster.

Both present the same small interface to the scheduler: ``capacity`` jobs at once,
``await execute(task, started, on_event)`` → :class:`Outcome` (``started()`` is called when
a worker has actually taken the task; ``on_event(kind, data)`` for each interim result and
log line a program job sends while it runs, in order, before the outcome), and
``cancel(job_id)`` for a running job.

A program's events reach the service while it runs: a local worker sends them over its
pipe ahead of its reply; a dask task puts them into a ``distributed.Queue`` of its own that
the service drains while it awaits the task's future.

Local workers are started with *spawn*, not fork: the service holds SQLite connections,
an event loop and threads that must not be duplicated into a child. A worker that dies
(segfault, OOM kill, ``kill -9``) fails only the job it was running, with a reason, and is
replaced. Cancelling a running job kills its worker, which is then replaced too: a
simulation in C++ cannot be interrupted any other way. So does a job that runs past the
per-job time limit.

Faults: a worker goes back to the idle pool only if it replied and was never signalled
(a cancel or the time limit may have killed it after its reply); every other way out of
:meth:`LocalExecutor.execute` (an exception of a callback, a dead pipe, the caller being
cancelled) retires the worker and starts another, in a ``finally``. An :class:`Outcome`
says whether its failure was *transient* (the worker died, the cluster lost the task):
the scheduler requeues those, and fails the others at once.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from ..codes import TIME_LIMIT_EXCEEDED
from .programs import ProgramRef

log = logging.getLogger(__name__)

#: Receives a running job's events: ``("interim", encoded bytes)`` or ``("log", text)``.
OnEvent = Callable[[str, Any], None]
EXECUTION_FAILED = "execution_failed"
PROGRAM_FAILED = "program_failed"


@dataclass(frozen=True)
class Task:
    """One job to execute: a Qobj, or a program's encoded inputs (JSON bytes), for a
    backend. ``program`` says where a program job's program is to be loaded from."""

    job_id: str
    backend: str
    kind: str
    inputs: bytes
    program: ProgramRef | None = None


@dataclass(frozen=True)
class Reply:
    """What a worker answers for a task: the result JSON, or why it failed (``code`` is
    the job's error code); ``timings`` of a program's steps, in seconds."""

    result: bytes | None = None
    error: str | None = None
    code: str = EXECUTION_FAILED
    timings: dict[str, float] | None = None


@dataclass(frozen=True)
class Outcome:
    """How an execution ended. ``result`` is the result JSON (also for failed jobs that
    produced partial results); ``error`` says why a job failed and ``code`` how."""

    status: str  # "done" | "error" | "cancelled"
    result: bytes | None = None
    error: str | None = None
    seconds: float = 0.0
    code: str = EXECUTION_FAILED
    timings: dict[str, float] | None = None
    #: the job itself is not at fault (its worker died, the cluster lost it): run it again
    transient: bool = False


def time_limit_outcome(limit: float, seconds: float) -> Outcome:
    """A job stopped at the per-job time limit: deterministic, so never retried."""
    return Outcome(
        "error",
        error=f"the job ran longer than the service's time limit of {limit:g} s "
        "(--job-time-limit) and was stopped",
        seconds=seconds,
        code=TIME_LIMIT_EXCEEDED,
    )


def _outcome(reply: Reply, seconds: float) -> Outcome:
    if reply.result is not None:
        return Outcome("done", result=reply.result, seconds=seconds, timings=reply.timings)
    return Outcome(
        "error", error=reply.error, seconds=seconds, code=reply.code, timings=reply.timings
    )


class Executor(Protocol):
    """What the scheduler needs of an executor."""

    capacity: int

    async def start(self) -> None: ...

    async def execute(
        self, task: Task, started: Callable[[], None], on_event: OnEvent | None = None
    ) -> Outcome: ...

    def cancel(self, job_id: str) -> bool: ...

    def busy_jobs(self) -> set[str]: ...

    def workers(self) -> dict[str, int]: ...

    def audit(self) -> None: ...

    async def close(self) -> None: ...


def _call(job_id: str, callback: Callable[[], None]) -> None:
    # The scheduler's callbacks write to the store; one that fails (disk full, a lock
    # held too long) must not strand the worker that has the job.
    try:
        callback()
    except Exception:
        log.exception("the started() callback of job %s failed", job_id)


def run_task(task: Task, threads: int, emit: OnEvent) -> Reply:
    """Run a task in this process (what every worker calls). A job's failure is a
    :class:`Reply` with an error, never an exception; ``emit`` carries a program's
    interim results and log lines while it runs."""
    try:
        if task.kind == "circuit":
            # A worker imports qiskit (via the runner) only when it first runs a job.
            from . import runner  # noqa: PLC0415

            result = runner.run_qobj(
                task.backend, task.inputs, task.job_id, max_parallel_threads=threads
            )
            return Reply(result=result)
        if task.kind == "program" and task.program is not None:
            # lazy: like runner, a worker imports it (and qiskit) at its first program job
            from .programs.worker import ProgramFailed, run_program  # noqa: PLC0415

            try:
                result, timings = run_program(
                    task.program, task.backend, task.inputs, threads, emit
                )
            except ProgramFailed as exc:
                return Reply(error=exc.message, code=PROGRAM_FAILED, timings=exc.timings)
            return Reply(result=result, timings=timings)
        return Reply(error=f"job kind '{task.kind}' cannot run on this service")
    except Exception as exc:
        return Reply(error=f"{type(exc).__name__}: {exc}")


def _worker_main(conn: Connection, threads: int) -> None:
    """A local worker: run tasks from ``conn`` until the service goes away. A program's
    events go out on the same pipe, ahead of the reply: ``(kind, data)``, then
    ``("reply", Reply, seconds)``."""
    # Ctrl-C, or a SIGTERM sent to the whole process group (systemd's default KillMode), is
    # for the service: it lets this worker finish its job while it drains, then stops it
    # itself (SIGKILL). Orphaned by a service that died, a worker exits at its pipe's EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send(("ready", os.getpid()))
    sending = threading.Lock()  # a program may publish from threads of its own

    def emit(kind: str, data: Any) -> None:
        with sending:
            conn.send((kind, data))

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the service closed the pipe or died
        start = time.perf_counter()
        reply = run_task(task, threads, emit)
        try:
            with sending:
                conn.send(("reply", reply, time.perf_counter() - start))
        except (EOFError, OSError):
            return


class _Worker:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.job_id: str | None = None
        self.state = "starting"  # → idle ⇄ busy → retired
        self.cancelled = False  # killed by cancel()
        self.timed_out = False  # killed at the time limit

    @property
    def signalled(self) -> bool:
        """Whether the service killed it: even if it replied, it must not be reused."""
        return self.cancelled or self.timed_out


class LocalExecutor:
    """A pool of ``workers`` spawned processes, each running one job at a time; a job
    running longer than ``time_limit`` seconds is stopped (its worker is killed)."""

    def __init__(
        self, workers: int, threads_per_worker: int = 1, time_limit: float | None = None
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.capacity = workers
        self.time_limit = time_limit
        self._threads = threads_per_worker
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._busy: dict[str, _Worker] = {}
        self._all: set[_Worker] = set()
        # One thread per worker waits on its pipe, so the event loop never blocks on one;
        # the others join dying workers and wait for new ones to say hello.
        self._waiters = ThreadPoolExecutor(
            max_workers=2 * workers + 2, thread_name_prefix="qd-pipe"
        )
        self._closing = False
        self._spawning: set[asyncio.Task[None]] = set()
        self._burying: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the workers (they finish importing in the background)."""
        for _ in range(self.capacity):
            self._spawn_later()

    def _spawn_later(self) -> None:
        task = asyncio.get_running_loop().create_task(self._spawn())
        self._spawning.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._spawning.discard)

    async def _spawn(self) -> None:
        # Retried until a worker is up: a spawn that fails for good (too many open files,
        # an import error in the child) must not cost a slot for the service's lifetime.
        delay = 1.0
        while not self._closing:
            try:
                if await self._spawn_one():
                    return
            except Exception:
                log.exception("starting a worker process failed")
            if self._closing:
                return
            log.error("a worker process failed to start; retrying in %.0f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _spawn_one(self) -> bool:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_worker_main, args=(child, self._threads), name="qdispatch-worker", daemon=True
        )
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._all.add(worker)
        loop = asyncio.get_running_loop()
        try:
            hello = await loop.run_in_executor(self._waiters, parent.recv)
        except (EOFError, OSError):
            hello = None
        except BaseException:  # cancelled by close(): no loop calls here, it may be gone
            self._all.discard(worker)
            if process.is_alive():
                process.kill()
            raise
        if self._closing:
            return True
        if not hello or hello[0] != "ready":
            log.error("a worker process exited at start (exit code %s)", process.exitcode)
            self._all.discard(worker)
            parent.close()
            return False
        worker.state = "idle"
        self._idle.put_nowait(worker)
        return True

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [w.process.pid for w in self._all if w.process.pid is not None]

    def busy_jobs(self) -> set[str]:
        """Ids of the jobs a worker has now."""
        return set(self._busy)

    def workers(self) -> dict[str, int]:
        """How many workers are idle, busy with a job, and starting."""
        states = [w.state for w in self._all]
        return {
            "idle": states.count("idle"),
            "busy": states.count("busy"),
            "starting": len(self._spawning),
        }

    def audit(self) -> None:
        """Find workers that are neither idle nor busy with a job, or missing from the
        pool, say so loudly, and replace them (the watchdog calls this)."""
        if self._closing:
            return
        for worker in list(self._all):
            if worker.state == "busy" and self._busy.get(worker.job_id or "") is not worker:
                log.warning(
                    "worker %s was busy with no job (last job %s): replacing it",
                    worker.process.pid,
                    worker.job_id,
                )
                self._retire(worker, kill=True)
        missing = self.capacity - len(self._all) - len(self._spawning)
        for _ in range(max(0, missing)):
            log.warning("the worker pool was %d short: starting another", missing)
            self._spawn_later()

    async def _take(self) -> _Worker:
        """The next idle worker that is still alive (one killed while idle, by the OOM
        killer or an operator, is replaced rather than handed a job)."""
        while True:
            worker = await self._idle.get()
            if worker.process.is_alive():
                return worker
            log.warning("idle worker %s had died; replacing it", worker.process.pid)
            self._retire(worker, kill=False)

    async def execute(
        self, task: Task, started: Callable[[], None], on_event: OnEvent | None = None
    ) -> Outcome:
        """Run ``task`` on the next idle worker, passing its events to ``on_event``."""
        worker = await self._take()
        # No await from here to the try: a cancel of the caller cannot lose the worker.
        worker.job_id = task.job_id
        worker.state = "busy"
        worker.cancelled = worker.timed_out = False
        self._busy[task.job_id] = worker
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        message: tuple[Any, ...] | None = None
        died = False
        timer = None
        try:
            worker.conn.send(task)
            if self.time_limit:
                timer = loop.call_later(self.time_limit, self._expire, worker, task.job_id)
            _call(task.job_id, started)
            while True:
                received: tuple[Any, ...] = await loop.run_in_executor(
                    self._waiters, worker.conn.recv
                )
                if received[0] == "reply":
                    message = received
                    break
                _deliver(task.job_id, on_event, received[0], received[1])
        except (EOFError, OSError):
            died = True
        finally:
            if timer is not None:
                timer.cancel()
            self._busy.pop(task.job_id, None)
            worker.job_id = None
            if message is not None and not worker.signalled and not self._closing:
                worker.state = "idle"
                self._idle.put_nowait(worker)
            else:
                # Killed by us (cancel, time limit) even after replying, dead on its own,
                # or left mid-job by an exception: never handed another job.
                self._retire(worker, kill=not died)
        if message is None:
            return await self._died(worker, start)
        _, reply, seconds = message
        return _outcome(reply, seconds)

    def _expire(self, worker: _Worker, job_id: str) -> None:
        if worker.job_id == job_id and not worker.signalled:
            log.warning(
                "job %s ran past the time limit of %g s: stopping it", job_id, self.time_limit
            )
            worker.timed_out = True
            worker.process.kill()

    def _retire(self, worker: _Worker, kill: bool) -> None:
        """Take ``worker`` out of the pool for good and start another in its place."""
        if worker.state == "retired":
            return
        worker.state = "retired"
        self._all.discard(worker)
        if kill and worker.process.is_alive():
            worker.process.kill()
        bury = asyncio.get_running_loop().create_task(self._bury(worker))
        self._burying.add(bury)
        bury.add_done_callback(self._burying.discard)
        if not self._closing:
            self._spawn_later()

    async def _bury(self, worker: _Worker) -> None:
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._waiters, worker.process.join, 5.0)
        except RuntimeError:  # the executor is closing: its threads are gone
            worker.process.join(0.5)
        if worker.process.is_alive():
            worker.process.kill()
        worker.conn.close()

    async def _died(self, worker: _Worker, start: float) -> Outcome:
        """The worker is gone under a job: say why."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._waiters, worker.process.join, 5.0)
        elapsed = time.perf_counter() - start
        if worker.cancelled:
            return Outcome("cancelled", seconds=elapsed)
        if worker.timed_out:
            return time_limit_outcome(self.time_limit or 0.0, elapsed)
        code = worker.process.exitcode
        how = (
            f"killed by signal {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit code {code}"
        )
        return Outcome(
            "error",
            error=f"the worker process running this job died ({how})",
            seconds=elapsed,
            transient=True,
        )

    def cancel(self, job_id: str) -> bool:
        """Stop a running job by killing its worker; ``False`` if it is not running here."""
        worker = self._busy.get(job_id)
        if worker is None:
            return False
        worker.cancelled = True
        worker.process.kill()
        return True

    async def close(self) -> None:
        """Stop every worker."""
        self._closing = True
        for worker in list(self._all):
            worker.cancelled = True
            if worker.process.is_alive():
                worker.process.kill()
        for task in [*self._spawning, *self._burying]:
            task.cancel()
        for worker in list(self._all):
            worker.process.join(2.0)
            worker.conn.close()
        self._waiters.shutdown(wait=False, cancel_futures=True)


def _deliver(job_id: str, on_event: OnEvent | None, kind: str, data: Any) -> None:
    # A failure to store one event must not strand the worker that is still running.
    if on_event is None:
        return
    try:
        on_event(kind, data)
    except Exception:
        log.exception("could not record a %s event of job %s", kind, job_id)


# What the service puts into a job's event queue once the task is over: every event the
# task put is ahead of it, so the drain stops there having lost nothing.
_END = "end"


def _dask_run(task: Task, threads: int, events: str | None) -> Reply:
    """The dask task: run ``task``; its events go into the queue named ``events``."""
    queue: Any = None
    sending = threading.Lock()

    def emit(kind: str, data: Any) -> None:
        nonlocal queue
        if events is None:
            return
        with sending:
            if queue is None:
                from distributed import Queue  # noqa: PLC0415  (dask is optional: qdispatch[dask])

                queue = Queue(events)  # through this worker's client
            queue.put([kind, data])  # returns once the scheduler holds the item

    try:
        return run_task(task, threads, emit)
    finally:
        if queue is not None:
            queue.close()


async def _drain(queue: Any, job_id: str, on_event: OnEvent | None) -> None:
    """Pass a dask job's events on, in order, until the end marker."""
    while True:
        items = [await queue.get()]
        items += await queue.get(batch=True)  # whatever else is there already
        for kind, data in items:
            if kind == _END:
                return
            _deliver(job_id, on_event, kind, data)


# How long the service waits, after a dask task ended, for its queued events to arrive.
_DRAIN_TIMEOUT = 30.0


async def _end_events(queue: Any, drain: asyncio.Task[None], job_id: str) -> None:
    """Let the drain take every event the task put, then stop it."""
    try:
        if drain.done():
            drain.result()  # it failed on its own (the scheduler went away): say so
            return
        await queue.put([_END, None])
        await asyncio.wait_for(asyncio.shield(drain), _DRAIN_TIMEOUT)
    except Exception:
        log.warning("events of job %s were not all received from dask", job_id, exc_info=True)
    finally:
        drain.cancel()


class DaskExecutor:
    """Runs jobs as tasks on a dask.distributed cluster (e.g. one dask-jobqueue put on
    SLURM or PBS). Cancelling a running job releases its future; the cluster may finish
    the computation, but its result is discarded and the job stays CANCELLED."""

    def __init__(
        self,
        scheduler: str,
        capacity: int | None = None,
        threads_per_task: int = 1,
        time_limit: float | None = None,
    ):
        self.scheduler = scheduler
        self.capacity = capacity or 0
        self.time_limit = time_limit
        self._threads = threads_per_task
        self._client: Any = None
        self._futures: dict[str, Any] = {}
        self._timed_out: set[str] = set()
        self._cancelling: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Connect to the scheduler; capacity defaults to the cluster's thread count."""
        try:
            from distributed import Client  # noqa: PLC0415  (dask is optional: --executor dask)
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the dask executor needs dask.distributed: pip install 'qdispatch[dask]'"
            ) from exc
        self._client = await Client(self.scheduler, asynchronous=True, timeout="30s")
        if not self.capacity:
            # A cluster whose workers are still starting (dask-jobqueue) has none yet.
            await self._client.wait_for_workers(1, timeout=120)
            identity = await self._client.scheduler.identity()
            workers = identity.get("workers", {}).values()
            self.capacity = max(1, sum(int(w.get("nthreads", 1)) for w in workers))

    async def execute(
        self, task: Task, started: Callable[[], None], on_event: OnEvent | None = None
    ) -> Outcome:
        """Submit ``task`` to the cluster and wait for its result, passing a program's
        events to ``on_event`` while it runs."""
        start = time.perf_counter()
        key = f"qdispatch-{task.job_id}-{time.time_ns()}"
        queue: Any = None
        drain: asyncio.Task[None] | None = None
        if task.kind == "program":
            from distributed import Queue  # noqa: PLC0415  (dask is optional: qdispatch[dask])

            queue = await Queue(f"{key}-events", client=self._client)
            drain = asyncio.get_running_loop().create_task(_drain(queue, task.job_id, on_event))
        future = self._client.submit(
            _dask_run, task, self._threads, queue.name if queue else None, pure=False, key=key
        )
        self._futures[task.job_id] = future
        timer = None
        if self.time_limit:
            timer = asyncio.get_running_loop().call_later(
                self.time_limit, self._expire, task.job_id
            )
        _call(task.job_id, started)  # the cluster decides when it runs; to us it is running
        try:
            reply = await future
            return _outcome(reply, time.perf_counter() - start)
        except asyncio.CancelledError:
            if future.cancelled() or future.status == "cancelled":
                return self._stopped(task.job_id, start)
            raise
        except Exception as exc:
            if future.status == "cancelled":
                return self._stopped(task.job_id, start)
            # run_task answers a job's own failure with a Reply: an exception here is the
            # cluster's (a worker lost, a connection closed), so the job may run again.
            return Outcome(
                "error",
                error=f"the dask cluster lost the job: {type(exc).__name__}: {exc}",
                seconds=time.perf_counter() - start,
                transient=True,
            )
        finally:
            if timer is not None:
                timer.cancel()
            self._timed_out.discard(task.job_id)
            self._futures.pop(task.job_id, None)
            if drain is not None:
                # Before the outcome goes back: every event is stored ahead of the status.
                await _end_events(queue, drain, task.job_id)
                queue.close()

    def _stopped(self, job_id: str, start: float) -> Outcome:
        seconds = time.perf_counter() - start
        if job_id in self._timed_out:
            return time_limit_outcome(self.time_limit or 0.0, seconds)
        return Outcome("cancelled", seconds=seconds)

    def _expire(self, job_id: str) -> None:
        log.warning(
            "job %s ran past the time limit of %g s: cancelling it", job_id, self.time_limit
        )
        if self.cancel(job_id):
            self._timed_out.add(job_id)

    def busy_jobs(self) -> set[str]:
        """Ids of the jobs submitted to the cluster and not finished."""
        return set(self._futures)

    def workers(self) -> dict[str, int]:
        """Slots of the cluster in use and free (dask starts its workers itself)."""
        busy = len(self._futures)
        return {"idle": max(0, self.capacity - busy), "busy": busy, "starting": 0}

    def audit(self) -> None:
        """Nothing to check: dask replaces its own workers."""

    def cancel(self, job_id: str) -> bool:
        """Release a running job's future; ``False`` if it is not running here."""
        future = self._futures.get(job_id)
        if future is None:
            return False
        task = asyncio.get_running_loop().create_task(future.cancel())
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)
        return True

    async def close(self) -> None:
        """Disconnect from the cluster (the cluster itself keeps running)."""
        if self._client is not None:
            await self._client.close()
