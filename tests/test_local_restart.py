"""The client restarts a dead local service and goes on: the local service (``connect()``
with no URL) is killed with ``kill -9`` while a job set runs, and every result is there
and right; clients that find it gone at the same moment restart one service."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from qiskit import QuantumCircuit

import qdispatch
from qdispatch import IBMQJobManager
from qdispatch.local import stop as stop_local


def marked(index: int, n: int = 12, layers: int = 10) -> QuantumCircuit:
    """A circuit that measures ``index`` in binary on every shot, slowly: gates that
    cancel out, and a measurement mid-circuit, which makes Aer simulate shot by shot."""
    qc = QuantumCircuit(n, n, name=f"marked-{index}")
    for q in range(n):
        if index >> q & 1:
            qc.x(q)
    for layer in range(layers):
        for q in range(n):
            qc.h(q)
            qc.rz(0.3, q)
            qc.rz(-0.3, q)
            qc.h(q)
        for q in [*range(n - 1), *reversed(range(n - 1))]:
            qc.cx(q, q + 1)
        qc.measure(layer, layer)
    qc.measure(range(n), range(n))
    return qc


def expected(index: int, shots: int, n: int = 12) -> dict[str, int]:
    return {format(index, f"0{n}b"): shots}


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data directory for the local service; its service is stopped afterwards."""
    where = tmp_path / "data"
    monkeypatch.setenv("QDISPATCH_DATA_DIR", str(where))
    monkeypatch.delenv("QDISPATCH_URL", raising=False)
    monkeypatch.delenv("QDISPATCH_TOKEN", raising=False)
    yield where
    stop_local(where)


def _state(data_dir: Path) -> dict[str, Any]:
    state: dict[str, Any] = orjson.loads((data_dir / "server.json").read_bytes())
    return state


def _starts(data_dir: Path) -> int:
    return (data_dir / "service.log").read_text().count("qdispatch service on")


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # our child (connect() started it): reap it
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            return
        time.sleep(0.05)
    raise AssertionError(f"service {pid} survived kill -9")


@pytest.mark.timeout(900)
def test_a_job_set_completes_after_the_local_service_is_killed_mid_run(data_dir: Path) -> None:
    service = qdispatch.connect()
    backend = service.backend("aer_simulator")
    circuits = [marked(i) for i in range(6)]
    job_set = IBMQJobManager().run(circuits, backend, max_experiments_per_job=1, shots=100)
    jobs = [m.job for m in job_set.managed_jobs()]
    assert all(job is not None for job in jobs)
    first = _state(data_dir)
    deadline = time.monotonic() + 300
    while not any(job.status().name == "RUNNING" for job in jobs if job is not None):
        assert time.monotonic() < deadline, "no job of the set ever ran"
        time.sleep(0.05)
    _kill(first["pid"])

    results = job_set.results(timeout=600)

    assert results.success
    for i in range(len(circuits)):
        assert results.get_counts(i) == expected(i, 100)
    second = _state(data_dir)
    assert second["pid"] != first["pid"]
    assert service.url == second["url"]
    assert _starts(data_dir) == 2
    # The run the kill interrupted was requeued by the restarted service, not lost.
    steps = [job.time_per_step() or {} for job in jobs if job is not None]
    assert any("REQUEUED" in step for step in steps), steps
    # The connection goes on: a new job runs on the restarted service.
    assert backend.run(marked(9, layers=1), shots=10).result().get_counts() == expected(9, 10)


@pytest.mark.timeout(900)
def test_clients_that_find_the_service_gone_restart_one(data_dir: Path) -> None:
    handles = [qdispatch.connect() for _ in range(3)]
    assert len({h.url for h in handles}) == 1
    circuit = marked(3, layers=1)
    assert handles[0].backend("aer_simulator").run(circuit, shots=5).result().get_counts() == (
        expected(3, 5)
    )
    _kill(_state(data_dir)["pid"])

    outcomes: list[Any] = []

    def run(handle: Any) -> None:
        try:
            job = handle.backend("aer_simulator").run(circuit, shots=7)
            outcomes.append((handle.url, job.result(timeout=300).get_counts()))
        except Exception as exc:  # reported below
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=(h,)) for h in handles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert all(isinstance(o, tuple) for o in outcomes), outcomes
    assert {url for url, _ in outcomes} == {_state(data_dir)["url"]}
    assert all(counts == expected(3, 7) for _, counts in outcomes)
    assert _starts(data_dir) == 2  # one restart for the three clients


def test_a_job_set_submitted_to_a_dead_local_service_restarts_it(data_dir: Path) -> None:
    """The job manager's chunks go out together (``submit_many``); when the local service
    is gone they are submitted once more, to a restarted one, with the same idempotency
    keys: every chunk becomes exactly one job."""
    service = qdispatch.connect()
    backend = service.backend("aer_simulator")
    _kill(_state(data_dir)["pid"])
    circuits = [marked(i, layers=1) for i in range(5)]

    job_set = IBMQJobManager().run(circuits, backend, max_experiments_per_job=1, shots=50)

    managed = job_set.managed_jobs()
    assert all(m.job is not None and m.submit_error is None for m in managed), [
        m.submit_error for m in managed
    ]
    results = job_set.results(timeout=300)
    assert results.success
    for i in range(len(circuits)):
        assert results.get_counts(i) == expected(i, 50)
    assert _starts(data_dir) == 2
    assert len(service.jobs(limit=None)) == len(circuits)  # none twice
