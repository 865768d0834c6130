"""A qdispatch backend honours qiskit's ``BackendV2`` contract as qiskit's own backends do.

Each behaviour is compared with the same call on qiskit-aer's ``AerSimulator`` and qiskit's
``GenericBackendV2`` (the fake devices are seeded ``GenericBackendV2`` s, so the reference
for a fake device is the very backend the service simulates).
"""

from __future__ import annotations

import copy
import multiprocessing
import pickle
from typing import Any

import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.providers.fake_provider import GenericBackendV2
from qiskit_aer import AerSimulator

from qdispatch.backend import QDispatchBackend
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
