"""The short paths of a small job (issue 11, item 2), checked for correctness, never for
speed: a result that rides the event stream is the very one ``GET /jobs/{id}/results``
serves, a larger one is fetched, nobody else's stream carries it; a job seen to finish
DONE is not asked for again, yet its details are there when wanted; the estimator's pass
manager, built once per worker, serves runs with different options."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp
from qiskit.result import Result
from websockets.sync.client import ClientConnection, connect

import qdispatch
from circuits import bell
from qdispatch import Estimator, QDispatchService, Sampler, Session
from qdispatch.api import Family
from qobjs import bell_qobj, slow_qobj
from support import ServiceProcess, submit, wait_final, wait_status

# A result of 2 experiments x 1,000 shots with memory is tens of kilobytes: over this.
SMALL_INLINE_KB = 4


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        tmp_path_factory.mktemp("latency"),
        "--workers",
        "1",
        "--stream-inline-result-kb",
        str(SMALL_INLINE_KB),
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def service(svc: ServiceProcess) -> Iterator[QDispatchService]:
    with qdispatch.connect(svc.url, token=svc.token) as connected:
        yield connected


def _fetched(svc: ServiceProcess, job_id: str) -> bytes:
    response = svc.client().get(f"/jobs/{job_id}/results")
    assert response.status_code == 200, response.text
    return response.content


def _pushed(service: QDispatchService, job_id: str) -> bytes | None:
    """What the stream brought for a job, once it is final (``None``: nothing)."""
    assert service.api.wait_final(job_id, 60.0) is not None
    return service.api.client.take_result(job_id, 30.0)


def test_a_small_result_rides_the_stream_and_is_the_fetched_one(
    svc: ServiceProcess, service: QDispatchService
) -> None:
    backend = service.backend("aer_simulator")
    job = backend.run(bell(), shots=200, seed_simulator=5)
    pushed = _pushed(service, job.job_id())
    assert pushed is not None, "a result under the limit rides the stream"
    assert pushed == _fetched(svc, job.job_id())
    # Handed over once: the next ask is a fetch, and gives the same.
    assert service.api.client.take_result(job.job_id(), 0.5) is None
    assert service.api.job_results(job.job_id(), Family.IBMQ) == pushed
    # The Result the job builds from it is the fetched one.
    again = backend.run(bell(), shots=200, seed_simulator=5)
    result = again.result()
    fetched = Result.from_dict(orjson.loads(_fetched(svc, again.job_id())))
    assert result.to_dict() == fetched.to_dict()
    assert sum(result.get_counts().values()) == 200


def test_a_result_over_the_limit_is_fetched(svc: ServiceProcess, service: QDispatchService) -> None:
    backend = service.backend("aer_simulator")
    circuits = [bell(), bell()]
    job = backend.run(circuits, shots=1000, memory=True, seed_simulator=3)
    assert _pushed(service, job.job_id()) is None, "too large to ride the stream"
    fetched = orjson.loads(_fetched(svc, job.job_id()))
    assert len(orjson.dumps(fetched)) > SMALL_INLINE_KB * 1024
    result = job.result()
    assert result.to_dict() == Result.from_dict(fetched).to_dict()
    assert len(result.get_memory(0)) == 1000


def test_the_final_status_announces_a_result_only_when_one_follows(svc: ServiceProcess) -> None:
    client = svc.client()
    done = submit(client, "aer_simulator", bell_qobj())["id"]
    assert wait_final(client, done)["status"] == "DONE"
    events = client.get(f"/jobs/{done}/events").json()["events"]
    final = next(e for e in events if e["type"] == "status" and e["data"]["status"] == "DONE")
    assert final["data"]["has_result"] is True
    assert events[events.index(final) + 1]["type"] == "result"
    # A job that ends without a result (cancelled while it runs) announces none.
    cancelled = submit(client, "aer_simulator", slow_qobj())["id"]
    wait_status(client, cancelled, "RUNNING")
    assert client.post(f"/jobs/{cancelled}/cancel").status_code == 200
    assert wait_final(client, cancelled)["status"] == "CANCELLED"
    events = client.get(f"/jobs/{cancelled}/events").json()["events"]
    last_status = [e for e in events if e["type"] == "status"][-1]
    assert last_status["data"]["status"] == "CANCELLED"
    assert "has_result" not in last_status["data"]
    assert all(e["type"] != "result" for e in events)


def _open_stream(svc: ServiceProcess, token: str) -> ClientConnection:
    url = svc.url.replace("http://", "ws://") + "/stream"
    return connect(url, additional_headers={"Authorization": f"Bearer {token}"}, max_queue=None)


def _messages(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Every message (heartbeats aside) that comes within ``seconds``."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = orjson.loads(ws.recv(timeout=left))
        except TimeoutError:
            break
        if msg.get("type") != "heartbeat":
            out.append(msg)
    return out


def test_nobody_else_sees_a_result_on_their_stream(svc: ServiceProcess) -> None:
    owner = svc.client()
    other_token = svc.token_for("mallory")
    job_id = submit(owner, "aer_simulator", bell_qobj(), tags=["latency-private"])["id"]
    assert wait_final(owner, job_id)["status"] == "DONE"
    with _open_stream(svc, other_token) as theirs, _open_stream(svc, svc.token) as mine:
        request = {
            "op": "subscribe",
            "job_ids": [job_id],
            "tags": ["latency-private"],
            "inline_results": True,
        }
        theirs.send(orjson.dumps(request).decode())
        mine.send(orjson.dumps(request).decode())
        seen_by_them = _messages(theirs, 2.0)
        seen_by_me = _messages(mine, 2.0)
    assert seen_by_them[0]["type"] == "subscribed"
    assert seen_by_them[0]["missing"] == [job_id]
    assert [m for m in seen_by_them if m.get("job_id") == job_id] == []
    results = [m for m in seen_by_me if m.get("type") == "result"]
    assert len(results) == 1
    assert orjson.dumps(results[0]["data"]) == orjson.dumps(orjson.loads(_fetched(svc, job_id)))


def test_a_done_job_has_its_details_when_asked(service: QDispatchService) -> None:
    job = service.backend("aer_simulator").run(bell(), shots=100)
    job.result()
    steps = job.time_per_step()
    assert steps is not None
    assert "COMPLETED" in steps
    assert "RUNNING" in steps
    assert job.status().name == "DONE"
    assert job.error_message() is None


def test_primitive_results_ride_the_stream_and_match_the_fetched(
    svc: ServiceProcess, service: QDispatchService
) -> None:
    sampler = Sampler(mode=service.backend("aer_simulator"))
    job = sampler.run([bell()], shots=300)
    pushed = _pushed(service, job.job_id())
    assert pushed is not None
    assert pushed == _fetched(svc, job.job_id())
    counts = job.result()[0].data.c.get_counts()
    assert sum(counts.values()) == 300
    assert set(counts) <= {"00", "11"}


def test_session_jobs_take_the_same_short_path(
    svc: ServiceProcess, service: QDispatchService
) -> None:
    state = QuantumCircuit(2)
    state.h(0)
    state.cx(0, 1)
    with Session(service.backend("aer_simulator")) as session:
        estimator = Estimator(mode=session)
        for precision in (0.05, 0.1, 0.05):
            job = estimator.run([(state, SparsePauliOp("ZZ"))], precision=precision)
            pushed = _pushed(service, job.job_id())
            assert pushed is not None
            assert pushed == _fetched(svc, job.job_id())
            pub = job.result()[0]
            # The estimator built once per worker ran with this run's precision.
            assert pub.metadata["target_precision"] == precision
            assert pub.metadata["shots"] == math.ceil(1 / precision**2)
            assert float(pub.data.evs) == pytest.approx(1.0)
