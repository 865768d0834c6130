"""The native service client (``qdispatch._native.Client``) against a real service: requests
and typed errors, idempotent submission, stream-driven waits and events, resume after a
service restart, counts conversion against qiskit, and use from a fork child."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from qiskit.result import Result

from qdispatch._native import ApiError, Client, ConnectionFailedError, counts_from_result
from qobjs import bell_qobj, slow_qobj
from support import ServiceProcess, submit, wait_final


def native(service: ServiceProcess, token: str | None = None, **kwargs: Any) -> Client:
    return Client(service.url, token or service.token, **kwargs)


def submit_native(client: Client, qobj: dict[str, Any], **fields: Any) -> dict[str, Any]:
    envelope = orjson.dumps({"backend": "aer_simulator", **fields})
    job: dict[str, Any] = orjson.loads(client.submit(envelope, orjson.dumps(qobj)))
    return job


def test_request_and_api_error_attributes(service: ServiceProcess) -> None:
    client = native(service)
    assert client.url == service.url
    info = orjson.loads(client.request("GET", "/info"))
    assert "heartbeat_seconds" in info

    with pytest.raises(ApiError) as excinfo:
        client.request("GET", "/jobs/0123456789abcdef01234567")
    err = excinfo.value
    assert (err.status, err.code) == (404, "job_not_found")
    assert err.message == "job '0123456789abcdef01234567' not found"
    assert str(err) == err.message
    assert not isinstance(err, ConnectionFailedError)

    bad = native(service, token="not-a-token")
    with pytest.raises(ApiError) as excinfo:
        bad.request("GET", "/jobs")
    assert (excinfo.value.status, excinfo.value.code) == (401, "unauthorized")
    assert excinfo.value.message == "invalid token"

    listed = orjson.loads(client.request("GET", "/jobs", query=[("limit", "1")]))
    assert "jobs" in listed


def test_connection_failure_is_typed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", "t", max_attempts=2)
    with pytest.raises(ConnectionFailedError) as excinfo:
        client.request("GET", "/info")
    assert (excinfo.value.status, excinfo.value.code) == (0, "connection_failed")
    assert f"127.0.0.1:{port}" in excinfo.value.message


def test_submit_creates_one_job_per_idempotency_key(service: ServiceProcess) -> None:
    client = native(service)
    key = uuid.uuid4().hex
    job = submit_native(client, bell_qobj(shots=32), name="native")
    assert job["status"] == "QUEUED"
    assert job["name"] == "native"
    first = orjson.loads(
        client.submit(
            orjson.dumps({"backend": "aer_simulator"}),
            orjson.dumps(bell_qobj(shots=32)),
            idempotency_key=key,
        )
    )
    again = orjson.loads(
        client.submit(
            orjson.dumps({"backend": "aer_simulator"}),
            orjson.dumps(bell_qobj(shots=32)),
            idempotency_key=key,
        )
    )
    assert first["id"] == again["id"]
    assert first["id"] != job["id"]

    with pytest.raises(ApiError) as excinfo:
        client.submit(orjson.dumps({"backend": "nope"}), orjson.dumps(bell_qobj()))
    assert (excinfo.value.status, excinfo.value.code) == (400, "unknown_backend")


def test_wait_final_returns_quickly_and_results_are_decompressed(
    service: ServiceProcess,
) -> None:
    client = native(service)
    job = submit_native(client, bell_qobj(shots=64))
    client.watch([job["id"]])
    assert client.wait_final(job["id"], timeout=60) == "DONE"
    finished = time.monotonic()
    # Already final: returns at once.
    assert client.wait_final(job["id"], timeout=0) == "DONE"
    assert time.monotonic() - finished < 0.1
    assert client.last_status(job["id"]) == "DONE"
    assert client.stream_connected()
    assert client.wait_any_final([job["id"], "0" * 24], timeout=1) == [job["id"]]

    body = client.request("GET", f"/jobs/{job['id']}/results")
    result = orjson.loads(body)  # plain JSON: the deflate answer was inflated
    assert result["job_id"] == job["id"]
    assert counts_from_result(body)[0] == Result.from_dict(result).get_counts(0)

    # A second job: the stream tells the moment it ends (no 5 s polling).
    other = submit_native(client, bell_qobj(shots=16))
    status = client.wait_final(other["id"], timeout=60)
    assert status == "DONE"
    record = orjson.loads(client.request("GET", f"/jobs/{other['id']}"))
    assert record["status"] == "DONE"


def test_wait_final_times_out_with_none(service: ServiceProcess) -> None:
    client = native(service)
    start = time.monotonic()
    assert client.wait_final("f" * 24, timeout=0.3) is None
    assert 0.3 <= time.monotonic() - start < 2
    assert client.wait_any_final(["f" * 24], timeout=0.1) == []
    assert client.last_status("f" * 24) is None
    client.close()


def test_next_events_in_seq_order_without_duplicates(service: ServiceProcess) -> None:
    client = native(service)
    jobs = [submit_native(client, bell_qobj(shots=16)) for _ in range(3)]
    ids = [j["id"] for j in jobs]
    client.watch(ids)
    client.watch(ids)  # watching twice changes nothing
    for job_id in ids:
        assert client.wait_final(job_id, timeout=60) == "DONE"
    events: list[tuple[str, int, str, bytes | None]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events += client.next_events(0.5)
        if sum(1 for e in events if e[2] == "result") == len(ids):
            break
    for job_id in ids:
        mine = [e for e in events if e[0] == job_id]
        seqs = [e[1] for e in mine]
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        statuses = [orjson.loads(e[3] or b"null")["status"] for e in mine if e[2] == "status"]
        assert statuses == ["QUEUED", "RUNNING", "DONE"]
        assert mine[-1][2:] == ("result", None)  # inline_results is off
    assert client.next_events(0.05) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_stream_resumes_after_service_restart(tmp_path: Path) -> None:
    port = _free_port()
    svc = ServiceProcess(tmp_path, "--workers", "1", "--port", str(port)).start()
    try:
        # Tokens made with `token create` survive restarts (the loopback one does not).
        token = svc.token_for("alice")
        client = Client(svc.url, token)
        job = submit_native(client, slow_qobj(shots=600))
        client.watch([job["id"]])
        deadline = time.monotonic() + 30
        while client.last_status(job["id"]) != "RUNNING":
            assert time.monotonic() < deadline, "job never ran"
            time.sleep(0.02)
        svc.kill()
        svc.start()
        assert svc.url == f"http://127.0.0.1:{port}"
        assert client.wait_final(job["id"], timeout=120) == "DONE"
        events: list[tuple[str, int, str, bytes | None]] = []
        while not any(e[2] == "result" for e in events):
            got = client.next_events(5)
            assert got, events
            events += got
        seqs = [e[1] for e in events]
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        statuses = [orjson.loads(e[3] or b"null")["status"] for e in events if e[2] == "status"]
        assert statuses == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "DONE"]
        assert client.stream_connected()
        http = svc.client(token)
        assert wait_final(http, job["id"])["last_seq"] == seqs[-1]
    finally:
        svc.stop()


def _result(experiments: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "backend_name": "aer_simulator",
        "backend_version": "1",
        "qobj_id": "q",
        "job_id": "j",
        "success": True,
        "results": [{"shots": 10, "success": True, "status": "DONE", **exp} for exp in experiments],
    }


def test_counts_match_qiskit() -> None:
    result = _result(
        [
            {
                "data": {"counts": {"0x0": 1, "0x5": 2, "0x1f": 3, "0x12": 4}},
                "header": {"memory_slots": 5, "creg_sizes": [["a", 2], ["b", 1], ["c", 2]]},
            },
            {"data": {"counts": {"0x1": 5, "0x2": 5}}, "header": {"memory_slots": 6}},
            {
                "data": {"counts": {"0x3": 7}},
                "header": {"memory_slots": 3, "creg_sizes": [["c", 3]], "name": "x"},
            },
            {"data": {"counts": {"0x6": 2, "0x0": 1}}, "header": {}},
            {
                "data": {"counts": {"0x" + "f" * 30: 1, "0x1": 9}},
                "header": {"memory_slots": 130, "creg_sizes": [["big", 100], ["small", 30]]},
            },
        ]
    )
    mine = counts_from_result(orjson.dumps(result))
    qiskit_result = Result.from_dict(result)
    for i, counts in enumerate(mine):
        assert counts == dict(qiskit_result.get_counts(i)), i

    no_counts = _result([{"data": {"memory": ["0x1"]}, "header": {"memory_slots": 1}}])
    assert counts_from_result(orjson.dumps(no_counts)) == [None]


def test_counts_of_a_real_job(service: ServiceProcess) -> None:
    http = service.client()
    job = submit(http, "aer_simulator", bell_qobj(shots=100, seed_simulator=3))
    wait_final(http, job["id"])
    body = http.get(f"/jobs/{job['id']}/results").content
    assert counts_from_result(body) == [Result.from_dict(orjson.loads(body)).get_counts(0)]


# Python >= 3.12 warns about fork() in a process with threads (the runtime's); the child
# here only makes a fresh Client, which is what the warning asks for.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fork_child_uses_a_new_client(service: ServiceProcess) -> None:
    parent = native(service)
    parent.request("GET", "/info")  # the parent's runtime is running
    parent.watch(["0" * 24])
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            try:
                parent.request("GET", "/info")
            except RuntimeError as exc:
                assert "fork" in str(exc)  # noqa: PT017
            else:
                raise AssertionError("the parent's Client must refuse to work")
            child = Client(service.url, service.token)
            info = orjson.loads(child.request("GET", "/info"))
            assert "heartbeat_seconds" in info
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == 0
    parent.request("GET", "/info")  # the parent is unaffected
