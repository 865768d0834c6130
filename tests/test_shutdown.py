"""Graceful shutdown (issue 16, item 7): SIGTERM under load loses no accepted request, lets
running jobs finish within ``--drain-timeout`` or requeues them, closes streams with 1001,
and spools the outcomes the store refuses for the next start (item 1's last loose end).

Every test runs a real ``qdispatch serve`` process, signals it, checks how it exited, then
starts it again on the same store and checks what became of each job.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import stat
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from qdispatch.codes import RESULT_TOO_LARGE
from qdispatch.constants import CANCELLED, DONE, ERROR
from qdispatch.server.executors import Outcome
from qdispatch.server.spool import Spool
from qdispatch.server.store import Store
from qobjs import bell_qobj, slow_qobj
from support import ServiceProcess, submit, wait_final, wait_status
from test_faults import FakeExecutor, FaultyStore, _new_job, _scheduler, _settle

# A margin over --drain-timeout for the rest of a stop on a loaded 2-core machine: uvicorn's
# wait for requests in flight (5 s at most), stopping the workers, the store's last writes.
_EXIT_MARGIN = 30.0


def _terminate(svc: ServiceProcess, timeout: float, group: bool = False) -> tuple[int, float]:
    """SIGTERM the service (with ``group``, its worker processes too, as systemd's default
    ``KillMode=control-group`` does); its exit status and how long it took to exit."""
    assert svc.proc is not None
    children = psutil.Process(svc.proc.pid).children(recursive=True) if group else []
    start = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGTERM)
    code = svc.proc.wait(timeout)
    return code, time.monotonic() - start


def _wait_log(svc: ServiceProcess, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in svc.log():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service never logged {text!r}:\n{svc.log()}")
        time.sleep(0.05)


def _restarted(svc: ServiceProcess) -> httpx.Client:
    """Start the service again on the same store (SIGTERM drains no job in teardown)."""
    svc.start()
    return svc.client()


def _assert_done_with_result(client: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    job = wait_final(client, job_id, timeout=timeout)
    assert job["status"] == "DONE", job
    result = client.get(f"/jobs/{job_id}/results")
    assert result.status_code == 200, result.text
    counts = result.json()["results"][0]["data"]["counts"]
    assert sum(counts.values()) == job["shots"]
    return job


def _utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _stopped_line(svc: ServiceProcess) -> str:
    (line,) = [line for line in svc.log().splitlines() if "stopped: " in line]
    return line


def test_sigterm_under_load_loses_no_accepted_job(service_factory: Any) -> None:
    """Concurrent POSTs while SIGTERM arrives: every 2xx is a job in the store that ends
    DONE with its result after a restart; the running jobs finish in the drain."""
    svc = service_factory("--workers", "2", "--drain-timeout", "120")
    client = svc.client()
    # Two jobs of seconds each keep both workers busy while the storm queues behind them.
    slow = [submit(client, "aer_simulator", slow_qobj(shots=800))["id"] for _ in range(2)]
    for job_id in slow:
        wait_status(client, job_id, "RUNNING")

    accepted: list[str] = []
    answers: list[int] = []
    lock = threading.Lock()
    body = orjson.dumps(
        {"backend": "aer_simulator", "qobj": bell_qobj(shots=64), "tags": ["storm"]}
    )

    def storm() -> None:
        headers = {"Authorization": f"Bearer {svc.token}"}
        with httpx.Client(base_url=svc.url, headers=headers, timeout=60.0) as http:
            while True:
                try:
                    response = http.post("/jobs", content=body)
                except httpx.HTTPError:
                    return  # the service stopped listening (or cut this request off)
                with lock:
                    answers.append(response.status_code)
                    if 200 <= response.status_code < 300:
                        accepted.append(response.json()["id"])

    threads = [threading.Thread(target=storm, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20.0
    while len(accepted) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    signalled = datetime.now(timezone.utc)
    code, took = _terminate(svc, timeout=120 + _EXIT_MARGIN, group=True)
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    assert code == 0, svc.log()
    assert took < 120 + _EXIT_MARGIN
    assert len(accepted) >= 30, answers
    assert all(status in (200, 201) for status in answers), answers
    stopped = _stopped_line(svc)
    assert "0 requeued" in stopped, stopped
    assert "0 outcomes lost" in stopped, stopped

    client = _restarted(svc)
    stored = client.get("/jobs", params={"tags": "storm", "limit": 1000}).json()
    stored_ids = {job["id"] for job in stored["jobs"]}
    # No 2xx for a job that is not there; a job whose answer was cut off may be there too,
    # and then it is whole: it runs like the others.
    assert set(accepted) <= stored_ids
    assert stored["count"] == len(stored_ids)
    for job_id in [*slow, *stored_ids]:
        job = _assert_done_with_result(client, job_id, timeout=240)
        # None was interrupted: the drain was long enough for every running job.
        assert "REQUEUED" not in job["time_per_step"], job
        assert client.get(f"/jobs/{job_id}/metrics").json()["attempts"] == 1
    # The slow jobs were running when the signal came and finished during the drain.
    completed = [
        _utc(client.get(f"/jobs/{job_id}").json()["time_per_step"]["COMPLETED"]) for job_id in slow
    ]
    assert max(completed) > signalled


def test_a_job_past_the_drain_timeout_is_requeued_and_streams_hear_1001(
    service_factory: Any,
) -> None:
    """A job still running at the deadline is requeued without counting the attempt and
    completes after the restart; an open stream is closed with 1001, not cut."""
    drain = 1.0
    svc = service_factory("--workers", "1", "--drain-timeout", str(drain))
    client = svc.client()
    long = submit(client, "aer_simulator", slow_qobj(shots=1200))["id"]
    wait_status(client, long, "RUNNING")
    url = svc.url.replace("http", "ws", 1) + "/stream"
    headers = {"Authorization": f"Bearer {svc.token}"}
    with ws_connect(url, additional_headers=headers) as ws:
        ws.send(orjson.dumps({"op": "subscribe", "job_ids": [long]}).decode())
        assert orjson.loads(ws.recv(timeout=30))["type"] == "subscribed"
        code, took = _terminate(svc, timeout=drain + _EXIT_MARGIN)
        closed = None
        try:
            while True:
                ws.recv(timeout=30)
        except ConnectionClosed as exc:
            closed = exc
    assert code == 0, svc.log()
    assert took < drain + _EXIT_MARGIN
    assert closed is not None
    assert closed.rcvd is not None, closed
    assert closed.rcvd.code == 1001
    assert "1 requeued" in _stopped_line(svc)

    client = _restarted(svc)
    requeued = client.get(f"/jobs/{long}").json()
    assert "REQUEUED" in requeued["time_per_step"]
    job = _assert_done_with_result(client, long, timeout=240)
    # The stop's run is in the record, but not counted against the job's attempts.
    assert [a["outcome"] for a in job["attempts"]] == ["requeued", "done"]
    assert "the service stopped" in job["attempts"][0]["reason"]
    assert client.get(f"/jobs/{long}/metrics").json()["attempts"] == 1


def test_a_second_sigterm_ends_the_drain_at_once(service_factory: Any) -> None:
    drain = 600.0  # far longer than the test may take: only the second signal ends it
    svc = service_factory("--workers", "1", "--drain-timeout", str(drain))
    client = svc.client()
    long = submit(client, "aer_simulator", slow_qobj(shots=800))["id"]
    queued = submit(client, "aer_simulator", bell_qobj())["id"]
    wait_status(client, long, "RUNNING")
    assert svc.proc is not None
    start = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    _wait_log(svc, "stopping: no new job starts")
    svc.proc.send_signal(signal.SIGTERM)
    code = svc.proc.wait(_EXIT_MARGIN * 2)
    assert code == 0, svc.log()
    assert time.monotonic() - start < _EXIT_MARGIN * 2
    assert "stopping now" in svc.log()
    assert "1 requeued" in _stopped_line(svc)

    client = _restarted(svc)
    for job_id in (long, queued):
        _assert_done_with_result(client, job_id, timeout=240)
    assert client.get(f"/jobs/{long}/metrics").json()["attempts"] == 1


# The service with a store that refuses every DONE (tests/test_faults.py's FaultyStore),
# as a full disk would: the finished job's outcome can only be kept in memory, then spooled.
_REFUSING_DONE = """
import sys
sys.path.insert(0, {tests!r})
from test_faults import FaultyStore
import qdispatch.server.service as service

def refusing(path, max_bytes=None):
    store = FaultyStore(path, {{"set_status:DONE": range(1, 10**9)}}, max_bytes)
    store.armed = True
    return store

service.Store = refusing
from qdispatch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_an_outcome_the_store_refuses_at_stop_is_spooled_and_stored_on_start(
    tmp_path: Path,
) -> None:
    code_text = _REFUSING_DONE.format(tests=str(Path(__file__).parent))
    drain = 5.0
    faulty = ServiceProcess(
        tmp_path, "--workers", "1", "--drain-timeout", str(drain), launcher=("-c", code_text)
    )
    try:
        faulty.start()
        client = faulty.client()
        job_id = submit(client, "aer_simulator", bell_qobj(shots=100))["id"]
        _wait_log(faulty, f"could not store the outcome of job {job_id}")
        assert client.get(f"/jobs/{job_id}").json()["status"] == "RUNNING"
        code, took = _terminate(faulty, timeout=drain + _EXIT_MARGIN)
    finally:
        faulty.stop()
    assert code == 0, faulty.log()  # spooled is kept: nothing was lost
    assert took < drain + _EXIT_MARGIN
    assert "1 outcomes spooled, 0 outcomes lost" in _stopped_line(faulty)

    spool = tmp_path / "jobs.db.spool"
    spooled = spool / f"{job_id}.outcome"
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert stat.S_IMODE(spooled.stat().st_mode) == 0o600
    # Before the next start the store still says RUNNING: only the spool has the result.
    with contextlib.closing(sqlite3.connect(tmp_path / "jobs.db")) as db:
        (status,) = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert status == "RUNNING"

    svc = ServiceProcess(tmp_path, "--workers", "1")
    try:
        client = svc.start().client()
        job = _assert_done_with_result(client, job_id, timeout=60)
        # Stored from the spool, not run again.
        assert "REQUEUED" not in job["time_per_step"]
        assert [a["outcome"] for a in client.get(f"/jobs/{job_id}").json()["attempts"]] == ["done"]
        assert not spooled.exists()
        assert f"stored the outcome of job {job_id} spooled by the last stop" in svc.log()
    finally:
        svc.stop()


# -- in process: the scheduler's drain and spool, with the fake executor of test_faults ----


def test_the_spool_keeps_what_the_store_refused_until_the_next_start(tmp_path: Path) -> None:
    """Two outcomes the store refuses at stop (a result, and one over max_result_bytes)
    are spooled; a scheduler on the same store and spool stores both before dispatching,
    drops the file of a job that ended meanwhile, and leaves an unreadable file alone."""
    spool = Spool(tmp_path / "jobs.db.spool")
    result = orjson.dumps({"success": True, "results": [{"success": True}]})
    big = orjson.dumps({"success": True, "results": [{"success": True, "pad": "x" * 400}]})

    async def first_run() -> tuple[str, str, str]:
        every = range(1, 10**9)
        store = FaultyStore(
            tmp_path / "jobs.db", {"set_status:DONE": every, "set_status:ERROR": every}
        )
        store.armed = True
        fake = FakeExecutor(3, random.Random(0))
        sched = _scheduler(store, fake, watchdog_interval=3600, max_result_bytes=300)
        sched._spool = spool
        await sched.start()
        jobs = [_new_job(store, owner) for owner in ("ann", "bob", "cy")]
        for job in jobs:
            sched.submit(job)
        await _settle()
        assert set(fake.on_worker) == {job.id for job in jobs}
        fake.end(jobs[0].id, Outcome("done", result=result, seconds=0.5))
        fake.end(jobs[1].id, Outcome("done", result=big, seconds=0.5))
        await _settle()
        sched.begin_drain()
        assert await sched.drain(time.monotonic() + 0.2, asyncio.Event()) == 1  # cy's runs on
        report = await sched.stop(settle_tries=2)
        assert set(report.spooled) == {jobs[0].id, jobs[1].id}
        assert report.requeued == [jobs[2].id]
        assert not report.lost
        store.close()
        return jobs[0].id, jobs[1].id, jobs[2].id

    done_id, big_id, requeued_id = asyncio.run(first_run())
    assert len(spool) == 2
    # A job that ends another way before the next start (here: its spool file is
    # copied to a job that was then cancelled) has its file dropped, not stored.
    store = Store(tmp_path / "jobs.db")
    cancelled = _new_job(store, "dee")
    store.set_status(cancelled.id, CANCELLED)
    store.close()
    copied = (spool.path / f"{done_id}.outcome").read_bytes()
    (spool.path / f"{cancelled.id}.outcome").write_bytes(copied)
    (spool.path / "0123abcd.outcome").write_bytes(b"not json\n")

    async def second_run() -> None:
        store = Store(tmp_path / "jobs.db")
        fake = FakeExecutor(1, random.Random(0))
        sched = _scheduler(store, fake, watchdog_interval=3600, max_result_bytes=10**6)
        sched._spool = spool
        await sched.start()
        done = store.job(done_id)
        assert done is not None
        assert done.status == DONE
        assert store.data(done_id, "result") is not None
        assert done.attempts == 1
        # Over the limit of the run that produced it, though this run's is larger.
        too_large = store.job(big_id)
        assert too_large is not None
        assert too_large.status == ERROR
        assert (too_large.error or {})["code"] == RESULT_TOO_LARGE
        ended = store.job(cancelled.id)
        assert ended is not None
        assert ended.status == CANCELLED
        await _settle()
        assert set(fake.on_worker) == {requeued_id}  # the requeued one runs again
        await sched.stop()
        store.close()

    asyncio.run(second_run())
    assert sorted(p.name for p in spool.path.iterdir()) == ["0123abcd.outcome"]
