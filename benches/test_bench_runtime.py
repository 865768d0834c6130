"""Sampler figures, peers side by side in the same run (issue 5's benchmark):

2,000 circuits (5 qubits x ~50 instructions, 1024 shots), submitted, run, decoded and
``get_counts`` of every pub:
- ``qdispatch.Sampler`` through the service (2 workers), as one job and as two jobs of
  1,000 pubs each;
- qiskit-ibm-runtime's local mode: ``SamplerV2(mode=AerSimulator())``, in-process.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from qiskit import QuantumCircuit
from qiskit_aer import AerSimulator

import qdispatch
from qdispatch import Sampler
from support import ServiceProcess
from test_bench_manager import random_5q

N = 2_000
SHOTS = 1024


@pytest.fixture(scope="module")
def circuits() -> list[QuantumCircuit]:
    rng = random.Random(5)
    return [random_5q(rng, f"s{i}") for i in range(N)]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    proc = ServiceProcess(tmp_path_factory.mktemp("bench-runtime"), "--workers", "2").start()
    yield proc
    proc.stop()


def _all_counts(result: Any) -> int:
    """get_counts of every pub; the number of shots seen (checked by the caller)."""
    return sum(sum(pub.data.c.get_counts().values()) for pub in result)


@pytest.mark.benchmark(group="sampler 2000 circuits")
def test_sampler_service_one_job(
    benchmark: Any, svc: ServiceProcess, circuits: list[QuantumCircuit]
) -> None:
    with qdispatch.connect(svc.url, token=svc.token) as service:
        sampler = Sampler(mode=service.backend("aer_simulator"))

        def run() -> int:
            return _all_counts(sampler.run(circuits, shots=SHOTS).result())

        assert benchmark.pedantic(run, rounds=2, warmup_rounds=1) == N * SHOTS
    benchmark.extra_info["circuits_per_second"] = N / benchmark.stats.stats.median


@pytest.mark.benchmark(group="sampler 2000 circuits")
def test_sampler_service_two_jobs(
    benchmark: Any, svc: ServiceProcess, circuits: list[QuantumCircuit]
) -> None:
    with qdispatch.connect(svc.url, token=svc.token) as service:
        sampler = Sampler(mode=service.backend("aer_simulator"))
        half = N // 2

        def run() -> int:
            jobs = [
                sampler.run(circuits[:half], shots=SHOTS),
                sampler.run(circuits[half:], shots=SHOTS),
            ]
            return sum(_all_counts(job.result()) for job in jobs)

        assert benchmark.pedantic(run, rounds=2, warmup_rounds=1) == N * SHOTS
    benchmark.extra_info["circuits_per_second"] = N / benchmark.stats.stats.median


# qiskit-ibm-runtime 0.50 deprecated SamplerV2 for a client-side Sampler; SamplerV2 is
# still what its local mode runs on AerSimulator.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.benchmark(group="sampler 2000 circuits")
def test_sampler_ibm_runtime_local_mode(benchmark: Any, circuits: list[QuantumCircuit]) -> None:
    runtime = pytest.importorskip("qiskit_ibm_runtime")

    sampler = runtime.SamplerV2(mode=AerSimulator())

    def run() -> int:
        return _all_counts(sampler.run(circuits, shots=SHOTS).result())

    assert benchmark.pedantic(run, rounds=2, warmup_rounds=1) == N * SHOTS
    benchmark.extra_info["circuits_per_second"] = N / benchmark.stats.stats.median
