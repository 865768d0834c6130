"""QasmQobj bytes → circuits: the native rebuild (Qiskit's C API) and the Python path agree.

Every Qobj here is rebuilt both ways: :func:`qobj_bytes_to_circuits` (native where it can,
the Python path for the experiments it leaves) and :func:`qobj_to_circuits` on the parsed
dict (all Python). They must give equal circuits, with the same names, registers,
metadata and global phase, or raise the same error.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from qiskit.circuit import QuantumCircuit
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit_aer import AerSimulator

from qdispatch import _native, encoding
from qdispatch.disassembler import QobjExecutionError, qobj_bytes_to_circuits, qobj_to_circuits
from qdispatch.server.programs import ProgramRef
from qdispatch.server.programs.worker import run_program
from test_assemble import corpus, native_json

pytestmark = pytest.mark.skipif(not _native.capi_available(), reason="no Qiskit C API")

STANDARD = {
    name: gate
    for name, gate in get_standard_gate_name_mapping().items()
    if getattr(gate, "_standard_gate", None) is not None
}


def _ops(circuit: QuantumCircuit) -> list[tuple[Any, ...]]:
    """The instructions with their exact parameter values (equality compares with a
    tolerance) and bit indices."""

    def params(op: Any) -> Any:
        if op.name == "delay":
            return op.params  # int or float, as given
        if all(isinstance(p, int | float) for p in op.params):
            return [float(p) for p in op.params]
        return None  # blocks of control flow, matrices: `==` compares those

    return [
        (
            inst.operation.name,
            params(inst.operation),
            getattr(inst.operation, "unit", None),
            [circuit.find_bit(q).index for q in inst.qubits],
            [circuit.find_bit(c).index for c in inst.clbits],
        )
        for inst in circuit.data
    ]


def assert_same(native: QuantumCircuit, python: QuantumCircuit) -> None:
    assert native == python
    assert native.name == python.name
    assert native.metadata == python.metadata
    assert native.global_phase == python.global_phase
    assert [(r.name, r.size) for r in native.qregs] == [(r.name, r.size) for r in python.qregs]
    assert [(r.name, r.size) for r in native.cregs] == [(r.name, r.size) for r in python.cregs]
    assert native.num_qubits == python.num_qubits
    assert native.num_clbits == python.num_clbits
    assert _ops(native) == _ops(python)


def outcome(fn: Any, arg: Any) -> tuple[list[QuantumCircuit] | None, str | None]:
    try:
        return fn(arg), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def check(qobj: dict[str, Any] | bytes) -> list[QuantumCircuit | None] | None:
    """Asserts both paths agree on ``qobj``; returns what the native reader alone gave."""
    raw = qobj if isinstance(qobj, bytes) else orjson.dumps(qobj)
    got, got_error = outcome(qobj_bytes_to_circuits, raw)
    want, want_error = outcome(qobj_to_circuits, orjson.loads(raw))
    assert got_error == want_error
    if want is not None:
        assert got is not None
        assert len(got) == len(want)
        for native, python in zip(got, want, strict=True):
            assert_same(native, python)
    return _native.qobj_to_circuits(raw)


def test_assembled_corpus_mixes_native_and_python_experiments() -> None:
    circuits = corpus()
    raw = native_json(circuits)
    native = check(raw)
    assert native is not None
    fell_back = {c.name for c, n in zip(circuits, native, strict=True) if n is None}
    # Conditionals and unitaries are the Python path's; everything else is native.
    assert fell_back == {"cond", "unitary"}


def test_every_standard_gate_is_native() -> None:
    rng = random.Random(5)
    instructions = []
    for name, gate in STANDARD.items():
        qubits = rng.sample(range(5), gate.num_qubits)
        params = [rng.uniform(-7, 7) for _ in gate.params]
        instructions.append({"name": name, "qubits": qubits, "params": params})
    qobj = {"experiments": [{"header": {"n_qubits": 5}, "instructions": instructions}]}
    native = check(qobj)
    assert native is not None
    assert native[0] is not None
    assert len(native[0].data) == len(STANDARD)


def _random_experiment(rng: random.Random, index: int) -> dict[str, Any]:
    header: dict[str, Any] = {}
    declared = rng.random() < 0.7
    n_qubits = rng.randint(1, 6)
    n_clbits = rng.randint(1, 6)
    if declared:
        qsizes = [n_qubits] if rng.random() < 0.6 else [1, n_qubits]
        csizes = [n_clbits] if rng.random() < 0.6 else [2, n_clbits]
        header["qreg_sizes"] = [[f"q{i}", s] for i, s in enumerate(qsizes)]
        header["creg_sizes"] = [[f"meas{i}", s] for i, s in enumerate(csizes)]
        n_qubits, n_clbits = sum(qsizes), sum(csizes)
        if rng.random() < 0.2:  # more bits declared than the registers hold
            header["n_qubits"] = n_qubits + 2
            header["memory_slots"] = n_clbits + 1
            n_qubits, n_clbits = n_qubits + 2, n_clbits + 1
        else:
            header["n_qubits"] = n_qubits
            header["memory_slots"] = n_clbits
    if rng.random() < 0.8:
        header["name"] = rng.choice([f"exp-{index}", "", "ünïcode ✓", 'a"quote'])
    if rng.random() < 0.5:
        header["global_phase"] = rng.choice([rng.uniform(-10, 10), 0, 3, 2 * math.pi])
    if rng.random() < 0.5:
        header["metadata"] = rng.choice(
            [{"k": index, "nested": {"x": [1, 2.5, None]}}, {}, None, [1, 2], "text"]
        )
    instructions: list[dict[str, Any]] = []
    names = list(STANDARD)
    for _ in range(rng.randint(0, 40)):
        roll = rng.random()
        if roll < 0.6:
            name = rng.choice(names)
            gate = STANDARD[name]
            if gate.num_qubits > n_qubits:
                continue
            params: list[Any] = [
                rng.choice([rng.uniform(-4, 4), rng.randint(-3, 3)]) for _ in gate.params
            ]
            inst = {"name": name, "qubits": rng.sample(range(n_qubits), gate.num_qubits)}
            if params or rng.random() < 0.3:
                inst["params"] = params
        elif roll < 0.75:
            k = rng.randint(1, min(n_qubits, n_clbits))
            inst = {
                "name": "measure",
                "qubits": rng.sample(range(n_qubits), k),
                "memory": rng.sample(range(n_clbits), k),
            }
        elif roll < 0.82:
            k = rng.randint(1, min(2, n_qubits))
            inst = {"name": "reset", "qubits": rng.sample(range(n_qubits), k)}
        elif roll < 0.9:
            inst = {
                "name": "barrier",
                "qubits": rng.sample(range(n_qubits), rng.randint(1, n_qubits)),
            }
        else:
            inst = rng.choice(
                [
                    {"name": "delay", "qubits": [0], "params": [rng.randint(0, 500)]},
                    {"name": "delay", "qubits": [0], "params": [64.0]},
                    {"name": "delay", "qubits": [0], "params": [2.5e-7], "unit": "s"},
                    {"name": "delay", "qubits": [0], "params": [12.5], "unit": "ns"},
                ]
            )
        instructions.append(inst)
    experiment: dict[str, Any] = {"instructions": instructions}
    if header or rng.random() < 0.5:
        experiment["header"] = header
    if rng.random() < 0.2:
        experiment["config"] = {"memory_slots": n_clbits + 2}
    return experiment


def _python_only(rng: random.Random, experiment: dict[str, Any]) -> dict[str, Any]:
    """The experiment with one instruction only the Python path rebuilds (or rejects)."""
    qubits = experiment["header"].get("n_qubits", 1) if "header" in experiment else 1
    extra = rng.choice(
        [
            [
                {"name": "bfunc", "register": 0, "mask": "0x1", "relation": "==", "val": "0x1"},
                {"name": "x", "qubits": [0], "conditional": 0},
            ],
            [{"name": "unitary", "qubits": [0], "params": [[[0, 0], [1, 0]], [[1, 0], [0, 0]]]}],
            [{"name": "not_a_gate", "qubits": [0]}],
            [{"name": "rz", "qubits": [0], "params": ["theta"]}],
            [{"name": "h", "qubits": [0, 0]}],
            [{"name": "h", "qubits": [max(qubits, 1) + 5]}],
        ]
    )
    instructions = list(experiment["instructions"])
    instructions[rng.randint(0, len(instructions)) : 0] = extra
    return {**experiment, "instructions": instructions}


def test_random_qobjs_agree() -> None:
    rng = random.Random(2026)
    native_count = fallback_count = 0
    for trial in range(120):
        experiments = [_random_experiment(rng, i) for i in range(rng.randint(1, 5))]
        if trial % 3 == 0:
            k = rng.randrange(len(experiments))
            experiments[k] = _python_only(rng, experiments[k])
        config: dict[str, Any] = {"shots": 100}
        if rng.random() < 0.3:
            config["memory_slots"] = rng.randint(0, 8)
        native = check(
            {"qobj_id": f"q{trial}", "type": "QASM", "config": config, "experiments": experiments}
        )
        assert native is not None
        native_count += sum(c is not None for c in native)
        fallback_count += sum(c is None for c in native)
    # Both paths were exercised, most experiments natively.
    assert native_count > 3 * fallback_count > 0


@pytest.mark.parametrize(
    "qobj",
    [
        {"experiments": [{"instructions": [{"name": "h", "qubits": [0]}]}]},
        {"experiments": [{"header": None, "instructions": None}]},
        {"experiments": [{"header": {"name": None, "global_phase": -1}, "instructions": []}]},
        {"experiments": [{"instructions": [{"name": "rz", "qubits": [2], "params": [1]}]}]},
        {"experiments": [{"instructions": [{"name": "h", "qubits": [0], "conditional": None}]}]},
        {"experiments": [{"instructions": [{"name": "delay", "qubits": [0], "params": [1.5]}]}]},
        {
            "experiments": [
                {"instructions": [{"name": "delay", "qubits": [0], "params": [7], "unit": "us"}]}
            ]
        },
        {"experiments": [{"instructions": [{"name": "barrier", "qubits": []}]}]},
        {
            "experiments": [{"instructions": [{"name": "measure", "qubits": [0], "memory": [3]}]}],
            "config": {"memory_slots": 2},
        },
        {
            "experiments": [
                {
                    "header": {"creg_sizes": [["c", 1]]},
                    "instructions": [{"name": "measure", "qubits": [0], "memory": [3]}],
                }
            ]
        },
        {"experiments": [{"header": {"qreg_sizes": [["q", 1], ["q", 2]]}, "instructions": []}]},
        {
            "experiments": [
                {"header": {"qreg_sizes": [["a", 1]], "n_qubits": 3}, "instructions": []}
            ]
        },
        {"experiments": [{"header": {"n_qubits": "2"}, "instructions": []}]},
        {"experiments": [{"instructions": [["h", [0]]]}]},
        {"experiments": [{"instructions": [{"qubits": [0]}]}]},
        {"experiments": [{"instructions": [{"name": "h", "qubits": [-1]}]}]},
        {"type": "PULSE", "experiments": [{}]},
        {"type": None, "experiments": [{}]},
        {"experiments": []},
        {"config": [], "experiments": [{}]},
        [1, 2],
    ],
)
def test_hand_written_edges_agree(qobj: Any) -> None:
    check(qobj)


def test_malformed_json_is_named() -> None:
    for raw in (b"{not json", b"", b'{"experiments": [}'):
        with pytest.raises(QobjExecutionError, match="Qobj is not valid JSON"):
            qobj_bytes_to_circuits(raw)
    with pytest.raises(QobjExecutionError, match="Qobj is not a JSON object"):
        qobj_to_circuits(b"[1]")


def test_without_the_c_api_everything_goes_through_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = native_json(corpus())
    want = qobj_to_circuits(orjson.loads(raw))
    monkeypatch.setattr(_native, "qobj_to_circuits", lambda _raw: None)
    got = qobj_bytes_to_circuits(raw)
    for native, python in zip(got, want, strict=True):
        assert_same(native, python)


def test_native_circuits_run_like_the_python_ones() -> None:
    rng = random.Random(9)
    circuits = []
    for i in range(6):
        qc = QuantumCircuit(3, 3, name=f"c{i}")
        for _ in range(12):
            a, b = rng.sample(range(3), 2)
            kind = rng.randrange(3)
            if kind == 0:
                qc.h(a)
            elif kind == 1:
                qc.cx(a, b)
            else:
                qc.ry(rng.uniform(0, 3), a)
        qc.measure(range(3), range(3))
        circuits.append(qc)
    raw = native_json(circuits)
    native = _native.qobj_to_circuits(raw)
    assert native is not None
    assert all(c is not None for c in native)
    python = qobj_to_circuits(orjson.loads(raw))
    sim = AerSimulator()
    got = sim.run(native, shots=100, seed_simulator=3).result().get_counts()
    want = sim.run(python, shots=100, seed_simulator=3).result().get_counts()
    assert got == want


def test_worker_hands_qobj_inputs_over_as_raw_bytes(tmp_path: Path) -> None:

    program = tmp_path / "takes_qobj.py"
    program.write_text(
        "from qdispatch.disassembler import qobj_to_circuits\n"
        'QOBJ_INPUTS = ("circuits", "absent", "empty")\n'
        "def main(backend, publisher, circuits, tag, empty=None):\n"
        "    names = [c.name for c in qobj_to_circuits(circuits)]\n"
        "    return {'kind': type(circuits).__name__, 'names': names, 'tag': tag,\n"
        "            'empty': empty}\n"
    )
    ref = ProgramRef("takes_qobj", str(program), str(program))
    qobj = orjson.loads(native_json(corpus()[-2:]))
    inputs = encoding.dumps({"circuits": qobj, "tag": "t", "empty": None})
    result, _ = run_program(ref, "aer_simulator", inputs, 1, lambda kind, data: None)
    assert encoding.loads(result) == {
        "kind": "bytes",
        "names": ["empty", "bell"],
        "tag": "t",
        "empty": None,
    }
