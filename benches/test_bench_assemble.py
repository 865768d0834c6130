"""``assemble(circuits).to_json()`` against the wire path it wraps and the peers, on 1,000
circuits of 5 qubits x ~50 instructions, in one run:

- ``circuits_to_qobj_json``: the native writer alone (the floor);
- ``assemble(...).to_json()``: the lazy Qobj, experiments never read (qiskit < 2 code:
  ``assemble`` then ``run``/``to_json``);
- the same with ``qobj.config.shots`` changed first (the head is written again, the
  experiments' bytes joined to it);
- the eager model: ``QasmQobj.from_dict(orjson.loads(wire)).to_json()``, what ``assemble``
  cost before it was lazy;
- qiskit-ibm-runtime's ``RuntimeEncoder`` (QPY + zlib + base64 in JSON).

``make bench``; each benchmark's extra_info has the time per circuit, and pytest-benchmark's
table sets the group side by side.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit.random import random_circuit

import qdispatch
from qdispatch import _native
from qdispatch.assembler import circuits_to_qobj_json
from qdispatch.qobj import QasmQobj

N = 1_000
GROUP = "assemble + to_json, 1k circuits"


@pytest.fixture(scope="module")
def circuits() -> list[QuantumCircuit]:
    """1k random circuits, 5 qubits, ~50 instructions each (measurements included)."""
    made = [random_circuit(5, 12, max_operands=2, measure=True, seed=i) for i in range(N)]
    mean = sum(len(c.data) for c in made) / N
    assert 40 <= mean <= 60, mean
    return made


def per_circuit(benchmark: Any) -> None:
    benchmark.extra_info["us_per_circuit"] = benchmark.stats.stats.median / N * 1e6


@pytest.mark.benchmark(group=GROUP)
def test_wire_path(benchmark: Any, circuits: list[QuantumCircuit]) -> None:
    assert _native.capi_available()
    out = benchmark.pedantic(lambda: circuits_to_qobj_json(circuits, qobj_id="b"), rounds=9)
    assert len(orjson.loads(out)["experiments"]) == N
    per_circuit(benchmark)


@pytest.mark.benchmark(group=GROUP)
def test_assemble_lazy(benchmark: Any, circuits: list[QuantumCircuit]) -> None:
    out = benchmark.pedantic(lambda: qdispatch.assemble(circuits, qobj_id="b").to_json(), rounds=9)
    assert out == circuits_to_qobj_json(circuits, qobj_id="b")
    per_circuit(benchmark)


@pytest.mark.benchmark(group=GROUP)
def test_assemble_lazy_config_changed(benchmark: Any, circuits: list[QuantumCircuit]) -> None:
    def run() -> bytes:
        qobj = qdispatch.assemble(circuits, qobj_id="b")
        qobj.config.shots = 10
        return qobj.to_json()

    out = benchmark.pedantic(run, rounds=9)
    assert orjson.loads(out)["config"]["shots"] == 10
    per_circuit(benchmark)


@pytest.mark.benchmark(group=GROUP)
def test_assemble_eager(benchmark: Any, circuits: list[QuantumCircuit]) -> None:
    def run() -> bytes:
        wire = circuits_to_qobj_json(circuits, qobj_id="b")
        return QasmQobj.from_dict(orjson.loads(wire)).to_json()

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert out == circuits_to_qobj_json(circuits, qobj_id="b")
    per_circuit(benchmark)


@pytest.mark.benchmark(group=GROUP)
def test_runtime_encoder(benchmark: Any, circuits: list[QuantumCircuit]) -> None:
    encoder = pytest.importorskip("qiskit_ibm_runtime.utils.json").RuntimeEncoder
    benchmark.pedantic(lambda: json.dumps({"circuits": circuits}, cls=encoder), rounds=3)
    per_circuit(benchmark)
