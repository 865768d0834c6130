"""Sessions and batches against a real service process: their life cycle, the checks on
jobs submitted into them, the priority of dedicated sessions, ``max_time`` and restarts."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from qobjs import bell_qobj, device_bell, slow_qobj
from support import ServiceProcess, submit, wait_final, wait_status

NO_JOBS = {"queued": 0, "running": 0, "done": 0, "error": 0, "cancelled": 0}


def open_session(client: Any, backend: str = "aer_simulator", **fields: Any) -> dict[str, Any]:
    """POST /sessions; fails the test on any error answer."""
    response = client.post("/sessions", json={"backend": backend, **fields})
    assert response.status_code == 201, response.text
    session: dict[str, Any] = response.json()
    return session


def wait_session(client: Any, session_id: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll a session until it reaches ``state``."""
    deadline = time.monotonic() + timeout
    while True:
        session: dict[str, Any] = client.get(f"/sessions/{session_id}").json()
        if session["state"] == state:
            return session
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {session_id} still {session['state']} after {timeout} s")
        time.sleep(0.05)


def error_of(response: Any) -> tuple[int, str, str]:
    """(status, code, message) of an error answer."""
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"]


def test_create_get_list_close_and_cancel(service: ServiceProcess) -> None:
    client = service.client()
    session = open_session(client)
    assert set(session) == {
        "id",
        "backend",
        "mode",
        "max_time",
        "state",
        "accepting_jobs",
        "owner",
        "created",
        "started",
        "closed",
        "closed_reason",
        "jobs",
        "usage_seconds",
    }
    assert len(session["id"]) == 24
    assert session["mode"] == "dedicated"  # the default
    assert (session["state"], session["accepting_jobs"]) == ("open", True)
    # max_time: the service's default (docs/service.md, "Limits").
    assert (session["max_time"], session["started"], session["closed"]) == (3600, None, None)
    assert session["closed_reason"] is None
    assert session["jobs"] == NO_JOBS
    sid = session["id"]
    batch = open_session(client, "fake_generic_5q", mode="batch", max_time=120)
    assert (batch["mode"], batch["max_time"], batch["backend"]) == ("batch", 120, "fake_generic_5q")

    job = submit(client, "aer_simulator", bell_qobj(), session_id=sid)
    assert job["session_id"] == sid
    assert wait_final(client, job["id"])["status"] == "DONE"
    got = client.get(f"/sessions/{sid}").json()
    assert got["jobs"] == NO_JOBS | {"done": 1}
    assert got["started"] is not None  # its first job ran
    assert session["usage_seconds"] == 0
    assert got["usage_seconds"] == pytest.approx(wait_final(client, job["id"])["run_seconds"])
    listed = client.get("/jobs", params={"session_id": sid}).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]

    mine = client.get("/sessions", params={"state": "open"}).json()
    assert {sid, batch["id"]} <= {s["id"] for s in mine["sessions"]}
    on_device = client.get("/sessions", params={"backend": "fake_generic_5q"}).json()
    assert batch["id"] in {s["id"] for s in on_device["sessions"]}
    assert sid not in {s["id"] for s in on_device["sessions"]}

    closed = client.patch(f"/sessions/{sid}", json={"accepting_jobs": False})
    assert closed.status_code == 200, closed.text
    assert (closed.json()["state"], closed.json()["accepting_jobs"]) == ("closed", False)
    assert closed.json()["closed"] is not None
    assert closed.json()["jobs"] == NO_JOBS | {"done": 1}
    refused = client.post(
        "/jobs",
        content=orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(), "session_id": sid}),
    )
    assert error_of(refused) == (
        409,
        "session_closed",
        f"session '{sid}' is closed and accepts no more jobs",
    )
    again = client.patch(f"/sessions/{sid}", json={"accepting_jobs": False})
    assert error_of(again)[:2] == (409, "session_closed")
    reopen = client.patch(f"/sessions/{sid}", json={"accepting_jobs": True})
    assert error_of(reopen)[2] == f"session '{sid}' is already closed and cannot be reopened"
    assert sid in {
        s["id"] for s in client.get("/sessions", params={"state": "closed"}).json()["sessions"]
    }

    cancelled = client.delete(f"/sessions/{sid}")  # a closed session may still be cancelled
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["closed"] == closed.json()["closed"]  # when it stopped taking jobs
    assert error_of(client.delete(f"/sessions/{sid}")) == (
        409,
        "session_closed",
        f"session '{sid}' is already cancelled and cannot be cancelled",
    )
    still_open = client.patch(f"/sessions/{batch['id']}", json={"accepting_jobs": True})
    assert still_open.json()["state"] == "open"  # accepting_jobs: true on an open one: no change
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/sessions"]) == {"get", "post"}
    assert set(paths["/sessions/{session_id}"]) == {"get", "patch", "delete"}


def test_sessions_are_private(service: ServiceProcess) -> None:
    alice = service.client(service.token_for("sess-alice"))
    bob = service.client(service.token_for("sess-bob"))
    sid = open_session(alice)["id"]
    not_found = (404, "unknown_session", f"session '{sid}' not found")
    assert error_of(bob.get(f"/sessions/{sid}")) == not_found
    assert error_of(bob.patch(f"/sessions/{sid}", json={"accepting_jobs": False})) == not_found
    assert error_of(bob.delete(f"/sessions/{sid}")) == not_found
    stolen = bob.post(
        "/jobs",
        content=orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(), "session_id": sid}),
    )
    assert error_of(stolen) == not_found
    assert sid not in {s["id"] for s in bob.get("/sessions").json()["sessions"]}
    assert error_of(alice.get("/sessions/nope")) == (
        404,
        "unknown_session",
        "session 'nope' not found",
    )
    assert alice.get(f"/sessions/{sid}").json()["state"] == "open"  # bob changed nothing


def test_jobs_must_be_on_the_sessions_backend(service: ServiceProcess) -> None:
    client = service.client()
    sid = open_session(client, "aer_simulator")["id"]
    response = client.post(
        "/jobs",
        content=orjson.dumps(
            {"backend": "fake_generic_5q", "qobj": device_bell(), "session_id": sid}
        ),
    )
    assert error_of(response) == (
        400,
        "session_backend_mismatch",
        f"session '{sid}' runs on backend 'aer_simulator', not on 'fake_generic_5q'",
    )
    assert client.get(f"/sessions/{sid}").json()["jobs"] == NO_JOBS


def test_run_mode_says_which_jobs_are_dedicated(service: ServiceProcess) -> None:
    client = service.client()
    dedicated = open_session(client, mode="dedicated")["id"]
    batch = open_session(client, mode="batch")["id"]
    modes = {}
    for sid in (dedicated, batch, None):
        job = submit(client, "aer_simulator", bell_qobj(shots=8), session_id=sid)
        modes[sid] = client.get(f"/jobs/{job['id']}").json()["run_mode"]
    assert modes == {dedicated: "dedicated", batch: "fairshare", None: "fairshare"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "message"),
    [
        ("POST", "/sessions", {}, 400, "invalid_request", "body.backend: Field required"),
        (
            "POST",
            "/sessions",
            {"backend": "no_such_backend"},
            400,
            "unknown_backend",
            "unknown backend 'no_such_backend' (available: aer_simulator,",
        ),
        (
            "POST",
            "/sessions",
            {"backend": "aer_simulator", "mode": "exclusive"},
            400,
            "invalid_request",
            "body.mode: Input should be 'dedicated' or 'batch'",
        ),
        (
            "POST",
            "/sessions",
            {"backend": "aer_simulator", "max_time": 0},
            400,
            "invalid_request",
            "body.max_time: Input should be greater than 0",
        ),
        (
            "POST",
            "/sessions",
            {"backend": "aer_simulator", "max_time": -5},
            400,
            "invalid_request",
            "body.max_time: Input should be greater than 0",
        ),
        (
            "POST",
            "/sessions",
            {"backend": "aer_simulator", "max_time": "10"},
            400,
            "invalid_request",
            "body.max_time: Input should be a valid number",
        ),
        (
            "POST",
            "/sessions",
            {"backend": "aer_simulator", "max_time": True},
            400,
            "invalid_request",
            "body.max_time: Input should be a valid number",
        ),
        (
            "POST",
            "/sessions",
            {"backend": "aer_simulator", "ttl": 5},
            400,
            "invalid_request",
            "body.ttl: Extra inputs are not permitted",
        ),
        ("POST", "/sessions", [1, 2], 400, "invalid_request", "body: Input should be"),
        ("PATCH", "/sessions/{sid}", {}, 400, "invalid_request", "body.accepting_jobs: Field"),
        (
            "PATCH",
            "/sessions/{sid}",
            {"accepting_jobs": "no"},
            400,
            "invalid_request",
            "body.accepting_jobs: Input should be a valid boolean",
        ),
        ("GET", "/sessions?state=paused", None, 400, "invalid_request", "query.state: Input"),
        ("GET", "/sessions?limit=0", None, 400, "invalid_request", "query.limit: Input"),
    ],
)
def test_bad_requests_get_400_naming_the_problem(
    service: ServiceProcess,
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str,
    message: str,
) -> None:
    client = service.client()
    sid = open_session(client)["id"]
    content = None if body is None else orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    response = client.request(method, path.format(sid=sid), content=content, headers=headers)
    got_status, got_code, got_message = error_of(response)
    assert (got_status, got_code) == (status, code), got_message
    assert message in got_message
    assert client.get(f"/sessions/{sid}").json()["state"] == "open"


def test_malformed_json_body(service: ServiceProcess) -> None:
    response = service.client().post(
        "/sessions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert error_of(response)[:2] == (400, "invalid_request")
    assert "JSON decode error" in error_of(response)[2]


@pytest.mark.parametrize("mode", ["dedicated", "batch"])
def test_dedicated_sessions_go_first_batches_do_not(service_factory: Any, mode: str) -> None:
    # With one worker the default share (0.5) gives sessions no worker ahead of others
    # (test_hostile_quotas.py tests the share); a share of 1 gives them it.
    svc = service_factory("--workers", "1", "--dedicated-share", "1")
    alice = svc.client(svc.token_for("alice"))
    bob = svc.client(svc.token_for("bob"))
    # Alice has a job running, so fair share alone would put Bob's queued jobs first.
    blocker = submit(alice, "aer_simulator", slow_qobj(shots=5000))
    wait_status(alice, blocker["id"], "RUNNING")
    # Shared, so that Alice reads every position and estimate in one request.
    bob_jobs = [
        submit(bob, "aer_simulator", bell_qobj(), share_level="global")["id"] for _ in range(2)
    ]
    sid = open_session(alice, mode=mode)["id"]
    alice_jobs = [
        submit(alice, "aer_simulator", bell_qobj(), session_id=sid)["id"] for _ in range(2)
    ]
    # A closed session's queued jobs keep their place.
    assert alice.patch(f"/sessions/{sid}", json={"accepting_jobs": False}).status_code == 200

    first, then = (alice_jobs, bob_jobs) if mode == "dedicated" else (bob_jobs, alice_jobs)
    statuses = alice.post("/jobs:status", json={"ids": alice_jobs + bob_jobs}).json()["statuses"]
    queue = {j: s["queue_info"] for j, s in statuses.items()}
    assert [queue[j]["position"] for j in first + then] == [1, 2, 3, 4]
    assert (
        queue[first[0]]["estimated_start_time"]
        <= queue[first[1]]["estimated_start_time"]
        <= queue[then[0]]["estimated_start_time"]
    )
    # The list (newest first) estimates from one reading of the clock too: jobs due now
    # are not estimated later the earlier they are listed.
    listed = alice.get("/jobs", params={"status": "QUEUED"}).json()["jobs"]
    estimates = sorted(
        (j["queue_info"]["position"], j["queue_info"]["estimated_start_time"])
        for j in listed
        if j["queue_info"]
    )
    assert [position for position, _ in estimates] == [1, 2, 3, 4]  # Bob's are shared
    assert [start for _, start in estimates] == sorted(start for _, start in estimates)
    assert alice.get("/backends/aer_simulator/status").json()["pending_jobs"] == 4

    alice.post(f"/jobs/{blocker['id']}/cancel")
    starts = {j: wait_final(alice, j)["time_per_step"]["RUNNING"] for j in alice_jobs}
    starts |= {j: wait_final(bob, j)["time_per_step"]["RUNNING"] for j in bob_jobs}
    if mode == "dedicated":
        assert max(starts[j] for j in alice_jobs) < min(starts[j] for j in bob_jobs)
    else:
        # Fair share: Bob has used no execution time, Alice her blocker's. (Which goes
        # after Bob's first job depends on how long each took, so only the first is known.)
        assert min(starts[j] for j in bob_jobs) < min(starts[j] for j in alice_jobs)
    assert alice.get(f"/sessions/{sid}").json()["jobs"] == NO_JOBS | {"done": 2}


def test_cancel_cancels_queued_jobs_and_lets_the_running_one_finish(
    service_factory: Any,
) -> None:
    svc = service_factory("--workers", "1")
    client = svc.client()
    sid = open_session(client, mode="batch")["id"]
    running = submit(client, "aer_simulator", slow_qobj(shots=600), session_id=sid)["id"]
    wait_status(client, running, "RUNNING")
    queued = [submit(client, "aer_simulator", bell_qobj(), session_id=sid)["id"] for _ in range(2)]

    answer = client.delete(f"/sessions/{sid}")
    assert answer.status_code == 200, answer.text
    session = answer.json()
    assert (session["state"], session["accepting_jobs"]) == ("cancelled", False)
    assert session["jobs"] == NO_JOBS | {"running": 1, "cancelled": 2}
    for job_id in queued:
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "CANCELLED"
        assert job["last_seq"] == 2  # QUEUED, CANCELLED: published like any other change
    assert wait_final(client, running)["status"] == "DONE"
    assert client.get(f"/sessions/{sid}").json()["jobs"] == NO_JOBS | {"done": 1, "cancelled": 2}
    late = client.post(
        "/jobs",
        content=orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(), "session_id": sid}),
    )
    assert error_of(late)[:2] == (409, "session_closed")
    assert "is cancelled" in error_of(late)[2]


def test_max_time_expires_the_session_and_fails_its_queued_jobs(service_factory: Any) -> None:
    svc = service_factory("--workers", "1")
    client = svc.client()
    session = open_session(client, max_time=0.5)
    sid = session["id"]
    assert session["started"] is None  # max_time counts from the first job's start
    running = submit(client, "aer_simulator", slow_qobj(shots=600), session_id=sid)["id"]
    queued = submit(client, "aer_simulator", bell_qobj(), session_id=sid)["id"]
    wait_status(client, running, "RUNNING")

    expired = wait_session(client, sid, "expired")
    assert expired["accepting_jobs"] is False
    assert expired["started"] is not None
    assert expired["closed"] is not None
    failed = client.get(f"/jobs/{queued}").json()
    assert failed["status"] == "ERROR"
    assert failed["error"] == {
        "code": "session_expired",
        "message": f"session '{sid}' reached its max_time of 0.5 s before this job could start",
    }
    assert failed["last_seq"] == 2
    assert wait_final(client, running)["status"] == "DONE"  # running jobs finish
    assert client.get(f"/sessions/{sid}").json()["jobs"] == NO_JOBS | {"done": 1, "error": 1}
    late = client.post(
        "/jobs",
        content=orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(), "session_id": sid}),
    )
    assert error_of(late) == (
        409,
        "session_closed",
        f"session '{sid}' is expired and accepts no more jobs",
    )
    assert error_of(client.delete(f"/sessions/{sid}"))[:2] == (409, "session_closed")


def test_sessions_survive_a_restart(service_factory: Any) -> None:
    svc = service_factory("--workers", "1")
    client = svc.client()
    kept = open_session(client)["id"]
    closed = open_session(client, mode="batch")["id"]
    client.patch(f"/sessions/{closed}", json={"accepting_jobs": False})
    timed = open_session(client, max_time=1)["id"]
    wait_final(client, submit(client, "aer_simulator", bell_qobj(), session_id=timed)["id"])
    started = client.get(f"/sessions/{timed}").json()["started"]
    assert started is not None

    svc.kill()
    svc.start()
    client = svc.client()  # a restarted local service hands out a new token
    assert client.get(f"/sessions/{kept}").json()["state"] == "open"
    assert client.get(f"/sessions/{closed}").json()["state"] == "closed"
    # Its deadline comes from the store: it expires whether it ran out before or after.
    expired = wait_session(client, timed, "expired")
    assert expired["started"] == started
    assert expired["jobs"] == NO_JOBS | {"done": 1}
    assert client.get("/sessions").json()["count"] == 3

    job = submit(client, "aer_simulator", bell_qobj(), session_id=kept)
    assert wait_final(client, job["id"])["status"] == "DONE"
    assert client.get(f"/sessions/{kept}").json()["jobs"] == NO_JOBS | {"done": 1}
