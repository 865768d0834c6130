"""The backend catalog: definitions, IBM-shaped configuration/properties, validation specs."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone
from typing import Any

import orjson
import pytest

from qdispatch import _native
from qdispatch.server import backends
from qdispatch.server.backends import BackendDef

DATE = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
FAKES = ["fake_generic_5q", "fake_generic_27q"]
ALL = ["aer_simulator", *FAKES]


def _defn(name: str) -> BackendDef:
    return backends.catalog()[name]


def _qobj(instructions: list[dict[str, Any]], n_qubits: int = 2, shots: int = 100) -> bytes:
    return orjson.dumps(
        {
            "qobj_id": "q1",
            "type": "QASM",
            "schema_version": "1.3.0",
            "header": {},
            "config": {"shots": shots, "memory_slots": n_qubits, "n_qubits": n_qubits},
            "experiments": [
                {
                    "header": {"name": "circ", "n_qubits": n_qubits, "memory_slots": n_qubits},
                    "config": {},
                    "instructions": instructions,
                }
            ],
        }
    )


# h = rz(pi/2) sx rz(pi/2) up to a global phase: a Bell pair in the fake devices' basis.
BELL_BASIS = [
    {"name": "rz", "qubits": [0], "params": [math.pi / 2]},
    {"name": "sx", "qubits": [0]},
    {"name": "rz", "qubits": [0], "params": [math.pi / 2]},
    {"name": "cx", "qubits": [0, 1]},
    {"name": "measure", "qubits": [0, 1], "memory": [0, 1]},
]


def test_catalog_holds_the_built_in_backends() -> None:
    cat = backends.catalog()
    assert list(cat) == ALL
    for name, defn in cat.items():
        assert defn.name == name
        assert defn.max_shots == 100_000
        assert defn.max_experiments == 300
        assert defn.description
    # A copy each time: callers cannot change the catalog.
    cat.clear()
    assert list(backends.catalog()) == ALL


def test_backend_defs_are_frozen_and_hashable() -> None:
    defn = _defn("aer_simulator")
    with pytest.raises(dataclasses.FrozenInstanceError):
        defn.n_qubits = 3  # type: ignore[misc]
    assert {defn: 1}[_defn("aer_simulator")] == 1


def test_ideal_simulator_definition() -> None:
    defn = _defn("aer_simulator")
    assert defn.n_qubits == 30
    assert defn.simulator is True
    assert defn.coupling_map is None
    assert defn.seed is None
    assert {"h", "cx", "rz", "u", "ccx", "rzz", "ecr", "unitary"} <= set(defn.basis_gates)
    assert not {"measure", "reset", "delay", "barrier"} & set(defn.basis_gates)
    assert len(set(defn.basis_gates)) == len(defn.basis_gates)


def test_fake_5q_is_t_shaped() -> None:
    defn = _defn("fake_generic_5q")
    assert defn.n_qubits == 5
    assert defn.simulator is False
    assert defn.seed is not None
    assert defn.basis_gates == ("cx", "id", "rz", "sx", "x")
    assert defn.coupling_map is not None
    assert set(defn.coupling_map) == {
        (0, 1), (1, 0), (1, 2), (2, 1), (1, 3), (3, 1), (3, 4), (4, 3),
    }  # fmt: skip


def test_fake_27q_is_heavy_hex() -> None:
    defn = _defn("fake_generic_27q")
    assert defn.n_qubits == 27
    assert defn.basis_gates == ("cx", "id", "rz", "sx", "x")
    assert defn.coupling_map is not None
    edges = set(defn.coupling_map)
    assert len(edges) == 56
    assert all((b, a) in edges for a, b in edges)
    degree = [sum(1 for a, _ in edges if a == q) for q in range(27)]
    # Heavy-hex: every qubit has 1 to 3 neighbours, and the graph is connected.
    assert min(degree) == 1
    assert max(degree) == 3
    seen, todo = {0}, [0]
    while todo:
        q = todo.pop()
        for a, b in edges:
            if a == q and b not in seen:
                seen.add(b)
                todo.append(b)
    assert seen == set(range(27))


def test_generic_backend_is_seeded_and_cached() -> None:
    defn = _defn("fake_generic_5q")
    backend = backends.generic_backend(defn)
    assert backend is backends.generic_backend(defn)
    assert backend.num_qubits == 5
    assert set(backend.operation_names) >= set(defn.basis_gates)
    with pytest.raises(ValueError, match="ideal simulator"):
        backends.generic_backend(_defn("aer_simulator"))


@pytest.mark.parametrize("name", ALL)
def test_configuration_is_ibm_shaped_json(name: str) -> None:
    defn = _defn(name)
    config = backends.configuration(defn)
    assert orjson.loads(orjson.dumps(config)) == config
    assert config["backend_name"] == name
    assert isinstance(config["backend_version"], str)
    assert config["n_qubits"] == defn.n_qubits
    assert config["basis_gates"] == list(defn.basis_gates)
    assert [g["name"] for g in config["gates"]] == list(defn.basis_gates)
    assert all(isinstance(g["parameters"], list) for g in config["gates"])
    assert config["max_shots"] == 100_000
    assert config["max_experiments"] == 300
    assert config["simulator"] is defn.simulator
    assert config["local"] is False
    assert config["conditional"] is True
    assert config["open_pulse"] is False
    assert config["memory"] is True
    assert config["description"] == defn.description
    assert isinstance(config["online_date"], str)
    assert set(config["supported_instructions"]) >= {
        *defn.basis_gates, "measure", "reset", "barrier", "delay",
    }  # fmt: skip
    if defn.coupling_map is None:
        assert config["coupling_map"] is None
        assert config["dt"] is None
    else:
        assert config["coupling_map"] == [list(e) for e in defn.coupling_map]
        assert config["dt"] > 0
        cx = next(g for g in config["gates"] if g["name"] == "cx")
        assert sorted(map(tuple, cx["coupling_map"])) == sorted(defn.coupling_map)


def test_configuration_gate_parameters() -> None:
    gates = {g["name"]: g for g in backends.configuration(_defn("aer_simulator"))["gates"]}
    assert gates["h"]["parameters"] == []
    assert len(gates["u"]["parameters"]) == 3
    assert gates["unitary"]["parameters"] == ["matrix"]


def test_properties_none_for_ideal_simulator() -> None:
    assert backends.properties(_defn("aer_simulator"), DATE) is None


@pytest.mark.parametrize("name", FAKES)
def test_properties_are_dated_and_complete(name: str) -> None:
    defn = _defn(name)
    props = backends.properties(defn, DATE)
    assert props is not None
    assert orjson.loads(orjson.dumps(props)) == props
    iso = DATE.isoformat()
    assert props["backend_name"] == name
    assert props["last_update_date"] == iso
    assert props["general"] == []
    assert len(props["qubits"]) == defn.n_qubits
    for qubit in props["qubits"]:
        by_name = {entry["name"]: entry for entry in qubit}
        assert {"T1", "T2", "frequency", "readout_error", "readout_length"} <= set(by_name)
        assert by_name["T1"]["unit"] == "us"
        assert by_name["frequency"]["unit"] == "GHz"
        assert by_name["readout_length"]["unit"] == "ns"
        assert 1 < by_name["T1"]["value"] < 10_000  # microseconds, not seconds
        assert 1 < by_name["frequency"]["value"] < 20  # GHz, not Hz
        assert 0 <= by_name["readout_error"]["value"] < 0.5
        for entry in qubit:
            assert entry["date"] == iso
            assert type(entry["value"]) is float
    gates = props["gates"]
    assert {g["gate"] for g in gates} >= set(defn.basis_gates)
    assert defn.coupling_map is not None
    cx_pairs = {tuple(g["qubits"]) for g in gates if g["gate"] == "cx"}
    assert cx_pairs == set(defn.coupling_map)
    for gate in gates:
        assert gate["name"] == gate["gate"] + "_".join(map(str, gate["qubits"]))
        for param in gate["parameters"]:
            assert param["date"] == iso
            assert param["name"] in {"gate_error", "gate_length"}
            assert param["unit"] == ("ns" if param["name"] == "gate_length" else "")
    cx01 = next(g for g in gates if g["name"] == "cx0_1")
    assert {p["name"] for p in cx01["parameters"]} == {"gate_error", "gate_length"}


def test_properties_are_reproducible() -> None:
    # The seed is fixed, so calibration data is the same whenever it is asked for.
    defn = _defn("fake_generic_5q")
    later = datetime(2026, 1, 1, tzinfo=timezone.utc)
    a = backends.properties(defn, DATE)
    b = backends.properties(defn, later)
    assert a is not None
    assert b is not None
    assert [[e["value"] for e in q] for q in a["qubits"]] == [
        [e["value"] for e in q] for q in b["qubits"]
    ]
    assert b["last_update_date"] == later.isoformat()


def test_gate_spec() -> None:
    ideal = backends.gate_spec(_defn("aer_simulator"))
    assert ideal["h"] == (1, 0)
    assert ideal["cx"] == (2, 0)
    assert ideal["rz"] == (1, 1)
    assert ideal["u"] == (1, 3)
    assert ideal["ccx"] == (3, 0)
    assert ideal["unitary"] == (None, 1)
    assert not {"measure", "reset", "barrier", "delay", "bfunc"} & set(ideal)
    fake = backends.gate_spec(_defn("fake_generic_5q"))
    assert fake == {"cx": (2, 0), "id": (1, 0), "rz": (1, 1), "sx": (1, 0), "x": (1, 0)}


def test_native_spec_is_cached() -> None:
    defn = _defn("fake_generic_5q")
    spec = backends.native_spec(defn)
    assert spec is backends.native_spec(defn)
    assert spec.name == "fake_generic_5q"


def test_native_spec_accepts_bell_on_fake_device() -> None:
    summary = _native.validate_qobj(
        _qobj(BELL_BASIS), backends.native_spec(_defn("fake_generic_5q"))
    )
    assert summary.n_experiments == 1
    assert summary.shots == 100
    assert summary.max_qubits == 2


def test_native_spec_accepts_bell_on_ideal_simulator() -> None:
    bell = [
        {"name": "h", "qubits": [0]},
        {"name": "cx", "qubits": [0, 1]},
        {"name": "measure", "qubits": [0, 1], "memory": [0, 1]},
    ]
    spec = backends.native_spec(_defn("aer_simulator"))
    assert _native.validate_qobj(_qobj(bell), spec).n_instructions == 3
    # All-to-all: any pair may be coupled.
    far = [{"name": "cx", "qubits": [29, 0]}]
    assert _native.validate_qobj(_qobj(far, n_qubits=30), spec).max_qubits == 30


def test_native_spec_rejects_uncoupled_cx() -> None:
    spec = backends.native_spec(_defn("fake_generic_5q"))
    bad = [{"name": "cx", "qubits": [0, 2]}, {"name": "measure", "qubits": [0], "memory": [0]}]
    with pytest.raises(_native.InvalidQobjError, match="not coupled"):
        _native.validate_qobj(_qobj(bad, n_qubits=3), spec)


def test_native_spec_rejects_non_basis_gate_and_too_many_qubits_and_shots() -> None:
    spec = backends.native_spec(_defn("fake_generic_5q"))
    with pytest.raises(_native.InvalidQobjError, match="'h'"):
        _native.validate_qobj(_qobj([{"name": "h", "qubits": [0]}]), spec)
    with pytest.raises(_native.InvalidQobjError, match="5 qubits"):
        _native.validate_qobj(_qobj([{"name": "x", "qubits": [5]}]), spec)
    with pytest.raises(_native.InvalidQobjError, match="max_shots"):
        _native.validate_qobj(_qobj(BELL_BASIS, shots=100_001), spec)


def test_native_spec_checks_unitary_arity_on_ideal_simulator() -> None:
    spec = backends.native_spec(_defn("aer_simulator"))
    matrix = [[[0, 0], [1, 0]], [[1, 0], [0, 0]]]
    ok = [{"name": "unitary", "qubits": [0], "params": [matrix]}]
    assert _native.validate_qobj(_qobj(ok), spec).n_instructions == 1
    with pytest.raises(_native.InvalidQobjError, match="parameters"):
        _native.validate_qobj(_qobj([{"name": "rz", "qubits": [0], "params": []}]), spec)


def test_simulators() -> None:
    ideal = backends.simulator(_defn("aer_simulator"))
    assert ideal is backends.simulator(_defn("aer_simulator"))
    assert ideal.options.noise_model is None
    noisy = backends.simulator(_defn("fake_generic_5q"))
    assert noisy.options.noise_model is not None
    assert not noisy.options.noise_model.is_ideal()
