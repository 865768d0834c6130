"""The worker side: QasmQobj → circuits → Aer → qiskit Result dict."""

from __future__ import annotations

import gc
import math
import multiprocessing
from typing import Any

import numpy as np
import orjson
import pytest
from qiskit.circuit import IfElseOp
from qiskit.quantum_info import Operator
from qiskit.result import Result

from qdispatch.disassembler import QobjExecutionError, qobj_to_circuits
from qdispatch.server import backends
from qdispatch.server.runner import run_qobj

SHOTS = 200


def experiment(
    name: str,
    n_qubits: int,
    instructions: list[dict[str, Any]],
    cregs: list[list[Any]] | None = None,
    **header: Any,
) -> dict[str, Any]:
    """One QasmQobj experiment with qiskit-assembler-style header."""
    cregs = cregs if cregs is not None else [["c", n_qubits]]
    memory_slots = sum(size for _, size in cregs)
    clbit_labels = [[reg, i] for reg, size in cregs for i in range(size)]
    return {
        "header": {
            "name": name,
            "n_qubits": n_qubits,
            "memory_slots": memory_slots,
            "qubit_labels": [["q", i] for i in range(n_qubits)],
            "qreg_sizes": [["q", n_qubits]],
            "clbit_labels": clbit_labels,
            "creg_sizes": cregs,
            **header,
        },
        "config": {},
        "instructions": instructions,
    }


def qobj(*experiments: dict[str, Any], **config: Any) -> dict[str, Any]:
    """A QasmQobj dict around the experiments."""
    return {
        "qobj_id": "qobj-1",
        "type": "QASM",
        "schema_version": "1.3.0",
        "header": {"backend_name": "test", "tag": "t"},
        "config": {"shots": SHOTS, **config},
        "experiments": list(experiments),
    }


def run(backend: str, q: dict[str, Any], job_id: str = "job-1") -> dict[str, Any]:
    """Runs a Qobj and returns the Result dict (after checking it is bytes of JSON)."""
    out = run_qobj(backend, orjson.dumps(q), job_id)
    assert isinstance(out, bytes)
    result = orjson.loads(out)
    assert isinstance(result, dict)
    return result


def measure(qubits: list[int], memory: list[int] | None = None) -> dict[str, Any]:
    return {"name": "measure", "qubits": qubits, "memory": memory or qubits}


BELL = experiment(
    "bell",
    2,
    [{"name": "h", "qubits": [0]}, {"name": "cx", "qubits": [0, 1]}, measure([0, 1])],
)
GHZ = experiment(
    "ghz",
    3,
    [
        {"name": "h", "qubits": [0]},
        {"name": "cx", "qubits": [0, 1]},
        {"name": "cx", "qubits": [1, 2]},
        measure([0, 1, 2]),
    ],
)


def test_bell_and_ghz_on_ideal_simulator() -> None:
    data = run("aer_simulator", qobj(BELL, GHZ))
    result = Result.from_dict(data)
    assert result.success
    bell, ghz = result.get_counts(0), result.get_counts(1)
    assert set(bell) <= {"00", "11"}
    assert sum(bell.values()) == SHOTS
    assert set(ghz) <= {"000", "111"}
    assert sum(ghz.values()) == SHOTS
    assert result.get_counts("bell") == bell


def test_result_dict_shape() -> None:
    data = run("aer_simulator", qobj(BELL, seed_simulator=11), job_id="job-xyz")
    assert data["backend_name"] == "aer_simulator"
    assert isinstance(data["backend_version"], str)
    assert data["qobj_id"] == "qobj-1"
    assert data["job_id"] == "job-xyz"
    assert data["success"] is True
    assert data["status"] == "COMPLETED"
    assert isinstance(data["date"], str)
    assert data["header"] == {"backend_name": "test", "tag": "t"}
    assert data["time_taken"] >= 0
    (res,) = data["results"]
    assert res["shots"] == SHOTS
    assert res["success"] is True
    assert res["status"] == "DONE"
    assert res["seed_simulator"] == 11
    assert isinstance(res["metadata"], dict)
    assert res["time_taken"] >= 0
    # Counts keyed by hex, as qiskit's Result dict has them; no memory unless asked.
    assert set(res["data"]["counts"]) <= {"0x0", "0x3"}
    assert "memory" not in res["data"]
    # The Qobj experiment header comes back verbatim.
    assert res["header"] == BELL["header"]


def test_same_seed_same_counts() -> None:
    q = qobj(BELL, GHZ, seed_simulator=1234)
    first = run("aer_simulator", q)
    second = run("aer_simulator", q)
    assert [r["data"]["counts"] for r in first["results"]] == [
        r["data"]["counts"] for r in second["results"]
    ]
    other = run("aer_simulator", qobj(BELL, GHZ, seed_simulator=4321))
    assert [r["seed_simulator"] for r in other["results"]] != [
        r["seed_simulator"] for r in first["results"]
    ]


def test_default_shots() -> None:
    q = qobj(BELL)
    del q["config"]["shots"]
    data = run("aer_simulator", q)
    assert data["results"][0]["shots"] == 1024
    assert sum(Result.from_dict(data).get_counts(0).values()) == 1024


def test_memory_gives_one_outcome_per_shot() -> None:
    data = run("aer_simulator", qobj(BELL, memory=True, shots=50))
    memory = data["results"][0]["data"]["memory"]
    assert len(memory) == 50
    assert set(memory) <= {"0x0", "0x3"}
    result = Result.from_dict(data)
    per_shot = result.get_memory(0)
    assert len(per_shot) == 50
    assert set(per_shot) <= {"00", "11"}
    counts = result.get_counts(0)
    assert all(per_shot.count(key) == n for key, n in counts.items())


def test_two_registers_give_spaced_keys() -> None:
    exp = experiment(
        "two_cregs",
        3,
        [
            {"name": "x", "qubits": [0]},
            {"name": "x", "qubits": [2]},
            measure([0, 1, 2]),
        ],
        cregs=[["a", 2], ["b", 1]],
    )
    result = Result.from_dict(run("aer_simulator", qobj(exp)))
    # Register `a` holds q0, q1 (= "01"); `b` holds q2 (= "1"); later registers come first.
    assert result.get_counts(0) == {"1 01": SHOTS}


def test_conditional_on_a_bit() -> None:
    exp = experiment(
        "cond",
        2,
        [
            {"name": "x", "qubits": [0]},
            measure([0], [0]),
            {"name": "bfunc", "mask": "0x1", "relation": "==", "val": "0x1", "register": 2},
            {"name": "x", "qubits": [1], "conditional": 2},
            measure([1], [1]),
        ],
    )
    result = Result.from_dict(run("aer_simulator", qobj(exp)))
    assert result.get_counts(0) == {"11": SHOTS}


def test_conditional_not_taken() -> None:
    exp = experiment(
        "cond_false",
        2,
        [
            measure([0], [0]),
            {"name": "bfunc", "mask": "0x1", "relation": "==", "val": "0x1", "register": 2},
            {"name": "x", "qubits": [1], "conditional": 2},
            measure([1], [1]),
        ],
    )
    result = Result.from_dict(run("aer_simulator", qobj(exp)))
    assert result.get_counts(0) == {"00": SHOTS}


def test_conditional_on_a_register_and_not_equal() -> None:
    # c0 (2 bits) = 0b10 after measuring X on q1; x q2 if c0 == 2; x q3 if c0 != 2.
    exp = experiment(
        "cond_reg",
        4,
        [
            {"name": "x", "qubits": [1]},
            measure([0, 1], [0, 1]),
            {"name": "bfunc", "mask": "0x3", "relation": "==", "val": "0x2", "register": [4]},
            {"name": "x", "qubits": [2], "conditional": 4},
            {"name": "bfunc", "mask": "0x3", "relation": "!=", "val": "0x2", "register": 5},
            {"name": "x", "qubits": [3], "conditional": 5},
            measure([2, 3], [2, 3]),
        ],
        cregs=[["c0", 2], ["c1", 2]],
    )
    circuit = qobj_to_circuits(qobj(exp))[0]
    ifs = [inst.operation for inst in circuit.data if isinstance(inst.operation, IfElseOp)]
    assert len(ifs) == 2
    assert ifs[0].condition[0] == circuit.cregs[0]
    assert ifs[0].condition[1] == 2
    result = Result.from_dict(run("aer_simulator", qobj(exp)))
    assert result.get_counts(0) == {"01 10": SHOTS}


def test_conditional_on_second_register_shifts_value() -> None:
    exp = experiment(
        "cond_shift",
        3,
        [
            {"name": "x", "qubits": [1]},
            measure([0, 1], [0, 1]),
            # Register `b` is memory slot 1 only: mask 0x2, val 0x2 → b == 1.
            {"name": "bfunc", "mask": "0x2", "relation": "==", "val": "0x2", "register": 3},
            {"name": "x", "qubits": [2], "conditional": 3},
            measure([2], [2]),
        ],
        cregs=[["a", 1], ["b", 1], ["r", 1]],
    )
    circuit = qobj_to_circuits(qobj(exp))[0]
    (cond,) = [inst.operation for inst in circuit.data if isinstance(inst.operation, IfElseOp)]
    assert cond.condition[0] == circuit.cregs[1]
    assert cond.condition[1] == 1
    result = Result.from_dict(run("aer_simulator", qobj(exp)))
    assert result.get_counts(0) == {"1 1 0": SHOTS}


def test_conditional_on_some_bits_of_a_register_is_rejected() -> None:
    exp = experiment(
        "bad_mask",
        3,
        [
            measure([0, 1, 2]),
            {"name": "bfunc", "mask": "0x3", "relation": "==", "val": "0x1", "register": 3},
            {"name": "x", "qubits": [0], "conditional": 3},
        ],
    )
    with pytest.raises(QobjExecutionError, match=r"experiment 0 \('bad_mask'\).*mask '0x3'"):
        qobj_to_circuits(qobj(exp))
    with pytest.raises(QobjExecutionError, match="mask"):
        run_qobj("aer_simulator", orjson.dumps(qobj(exp)), "job-1")


def test_unsupported_relation_is_rejected() -> None:
    exp = experiment(
        "bad_rel",
        1,
        [
            measure([0]),
            {"name": "bfunc", "mask": "0x1", "relation": "<", "val": "0x1", "register": 1},
        ],
    )
    with pytest.raises(QobjExecutionError, match="relation"):
        qobj_to_circuits(qobj(exp))


def test_unitary_instruction() -> None:
    x_matrix = [[[0.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]]
    s = 1 / math.sqrt(2)
    # A complex 2-qubit unitary: (Y ⊗ H), entries as [re, im] pairs.
    y_h = np.kron(np.array([[0, -1j], [1j, 0]]), np.array([[s, s], [s, -s]]))
    y_h_pairs = [[[float(z.real), float(z.imag)] for z in row] for row in y_h]
    exp = experiment(
        "unitary",
        3,
        [
            {"name": "unitary", "qubits": [0], "params": [x_matrix]},
            {"name": "unitary", "qubits": [1, 2], "params": [y_h_pairs]},
            measure([0, 2]),
        ],
    )
    circuit = qobj_to_circuits(qobj(exp))[0]
    ops = [inst.operation for inst in circuit.data if inst.operation.name == "unitary"]
    assert Operator(ops[0]).equiv(Operator(np.array([[0, 1], [1, 0]])))
    assert Operator(ops[1]).equiv(Operator(y_h))
    result = Result.from_dict(run("aer_simulator", qobj(exp)))
    # q0 flipped by X; q2 flipped by Y (qubit 2 is the high qubit of the pair).
    assert result.get_counts(0) == {"101": SHOTS}


def test_unitary_that_is_not_unitary_is_rejected() -> None:
    exp = experiment(
        "not_unitary", 1, [{"name": "unitary", "qubits": [0], "params": [[[1, 1], [1, 1]]]}]
    )
    with pytest.raises(QobjExecutionError, match=r"experiment 0 \('not_unitary'\)"):
        qobj_to_circuits(qobj(exp))


def test_metadata_global_phase_and_name_round_trip() -> None:
    metadata = {"tag": "x", "nested": {"a": [1, 2.5, None]}, "n": 3}
    exp = experiment(
        "named", 2, [{"name": "h", "qubits": [0]}], global_phase=0.75, metadata=metadata
    )
    circuit = qobj_to_circuits(qobj(exp))[0]
    assert circuit.name == "named"
    assert circuit.global_phase == pytest.approx(0.75)
    assert circuit.metadata == metadata
    assert [r.name for r in circuit.qregs] == ["q"]
    assert [(r.name, r.size) for r in circuit.cregs] == [("c", 2)]
    # And through a run: the header comes back as sent.
    data = run("aer_simulator", qobj(exp))
    assert data["results"][0]["header"]["metadata"] == metadata
    assert data["results"][0]["header"]["global_phase"] == 0.75


def test_defaults_without_register_sizes() -> None:
    exp = {
        "header": {"name": "bare"},
        "instructions": [{"name": "x", "qubits": [2]}, measure([2], [1])],
    }
    circuit = qobj_to_circuits(qobj(exp))[0]
    assert [(r.name, r.size) for r in circuit.qregs] == [("q", 3)]
    assert [(r.name, r.size) for r in circuit.cregs] == [("c", 2)]
    result = Result.from_dict(run("aer_simulator", qobj(exp)))
    assert result.get_counts(0) == {"10": SHOTS}


def test_directives_and_parameterized_gates() -> None:
    exp = experiment(
        "directives",
        2,
        [
            {"name": "x", "qubits": [0]},
            {"name": "barrier", "qubits": [0, 1]},
            {"name": "delay", "qubits": [0], "params": [100.0]},
            {"name": "reset", "qubits": [0]},
            {"name": "rx", "qubits": [1], "params": [math.pi]},
            {"name": "u", "qubits": [0], "params": [0.0, 0.0, 0.3]},
            measure([0, 1]),
        ],
    )
    circuit = qobj_to_circuits(qobj(exp))[0]
    assert [inst.operation.name for inst in circuit.data] == [
        "x", "barrier", "delay", "reset", "rx", "u", "measure", "measure",
    ]  # fmt: skip
    assert circuit.data[2].operation.duration == 100
    result = Result.from_dict(run("aer_simulator", qobj(exp)))
    assert result.get_counts(0) == {"10": SHOTS}


def test_every_advertised_gate_runs_on_the_ideal_simulator() -> None:
    # Aer lacks some standard gates (ch, iswap, rccx, global_phase, ...); the runner lowers them.
    spec = backends.gate_spec(backends.catalog()["aer_simulator"])
    experiments = []
    for name, (n_qubits, n_params) in sorted(spec.items()):
        if name == "unitary":
            continue
        assert n_qubits is not None
        assert n_params is not None
        qubits = list(range(n_qubits))
        experiments.append(
            experiment(
                name,
                max(n_qubits, 1),
                [
                    {"name": "h", "qubits": [0]},
                    {
                        "name": name,
                        "qubits": qubits,
                        "params": [0.1 * (k + 1) for k in range(n_params)],
                    },
                    measure([0]),
                ],
                cregs=[["c", 1]],
            )
        )
    circuits = qobj_to_circuits(qobj(*experiments))
    for exp, circuit in zip(experiments, circuits, strict=True):
        assert circuit.data[1].operation.name == exp["header"]["name"]
    data = run("aer_simulator", qobj(*experiments, shots=10))
    assert data["success"] is True
    assert [r["header"]["name"] for r in data["results"]] == [
        e["header"]["name"] for e in experiments
    ]


def test_noisy_fake_device_gives_mostly_the_ideal_outcome() -> None:
    # Bell pair in the device basis (h = rz(pi/2) sx rz(pi/2)) on coupled qubits 1 and 3.
    exp = experiment(
        "bell_5q",
        5,
        [
            {"name": "rz", "qubits": [1], "params": [math.pi / 2]},
            {"name": "sx", "qubits": [1]},
            {"name": "rz", "qubits": [1], "params": [math.pi / 2]},
            {"name": "cx", "qubits": [1, 3]},
            measure([1, 3], [0, 1]),
        ],
        cregs=[["c", 2]],
    )
    flip = experiment(
        "x_5q",
        5,
        [{"name": "x", "qubits": [0]}, {"name": "cx", "qubits": [0, 1]}, measure([0, 1], [0, 1])],
        cregs=[["c", 2]],
    )
    shots = 500
    data = run("fake_generic_5q", qobj(exp, flip, shots=shots, seed_simulator=5))
    assert data["backend_name"] == "fake_generic_5q"
    result = Result.from_dict(data)
    bell = result.get_counts(0)
    assert sum(bell.values()) == shots
    assert bell.get("00", 0) + bell.get("11", 0) > 0.8 * shots
    assert bell.get("00", 0) > 0.3 * shots
    assert bell.get("11", 0) > 0.3 * shots
    assert result.get_counts(1).get("11", 0) > 0.8 * shots


def test_noise_is_present_on_fake_device() -> None:
    # Many noisy gates: some shots must deviate from the ideal all-zero outcome.
    instructions: list[dict[str, Any]] = [{"name": "x", "qubits": [0]} for _ in range(200)]
    exp = experiment("many_x", 1, [*instructions, measure([0])], cregs=[["c", 1]])
    counts = Result.from_dict(run("fake_generic_5q", qobj(exp, shots=1000))).get_counts(0)
    assert counts.get("0", 0) > 500
    assert counts.get("1", 0) > 0


def test_failed_experiment_keeps_partial_results() -> None:
    # 20 qubits as a density matrix needs terabytes: Aer fails that experiment only.
    # (All qubits entangled and measured, so Aer cannot truncate any away.)
    chain = [{"name": "cx", "qubits": [i, i + 1]} for i in range(19)]
    big = experiment(
        "too_big", 20, [{"name": "h", "qubits": [0]}, *chain, measure(list(range(20)))]
    )
    data = run("aer_simulator", qobj(BELL, big, method="density_matrix"))
    assert data["success"] is False
    assert data["status"] == "PARTIAL COMPLETED"
    ok, failed = data["results"]
    assert ok["success"] is True
    assert failed["success"] is False
    assert "memory" in failed["status"].lower()
    assert failed["header"]["name"] == "too_big"
    result = Result.from_dict(data)
    assert set(result.get_counts("bell")) <= {"00", "11"}
    with pytest.raises(Exception, match="memory"):
        result.get_counts("too_big")


def test_aer_error_names_the_experiments() -> None:
    with pytest.raises(QobjExecutionError, match=r"'bell'.*bogus"):
        run_qobj("aer_simulator", orjson.dumps(qobj(BELL, method="bogus")), "job-1")


def test_service_controlled_options_are_ignored() -> None:
    # A Qobj cannot take over the worker's threads or swap the noise model.
    data = run("aer_simulator", qobj(BELL, max_parallel_threads=64, noise_model="x"))
    assert data["success"] is True
    assert data["results"][0]["metadata"]["parallel_state_update"] == 1


def test_per_experiment_config_overrides_shots() -> None:
    ghz = {**GHZ, "config": {"shots": 30}}
    data = run("aer_simulator", qobj(BELL, ghz))
    assert [r["shots"] for r in data["results"]] == [SHOTS, 30]
    assert [r["header"]["name"] for r in data["results"]] == ["bell", "ghz"]


@pytest.mark.parametrize(
    ("q", "match"),
    [
        (
            qobj(experiment("e", 1, [{"name": "nope", "qubits": [0]}])),
            r"experiment 0 \('e'\), instruction 0 \(nope\): unknown instruction",
        ),
        (
            qobj(experiment("e", 1, [{"name": "rz", "qubits": [0], "params": []}])),
            "takes 1 parameters",
        ),
        (qobj(experiment("e", 1, [{"name": "x", "qubits": [3]}])), "out of range"),
        (qobj(experiment("e", 2, [{"name": "x", "qubits": [-1]}])), "out of range"),
        (qobj(experiment("e", 2, [measure([0], [-1])])), "out of range"),
        (qobj(experiment("e", 2, [measure([0], [2])])), "out of range"),
        (qobj(experiment("e", 2, [measure([0, 1], [0])])), "2 qubits into 1 slots"),
        (qobj(experiment("e", 2, [{"name": "cx", "qubits": [1, 1]}])), "repeat"),
        (qobj(experiment("e", 1, [{"name": "x", "qubits": [0], "conditional": 9}])), "bfunc"),
        ({**qobj(BELL), "type": "PULSE"}, "QASM"),
        ({**qobj(BELL), "experiments": []}, "no experiments"),
    ],
)
def test_bad_qobjs_raise(q: dict[str, Any], match: str) -> None:
    with pytest.raises(QobjExecutionError, match=match):
        qobj_to_circuits(q)


def test_bad_json_and_unknown_backend() -> None:
    with pytest.raises(QobjExecutionError, match="JSON"):
        run_qobj("aer_simulator", b"{not json", "job-1")
    with pytest.raises(QobjExecutionError, match="unknown backend 'nope'"):
        run_qobj("nope", orjson.dumps(qobj(BELL)), "job-1")


def _spawned_run(payload: bytes) -> bytes:
    return run_qobj("aer_simulator", payload, "spawned", max_parallel_threads=1)


def test_runs_in_a_freshly_spawned_process() -> None:
    payload = orjson.dumps(qobj(BELL, seed_simulator=3))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        out = pool.apply(_spawned_run, (payload,))
    data = orjson.loads(out)
    assert data["job_id"] == "spawned"
    assert (
        data["results"][0]["data"]["counts"]
        == run("aer_simulator", qobj(BELL, seed_simulator=3))["results"][0]["data"]["counts"]
    )


def test_garbage_collector_is_restored() -> None:
    # run_qobj pauses the cyclic GC while it parses and builds; it must switch it back on.
    assert gc.isenabled()
    run("aer_simulator", qobj(BELL))
    assert gc.isenabled()
    with pytest.raises(QobjExecutionError):
        run_qobj("aer_simulator", b"[]", "job-1")
    assert gc.isenabled()
