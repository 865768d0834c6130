"""The shorter paths of a small job (issue 11, item 2, round two), checked for what they
must keep, never for speed: a job that starts at its submission still has its events in
order and its own inputs, and jobs that find no free worker still queue; a worker's
messages reach the service whole over the loop-watched pipe, small or large; a check of
a program's inputs that skips the "is its process up" round trip never counts a process
start against its time, and still refuses what it refused; the primitives run in the
worker's thread give what ``run().result()`` gave; local workers run qiskit-aer's jobs in
their own thread with the same results and errors; a circuit job still measures its
backend once its DONE is out."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import orjson
import pytest
from qiskit import QuantumCircuit
from qiskit.primitives import BackendEstimatorV2
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.primitives.containers.sampler_pub import SamplerPub
from qiskit_aer import AerSimulator
from qiskit_aer.jobs import AerJob
from qiskit_aer.primitives import SamplerV2 as AerSampler

from qdispatch import codes as E
from qdispatch import encoding
from qdispatch.server.errors import ServiceError
from qdispatch.server.executors import INLINE_MESSAGE_BYTES, InlineExecutor
from qdispatch.server.programs import Limits
from qdispatch.server.programs.checker import InputChecker
from qdispatch.server.programs.common import run_here
from qobjs import bell_qobj, slow_qobj
from support import ServiceProcess, submit, wait_final
from test_service_stream import next_message, open_stream, subscribe

# A program whose interim result and result are each over the size a worker sends as
# it is (INLINE_MESSAGE_BYTES), between small ones.
PROGRAMS = {
    "bulky": f'''
        """Publishes a small, a large and a small interim result; returns a large value."""

        def estimate(inputs):
            return 1, 0

        def main(backend, publisher, size={4 * INLINE_MESSAGE_BYTES}):
            publisher.publish("first")
            publisher.publish("x" * size)
            publisher.publish("last")
            return {{"blob": "y" * (2 * size), "size": size}}
    ''',
}


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("latency-fast")
    directory = root / "programs"
    directory.mkdir()
    for program_id, source in PROGRAMS.items():
        (directory / f"{program_id}.py").write_text(textwrap.dedent(source))
    proc = ServiceProcess(root, "--workers", "1", "--programs-dir", str(directory)).start()
    yield proc
    proc.stop()


def _ran_once(client: Any, job_id: str) -> None:
    """The job's statuses were QUEUED, RUNNING, DONE: never requeued (a pipe read that
    failed would look like a worker that died, and run the job again)."""
    events = client.get(f"/jobs/{job_id}/events").json()["events"]
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["QUEUED", "RUNNING", "DONE"], events


def _statuses(ws: Any, job_ids: set[str]) -> dict[str, list[tuple[int, str]]]:
    """(seq, status) of each job's status events, as they arrive, until all are final."""
    seen: dict[str, list[tuple[int, str]]] = {job_id: [] for job_id in job_ids}
    final = {"DONE", "ERROR", "CANCELLED"}
    while any(not s or s[-1][1] not in final for s in seen.values()):
        msg = next_message(ws, timeout=60)
        if msg.get("type") == "status" and msg.get("job_id") in seen:
            seen[msg["job_id"]].append((msg["seq"], msg["data"]["status"]))
    return seen


# -- a job starts at its submission ------------------------------------------------------


def test_jobs_started_at_submission_have_their_events_in_order(svc: ServiceProcess) -> None:
    client = svc.client()
    with open_stream(svc) as ws:
        subscribe(ws, tags=["fast-order"])
        ids = [
            submit(client, "aer_simulator", bell_qobj(), tags=["fast-order"])["id"]
            for _ in range(5)
        ]
        seen = _statuses(ws, set(ids))
    for job_id in ids:
        assert seen[job_id] == [(1, "QUEUED"), (2, "RUNNING"), (3, "DONE")], seen[job_id]


def test_each_job_started_at_submission_runs_its_own_inputs(svc: ServiceProcess) -> None:
    client = svc.client()
    jobs = {
        shots: submit(client, "aer_simulator", bell_qobj(shots=shots))["id"] for shots in (7, 9)
    }
    for shots, job_id in jobs.items():
        assert wait_final(client, job_id)["status"] == "DONE"
        result = client.get(f"/jobs/{job_id}/results").json()
        assert result["job_id"] == job_id
        assert sum(result["results"][0]["data"]["counts"].values()) == shots


def test_jobs_that_find_the_worker_busy_queue_and_all_run(svc: ServiceProcess) -> None:
    client = svc.client()
    slow = submit(client, "aer_simulator", slow_qobj())["id"]
    quick = [submit(client, "aer_simulator", bell_qobj())["id"] for _ in range(3)]
    for job_id in [slow, *quick]:
        assert wait_final(client, job_id)["status"] == "DONE"


# -- the worker's pipe, watched by the loop ----------------------------------------------


def test_a_circuit_result_over_the_inline_size_arrives_whole(svc: ServiceProcess) -> None:
    client = svc.client()
    shots = 4000  # with memory: tens of kilobytes, over INLINE_MESSAGE_BYTES
    job_id = submit(client, "aer_simulator", bell_qobj(shots=shots, memory=True))["id"]
    job = wait_final(client, job_id)
    assert job["status"] == "DONE", job
    raw = client.get(f"/jobs/{job_id}/results").content
    assert len(raw) > INLINE_MESSAGE_BYTES
    data = orjson.loads(raw)["results"][0]["data"]
    assert len(data["memory"]) == shots
    assert sum(data["counts"].values()) == shots
    _ran_once(client, job_id)


def test_large_and_small_messages_of_a_program_arrive_whole_and_in_order(
    svc: ServiceProcess,
) -> None:
    client = svc.client()
    body = {"program_id": "bulky", "backend": "aer_simulator", "params": {}}
    answer = client.post("/jobs", content=orjson.dumps(body))
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["id"]
    assert wait_final(client, job_id)["status"] == "DONE"
    size = 4 * INLINE_MESSAGE_BYTES
    result = encoding.loads(client.get(f"/jobs/{job_id}/results").content)
    assert result == {"blob": "y" * (2 * size), "size": size}
    interim = client.get(f"/jobs/{job_id}/interim_results").json()
    published = [encoding.loads(orjson.dumps(item)) for item in interim]
    assert published == ["first", "x" * size, "last"]
    _ran_once(client, job_id)
    # The worker is reused after a large reply: the next job runs on it.
    follow = submit(client, "aer_simulator", bell_qobj())["id"]
    assert wait_final(client, follow)["status"] == "DONE"


# -- checking a program's inputs in one round trip ---------------------------------------


def _bell_state() -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    return circuit


def _estimator_params(observable: Any) -> bytes:
    pubs = [[_bell_state(), [observable], None, None]]
    return encoding.dumps({"pubs": pubs, "precision": 0.015625, "version": 2})


LIMITS = Limits("aer_simulator", 1_000_000, 10_000_000, 64 << 20)


def test_a_check_never_counts_a_process_start_and_still_refuses() -> None:
    # A check may take 3 s; a process start (spawn, import qiskit, the programs) is not
    # counted in them, whether it is the first, one for a second check at once, or none.
    checker = InputChecker(None, processes=2, seconds=3.0)
    good = _estimator_params({"ZZ": 1.0})

    async def checks() -> list[tuple[int, int, list[int] | None]]:
        first = await asyncio.gather(
            *(checker.check("estimator", good, "aer_simulator", LIMITS) for _ in range(2))
        )
        then = [await checker.check("estimator", good, "aer_simulator", LIMITS) for _ in range(3)]
        return [*first, *then]

    async def refused() -> ServiceError:
        with pytest.raises(ServiceError) as caught:
            await checker.check(
                "estimator", _estimator_params({"ZQ": 1.0}), "aer_simulator", LIMITS
            )
        return caught.value

    try:
        assert asyncio.run(checks()) == [(1, 4096, [1])] * 5
        error = asyncio.run(refused())
        assert (error.status, error.code) == (400, E.INVALID_PARAMS)
        # The refusal left the processes as they were: the next check is answered.
        again = checker.check("estimator", good, "aer_simulator", LIMITS)
        assert asyncio.run(again) == (1, 4096, [1])
    finally:
        checker.close()


# -- the primitives, run in the worker's thread ------------------------------------------


def test_run_here_gives_what_run_result_gives() -> None:
    backend = AerSimulator()
    estimator = BackendEstimatorV2(backend=backend, options={"seed_simulator": 11})
    pubs = [EstimatorPub.coerce((_bell_state(), ["ZZ", "XX", "ZI"], None, 0.03125))]
    here, there = run_here(estimator, pubs), estimator.run(pubs).result()
    assert np.array_equal(here[0].data.evs, there[0].data.evs)
    assert np.array_equal(here[0].data.stds, there[0].data.stds)
    assert here.metadata == there.metadata
    measured = QuantumCircuit(2, 2)
    measured.h(0)
    measured.cx(0, 1)
    measured.measure([0, 1], [0, 1])
    sampler = AerSampler(seed=5)
    sampled = [SamplerPub.coerce((measured, None, 300))]
    assert (
        run_here(sampler, sampled)[0].data.c.get_counts()
        == sampler.run(sampled).result()[0].data.c.get_counts()
    )


def test_run_here_checks_the_pubs_as_run_does() -> None:
    # An Aer sampler warns of a pub without classical registers, from run() or here.
    sampler = AerSampler(seed=5)
    unmeasured = [SamplerPub.coerce((_bell_state(), None, 10))]
    with pytest.warns(UserWarning, match="no output classical registers"):
        run_here(sampler, unmeasured)


class _OnlyRun:
    """A primitive that has nothing but ``run``."""

    def run(self, pubs: list[Any]) -> Any:
        done: Future[Any] = Future()
        done.set_result(("ran", len(pubs)))
        return done


def test_run_here_takes_run_when_a_primitive_has_nothing_else() -> None:
    assert run_here(_OnlyRun(), [1, 2]) == ("ran", 2)


# -- qiskit-aer's jobs in the worker's own thread ----------------------------------------


def test_the_inline_executor_answers_done_futures() -> None:
    executor = InlineExecutor()
    ok = executor.submit(lambda a, b=0: a + b, 2, b=3)
    assert ok.done()
    assert ok.result() == 5

    def fails() -> None:
        raise ValueError("no")

    failed = executor.submit(fails)
    assert failed.done()
    with pytest.raises(ValueError, match="no"):
        failed.result()


def test_an_aer_job_run_inline_gives_the_threaded_result() -> None:
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    sim = AerSimulator()
    options = {"shots": 500, "seed_simulator": 3}
    threaded = sim.run(circuit, **options).result()
    inline = AerJob(
        sim,
        "inline",
        sim._execute_circuits_job,
        circuits=[circuit],
        run_options=options,
        executor=InlineExecutor(),
    )
    inline.submit()
    assert inline.result().get_counts() == threaded.get_counts()


def test_a_local_worker_still_reports_a_failing_simulation(svc: ServiceProcess) -> None:
    # Aer raises (an unknown simulation method) in the worker's own thread now: the job
    # fails with the backend's reason, and the worker takes the next job.
    client = svc.client()
    job_id = submit(client, "aer_simulator", bell_qobj(method="nonsense"))["id"]
    job = wait_final(client, job_id)
    assert job["status"] == "ERROR"
    assert "Invalid simulation method (nonsense)" in job["error"]["message"]
    follow = submit(client, "aer_simulator", bell_qobj())["id"]
    assert wait_final(client, follow)["status"] == "DONE"


def _stored_rate(svc: ServiceProcess) -> str | None:
    with sqlite3.connect(f"file:{svc.db}?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'rate:aer_simulator'").fetchone()
    return row[0] if row else None


def test_a_circuit_job_still_measures_its_backend_after_its_done_is_out(
    svc: ServiceProcess,
) -> None:
    # The rate's write waits for the loop's next turn (behind the streams): it is still
    # made, once the job is DONE.
    client = svc.client()
    before = _stored_rate(svc)
    job_id = submit(client, "aer_simulator", bell_qobj(shots=33))["id"]
    assert wait_final(client, job_id)["status"] == "DONE"
    deadline = time.monotonic() + 30
    while _stored_rate(svc) == before:
        assert time.monotonic() < deadline, "the backend's rate was not stored"
        time.sleep(0.05)
    assert float(_stored_rate(svc) or "nan") > 0
