"""No worker, job or result lost (issue 16) and the per-job time limit (issue 9).

In process: the scheduler with a fake executor that yields at every await point (many
seeds of random submits, cancels, failures, worker deaths, sessions and restarts, checking
after each that the queued jobs run ``min(N, workers)`` at a time); the scheduler with the
real local executor (fewer seeds, the store failing on chosen calls, cancels racing
completions). Through HTTP: the time limit, and the attempts a job's record shows.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from qdispatch.codes import TIME_LIMIT_EXCEEDED
from qdispatch.constants import CANCELLED, DONE, ERROR, FINAL_STATUSES, QUEUED, RUNNING
from qdispatch.server.executors import LocalExecutor, OnEvent, Outcome, Task
from qdispatch.server.programs import ProgramRef
from qdispatch.server.scheduler import Scheduler, _Running
from qdispatch.server.store import Job, NewJob, Store
from qdispatch.server.stream import Hub
from qobjs import bell_qobj, slow_qobj
from support import submit, wait_final, wait_status

# -- in-process harness -------------------------------------------------------------------

_PROGRAM = ProgramRef("fake", "1", "fake")  # the fake executor never loads it


def _new_job(
    store: Store, owner: str, kind: str = "circuit", inputs: bytes = b"{}", **extra: Any
) -> Job:
    new = NewJob(
        owner=owner,
        backend="aer_simulator",
        kind=kind,
        inputs=inputs,
        n_experiments=1,
        shots=1,
        n_instructions=1,
        program_id="fake" if kind == "program" else None,
        **extra,
    )
    job, _ = store.create_job(new)
    return job


def _scheduler(store: Store, executor: Any, **kwargs: Any) -> Scheduler:
    return Scheduler(store, Hub(lambda *_: True), executor, programs=lambda _: _PROGRAM, **kwargs)


async def _yield(rng: random.Random, most: int = 3) -> None:
    for _ in range(rng.randint(0, most)):
        await asyncio.sleep(0)


class FakeExecutor:
    """Workers as an asyncio queue, like the local executor; a job runs until the test
    ends it (``finish``/``kill``) or it is cancelled. Yields a random number of times at
    every await point, so that a test's steps land between any two of them."""

    def __init__(self, capacity: int, rng: random.Random) -> None:
        self.capacity = capacity
        self.rng = rng
        self._idle: asyncio.Queue[int] = asyncio.Queue()
        self.on_worker: dict[str, asyncio.Future[Outcome]] = {}
        self.runs: Counter[str] = Counter()

    async def start(self) -> None:
        for worker in range(self.capacity):
            self._idle.put_nowait(worker)

    async def execute(
        self, task: Task, started: Callable[[], None], on_event: OnEvent | None = None
    ) -> Outcome:
        await _yield(self.rng)
        worker = await self._idle.get()
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.on_worker[task.job_id] = done
        self.runs[task.job_id] += 1
        try:
            started()
            await _yield(self.rng)
            if on_event is not None and task.kind == "program":
                on_event("log", "hello\n")
            return await done
        finally:
            del self.on_worker[task.job_id]
            self._idle.put_nowait(worker)

    def end(self, job_id: str, outcome: Outcome) -> None:
        done = self.on_worker.get(job_id)
        if done is not None and not done.done():
            done.set_result(outcome)

    def cancel(self, job_id: str) -> bool:
        self.end(job_id, Outcome("cancelled"))
        return job_id in self.on_worker

    def busy_jobs(self) -> set[str]:
        return set(self.on_worker)

    def workers(self) -> dict[str, int]:
        return {"idle": self._idle.qsize(), "busy": len(self.on_worker), "starting": 0}

    def audit(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def _settle() -> None:
    for _ in range(60):
        await asyncio.sleep(0)


def _active(store: Store) -> list[Job]:
    return store.jobs_with_status(QUEUED, RUNNING)


def _check_invariant(store: Store, sched: Scheduler, fake: FakeExecutor, where: str) -> None:
    """N queued or running jobs run min(N, workers) at a time; the scheduler's running
    set is exactly the jobs on workers, each RUNNING in the store."""
    active = _active(store)
    assert set(sched._running) == set(fake.on_worker), where
    assert len(fake.on_worker) == min(len(active), fake.capacity), where
    for job_id in fake.on_worker:
        job = store.job(job_id)
        assert job is not None, where
        assert job.status == RUNNING, (where, job)
    assert sched.health()["running_jobs"] == len(fake.on_worker)


async def _random_run(seed: int, tmp_path: Path, steps: int = 60) -> None:
    rng = random.Random(seed)
    store = Store(tmp_path / f"seed{seed}.db")
    capacity = rng.choice([1, 2, 3])
    fake = FakeExecutor(capacity, rng)
    sched = _scheduler(store, fake, max_attempts=2, watchdog_interval=3600)
    await sched.start()
    sessions: list[str] = []
    restarts = 0
    try:
        for step in range(steps):
            action = rng.choices(
                [
                    "submit",
                    "program",
                    "session",
                    "cancel",
                    "finish",
                    "fail",
                    "kill",
                    "end",
                    "restart",
                ],
                weights=[6, 3, 2, 4, 5, 2, 2, 1, 1],
            )[0]
            owner = rng.choice(["ann", "bob", "cy"])
            if action == "submit":
                sched.submit(_new_job(store, owner))
            elif action == "program":
                sched.submit(_new_job(store, owner, kind="program"))
            elif action == "session":
                if not sessions or rng.random() < 0.3:
                    mode = rng.choice(["dedicated", "batch"])
                    sessions.append(store.create_session(owner, "aer_simulator", mode, None).id)
                session_id = rng.choice(sessions)
                sched.submit(_new_job(store, owner, session_id=session_id))
            elif action == "cancel":
                active = _active(store)
                if active:
                    sched.cancel(rng.choice(active))
            elif action in ("finish", "fail", "kill") and fake.on_worker:
                job_id = rng.choice(sorted(fake.on_worker))
                outcome = {
                    "finish": Outcome("done", result=b'{"success": true}'),
                    "fail": Outcome("error", error="program raised", code="program_failed"),
                    "kill": Outcome("error", error="worker died", transient=True),
                }[action]
                fake.end(job_id, outcome)
            elif action == "end" and sessions:
                session_id = rng.choice(sessions)
                store.end_session(session_id, "cancelled")
                for job in store.session_jobs(session_id, QUEUED):
                    sched.cancel(job)
            elif action == "restart":
                restarts += 1
                await sched.stop()
                fake = FakeExecutor(capacity, rng)
                sched = _scheduler(store, fake, max_attempts=2, watchdog_interval=3600)
                await sched.start()
            # The next step lands anywhere between the await points of dispatch.
            await _yield(rng, 4)
            if rng.random() < 0.5:
                await _settle()
                _check_invariant(store, sched, fake, f"seed {seed}, step {step} ({action})")
        # Run everything out: every job ends, none ran more often than it was tried.
        for _ in range(1000):
            await _settle()
            _check_invariant(store, sched, fake, f"seed {seed}, draining")
            if not fake.on_worker:
                break
            for job_id in list(fake.on_worker):
                fake.end(job_id, Outcome("done", result=b'{"success": true}'))
        assert not _active(store)
        for job_id, runs in fake.runs.items():
            job = store.job(job_id)
            assert job is not None
            assert job.final
            # A clean stop requeues without counting the run; a cancel may land between
            # the worker taking the job and its start being counted.
            assert runs <= job.attempts + restarts + (job.status == CANCELLED), job
            if job.status == DONE:
                assert store.data(job_id, "result") is not None
    finally:
        await sched.stop()
        store.close()


def test_capacity_never_leaks_fake_executor_many_seeds(tmp_path: Path) -> None:
    # 100 seeds of 60 steps: about 30 s on a loaded 2-core machine.
    for seed in range(100):
        asyncio.run(_random_run(seed, tmp_path))


def test_a_job_cancelled_before_its_task_starts_frees_its_slot(tmp_path: Path) -> None:
    """The leak of issue 16 item 0: dispatch creates the job's task, and a cancel lands
    before the task's first step (the coroutine never runs, nor its ``finally``)."""

    async def scenario() -> None:
        store = Store(tmp_path / "jobs.db")
        fake = FakeExecutor(2, random.Random(0))
        sched = _scheduler(store, fake, watchdog_interval=3600)
        await sched.start()
        first = _new_job(store, "ann")
        sched.submit(first)
        sched._dispatch()  # what the dispatch loop does when it wakes
        sched.cancel(store.job(first.id))  # type: ignore[arg-type]
        await _settle()
        assert not sched._running
        jobs = [_new_job(store, "ann") for _ in range(2)]
        for job in jobs:
            sched.submit(job)
        await _settle()
        assert set(fake.on_worker) == {j.id for j in jobs}  # both at once, not one by one
        await sched.stop()
        store.close()

    asyncio.run(scenario())


def test_the_watchdog_frees_a_slot_held_by_no_live_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        store = Store(tmp_path / "jobs.db")
        fake = FakeExecutor(1, random.Random(0))
        sched = _scheduler(store, fake, watchdog_interval=0.05)
        await sched.start()
        # A slot held by a job whose task is over and that nobody gave back: the only
        # worker stays unused until the watchdog notices.
        ghost = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        await ghost
        sched._running["ghost"] = _Running("x", "aer_simulator", 1, time.monotonic(), task=ghost)
        sched._running_per_user["x"] += 1
        job = _new_job(store, "ann")
        sched.submit(job)
        await _settle()
        assert not fake.on_worker
        await asyncio.sleep(0.3)
        assert set(fake.on_worker) == {job.id}
        assert "ghost" not in sched._running
        await sched.stop()
        store.close()

    asyncio.run(scenario())
    assert any(
        r.levelname == "WARNING" and "job ghost held a worker slot" in r.getMessage()
        for r in caplog.records
    )


# -- the store fails on chosen calls -----------------------------------------------------


class FaultyStore(Store):
    """A real store that raises ``sqlite3.OperationalError`` on the chosen calls of some
    methods (as a full disk or a lock held past the busy timeout does)."""

    def __init__(
        self, path: Path, failing: dict[str, set[int]], max_bytes: int | None = None
    ) -> None:
        super().__init__(path, max_bytes)
        self.failing = failing
        self.calls: Counter[str] = Counter()
        self.armed = False

    def _maybe_fail(self, name: str) -> None:
        if not self.armed:
            return
        self.calls[name] += 1
        if self.calls[name] in self.failing.get(name, set()):
            raise sqlite3.OperationalError(f"database or disk is full ({name} call)")

    def set_status(self, job_id: str, status: str, **kwargs: Any) -> Any:
        self._maybe_fail(f"set_status:{status}")
        return super().set_status(job_id, status, **kwargs)

    def append_event(self, job_id: str, kind: str, data: bytes) -> Any:
        self._maybe_fail("append_event")
        return super().append_event(job_id, kind, data)

    def job(self, job_id: str) -> Any:
        self._maybe_fail("job")
        return super().job(job_id)

    def inputs(self, job_id: str) -> bytes:
        self._maybe_fail("inputs")
        return super().inputs(job_id)

    def session_started(self, session_id: str) -> None:
        self._maybe_fail("session_started")
        super().session_started(session_id)


class CountingExecutor(LocalExecutor):
    """The local executor, counting how many times each job was handed to a worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: Counter[str] = Counter()

    async def execute(
        self, task: Task, started: Callable[[], None], on_event: OnEvent | None = None
    ) -> Outcome:
        def counted() -> None:
            self.runs[task.job_id] += 1
            started()

        return await super().execute(task, counted, on_event)


async def _wait_final(store: Store, job_ids: list[str], timeout: float) -> list[Job]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [Store.job(store, j) for j in job_ids]  # bypass the faults
        if all(j is not None and j.status in FINAL_STATUSES for j in jobs):
            return [j for j in jobs if j is not None]
        assert time.monotonic() < deadline, [(j.id, j.status) for j in jobs if j]
        await asyncio.sleep(0.05)


_NOOP = orjson.dumps({"kind": "noop"})


def test_store_errors_lose_no_worker_job_or_result(tmp_path: Path) -> None:
    """The Nth start, finish, read and event write fail: every job still ends DONE with its
    result, none runs twice, and both workers take a fresh job at once afterwards."""
    rng = random.Random(16)
    failing = {
        "set_status:RUNNING": {1, 3, 4},
        "set_status:DONE": {1, 2, 5, 6},
        "job": set(rng.sample(range(1, 60), 12)),
        "inputs": {2, 5},
        "session_started": {1},
    }

    async def scenario() -> None:
        store = FaultyStore(tmp_path / "jobs.db", failing)
        executor = CountingExecutor(2)
        sched = _scheduler(store, executor, watchdog_interval=0.1)
        await sched.start()
        session = store.create_session("ann", "aer_simulator", "batch", None)
        qobj = orjson.dumps(bell_qobj(shots=64))
        jobs = [
            _new_job(store, rng.choice(["ann", "bob"]), inputs=qobj, session_id=session.id)
            if i % 3 == 0
            else _new_job(store, rng.choice(["ann", "bob"]), inputs=qobj)
            for i in range(12)
        ]
        store.armed = True
        for job in jobs:
            sched.submit(job)
        finished = await _wait_final(store, [j.id for j in jobs], 90)
        for job in finished:
            assert job.status == DONE, job
            assert store.data(job.id, "result") is not None
            assert executor.runs[job.id] == 1, (job.id, executor.runs[job.id])
        assert sum(store.calls[k] for k in failing) > 0
        # Nothing leaked: two slow jobs run side by side.
        store.armed = False
        slow = orjson.dumps(slow_qobj(shots=400))
        pair = [_new_job(store, "cy", inputs=slow) for _ in range(2)]
        for job in pair:
            sched.submit(job)
        deadline = time.monotonic() + 30
        while executor.busy_jobs() != {j.id for j in pair}:
            assert time.monotonic() < deadline, executor.workers()
            await asyncio.sleep(0.05)
        assert sched.health()["workers"]["busy"] == 2
        await _wait_final(store, [j.id for j in pair], 60)
        await sched.stop()
        store.close()

    asyncio.run(scenario())


# -- cancel races ------------------------------------------------------------------------


def test_cancel_racing_completion_never_reuses_a_signalled_worker() -> None:
    """50 cancels at delays around the moment a worker replies: the outcome is the reply
    or "cancelled", a killed worker is never handed another job, and afterwards every
    worker runs a fresh job."""

    async def scenario() -> None:
        executor = LocalExecutor(2)
        await executor.start()
        loop = asyncio.get_running_loop()
        # A job of a kind no worker runs: answered at once, without importing qiskit.
        quick = Task("probe", "aer_simulator", "nothing", b"")

        async def run(job_id: str) -> Outcome:
            task = Task(job_id, quick.backend, quick.kind, quick.inputs)
            return await executor.execute(task, lambda: None)

        first = await run("warm-up")
        assert first.status == "error"
        assert "cannot run" in (first.error or "")
        t0 = time.perf_counter()
        await run("timing")
        round_trip = time.perf_counter() - t0
        outcomes: Counter[str] = Counter()
        for i in range(50):
            job_id = f"race-{i}"
            running = loop.create_task(run(job_id))
            delay = round_trip * (i % 10) / 5  # 0 … 1.8 round trips
            while job_id not in executor.busy_jobs() and not running.done():
                await asyncio.sleep(0)
            await asyncio.sleep(delay)
            executor.cancel(job_id)
            outcome = await running
            assert outcome.status in ("cancelled", "error"), outcome
            assert outcome.status == "cancelled" or "cannot run" in (outcome.error or "")
            outcomes[outcome.status] += 1
            # A fresh job on every worker: none fails as if its worker had died.
            probes = await asyncio.gather(*(run(f"probe-{i}-{w}") for w in range(2)))
            for probe in probes:
                assert probe.status == "error", probe
                assert "cannot run" in (probe.error or ""), probe
        assert outcomes["cancelled"] > 0
        await executor.close()

    asyncio.run(scenario())


# -- real workers, random steps ----------------------------------------------------------


async def _real_run(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    store = Store(tmp_path / f"real{seed}.db")
    executor = LocalExecutor(2)
    sched = _scheduler(store, executor, max_attempts=2, watchdog_interval=0.2)
    await sched.start()
    quick = orjson.dumps(bell_qobj(shots=32))
    slow = orjson.dumps(slow_qobj(shots=150))
    jobs: list[str] = []
    try:
        for _ in range(14):
            action = rng.choice(["submit", "submit", "slow", "cancel", "kill", "noop"])
            if action == "submit":
                job = _new_job(store, rng.choice(["ann", "bob"]), inputs=quick)
            elif action == "slow":
                job = _new_job(store, rng.choice(["ann", "bob"]), inputs=slow)
            elif action == "noop":
                job = _new_job(store, "cy", kind="odd")  # fails at once, deterministically
            if action in ("submit", "slow", "noop"):
                sched.submit(job)
                jobs.append(job.id)
            elif action == "cancel":
                active = _active(store)
                if active:
                    sched.cancel(rng.choice(active))
            elif action == "kill":
                busy = [w for w in executor._all if w.state == "busy"]
                if busy:
                    os.kill(rng.choice(busy).process.pid or 0, signal.SIGKILL)
            await asyncio.sleep(rng.choice([0, 0, 0.01, 0.05, 0.2]))
        finished = await _wait_final(store, jobs, 120)
        for job in finished:
            assert job.status in (DONE, CANCELLED, ERROR), job
            if job.status == ERROR:
                assert job.error, job
                assert job.error["message"], job
        # The symptom seen in the wild: two slow jobs must run at once.
        pair = [_new_job(store, "dee", inputs=slow) for _ in range(2)]
        for job in pair:
            sched.submit(job)
        deadline = time.monotonic() + 30
        while set(sched.running_on_workers()) != {j.id for j in pair}:
            assert time.monotonic() < deadline, (sched.health(), executor.busy_jobs())
            await asyncio.sleep(0.02)
        assert executor.busy_jobs() == {j.id for j in pair}
        await _wait_final(store, [j.id for j in pair], 60)
    finally:
        await sched.stop()
        store.close()


def test_capacity_never_leaks_real_workers(tmp_path: Path) -> None:
    for seed in range(2):
        asyncio.run(_real_run(seed, tmp_path))


# -- through HTTP: the time limit and the attempts record ----------------------------------


def test_a_job_past_the_time_limit_fails_once_and_frees_its_worker(
    service_factory: Any, tmp_path: Path
) -> None:
    programs = tmp_path / "programs"
    programs.mkdir()
    (programs / "forever.py").write_text(
        textwrap.dedent(
            """
            import time

            def main(backend, publisher):
                while True:
                    time.sleep(0.1)
            """
        )
    )
    (programs / "boom.py").write_text("def main(backend, publisher):\n    raise ValueError(1)\n")
    svc = service_factory(
        "--workers", "1", "--job-time-limit", "2", "--programs-dir", str(programs)
    )
    client = svc.client()
    info = client.get("/info").json()
    assert info["job_time_limit"] == 2
    body = {"program_id": "forever", "backend": "aer_simulator", "params": {}}
    job = client.post("/jobs", content=orjson.dumps(body)).json()
    failed = wait_final(client, job["id"], timeout=60)
    assert failed["status"] == "ERROR"
    assert failed["error"]["code"] == TIME_LIMIT_EXCEEDED
    assert "time limit of 2 s" in failed["error"]["message"]
    (attempt,) = failed["attempts"]  # deterministic: not retried
    assert attempt["outcome"] == "error"
    assert attempt["code"] == TIME_LIMIT_EXCEEDED
    # A program's exception fails once too.
    body["program_id"] = "boom"
    boom = wait_final(client, client.post("/jobs", content=orjson.dumps(body)).json()["id"])
    assert boom["error"]["code"] == "program_failed"
    assert len(boom["attempts"]) == 1
    # The worker was replaced: the next job runs.
    assert wait_final(client, submit(client, "aer_simulator", bell_qobj())["id"])["status"] == DONE


def test_a_worker_death_is_retried_and_the_attempts_say_why(service_factory: Any) -> None:
    svc = service_factory("--workers", "1", "--max-attempts", "2")
    client = svc.client()
    job = submit(client, "aer_simulator", slow_qobj(shots=800))
    wait_status(client, job["id"], "RUNNING")
    time.sleep(0.3)
    workers = client.get("/info").json()["workers"]
    assert workers == {"idle": 0, "busy": 1, "starting": 0}
    assert client.get("/info").json()["running_jobs"] == 1
    os.kill(_worker_of(svc), signal.SIGKILL)
    done = wait_final(client, job["id"], timeout=120)
    assert done["status"] == DONE
    first, second = done["attempts"]
    assert first["outcome"] == "requeued"
    assert "died (killed by signal SIGKILL)" in first["reason"]
    assert "attempt 1 of 2" in first["reason"]
    assert second["outcome"] == "done"
    assert second["end"] is not None
    # Twice in a row is as often as it may run: the second death fails it, saying why.
    again = submit(client, "aer_simulator", slow_qobj(shots=800))
    for _ in range(2):
        wait_status(client, again["id"], "RUNNING", timeout=60)
        time.sleep(0.3)
        os.kill(_worker_of(svc), signal.SIGKILL)
        time.sleep(0.5)
    failed = wait_final(client, again["id"], timeout=60)
    assert failed["status"] == ERROR
    assert "not trying again after 2 attempts" in failed["error"]["message"]
    assert [a["outcome"] for a in failed["attempts"]] == ["requeued", "error"]


def _worker_of(svc: Any) -> int:
    (worker,) = [
        p
        for p in psutil.Process(svc.proc.pid).children()
        if any("spawn_main" in part for part in p.cmdline()) and p.status() != "zombie"
    ]
    return int(worker.pid)
