"""Circuits → QasmQobj: the C-API path and the Python path agree, and the service runs both."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest
from qiskit.circuit import (
    ClassicalRegister,
    Clbit,
    Parameter,
    QuantumCircuit,
    QuantumRegister,
    Qubit,
)
from qiskit.circuit.library import UnitaryGate
from qiskit.circuit.random import random_circuit
from qiskit.quantum_info import random_unitary

import qdispatch
from qdispatch import _native, assembler
from qdispatch.disassembler import qobj_to_circuits
from qdispatch.qobj import (
    PulseLibraryItem,
    PulseQobj,
    PulseQobjConfig,
    PulseQobjExperiment,
    PulseQobjInstruction,
    QasmQobj,
    QobjHeader,
)
from qdispatch.server.backends import catalog, native_spec
from qdispatch.server.runner import run_qobj

CONFIG = assembler._config(200, False, 1234, {"method": "statevector"})
HEADER = {"backend_name": "aer_simulator"}


def native_json(circuits: list[QuantumCircuit]) -> bytes:
    return _native.circuits_to_qobj_json(circuits, CONFIG, "qid", HEADER)


def python_json(circuits: list[QuantumCircuit]) -> bytes:
    return assembler._python_qobj_json(circuits, CONFIG, "qid", HEADER)


def bell() -> QuantumCircuit:
    qc = QuantumCircuit(2, 2, name="bell")
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    return qc


def corpus() -> list[QuantumCircuit]:
    """Circuits covering what the Qobj can express, natively read or not."""
    circuits = [
        random_circuit(5, 10, measure=True, seed=seed, max_operands=3) for seed in range(20)
    ]
    circuits += [random_circuit(3, 6, measure=True, reset=True, seed=seed) for seed in range(5)]

    theta, phi = Parameter("θ"), Parameter("φ")
    param = QuantumCircuit(2, 2, name="bound")
    param.rx(theta, 0)
    param.rz(2 * phi + theta, 1)
    param.cp(phi, 0, 1)
    param.measure([0, 1], [0, 1])
    param.assign_parameters({theta: 0.25, phi: -1.5}, inplace=True)
    circuits.append(param)

    qr, cr = QuantumRegister(2, "qa"), ClassicalRegister(2, "ca")
    qr2, cr2 = QuantumRegister(1, "qb"), ClassicalRegister(3, "cb")
    multi = QuantumCircuit(qr, qr2, cr, cr2, name="multi")
    multi.h(qr[0])
    multi.cx(qr[0], qr2[0])
    multi.barrier()
    multi.reset(qr[1])
    multi.delay(100, qr[0])
    multi.delay(1.5e-6, qr[1], unit="s")
    multi.measure(qr2[0], cr2[2])
    multi.measure(qr[0], cr[1])
    multi.metadata = {"experiment": "multi", "values": [1, 2.5, None], "nested": {"ok": True}}
    multi.global_phase = math.pi / 3
    circuits.append(multi)

    loose = QuantumCircuit([Qubit(), Qubit()], QuantumRegister(1, "r"), [Clbit()], name="loose")
    loose.x(0)
    loose.cx(0, 2)
    loose.measure(2, 0)
    circuits.append(loose)

    cond = QuantumCircuit(QuantumRegister(2, "q"), ClassicalRegister(2, "c"), name="cond")
    cond.h(0)
    cond.measure(0, 0)
    with cond.if_test((cond.cregs[0], 1)):
        cond.x(1)
    with cond.if_test((cond.clbits[0], True)):
        cond.rz(0.5, 0)
    cond.measure(1, 1)
    circuits.append(cond)

    uni = QuantumCircuit(2, 2, name="unitary")
    uni.append(UnitaryGate(random_unitary(4, seed=7)), [0, 1])
    uni.measure([0, 1], [0, 1])
    circuits.append(uni)

    empty = QuantumCircuit(1, name="empty")
    circuits.append(empty)
    circuits.append(bell())
    return circuits


@pytest.fixture(scope="module")
def circuits() -> list[QuantumCircuit]:
    return corpus()


def test_capi_is_used_here() -> None:
    # The installed qiskit (2.6) exports a C API version this build knows.
    assert _native.capi_available()


def test_native_and_python_paths_give_identical_bytes(circuits: list[QuantumCircuit]) -> None:
    assert native_json(circuits) == python_json(circuits)
    # Circuit by circuit, too (a fallback circuit among native ones, or alone).
    for circuit in circuits:
        assert native_json([circuit]) == python_json([circuit]), circuit.name


def test_wire_layout(circuits: list[QuantumCircuit]) -> None:
    qobj = orjson.loads(native_json(circuits))
    assert qobj["type"] == "QASM"
    assert qobj["schema_version"] == "1.3.0"
    assert qobj["header"] == HEADER
    config = qobj["config"]
    assert config["shots"] == 200
    assert config["seed_simulator"] == 1234
    assert config["method"] == "statevector"
    assert config["n_qubits"] == max(c.num_qubits for c in circuits)
    assert config["memory_slots"] == max(c.num_clbits for c in circuits)

    by_name = {e["header"]["name"]: e for e in qobj["experiments"]}
    multi = by_name["multi"]["header"]
    assert multi["qreg_sizes"] == [["qa", 2], ["qb", 1]]
    assert multi["creg_sizes"] == [["ca", 2], ["cb", 3]]
    assert multi["qubit_labels"] == [["qa", 0], ["qa", 1], ["qb", 0]]
    assert multi["clbit_labels"][-1] == ["cb", 2]
    assert multi["metadata"]["nested"] == {"ok": True}
    assert multi["global_phase"] == pytest.approx(math.pi / 3)
    insts = by_name["multi"]["instructions"]
    assert {"name": "delay", "qubits": [0], "params": [100]} in insts
    assert {"name": "delay", "qubits": [1], "params": [1.5e-6], "unit": "s"} in insts
    assert {"name": "measure", "qubits": [2], "memory": [4]} in insts

    loose = by_name["loose"]["header"]
    assert (loose["n_qubits"], loose["memory_slots"]) == (3, 1)
    assert loose["qubit_labels"] == [["r", 0]]

    bound = by_name["bound"]["instructions"]
    assert bound[1] == {"name": "rz", "qubits": [1], "params": [-2.75]}

    cond = by_name["cond"]["instructions"]
    assert cond[2] == {
        "name": "bfunc",
        "register": 2,
        "mask": "0x3",
        "relation": "==",
        "val": "0x1",
    }
    assert cond[3] == {"name": "x", "qubits": [1], "conditional": 2}
    assert cond[4]["mask"] == "0x1"
    assert cond[4]["register"] == 3
    assert cond[5] == {"name": "rz", "qubits": [0], "params": [0.5], "conditional": 3}
    # Measurements feed registers in a conditional experiment, as qiskit's assembler wrote.
    assert cond[1] == {"name": "measure", "qubits": [0], "memory": [0], "register": [0]}

    (unitary,) = [i for i in by_name["unitary"]["instructions"] if i["name"] == "unitary"]
    matrix = np.asarray(unitary["params"][0])
    assert matrix.shape == (4, 4, 2)


def test_validates_against_the_simulator(circuits: list[QuantumCircuit]) -> None:
    summary = _native.validate_qobj(native_json(circuits), native_spec(catalog()["aer_simulator"]))
    assert summary.n_experiments == len(circuits)
    assert summary.shots == 200


def _ops(circuit: QuantumCircuit) -> list[tuple[Any, ...]]:
    out = []
    for ci in circuit.data:
        op = ci.operation
        qubits = tuple(circuit.find_bit(q).index for q in ci.qubits)
        clbits = tuple(circuit.find_bit(c).index for c in ci.clbits)
        if op.name == "if_else":
            body = op.blocks[0].data[0]
            out.append(("if", op.condition[1], body.operation.name, qubits))
            continue
        params = tuple(
            np.round(np.asarray(p, dtype=complex), 12).tobytes()
            if op.name == "unitary"
            else float(p)
            for p in op.params
        )
        out.append((op.name, qubits, clbits, params))
    return out


def test_round_trips_through_the_worker(circuits: list[QuantumCircuit]) -> None:
    rebuilt = qobj_to_circuits(orjson.loads(native_json(circuits)))
    assert len(rebuilt) == len(circuits)
    for original, back in zip(circuits, rebuilt, strict=True):
        assert back.name == original.name
        assert back.num_qubits == original.num_qubits
        if original.num_clbits:
            # With memory_slots 0 the worker falls back to the Qobj-wide memory_slots.
            assert back.num_clbits == original.num_clbits
        assert _ops(back) == _ops(original), original.name
        assert back.metadata == original.metadata
        assert float(back.global_phase) == pytest.approx(float(original.global_phase))


def test_bell_runs_on_the_worker() -> None:
    wire = qdispatch.assembler.circuits_to_qobj_json([bell()], shots=500, seed_simulator=3)
    result = orjson.loads(run_qobj("aer_simulator", wire, "job-1"))
    assert result["success"]
    counts = result["results"][0]["data"]["counts"]
    assert set(counts) <= {"0x0", "0x3"}
    assert sum(counts.values()) == 500


def test_corpus_runs_on_the_worker(circuits: list[QuantumCircuit]) -> None:
    result = orjson.loads(run_qobj("aer_simulator", native_json(circuits), "job-2"))
    assert result["success"], [r.get("status") for r in result["results"]]


def test_assemble_returns_a_qasm_qobj(circuits: list[QuantumCircuit]) -> None:
    qobj = qdispatch.assemble(
        circuits, shots=100, memory=True, qobj_id="abc", qobj_header={"tag": "x"}, foo=1
    )
    assert isinstance(qobj, QasmQobj)
    assert qobj.qobj_id == "abc"
    assert qobj.config.shots == 100
    assert qobj.config.memory is True
    assert qobj.config.foo == 1
    assert qobj.header.tag == "x"
    assert qobj.experiments[0].instructions[0].name == circuits[0].data[0].operation.name
    assert QasmQobj.from_dict(qobj.to_dict()) == qobj
    assert qobj.to_json() == assembler.circuits_to_qobj_json(
        circuits, shots=100, memory=True, qobj_id="abc", qobj_header={"tag": "x"}, foo=1
    )
    other = qdispatch.assemble(circuits[:1], qobj_header=QobjHeader(tag="x"))
    assert other != qobj
    assert other.header == QobjHeader(tag="x")


def test_assemble_defaults_and_backend() -> None:
    class Backend:
        name = "aer_simulator"
        backend_version = "0.1.0"

    qobj = qdispatch.assemble(bell(), Backend())
    assert qobj.config.shots == 1024
    assert qobj.config.memory is False
    assert not hasattr(qobj.config, "seed_simulator")
    assert qobj.header.to_dict() == {"backend_name": "aer_simulator", "backend_version": "0.1.0"}
    assert len(qobj.qobj_id) == 36


def test_pulse_qobj_round_trips() -> None:
    config = PulseQobjConfig(
        meas_level=2,
        meas_return="avg",
        pulse_library=[PulseLibraryItem("gauss", [0.1 + 0.2j, 0.3, [0.5, -0.5]])],
        qubit_lo_freq=[5.0],
        meas_lo_freq=[6.5],
        shots=100,
    )
    experiment = PulseQobjExperiment(
        [
            PulseQobjInstruction("gauss", 0, ch="d0"),
            PulseQobjInstruction("fc", 10, ch="d0", phase=1.57),
            PulseQobjInstruction("acquire", 20, duration=100, qubits=[0], memory_slot=[0]),
        ]
    )
    qobj = PulseQobj("p1", config, [experiment], QobjHeader(backend_name="x"))
    assert PulseQobj.from_dict(qobj.to_dict()) == qobj
    wire = orjson.loads(qobj.to_json())
    assert wire["type"] == "PULSE"
    assert wire["config"]["pulse_library"][0]["samples"][0] == [0.1, 0.2]
    assert PulseQobj.from_dict(wire) == qobj
    # The service runs QASM only, and says so.
    with pytest.raises(_native.InvalidQobjError, match="Pulse"):
        _native.validate_qobj(qobj.to_json(), native_spec(catalog()["aer_simulator"]))


class Schedule:
    """Stands in for a qiskit.pulse Schedule (qiskit >= 2 has none)."""


@pytest.mark.parametrize("use_native", [True, False])
def test_bad_input_errors(use_native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not use_native:
        monkeypatch.setattr(_native, "capi_available", lambda: False)

    with pytest.raises(TypeError, match="Schedule: Pulse schedules are not supported"):
        qdispatch.assemble(Schedule())
    with pytest.raises(TypeError, match=r"experiment 1 is a builtins\.str, not a QuantumCircuit"):
        qdispatch.assemble([bell(), "h q[0];"])

    theta = Parameter("theta")
    unbound = QuantumCircuit(1, name="needs-theta")
    unbound.h(0)
    unbound.rx(theta, 0)
    with pytest.raises(
        qdispatch.AssembleError,
        match=r"circuit 'needs-theta', instruction 1 \(rx\): unbound parameter\(s\) theta; "
        "assign parameters before running",
    ):
        assembler.circuits_to_qobj_json([bell(), unbound])

    # Control flow a bfunc cannot express travels as QPY (tests/test_control_flow.py).
    loop = QuantumCircuit(1, 1, name="looping")
    loop.measure(0, 0)
    with loop.while_loop((loop.clbits[0], True)):
        loop.x(0)
        loop.measure(0, 0)
    two = QuantumCircuit(2, 1, name="two-gates")
    with two.if_test((two.clbits[0], True)):
        two.x(0)
        two.x(1)
    with_else = QuantumCircuit(1, 1, name="else")
    with with_else.if_test((with_else.clbits[0], True)) as else_:
        with_else.x(0)
    with else_:
        with_else.z(0)
    for circuit in (loop, two, with_else):
        (experiment,) = qdispatch.assemble(circuit).experiments
        assert experiment.instructions == []
        assert experiment.qpy
