"""A qdispatch backend honours qiskit's ``BackendV2`` contract as qiskit's own backends do.

Each behaviour is compared with the same call on qiskit-aer's ``AerSimulator`` and qiskit's
``GenericBackendV2`` (the fake devices are seeded ``GenericBackendV2`` s, so the reference
for a fake device is the very backend the service simulates).
"""

from __future__ import annotations

import copy
import inspect
import math
import multiprocessing
import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import Parameter
from qiskit.providers.exceptions import QiskitBackendNotFoundError
from qiskit.providers.fake_provider import GenericBackendV2
from qiskit_aer import AerSimulator
from qiskit_aer.aererror import AerError

import qdispatch
from qdispatch.backend import QDispatchBackend
from qdispatch.exceptions import (
    IBMInputValueError,
    IBMQBackendValueError,
    IBMQJobApiError,
    IBMQJobFailureError,
    RuntimeJobNotFound,
)
from qdispatch.local import stop as stop_local
from qdispatch.server import backends as catalog
from support import ServiceProcess

FAKE = "fake_generic_5q"


def _reference(name: str) -> GenericBackendV2:
    """The ``GenericBackendV2`` the service builds the fake device ``name`` from."""
    return catalog.generic_backend(catalog.catalog()[name])


def _bell(backend: Any = None) -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc if backend is None else transpile(qc, backend, seed_transpiler=1)


@pytest.fixture(scope="module")
def fake(connected: Any) -> QDispatchBackend:
    backend: QDispatchBackend = connected.backend(FAKE)
    return backend


# -- copying and pickling ---------------------------------------------------------------------


def test_deepcopy_shares_the_connection_not_the_options(fake: QDispatchBackend) -> None:
    aer = AerSimulator(shots=77)
    aer_copy = copy.deepcopy(aer)
    aer_copy.set_options(shots=5)
    assert (aer.options.shots, aer_copy.options.shots) == (77, 5)

    backend = copy.deepcopy(fake)
    backend.set_options(shots=5)
    assert backend.service is fake.service
    assert (fake.options.shots, backend.options.shots) == (1024, 5)
    assert backend.target.num_qubits == fake.target.num_qubits
    shallow = copy.copy(fake)
    shallow.set_options(shots=6)
    assert fake.options.shots == 1024
    counts = backend.run(_bell(fake)).result().get_counts()
    assert sum(counts.values()) == 5


def test_pickle_round_trip_keeps_name_and_options(fake: QDispatchBackend) -> None:
    reference = GenericBackendV2(5, seed=1)
    assert pickle.loads(pickle.dumps(reference)).num_qubits == 5

    backend = copy.deepcopy(fake)
    backend.set_options(shots=33, seed_simulator=7)
    restored = pickle.loads(pickle.dumps(backend))
    assert isinstance(restored, QDispatchBackend)
    assert restored.name == FAKE
    assert (restored.options.shots, restored.options.seed_simulator) == (33, 7)
    assert restored.service.url == fake.service.url
    # Two pickles unpickled in one process share one connection.
    again = pickle.loads(pickle.dumps(backend))
    assert again.service is restored.service
    assert sum(restored.run(_bell(fake)).result().get_counts().values()) == 33
    # One its user closed is not handed to the next unpickling.
    restored.service.close()
    fresh = pickle.loads(pickle.dumps(backend))
    assert fresh.service is not restored.service
    assert sum(fresh.run(_bell(fake)).result().get_counts().values()) == 33


def test_token_not_in_repr(service: ServiceProcess, fake: QDispatchBackend) -> None:
    for obj in (fake, fake.service, pickle.loads(pickle.dumps(fake))):
        assert service.token not in repr(obj)
        assert service.token not in str(obj)


def _counts_in_child(payload: bytes) -> dict[str, int]:
    backend = pickle.loads(payload)
    counts: dict[str, int] = backend.run(_bell(backend), shots=50).result().get_counts()
    return counts


def test_pickled_backend_runs_a_job_in_a_spawned_process(fake: QDispatchBackend) -> None:
    payload = pickle.dumps(fake)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        counts = pool.apply(_counts_in_child, (payload,))
        # The backend itself as a task argument, as multiprocessing users pass it.
        again = pool.apply(_counts_in_child, (pickle.dumps(pickle.loads(payload)),))
    assert sum(counts.values()) == 50
    assert sum(again.values()) == 50


def test_local_service_backend_pickles_without_its_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("QDISPATCH_DATA_DIR", str(data))  # inherited by the spawned child
    monkeypatch.delenv("QDISPATCH_URL", raising=False)
    monkeypatch.delenv("QDISPATCH_TOKEN", raising=False)
    try:
        with qdispatch.connect() as local:
            backend = local.backend(FAKE)
            token = local.api._token
            payload = pickle.dumps(backend)
            # Found again through the local state file: nothing secret in the pickle.
            assert token.encode() not in payload
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                counts = pool.apply(_counts_in_child, (payload,))
            assert sum(counts.values()) == 50
    finally:
        stop_local(data)


# qiskit-ibm-runtime 0.50 deprecates SamplerV2 (for a client-side Sampler); it still is
# what qiskit-experiments and most code written for the runtime call.
@pytest.mark.filterwarnings("ignore:The SamplerV2 class is deprecated:DeprecationWarning")
def test_runtime_local_mode_sampler(fake: QDispatchBackend) -> None:
    runtime = pytest.importorskip("qiskit_ibm_runtime")
    circuit = _bell(fake)
    reference = runtime.SamplerV2(mode=AerSimulator.from_backend(_reference(FAKE)))
    expected = reference.run([circuit], shots=400).result()[0].data.meas.get_counts()

    sampler = runtime.SamplerV2(mode=fake)
    sampler.options.simulator.seed_simulator = 11
    result = sampler.run([circuit], shots=400).result()
    counts = result[0].data.meas.get_counts()
    assert sum(counts.values()) == 400
    # Mostly |00> and |11>, as on the reference; the rest is the device's noise.
    assert counts.get("00", 0) + counts.get("11", 0) > 340
    assert expected.get("00", 0) + expected.get("11", 0) > 340
    assert fake.options.seed_simulator is None  # the sampler's options stayed its own


# -- properties, timing and the Target --------------------------------------------------------


@pytest.fixture(scope="module")
def ideal(connected: Any) -> QDispatchBackend:
    backend: QDispatchBackend = connected.backend("aer_simulator")
    return backend


def _same_qubit_properties(ours: Any, theirs: Any) -> bool:
    # Equal to the last bits or so: the service stores microseconds and gigahertz.
    fields = ("t1", "t2", "frequency")
    return all(getattr(ours, f) == pytest.approx(getattr(theirs, f), rel=1e-12) for f in fields)


def test_qubit_properties_are_the_devices(fake: QDispatchBackend) -> None:
    reference = _reference(FAKE)
    assert _same_qubit_properties(fake.qubit_properties(2), reference.qubit_properties(2))
    ours = fake.qubit_properties([0, 3])
    theirs = reference.qubit_properties([0, 3])
    assert isinstance(ours, list)
    assert isinstance(theirs, list)
    assert len(ours) == 2
    assert all(_same_qubit_properties(a, b) for a, b in zip(ours, theirs, strict=True))
    props = fake.properties()
    assert props is not None
    assert fake.qubit_properties(1).t1 == props.t1(1)
    assert fake.qubit_properties(1).frequency == props.frequency(1)


def test_ideal_simulator_has_what_aer_has(ideal: QDispatchBackend) -> None:
    aer = AerSimulator()
    for call in (
        lambda b: b.qubit_properties(0),
        lambda b: b.meas_map,
        lambda b: b.dtm,
    ):
        with pytest.raises(NotImplementedError):
            call(aer)
        with pytest.raises(NotImplementedError):
            call(ideal)
    assert ideal.dt is None
    assert aer.dt is None


def test_meas_map_dt_dtm_and_durations(fake: QDispatchBackend) -> None:
    reference = _reference(FAKE)
    assert fake.meas_map == reference.meas_map == [[0, 1, 2, 3, 4]]
    assert fake.dt == reference.dt
    assert fake.dtm == pytest.approx(reference.dt, rel=1e-12)
    ours, theirs = fake.instruction_durations, reference.instruction_durations
    for name, qubits in (("cx", (0, 1)), ("sx", (2,)), ("measure", (4,)), ("reset", (1,))):
        assert ours.get(name, qubits, unit="s") == pytest.approx(
            theirs.get(name, qubits, unit="s"), rel=1e-12
        )


def test_pulse_channels_are_gone_as_on_qiskit_2(fake: QDispatchBackend) -> None:
    # qiskit 2 removed Pulse and with it BackendV2's channel methods: every backend
    # answers AttributeError, as GenericBackendV2 and AerSimulator do.
    for name in ("drive_channel", "measure_channel", "acquire_channel", "control_channel"):
        for backend in (fake, _reference(FAKE), AerSimulator()):
            assert not hasattr(backend, name)


def test_target_matches_the_device(fake: QDispatchBackend) -> None:
    reference = _reference(FAKE).target
    target = fake.target
    assert set(reference.operation_names) <= set(target.operation_names)
    assert target.concurrent_measurements == reference.concurrent_measurements
    for name in ("cx", "sx", "x", "id", "measure", "reset"):
        assert set(target[name]) == set(reference[name])
        for qargs, theirs in reference[name].items():
            ours = target[name][qargs]
            assert ours.error == theirs.error, (name, qargs)
            assert ours.duration == pytest.approx(theirs.duration, rel=1e-12), (name, qargs)


def test_noise_model_from_backend_is_the_services(fake: QDispatchBackend) -> None:
    noise_model = pytest.importorskip("qiskit_aer.noise").NoiseModel
    ours = noise_model.from_backend(fake)
    # What the service's workers simulate the device with.
    served = catalog.simulator(catalog.catalog()[FAKE]).options.noise_model
    assert set(ours.noise_instructions) == set(served.noise_instructions)
    assert ours.noise_qubits == served.noise_qubits
    for name, qubits in (("cx", (0, 1)), ("cx", (3, 4)), ("sx", (2,)), ("reset", (1,))):
        assert (
            ours._local_quantum_errors[name][qubits] == served._local_quantum_errors[name][qubits]
        )
    assert ours._local_readout_errors == served._local_readout_errors


def test_aer_from_backend_runs_like_the_service(fake: QDispatchBackend) -> None:
    simulator = AerSimulator.from_backend(fake)
    assert simulator.num_qubits == fake.num_qubits
    assert simulator.options.noise_model is not None
    circuit = _bell(fake)
    local = simulator.run(circuit, shots=2000, seed_simulator=5).result().get_counts()
    remote = fake.run(circuit, shots=2000, seed_simulator=5).result().get_counts()
    # Same noise model, same seed: the same counts.
    assert local == remote


# -- run options ------------------------------------------------------------------------------


def _rotations() -> tuple[list[QuantumCircuit], list[dict[Any, Any]]]:
    theta, phi = Parameter("theta"), Parameter("phi")
    one = QuantumCircuit(1, name="one")
    one.rx(theta, 0)
    one.measure_all()
    two = QuantumCircuit(1, name="two")
    two.rx(theta, 0)
    two.rx(phi, 0)
    two.measure_all()
    binds = [{theta: [0.0, math.pi]}, {theta: [0.0, math.pi, 0.0], phi: [0.0, 0.0, math.pi]}]
    return [one, two], binds


def test_parameter_binds_in_aers_form(ideal: QDispatchBackend) -> None:
    circuits, binds = _rotations()
    expected = AerSimulator().run(circuits, parameter_binds=binds, shots=100).result()
    result = ideal.run(circuits, parameter_binds=binds, shots=100).result()
    assert result.get_counts() == expected.get_counts()
    names = [
        r.header["name"] if isinstance(r.header, dict) else r.header.name for r in result.results
    ]
    assert names == ["one", "one", "two", "two", "two"]
    # Parameter names are keys too, and a number is one value.
    single = ideal.run(circuits[0], parameter_binds=[{"theta": math.pi}], shots=10).result()
    assert single.get_counts() == {"1": 10}


@pytest.mark.parametrize(
    ("binds", "message"),
    [
        (lambda b: b[:1], "1 mappings for 2 circuits"),
        (lambda b: [b[0], {**b[1], Parameter("x"): [1.0, 2.0, 3.0]}], "has no parameter x"),
        (lambda b: [b[0], {k: v for k, v in b[1].items() if k.name == "theta"}], "phi unbound"),
        (
            lambda b: [b[0], {k: v[:2] if k.name == "phi" else v for k, v in b[1].items()}],
            "as many values",
        ),
    ],
)
def test_parameter_binds_refused_with_what_is_wrong(
    ideal: QDispatchBackend, binds: Any, message: str
) -> None:
    circuits, good = _rotations()
    with pytest.raises(IBMQBackendValueError, match=message):
        ideal.run(circuits, parameter_binds=binds(good))


def test_set_options_checked_like_aer(ideal: QDispatchBackend) -> None:
    aer, backend = AerSimulator(), copy.deepcopy(ideal)
    with pytest.raises(AerError, match="Invalid option"):
        aer.set_options(no_such_option=1)
    with pytest.raises(AttributeError, match="no_such_option"):
        backend.set_options(no_such_option=1)
    with pytest.raises(AttributeError, match="noise_model is set by the service"):
        backend.set_options(noise_model=None)
    # Nor may one job ask for another noise: its results would not be of the noise it named.
    from_device = AerSimulator.from_backend(GenericBackendV2(2, seed=5)).options.noise_model
    with pytest.raises(IBMQBackendValueError, match="noise_model: the service simulates"):
        backend.run(_bell(), noise_model=from_device)
    for name, value in (
        ("shots", 1.5),
        ("shots", 0),
        ("memory", "yes"),
        ("seed_simulator", "x"),
        ("method", 3),
    ):
        with pytest.raises(IBMQBackendValueError, match=f"option '{name}'"):
            backend.set_options(**{name: value})
    assert backend.options.shots == 1024  # nothing was set by a refused call
    # Any option Aer knows is accepted and reaches the simulator.
    aer.set_options(method="stabilizer", shots=10)
    backend.set_options(method="stabilizer", shots=10, seed_simulator=3)
    counts = backend.run(_bell()).result().get_counts()
    assert counts == aer.run(_bell(), seed_simulator=3).result().get_counts()
    # The stabilizer method refuses a non-Clifford gate, as on Aer.
    circuit = QuantumCircuit(1)
    circuit.t(0)
    circuit.measure_all()
    job = backend.run(circuit)
    with pytest.raises(IBMQJobFailureError, match="stabilizer"):
        job.result()


# -- a QiskitRuntimeService-shaped service ----------------------------------------------------

# What qiskit-ibm-runtime's service takes that a qdispatch service has no use for.
_RUNTIME_ONLY = {"calibration_id", "include_mocks"}


@pytest.mark.parametrize(
    "method", ["backends", "least_busy", "backend", "job", "jobs", "delete_job", "usage"]
)
def test_service_methods_take_the_runtime_services_arguments(connected: Any, method: str) -> None:
    runtime = pytest.importorskip("qiskit_ibm_runtime")
    theirs = inspect.signature(getattr(runtime.QiskitRuntimeService, method)).parameters
    ours = inspect.signature(getattr(connected, method)).parameters
    missing = {n for n in theirs if n != "self" and n not in ours} - _RUNTIME_ONLY
    assert not missing, f"{method} lacks {missing}"
    for name, param in theirs.items():
        if name in ours and name != "self" and param.default is not inspect.Parameter.empty:
            assert ours[name].default == param.default, (method, name)


def _names(backends: list[QDispatchBackend]) -> list[str]:
    return sorted(b.name for b in backends)


def _ids(jobs: list[Any]) -> set[str]:
    return {j.job_id() for j in jobs}


def test_backends_filters(connected: Any) -> None:
    everything = ["aer_simulator", "fake_generic_27q", FAKE]
    assert _names(connected.backends()) == everything
    assert _names(connected.backends(FAKE)) == [FAKE]
    assert _names(connected.backends(min_num_qubits=6)) == ["aer_simulator", "fake_generic_27q"]
    assert _names(connected.backends(simulator=False)) == ["fake_generic_27q", FAKE]
    assert _names(connected.backends(operational=True, dynamic_circuits=True)) == everything
    assert _names(connected.backends(filters=lambda b: b.num_qubits == 5)) == [FAKE]
    assert _names(connected.backends(filters=lambda b: b.status().operational)) == everything
    assert connected.backends(operational=False) == []
    with pytest.raises(IBMInputValueError, match="no_such_field"):
        connected.backends(no_such_field=1)
    with pytest.raises(IBMInputValueError, match="fractional"):
        connected.backends(use_fractional_gates=True)
    status = connected.backend(FAKE).status()
    assert status.operational is True
    assert status["pending_jobs"] == status.pending_jobs


def test_least_busy(connected: Any) -> None:
    chosen = connected.least_busy(min_num_qubits=27, simulator=False)
    assert chosen.name == "fake_generic_27q"
    assert connected.least_busy().status().status_msg == "active"
    with pytest.raises(QiskitBackendNotFoundError):
        connected.least_busy(min_num_qubits=1000)


def test_job_jobs_delete_and_usage(connected: Any, fake: QDispatchBackend) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    job = fake.run(_bell(fake), shots=10)
    job.result()
    assert connected.job(job.job_id()).job_id() == job.job_id()
    assert job.job_id() in _ids(
        connected.jobs(limit=None, backend_name=FAKE, pending=False, created_after=before)
    )
    assert job.job_id() not in _ids(connected.jobs(limit=None, pending=True))
    assert job.job_id() not in _ids(connected.jobs(limit=None, created_before=before))
    assert connected.jobs(pending=True, status="DONE") == []
    with pytest.raises(IBMInputValueError, match="not both"):
        connected.jobs(start_datetime=before, created_after=before)
    connected.delete_job(job.job_id())
    with pytest.raises(IBMQJobApiError, match="not found"):
        connected.job(job.job_id())
    with pytest.raises(RuntimeJobNotFound):
        connected.delete_job(job.job_id())
    usage = connected.usage()
    assert usage["usage_limit_reached"] is False
    assert usage["usage_remaining_seconds"] is None
    assert usage["active_jobs"] >= 0
    assert usage["max_active_jobs"] == connected.info()["max_active_jobs"]
