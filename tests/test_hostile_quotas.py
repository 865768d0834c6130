"""Quotas a careless or hostile user with a valid token meets (docs/service.md, "Limits"):
shots and precision within the backend's limits, the work of one job, the per-user
active-job limit on by default, the size of a result, and sessions that cannot starve
other users (their share of the workers, ``max_time``'s ceiling, the idle timeout).

Every refusal is checked for its status and code, for naming the input, the value and the
limit, and for leaving nothing behind (no job, no session)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp

import qdispatch
from qdispatch import IBMInputValueError, Session, encoding
from qobjs import bell_qobj, slow_qobj
from support import ServiceProcess, submit, wait_final, wait_status
from test_sessions import open_session, wait_session

MAX_SHOTS = 100_000  # every backend of the catalog
MAX_JOB_SHOTS = 30_000_000
RESULT_LIMIT = 4096  # bytes: --max-result-mb 0.00390625


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """Default limits, 2 workers (so a dedicated session has 1 of them ahead of others)."""
    proc = ServiceProcess(tmp_path_factory.mktemp("quotas"), "--workers", "2").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A tiny result limit and a 1-second session idle timeout."""
    proc = ServiceProcess(
        tmp_path_factory.mktemp("tight"),
        "--workers",
        "1",
        "--max-result-mb",
        "0.00390625",
        "--session-idle-timeout",
        "1",
    ).start()
    yield proc
    proc.stop()


def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    return circuit


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"]


def n_jobs(client: httpx.Client) -> int:
    count: int = client.get("/jobs", params={"limit": 1}).json()["count"]
    return count


def post_program(
    client: httpx.Client, program_id: str, inputs: dict[str, Any], **fields: Any
) -> httpx.Response:
    body = {"program_id": program_id, "params": orjson.Fragment(encoding.dumps(inputs)), **fields}
    return client.post("/jobs", content=orjson.dumps(body))


def refused(client: httpx.Client, program_id: str, inputs: dict[str, Any], **fields: Any) -> str:
    """POST a program job that must be refused 400 invalid_params, creating nothing."""
    before = n_jobs(client)
    response = post_program(client, program_id, inputs, **fields)
    status, code, message = error_of(response)
    assert (status, code) == (400, "invalid_params"), response.text
    assert n_jobs(client) == before
    return message


# -- shots, precision and the work of one job ----------------------------------------------


def test_info_lists_the_limits(svc: ServiceProcess) -> None:
    info = svc.client().get("/info").json()
    assert info["max_active_jobs"] == 1000
    assert info["max_job_shots"] == MAX_JOB_SHOTS
    assert info["max_result_bytes"] == 128 * 1024 * 1024
    assert info["dedicated_share"] == 0.5
    assert (info["session_max_time"], info["session_max_time_ceiling"]) == (3600, 8 * 3600)
    assert info["session_idle_timeout"] == 300


def test_sampler_shots_over_max_shots(svc: ServiceProcess) -> None:
    client = svc.client()
    backend = {"backend": "aer_simulator"}
    message = refused(client, "sampler", {"pubs": [[bell()]], "shots": 10**15}, **backend)
    assert message == (
        f"shots {10**15} is over the max_shots of backend 'aer_simulator' ({MAX_SHOTS})"
    )
    message = refused(client, "sampler", {"pubs": [[bell()], [bell(), None, 10**15]]}, **backend)
    assert message.startswith(f"pubs[1]: shots {10**15} is over the max_shots")
    # At the limit it is accepted.
    ok = post_program(client, "sampler", {"pubs": [[bell(), None, MAX_SHOTS]]}, **backend)
    assert ok.status_code == 201, ok.text


def test_estimator_precision_floor(svc: ServiceProcess) -> None:
    client = svc.client()
    circuit = QuantumCircuit(2)
    circuit.h(0)
    pub = [circuit, SparsePauliOp("ZZ")]
    message = refused(client, "estimator", {"pubs": [pub], "precision": 1e-9})
    assert message.startswith("precision 1e-09 is under 0.00316228, the least precision backend")
    assert f"max_shots ({MAX_SHOTS})" in message
    message = refused(client, "estimator", {"pubs": [[*pub, None, 1e-200]]})
    assert message.startswith("pubs[0]: precision 1e-200 is under 0.00316228")


def test_work_of_one_job_is_bounded(svc: ServiceProcess) -> None:
    client = svc.client()
    theta = Parameter("t")
    circuit = QuantumCircuit(1)
    circuit.rx(theta, 0)
    circuit.measure_all()
    values = np.linspace(0, 1, 1000).reshape(1000, 1)
    # Every pub within max_shots, but 1,000 parameter sets x 100,000 shots in all.
    message = refused(
        client, "sampler", {"pubs": [[circuit, values, MAX_SHOTS]]}, backend="aer_simulator"
    )
    assert message == (
        f"pubs (1 pub(s) x parameter sets x shots) make {1000 * MAX_SHOTS} shots in all, over "
        f"the limit of {MAX_JOB_SHOTS} shots per job (max_job_shots); split the work into "
        "several jobs"
    )
    estimator_pub = [circuit.remove_final_measurements(inplace=False), "Z", values, 0.004]
    message = refused(client, "estimator", {"pubs": [estimator_pub]}, backend="aer_simulator")
    assert f"make {1000 * 62500} shots in all, over the limit of {MAX_JOB_SHOTS}" in message


def test_circuit_runner_shots(svc: ServiceProcess) -> None:
    client = svc.client()
    message = refused(
        client, "circuit-runner", {"circuits": [bell()], "shots": 10**6}, backend="aer_simulator"
    )
    assert (
        message == f"shots {10**6} is over the max_shots of backend 'aer_simulator' ({MAX_SHOTS})"
    )
    message = refused(
        client,
        "circuit-runner",
        {"circuits": [bell()] * 400, "shots": MAX_SHOTS},
        backend="aer_simulator",
    )
    assert "400 circuits x 100000 shots make 40000000 shots in all" in message


def test_a_backend_the_service_chooses_is_checked_too(svc: ServiceProcess) -> None:
    client = svc.client()
    message = refused(client, "sampler", {"pubs": [[bell()]], "shots": 2 * MAX_SHOTS})
    backends = [b["name"] for b in client.get("/backends").json()["backends"]]
    assert any(
        message == f"shots {2 * MAX_SHOTS} is over the max_shots of backend '{b}' ({MAX_SHOTS})"
        for b in backends
    ), message


# -- results ----------------------------------------------------------------------------------


def test_result_too_large(tight: ServiceProcess) -> None:
    client = tight.client()
    assert tight.client().get("/info").json()["max_result_bytes"] == RESULT_LIMIT
    small = submit(client, "aer_simulator", bell_qobj(shots=256))
    # 600 shots of memory take at least 3,600 bytes: under the limit, so accepted; the
    # result (counts, metadata and memory) is over it.
    big = submit(client, "aer_simulator", bell_qobj(shots=600, memory=True))
    assert wait_final(client, small["id"])["status"] == "DONE"
    job = wait_final(client, big["id"])
    assert job["status"] == "ERROR"
    assert job["error"]["code"] == "result_too_large"
    size = int(job["error"]["message"].split()[4])
    assert size > RESULT_LIMIT
    assert job["error"]["message"].startswith(
        f"the job's result is {size} bytes, over the limit of {RESULT_LIMIT} bytes"
    )
    assert error_of(client.get(f"/jobs/{big['id']}/results"))[:2] == (409, "job_has_no_result")


def test_memory_that_cannot_fit_is_refused_up_front(tight: ServiceProcess) -> None:
    client = tight.client()
    response = client.post(
        "/jobs",
        content=orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(1000, memory=True)}),
    )
    assert error_of(response) == (
        400,
        "invalid_qobj",
        "config.memory is true: the memory of 1000 shots takes at least 6000 bytes, over the "
        f"result limit of {RESULT_LIMIT} bytes (max_result_bytes)",
    )
    message = refused(
        client, "circuit-runner", {"circuits": [bell()], "shots": 1000, "memory": True}
    )
    assert message.startswith("memory: the memory of 1000 shots takes at least 6000 bytes")


# -- sessions -------------------------------------------------------------------------------


def test_max_time_has_a_default_and_a_ceiling(svc: ServiceProcess) -> None:
    client = svc.client()
    assert open_session(client)["max_time"] == 3600
    assert open_session(client, max_time=8 * 3600)["max_time"] == 8 * 3600
    before = client.get("/sessions").json()["count"]
    response = client.post("/sessions", json={"backend": "aer_simulator", "max_time": 28801})
    assert error_of(response) == (
        400,
        "invalid_request",
        "max_time 28801 s is over this service's ceiling of 28800 s",
    )
    assert client.get("/sessions").json()["count"] == before
    # The client's Session passes max_time on and says what the service answered.
    with qdispatch.connect(svc.url, token=svc.token) as service:
        with pytest.raises(IBMInputValueError, match="ceiling of 28800 s"):
            Session("aer_simulator", max_time="9h", service=service)
        with Session("aer_simulator", service=service) as session:
            assert session.details()["max_time"] == 3600
    assert client.get("/sessions").json()["count"] == before + 1


def test_idle_session_is_closed(tight: ServiceProcess) -> None:
    client = tight.client()
    sid = open_session(client)["id"]
    # A job that runs longer than the idle timeout: the session is busy meanwhile. (Its
    # result is over this service's tiny result limit: how it ends does not matter here.)
    job = submit(client, "aer_simulator", slow_qobj(shots=300), session_id=sid)
    steps = wait_final(client, job["id"])["time_per_step"]
    session = wait_session(client, sid, "closed", timeout=20)
    assert session["closed_reason"] == "idle: no job queued or running for 1 s"
    assert session["closed"] > max(steps.values())  # not while its job ran
    before = n_jobs(client)
    response = client.post(
        "/jobs",
        content=orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(), "session_id": sid}),
    )
    assert error_of(response) == (
        409,
        "session_closed",
        f"session '{sid}' is closed (idle: no job queued or running for 1 s) and accepts no "
        "more jobs",
    )
    assert n_jobs(client) == before


def test_a_dedicated_session_cannot_starve_others(svc: ServiceProcess) -> None:
    alice = svc.client()
    bob = svc.client(svc.token_for("bob"))
    sid = open_session(alice)["id"]
    flood = [
        submit(alice, "aer_simulator", slow_qobj(shots=100), session_id=sid)["id"] for _ in range(6)
    ]
    wait_status(alice, flood[1], "RUNNING")  # both workers busy with the session's jobs
    bob_job = submit(bob, "aer_simulator", bell_qobj())["id"]
    info = bob.get(f"/jobs/{bob_job}").json()
    if info["status"] == "QUEUED":
        # One worker takes the session's jobs ahead of others; the other goes by fair
        # share, where Bob, with nothing running, comes first.
        assert info["queue_info"]["position"] == 1
    bob_start = wait_final(bob, bob_job)["time_per_step"]["RUNNING"]
    starts = [wait_final(alice, j)["time_per_step"]["RUNNING"] for j in flood]
    # With absolute priority Bob would start after all six; here right after the first
    # of the two running ends.
    assert sum(start > bob_start for start in starts) >= 3, (bob_start, starts)


# -- active jobs (last: it leaves its user's jobs queued) -------------------------------------


def test_active_jobs_are_limited_by_default(svc: ServiceProcess) -> None:
    flooder = svc.client(svc.token_for("flooder"))
    # Both workers busy for a while, so that the jobs stay queued.
    blockers = [submit(flooder, "aer_simulator", slow_qobj(shots=5000))["id"] for _ in range(2)]
    for blocker in blockers:
        wait_status(flooder, blocker, "RUNNING")
    body = orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(shots=8)})
    clients = [svc.client(flooder.headers["authorization"][7:]) for _ in range(4)]

    def post(i: int) -> int:
        return clients[i % 4].post("/jobs", content=body).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(post, range(998)))
    assert codes.count(201) == 998  # with the blockers: 1,000 active
    response = flooder.post("/jobs", content=body)
    status, code, message = error_of(response)
    assert (status, code) == (429, "active_job_limit")
    assert message.startswith("user 'flooder' has 1000 active jobs, the limit is 1000")
    assert response.json()["error"]["limit"] == 1000
    # Another user is not held up by it.
    assert submit(svc.client(), "aer_simulator", bell_qobj())["status"] == "QUEUED"
