"""``assemble()`` keeps the experiments as the writer's bytes until they are read.

The lazy Qobj must be indistinguishable from one built from objects (``from_dict`` of the
same bytes): attributes, ``to_dict``, equality, copies, pickles, repr, and every change a
user makes shows in ``to_json`` and in what ``backend.run`` sends. Untouched, the bytes
sent are the writer's own.
"""

from __future__ import annotations

import copy
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from qiskit.circuit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit.library import UnitaryGate
from qiskit.circuit.random import random_circuit

import qdispatch
from qdispatch.assembler import circuits_to_qobj_json
from qdispatch.exceptions import IBMQBackendValueError
from qdispatch.managed.managedjob import ManagedJob
from qdispatch.qobj import (
    QasmQobj,
    QasmQobjConfig,
    QasmQobjExperiment,
    QasmQobjInstruction,
    QobjHeader,
)

ARGS: dict[str, Any] = {
    "shots": 300,
    "seed_simulator": 11,
    "qobj_id": "lazy",
    # A key "experiments" before the top-level one: the split must skip it.
    "qobj_header": {"tag": "x", "nested": {"a": 1, "experiments": [1, 2]}},
    "method": "statevector",
}


def varied() -> list[QuantumCircuit]:
    """Circuits of every kind the writers handle, natively or through the Python path."""
    qr, cr = QuantumRegister(3, "q"), ClassicalRegister(3, "c")
    named = QuantumCircuit(qr, cr, name="named", global_phase=0.25)
    named.metadata = {"note": '"experiments":[', "experiments": [{"header": 1}]}
    named.h(0)
    named.cx(0, 1)
    named.rz(1.5e-7, 2)
    named.delay(20, 0, unit="ns")
    named.append(UnitaryGate([[0, 1], [1, 0]]), [1])
    named.measure(qr, cr)
    with named.if_test((cr, 3)):
        named.x(2)
    named.measure(2, 2)
    wide = QuantumCircuit(7, 1, name="wide")
    wide.h(range(7))
    wide.measure(6, 0)
    randoms = [random_circuit(5, 12, max_operands=2, measure=True, seed=i) for i in range(60)]
    return [named, wide, *randoms]


def bell() -> QuantumCircuit:
    qc = QuantumCircuit(2, 2, name="bell")
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    return qc


def zeros() -> QuantumCircuit:
    qc = QuantumCircuit(2, 2, name="zeros")
    qc.measure([0, 1], [0, 1])
    return qc


def is_lazy(qobj: QasmQobj) -> bool:
    """Whether the experiments are still bytes (not yet objects)."""
    return "experiments" not in vars(qobj)


@pytest.fixture(scope="module")
def circuits() -> list[QuantumCircuit]:
    return varied()


@pytest.fixture(scope="module")
def wire(circuits: list[QuantumCircuit]) -> bytes:
    return circuits_to_qobj_json(circuits, **ARGS)


def eager(wire: bytes) -> QasmQobj:
    """The Qobj built from objects, as ``assemble`` returned it before."""
    return QasmQobj.from_dict(orjson.loads(wire))


# ---------------------------------------------------------------------------------------------
# Untouched: the writer's bytes, and the same Qobj as the eager model
# ---------------------------------------------------------------------------------------------


def test_untouched_sends_the_writers_bytes(circuits: list[QuantumCircuit], wire: bytes) -> None:
    qobj = qdispatch.assemble(circuits, **ARGS)
    assert is_lazy(qobj)
    assert qobj.to_json() == wire
    assert eager(wire).to_json() == wire
    # Reading the head leaves the experiments as bytes.
    assert qobj.qobj_id == "lazy"
    assert qobj.type == "QASM"
    assert qobj.schema_version == "1.3.0"
    assert qobj.config.shots == 300
    assert qobj.config.n_qubits == 7
    assert qobj.header.nested == {"a": 1, "experiments": [1, 2]}
    assert (
        repr(qobj) == repr(eager(wire)) == f"QasmQobj(qobj_id='lazy', experiments={len(circuits)})"
    )
    assert is_lazy(qobj)
    assert qobj.to_json() == wire


@pytest.mark.parametrize("seed", range(8))
def test_same_as_the_eager_model(seed: int) -> None:
    circuits = [
        random_circuit(5, 10, max_operands=3, measure=True, seed=seed * 100 + i) for i in range(25)
    ]
    args = {"shots": 100 + seed, "memory": bool(seed % 2), "qobj_id": f"q{seed}"}
    wire = circuits_to_qobj_json(circuits, **args)
    qobj = qdispatch.assemble(circuits, **args)
    reference = eager(wire)
    assert qobj.to_json() == wire
    assert qobj == reference
    assert reference == qobj
    assert qobj.to_dict() == reference.to_dict()
    assert list(qobj.to_dict()) == list(reference.to_dict())
    assert QasmQobj.from_dict(qobj.to_dict()) == qobj
    assert not is_lazy(qobj)
    assert qobj.to_json() == wire  # built from the objects now: the same bytes
    assert [repr(e) for e in qobj.experiments] == [repr(e) for e in reference.experiments]


def test_experiment_objects_match(circuits: list[QuantumCircuit], wire: bytes) -> None:
    qobj = qdispatch.assemble(circuits, **ARGS)
    reference = eager(wire)
    assert len(qobj.experiments) == len(circuits)
    for mine, theirs in zip(qobj.experiments, reference.experiments, strict=True):
        assert isinstance(mine, QasmQobjExperiment)
        assert mine == theirs
        assert mine.header.to_dict() == theirs.header.to_dict()
        assert [vars(i) for i in mine.instructions] == [vars(i) for i in theirs.instructions]


def test_equality_without_reading(circuits: list[QuantumCircuit]) -> None:
    one = qdispatch.assemble(circuits, **ARGS)
    two = qdispatch.assemble(circuits, **ARGS)
    assert one == two
    assert is_lazy(one)
    assert is_lazy(two)
    other = qdispatch.assemble(circuits, **{**ARGS, "shots": 301})
    assert one != other
    fewer = qdispatch.assemble(circuits[:-1], **ARGS)
    assert fewer != one
    assert one != "lazy"
    with pytest.raises(TypeError, match="unhashable"):
        hash(one)


def test_missing_attributes_are_attribute_errors(circuits: list[QuantumCircuit]) -> None:
    qobj = qdispatch.assemble(circuits[:2])
    assert not hasattr(qobj, "nonexistent")
    with pytest.raises(AttributeError, match="'QasmQobj' object has no attribute 'nope'"):
        _ = qobj.nope
    assert "experiments" in dir(qobj)
    assert dir(qobj) == dir(eager(qobj.to_json()))
    assert is_lazy(qobj)
    assert hasattr(qobj, "experiments")
    assert not is_lazy(qobj)


def test_bytes_in_another_layout_are_read_at_once() -> None:
    # The experiments first: not the writers' layout, so nothing can be kept as bytes.
    data = orjson.loads(circuits_to_qobj_json([bell()], qobj_id="x"))
    reordered = orjson.dumps({"experiments": data.pop("experiments"), **data})
    qobj = QasmQobj._from_wire(reordered, 1)
    assert not is_lazy(qobj)
    assert qobj.to_dict() == QasmQobj.from_dict(orjson.loads(reordered)).to_dict()


# ---------------------------------------------------------------------------------------------
# Changes show in to_json
# ---------------------------------------------------------------------------------------------


def changed(wire: bytes, change: Any) -> bytes:
    """``to_json`` of the eager model after ``change``."""
    reference = eager(wire)
    change(reference)
    return reference.to_json()


HEAD_CHANGES = {
    "shots": lambda q: setattr(q.config, "shots", 10),
    "new config field": lambda q: setattr(q.config, "noise", {"p": 0.1}),
    "config deleted field": lambda q: delattr(q.config, "seed_simulator"),
    "config replaced": lambda q: setattr(q, "config", QasmQobjConfig(shots=5, memory=True)),
    "header field": lambda q: setattr(q.header, "tag", "y"),
    "header replaced": lambda q: setattr(q, "header", QobjHeader(backend_name="b")),
    "qobj_id": lambda q: setattr(q, "qobj_id", "other"),
    "qobj_id none": lambda q: setattr(q, "qobj_id", None),
    "schema_version": lambda q: setattr(q, "schema_version", "1.2.0"),
}


@pytest.mark.parametrize("name", HEAD_CHANGES)
def test_head_changes_keep_experiments_as_bytes(
    circuits: list[QuantumCircuit], wire: bytes, name: str
) -> None:
    qobj = qdispatch.assemble(circuits, **ARGS)
    HEAD_CHANGES[name](qobj)
    out = qobj.to_json()
    assert out != wire
    assert out == changed(wire, HEAD_CHANGES[name])
    assert is_lazy(qobj)
    assert qobj == QasmQobj.from_dict(orjson.loads(out))


EXPERIMENT_CHANGES = {
    "instruction appended": lambda q: q.experiments[0].instructions.append(
        QasmQobjInstruction("x", qubits=[0])
    ),
    "instruction param": lambda q: setattr(q.experiments[2].instructions[0], "params", [0.5]),
    "experiment header": lambda q: setattr(q.experiments[1].header, "name", "renamed"),
    "experiment config": lambda q: setattr(q.experiments[1].config, "shots", 7),
    "experiment dropped": lambda q: q.experiments.pop(),
    "experiments replaced": lambda q: setattr(q, "experiments", q.experiments[:3]),
    "experiments emptied": lambda q: setattr(q, "experiments", []),
}


@pytest.mark.parametrize("name", EXPERIMENT_CHANGES)
def test_experiment_changes(circuits: list[QuantumCircuit], wire: bytes, name: str) -> None:
    qobj = qdispatch.assemble(circuits, **ARGS)
    EXPERIMENT_CHANGES[name](qobj)
    assert qobj.to_json() == changed(wire, EXPERIMENT_CHANGES[name])
    assert qobj.to_json() != wire


def test_references_handed_out_stay_live(circuits: list[QuantumCircuit], wire: bytes) -> None:
    qobj = qdispatch.assemble(circuits, **ARGS)
    config, header, experiments = qobj.config, qobj.header, qobj.experiments
    assert qobj.to_json() == wire
    # Changed after a to_json: the next one shows them.
    config.shots = 1
    header.extra = [1]
    experiments[0].instructions.clear()
    del experiments[3:]
    out = orjson.loads(qobj.to_json())
    assert out["config"]["shots"] == 1
    assert out["header"]["extra"] == [1]
    assert out["experiments"][0]["instructions"] == []
    assert len(out["experiments"]) == 3


def test_replacing_experiments_without_reading_them(circuits: list[QuantumCircuit]) -> None:
    qobj = qdispatch.assemble(circuits, **ARGS)
    source = qdispatch.assemble([bell()])
    qobj.experiments = source.experiments
    assert [e.header.name for e in qobj.experiments] == ["bell"]
    assert orjson.loads(qobj.to_json())["experiments"] == source.to_dict()["experiments"]
    assert repr(qobj) == "QasmQobj(qobj_id='lazy', experiments=1)"


def test_experiments_read_by_many_threads_are_one_list(circuits: list[QuantumCircuit]) -> None:
    qobj = qdispatch.assemble(circuits, **ARGS)
    barrier = threading.Barrier(4)

    def read(_: int) -> int:
        barrier.wait()
        return id(qobj.experiments)

    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(read, range(4)))
    assert ids == {id(qobj.experiments)}


# ---------------------------------------------------------------------------------------------
# Copies and pickles
# ---------------------------------------------------------------------------------------------


def test_shallow_copy_shares_as_an_eager_one_does(
    circuits: list[QuantumCircuit], wire: bytes
) -> None:
    for original in (qdispatch.assemble(circuits, **ARGS), eager(wire)):
        twin = copy.copy(original)
        assert twin == original
        twin.experiments[0].instructions.append(QasmQobjInstruction("x", qubits=[1]))
        twin.config.shots = 2
        assert original.experiments[0].instructions[-1].name == "x"
        assert original.config.shots == 2
        assert original.to_json() == twin.to_json()


def test_deep_copy_is_independent(circuits: list[QuantumCircuit], wire: bytes) -> None:
    qobj = qdispatch.assemble(circuits, **ARGS)
    twin = copy.deepcopy(qobj)
    assert twin == qobj
    assert twin.to_json() == wire
    twin.experiments[0].instructions.pop()
    twin.config.shots = 3
    assert qobj.to_json() == wire
    assert twin.to_json() == changed(
        wire, lambda q: (q.experiments[0].instructions.pop(), setattr(q.config, "shots", 3))
    )


@pytest.mark.parametrize("read_first", [False, True])
def test_pickles(circuits: list[QuantumCircuit], wire: bytes, read_first: bool) -> None:
    qobj = qdispatch.assemble(circuits, **ARGS)
    if read_first:
        qobj.experiments[0].header.name = "read"
    again = pickle.loads(pickle.dumps(qobj))
    assert again == qobj
    assert again.to_json() == qobj.to_json()
    assert is_lazy(again) is not read_first
    assert again.to_dict() == qobj.to_dict()
    if not read_first:
        assert again.to_json() == wire


# ---------------------------------------------------------------------------------------------
# Sending: backend.run and the job manager, against a real service
# ---------------------------------------------------------------------------------------------


def test_run_sends_the_untouched_bytes(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    qobj = qdispatch.assemble([bell(), zeros()], backend, shots=200, seed_simulator=5)
    wire = qobj.to_json()
    job = backend.run(qobj, job_name="lazy")
    result = job.result(timeout=120)
    assert is_lazy(qobj)
    assert connected.api.job_qobj(job.job_id()) == wire
    assert set(result.get_counts(0)) <= {"00", "11"}
    assert result.get_counts(1) == {"00": 200}
    assert result.results[0].header["name"] == "bell"


def test_run_sends_the_changed_qobj(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    qobj = qdispatch.assemble([bell(), zeros()], backend, shots=200, seed_simulator=5)
    qobj.config.shots = 37
    qobj.experiments[1].instructions.insert(0, QasmQobjInstruction("x", qubits=[0]))
    qobj.experiments[1].header.name = "one"
    job = backend.run(qobj)
    result = job.result(timeout=120)
    assert orjson.loads(connected.api.job_qobj(job.job_id())) == qobj.to_dict()
    assert result.get_counts(1) == {"01": 37}
    assert result.results[1].header["name"] == "one"
    assert sum(result.get_counts(0).values()) == 37


def test_run_of_a_qobj_refuses_run_options(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    qobj = qdispatch.assemble([bell()])
    with pytest.raises(IBMQBackendValueError, match="takes no header, shots"):
        backend.run(qobj, shots=10, header={"a": 1})
    qobj.config.bad = object()
    with pytest.raises(IBMQBackendValueError, match="cannot be serialized"):
        backend.run(qobj)


def test_job_manager_sends_the_untouched_bytes(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    qobj = qdispatch.assemble([zeros(), bell()], backend, shots=50)
    wire = qobj.to_json()
    mjob = ManagedJob(0, 2)
    with ThreadPoolExecutor(1) as executor:
        mjob.submit_qobj(qobj, "chunk", backend, executor, threading.Lock())
        assert mjob.future is not None
        mjob.future.result(timeout=120)
    assert mjob.submit_error is None
    assert mjob.job is not None
    assert connected.api.job_qobj(mjob.job.job_id()) == wire
    assert mjob.job.result(timeout=120).get_counts(0) == {"00": 50}
    assert is_lazy(qobj)
