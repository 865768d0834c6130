"""``AlgorithmJob``: an algorithm loop run as a job, with the documented job API."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from qiskit.circuit.library import real_amplitudes
from qiskit.primitives import StatevectorEstimator
from qiskit.providers import JobError, JobStatus, JobTimeoutError
from qiskit.quantum_info import SparsePauliOp

from qdispatch import AlgorithmJob


def small_vqe(steps: int) -> float:
    """Gradient descent on <ZZ + 0.5 XI> over a 2-qubit ansatz; returns the energy."""
    ansatz = real_amplitudes(2, reps=1)
    observable = SparsePauliOp.from_list([("ZZ", 1.0), ("XI", 0.5)])
    estimator = StatevectorEstimator()
    theta = np.full(ansatz.num_parameters, 0.1)

    def energy(params: np.ndarray) -> float:
        return float(estimator.run([(ansatz, observable, params)]).result()[0].data.evs)

    for _ in range(steps):
        grad = np.array(
            [
                (energy(theta + np.pi / 2 * e) - energy(theta - np.pi / 2 * e)) / 2
                for e in np.eye(len(theta))
            ]
        )
        theta = theta - 0.2 * grad
    return energy(theta)


def test_a_vqe_loop_runs_as_a_job() -> None:
    job = AlgorithmJob(small_vqe, steps=60)
    assert job.status() is JobStatus.INITIALIZING
    job.submit()
    seen: list[JobStatus] = []
    job.wait_for_final_state(timeout=120, wait=0.05, callback=lambda i, s, j: seen.append(s))
    assert seen[-1] is JobStatus.DONE
    assert job.done()
    assert job.in_final_state()
    exact = min(np.linalg.eigvalsh(SparsePauliOp.from_list([("ZZ", 1.0), ("XI", 0.5)]).to_matrix()))
    assert job.result() == pytest.approx(exact, abs=0.05)
    assert job.backend() is None
    with pytest.raises(JobError, match="submitted already"):
        job.submit()


def test_a_job_waiting_to_start_is_queued_or_running_never_error() -> None:
    gate = threading.Event()
    job = AlgorithmJob(gate.wait, 30)
    job.submit()
    assert job.status() in (JobStatus.QUEUED, JobStatus.RUNNING)
    with pytest.raises(JobTimeoutError, match="Timeout while waiting"):
        job.wait_for_final_state(timeout=0.1, wait=0.05)
    gate.set()
    job.wait_for_final_state(timeout=30)
    assert job.status() is JobStatus.DONE


def test_failures_and_misuse() -> None:
    def boom() -> Any:
        raise ValueError("diverged")

    job = AlgorithmJob(boom)
    with pytest.raises(JobError, match="not been submitted"):
        job.wait_for_final_state()
    job.submit()
    job.wait_for_final_state(timeout=30)
    assert job.status() is JobStatus.ERROR
    with pytest.raises(ValueError, match="diverged"):
        job.result()
