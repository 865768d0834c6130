"""Figures of the job service itself: jobs accepted per second, circuits executed per
second on each backend, and the time a killed service takes to come back.

Run with ``make bench`` (pytest-benchmark); figures are in each benchmark's extra_info.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from qobjs import bell_qobj, experiment, measure_all, qobj
from support import ServiceProcess, submit, wait_final


def random_experiment(
    rng: random.Random, edges: list[tuple[int, int]], name: str
) -> dict[str, Any]:
    """5 qubits, ~50 instructions in a device basis on coupled qubits, then measure."""
    insts: list[dict[str, Any]] = []
    while len(insts) < 49:
        kind = rng.choice(["x", "sx", "rz", "cx", "cx"])
        if kind == "cx":
            insts.append({"name": "cx", "qubits": list(rng.choice(edges))})
        elif kind == "rz":
            insts.append({"name": "rz", "qubits": [rng.randrange(5)], "params": [rng.random()]})
        else:
            insts.append({"name": kind, "qubits": [rng.randrange(5)]})
    return experiment(name, 5, [*insts, measure_all(5)])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    svc = ServiceProcess(tmp_path_factory.mktemp("bench"), "--workers", "2").start()
    yield svc
    svc.stop()


def test_jobs_accepted_per_second(benchmark: Any, service: ServiceProcess) -> None:
    client = service.client()
    body = orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj()})
    n = 200

    def accept() -> None:
        for _ in range(n):
            assert client.post("/jobs", content=body).status_code == 201

    benchmark.pedantic(accept, rounds=3, iterations=1)
    benchmark.extra_info["jobs_per_second"] = n / benchmark.stats.stats.mean


@pytest.mark.parametrize("backend", ["aer_simulator", "fake_generic_5q", "fake_generic_27q"])
def test_circuits_executed_per_second(
    benchmark: Any, service: ServiceProcess, backend: str
) -> None:
    client = service.client()
    coupling = client.get(f"/backends/{backend}/configuration").json()["coupling_map"]
    edges = [(a, b) for a, b in coupling or [[0, 1], [1, 2], [2, 3], [3, 4]] if a < 5 and b < 5]
    rng = random.Random(7)
    jobs = [
        qobj([random_experiment(rng, edges, f"r{j}-{i}") for i in range(300)], shots=1024)
        for j in range(6)
    ]

    def execute() -> None:
        ids = [submit(client, backend, q)["id"] for q in jobs]
        for job_id in ids:
            assert wait_final(client, job_id, timeout=600)["status"] == "DONE"

    benchmark.pedantic(execute, rounds=2, iterations=1)
    benchmark.extra_info["circuits_per_second"] = 6 * 300 / benchmark.stats.stats.mean


def test_restart_recovery_time(benchmark: Any, tmp_path: Path) -> None:
    """kill -9 with 1,000 jobs queued; time until the restarted service answers again."""
    svc = ServiceProcess(tmp_path, "--workers", "1").start()
    try:
        client = svc.client()
        body = orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(shots=10_000)})
        for _ in range(1000):
            client.post("/jobs", content=body)
        svc.kill()

        def restart() -> None:
            svc.start()

        start = time.perf_counter()
        benchmark.pedantic(restart, rounds=1, iterations=1)
        benchmark.extra_info["seconds_to_ready_with_1000_queued"] = time.perf_counter() - start
        client = svc.client()
        last = client.get("/jobs", params={"limit": 1}).json()["jobs"][0]["id"]
        assert wait_final(client, last, timeout=600)["status"] == "DONE"
    finally:
        svc.stop()
