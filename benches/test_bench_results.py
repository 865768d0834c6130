"""Building qiskit ``Result`` objects of 10k experiments (issue 11, item 3), each figure
against its peer in the same run: qdispatch's ``result_from_json`` (native outline,
experiments built on access, counts from the outline) vs ``Result.from_dict`` of the same
JSON, as the job and ``combine_results()`` built them before.

(a) build only; (b) build, then ``get_counts`` of every experiment by index (the counts
are ``LazyCounts``: ``hex_raw``/``int_raw`` made on first read); (c) build, then
``get_memory`` of every experiment (each is built: qiskit's own path);
(d) ``combine_results()``'s merge of 10 job results of 1k experiments each; (e) that merge,
then ``get_counts()`` of all (what a job set's caller does with it).

In each group the peer runs first; the qdispatch row's ``extra_info["speedup"]`` is the
peer's median over its own (issue 11's target for (b) and (e): >= 10).

The experiments have the shape the service returns (Aer's result with the Qobj header:
register sizes and labels, Aer's metadata), 5 clbits in two registers, ~20 outcomes and
64 shots of memory each. ``make bench``; per-experiment figures are in each benchmark's
extra_info, and pytest-benchmark's table sets the peers of a group side by side.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from qiskit.result import Result

from qdispatch.results import combine_result_json, result_from_json

N = 10_000
JOBS = 10


def aer_experiment(i: int, rng: random.Random) -> dict[str, Any]:
    """One experiment as the service returns it."""
    outcomes = rng.sample(range(32), 20)
    counts = {hex(o): rng.randrange(1, 100) for o in outcomes}
    return {
        "shots": sum(counts.values()),
        "success": True,
        "data": {"counts": counts, "memory": [hex(rng.choice(outcomes)) for _ in range(64)]},
        "meas_level": 2,
        "header": {
            "name": f"circuit-{i}",
            "n_qubits": 5,
            "memory_slots": 5,
            "qreg_sizes": [["q", 5]],
            "creg_sizes": [["a", 2], ["b", 3]],
            "qubit_labels": [["q", k] for k in range(5)],
            "clbit_labels": [["a", 0], ["a", 1], ["b", 0], ["b", 1], ["b", 2]],
            "global_phase": 0.0,
            "metadata": {},
        },
        "status": "DONE",
        "seed_simulator": rng.randrange(1 << 32),
        "metadata": {
            "time_taken": 0.0008,
            "num_bind_params": 1,
            "parallel_state_update": 1,
            "parallel_shots": 1,
            "required_memory_mb": 1,
            "input_qubit_map": [[k, k] for k in range(5)],
            "method": "statevector",
            "device": "CPU",
            "num_qubits": 5,
            "sample_measure_time": 0.0001,
            "active_input_qubits": list(range(5)),
            "num_clbits": 5,
            "remapped_qubits": False,
            "runtime_parameter_bind": False,
            "max_memory_mb": 24105,
            "noise": "ideal",
            "measure_sampling": True,
            "batched_shots_optimization": False,
            "fusion": {"applied": False, "max_fused_qubits": 5, "threshold": 14, "enabled": True},
        },
        "time_taken": 0.0008,
    }


def result_document(experiments: list[dict[str, Any]], job_id: str) -> bytes:
    return orjson.dumps(
        {
            "backend_name": "aer_simulator",
            "backend_version": "0.1.0",
            "qobj_id": job_id,
            "job_id": job_id,
            "success": True,
            "status": "COMPLETED",
            "date": "2026-12-01T18:00:00+00:00",
            "header": {},
            "metadata": {"parallel_experiments": 1, "omp_enabled": True},
            "time_taken": 1.5,
            "results": experiments,
        }
    )


@pytest.fixture(scope="module")
def result_json() -> bytes:
    rng = random.Random(11)
    return result_document([aer_experiment(i, rng) for i in range(N)], "bench")


@pytest.fixture(scope="module")
def job_parts() -> list[bytes]:
    rng = random.Random(12)
    per = N // JOBS
    return [
        result_document([aer_experiment(j * per + i, rng) for i in range(per)], f"job-{j}")
        for j in range(JOBS)
    ]


#: The median of each group's peer row, for the speed-up of the qdispatch row after it.
_peer: dict[str, float] = {}


def per_experiment(benchmark: Any, peer_of: str | None = None) -> None:
    """Per-experiment figures; ``peer_of``: this row is the peer of that group."""
    median = benchmark.stats.stats.median
    benchmark.extra_info["us_per_experiment"] = median / N * 1e6
    if peer_of is not None:
        _peer[peer_of] = median
    elif benchmark.group in _peer:
        benchmark.extra_info["speedup"] = round(_peer[benchmark.group] / median, 1)


BUILD = "build a Result of 10k experiments"
COUNTS = "build + get_counts of every experiment, 10k"
MEMORY = "build + get_memory of every experiment, 10k"
COMBINE = "combine 10 job results of 1k experiments"
COMBINE_COUNTS = "combine 10 job results of 1k + get_counts() of all"


def from_dict(raw: bytes) -> Result:
    return Result.from_dict(orjson.loads(raw))


@pytest.mark.benchmark(group=BUILD)
def test_build_from_dict(benchmark: Any, result_json: bytes) -> None:
    result = benchmark.pedantic(from_dict, (result_json,), rounds=3)
    assert len(result.results) == N
    per_experiment(benchmark, peer_of=BUILD)


@pytest.mark.benchmark(group=BUILD)
def test_build_qdispatch(benchmark: Any, result_json: bytes) -> None:
    result = benchmark.pedantic(result_from_json, (result_json,), rounds=5)
    assert len(result.results) == N
    per_experiment(benchmark)


def counts_of_all(build: Any, raw: bytes) -> list[Any]:
    result = build(raw)
    return [result.get_counts(i) for i in range(N)]


@pytest.mark.benchmark(group=COUNTS)
def test_counts_from_dict(benchmark: Any, result_json: bytes) -> None:
    benchmark.pedantic(counts_of_all, (from_dict, result_json), rounds=3)
    per_experiment(benchmark, peer_of=COUNTS)


@pytest.mark.benchmark(group=COUNTS)
def test_counts_qdispatch(benchmark: Any, result_json: bytes) -> None:
    counts = benchmark.pedantic(counts_of_all, (result_from_json, result_json), rounds=5)
    expected = from_dict(result_json)
    assert counts[N - 1] == expected.get_counts(N - 1)
    assert counts[0].int_raw == expected.get_counts(0).int_raw
    per_experiment(benchmark)


def memory_of_all(build: Any, raw: bytes) -> list[Any]:
    result = build(raw)
    return [result.get_memory(i) for i in range(N)]


@pytest.mark.benchmark(group=MEMORY)
def test_memory_from_dict(benchmark: Any, result_json: bytes) -> None:
    benchmark.pedantic(memory_of_all, (from_dict, result_json), rounds=3)
    per_experiment(benchmark, peer_of=MEMORY)


@pytest.mark.benchmark(group=MEMORY)
def test_memory_qdispatch(benchmark: Any, result_json: bytes) -> None:
    memory = benchmark.pedantic(memory_of_all, (result_from_json, result_json), rounds=3)
    assert memory[7] == from_dict(result_json).get_memory(7)
    per_experiment(benchmark)


def merge_as_dicts(parts: list[bytes], job_id: str) -> Result:
    """``combine_results()`` before: every part loaded, the experiments concatenated."""
    merged = orjson.loads(parts[0])
    experiments: list[Any] = []
    for raw in parts:
        part = orjson.loads(raw) if raw is not parts[0] else merged
        experiments.extend(part["results"])
        merged["success"] = merged.get("success", True) and part.get("success", True)
    merged["results"] = experiments
    merged["job_id"] = job_id
    return Result.from_dict(merged)


@pytest.mark.benchmark(group=COMBINE)
def test_combine_as_dicts(benchmark: Any, job_parts: list[bytes]) -> None:
    benchmark.pedantic(merge_as_dicts, (job_parts, "set"), rounds=3)
    per_experiment(benchmark, peer_of=COMBINE)


@pytest.mark.benchmark(group=COMBINE)
def test_combine_qdispatch(benchmark: Any, job_parts: list[bytes]) -> None:
    result = benchmark.pedantic(combine_result_json, (job_parts, "set"), rounds=5)
    assert len(result.results) == N
    assert result.get_counts(N - 1) == merge_as_dicts(job_parts, "set").get_counts(N - 1)
    per_experiment(benchmark)


def combined_counts(combine: Any, parts: list[bytes]) -> list[Any]:
    counts: list[Any] = combine(parts, "set").get_counts()
    return counts


@pytest.mark.benchmark(group=COMBINE_COUNTS)
def test_combine_counts_as_dicts(benchmark: Any, job_parts: list[bytes]) -> None:
    benchmark.pedantic(combined_counts, (merge_as_dicts, job_parts), rounds=3)
    per_experiment(benchmark, peer_of=COMBINE_COUNTS)


@pytest.mark.benchmark(group=COMBINE_COUNTS)
def test_combine_counts_qdispatch(benchmark: Any, job_parts: list[bytes]) -> None:
    counts = benchmark.pedantic(combined_counts, (combine_result_json, job_parts), rounds=5)
    assert counts == combined_counts(merge_as_dicts, job_parts)
    per_experiment(benchmark)
