"""The job manager against a real service: thousands of circuits in many jobs, found
again from another process, failed chunks, resubmission, cancel, timeouts."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from qiskit import QuantumCircuit
from qiskit.providers import JobStatus
from qiskit.result import Result
from qiskit_aer import AerSimulator

import qdispatch
from circuits import slow_circuit
from qdispatch import (
    IBMQJobManager,
    IBMQJobManagerInvalidStateError,
    IBMQJobManagerJobNotFound,
    IBMQJobManagerTimeoutError,
    IBMQJobManagerUnknownJobSet,
    IBMQManagedResultDataNotAvailable,
    ManagedResults,
)
from support import ServiceProcess


def rotation(i: int, n: int = 3) -> QuantumCircuit:
    """Circuit ``i`` of a family whose counts depend on ``i`` (quick to build)."""
    qc = QuantumCircuit(n, n, name=f"rot-{i}")
    qc.ry(2 * math.pi * (i % 97) / 97, 0)
    for q in range(n - 1):
        qc.cx(q, q + 1)
    qc.measure(range(n), range(n))
    return qc


def slow(i: int) -> QuantumCircuit:
    return slow_circuit(f"slow-{i}")


def test_ten_thousand_circuits_match_aer_and_are_found_again(
    service: ServiceProcess, connected: Any
) -> None:
    backend = connected.backend("aer_simulator")
    circuits = [rotation(i) for i in range(10_000)]
    manager = IBMQJobManager()
    job_set = manager.run(
        circuits, backend, name="ten-k", max_experiments_per_job=300, shots=64, seed_simulator=9
    )
    assert len(job_set.managed_jobs()) == 34
    seen: list[dict[str, int]] = []
    results = job_set.results(timeout=600, progress=seen.append)
    assert isinstance(results, ManagedResults)
    assert results.success
    assert seen[-1]["done"] == 34
    assert seen[-1]["experiments_done"] == 10_000
    assert results.backend_name == "aer_simulator"

    sim = AerSimulator()
    for mjob in job_set.managed_jobs():
        chunk = circuits[mjob.start_index : mjob.end_index + 1]
        direct = sim.run(chunk, shots=64, seed_simulator=9).result()
        for k in range(len(chunk)):
            assert results.get_counts(mjob.start_index + k) == direct.get_counts(k)

    assert results.get_counts("rot-5") == results.get_counts(5)
    assert results.get_counts(circuits[7]) == results.get_counts(7)
    job, index = job_set.job(circuits[9_999])
    assert (job.job_id(), index) == (job_set.managed_jobs()[-1].job.job_id(), 9_999 - 9_900)
    assert job_set.job(301)[1] == 1
    combined = results.combine_results()
    assert len(combined.results) == 10_000
    assert combined.get_counts(1234) == results.get_counts(1234)
    assert all(s is JobStatus.DONE for s in job_set.statuses())
    assert job_set.error_messages() is None
    assert "Total jobs: 34" in job_set.report(detailed=False)
    assert manager.job_sets(name="ten-k") == [job_set]

    code = (
        "import qdispatch\n"
        f"service = qdispatch.connect({service.url!r}, token={service.token!r})\n"
        f"s = qdispatch.IBMQJobManager().retrieve_job_set({job_set.job_set_id()!r}, service)\n"
        "r = s.results()\n"
        "print(s.name(), len(s.jobs()), r.get_counts(0), r.get_counts(9999))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300
    )
    expected = f"ten-k 34 {results.get_counts(0)} {results.get_counts(9999)}"
    assert out.stdout.strip() == expected


def test_a_bad_chunk_spares_the_others_and_resubmission_completes_the_set(
    connected: Any,
) -> None:
    backend = connected.backend("aer_simulator")
    circuits = [rotation(i) for i in range(900)]
    broken = list(circuits)
    too_wide = QuantumCircuit(31, 1, name="too-wide")
    too_wide.x(30)
    broken[450] = too_wide  # cannot run on a 30-qubit backend: it fails alone
    job_set = IBMQJobManager().run(broken, backend, max_experiments_per_job=300, shots=32)
    results = job_set.results(timeout=300)
    assert not results.success
    assert [m.start_index for m in job_set.managed_jobs()] == [0, 300, 450, 451, 600]
    assert results.get_counts(0) == results.get_counts("rot-0")
    assert sum(results.get_counts(899).values()) == 32
    assert sum(results.get_counts(449).values()) == sum(results.get_counts(451).values()) == 32
    with pytest.raises(IBMQManagedResultDataNotAvailable, match="job index 2"):
        results.get_counts(450)
    message = job_set.error_messages()
    assert message is not None
    assert message.startswith("experiments 450-450, job index 2, job ID None:")
    assert "circuit 450: circuit 'too-wide' has 31 qubits, but backend" in message
    assert job_set.statuses()[2] is None
    with pytest.raises(IBMQManagedResultDataNotAvailable):
        results.combine_results()

    # Retrieval by id sees the gap too.
    again = IBMQJobManager().retrieve_job_set(job_set.job_set_id(), connected)
    assert [m.start_index for m in again.managed_jobs()] == [0, 300, 450, 451, 600]
    assert again.managed_jobs()[2].job is None

    redone = job_set.resubmit_failed(circuits)
    assert [m.start_index for m in redone] == [450]
    fixed = job_set.results(timeout=300)
    assert fixed.success
    assert fixed.get_counts(450) == fixed.get_counts("rot-450")
    assert len(fixed.combine_results().results) == 900


def test_cancel_timeout_names_and_tags(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    job_set = IBMQJobManager().run(
        [slow(i) for i in range(4)],
        backend,
        name="slow-set",
        max_experiments_per_job=1,
        job_tags=["mine"],
        shots=3000,
    )
    with pytest.raises(IBMQJobManagerTimeoutError, match="waiting for"):
        job_set.results(timeout=0.5)
    assert job_set.update_name("renamed-set") == "renamed-set"
    assert job_set.update_tags(additional_tags=["more"]) == ["mine", "more"]
    assert job_set.tags() == ["mine", "more"]
    job_set.cancel()
    assert set(job_set.statuses()) == {JobStatus.CANCELLED}
    results = job_set.results(timeout=60)
    assert not results.success
    assert "was cancelled" in job_set.error_messages()
    job = job_set.jobs()[0]
    assert job.name() == "renamed-set_0_"
    assert "more" in job.tags()
    assert any(t.startswith("qdispatch_jobset:") for t in job.tags())
    with pytest.raises(IBMQJobManagerInvalidStateError, match="already been submitted"):
        job_set.run([rotation(0)], backend, None)

    # Partial results of cancelled chunks are not available, and the set says why.
    with pytest.raises(IBMQManagedResultDataNotAvailable, match="cancelled"):
        results.get_counts(0)

    retrieved = IBMQJobManager().retrieve_job_set(job_set.job_set_id(), connected)
    assert retrieved.name() == "renamed-set"
    assert retrieved.tags() == ["mine", "more"]
    assert len(retrieved.jobs()) == 4
    redone = retrieved.resubmit_failed()  # from the Qobjs the service kept
    assert len(redone) == 4
    retrieved.cancel()


def test_unknown_things(connected: Any) -> None:
    manager = IBMQJobManager()
    with pytest.raises(IBMQJobManagerUnknownJobSet, match="not found"):
        manager.retrieve_job_set("no-such-set", connected)
    job_set = manager.run([rotation(i) for i in range(3)], connected.backend("aer_simulator"))
    results = job_set.results(timeout=120)
    with pytest.raises(IBMQJobManagerJobNotFound, match="experiment 3 is not in this set"):
        results.get_counts(3)
    with pytest.raises(IBMQJobManagerJobNotFound, match="no experiment named 'nope'"):
        job_set.job("nope")
    assert isinstance(results.combine_results(), Result)


def test_the_active_job_limit_paces_the_set_instead_of_failing_it(tmp_path: Path) -> None:
    proc = ServiceProcess(tmp_path, "--workers", "1", "--max-active-jobs", "2").start()
    try:
        with qdispatch.connect(proc.url, token=proc.token) as connected:
            circuits = [rotation(i) for i in range(40)]
            job_set = IBMQJobManager().run(
                circuits, connected.backend("aer_simulator"), max_experiments_per_job=5, shots=16
            )
            results = job_set.results(timeout=300)
            assert results.success
            assert len(job_set.jobs()) == 8
            assert all(m.submit_error is None for m in job_set.managed_jobs())
    finally:
        proc.stop()
