"""Where jobs run: a pool of local worker processes, or a dask.distributed cluster.

Both present the same small interface to the scheduler: ``capacity`` jobs at once,
``await execute(task, started)`` → :class:`Outcome` (``started()`` is called when a worker
has actually taken the task), and ``cancel(job_id)`` for a running job.

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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One job to execute: a Qobj (JSON bytes) for a backend."""

    job_id: str
    backend: str
    kind: str
    inputs: bytes


@dataclass(frozen=True)
class Outcome:
    """How an execution ended. ``result`` is the result JSON (also for failed jobs that
    produced partial results); ``error`` says why a job failed."""

    status: str  # "done" | "error" | "cancelled"
    result: bytes | None = None
    error: str | None = None
    seconds: float = 0.0


class Executor(Protocol):
    """What the scheduler needs of an executor."""

    capacity: int

    async def start(self) -> None: ...

    async def execute(self, task: Task, started: Callable[[], None]) -> Outcome: ...

    def cancel(self, job_id: str) -> bool: ...

    async def close(self) -> None: ...


def execute_task(task: Task, threads: int) -> bytes:
    """Run a task in this process and return the result JSON (what every worker calls)."""
    from . import runner  # a worker imports qiskit only when it first runs a job

    if task.kind != "circuit":
        raise runner.QobjExecutionError(f"job kind '{task.kind}' cannot run on this service")
    return runner.run_qobj(task.backend, task.inputs, task.job_id, max_parallel_threads=threads)


def _worker_main(conn: Connection, threads: int) -> None:
    """A local worker: run tasks from ``conn`` until the service goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the service, not for us
    conn.send(("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the service closed the pipe or died
        start = time.perf_counter()
        try:
            reply: tuple[Any, ...] = ("done", execute_task(task, threads))
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send((*reply, time.perf_counter() - start))
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

    async def execute(self, task: Task, started: Callable[[], None]) -> Outcome:
        """Run ``task`` on the next idle worker."""
        worker = await self._idle.get()
        worker.job_id = task.job_id
        worker.cancelled = False
        self._busy[task.job_id] = worker
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            worker.conn.send(task)
            started()
            reply = await loop.run_in_executor(self._waiters, worker.conn.recv)
        except (EOFError, OSError, BrokenPipeError):
            reply = None
        finally:
            self._busy.pop(task.job_id, None)
            worker.job_id = None
        if reply is None:
            return await self._replace(worker, start)
        await self._idle.put(worker)
        status, payload, seconds = reply
        if status == "done":
            return Outcome("done", result=payload, seconds=seconds)
        return Outcome("error", error=payload, seconds=seconds)

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


def _dask_run(task: Task, threads: int) -> bytes:
    return execute_task(task, threads)


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
            from distributed import Client
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

    async def execute(self, task: Task, started: Callable[[], None]) -> Outcome:
        """Submit ``task`` to the cluster and wait for its result."""
        start = time.perf_counter()
        key = f"qdispatch-{task.job_id}-{time.time_ns()}"
        future = self._client.submit(_dask_run, task, self._threads, pure=False, key=key)
        self._futures[task.job_id] = future
        started()  # the cluster's own scheduler decides when it runs; to us it is running
        try:
            result = await future
            return Outcome("done", result=result, seconds=time.perf_counter() - start)
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
