"""Client figures, each against its peers in the same run (issue 3's benchmarks):

(a) circuits → wire bytes for 10k circuits of 5 qubits x ~50 instructions: qdispatch's
    QasmQobj writer vs qiskit-ibm-runtime's ``RuntimeEncoder`` vs ``qpy.dump``;
(b) results of 10k experiments, parse + counts of every experiment: qdispatch's native
    parser vs ``Result.from_dict`` + ``get_counts``;
(c) job finished → ``wait_for_final_state()`` returned, p50 over many jobs.

``make bench``; per-circuit figures and percentiles are in each benchmark's extra_info,
and pytest-benchmark's table sets the peers of a group side by side.
"""

from __future__ import annotations

import io
import json
import random
import statistics
from datetime import datetime, timezone
from typing import Any

import orjson
import pytest
from qiskit import QuantumCircuit, qpy
from qiskit.circuit.random import random_circuit
from qiskit.result import Result

import qdispatch
from qdispatch import _native
from qdispatch.assembler import circuits_to_qobj_json
from support import ServiceProcess

N = 10_000


@pytest.fixture(scope="module")
def circuits() -> list[QuantumCircuit]:
    """10k random circuits, 5 qubits, ~50 instructions each (measurements included)."""
    made = [random_circuit(5, 12, max_operands=2, measure=True, seed=i) for i in range(N)]
    mean = sum(len(c.data) for c in made) / N
    assert 40 <= mean <= 60, mean
    return made


@pytest.mark.benchmark(group="serialize 10k circuits")
def test_serialize_qdispatch(benchmark: Any, circuits: list[QuantumCircuit]) -> None:
    assert _native.capi_available()
    out = benchmark.pedantic(lambda: circuits_to_qobj_json(circuits, shots=1024), rounds=5)
    assert orjson.loads(out)["experiments"][0]["header"]["n_qubits"] == 5
    benchmark.extra_info["us_per_circuit"] = benchmark.stats.stats.median / N * 1e6


@pytest.mark.benchmark(group="serialize 10k circuits")
def test_serialize_runtime_encoder(benchmark: Any, circuits: list[QuantumCircuit]) -> None:
    encoder = pytest.importorskip("qiskit_ibm_runtime.utils.json").RuntimeEncoder
    benchmark.pedantic(lambda: json.dumps({"circuits": circuits}, cls=encoder), rounds=2)
    benchmark.extra_info["us_per_circuit"] = benchmark.stats.stats.median / N * 1e6


@pytest.mark.benchmark(group="serialize 10k circuits")
def test_serialize_qpy_dump(benchmark: Any, circuits: list[QuantumCircuit]) -> None:
    def dump() -> bytes:
        buffer = io.BytesIO()
        qpy.dump(circuits, buffer)
        return buffer.getvalue()

    benchmark.pedantic(dump, rounds=2)
    benchmark.extra_info["us_per_circuit"] = benchmark.stats.stats.median / N * 1e6


@pytest.fixture(scope="module")
def result_json() -> bytes:
    """A Result of 10k experiments: two registers over 5 clbits, ~20 outcomes each."""
    rng = random.Random(1)
    results = []
    for i in range(N):
        outcomes = rng.sample(range(32), 20)
        counts = {hex(o): rng.randrange(1, 100) for o in outcomes}
        results.append(
            {
                "shots": sum(counts.values()),
                "success": True,
                "status": "DONE",
                "data": {"counts": counts},
                "header": {
                    "name": f"c{i}",
                    "memory_slots": 5,
                    "creg_sizes": [["a", 2], ["b", 3]],
                    "n_qubits": 5,
                },
            }
        )
    return orjson.dumps(
        {
            "backend_name": "aer_simulator",
            "backend_version": "0.1.0",
            "qobj_id": "bench",
            "job_id": "bench",
            "success": True,
            "results": results,
        }
    )


@pytest.mark.benchmark(group="results of 10k experiments")
def test_results_qdispatch_native(benchmark: Any, result_json: bytes) -> None:
    counts = benchmark.pedantic(lambda: _native.counts_from_result(result_json), rounds=5)
    assert counts[0] == Result.from_dict(orjson.loads(result_json)).get_counts(0)
    benchmark.extra_info["us_per_experiment"] = benchmark.stats.stats.median / N * 1e6


@pytest.mark.benchmark(group="results of 10k experiments")
def test_results_qiskit_from_dict(benchmark: Any, result_json: bytes) -> None:
    def parse() -> list[dict[str, int]]:
        result = Result.from_dict(orjson.loads(result_json))
        return [result.get_counts(i) for i in range(N)]

    benchmark.pedantic(parse, rounds=2)
    benchmark.extra_info["us_per_experiment"] = benchmark.stats.stats.median / N * 1e6


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    proc = ServiceProcess(tmp_path_factory.mktemp("bench-client"), "--workers", "2").start()
    with qdispatch.connect(proc.url, token=proc.token) as service:
        yield service
    proc.stop()


@pytest.mark.benchmark(group="finished to wait_for_final_state returned")
def test_wait_latency(benchmark: Any, service: Any) -> None:
    backend = service.backend("aer_simulator")
    bell = QuantumCircuit(2, 2)
    bell.h(0)
    bell.cx(0, 1)
    bell.measure([0, 1], [0, 1])
    latencies: list[float] = []

    def one_job() -> None:
        job = backend.run(bell, shots=100)
        job.wait_for_final_state(timeout=60)
        returned = datetime.now(timezone.utc)
        finished = datetime.fromisoformat(job._time_per_step["COMPLETED"].replace("Z", "+00:00"))
        latencies.append((returned - finished).total_seconds() * 1e3)

    benchmark.pedantic(one_job, rounds=50, warmup_rounds=3)
    latencies = latencies[3:]
    benchmark.extra_info["p50_ms"] = statistics.median(latencies)
    benchmark.extra_info["p90_ms"] = statistics.quantiles(latencies, n=10)[-1]
