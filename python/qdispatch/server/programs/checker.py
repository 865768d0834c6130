"""Checking a program job's inputs, and a Qobj's QPY experiments, in a separate process
with a memory and a time limit.

A program's params are decoded at submission (``encoding.loads``) and its ``estimate``
reads them. Both run qiskit code over what a user sent, and some of it cannot be bounded
from outside: qiskit's QPY reader allocates what a nested circuit's header declares
before reading it (2**28 declared qubits is a 4 GiB allocation, and a failed allocation
in its Rust core aborts the process), and grouping observables is quadratic. In the
service process either would stop every user's requests. Here it can only end the
checking process: the job is refused with ``400 invalid_params`` naming the limit, and
the next check gets a fresh process. A circuit job's Qobj whose experiments travel as QPY
(dynamic circuits) is decoded here the same way before it is stored (``400 invalid_qobj``):
what a worker then decodes is known to fit.

The processes are spawned (a tokio runtime and SQLite connections do not survive a
fork), on demand, and each imports qiskit once (about a second); at most ``processes``
first tries run at once in the shared processes, the others wait their turn (second tries,
below, run in processes of their own: at most ``processes`` more).

One user may delay only themselves (docs/service.md, "Checking inputs fairly"): at most
``user_running`` of a user's checks hold a checking process at once (the others wait
behind their own, not in everyone's queue), at most ``user_checks`` are running or waiting
(past them ``429 check_limit`` at once), and the second try of a check whose process died
beside another runs in a process of its own, outside the shared ones, so that a check that
kills processes holds no one else's slot while it is tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from ... import codes as E
from ...disassembler import QobjExecutionError, check_qpy_experiments
from .. import backends as bk
from ..errors import ServiceError
from . import Limits, Registry
from .sharding import SHARD_MAX_PUBS
from .submission import decode_and_estimate

#: Address space a checking process may add to what it holds once its imports are done
#: (``ServiceConfig.check_memory_bytes``, ``serve --check-memory-mb``). Decoded params are
#: at most 256 MiB of payloads (``encoding.MAX_DECODED_BYTES``) plus the objects built from
#: them; 2 GiB is room for any honest job.
CHECK_MEMORY_BYTES = 2 << 30
#: Seconds one check may take, once its process is up.
CHECK_SECONDS = 30.0
#: Seconds a fresh checking process may take to start (spawn, import qiskit, load the
#: programs): not the user's time, so not counted in ``CHECK_SECONDS``.
START_SECONDS = 120.0
#: Seconds a client is told to wait (``Retry-After``) when refused ``429 check_limit``.
CHECK_LIMIT_RETRY_AFTER = 1

# The circuits a program job carries as a Qobj are checked for the job's backend's width
# with the ideal simulator's gates (programs make circuits fit a device themselves,
# docs/runtime.md), and no limit on their number but the request size.
_PROGRAM_GATES = "aer_simulator"
_PROGRAM_MAX_CIRCUITS = 10_000_000

# The checking process's own state, made once by its initializer.
_registry: Registry | None = None
_memory_bytes = CHECK_MEMORY_BYTES


def program_specs() -> dict[str, Any]:
    """Each backend's checks of a program's Qobj inputs (``QOBJ_INPUTS``)."""
    catalog = bk.catalog()
    return {
        name: bk.program_circuits_spec(defn, catalog[_PROGRAM_GATES], _PROGRAM_MAX_CIRCUITS)
        for name, defn in catalog.items()
    }


def _address_space() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


#: How often a checking process looks whether the service that started it is still there.
PARENT_POLL_SECONDS = 1.0


def _exit_with(parent: int) -> None:
    """Ends this process once ``parent`` is gone. A service killed outright (kill -9, the
    OOM killer) cannot stop its pool, and the pool's processes hold both ends of their call
    queue, so they would wait on it for good: a process and its memory left behind on each
    such restart."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(0)


def _start(programs_dir: Path | None, memory_bytes: int, started: Any) -> None:
    global _registry, _memory_bytes
    threading.Thread(
        target=_exit_with, args=(os.getppid(),), name="qd-check-parent", daemon=True
    ).start()
    _memory_bytes = memory_bytes
    _registry = Registry.discover(programs_dir)
    _specs.update(program_specs())
    used = _address_space()
    if used and memory_bytes:
        limit = used + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    with started.get_lock():
        started.value += 1


_specs: dict[str, Any] = {}


def _ready() -> bool:
    """Answered once the process has run its initializer: the check's clock starts then."""
    return _registry is not None


def _check(
    program_id: str, params: bytes, backend: str, limits: Limits, max_pubs: int
) -> tuple[Any, ...]:
    """In the checking process: ``("ok", executions, shots, each pub's executions or
    None)`` or ``("refused", status, code, message)`` (exceptions with their own arguments
    do not travel well). Each pub's executions only for at most ``max_pubs`` pubs: a job
    of more runs unsharded, and nothing per pub crosses to the service's event loop."""
    assert _registry is not None
    program = _registry.get(program_id)
    if program is None:
        return ("refused", 400, E.UNKNOWN_PROGRAM, f"unknown program {program_id!r}")
    try:
        executions, shots, per_pub = decode_and_estimate(program, params, _specs[backend], limits)
    except ServiceError as exc:
        return ("refused", exc.status, exc.code, exc.message)
    except MemoryError:
        return ("refused", 400, E.INVALID_PARAMS, _too_big("params", _memory_bytes))
    if per_pub is not None and len(per_pub) > max_pubs:
        per_pub = None
    return ("ok", executions, shots, per_pub)


def _check_qobj(qobj: bytes) -> tuple[Any, ...]:
    """In the checking process: ``("ok", experiments, 0, None)`` once every QPY experiment of
    the Qobj decodes and fits its header, else ``("refused", …)`` as :func:`_check`."""
    try:
        found = check_qpy_experiments(qobj)
    except QobjExecutionError as exc:
        return ("refused", 400, E.INVALID_QOBJ, str(exc))
    except MemoryError:
        return ("refused", 400, E.INVALID_QOBJ, _too_big(_QPY, _memory_bytes))
    return ("ok", found, 0, None)


_QPY = "the Qobj's QPY experiments"


def _too_big(what: str, memory_bytes: int) -> str:
    return (
        f"{what} do not decode within the service's memory limit for checking inputs "
        f"({memory_bytes >> 20} MiB beyond its own)"
    )


class _PoolGone(Exception):
    """The checking processes a check was to run in were broken or stopped before it
    reached them: it never ran there."""


#: How many times a check waits for a fresh pool after its own was broken or stopped by
#: others' checks before that counts as one of its tries.
_REPLACEMENTS = 3


class _CheckerDied(Exception):
    """The checking process died under a check; ``alone``: no other check ran in its pool."""

    def __init__(self, alone: bool) -> None:
        super().__init__("the checking process died")
        self.alone = alone


def user_running(processes: int) -> int:
    """Checks one user may have running at once among ``processes``: half of them (at
    least one), so that the other half is always there for everyone else."""
    return max(1, processes // 2)


class _User:
    """One user's checks: running or waiting (``checks``), and the checking processes they
    may hold at once (``running``)."""

    def __init__(self, running: int) -> None:
        self.checks = 0
        self.running = asyncio.Semaphore(running)


class InputChecker:
    """Runs :func:`~qdispatch.server.programs.submission.decode_and_estimate` for the
    service in ``processes`` spawned processes, each limited to ``memory_bytes`` more
    address space and each check to ``seconds``.

    Per user (the ``user`` a check names): at most ``user_running`` checks hold a process
    at once (``None``: ``processes``, no bound) and at most ``user_checks`` are running or
    waiting (``0``: no bound; past it :meth:`check` raises ``429 check_limit``)."""

    def __init__(
        self,
        programs_dir: Path | None,
        processes: int = 2,
        memory_bytes: int = CHECK_MEMORY_BYTES,
        seconds: float = CHECK_SECONDS,
        *,
        user_running: int | None = None,
        user_checks: int = 0,
    ) -> None:
        self._args = (programs_dir, memory_bytes)
        self._memory_bytes = memory_bytes
        self._processes = processes
        self._seconds = seconds
        self._user_running = max(1, min(processes, user_running or processes))
        self._user_checks = user_checks
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        # How many of ``_pool``'s processes have started (shared with them). While fewer
        # checks run in it than processes are up, one that is up is free and takes the
        # next check at once (a process spawned meanwhile is still importing), so the
        # check goes in one round trip, without asking first.
        self._started: Any = None
        # One check per process at a time, so that a check's time counts from when a
        # process takes it, not from when it joined the queue (per event loop: asyncio
        # primitives belong to one).
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore, asyncio.Semaphore] | None
        self._slots = None
        # Each user's checks (per event loop, as the slots); an entry lives while the user
        # has a check running or waiting.
        self._users: dict[str, _User] = {}
        # The processes of second tries now (each discarded after its check).
        self._lone: set[ProcessPoolExecutor] = set()
        # Checks running in each pool, and how many were running when it broke: a check
        # that was running alone when its process died is what killed it.
        self._running: dict[ProcessPoolExecutor, int] = {}
        self._running_at_break: dict[ProcessPoolExecutor, int] = {}

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                context = multiprocessing.get_context("spawn")
                self._started = context.Value("i", 0)
                self._pool = ProcessPoolExecutor(
                    self._processes,
                    mp_context=context,
                    initializer=_start,
                    initargs=(*self._args, self._started),
                )
            return self._pool

    def _lone_executor(self) -> ProcessPoolExecutor:
        """A fresh process for one check's second try, apart from the shared ones."""
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(
            1, mp_context=context, initializer=_start, initargs=(*self._args, context.Value("i", 0))
        )
        self._lone.add(pool)
        return pool

    def _free_process_up(self, pool: ProcessPoolExecutor) -> bool:
        """Whether a process of ``pool`` that has started is free for the next check."""
        with self._lock:
            return pool is self._pool and self._running.get(pool, 0) < self._started.value

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Drop ``pool`` (broken, or running a check past its time): its processes are
        killed so that a runaway check stops using the CPU."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        self._lone.discard(pool)
        if pool in self._running:  # the checks still running there did not kill it
            self._running_at_break.setdefault(pool, 0)
        # The executor has no public way to stop a running call (3.14 adds one). Checks
        # queued behind it fail with BrokenProcessPool, and are tried again.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                process.kill()
        pool.shutdown(wait=False)

    def _loop_slots(self) -> tuple[asyncio.Semaphore, asyncio.Semaphore]:
        """The shared checking processes' slots, and the slots of second tries (each in a
        process of its own)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            # Second tries are as many at once as shared processes: a user's checks hold at
            # most half of those, so one user's second tries never keep another's waiting.
            self._slots = (
                loop,
                asyncio.Semaphore(self._processes),
                asyncio.Semaphore(self._processes),
            )
            self._users.clear()
        return self._slots[1], self._slots[2]

    @contextlib.asynccontextmanager
    async def _user(self, user: str, code: str) -> AsyncIterator[_User]:
        """``user``'s place among the checks running or waiting, or ``429 check_limit``
        at once when they have as many as allowed: a user's many slow checks wait behind
        one another, never in everyone's queue without end."""
        self._loop_slots()  # a new event loop starts with no user's checks
        mine = self._users.get(user)
        if mine is None:
            mine = self._users[user] = _User(self._user_running)
        if self._user_checks and mine.checks >= self._user_checks:
            raise ServiceError(
                429,
                E.CHECK_LIMIT,
                f"user '{user}' has {mine.checks} submissions whose inputs are being "
                f"checked, the most allowed at once; retry when one is answered "
                f"(refused: {code})",
                headers={"Retry-After": str(CHECK_LIMIT_RETRY_AFTER)},
                limit=self._user_checks,
            )
        mine.checks += 1
        try:
            yield mine
        finally:
            mine.checks -= 1
            if not mine.checks and self._users.get(user) is mine:
                del self._users[user]

    @contextlib.asynccontextmanager
    async def _slot(self, mine: _User, again: bool) -> AsyncIterator[None]:
        """One checking process for a check: one of the shared ones, taken once the user
        holds fewer than their share; or (``again``) a fresh process of its own for a
        second try, with no other check beside it, so that if it dies again it is the
        check that killed it, and a check that was beside it is not. A second try takes
        no shared process: a user whose checks kill processes holds no one else's slot
        meanwhile."""
        shared, apart = self._loop_slots()
        async with mine.running, apart if again else shared:
            yield

    async def check(
        self,
        program_id: str,
        params: bytes,
        backend: str,
        limits: Limits,
        max_pubs: int = SHARD_MAX_PUBS,
        *,
        user: str = "",
    ) -> tuple[int, int, list[int] | None]:
        """(executions, shots per execution, each pub's executions for a program that may
        run as shards and has at most ``max_pubs`` pubs) of ``user``'s program job, or the
        :class:`ServiceError` that refuses it."""
        return await self._run(
            user,
            E.INVALID_PARAMS,
            "params",
            _check,
            program_id,
            params,
            backend,
            limits,
            max_pubs,
        )

    async def check_qobj(self, qobj: bytes, *, user: str = "") -> int:
        """Decodes the Qobj's QPY experiments of ``user``'s job as a worker will (how many
        there are), or raises the :class:`ServiceError` that refuses the job (``400
        invalid_qobj``)."""
        found, _, _ = await self._run(user, E.INVALID_QOBJ, _QPY, _check_qobj, qobj)
        return found

    async def _run(
        self, user: str, code: str, what: str, check: Any, *args: Any
    ) -> tuple[int, int, list[int] | None]:
        """``check(*args)`` in a checking process for ``user``: its two numbers and its
        list, or the refusal."""
        async with self._user(user, code) as mine:
            answer = await self._attempts(mine, code, what, check, *args)
        if answer[0] == "refused":
            _, status, refusal, message = answer
            raise ServiceError(status, refusal, message)
        per_pub = answer[3]
        return int(answer[1]), int(answer[2]), [int(n) for n in per_pub] if per_pub else None

    async def _attempts(
        self, mine: _User, code: str, what: str, check: Any, *args: Any
    ) -> tuple[Any, ...]:
        """The checking process's answer to ``check(*args)``, tried a second time in a
        process of its own if its first process died beside another check."""
        attempt = replaced = 0
        while True:
            again = attempt > 0
            pool: ProcessPoolExecutor | None = None
            try:
                async with self._slot(mine, again=again):
                    # Taken once this check has its turn: the shared pool it would have
                    # found on arrival may have been discarded while it waited (another
                    # check broke it or ran past its time). A second try gets a fresh
                    # process of its own, made for it and stopped after.
                    pool = self._lone_executor() if again else self._executor()
                    answer = await self._in(pool, check, *args)
                if again:
                    self._discard(pool)
                return answer
            except _PoolGone as exc:
                # Broken or discarded before this check reached it: not this check's doing,
                # and not one of its tries (a few times over: then it counts as one).
                if pool is not None:
                    self._discard(pool)
                replaced += 1
                if replaced <= _REPLACEMENTS:
                    continue
                if again:  # others' checks keep breaking the processes: not the inputs' fault
                    raise ServiceError(
                        503,
                        E.SERVICE_BUSY,
                        f"checking {what}: the checking processes were replaced "
                        f"{replaced} times while this check waited; retry",
                        headers={"Retry-After": "1"},
                    ) from exc
                attempt += 1
                replaced = 0
            except (BrokenProcessPool, _CheckerDied) as exc:
                # Another check's process may have died under this one: one more try, in
                # a fresh process with no other check beside it, tells the two apart. A
                # check that was already running alone killed its process itself, and is
                # not given a second process to fill.
                alone = isinstance(exc, _CheckerDied) and exc.alone
                if pool is not None:
                    self._discard(pool)
                if again or alone:
                    raise ServiceError(400, code, _too_big(what, self._memory_bytes)) from exc
                attempt += 1
            except asyncio.TimeoutError as exc:  # TimeoutError itself from 3.11
                if pool is not None:
                    self._discard(pool)
                raise ServiceError(
                    400,
                    code,
                    f"checking {what} took longer than the service's {self._seconds:g} s",
                ) from exc
            except BaseException:
                if again and pool is not None:  # cancelled (the client went away)
                    self._discard(pool)
                raise

    async def _in(self, pool: ProcessPoolExecutor, check: Any, *args: Any) -> tuple[Any, ...]:
        """``check(*args)`` in ``pool``, once a process of it is up. A process that is
        starting (the first check, or the one after a runaway) is waited for apart: on a
        busy machine spawning and importing qiskit alone can take longer than a check
        may."""
        loop = asyncio.get_running_loop()
        if not self._free_process_up(pool):
            started = self._submit(loop, pool, _ready)
            await asyncio.wait_for(started, START_SECONDS)
        return await self._timed(pool, check, *args)

    def _submit(
        self, loop: asyncio.AbstractEventLoop, pool: ProcessPoolExecutor, fn: Any, *args: Any
    ) -> asyncio.Future[Any]:
        """``fn(*args)`` handed to ``pool``, or :class:`_PoolGone` if the pool was broken
        or shut down before it could take it (the call never ran)."""
        try:
            return loop.run_in_executor(pool, fn, *args)
        except BrokenProcessPool as exc:
            raise _PoolGone from exc
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            if pool is self._pool or pool in self._lone:
                raise
            raise _PoolGone from exc

    async def _timed(self, pool: ProcessPoolExecutor, check: Any, *args: Any) -> tuple[Any, ...]:
        """``check(*args)`` in ``pool`` within the check's time, counted as running there."""
        loop = asyncio.get_running_loop()
        self._running[pool] = self._running.get(pool, 0) + 1
        try:
            return await asyncio.wait_for(self._submit(loop, pool, check, *args), self._seconds)
        except BrokenProcessPool as exc:
            # Every check running in the pool hears of the break at once, each in turn:
            # the first to hear it notes how many there were.
            running = self._running_at_break.setdefault(pool, self._running[pool])
            raise _CheckerDied(alone=running == 1) from exc
        finally:
            left = self._running[pool] - 1
            if left:
                self._running[pool] = left
            else:
                del self._running[pool]
                self._running_at_break.pop(pool, None)

    def close(self) -> None:
        """Stop the checking processes, a check still running included (it would hold up
        the service's exit)."""
        for pool in [self._pool, *self._lone]:
            if pool is not None:
                self._discard(pool)
