"""Jobs the moment they finish (``qdispatch.as_completed``, ``ManagedJobSet.as_completed``)
and the progress bars of waits, against a real service. Jobs of a "gate" program finish
when the test opens their gate (a file), so the order of completion is the test's."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qiskit import QuantumCircuit

import qdispatch
from qdispatch import progress
from qdispatch.exceptions import (
    IBMQJobManagerTimeoutError,
    IBMQJobTimeoutError,
    JobsTimeoutError,
    RuntimeJobTimeoutError,
)
from support import ServiceProcess

GATE = '''
"""Finishes when the file ``flag`` appears."""
import time
from pathlib import Path


def main(backend, publisher, flag):
    deadline = time.monotonic() + 120
    while not Path(flag).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("nobody opened the gate")
        time.sleep(0.02)
    return flag
'''


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("as_completed")
    programs = root / "programs"
    programs.mkdir()
    (programs / "gate.py").write_text(GATE)
    svc = ServiceProcess(root, "--workers", "4", "--programs-dir", str(programs)).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def service(gated: ServiceProcess) -> Iterator[Any]:
    with qdispatch.connect(gated.url, token=gated.token) as handle:
        yield handle


class Gates:
    """Flag files in a directory: ``job(name)`` runs a gate job, ``open(name)`` ends it."""

    def __init__(self, service: Any, root: Path) -> None:
        self.service = service
        self.root = root

    def job(self, name: str) -> Any:
        return self.service.run("gate", {"flag": str(self.root / name)})

    def open(self, name: str) -> None:
        (self.root / name).touch()


@pytest.fixture
def gates(service: Any, tmp_path: Path) -> Iterator[Gates]:
    made = Gates(service, tmp_path)
    yield made
    for name in ("a", "b", "c", "held", "bar"):  # no gate job outlives its test
        made.open(name)


def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2, 2, name="bell")
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit


def test_jobs_come_in_the_order_they_finish(gates: Gates) -> None:
    jobs = [gates.job(name) for name in ("a", "b", "c")]
    by_id = {job.job_id(): name for job, name in zip(jobs, ("a", "b", "c"), strict=True)}
    finished = qdispatch.as_completed(jobs, timeout=120)
    order = []
    for name in ("c", "a", "b"):  # the opposite of submission, nearly
        gates.open(name)
        job = next(finished)
        order.append(by_id[job.job_id()])
        assert job.in_final_state()
        assert job.result() == str(gates.root / by_id[job.job_id()])
    assert order == ["c", "a", "b"]
    assert list(finished) == []


def test_a_finished_job_comes_first_and_kinds_mix(service: Any, gates: Gates) -> None:
    held = gates.job("held")
    circuit_job = service.backend("aer_simulator").run(bell(), shots=100)
    finished = qdispatch.as_completed([held, circuit_job, circuit_job])  # one job given twice
    first = next(finished)
    assert first.job_id() == circuit_job.job_id()
    assert sum(first.result().get_counts().values()) == 100
    gates.open("held")
    assert next(finished).job_id() == held.job_id()
    assert list(finished) == []


def test_timeout_raises_with_the_jobs_left(gates: Gates) -> None:
    held = gates.job("held")
    with pytest.raises(JobsTimeoutError) as caught:
        list(qdispatch.as_completed([held], timeout=0.5))
    assert caught.value.pending == [held]
    assert held.job_id() in str(caught.value)
    # Whichever kind of job was waited for, its family's timeout catches it.
    assert isinstance(caught.value, IBMQJobTimeoutError)
    assert isinstance(caught.value, RuntimeJobTimeoutError)


def test_job_set_chunks_come_with_their_results(service: Any) -> None:
    backend = service.backend("aer_simulator")
    circuits = [bell() for _ in range(10)]
    for i, circuit in enumerate(circuits):
        circuit.name = f"bell{i}"
    job_set = qdispatch.IBMQJobManager().run(
        circuits, backend, max_experiments_per_job=3, shots=50, seed_simulator=1
    )
    seen = []
    for mjob in job_set.as_completed(timeout=120):
        result = mjob.result()
        assert result is not None
        for index in range(mjob.experiments_count):
            assert sum(result.get_counts(index).values()) == 50
        seen.append((mjob.start_index, mjob.end_index))
    assert sorted(seen) == [(0, 2), (3, 5), (6, 8), (9, 9)]
    assert job_set.results(timeout=60).get_counts(9) == result_counts(job_set, 9)


def result_counts(job_set: Any, experiment: int) -> dict[str, int]:
    job, index = job_set.job(experiment)
    counts: dict[str, int] = job.result().get_counts(index)
    return counts


def test_job_set_timeout(service: Any, gated: ServiceProcess) -> None:
    # An operator pauses the backend: the set's job stays queued until it is resumed.
    command = [sys.executable, "-m", "qdispatch", "token", "create", "--user", "ops"]
    made = subprocess.run(
        [*command, "--operator", "--db", str(gated.db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    operator = gated.client(made.stdout.strip())
    assert operator.post("/backends/aer_simulator/pause").status_code == 200
    try:
        job_set = qdispatch.IBMQJobManager().run([bell()], service.backend("aer_simulator"))
        with pytest.raises(IBMQJobManagerTimeoutError, match="1 of 1 jobs"):
            list(job_set.as_completed(timeout=0.5))
    finally:
        assert operator.post("/backends/aer_simulator/resume").status_code == 200
    [mjob] = list(job_set.as_completed(timeout=60))
    assert mjob.result() is not None


def test_result_waits_show_a_bar_only_when_someone_watches(
    gates: Gates, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("QDISPATCH_PROGRESS", raising=False)
    assert not progress.interactive()  # stderr is pytest's capture, not a terminal
    quiet = gates.job("a")
    threading.Timer(1.5, gates.open, ["a"]).start()
    quiet.result(timeout=60)
    assert capsys.readouterr().err == ""

    monkeypatch.setenv("QDISPATCH_PROGRESS", "1")
    assert progress.interactive()
    watched = gates.job("bar")
    threading.Timer(2.0, gates.open, ["bar"]).start()
    assert watched.result(timeout=60) == str(gates.root / "bar")
    err = capsys.readouterr().err
    assert f"gate job {watched.job_id()}" in err
    assert "DONE" in err
