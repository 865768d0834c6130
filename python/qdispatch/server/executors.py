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
simulation in C++ cannot be interrupted any other way.
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

    async def close(self) -> None: ...


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
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the service, not for us
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
        self.cancelled = False


class LocalExecutor:
    """A pool of ``workers`` spawned processes, each running one job at a time."""

    def __init__(self, workers: int, threads_per_worker: int = 1) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.capacity = workers
        self._threads = threads_per_worker
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._busy: dict[str, _Worker] = {}
        self._all: set[_Worker] = set()
        # One thread per worker waits on its pipe, so the event loop never blocks on one.
        self._waiters = ThreadPoolExecutor(max_workers=workers + 1, thread_name_prefix="qd-pipe")
        self._closing = False
        self._spawning: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the workers (they finish importing in the background)."""
        for _ in range(self.capacity):
            self._spawn_later()

    def _spawn_later(self) -> None:
        task = asyncio.get_running_loop().create_task(self._spawn())
        self._spawning.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._spawning.discard)

    async def _spawn(self) -> None:
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
        if self._closing:
            return
        if not hello or hello[0] != "ready":
            log.error("a worker process failed to start (exit code %s); retrying", process.exitcode)
            self._all.discard(worker)
            await asyncio.sleep(1.0)
            await self._spawn()
            return
        await self._idle.put(worker)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [w.process.pid for w in self._all if w.process.pid is not None]

    async def execute(
        self, task: Task, started: Callable[[], None], on_event: OnEvent | None = None
    ) -> Outcome:
        """Run ``task`` on the next idle worker, passing its events to ``on_event``."""
        worker = await self._idle.get()
        worker.job_id = task.job_id
        worker.cancelled = False
        self._busy[task.job_id] = worker
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        message: tuple[Any, ...] | None
        try:
            worker.conn.send(task)
            started()
            while True:
                received: tuple[Any, ...] = await loop.run_in_executor(
                    self._waiters, worker.conn.recv
                )
                if received[0] == "reply":
                    message = received
                    break
                _deliver(task.job_id, on_event, received[0], received[1])
        except (EOFError, OSError, BrokenPipeError):
            message = None
        finally:
            self._busy.pop(task.job_id, None)
            worker.job_id = None
        if message is None:
            return await self._replace(worker, start)
        await self._idle.put(worker)
        _, reply, seconds = message
        return _outcome(reply, seconds)

    async def _replace(self, worker: _Worker, start: float) -> Outcome:
        """The worker died under a job: say why, and start another in its place."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._waiters, worker.process.join, 5.0)
        self._all.discard(worker)
        worker.conn.close()
        elapsed = time.perf_counter() - start
        if not self._closing:
            self._spawn_later()
        if worker.cancelled:
            return Outcome("cancelled", seconds=elapsed)
        code = worker.process.exitcode
        how = (
            f"killed by signal {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit code {code}"
        )
        return Outcome(
            "error",
            error=f"the worker process running this job died ({how}); the job was not retried",
            seconds=elapsed,
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
            worker.conn.close()
        for task in self._spawning:
            task.cancel()
        for worker in list(self._all):
            worker.process.join(2.0)
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

    def __init__(self, scheduler: str, capacity: int | None = None, threads_per_task: int = 1):
        self.scheduler = scheduler
        self.capacity = capacity or 0
        self._threads = threads_per_task
        self._client: Any = None
        self._futures: dict[str, Any] = {}
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
        started()  # the cluster's own scheduler decides when it runs; to us it is running
        try:
            reply = await future
            return _outcome(reply, time.perf_counter() - start)
        except asyncio.CancelledError:
            if future.cancelled() or future.status == "cancelled":
                return Outcome("cancelled", seconds=time.perf_counter() - start)
            raise
        except Exception as exc:
            if future.status == "cancelled":
                return Outcome("cancelled", seconds=time.perf_counter() - start)
            return Outcome(
                "error", error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start
            )
        finally:
            self._futures.pop(task.job_id, None)
            if drain is not None:
                # Before the outcome goes back: every event is stored ahead of the status.
                await _end_events(queue, drain, task.job_id)
                queue.close()

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
