"""Worker figures: a QasmQobj (JSON bytes) of 2,000 circuits of 5 qubits x ~50
instructions back into ``QuantumCircuit``s, side by side:

- ``orjson.loads`` + the Python path (``disassembler.qobj_to_circuits`` on the dict);
- the native path (``disassembler.qobj_bytes_to_circuits``: serde, then Qiskit's C API).
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from qiskit import QuantumCircuit

from qdispatch import _native
from qdispatch.disassembler import _gc_paused, qobj_bytes_to_circuits, qobj_to_circuits
from test_bench_manager import random_5q

N = 2_000


@pytest.fixture(scope="module")
def qobj() -> bytes:
    rng = random.Random(2026)
    circuits: list[QuantumCircuit] = [random_5q(rng, f"r{i}") for i in range(N)]
    return _native.circuits_to_qobj_json(circuits, {}, "id", {})


@pytest.mark.benchmark(group="rebuild 2k circuits from Qobj bytes")
def test_rebuild_python(benchmark: Any, qobj: bytes) -> None:
    def rebuild() -> list[QuantumCircuit]:
        # As the worker did: the GC paused while the tree and the circuits are built.
        with _gc_paused():
            return qobj_to_circuits(orjson.loads(qobj))

    out = benchmark.pedantic(rebuild, rounds=5)
    assert len(out) == N
    benchmark.extra_info["us_per_circuit"] = benchmark.stats.stats.median / N * 1e6


@pytest.mark.benchmark(group="rebuild 2k circuits from Qobj bytes")
def test_rebuild_native(benchmark: Any, qobj: bytes) -> None:
    assert _native.capi_available()
    out = benchmark.pedantic(lambda: qobj_bytes_to_circuits(qobj), rounds=5)
    assert len(out) == N
    assert _native.qobj_to_circuits(qobj) is not None
    benchmark.extra_info["us_per_circuit"] = benchmark.stats.stats.median / N * 1e6
