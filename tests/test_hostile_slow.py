"""Clients that hold what they were given: a body that stalls or trickles (slowloris) and a
stream whose token was revoked. Each is let go in bounded time, and nothing else waits on it.
"""

from __future__ import annotations

import resource
import socket
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from qdispatch import codes
from qdispatch.api import ServiceApi
from qdispatch.exceptions import IBMQApiError
from qdispatch.server.connections import raise_open_files_limit
from qdispatch.server.store import Store
from support import ServiceProcess, wait_final
from test_hostile_front import (
    MiB,
    address,
    big_upload_head,
    job_count,
    make_token,
    open_request,
    read_answer,
    ready,
    watched,
)

GRACE = 1.0
MIN_RATE_KB = 64


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A service whose bodies must come at 64 KiB/s after a second."""
    service = ServiceProcess(
        tmp_path_factory.mktemp("slow-bodies"),
        "--workers",
        "1",
        "--body-grace",
        str(GRACE),
        "--body-min-rate-kb",
        str(MIN_RATE_KB),
    ).start()
    yield ready(service)
    service.stop()


def small_head(token: str, length: int) -> str:
    return (
        "POST /jobs HTTP/1.1\nHost: x\nContent-Type: application/json\n"
        f"Authorization: Bearer {token}\nContent-Length: {length}"
    )


def test_a_stalled_big_upload_is_cut_and_frees_its_slot(svc: ServiceProcess) -> None:
    """Two stalled 4 MiB uploads hold the user's two upload slots; both are answered 408
    request_timeout once the rate is missed, and the user's next big body is read."""
    token = make_token(svc, "stalling")
    start = b'{"backend": "aer_simulator", "pad": "'
    with watched(svc, make_token(svc, "bystander")):
        socks = [open_request(svc, big_upload_head(token), start) for _ in range(2)]
        time.sleep(0.3)
        third = open_request(svc, big_upload_head(token), start)
        third.settimeout(5)
        assert read_answer(third)[2]["error"]["code"] == codes.UPLOAD_LIMIT  # slots held
        for sock in socks:
            sock.settimeout(GRACE + 10)
            status, headers, body = read_answer(sock)
            assert (status, body["error"]["code"]) == (408, codes.REQUEST_TIMEOUT)
            assert "too slow" in body["error"]["message"]
            assert headers.get("connection") == "close"
            sock.close()
        third.close()
    assert job_count(svc, token) == 0
    answer = svc.client(token).post("/jobs", content=start + b"x" * 2 * MiB + b'"}')
    assert answer.status_code == 400  # the slot came back: read, then refused for its content


def test_a_trickling_body_is_cut(svc: ServiceProcess) -> None:
    """A small body sent a byte every 0.2 s falls under the rate after the grace."""
    token = make_token(svc, "trickler")
    sock = open_request(svc, small_head(token, 10_000))
    sock.settimeout(0.2)
    began = time.monotonic()
    answer = None
    while answer is None and time.monotonic() - began < GRACE + 10:
        try:
            sock.sendall(b" ")
            answer = read_answer(sock)
        except (TimeoutError, BlockingIOError):
            continue
        except (BrokenPipeError, ConnectionResetError):  # answered and closed meanwhile
            break
    if answer is None:
        sock.settimeout(5)
        answer = read_answer(sock)
    status, _, body = answer
    assert (status, body["error"]["code"]) == (408, codes.REQUEST_TIMEOUT)
    sock.close()


def test_a_body_sent_at_a_normal_pace_is_read(svc: ServiceProcess) -> None:
    """A 2 MiB body sent in pieces over two seconds (1 MiB/s) is well above the floor."""
    token = make_token(svc, "steady")
    payload = b'{"backend": "aer_simulator", "pad": "' + b"x" * 2 * MiB + b'"}'
    sock = open_request(svc, big_upload_head(token, len(payload)))
    for i in range(0, len(payload), 256 * 1024):
        sock.sendall(payload[i : i + 256 * 1024])
        time.sleep(0.25)
    sock.settimeout(10)
    status, _, body = read_answer(sock)
    assert (status, body["error"]["code"]) == (400, codes.INVALID_REQUEST)
    sock.close()


def test_limits_are_published(svc: ServiceProcess) -> None:
    info = svc.client().get("/info").json()
    assert info["body_min_rate"] == MIN_RATE_KB * 1024
    assert info["body_grace_seconds"] == GRACE


def test_a_revoked_tokens_stream_fails_its_waiters(svc: ServiceProcess) -> None:
    """The service closes a revoked token's stream (4401); a client waiting on it gets the
    refusal at once instead of waiting for ever on a stream that keeps reconnecting."""
    token = make_token(svc, "revoked-stream")
    api = ServiceApi(svc.url, token)
    try:
        api.watch(["no-such-job"])
        deadline = time.monotonic() + 10
        while not api.stream_connected():
            assert time.monotonic() < deadline, "the stream never opened"
            time.sleep(0.05)
        store = Store(svc.db)
        try:
            assert store.revoke_token(token) is not None
        finally:
            store.close()
        # Refused, not timed out (a timeout answers None): the 4401 ended the wait.
        with pytest.raises(IBMQApiError) as raised:
            api.wait_final("no-such-job", timeout=30)
        assert (raised.value.status, raised.value.code) == (401, codes.UNAUTHORIZED)
        assert "event stream" in str(raised.value)
    finally:
        api.close()


# -- a program that publishes without end ------------------------------------------------

FLOOD = """
def main(backend, publisher, count=200, size=10_000):
    for i in range(count):
        publisher.publish("x" * size)
        print("line", i)
    return {"published": count}
"""


@pytest.fixture(scope="module")
def flooded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A service with a program that publishes 2 MB of interim results, and a 0.5 MiB
    budget of events per job."""
    root = tmp_path_factory.mktemp("flood")
    (root / "programs").mkdir()
    (root / "programs" / "flood.py").write_text(FLOOD)
    service = ServiceProcess(
        root,
        "--workers",
        "1",
        "--programs-dir",
        str(root / "programs"),
        "--max-job-events-mb",
        "0.5",
    ).start()
    yield ready(service)
    service.stop()


def test_a_jobs_events_stop_at_their_budget(flooded: ServiceProcess) -> None:
    """The events past the budget are dropped, once said in the log; the job ends DONE with
    its result, and what is stored for it stays within the budget."""
    client = flooded.client()
    body = {"program_id": "flood", "backend": "aer_simulator", "params": {}}
    created = client.post("/jobs", json=body)
    assert created.status_code == 201, created.text
    job = wait_final(client, created.json()["id"])
    assert job["status"] == "DONE", job
    with sqlite3.connect(flooded.db) as db:
        stored = db.execute(
            "SELECT count(*), sum(length(data)) FROM events WHERE job_id = ? "
            "AND type IN ('interim', 'log')",
            (job["id"],),
        ).fetchone()
    assert stored[0] < 200
    assert stored[1] <= 512 * 1024 + 1024
    logs = client.get(f"/jobs/{job['id']}/logs").text
    assert "passed the service's limit of 524288 bytes" in logs
    assert client.get(f"/jobs/{job['id']}/results").status_code == 200


STAGED = """
import time

def main(backend, publisher, count=30, size=10_000, pause=8.0):
    for i in range(count):
        publisher.publish("x" * size)
    time.sleep(pause)
    return {"published": count}
"""


def _stored_events(db: object, job_id: str) -> tuple[int, int]:
    with sqlite3.connect(str(db)) as conn:
        count, size = conn.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0) FROM events WHERE job_id = ? "
            "AND type IN ('interim', 'log')",
            (job_id,),
        ).fetchone()
    return int(count), int(size)


def test_a_requeued_job_keeps_its_event_budget(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The budget is the job's, not an attempt's: a job that published 300 kB before the
    service died may publish only what is left of its 0.5 MiB when it runs again."""
    root = tmp_path_factory.mktemp("budget-requeued")
    (root / "programs").mkdir()
    (root / "programs" / "staged.py").write_text(STAGED)
    service = ServiceProcess(
        root, "--workers", "1", "--programs-dir", str(root / "programs"),
        "--max-job-events-mb", "0.5",
    ).start()  # fmt: skip
    try:
        client = ready(service).client()
        body = {"program_id": "staged", "backend": "aer_simulator", "params": {}}
        created = client.post("/jobs", json=body)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 60
        while _stored_events(service.db, job_id)[0] < 30:  # the first attempt's, all in
            assert time.monotonic() < deadline, "the program never published"
            time.sleep(0.1)
        service.kill()  # while it sleeps: it runs again after the restart
        service.start()
        client = ready(service).client()
        job = wait_final(client, job_id, timeout=120)
        assert job["status"] == "DONE", job
        count, size = _stored_events(service.db, job_id)
        assert count < 60  # not both attempts' 30
        assert size <= 512 * 1024
        assert (
            "passed the service's limit of 524288 bytes" in client.get(f"/jobs/{job_id}/logs").text
        )
    finally:
        service.stop()


# -- connections that never become requests ------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A service closing connections whose headers take over a second, with room for 40
    connections at once."""
    service = ServiceProcess(
        tmp_path_factory.mktemp("slow-headers"),
        "--workers",
        "1",
        "--header-timeout",
        "1",
        "--max-connections",
        "40",
    ).start()
    yield ready(service)
    service.stop()


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_connections_that_never_finish_their_headers_are_closed(guarded: ServiceProcess) -> None:
    """30 connections, some silent and some sending half a header line, are closed after
    the header timeout; another user is answered throughout."""
    host, port = address(guarded)
    with watched(guarded, make_token(guarded, "bystander")):
        socks = [socket.create_connection((host, port), timeout=5) for _ in range(30)]
        for sock in socks[::2]:
            sock.sendall(b"GET /jobs HTTP/1.1\r\nHost: x\r\nAuthoriz")
        assert all(closed_by_peer(sock, 10) for sock in socks)  # closed, not left open
        for sock in socks:
            sock.close()


def test_a_full_house_gets_503_and_frees_up(guarded: ServiceProcess) -> None:
    """Past --max-connections, a new request is answered 503 at once; once the held
    connections are gone, requests are served again."""
    host, port = address(guarded)
    held = [socket.create_connection((host, port), timeout=5) for _ in range(45)]
    try:
        time.sleep(0.3)
        refused = httpx.get(f"{guarded.url}/info", timeout=5)
        assert refused.status_code == 503
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while httpx.get(f"{guarded.url}/info", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the connections were never given back"
        time.sleep(0.1)


def test_the_open_files_limit_is_raised_within_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        wanted = min(1024, hard)
        assert raise_open_files_limit(wanted) == wanted
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == wanted
        assert raise_open_files_limit(16) == wanted  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
