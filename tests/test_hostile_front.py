"""The service's front door under attack: bodies without a token, bombs and floods of
uploads with one, a token over its request rate, and a huge result. Each is refused (or
served) without stalling ANOTHER user, who is answered within a second throughout."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import psutil
import pytest
from websockets.sync.client import connect as ws_connect

import qdispatch
from qdispatch import _native, codes
from qdispatch.api import ServiceApi
from qdispatch.exceptions import IBMQBackendApiError
from qdispatch.server.store import Store
from qobjs import bell_qobj, experiment, qobj
from support import ServiceProcess, submit, wait_final

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A service with the default limits but at most 3 big uploads at once in all, and
    results over 256 KiB not inlined in the stream."""
    svc = ServiceProcess(
        tmp_path_factory.mktemp("front"),
        "--workers",
        "1",
        "--max-uploads",
        "3",
        "--stream-inline-result-kb",
        "256",
    ).start()
    yield ready(svc)
    svc.stop()


def ready(svc: ServiceProcess) -> ServiceProcess:
    """``svc`` once it answers (the state file is written just before it listens), warm."""
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{svc.url}/info").raise_for_status()
            svc.client().get("/jobs").raise_for_status()
            return svc
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_token(svc: ServiceProcess, user: str) -> str:
    """A token for a new ``user``, made in the store as ``qdispatch token create`` does
    (without starting a process for it)."""
    store = Store(svc.db)
    try:
        return store.create_token(user)
    finally:
        store.close()


@pytest.fixture(scope="module")
def tokens(front: ServiceProcess) -> dict[str, str]:
    return {name: make_token(front, name) for name in ("mallory", "trent", "victor")}


def address(svc: ServiceProcess) -> tuple[str, int]:
    parts = urlsplit(svc.url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def open_request(svc: ServiceProcess, head: str, body: bytes = b"") -> socket.socket:
    """A raw connection that has sent ``head`` (CRLF lines, no blank line) and ``body``."""
    sock = socket.create_connection(address(svc), timeout=10)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The status, headers and JSON body of the answer on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), headers, orjson.loads(rest[:length])


@contextmanager
def watched(svc: ServiceProcess, token: str) -> Iterator[list[float]]:
    """Another user polling ``GET /jobs`` throughout the block; yields the latencies."""
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with svc.client(token) as client:
            client.get("/jobs")  # a new connection's first request is not what is measured
            while not stop.is_set():
                start = time.perf_counter()
                assert client.get("/jobs", params={"limit": 5}).status_code == 200
                latencies.append(time.perf_counter() - start)
                time.sleep(0.02)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join()
    assert latencies, "the other user was never answered"
    assert max(latencies) < 1.0, f"another user waited {max(latencies):.2f} s"


def job_count(svc: ServiceProcess, token: str) -> int:
    total: int = svc.client(token).get("/jobs", params={"limit": 1}).json()["count"]
    return total


def rss(svc: ServiceProcess) -> int:
    assert svc.proc is not None
    return int(psutil.Process(svc.proc.pid).memory_info().rss)


# -- 1. authenticate first ----------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    ["", "Authorization: Bearer not-a-token\n", "Authorization: Basic bWFsbG9yeQ==\n"],
    ids=["missing", "unknown", "malformed"],
)
def test_no_valid_token_is_refused_before_the_body(
    front: ServiceProcess, authorization: str
) -> None:
    # Only the head of a 60 MiB upload is sent: the answer must not wait for the body.
    start = time.perf_counter()
    sock = open_request(
        front,
        f"POST /jobs HTTP/1.1\nHost: x\n{authorization}Content-Type: application/json\n"
        f"Content-Length: {60 * MiB}",
    )
    with sock:
        status, headers, body = read_answer(sock)
    assert time.perf_counter() - start < 1.0
    assert (status, body["error"]["code"]) == (401, codes.UNAUTHORIZED)
    assert headers["www-authenticate"] == "Bearer"
    assert headers["connection"] == "close"  # the rest of the body is never swallowed


def test_a_whole_60_mib_body_without_a_token_is_not_read(
    front: ServiceProcess, tokens: dict[str, str]
) -> None:
    before = rss(front)
    body = b'{"backend": "aer_simulator", "pad": "' + b"x" * (60 * MiB) + b'"}'
    with watched(front, tokens["victor"]):
        for token in ("not-a-token", tokens["mallory"][:-2]):
            start = time.perf_counter()
            answer = httpx.post(
                f"{front.url}/jobs",
                content=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert time.perf_counter() - start < 3.0
            assert (answer.status_code, answer.json()["error"]["code"]) == (401, "unauthorized")
    assert rss(front) - before < 16 * MiB
    assert job_count(front, tokens["mallory"]) == 0


def test_public_routes_still_need_no_token(front: ServiceProcess) -> None:
    assert httpx.get(f"{front.url}/info").json()["rate_limit"] == 100.0
    assert httpx.get(f"{front.url}/openapi.json").status_code == 200
    assert httpx.get(f"{front.url}/docs").status_code == 200
    refused = httpx.get(f"{front.url}/jobs")
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "unauthorized")
    assert "missing bearer token" in refused.json()["error"]["message"]


def test_a_revoked_token_stops_working_within_a_second(front: ServiceProcess) -> None:
    token = make_token(front, "revoked")
    client = front.client(token)
    assert client.get("/jobs").status_code == 200  # remembered now
    with sqlite3.connect(front.db) as db:  # as an administrator's tool would
        db.execute("DELETE FROM tokens WHERE user = 'revoked'")
    time.sleep(1.05)
    refused = client.get("/jobs")
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "unauthorized")


# -- 2. bounded body reads ------------------------------------------------------------------


def test_a_gzip_bomb_is_refused_without_stalling_others(
    front: ServiceProcess, tokens: dict[str, str]
) -> None:
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"0" * MiB
    bomb = b"".join(packer.compress(zeros) for _ in range(80)) + packer.flush()
    assert len(bomb) < 1 * MiB  # 80 MiB inflated
    mallory = front.client(tokens["mallory"])
    with watched(front, tokens["victor"]):
        for _ in range(3):
            answer = mallory.post("/jobs", content=bomb, headers={"Content-Encoding": "gzip"})
            assert (answer.status_code, answer.json()["error"]["code"]) == (
                413,
                codes.PAYLOAD_TOO_LARGE,
            )
    assert job_count(front, tokens["mallory"]) == 0


def big_upload_head(token: str, size: int = 4 * MiB) -> str:
    return (
        f"POST /jobs HTTP/1.1\nHost: x\nAuthorization: Bearer {token}\n"
        f"Content-Type: application/json\nContent-Length: {size}"
    )


def test_concurrent_big_uploads_are_bounded(front: ServiceProcess, tokens: dict[str, str]) -> None:
    """20 slow 4 MiB uploads from one user: two are read, the rest refused at once with
    429 upload_limit; another user's big upload takes the last slot of 3, a second one
    is refused 503 service_busy; a third user is still served within a second."""
    start = b'{"backend": "aer_simulator", "pad": "'
    with watched(front, tokens["victor"]):
        socks = [open_request(front, big_upload_head(tokens["mallory"]), start) for _ in range(20)]
        time.sleep(0.5)
        refused = []
        for sock in socks:
            sock.settimeout(0.3)
            with contextlib.suppress(TimeoutError):  # being read: its slot is held
                refused.append(read_answer(sock))
        assert len(refused) == 18
        for status, headers, body in refused:
            assert (status, body["error"]["code"]) == (429, codes.UPLOAD_LIMIT)
            assert int(headers["retry-after"]) >= 1
        trent = [open_request(front, big_upload_head(tokens["trent"]), start) for _ in range(2)]
        time.sleep(0.3)
        trent[1].settimeout(2)
        status, headers, body = read_answer(trent[1])
        assert (status, body["error"]["code"]) == (503, codes.SERVICE_BUSY)
        assert int(headers["retry-after"]) >= 1
        for sock in [*socks, *trent]:
            sock.close()
    assert job_count(front, tokens["mallory"]) == 0
    # The slots came back: a big body is read again.
    answer = front.client(tokens["mallory"]).post("/jobs", content=start + b"x" * 2 * MiB + b'"}')
    assert answer.status_code == 400  # read, then refused for what it says


# -- 3. the request rate ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A service allowing 4 requests/s per user, 4 at once."""
    svc = ServiceProcess(
        tmp_path_factory.mktemp("slow"), "--workers", "1", "--rate-limit", "4", "--rate-burst", "4"
    ).start()
    yield ready(svc)
    svc.stop()


def test_a_user_over_their_rate_gets_429_and_another_does_not(slow: ServiceProcess) -> None:
    mallory = slow.client(make_token(slow, "mallory"))
    victor = slow.client(make_token(slow, "victor"))
    answers = [mallory.get("/jobs") for _ in range(8)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    for answer in limited:
        assert answer.json()["error"]["code"] == codes.RATE_LIMITED
        assert int(answer.headers["retry-after"]) >= 1
    body = orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj()})
    refused = mallory.post("/jobs", content=body)
    assert refused.status_code == 429
    assert job_count(slow, slow.token) == 0
    assert victor.get("/jobs").status_code == 200
    assert mallory.get("/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_the_client_waits_out_the_rate_limit(slow: ServiceProcess) -> None:
    token = make_token(slow, "patient")
    start = time.perf_counter()
    with qdispatch.connect(slow.url, token=token) as service:
        for _ in range(10):
            assert service.api.info()["rate_limit"] == 4.0  # public: never limited
            service.api.backends()
    assert time.perf_counter() - start > 1.0  # 10 requests at 4/s after a burst of 4


def test_an_exhausted_rate_limit_is_the_documented_api_error(slow: ServiceProcess) -> None:
    token = make_token(slow, "hasty")
    api = ServiceApi(slow.url, token)
    api._client = _native.Client(slow.url, token, max_attempts=1)  # no retry left

    def flood() -> None:
        for _ in range(10):
            api.backends()

    with pytest.raises(IBMQBackendApiError) as caught:  # what a backends call documents
        flood()
    assert (caught.value.status, caught.value.code) == (429, codes.RATE_LIMITED)
    assert "over the service's rate of 4 requests/s" in caught.value.message
    api.close()


# -- 4. big results ----------------------------------------------------------------------------


def big_memory_qobj(n_experiments: int, shots: int) -> dict[str, Any]:
    insts = [{"name": "h", "qubits": [q]} for q in range(5)]
    insts.append({"name": "measure", "qubits": list(range(5)), "memory": list(range(5))})
    return qobj(
        [experiment(f"m{i}", 5, insts) for i in range(n_experiments)], shots=shots, memory=True
    )


def test_a_big_memory_result_does_not_stall_others(
    front: ServiceProcess, tokens: dict[str, str]
) -> None:
    owner = front.client(tokens["trent"])
    headers = {"Authorization": f"Bearer {tokens['trent']}"}
    url = front.url.replace("http", "ws", 1) + "/stream"
    with (
        ws_connect(url, additional_headers=headers, max_size=None) as ws,
        watched(front, tokens["victor"]),
    ):
        job = submit(owner, "aer_simulator", big_memory_qobj(20, 10_000))
        ws.send(
            orjson.dumps(
                {"op": "subscribe", "job_ids": [job["id"]], "inline_results": True}
            ).decode()
        )
        result_event = wait_for(ws, lambda m: m.get("type") == "result")
        assert wait_final(owner, job["id"], timeout=120)["status"] == "DONE"
    # Too large to inline: the client is told to fetch it.
    assert result_event["data"] is None
    assert result_event["too_large"] is True
    plain = owner.get(f"/jobs/{job['id']}/results", headers={"Accept-Encoding": "identity"})
    result = plain.json()
    assert len(plain.content) > MiB  # inflated off the loop, piecewise
    assert len(result["results"]) == 20
    assert len(result["results"][0]["data"]["memory"]) == 10_000


def wait_for(ws: Any, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        message = orjson.loads(ws.recv(timeout=120))
        if match(message):
            return dict(message)
    raise TimeoutError("no such message")


def test_small_results_are_still_inlined(front: ServiceProcess, tokens: dict[str, str]) -> None:
    owner = front.client(tokens["trent"])
    headers = {"Authorization": f"Bearer {tokens['trent']}"}
    url = front.url.replace("http", "ws", 1) + "/stream"
    with ws_connect(url, additional_headers=headers) as ws:
        job = submit(owner, "aer_simulator", bell_qobj())
        ws.send(orjson.dumps({"op": "subscribe", "job_ids": [job["id"]]}).decode())
        event = wait_for(ws, lambda m: m.get("type") == "result")
    assert event["data"]["results"][0]["shots"] == 256
    assert "too_large" not in event


def test_many_submissions_in_parallel_never_hit_the_limits(
    front: ServiceProcess, tokens: dict[str, str]
) -> None:
    """A job manager's pace (8 chunks in flight, then polling) stays under every limit."""
    client = front.client(tokens["victor"])
    body = orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj()})
    with ThreadPoolExecutor(8) as pool:
        codes_seen = list(
            pool.map(lambda _: client.post("/jobs", content=body).status_code, range(64))
        )
    assert codes_seen == [201] * 64
