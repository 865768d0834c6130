"""``WS /stream``: subscriptions by id and tag, resume by sequence number, heartbeats."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from qobjs import bell_qobj
from support import ServiceProcess, submit, wait_final


@pytest.fixture(scope="module")
def streaming(tmp_path_factory: pytest.TempPathFactory) -> Any:
    svc = ServiceProcess(tmp_path_factory.mktemp("stream"), "--heartbeat", "0.3").start()
    yield svc
    svc.stop()


def open_stream(svc: ServiceProcess, token: str | None = None) -> ClientConnection:
    url = svc.url.replace("http://", "ws://") + "/stream"
    # An unbounded client queue: with a bounded one the client stops reading once it is
    # full and so never sees the service's close frame when a test hangs up mid-stream.
    headers = {"Authorization": f"Bearer {token or svc.token}"}
    return connect(url, additional_headers=headers, max_queue=None)


def next_message(ws: ClientConnection, timeout: float = 30.0) -> dict[str, Any]:
    """The next message that is not a heartbeat."""
    deadline = time.monotonic() + timeout
    while True:
        msg: dict[str, Any] = orjson.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if msg.get("type") != "heartbeat":
            return msg


def subscribe(ws: ClientConnection, **request: Any) -> dict[str, Any]:
    ws.send(orjson.dumps({"op": "subscribe", **request}).decode())
    reply = next_message(ws)
    assert reply["type"] == "subscribed", reply
    return reply


def collect_until_results(
    ws: ClientConnection, job_ids: set[str], limit: int | None = None
) -> list[dict[str, Any]]:
    """Events until every job in ``job_ids`` delivered its result (or ``limit`` events)."""
    events: list[dict[str, Any]] = []
    pending = set(job_ids)
    while pending and (limit is None or len(events) < limit):
        event = next_message(ws)
        assert "job_id" in event, event
        events.append(event)
        if event["type"] == "result":
            pending.discard(event["job_id"])
    return events


def test_replay_of_a_finished_job_then_resume_from_seq(streaming: ServiceProcess) -> None:
    client = streaming.client()
    job = submit(client, "aer_simulator", bell_qobj())
    wait_final(client, job["id"])
    with open_stream(streaming) as ws:
        subscribe(ws, job_ids=[job["id"]])
        events = collect_until_results(ws, {job["id"]})
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [e["type"] for e in events] == ["status", "status", "status", "result"]
    assert [e["data"]["status"] for e in events[:3]] == ["QUEUED", "RUNNING", "DONE"]
    assert events[3]["data"] == client.get(f"/jobs/{job['id']}/results").json()

    with open_stream(streaming) as ws:
        subscribe(ws, job_ids=[job["id"]], since={job["id"]: 2})
        rest = collect_until_results(ws, {job["id"]})
    assert [e["seq"] for e in rest] == [3, 4]


def test_tag_subscription_survives_cuts_without_loss_or_duplicates(
    streaming: ServiceProcess,
) -> None:
    client = streaming.client()
    tag = "stream-cut"
    seen: list[dict[str, Any]] = []
    since: dict[str, int] = {}
    with open_stream(streaming) as ws:
        subscribe(ws, tags=[tag])
        ids = {submit(client, "aer_simulator", bell_qobj(), tags=[tag])["id"] for _ in range(12)}
        seen += collect_until_results(ws, ids, limit=7)  # then the connection is cut
    for event in seen:
        since[event["job_id"]] = event["seq"]
    for cut in range(2):  # resume twice, cutting once more in between
        with open_stream(streaming) as ws:
            subscribe(ws, tags=[tag], since=since)
            done = {e["job_id"] for e in seen if e["type"] == "result"}
            more = collect_until_results(ws, ids - done, limit=9 if cut == 0 else None)
        seen += more
        for event in more:
            since[event["job_id"]] = event["seq"]

    per_job: dict[str, list[int]] = {}
    for event in seen:
        per_job.setdefault(event["job_id"], []).append(event["seq"])
    assert set(per_job) == ids
    for seqs in per_job.values():
        assert seqs == [1, 2, 3, 4]  # each event once, in order


def test_live_events_inline_results_off_and_unsubscribe(streaming: ServiceProcess) -> None:
    client = streaming.client()
    with open_stream(streaming) as ws:
        job = submit(client, "aer_simulator", bell_qobj())
        subscribe(ws, job_ids=[job["id"]], inline_results=False)
        events = collect_until_results(ws, {job["id"]})
        assert events[-1] == {"job_id": job["id"], "seq": 4, "type": "result", "data": None}
        ws.send(orjson.dumps({"op": "unsubscribe", "job_ids": [job["id"]]}).decode())
        ws.send(orjson.dumps({"op": "ping"}).decode())
        assert next_message(ws)["type"] == "pong"


def test_heartbeats_and_control_errors(streaming: ServiceProcess) -> None:
    with open_stream(streaming) as ws:
        assert orjson.loads(ws.recv(timeout=5))["type"] == "heartbeat"
        ws.send("{nope")
        assert "malformed message" in next_message(ws)["message"]
        ws.send(orjson.dumps({"op": "dance"}).decode())
        assert "unknown op 'dance'" in next_message(ws)["message"]
        reply = subscribe(ws, job_ids=["no-such-job"])
        assert reply["missing"] == ["no-such-job"]
        ws.send(orjson.dumps({"op": "subscribe", "job_ids": 5}).decode())
        error = next_message(ws)
        assert error["code"] == "invalid_request"
        assert "expected a list of strings, got 5" in error["message"]
        ws.send(orjson.dumps({"op": "subscribe", "job_ids": [], "since": {"a": "x"}}).decode())
        assert "integer sequence numbers" in next_message(ws)["message"]
        ws.send(orjson.dumps({"op": "ping"}).decode())
        assert next_message(ws)["type"] == "pong"  # still connected


def test_other_users_jobs_and_bad_tokens(streaming: ServiceProcess) -> None:
    job = submit(streaming.client(), "aer_simulator", bell_qobj(), tags=["private-tag"])
    eve = streaming.token_for("eve")
    with open_stream(streaming, eve) as ws:
        assert subscribe(ws, job_ids=[job["id"]])["missing"] == [job["id"]]
        subscribe(ws, tags=["private-tag"])
        with pytest.raises(TimeoutError):
            next_message(ws, timeout=1.0)  # nothing of another user's job leaks

    with open_stream(streaming, "forged") as ws:
        error = orjson.loads(ws.recv(timeout=5))
        assert error == {"type": "error", "code": "unauthorized", "message": "invalid token"}
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
