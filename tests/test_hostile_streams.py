"""One user's event streams cannot take every connection (docs/service.md, "Limits"):
streams are long-lived, so each user may hold at most ``--max-streams-per-user`` open.
Beyond that a stream whose token came in a header is refused before the upgrade (``429
stream_limit``, which qdispatch's client counts as a failed connect, and then follows its
jobs by polling); one that authenticated with a first message is closed with 4429. Another
user is never refused for it, and a freed stream can be opened again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import orjson
import pytest
from qiskit import QuantumCircuit
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

import qdispatch
from support import ServiceProcess

LIMIT = 2


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        tmp_path_factory.mktemp("streams"), "--workers", "1", "--max-streams-per-user", str(LIMIT)
    ).start()
    yield proc
    proc.stop()


def _ws_url(svc: ServiceProcess) -> str:
    return svc.url.replace("http://", "ws://") + "/stream"


@contextmanager
def _open(svc: ServiceProcess, token: str) -> Iterator[ClientConnection]:
    """A stream with its token in a header, proven open by a ping the service answers."""
    headers = {"Authorization": f"Bearer {token}"}
    with ws_connect(_ws_url(svc), additional_headers=headers) as ws:
        ws.send(orjson.dumps({"op": "ping"}).decode())
        while orjson.loads(ws.recv(timeout=10))["type"] != "pong":
            pass
        yield ws


def _refused_upgrade(svc: ServiceProcess, token: str) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as refused, _open(svc, token):
        pass
    return refused.value


def test_a_user_at_the_limit_is_refused_and_others_are_not(svc: ServiceProcess) -> None:
    alice, bob = svc.token_for("alice-streams"), svc.token_for("bob-streams")
    assert svc.client().get("/info").json()["max_streams_per_user"] == LIMIT
    with ExitStack() as held:
        for _ in range(LIMIT):
            held.enter_context(_open(svc, alice))

        # Header token: refused before the upgrade, with the code, the limit and a wait.
        response = _refused_upgrade(svc, alice).response
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        error = orjson.loads(response.body or b"{}")["error"]
        assert error["code"] == "stream_limit"
        assert error["limit"] == LIMIT
        assert "alice-streams" in error["message"]

        # First-message token: accepted, told why, and closed with 4429.
        with ws_connect(_ws_url(svc)) as ws:
            ws.send(orjson.dumps({"op": "auth", "token": alice}).decode())
            told = orjson.loads(ws.recv(timeout=10))
            assert (told["type"], told["code"]) == ("error", "stream_limit")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4429

        # Another user is not refused for alice's streams.
        held.enter_context(_open(svc, bob))

    # Closed streams are counted out once the service has seen them close.
    deadline = time.monotonic() + 30
    while True:
        try:
            with ExitStack() as again:
                for _ in range(LIMIT):
                    again.enter_context(_open(svc, alice))
            break
        except InvalidStatus:
            assert time.monotonic() < deadline, "alice's closed streams were never counted out"
            time.sleep(0.2)


def test_a_client_refused_a_stream_follows_its_job_by_polling(svc: ServiceProcess) -> None:
    token = svc.token_for("carol-streams")
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    with ExitStack() as held:
        for _ in range(LIMIT):
            held.enter_context(_open(svc, token))
        with qdispatch.connect(svc.url, token=token) as service:
            job = service.backend("aer_simulator").run(circuit, shots=200)
            counts = job.result(timeout=120).get_counts()
    assert sum(counts.values()) == 200
    assert set(counts) <= {"00", "11"}
