"""Sampler and Estimator (qiskit's V2 primitive interfaces) on the service, sessions and
batches from the client, and an algorithm run through AlgorithmJob."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import ClassicalRegister, Parameter
from qiskit.primitives import BaseEstimatorV2, BaseSamplerV2, PrimitiveResult
from qiskit.primitives.containers import BitArray
from qiskit.quantum_info import SparsePauliOp, Statevector

from qdispatch import (
    AlgorithmJob,
    Batch,
    Estimator,
    IBMInputValueError,
    IBMRuntimeError,
    RuntimeJob,
    Sampler,
    Session,
)
from qdispatch.sessions import parse_max_time


def bell(measure: bool = True) -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    if measure:
        circuit.measure_all()
    return circuit


def test_sampler_bell_counts(connected: Any) -> None:
    sampler = Sampler(mode=connected.backend("aer_simulator"), options={"seed_simulator": 11})
    assert isinstance(sampler, BaseSamplerV2)
    job = sampler.run([bell()], shots=2000)
    assert isinstance(job, RuntimeJob)
    assert job.program_id == "sampler"
    result = job.result(timeout=120)
    assert isinstance(result, PrimitiveResult)
    bits = result[0].data.meas
    assert isinstance(bits, BitArray)
    assert bits.num_shots == 2000
    assert bits.num_bits == 2
    counts = bits.get_counts()
    assert set(counts) == {"00", "11"}
    assert abs(counts["00"] - 1000) < 5 * np.sqrt(500)  # binomial, 5 sigma
    assert result[0].metadata["shots"] == 2000
    # Circuits without parameters travel as one native Qobj, referenced by index.
    assert job.inputs["pubs"][0][0] == 0
    assert "circuits" in job.inputs


def test_sampler_registers_shots_and_parameters(connected: Any) -> None:
    theta = Parameter("θ")
    rotation = QuantumCircuit(1, 1, name="rotation")
    rotation.ry(theta, 0)
    rotation.measure(0, 0)

    two_registers = QuantumCircuit(3)
    reg_a, reg_b = ClassicalRegister(1, "a"), ClassicalRegister(2, "b")
    two_registers.add_register(reg_a)
    two_registers.add_register(reg_b)
    two_registers.x(0)
    two_registers.x(2)
    two_registers.measure(0, reg_a[0])
    two_registers.measure([1, 2], reg_b)

    values = np.array([[0.0], [np.pi]])  # shape (2,) of one parameter
    grid = np.zeros((2, 3, 1))
    grid[1, :, 0] = np.pi
    sampler = Sampler(mode="aer_simulator", options={"default_shots": 64}, service=connected)
    result = sampler.run(
        [(rotation, values), (two_registers, None, 100), (rotation, grid, 10)]
    ).result(timeout=120)

    first = result[0].data.c
    assert first.shape == (2,)
    assert first.num_shots == 64
    assert first.get_counts(0) == {"0": 64}
    assert first.get_counts(1) == {"1": 64}

    second = result[1].data
    assert second.a.get_counts() == {"1": 100}
    assert second.b.get_counts() == {"10": 100}
    assert result[1].metadata["shots"] == 100

    third = result[2].data.c
    assert third.shape == (2, 3)
    assert third.get_counts((0, 2)) == {"0": 10}
    assert third.get_counts((1, 0)) == {"1": 10}


def test_sampler_on_a_noisy_device_is_mostly_bell(connected: Any) -> None:
    sampler = Sampler(mode=connected.backend("fake_generic_5q"))
    counts = sampler.run([bell()], shots=1000).result(timeout=120)[0].data.meas.get_counts()
    assert counts.get("00", 0) + counts.get("11", 0) > 800
    assert len(counts) > 2  # noise shows


def test_sampler_refuses_bad_pubs(connected: Any) -> None:
    sampler = Sampler(mode="aer_simulator", service=connected)
    with pytest.raises(IBMInputValueError, match="no classical bits"):
        sampler.run([bell(measure=False)])
    with pytest.raises(IBMInputValueError, match="invalid pub"):
        sampler.run([(bell(), None, -5)])
    with pytest.raises(IBMInputValueError, match="no pubs"):
        sampler.run([])
    wide = QuantumCircuit(7)
    wide.h(0)
    wide.measure_all()
    too_wide = r"circuits: .*uses qubit 5, but backend 'fake_generic_5q' has 5 qubits"
    with pytest.raises(IBMInputValueError, match=too_wide):
        Sampler(mode=connected.backend("fake_generic_5q")).run([wide])
    with pytest.raises(IBMInputValueError, match="unknown Sampler option"):
        Sampler(mode="aer_simulator", options={"shots": 3}, service=connected)
    with pytest.raises(IBMInputValueError, match="unknown Sampler option 'shots'"):
        sampler.options.shots = 3


def test_options_are_a_dict_and_attributes(connected: Any) -> None:
    sampler = Sampler(mode="aer_simulator", service=connected)
    assert sampler.options.default_shots == 1024
    sampler.options.default_shots = 50
    assert sampler.options["default_shots"] == 50
    sampler.options["seed_simulator"] = 3
    first = sampler.run([bell()]).result(timeout=120)[0].data.meas
    assert first.num_shots == 50
    again = sampler.run([bell()]).result(timeout=120)[0].data.meas
    assert first.get_counts() == again.get_counts()  # same seed, same samples
    with pytest.raises(AttributeError, match="no option 'nope'"):
        _ = sampler.options.nope


def test_estimator_bell_within_standard_error(connected: Any) -> None:
    estimator = Estimator(mode=connected.backend("aer_simulator"), options={"seed_simulator": 5})
    assert isinstance(estimator, BaseEstimatorV2)
    observables = [SparsePauliOp("ZZ"), SparsePauliOp("XX"), SparsePauliOp("ZI")]
    result = estimator.run([(bell(measure=False), observables)], precision=0.02).result(timeout=120)
    evs, stds = result[0].data.evs, result[0].data.stds
    assert evs.shape == (3,)
    exact = np.array([1.0, 1.0, 0.0])
    assert np.all(np.abs(evs - exact) <= 5 * np.maximum(stds, 0.02))
    assert np.all(stds <= 0.05)


def test_estimator_parametrized_matches_statevector(connected: Any) -> None:
    theta = Parameter("θ")
    circuit = QuantumCircuit(2)
    circuit.ry(theta, 0)
    circuit.cx(0, 1)
    observable = SparsePauliOp.from_list([("ZZ", 0.5), ("XI", 1.0), ("IZ", -0.25)])
    angles = np.linspace(0, np.pi, 5).reshape(5, 1)
    estimator = Estimator(mode="aer_simulator", service=connected)
    result = estimator.run([(circuit, observable, angles, 0.01)]).result(timeout=120)
    evs, stds = result[0].data.evs, result[0].data.stds
    exact = [
        Statevector(circuit.assign_parameters([a])).expectation_value(observable).real
        for a in angles[:, 0]
    ]
    assert evs.shape == (5,)
    assert np.all(np.abs(evs - exact) <= 5 * np.maximum(stds, 0.01))


def test_vqe_loop_through_algorithm_job(connected: Any) -> None:
    """A small VQE: parameters tuned by a coarse search over our Estimator, run as an
    AlgorithmJob, reaches the ground energy of a 1-qubit Hamiltonian."""
    theta = Parameter("θ")
    ansatz = QuantumCircuit(1)
    ansatz.ry(theta, 0)
    hamiltonian = SparsePauliOp.from_list([("Z", 1.0), ("X", 1.0)])  # ground energy -√2
    estimator = Estimator(mode="aer_simulator", service=connected)

    def vqe(rounds: int) -> float:
        low, high = -np.pi, np.pi
        best = 0.0
        for _ in range(rounds):
            grid = np.linspace(low, high, 9).reshape(9, 1)
            evs = estimator.run([(ansatz, hamiltonian, grid, 0.01)]).result()[0].data.evs
            best_index = int(np.argmin(evs))
            best = float(evs[best_index])
            step = (high - low) / 8
            low, high = grid[best_index, 0] - step, grid[best_index, 0] + step
        return best

    job = AlgorithmJob(vqe, 3)
    job.submit()
    job.wait_for_final_state(timeout=300)
    assert job.result() == pytest.approx(-np.sqrt(2), abs=0.08)


def test_session_context_manager(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    with Session(backend, max_time="10m") as session:
        assert session.session_id
        assert session.backend() == "aer_simulator"
        assert session.status() == "Pending"
        job = Sampler(mode=session).run([bell()], shots=10)
        assert job.session_id == session.session_id
        job.result(timeout=120)
        details = session.details()
        assert details["mode"] == "dedicated"
        assert details["max_time"] == 600
        assert details["jobs"]["done"] == 1
        assert session.status() == "In progress, accepting new jobs"
        assert session.usage() > 0
        again = Session.from_id(session.session_id, service=connected)
        assert again.backend() == "aer_simulator"
    assert session.status() == "Closed"
    with pytest.raises(IBMRuntimeError, match="session"):
        Sampler(mode=session).run([bell()])
    session.close()  # closing twice does nothing


def test_batch_and_session_run(connected: Any) -> None:
    with Batch("aer_simulator", service=connected) as batch:
        assert batch.mode == "batch"
        jobs = [Sampler(mode=batch).run([bell()], shots=5) for _ in range(3)]
        assert {j.session_id for j in jobs} == {batch.session_id}
        for job in jobs:
            job.result(timeout=120)
    with Session("aer_simulator", service=connected) as session:
        job = session.run("sampler", {"pubs": [[bell(), None, 7]]})
        assert job.result(timeout=120)[0].data.meas.num_shots == 7
        session.cancel()
        assert session.details()["state"] == "cancelled"


@pytest.mark.parametrize(
    ("given", "seconds"), [(30, 30.0), ("45s", 45.0), ("1h 30m", 5400.0), ("2m 5s", 125.0)]
)
def test_max_time_durations(given: Any, seconds: float) -> None:
    assert parse_max_time(given) == seconds


@pytest.mark.parametrize("given", ["soon", "1x", 0, -3, True])
def test_bad_max_time_is_refused(given: Any) -> None:
    with pytest.raises(IBMInputValueError, match="max_time"):
        parse_max_time(given)
