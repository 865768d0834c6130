"""Job-manager figures, peers side by side in the same run (issue 4's benchmarks):

- end to end, 10k circuits of 5 qubits x ~50 instructions, 1024 shots: ``IBMQJobManager``
  on the service vs the same circuits run directly on ``AerSimulator`` in-process vs a
  pure-Python manager (a thread pool, one JSON HTTP request per job, polling);
- merging the results of 10k experiments from 34 jobs into one ``Result``:
  ``ManagedResults.combine_results`` vs ``deepcopy`` + ``append`` (the original's way).
"""

from __future__ import annotations

import copy
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
from qiskit import QuantumCircuit
from qiskit.result import Result
from qiskit_aer import AerSimulator

import qdispatch
from qdispatch import IBMQJobManager
from support import ServiceProcess

N = 10_000
SHOTS = 1024


def random_5q(rng: random.Random, name: str) -> QuantumCircuit:
    """5 qubits, 45 gates from a set every peer runs natively, then measure all (50)."""
    qc = QuantumCircuit(5, 5, name=name)
    for _ in range(45):
        gate = rng.choice(("h", "x", "sx", "rz", "ry", "cx", "cz"))
        if gate in ("cx", "cz"):
            a, b = rng.sample(range(5), 2)
            getattr(qc, gate)(a, b)
        elif gate in ("rz", "ry"):
            getattr(qc, gate)(rng.uniform(0, 6.28), rng.randrange(5))
        else:
            getattr(qc, gate)(rng.randrange(5))
    qc.measure(range(5), range(5))
    return qc


@pytest.fixture(scope="module")
def circuits() -> list[QuantumCircuit]:
    rng = random.Random(2026)
    return [random_5q(rng, f"r{i}") for i in range(N)]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    proc = ServiceProcess(tmp_path_factory.mktemp("bench-manager"), "--workers", "2").start()
    yield proc
    proc.stop()


@pytest.mark.benchmark(group="10k circuits end to end")
def test_e2e_job_manager(
    benchmark: Any, svc: ServiceProcess, circuits: list[QuantumCircuit]
) -> None:
    with qdispatch.connect(svc.url, token=svc.token) as service:
        backend = service.backend("aer_simulator")

        def run() -> Any:
            results = IBMQJobManager().run(circuits, backend, shots=SHOTS).results()
            return results.get_counts(N - 1)

        assert benchmark.pedantic(run, rounds=2, warmup_rounds=1)
    benchmark.extra_info["circuits_per_second"] = N / benchmark.stats.stats.median


@pytest.mark.benchmark(group="10k circuits end to end")
def test_e2e_aer_in_process(benchmark: Any, circuits: list[QuantumCircuit]) -> None:
    sim = AerSimulator()

    def run() -> Any:
        result = sim.run(circuits, shots=SHOTS).result()
        return result.get_counts(N - 1)

    assert benchmark.pedantic(run, rounds=2, warmup_rounds=1)
    benchmark.extra_info["circuits_per_second"] = N / benchmark.stats.stats.median


@pytest.mark.benchmark(group="10k circuits end to end")
def test_e2e_pure_python_manager(
    benchmark: Any, svc: ServiceProcess, circuits: list[QuantumCircuit]
) -> None:
    """What a script would write by hand: assemble to dicts, json, one POST per job from a
    thread pool, poll each job, json results, Result.from_dict."""
    headers = {"Authorization": f"Bearer {svc.token}", "Content-Type": "application/json"}

    def one(chunk: list[QuantumCircuit]) -> Result:
        with httpx.Client(base_url=svc.url, headers=headers, timeout=120) as http:
            qobj = qdispatch.assemble(chunk, shots=SHOTS).to_dict()
            body = json.dumps({"backend": "aer_simulator", "qobj": qobj})
            job = http.post("/jobs", content=body).json()
            while http.get(f"/jobs/{job['id']}").json()["status"] not in ("DONE", "ERROR"):
                time.sleep(0.1)
            return Result.from_dict(json.loads(http.get(f"/jobs/{job['id']}/results").text))

    def run() -> Any:
        chunks = [circuits[i : i + 300] for i in range(0, N, 300)]
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, chunks))
        return results[-1].get_counts(len(chunks[-1]) - 1)

    assert benchmark.pedantic(run, rounds=2, warmup_rounds=1)
    benchmark.extra_info["circuits_per_second"] = N / benchmark.stats.stats.median


@pytest.fixture(scope="module")
def finished_set(svc: ServiceProcess) -> Any:
    """A finished set of 10k experiments in 34 jobs (results already fetched)."""
    service = qdispatch.connect(svc.url, token=svc.token)
    circuits = []
    for i in range(N):
        qc = QuantumCircuit(5, 5, name=f"m{i}")
        qc.ry(0.001 * i, range(5))
        qc.measure(range(5), range(5))
        circuits.append(qc)
    job_set = IBMQJobManager().run(circuits, service.backend("aer_simulator"), shots=256)
    results = job_set.results()
    assert len(job_set.managed_jobs()) == 34
    yield job_set, results
    service.close()


@pytest.mark.benchmark(group="merge 10k experiments of 34 jobs")
def test_merge_combine_results(benchmark: Any, finished_set: Any) -> None:
    _, results = finished_set
    merged = benchmark.pedantic(results.combine_results, rounds=3)
    assert len(merged.results) == N


@pytest.mark.benchmark(group="merge 10k experiments of 34 jobs")
def test_merge_deepcopy_append(benchmark: Any, finished_set: Any) -> None:
    job_set, _ = finished_set
    raws = [m._raw_result for m in job_set.managed_jobs()]

    def merge() -> Result:
        parts = [Result.from_dict(orjson.loads(raw)) for raw in raws]
        combined = copy.deepcopy(parts[0])
        for part in parts[1:]:
            for experiment in part.results:
                combined.results.append(copy.deepcopy(experiment))
        return combined

    merged = benchmark.pedantic(merge, rounds=3)
    assert len(merged.results) == N
