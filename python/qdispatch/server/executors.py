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
per-job time limit. A worker runs under its memory limit (``--worker-memory-mb``,
:mod:`.workermemory`): a job that needs more fails with ``memory_limit_exceeded``, not
retried, whether its worker could say so (a ``MemoryError``) or died of it (an abort in
C++ or Rust code, known by what it wrote on its stderr, which passes through the service's
own); either way the worker is replaced. So is a worker that, after a job, still holds over
half its limit (qiskit's allocator keeps what a large job took): it would fail the next.

Faults: a worker goes back to the idle pool only if it replied and was never signalled
(a cancel or the time limit may have killed it after its reply); every other way out of
:meth:`LocalExecutor.execute` (an exception of a callback, a dead pipe, the caller being
cancelled) retires the worker and starts another, in a ``finally``. An :class:`Outcome`
says whether its failure was *transient* (the worker died, the cluster lost the task):
the scheduler requeues those, and fails the others at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any, Protocol

from ..codes import MEMORY_LIMIT_EXCEEDED, RESULT_TOO_LARGE, TIME_LIMIT_EXCEEDED
from . import workermemory
from .pipeframes import FrameError, FrameReader
from .programs import ProgramRef, sharding

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
    #: (start, stop): run only these pubs of a primitive job, as one of its shards
    #: (``programs.sharding``)
    pubs: tuple[int, int] | None = None


@dataclass(frozen=True)
class Reply:
    """What a worker answers for a task: the result JSON, or why it failed (``code`` is
    the job's error code); ``timings`` of a program's steps, in seconds."""

    result: bytes | None = None
    error: str | None = None
    code: str = EXECUTION_FAILED
    timings: dict[str, float] | None = None
    #: the worker is not to take another job (it ran out of memory: whatever failed to
    #: allocate may have left a library half done)
    retire: bool = False


def _out_of_memory(timings: dict[str, float] | None = None) -> Reply:
    return Reply(
        error=workermemory.exceeded(), code=MEMORY_LIMIT_EXCEEDED, timings=timings, retire=True
    )


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

            inputs, span = task.inputs, None
            if task.pubs is not None:
                inputs, span = sharding.slice_inputs(task.inputs, *task.pubs)
            try:
                result, timings = run_program(task.program, task.backend, inputs, threads, emit)
            except ProgramFailed as exc:
                if isinstance(exc.__cause__, MemoryError):
                    return _out_of_memory(exc.timings)
                message = exc.message
                if span is not None:  # the pubs' indices in the message are the shard's
                    message = f"pubs {span.start}-{span.stop - 1} of {span.pubs}: {message}"
                return Reply(error=message, code=PROGRAM_FAILED, timings=exc.timings)
            if span is not None:
                result = sharding.envelope(span, result)
            return Reply(result=result, timings=timings)
        return Reply(error=f"job kind '{task.kind}' cannot run on this service")
    except MemoryError:
        return _out_of_memory()
    except Exception as exc:
        return Reply(error=f"{type(exc).__name__}: {exc}")


def _worker_main(
    conn: Connection,
    threads: int,
    memory_mb: int = 0,
    stderr: Connection | None = None,
    peak: Any = None,
) -> None:
    """A local worker: run tasks from ``conn`` until the service goes away. A program's
    events go out on the same pipe, ahead of the reply: ``(kind, data)``, then
    ``("reply", Reply, seconds)``. Its stderr goes to ``stderr`` (the service passes it
    on, keeping the last lines), its data segment is limited to ``memory_mb`` and the most
    it used since it took its current task is in ``peak`` (a shared integer that only the
    worker writes)."""
    if stderr is not None:
        os.dup2(stderr.fileno(), 2)
        stderr.close()
    workermemory.apply(memory_mb)
    if memory_mb and peak is not None:
        workermemory.watch(peak)
    # Ctrl-C, or a SIGTERM sent to the whole process group (systemd's default KillMode), is
    # for the service: it lets this worker finish its job while it drains, then stops it
    # itself (SIGKILL). Orphaned by a service that died, a worker exits at its pipe's EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _run_aer_jobs_inline()
    # What it holds before any job, with its imports: the base its growth is measured from.
    conn.send(("ready", os.getpid(), workermemory.data_bytes()))
    sending = threading.Lock()  # a program may publish from threads of its own

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the service closed the pipe or died
        except MemoryError:  # unpickling the job's task, outside the job's own code
            os._exit(workermemory.EXIT_OUT_OF_MEMORY)
        workermemory.restart_peak()
        start = time.perf_counter()
        emit, end = _task_emit(conn, sending)
        reply = run_task(task, threads, emit)
        try:
            with sending:
                end()
                conn.send(("reply", reply, time.perf_counter() - start))
        except (EOFError, OSError):
            return
        except MemoryError:  # pickling the job's reply
            os._exit(workermemory.EXIT_OUT_OF_MEMORY)
        # Not held while waiting for the next job, anyone's: it would count against its
        # memory limit.
        del task, reply, emit


def _task_emit(conn: Connection, sending: threading.Lock) -> tuple[OnEvent, Callable[[], None]]:
    """One task's ``emit``, and what ends it (called under ``sending``, before the reply).

    A thread a program started may outlive its ``main`` and publish later, while this
    worker is idle or running the next job, maybe another user's: what it sends after its
    task ended is dropped (a line on the worker's stderr says so), never read as the next
    job's events."""
    live = True
    warned = False

    def emit(kind: str, data: Any) -> None:
        nonlocal warned
        with sending:
            if live:
                conn.send((kind, data))
                return
            if warned:
                return
            warned = True
        print(f"events sent after their job ended are dropped (first: {kind})", file=sys.stderr)

    def end() -> None:
        nonlocal live
        live = False

    return emit, end


# How much of what a worker last wrote on its stderr is kept, to tell why it died.
_STDERR_TAIL = 4096


class _Stderr:
    """A worker's stderr: passed on to the service's as it comes, its end kept; its pipe
    is closed by the thread that reads it, at its end (the worker's exit)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._tail = b""
        self._lock = threading.Lock()  # restart() against the pump's append
        self._done = threading.Event()
        threading.Thread(target=self._pump, name="qd-worker-stderr", daemon=True).start()

    def _pump(self) -> None:
        fd = self._conn.fileno()
        try:
            # A read error ends the pump as the worker's EOF does: its pipe is unusable.
            with contextlib.suppress(OSError):
                while data := os.read(fd, 65536):
                    with self._lock:
                        self._tail = (self._tail + data)[-_STDERR_TAIL:]
                    with contextlib.suppress(OSError):  # the service's stderr closed
                        while data:
                            data = data[os.write(2, data) :]
        finally:
            # The pump closes its own end, once the worker (and whatever inherited its
            # stderr) is gone: closed by anyone else while it reads, the descriptor's number
            # could be reused and another file's data read and passed on as the worker's.
            self._conn.close()
            self._done.set()

    def restart(self) -> None:
        """As the worker is handed a task: what an earlier job wrote says nothing of why
        this one may die."""
        with self._lock:
            self._tail = b""

    def tail(self, wait: float) -> bytes:
        """What the worker wrote last, once it has exited (at most ``wait`` seconds)."""
        self._done.wait(wait)
        return self._tail


class InlineExecutor(concurrent.futures.Executor):
    """Runs each call when it is submitted, in the caller's thread, and answers a future
    that is already done (its result, or the exception it raised)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` now; its outcome is the future's."""
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # as a pool thread does: the caller's result() raises it
            future.set_exception(exc)
        return future


def _run_aer_jobs_inline() -> None:
    """qiskit-aer runs every ``AerSimulator.run`` in a thread of its own executor, which
    ``result()`` then waits for: two thread hops per simulation, a large part of a small
    job's on a busy machine. A local worker runs one job at a time and waits for every
    simulation it starts (the runner, the primitives), so it runs them in its own thread.
    Only local workers: a Dask worker runs jobs in several threads at once."""
    # qiskit-aer costs ~0.5 s to import: a worker pays it once, before its first job.
    from qiskit_aer.jobs import utils  # noqa: PLC0415

    utils.DEFAULT_EXECUTOR = InlineExecutor()


#: The largest message of a worker the service unpickles on its event loop; a larger one
#: (a result, a large interim result) is unpickled in a thread. Either is read on the loop,
#: without waiting, as its bytes arrive (:mod:`.pipeframes`).
INLINE_MESSAGE_BYTES = 16 * 1024
#: What one message of a worker may be beyond the service's result limit (pickle's framing,
#: the reply's timings and error): ``max_result_bytes`` + this is the most the service
#: holds of one message. A larger one ends its job with ``result_too_large``.
MESSAGE_OVERHEAD_BYTES = 16 * 1024 * 1024
#: Bytes taken off a worker's pipe in one read: the event loop's work per turn for a pipe.
_READ_BYTES = 256 * 1024
#: The largest task sent to a worker from the event loop: a pipe with nothing in it takes
#: this much without waiting (a Unix socket pair's buffer is ~200 KiB), even from a worker
#: that is stopped. A larger one (a big Qobj) is written by a thread, which the job's time
#: limit frees by killing the worker.
SEND_INLINE_BYTES = 64 * 1024


class _Worker:
    def __init__(self, process: BaseProcess, conn: Connection, stderr: _Stderr, peak: Any) -> None:
        self.process = process
        self.conn = conn
        self.baseline = 0  # bytes of data it held when it said it was ready
        self.stderr = stderr
        self.peak = peak  # the most data (bytes) it used in its current job, shared
        self.job_id: str | None = None
        self.state = "starting"  # → idle ⇄ busy → retired
        self.cancelled = False  # killed by cancel()
        self.timed_out = False  # killed at the time limit
        # What its pipe holds of messages not yet whole, read while it is busy (``_watch``),
        # and the buffer each read lands in (one allocation, not one per read).
        self.frames: FrameReader | None = None
        self.scratch = memoryview(bytearray(_READ_BYTES))
        self.pipe_error: BaseException | None = None  # the pipe's end, or a refused frame
        self.arrived: asyncio.Future[None] | None = None  # set when a frame or the end comes
        # The pipe's descriptor while the loop watches it, and whether the watch is paused
        # (whole messages wait to be taken: ``_readable``).
        self.fd: int | None = None
        self.paused = False

    @property
    def signalled(self) -> bool:
        """Whether the service killed it: even if it replied, it must not be reused."""
        return self.cancelled or self.timed_out


class LocalExecutor:
    """A pool of ``workers`` spawned processes, each running one job at a time; a job
    running longer than ``time_limit`` seconds is stopped (its worker is killed), and each
    worker may use ``memory_mb`` of data (0: no limit; :mod:`.workermemory`). A message
    of a worker over ``max_message_bytes`` stops its job (``result_too_large``)."""

    def __init__(
        self,
        workers: int,
        threads_per_worker: int = 1,
        time_limit: float | None = None,
        memory_mb: int = 0,
        max_message_bytes: int = 128 * 1024 * 1024 + MESSAGE_OVERHEAD_BYTES,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.capacity = workers
        self.time_limit = time_limit
        self.memory_mb = memory_mb
        self.max_message_bytes = max_message_bytes
        if memory_mb:
            workermemory.prepare_environment()
        self._threads = threads_per_worker
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._busy: dict[str, _Worker] = {}
        self._all: set[_Worker] = set()
        # A running job's pipe is watched by the loop itself (``_watch``); these threads
        # unpickle a large message, join dying workers and wait for new ones to say hello.
        self._waiters = ThreadPoolExecutor(
            max_workers=2 * workers + 2, thread_name_prefix="qd-pipe"
        )
        self._closing = False
        self._spawning: set[asyncio.Task[None]] = set()
        self._burying: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the workers (they finish importing in the background)."""
        warning = workermemory.overcommitted(self.capacity, self.memory_mb)
        if warning:
            log.warning("%s", warning)
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
        err_read, err_write = self._ctx.Pipe(duplex=False)
        peak = self._ctx.Value("q", 0, lock=False)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child, self._threads, self.memory_mb, err_write, peak),
            name="qdispatch-worker",
            daemon=True,
        )
        process.start()
        child.close()
        err_write.close()
        worker = _Worker(process, parent, _Stderr(err_read), peak)
        self._all.add(worker)
        loop = asyncio.get_running_loop()
        try:
            hello = await loop.run_in_executor(self._waiters, parent.recv)
        except (EOFError, OSError):
            hello = None
        except BaseException:  # cancelled by close(): no loop calls here, it may be gone
            self._all.discard(worker)
            if process.is_alive():
                process.kill()  # its stderr's pump ends, and closes its pipe, at its EOF
            raise
        if self._closing:
            return True
        if not hello or hello[0] != "ready":
            log.error("a worker process exited at start (exit code %s)", process.exitcode)
            self._all.discard(worker)
            parent.close()
            return False
        worker.baseline = int(hello[2]) if len(hello) > 2 else 0
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
        refused: FrameError | None = None
        try:
            worker.stderr.restart()
            if self.time_limit:
                timer = loop.call_later(self.time_limit, self._expire, worker, task.job_id)
            data = ForkingPickler.dumps(task)
            if len(data) <= SEND_INLINE_BYTES:
                worker.conn.send_bytes(data)
            else:
                await loop.run_in_executor(self._waiters, worker.conn.send_bytes, data)
            del data
            self._watch(worker)
            _call(task.job_id, started)
            while True:
                received = await self._receive(worker)
                if received[0] == "reply":
                    message = received
                    break
                _deliver(task.job_id, on_event, received[0], received[1])
        except (EOFError, OSError):
            died = True
        except FrameError as exc:
            refused = exc  # the worker is killed below, and the job fails with its reason
        finally:
            self._unwatch(worker)
            if timer is not None:
                timer.cancel()
            self._busy.pop(task.job_id, None)
            worker.job_id = None
            if (
                message is not None
                and not worker.signalled
                and not message[1].retire
                and not self._closing
                and not self._bloated(worker, task.job_id)
                and not self._garbled(worker, task.job_id)
            ):
                worker.state = "idle"
                self._idle.put_nowait(worker)
            else:
                # Killed by us (cancel, time limit) even after replying, dead on its own,
                # or left mid-job by an exception: never handed another job.
                self._retire(worker, kill=not died)
        if refused is not None:
            log.warning("job %s: %s", task.job_id, refused)
            return Outcome(
                "error",
                error=str(refused),
                seconds=time.perf_counter() - start,
                code=RESULT_TOO_LARGE if refused.too_large else EXECUTION_FAILED,
            )
        if message is None:
            return await self._died(worker, start)
        _, reply, seconds = message
        return _outcome(reply, seconds)

    def _bloated(self, worker: _Worker, job_id: str) -> bool:
        """Whether ``worker`` kept too much of what its job took to be given another
        (:func:`.workermemory.holds_too_much`): a large job must not leave its worker near
        the limit, failing every later job on it."""
        if not workermemory.holds_too_much(worker.process.pid, self.memory_mb, worker.baseline):
            return False
        log.info(
            "worker %s holds over half of what its memory limit of %d MB leaves beyond its "
            "start, after job %s: replacing it",
            worker.process.pid,
            self.memory_mb,
            job_id,
        )
        return True

    def _watch(self, worker: _Worker) -> None:
        """Read ``worker``'s pipe on the event loop, while it runs a job, as bytes arrive:
        non-blocking reads, whole frames only (:mod:`.pipeframes`). A worker stopped part
        way through a message (``SIGSTOP``, a program writing to the pipe) then holds only
        its own job, which ends by its time limit or a cancel, never the loop."""
        if worker.frames is None:
            worker.frames = FrameReader(self.max_message_bytes)
        worker.pipe_error = None
        worker.fd = fd = worker.conn.fileno()
        worker.paused = False
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._readable, worker)

    def _unwatch(self, worker: _Worker) -> None:
        """Stop watching ``worker``'s pipe (before anything closes it: a watcher left on a
        closed descriptor would fire for whatever reuses its number)."""
        fd, worker.fd = worker.fd, None
        if fd is None:
            return
        asyncio.get_running_loop().remove_reader(fd)
        if worker.conn.closed:
            return
        # The next task is sent with a blocking write (uvloop, like this, leaves a watched
        # descriptor non-blocking: the write would fail on a task larger than the pipe).
        with contextlib.suppress(OSError):
            os.set_blocking(fd, True)

    def _readable(self, worker: _Worker) -> None:
        """The loop's callback for a busy worker's pipe: what it holds now, never more.
        Once whole messages wait to be taken it reads no more until they are
        (``_receive``): a program publishing faster than the service takes its messages
        makes the service hold at most two messages and one read's worth, not all it sent."""
        assert worker.frames is not None
        fd = worker.fd
        if fd is None:
            return
        loop = asyncio.get_running_loop()
        try:
            n = os.readv(fd, [worker.scratch])
            if not n:
                raise EOFError("the worker's pipe ended")
            worker.frames.feed(worker.scratch[:n])
        except BlockingIOError:  # woken with nothing there (another reader, a signal)
            return
        except (EOFError, OSError, FrameError) as exc:
            # Nothing more is read: an ended pipe stays readable, a refused one is killed.
            loop.remove_reader(fd)
            worker.pipe_error = exc
        arrived = worker.arrived
        waiting = arrived is not None and not arrived.done()
        if worker.frames.ready and worker.pipe_error is None and not waiting:
            # Nobody is about to take them: at most these and the one being taken are held.
            loop.remove_reader(fd)
            worker.paused = True
        if (worker.frames.ready or worker.pipe_error) and waiting:
            assert arrived is not None
            arrived.set_result(None)

    def _garbled(self, worker: _Worker, job_id: str) -> bool:
        """Whether ``worker``'s pipe held more than its messages after its reply: bytes a
        program wrote to the pipe itself, which would be read as the next job's."""
        frames = worker.frames
        if frames is None or not (frames.ready or frames.midframe or _pending(worker.conn)):
            return False
        log.warning(
            "worker %s left bytes on its pipe after job %s's reply: replacing it",
            worker.process.pid,
            job_id,
        )
        return True

    async def _receive(self, worker: _Worker) -> tuple[Any, ...]:
        """The worker's next message, once the loop has read all of it (``_watch``). A
        worker gone raises ``EOFError``/``OSError`` once its whole messages are taken; a
        message over the limit or malformed raises :class:`FrameError`."""
        frames = worker.frames
        assert frames is not None
        loop = asyncio.get_running_loop()
        while not frames.ready:
            if worker.pipe_error is not None:
                raise worker.pipe_error
            if worker.paused and worker.fd is not None:  # the messages read are all taken
                worker.paused = False
                loop.add_reader(worker.fd, self._readable, worker)
            worker.arrived = loop.create_future()
            try:
                await worker.arrived
            finally:
                worker.arrived = None
        frame = frames.pop()
        if len(frame) <= INLINE_MESSAGE_BYTES:
            received: tuple[Any, ...] = pickle.loads(frame)
        else:
            received = await loop.run_in_executor(self._waiters, pickle.loads, frame)
        return received

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
        last_words = await loop.run_in_executor(self._waiters, worker.stderr.tail, 2.0)
        code = worker.process.exitcode
        # Near the limit counts only for a death by a signal (a library that does not
        # check what malloc returns): a worker that exited on its own said why, or not.
        signalled = code is not None and code < 0
        if code == workermemory.EXIT_OUT_OF_MEMORY or (
            self.memory_mb
            and (
                workermemory.says_out_of_memory(last_words)
                or (signalled and workermemory.came_near(worker.peak.value, self.memory_mb))
            )
        ):
            # Deterministic: the same job would kill the next worker too.
            return Outcome(
                "error",
                error=workermemory.exceeded(self.memory_mb),
                seconds=elapsed,
                code=MEMORY_LIMIT_EXCEEDED,
            )
        how = (
            f"killed by signal {signal.Signals(-code).name}"
            if signalled and code is not None
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
            self._unwatch(worker)
            # A job still waiting on this pipe hears that it ended, rather than waiting on.
            worker.pipe_error = worker.pipe_error or EOFError("the service is closing")
            if worker.arrived is not None and not worker.arrived.done():
                worker.arrived.set_result(None)
            worker.conn.close()
        self._waiters.shutdown(wait=False, cancel_futures=True)


def _pending(conn: Connection) -> bool:
    """Whether ``conn`` has bytes (or its end) to read now (poll(2): any descriptor
    number, where select's stop at 1024)."""
    if conn.closed:
        return False
    try:
        return conn.poll(0)
    except (OSError, ValueError):
        return False


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
    # A thread the program started may publish after the task ended: dropped, not put in
    # a queue made anew on the scheduler that nobody reads or closes.
    live = True

    def emit(kind: str, data: Any) -> None:
        nonlocal queue
        if events is None:
            return
        with sending:
            if not live:
                return
            if queue is None:
                from distributed import Queue  # noqa: PLC0415  (dask is optional: qdispatch[dask])

                queue = Queue(events)  # through this worker's client
            queue.put([kind, data])  # returns once the scheduler holds the item

    try:
        return run_task(task, threads, emit)
    finally:
        with sending:
            live = False
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


# Reconnecting to a lost Dask scheduler: the first retry after this many seconds, doubling
# up to the last; each attempt waits this long for the scheduler to answer.
_RECONNECT_FIRST = 0.5
_RECONNECT_MAX = 30.0
_CONNECT_TIMEOUT = 5.0
# How often the connection is checked and the cluster's thread count read.
_POLL_INTERVAL = 1.0


async def _result(future: Any) -> tuple[Reply | None, str | None]:
    """A dask future's reply, or why there is none. Never raises for the future's own
    fate (so nothing is left unretrieved); a cancel of this waiter itself propagates."""
    try:
        reply: Reply = await future
        return reply, None
    except asyncio.CancelledError as exc:
        reason = getattr(exc, "reason", None)  # distributed's FutureCancelledError
        if reason is None:
            raise
        return None, f"dask cancelled the task ({reason})"
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


async def _close_quietly(client: Any) -> None:
    # A client whose scheduler is gone may fail, or wait, while closing: neither matters.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), _CONNECT_TIMEOUT)


@dataclass
class _DaskRun:
    """A job submitted (or being submitted) to the cluster."""

    stop: asyncio.Event
    future: Any = None


def _exposed(address: str | None) -> bool:
    """Whether a scheduler address is plain TCP on something other than loopback."""
    if not address or not address.startswith("tcp://"):
        return False
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    return host not in ("127.0.0.1", "localhost", "::1")


class DaskExecutor:
    """Runs jobs as tasks on a dask.distributed cluster: one that is already running
    (``scheduler``, an address), or one the service starts through dask-jobqueue
    (``cluster``, a kind of :data:`~qdispatch.server.config.JOBQUEUE_CLUSTERS`) whose
    workers it scales from its queue (``demand()``: jobs queued and running) between
    ``min_workers`` and ``max_workers``.

    ``capacity`` follows the cluster's thread count as workers come and go;
    ``on_capacity()`` is called when it changes, so that the scheduler dispatches again.

    Only the service's own cancels end a job CANCELLED (a user's cancel) or with
    ``time_limit_exceeded`` (the time limit): their ids are remembered while the job's
    future is released. Every other end without a reply — the future cancelled by Dask
    (the client lost the scheduler), a lost worker, a closed connection — is a transient
    failure, which the scheduler requeues as another attempt. A lost connection to the
    scheduler is re-established with backoff (0.5 s doubling to 30 s); meanwhile the
    capacity is 0, so jobs stay QUEUED, and dispatch resumes on reconnect."""

    def __init__(
        self,
        scheduler: str | None = None,
        threads_per_task: int = 1,
        time_limit: float | None = None,
        *,
        cluster: str | None = None,
        min_workers: int = 0,
        max_workers: int = 4,
        demand: Callable[[], int] | None = None,
        on_capacity: Callable[[], None] | None = None,
        poll_interval: float = _POLL_INTERVAL,
        insecure: bool = False,
    ):
        if not scheduler and not cluster:
            raise ValueError("the dask executor needs a scheduler address or a cluster kind")
        self.scheduler = scheduler
        self.capacity = 0
        self.time_limit = time_limit
        self._threads = threads_per_task
        self._cluster_kind = cluster
        self._bounds = (min_workers, max_workers)
        self._demand = demand or (lambda: 0)
        self._on_capacity = on_capacity
        self._poll = poll_interval
        self._cluster: Any = None
        self._insecure = insecure
        self._security: Any = None
        self._adaptive: Any = None
        self._client: Any = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()  # set when the current connection is found lost
        self._lost_at = 0.0
        self._last_capacity = 0  # before the loss: what "starting" waits for
        self._scheduler_id: str | None = None
        self._runs: dict[str, _DaskRun] = {}
        # Jobs the service itself is stopping (a user's cancel, the time limit): only these
        # end without a reply and without being retried.
        self._cancelled: set[str] = set()
        self._timed_out: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Start the cluster (``--dask-cluster``) or find the scheduler, and connect. A
        scheduler that cannot be reached at start is an error (a wrong address is found
        at once); one lost later is reconnected to."""
        try:
            import distributed  # noqa: F401, PLC0415  (dask is optional: --executor dask)
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the dask executor needs dask.distributed: pip install 'qdispatch[dask]'"
            ) from exc
        if self._cluster_kind is not None:
            # dask-jobqueue and the adaptive machinery load for --dask-cluster only.
            from . import dask_cluster  # noqa: PLC0415

            self._cluster = await dask_cluster.start_cluster(
                self._cluster_kind, insecure=self._insecure
            )
            self._security = self._cluster.security
            self.scheduler = self._cluster.scheduler_address
            minimum, maximum = self._bounds
            self._adaptive = dask_cluster.adapt(self._cluster, self._demand, minimum, maximum)
        elif _exposed(self.scheduler):
            log.warning(
                "the dask scheduler %s is reached over plain TCP: anyone who can reach it can "
                "run code in its workers and read the jobs sent there; use tls:// with "
                "distributed.comm.tls.* in the Dask configuration",
                self.scheduler,
            )
        await self._connect()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _connect(self) -> None:
        from distributed import Client  # noqa: PLC0415  (dask is optional: --executor dask)

        # With --dask-cluster, the cluster's own TLS; otherwise Dask's configuration
        # (distributed.comm.tls.*), which Client reads itself.
        extra = {"security": self._security} if self._security is not None else {}
        client = Client(
            self.scheduler,
            asynchronous=True,
            timeout=_CONNECT_TIMEOUT,
            set_as_default=False,
            **extra,
        )
        try:
            await client
            self._client = client
            await asyncio.wait_for(self._refresh(), _CONNECT_TIMEOUT)
        except BaseException:
            self._client = None
            await _close_quietly(client)
            raise
        self._lost = asyncio.Event()
        self._connected.set()

    async def _refresh(self) -> None:
        """Read the cluster's workers: capacity is their thread count."""
        identity = await self._client.scheduler.identity()
        scheduler_id = identity.get("id")
        if self._connected.is_set() and scheduler_id != self._scheduler_id:
            # The client reconnected by itself between two checks: the futures it had
            # were cancelled by Dask (their jobs are requeued); say it happened.
            log.warning(
                "the dask scheduler at %s was restarted (it had lost the service's tasks; "
                "their jobs were requeued)",
                self.scheduler,
            )
        self._scheduler_id = scheduler_id
        workers = identity.get("workers", {}).values()
        self._set_capacity(sum(int(w.get("nthreads", 1)) for w in workers))

    def _set_capacity(self, capacity: int) -> None:
        if capacity == self.capacity:
            return
        log.info("dask cluster capacity: %d -> %d threads", self.capacity, capacity)
        self.capacity = capacity
        if self._on_capacity is not None:
            try:
                self._on_capacity()
            except Exception:
                log.exception("the capacity callback failed")

    def _lose(self, reason: str) -> None:
        """The connection is gone: no capacity until it is back; jobs waiting on it are
        answered as transient failures by :meth:`execute`."""
        if not self._connected.is_set() or self._closing:
            return
        self._connected.clear()
        self._lost.set()
        self._lost_at = time.monotonic()
        self._last_capacity = self.capacity
        log.error(
            "lost the connection to the dask scheduler at %s (%s): running jobs are "
            "requeued, queued ones wait; reconnecting",
            self.scheduler,
            reason,
        )
        self._set_capacity(0)

    async def _watch(self) -> None:
        """Check the connection every ``poll_interval`` and follow the thread count;
        reconnect with backoff when it is lost. Supervised: an error is logged and the
        watch goes on."""
        while not self._closing:
            try:
                if self._connected.is_set():
                    await asyncio.sleep(self._poll)
                    await self._check()
                else:
                    await self._reconnect()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checking the dask connection failed")
                await asyncio.sleep(self._poll)

    async def _check(self) -> None:
        client = self._client
        if client is None or client.status != "running":
            self._lose(f"client {getattr(client, 'status', 'gone')}")
            return
        try:
            await asyncio.wait_for(self._refresh(), _CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            self._lose(f"{type(exc).__name__}: {exc}")

    async def _reconnect(self) -> None:
        old, self._client = self._client, None
        if old is not None and await self._recovered(old):
            self._reconnected(1)
            return
        if old is not None:
            await _close_quietly(old)
        delay, attempts = _RECONNECT_FIRST, 0
        while not self._closing:
            attempts += 1
            try:
                await self._connect()
            except Exception as exc:
                log.info(
                    "reconnecting to the dask scheduler at %s failed (%s); next try in %.1f s",
                    self.scheduler,
                    exc,
                    delay,
                )
            else:
                self._reconnected(attempts)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX)

    async def _recovered(self, client: Any) -> bool:
        """Whether ``client`` reconnected by itself: dask's client retries for its
        ``timeout`` (cancelling that logs a traceback, so it is waited out), then closes."""
        deadline = time.monotonic() + 2 * _CONNECT_TIMEOUT
        while client.status == "connecting" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if client.status != "running":
            return False
        self._client = client
        try:
            await asyncio.wait_for(self._refresh(), _CONNECT_TIMEOUT)
        except Exception:
            self._client = None
            return False
        self._lost = asyncio.Event()
        self._connected.set()
        return True

    def _reconnected(self, attempts: int) -> None:
        log.warning(
            "reconnected to the dask scheduler at %s after %.1f s (%d attempts); capacity %d",
            self.scheduler,
            time.monotonic() - self._lost_at,
            attempts,
            self.capacity,
        )

    async def _ready_client(self) -> tuple[Any, asyncio.Event]:
        """The connected client and the event that says it was lost; waits out a
        reconnect (the scheduler may dispatch just before the loss is noticed)."""
        while True:
            await self._connected.wait()
            client = self._client
            if client is not None and client.status == "running":
                return client, self._lost
            self._lose(f"client {getattr(client, 'status', 'gone')}")

    async def execute(
        self, task: Task, started: Callable[[], None], on_event: OnEvent | None = None
    ) -> Outcome:
        """Submit ``task`` to the cluster and wait for its result, passing a program's
        events to ``on_event`` while it runs."""
        client, lost = await self._ready_client()
        start = time.perf_counter()
        job_id = task.job_id
        key = f"qdispatch-{job_id}-{time.time_ns()}"
        run = _DaskRun(asyncio.Event())
        self._runs[job_id] = run
        queue: Any = None
        drain: asyncio.Task[None] | None = None
        timer = None
        replied = False
        try:
            # The cluster decides when it runs; to us it is running (and an attempt) now,
            # so a failure to submit is requeued like any other loss.
            _call(job_id, started)
            if self.time_limit:
                timer = asyncio.get_running_loop().call_later(self.time_limit, self._expire, job_id)
            problem: str | None = None
            if not run.stop.is_set():
                try:
                    if task.kind == "program":
                        from distributed import Queue  # noqa: PLC0415  (dask is optional)

                        queue = await Queue(f"{key}-events", client=client)
                        drain = asyncio.get_running_loop().create_task(
                            _drain(queue, job_id, on_event)
                        )
                    run.future = client.submit(
                        _dask_run,
                        task,
                        self._threads,
                        queue.name if queue else None,
                        pure=False,
                        key=key,
                    )
                except Exception as exc:
                    problem = f"{type(exc).__name__}: {exc}"
            if run.future is not None:
                reply, problem = await self._wait(run, lost)
                if reply is not None:
                    replied = True
                    return _outcome(reply, time.perf_counter() - start)
            seconds = time.perf_counter() - start
            if job_id in self._cancelled:
                return self._stopped(job_id, seconds)
            # run_task answers a job's own failure with a Reply: anything else is the
            # cluster's (a worker lost, the connection closed), so the job may run again.
            return Outcome(
                "error",
                error=f"the dask cluster lost the job: {problem or 'no reply'}",
                seconds=seconds,
                transient=True,
            )
        finally:
            if timer is not None:
                timer.cancel()
            self._runs.pop(job_id, None)
            self._cancelled.discard(job_id)
            self._timed_out.discard(job_id)
            if drain is not None:
                if replied:
                    # Before the outcome goes back: every event is stored ahead of it.
                    await _end_events(queue, drain, job_id)
                else:  # nothing more will come, and the scheduler may be gone
                    drain.cancel()
                with contextlib.suppress(Exception):
                    queue.close()

    async def _wait(self, run: _DaskRun, lost: asyncio.Event) -> tuple[Reply | None, str | None]:
        """The future's reply, or why there is none: it failed, the service stopped the
        job (``run.stop``), or the connection was lost."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_task(_result(run.future))
        stopping = loop.create_task(run.stop.wait())
        losing = loop.create_task(lost.wait())
        try:
            await asyncio.wait({waiter, stopping, losing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (waiter, stopping, losing):
                pending.cancel()
        if waiter.done() and not waiter.cancelled():
            return waiter.result()
        if losing.done() and not losing.cancelled():
            return None, "the connection to the dask scheduler was lost"
        return None, "stopped by the service"

    def _stopped(self, job_id: str, seconds: float) -> Outcome:
        if job_id in self._timed_out:
            return time_limit_outcome(self.time_limit or 0.0, seconds)
        return Outcome("cancelled", seconds=seconds)

    def _expire(self, job_id: str) -> None:
        log.warning(
            "job %s ran past the time limit of %g s: cancelling it", job_id, self.time_limit
        )
        if job_id in self._runs:
            self._timed_out.add(job_id)
            self.cancel(job_id)

    def busy_jobs(self) -> set[str]:
        """Ids of the jobs submitted to the cluster and not finished."""
        return set(self._runs)

    def workers(self) -> dict[str, int]:
        """Slots (worker threads) of the cluster in use and free, and those on their way:
        batch jobs requested and not yet connected, or, while the scheduler is out of
        reach, the slots the cluster had."""
        busy = len(self._runs)
        starting = 0
        if not self._connected.is_set():
            starting = max(1, self._last_capacity)
        elif self._cluster is not None:
            requested, observed = len(self._cluster.requested), len(self._cluster.observed)
            starting = max(0, requested - observed) * max(1, self._threads_per_worker())
        return {"idle": max(0, self.capacity - busy), "busy": busy, "starting": starting}

    def _threads_per_worker(self) -> int:
        job = getattr(self._cluster, "_dummy_job", None)
        return int(getattr(job, "worker_process_threads", 1))

    def audit(self) -> None:
        """Nothing to check: dask replaces its own workers, and the connection is
        watched all the time."""

    def cancel(self, job_id: str) -> bool:
        """Stop a running job: remember that the service stopped it, release its future;
        ``False`` if it is not running here."""
        run = self._runs.get(job_id)
        if run is None:
            return False
        self._cancelled.add(job_id)
        run.stop.set()
        if run.future is not None:
            task = asyncio.get_running_loop().create_task(self._release(run.future))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return True

    async def _release(self, future: Any) -> None:
        # The job is over for the service already; the cluster may finish the computation.
        try:
            await asyncio.wait_for(future.cancel(), _CONNECT_TIMEOUT)
        except Exception as exc:
            log.info("could not cancel a dask future (%s); its result is dropped", exc)

    async def close(self) -> None:
        """Disconnect from the cluster; stop it if the service started it (its batch
        jobs are cancelled), otherwise it keeps running."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for task in list(self._background):
            task.cancel()
        if self._client is not None:
            await _close_quietly(self._client)
            self._client = None
        if self._cluster is not None:
            if self._adaptive is not None:
                self._adaptive.stop(reason="the service is stopping")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._cluster.close(), 30)
