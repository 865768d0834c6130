"""A local worker's memory limit (``serve --worker-memory-mb``): a job that needs more
memory than a worker may use ends ERROR saying so, its worker is replaced, and the next
job on the same service runs. Real services, real allocations (docs/service.md, "Worker
memory")."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from circuits import nested_body_declaring
from qdispatch.codes import MEMORY_LIMIT_EXCEEDED
from qdispatch.constants import DONE, ERROR
from qdispatch.server.config import ServiceConfig
from qdispatch.server.executors import LocalExecutor, Task
from qdispatch.server.workermemory import (
    MIN_WORKER_MEMORY_MB,
    default_worker_memory_mb,
    max_limit_mb,
    overcommitted,
    says_out_of_memory,
)
from qobjs import bell_qobj, ghz, qobj
from support import ServiceProcess, submit, wait_final

LIMIT_MB = 600
WAIT = 240.0  # seconds: a loaded machine, a worker to respawn


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One worker under the limit, shared by the tests of a job failing at it: each test
    ends by running a job there (assert_next_job_runs), so the next finds the service up
    and its one worker replaced and idle. One service start (~4 CPU-s) instead of three."""
    service = ServiceProcess(
        tmp_path_factory.mktemp("limited"), "--workers", "1", "--worker-memory-mb", str(LIMIT_MB)
    ).start()
    yield service
    service.stop()


def run(service: ServiceProcess, job_qobj: dict[str, Any]) -> dict[str, Any]:
    client = service.client()
    job = submit(client, "aer_simulator", job_qobj)
    return wait_final(client, job["id"], timeout=WAIT)


def assert_the_limits_error(job: dict[str, Any]) -> None:
    assert job["status"] == ERROR, job
    assert job["error"]["code"] == MEMORY_LIMIT_EXCEEDED, job["error"]
    message = job["error"]["message"]
    assert f"{LIMIT_MB} MB" in message, message
    assert "--worker-memory-mb" in message, message
    assert "attempt" not in message, message  # failed at once, not requeued as a lost worker


def assert_next_job_runs(service: ServiceProcess) -> None:
    done = run(service, bell_qobj(shots=100))
    assert done["status"] == DONE, done
    assert service.proc is not None
    assert service.proc.poll() is None


def test_a_statevector_too_large_is_refused_by_aer_below_the_limit(
    limited: ServiceProcess,
) -> None:
    # 26 qubits: 1 GiB of amplitudes. Aer's max_memory_mb is set below the worker's
    # limit, so Aer refuses the experiment before allocating, naming both.
    failed = run(limited, qobj([ghz(26)], shots=10, method="statevector"))
    assert failed["status"] == ERROR, failed
    message = failed["error"]["message"]
    assert "Insufficient memory" in message, message
    assert f"a worker may use {LIMIT_MB} MB" in message, message
    assert "--worker-memory-mb" in message, message
    assert_next_job_runs(limited)


def shot_memory_hog(experiments: int) -> dict[str, Any]:
    """One-qubit experiments at the backend's most shots (100 000), memory=True: every
    shot's outcome is kept, in Aer (C++) and then in the Python result the worker writes;
    millions of them need more than the worker may use."""
    return qobj([ghz(1, f"e{i}") for i in range(experiments)], shots=100_000, memory=True)


def test_a_job_whose_python_side_runs_out_fails_alone_and_its_worker_is_replaced(
    limited: ServiceProcess,
) -> None:
    # Aer's run refuses an allocation (std::bad_alloc, which reaches Python as a
    # MemoryError): the worker answers with the limit's error, once (not retried), and is
    # replaced.
    failed = run(limited, shot_memory_hog(40))
    assert_the_limits_error(failed)
    assert_next_job_runs(limited)


def test_a_job_that_kills_its_worker_at_the_limit_fails_alone(limited: ServiceProcess) -> None:
    # Decoding the QPY experiment in the worker needs ~1 GB: qiskit's Rust allocator is
    # refused, and Rust aborts the worker ("memory allocation of … failed" on its stderr).
    experiment = {
        "header": {"name": "wide_body", "n_qubits": 1, "memory_slots": 1},
        "config": {},
        "instructions": [],
        "qpy": base64.b64encode(nested_body_declaring(1_000_000)).decode(),
    }
    client = limited.client()
    body = orjson.dumps(
        {"backend": "aer_simulator", "qobj": {"qobj_id": "q", "config": {"shots": 10},
                                              "experiments": [experiment]}}
    )  # fmt: skip
    answer = client.post("/jobs", content=body, timeout=WAIT)
    assert answer.status_code == 201, answer.text  # the checking process decodes it
    failed = wait_final(client, answer.json()["id"], timeout=WAIT)
    assert_the_limits_error(failed)
    assert_next_job_runs(limited)


def test_other_users_jobs_keep_running(service_factory: Callable[..., ServiceProcess]) -> None:
    service = service_factory("--workers", "2", "--worker-memory-mb", str(LIMIT_MB))
    alice = service.client(service.token_for("alice"))
    bob = service.client(service.token_for("bob"))
    hog = submit(alice, "aer_simulator", shot_memory_hog(40))
    fine = [submit(bob, "aer_simulator", bell_qobj(shots=100)) for _ in range(4)]
    assert_the_limits_error(wait_final(alice, hog["id"], timeout=WAIT))
    for job in fine:
        assert wait_final(bob, job["id"], timeout=WAIT)["status"] == DONE


def test_the_limit_is_configured_and_checked() -> None:
    config = ServiceConfig(db=Path("unused.db"), workers=4)
    assert config.worker_memory_mb == default_worker_memory_mb(4)
    assert default_worker_memory_mb(4) >= 1024
    # One worker per CPU on a machine with little memory still gets a usable worker.
    assert default_worker_memory_mb(100_000) == 1024
    assert ServiceConfig(db=config.db, worker_memory_mb=0).worker_memory_mb == 0
    with pytest.raises(ValueError, match=f"at least {MIN_WORKER_MEMORY_MB}"):
        ServiceConfig(db=config.db, worker_memory_mb=100)


def post_qpy_job(service: ServiceProcess, qpy_data: bytes) -> dict[str, Any]:
    """Submit one QPY experiment as a Qobj job and wait for its end."""
    experiment = {
        "header": {"name": "wide_body", "n_qubits": 1, "memory_slots": 1},
        "config": {},
        "instructions": [],
        "qpy": base64.b64encode(qpy_data).decode(),
    }
    client = service.client()
    body = orjson.dumps(
        {"backend": "aer_simulator", "qobj": {"qobj_id": "q", "config": {"shots": 10},
                                              "experiments": [experiment]}}
    )  # fmt: skip
    answer = client.post("/jobs", content=body, timeout=WAIT)
    assert answer.status_code == 201, answer.text
    return wait_final(client, answer.json()["id"], timeout=WAIT)


def test_a_worker_left_holding_much_memory_is_replaced(
    service_factory: Callable[..., ServiceProcess],
) -> None:
    # Decoding 500k qubits takes ~500 MB of qiskit's Rust allocator (mimalloc), which keeps
    # it after the job: over half the limit, so the worker is replaced, not left to fail
    # every later job on it.
    service = service_factory("--workers", "1", "--worker-memory-mb", "1024", "--log-level", "info")
    post_qpy_job(service, nested_body_declaring(500_000))
    retired = re.findall(r"worker (\d+) holds over half of what its memory limit", service.log())
    assert len(retired) == 1, service.log()
    assert_next_job_runs(service)
    assert not Path(f"/proc/{retired[0]}").exists()  # replaced: the next job ran elsewhere


def test_only_a_jobs_own_last_words_tell_its_death() -> None:
    """What a worker wrote on its stderr before it took a job ("Cannot allocate memory",
    printed by an earlier one) does not make a later death by another cause count as the
    memory limit's (never retried); the same words written during the job do."""

    async def scenario() -> None:
        executor = LocalExecutor(1, memory_mb=LIMIT_MB)
        await executor.start()
        # A job of a kind no worker runs: answered at once, without importing qiskit.
        quick = Task("warm-up", "aer_simulator", "nothing", b"")
        assert "cannot run" in ((await executor.execute(quick, lambda: None)).error or "")

        def say_out_of_memory() -> None:
            (pid,) = executor.pids
            # The worker's stderr is a pipe: this writes into it, as the worker would.
            with open(f"/proc/{pid}/fd/2", "wb") as stderr:
                stderr.write(b"mimalloc: error: Cannot allocate memory\n")

        def killer(words: bool) -> Callable[[], None]:
            def started() -> None:  # called once the worker has the task
                if words:
                    say_out_of_memory()
                os.kill(executor.pids[0], signal.SIGKILL)

            return started

        say_out_of_memory()  # before the job: an earlier job's words
        await asyncio.sleep(1.0)  # passed on by the service already
        # A circuit job: the worker imports qiskit first, so it is killed mid-job.
        slow = replace(quick, kind="circuit", inputs=b"{}")
        unrelated = await executor.execute(replace(slow, job_id="a"), killer(words=False))
        assert unrelated.transient, unrelated
        assert unrelated.code != MEMORY_LIMIT_EXCEEDED, unrelated
        assert "killed by signal SIGKILL" in (unrelated.error or ""), unrelated
        at_the_limit = await executor.execute(replace(slow, job_id="b"), killer(words=True))
        assert at_the_limit.code == MEMORY_LIMIT_EXCEEDED, at_the_limit
        assert not at_the_limit.transient
        await executor.close()

    asyncio.run(scenario())


def test_only_allocator_aborts_count_as_the_limits() -> None:
    assert says_out_of_memory(b"memory allocation of 1024 bytes failed\n")
    assert says_out_of_memory(b"terminate called after ... 'std::bad_alloc'")
    # A traceback a job printed, or its own message, is not an allocator's abort.
    assert not says_out_of_memory(b"Traceback ...\nMemoryError\n")
    assert not says_out_of_memory(b"the simulation ran out of memory\n")


def test_a_workers_pipes_are_closed_once_it_is_gone() -> None:
    """Each worker's stderr pipe is closed by the thread that reads it, at the worker's
    exit (never under it, where its number could be reused): a pool started, its workers
    replaced, and closed, leaves no descriptor open."""

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def cycle() -> None:
        executor = LocalExecutor(2, memory_mb=LIMIT_MB)
        await executor.start()
        quick = Task("warm-up", "aer_simulator", "nothing", b"")
        for job_id in ("a", "b"):
            await executor.execute(replace(quick, job_id=job_id), lambda: None)
        # A worker killed under a job is replaced (its pipes are the bury's and the pump's).
        await executor.execute(
            replace(quick, job_id="c", kind="circuit", inputs=b"{}"),
            lambda: os.kill(executor.pids[0], signal.SIGKILL),
        )
        await executor.close()

    async def scenario() -> None:
        await cycle()  # what stays for good (multiprocessing's shared memory) is open now
        before = open_fds()
        await cycle()
        for _ in range(300):  # the pumps see their workers' exit
            if open_fds() <= before:
                break
            await asyncio.sleep(0.1)
        assert open_fds() <= before, sorted(os.listdir("/proc/self/fd"))

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--worker-memory-mb", str(2**43), "--worker-memory-mb (worker_memory_mb) must be"),
        ("--worker-memory-mb", "100", "--worker-memory-mb (worker_memory_mb) must be"),
        ("--check-memory-mb", "inf", "argument --check-memory-mb: 'inf': give a finite"),
        ("--check-memory-mb", "nan", "argument --check-memory-mb: 'nan': give a finite"),
        ("--check-memory-mb", "1e30", "--check-memory-mb (check_memory_bytes) must be"),
    ],
)
def test_serve_refuses_a_memory_limit_that_cannot_hold(
    tmp_path: Path, flag: str, value: str, says: str
) -> None:
    # Refused at start with one line naming the flag: no traceback, no worker respawned
    # forever, no checking process failing every job.
    answer = subprocess.run(
        [sys.executable, "-m", "qdispatch", "serve", "--port", "0", "--db",
         str(tmp_path / "x.db"), flag, value],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert answer.returncode == 2, answer.stderr
    assert says in answer.stderr, answer.stderr
    assert "Traceback" not in answer.stderr, answer.stderr


def test_the_limits_upper_bound() -> None:
    db = Path("unused.db")
    top = max_limit_mb()
    assert top >= 1 << 20  # 1 TiB at least
    assert ServiceConfig(db=db, worker_memory_mb=top).worker_memory_mb == top
    for bad in (top + 1, 2**43):
        with pytest.raises(ValueError, match="--worker-memory-mb"):
            ServiceConfig(db=db, worker_memory_mb=bad)
    for bad_bytes in (float("nan"), float("inf"), (top + 1) << 20):
        with pytest.raises(ValueError, match="--check-memory-mb"):
            ServiceConfig(db=db, check_memory_bytes=bad_bytes)  # type: ignore[arg-type]


def test_limits_beyond_the_machine_are_warned_of() -> None:
    gib = 1 << 30
    # The 1024 MB floor: 8 workers on a 4 GB machine may hold 8 GB together.
    warning = overcommitted(8, 1024, machine_bytes=4 * gib)
    assert warning is not None
    assert "8 workers x 1024 MB" in warning, warning
    assert "machine's 4096 MB" in warning, warning
    assert overcommitted(4, 1024, machine_bytes=4 * gib) is None
    assert overcommitted(8, 0, machine_bytes=4 * gib) is None  # no limit, nothing claimed


def test_the_start_warns_when_the_workers_limits_exceed_the_machine(
    service_factory: Callable[..., ServiceProcess],
) -> None:
    # 1 TiB per worker is more than this machine has (the ceiling is 1 TiB, or the
    # machine's memory where that is more).
    top = max_limit_mb()
    service = service_factory("--workers", "2", "--worker-memory-mb", str(top))
    assert_next_job_runs(service)
    assert f"2 workers x {top} MB (--worker-memory-mb) is more than" in service.log()
