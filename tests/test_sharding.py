"""One primitive job on every worker (issue 11, item 4): a sampler or estimator job with
many pubs runs as shards on the free workers, through a real service.

The shards' results are the pubs' results in pub order, shaped as the unsharded result
(compared with qiskit-aer's own primitives run in this process on deterministic
circuits: exact counts and expectation values); a seeded job is reproducible; a cancel
stops every shard; a worker killed under a shard costs that shard one attempt, and the
job still ends DONE; fair share puts another user's job ahead of a big job's remaining
shards; a service killed mid-job requeues the job, which completes once; a pub with many
parameter sets gets a shard of its own, the others balanced around it. In process: how a
job's pubs are cut into shards, and, with a fake executor, that no shard is empty and the
job's time limit bounds the sum of its shards' run times. Faults: test_sharding_faults.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp
from qiskit_aer.primitives import SamplerV2 as AerSampler

import qdispatch
from qdispatch import Estimator, Sampler
from qdispatch.codes import TIME_LIMIT_EXCEEDED
from qdispatch.constants import DONE, ERROR, RUNNING
from qdispatch.server.executors import OnEvent, Outcome, Task
from qdispatch.server.programs import BUILTIN, ProgramRef
from qdispatch.server.programs.sharding import pub_runs, read_pub_runs
from qdispatch.server.scheduler import Scheduler
from qdispatch.server.shards import plan
from qdispatch.server.store import NewJob, Store
from qdispatch.server.stream import Hub
from support import ServiceProcess, wait_final, wait_status

# Small shards, so that jobs of a few dozen pubs are split (the default is 64 pubs).
MIN_PUBS = "4"


def deterministic(i: int, n: int = 4) -> QuantumCircuit:
    """A circuit whose every shot reads ``i`` (mod 2**n) in its ``meas`` register."""
    circuit = QuantumCircuit(n)
    for q in range(n):
        if (i >> q) & 1:
            circuit.x(q)
    circuit.measure_all()
    return circuit


def slow(i: int, n: int = 10) -> QuantumCircuit:
    """A deterministic circuit that takes ~3 ms a shot: mid-circuit measurements and
    resets make Aer simulate it shot by shot. Register ``c``: its last n bits read
    ``i`` after a fixed prefix."""
    circuit = QuantumCircuit(n, n + 1)
    for layer in range(8):
        circuit.x(range(n))
        circuit.cx(range(n - 1), range(1, n))
        circuit.rz(0.3, range(n))
        circuit.measure(layer, n)
        circuit.reset(layer)
    for q in range(n):
        if (i >> q) & 1:
            circuit.x(q)
    circuit.measure(range(n), range(n))
    return circuit


def expected_counts(circuits: list[QuantumCircuit], shots: int) -> list[dict[str, int]]:
    """The counts of deterministic circuits, from qiskit-aer's Sampler in this process."""
    result = AerSampler().run([(c, None, 1) for c in circuits]).result()
    return [{key: shots for key in pub.join_data().get_counts()} for pub in result]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        tmp_path_factory.mktemp("sharding"), "--workers", "2", "--shard-min-pubs", MIN_PUBS
    ).start()
    yield proc
    proc.stop()


def _interims(client: Any, job_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/jobs/{job_id}/interim_results")
    assert response.status_code == 200, response.text
    return list(response.json())


def _wait(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_sampler_job_runs_as_shards_and_keeps_pub_order_and_shape(svc: ServiceProcess) -> None:
    circuits = [deterministic(i) for i in range(60)]
    shots = [5 + i % 7 for i in range(60)]
    local = AerSampler().run([(c, None, s) for c, s in zip(circuits, shots, strict=True)]).result()
    with qdispatch.connect(svc.url, token=svc.token) as service:
        sampler = Sampler(mode=service.backend("aer_simulator"))
        job = sampler.run([(c, None, s) for c, s in zip(circuits, shots, strict=True)])
        result = job.result()
        progress = job.interim_results()
    assert len(result) == len(local) == 60
    assert result.metadata == local.metadata
    for i, (pub, mine) in enumerate(zip(local, result, strict=True)):
        assert mine.data.meas.get_counts() == pub.data.meas.get_counts(), i
        assert mine.data.meas.num_shots == shots[i]
        assert mine.data.meas.shape == pub.data.meas.shape
        assert list(mine.data) == list(pub.data)
        assert set(mine.metadata) == set(pub.metadata)
        assert mine.metadata["shots"] == shots[i]
    # Ran as two shards (two free workers), each said so as it finished.
    assert [p["shards_done"] for p in progress] == [1, 2]
    assert {p["shards"] for p in progress} == {2}
    assert progress[-1]["pubs_done"] == progress[-1]["pubs"] == 60


def test_a_seeded_sharded_sampler_is_reproducible(svc: ServiceProcess) -> None:
    circuit = QuantumCircuit(3)
    circuit.h(range(3))
    circuit.measure_all()
    with qdispatch.connect(svc.url, token=svc.token) as service:
        sampler = Sampler(mode=service.backend("aer_simulator"), options={"seed_simulator": 11})
        first = sampler.run([circuit] * 40, shots=200).result()
        again = sampler.run([circuit] * 40, shots=200).result()
    arrays = [pub.data.meas.array for pub in first]
    assert all(np.array_equal(a, b.data.meas.array) for a, b in zip(arrays, again, strict=True))
    # Two shards never draw the same samples (each shard's seed is offset by its first pub).
    assert not np.array_equal(arrays[0], arrays[20])
    # The distribution: 8000 shots of a uniform 3-bit register.
    counts: dict[str, int] = {}
    for pub in first:
        for key, n in pub.data.meas.get_counts().items():
            counts[key] = counts.get(key, 0) + n
    assert sorted(counts) == [format(i, "03b") for i in range(8)]
    assert all(800 < n < 1200 for n in counts.values()), counts


def test_an_estimator_job_runs_as_shards_with_exact_values_in_pub_order(
    svc: ServiceProcess,
) -> None:
    theta = Parameter("t")
    rotated = QuantumCircuit(1)
    rotated.rx(theta, 0)
    pubs: list[Any] = []
    expected: list[Any] = []
    for i in range(40):
        if i % 5 == 4:  # a pub with parameters: |0> and |1>, Z reads +1 and -1
            pubs.append((rotated, SparsePauliOp("Z"), [[0.0], [np.pi], [0.0]]))
            expected.append([1.0, -1.0, 1.0])
        else:  # basis states: each Z-string reads the parity of its qubits' bits
            circuit = QuantumCircuit(3)
            for q in range(3):
                if (i >> q) & 1:
                    circuit.x(q)
            pubs.append((circuit, [SparsePauliOp("ZII"), SparsePauliOp("IZZ")]))
            bit = [(i >> q) & 1 for q in range(3)]
            expected.append([(-1.0) ** bit[2], (-1.0) ** (bit[0] + bit[1])])
    with qdispatch.connect(svc.url, token=svc.token) as service:
        estimator = Estimator(mode=service.backend("aer_simulator"))
        job = estimator.run(pubs)
        result = job.result()
        progress = job.interim_results()
    assert result.metadata == {"version": 2}
    for i, (pub, values) in enumerate(zip(result, expected, strict=True)):
        assert pub.data.evs.tolist() == values, i
        assert np.all(pub.data.stds == 0), i
    assert progress[-1] == {"shards_done": 2, "shards": 2, "pubs_done": 40, "pubs": 40}


def _submit_slow(service: Any, n: int, shots: int) -> tuple[Any, list[dict[str, int]]]:
    circuits = [slow(i) for i in range(n)]
    sampler = Sampler(mode=service.backend("aer_simulator"))
    return sampler.run(circuits, shots=shots), expected_counts(circuits, shots)


def _counts(result: Any) -> list[dict[str, int]]:
    return [pub.data.c.get_counts() for pub in result]


def test_a_cancel_stops_every_shard(svc: ServiceProcess) -> None:
    client = svc.client()
    with qdispatch.connect(svc.url, token=svc.token) as service:
        job, _ = _submit_slow(service, 24, 400)
        wait_status(client, job.job_id(), RUNNING, timeout=120)
        _wait(lambda: client.get("/info").json()["running_jobs"] == 2, "both shards running")
        job.cancel()
        assert wait_final(client, job.job_id())["status"] == "CANCELLED"
        # Both shards' workers were stopped (and replaced): nothing runs, nothing is stored.
        _wait(lambda: client.get("/info").json()["running_jobs"] == 0, "no shard running")
        _wait(lambda: client.get("/info").json()["workers"]["idle"] == 2, "two idle workers")
        assert client.get(f"/jobs/{job.job_id()}/results").status_code != 200
        # The service goes on: the next job is sharded and done.
        circuits = [deterministic(i) for i in range(16)]
        after = Sampler(mode=service.backend("aer_simulator")).run(circuits, shots=10)
        assert _counts_meas(after.result()) == expected_meas(circuits, 10)


def _counts_meas(result: Any) -> list[dict[str, int]]:
    return [pub.data.meas.get_counts() for pub in result]


def expected_meas(circuits: list[QuantumCircuit], shots: int) -> list[dict[str, int]]:
    return [{format(i % 16, "04b"): shots} for i in range(len(circuits))]


def _busiest_worker(pid: int) -> psutil.Process:
    """The service's spawned child that uses the most CPU now: a worker running a shard
    (the checking processes, also spawned, are idle once the job is in)."""
    children = [
        p
        for p in psutil.Process(pid).children()
        if any("spawn_main" in part for part in p.cmdline()) and p.status() != "zombie"
    ]
    before = {p.pid: sum(p.cpu_times()[:2]) for p in children}
    time.sleep(1.0)
    return max(children, key=lambda p: sum(p.cpu_times()[:2]) - before[p.pid])


def test_a_worker_killed_under_a_shard_costs_the_shard_an_attempt(svc: ServiceProcess) -> None:
    client = svc.client()
    with qdispatch.connect(svc.url, token=svc.token) as service:
        job, expected = _submit_slow(service, 16, 300)
        wait_status(client, job.job_id(), RUNNING, timeout=120)
        _wait(lambda: client.get("/info").json()["running_jobs"] == 2, "both shards running")
        _busiest_worker(svc.proc.pid if svc.proc else 0).kill()
        result = job.result()
        assert job.status().name == DONE
        assert _counts(result) == expected
    logs = client.get(f"/jobs/{job.job_id()}/logs").text
    assert "died" in logs, logs
    assert "requeued (attempt 1 of 3)" in logs, logs


_CLI = (sys.executable, "-m", "qdispatch")


def _operator(svc: ServiceProcess) -> Any:
    made = subprocess.run(
        [*_CLI, "token", "create", "--user", "ops", "--operator", "--db", str(svc.db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return svc.client(made.stdout.strip())


def test_another_users_job_goes_ahead_of_a_big_jobs_remaining_shards(
    svc: ServiceProcess,
) -> None:
    operator = _operator(svc)
    # Two users new to the service: neither has used any time yet, so the older job
    # (ann's) is dispatched first, with both workers free.
    bob_token = svc.token_for("bob-sharding")
    bob = svc.client(bob_token)
    ann_service = qdispatch.connect(svc.url, token=svc.token_for("ann-sharding"))
    bob_service = qdispatch.connect(svc.url, token=bob_token)
    try:
        _fair_share(svc, operator, bob, ann_service, bob_service)
    finally:
        ann_service.close()
        bob_service.close()


def _fair_share(
    svc: ServiceProcess, operator: Any, bob: Any, ann_service: Any, bob_service: Any
) -> None:
    assert operator.post("/backends/aer_simulator/pause").status_code == 200
    try:
        big, expected = _submit_slow(ann_service, 16, 300)  # first in line
        circuits = [deterministic(i) for i in range(3)]
        small = Sampler(mode=bob_service.backend("aer_simulator")).run(circuits, shots=10)
    finally:
        assert operator.post("/backends/aer_simulator/resume").status_code == 200
    client = operator  # operators see every user's jobs
    # The big job takes one worker (its first shard), bob's job the other: bob's runs
    # before any shard of the big job is done.
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = bob.get(f"/jobs/{small.job_id()}").json()["status"]
        done_shards = len(_interims(client, big.job_id()))
        seen.append((status, done_shards))
        if status in (RUNNING, DONE):
            break
        time.sleep(0.05)
    assert seen[-1][0] in (RUNNING, DONE), seen
    assert seen[-1][1] == 0, seen
    assert _counts_meas(small.result()) == expected_meas(circuits, 10)
    assert _counts(big.result()) == expected
    assert [p["shards"] for p in big.interim_results()] == [2, 2]


def test_a_service_killed_mid_job_requeues_it_and_it_completes_once(tmp_path: Path) -> None:
    svc = ServiceProcess(tmp_path, "--workers", "2", "--shard-min-pubs", MIN_PUBS).start()
    try:
        client = svc.client()
        with qdispatch.connect(svc.url, token=svc.token) as service:
            job, expected = _submit_slow(service, 16, 300)
            job_id = job.job_id()
        wait_status(client, job_id, RUNNING, timeout=120)
        _wait(lambda: client.get("/info").json()["running_jobs"] == 2, "both shards running")
        svc.kill()
        svc.start()
        client = svc.client()
        final = wait_final(client, job_id, timeout=180)
        assert final["status"] == DONE, final
        with qdispatch.connect(svc.url, token=svc.token) as service:
            assert _counts(service.job(job_id).result()) == expected
        events = client.get(f"/jobs/{job_id}/events").json()["events"]
        assert sum(1 for e in events if e["type"] == "result") == 1
        statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
        assert statuses.count(DONE) == 1, statuses
        assert "QUEUED" in statuses[1:], statuses  # requeued after the restart
    finally:
        svc.stop()


SAMPLER = ProgramRef("sampler", BUILTIN, "qdispatch.server.programs.sampler")


def cuts(executions: list[int], free: int, min_pubs: int) -> list[tuple[int, int, int]]:
    spans = plan(SAMPLER, read_pub_runs(pub_runs(executions)), free, min_pubs)
    # Whatever the plan: consecutive, non-empty, every pub once, in order.
    assert [s.start for s in spans[1:]] == [s.stop for s in spans[:-1]]
    assert all(s.start < s.stop for s in spans)
    if spans:
        assert (spans[0].start, spans[-1].stop) == (0, len(executions))
        assert all(s.executions == sum(executions[s.start : s.stop]) for s in spans)
    return [(s.start, s.stop, s.executions) for s in spans]


def test_shards_balance_executions_and_are_never_empty() -> None:
    # Alike pubs: as many shards as slots allow, of at least min_pubs executions each.
    assert cuts([1] * 60, 2, 4) == [(0, 30, 30), (30, 60, 30)]
    assert cuts([1] * 200, 8, 64) == [(0, 67, 67), (67, 133, 66), (133, 200, 67)]
    assert cuts([1] * 127, 8, 64) == []  # two shards would hold fewer than 64
    # Fewer pubs than free slots: one shard a pub, none empty (it was 8, 5 of them empty).
    assert cuts([1000] * 3, 8, 64) == [(0, 1, 1000), (1, 2, 1000), (2, 3, 1000)]
    # One pub of many parameter sets in a job of >= 2 x min_pubs pubs: it runs alone,
    # the rest in one shard; more shards would not finish sooner (it was 8 shards).
    assert cuts([10_000] + [1] * 200, 8, 64) == [(0, 1, 10_000), (1, 201, 200)]
    # A heavy pub in the middle: the others balanced around it.
    assert cuts([1] * 10 + [100] + [1] * 10, 4, 4) == [(0, 10, 10), (10, 11, 100), (11, 21, 10)]
    assert cuts([4] * 50 + [1] * 100, 2, 4) == [(0, 37, 148), (37, 150, 152)]
    # Too uneven to give every shard min_pubs: not sharded.
    assert cuts([10_000, 1, 1, 1], 4, 64) == []
    assert cuts([1] * 100, 1, 4) == []  # one free slot
    assert cuts([1] * 100, 8, 0) == []  # sharding off


def test_a_pub_with_many_parameter_sets_gets_a_shard_of_its_own(svc: ServiceProcess) -> None:
    theta = Parameter("t")
    flip = QuantumCircuit(1)
    flip.rx(theta, 0)
    flip.measure_all()
    # 40 parameter sets reading 0 or 1 by turns, then 20 plain pubs: 60 executions; by
    # pubs the first shard held 49 of them and the second 11.
    values = [[np.pi * (k % 2)] for k in range(40)]
    circuits = [deterministic(i) for i in range(20)]
    with qdispatch.connect(svc.url, token=svc.token) as service:
        sampler = Sampler(mode=service.backend("aer_simulator"))
        job = sampler.run([(flip, values, 8), *((c, None, 8) for c in circuits)])
        result = job.result()
        progress = job.interim_results()
    assert [p["shards"] for p in progress] == [2, 2]
    # The heavy pub alone (1 pub), the other 20 together, whichever finished first.
    assert [p["pubs_done"] for p in progress] in ([1, 21], [20, 21])
    heavy = result[0].data.meas
    assert heavy.shape == (40,)
    assert [heavy.get_counts(k) for k in range(4)] == [{"0": 8}, {"1": 8}, {"0": 8}, {"1": 8}]
    assert [pub.data.meas.get_counts() for pub in result[1:]] == expected_meas(circuits, 8)


def test_a_dask_cluster_runs_the_shards(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
    )
    try:
        svc = ServiceProcess(
            tmp_path,
            "--executor",
            "dask",
            "--scheduler",
            cluster.scheduler_address,
            "--shard-min-pubs",
            MIN_PUBS,
        ).start()
        try:
            client = svc.client()
            _wait(lambda: client.get("/info").json()["capacity"] == 2, "two dask threads")
            circuits = [deterministic(i) for i in range(30)]
            with qdispatch.connect(svc.url, token=svc.token) as service:
                job = Sampler(mode=service.backend("aer_simulator")).run(circuits, shots=20)
                assert _counts_meas(job.result()) == expected_meas(circuits, 20)
                assert [p["shards_done"] for p in job.interim_results()] == [1, 2]
        finally:
            svc.stop()
    finally:
        cluster.close()


# -- in process: the job's time limit over its shards -------------------------------------


class HeldExecutor:
    """Workers that take tasks and hold them until cancelled; ``time_limit`` is the job
    time limit the scheduler reads (this executor never enforces it per task)."""

    def __init__(self, capacity: int, time_limit: float) -> None:
        self.capacity = capacity
        self.time_limit = time_limit
        self.held: dict[str, asyncio.Future[Outcome]] = {}
        self.started: dict[str, float] = {}
        self.ran: dict[str, float] = {}  # how long each task had run when it was cancelled

    async def start(self) -> None:
        return None

    async def execute(
        self, task: Task, started: Callable[[], None], on_event: OnEvent | None = None
    ) -> Outcome:
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.held[task.job_id] = done
        self.started[task.job_id] = time.monotonic()
        try:
            started()
            return await done
        finally:
            del self.held[task.job_id]

    def cancel(self, job_id: str) -> bool:
        done = self.held.get(job_id)
        if done is None:
            return False
        if not done.done():
            self.ran[job_id] = time.monotonic() - self.started[job_id]
            done.set_result(Outcome("cancelled"))
        return True

    def busy_jobs(self) -> set[str]:
        return set(self.held)

    def workers(self) -> dict[str, int]:
        return {"idle": self.capacity - len(self.held), "busy": len(self.held), "starting": 0}

    def audit(self) -> None:
        return None

    async def close(self) -> None:
        return None


def test_the_time_limit_bounds_the_sum_of_the_shards_run_times(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store(tmp_path / "jobs.db")
        # A limit of 4 s: two shards running side by side use it up in 2 s, well before
        # either has run 4 s (this executor enforces no limit per task).
        executor = HeldExecutor(capacity=2, time_limit=4.0)
        sampler = ProgramRef("sampler", BUILTIN, "qdispatch.server.programs.sampler")
        sched = Scheduler(
            store, Hub(lambda *_: True), executor, programs=lambda _: sampler, shard_min_pubs=4
        )
        await sched.start()
        try:
            new = NewJob(
                owner="ann",
                backend="aer_simulator",
                kind="program",
                inputs=b'{"pubs": []}',
                n_experiments=100,
                shots=1,
                n_instructions=0,
                program_id="sampler",
                pub_runs=pub_runs([1] * 100),
            )
            job, _ = store.create_job(new)
            sched.submit(job)
            for _ in range(200):
                await asyncio.sleep(0.05)
                if len(executor.held) == 2:
                    break
            assert len(executor.held) == 2, "the job did not run as two shards"
            for _ in range(600):
                current = store.job(job.id)
                if current is None or current.status != RUNNING:
                    break
                await asyncio.sleep(0.05)
            assert current is not None
            assert current.status == ERROR, current
            assert current.error is not None
            assert current.error["code"] == TIME_LIMIT_EXCEEDED
            await asyncio.sleep(0.1)
            assert not executor.held  # both shards were stopped…
            assert len(executor.ran) == 2
            assert all(ran < 4.0 for ran in executor.ran.values()), executor.ran  # …together
        finally:
            await sched.stop()
            store.close()

    asyncio.run(scenario())
