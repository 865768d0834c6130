"""Each user's storage is bounded (``--max-user-store-mb``): the bytes their jobs store —
Qobjs or inputs, results, events — are kept by the store's own triggers, and a user at
their quota gets ``403 storage_quota`` for new jobs until they delete some. Other users
are not refused for it; the local one-user service has no quota."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
from qiskit import QuantumCircuit

import qdispatch
from qdispatch import IBMQBackendApiError
from qdispatch.constants import DONE, RUNNING, utcnow
from qdispatch.server.store import _USAGE_FILL, Store
from qobjs import bell_qobj, slow_qobj
from support import (
    ServiceProcess,
    add_finished_jobs,
    bell_job,
    submit,
    wait_final,
    wait_status,
)

QUOTA_MB = 0.05  # 52,428 bytes: a Bell job stores ~1 KB, so tens of jobs reach it


def _recount(db: Path) -> dict[str, int]:
    """Every user's bytes counted afresh from what the store holds, as a migration does."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TEMP TABLE user_bytes (user TEXT PRIMARY KEY, bytes INTEGER)")
        conn.execute(_USAGE_FILL.replace("INTO user_bytes", "INTO temp.user_bytes"))
        return dict(conn.execute("SELECT user, bytes FROM temp.user_bytes").fetchall())


def _kept(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {u: b for u, b in conn.execute("SELECT user, bytes FROM main.user_bytes") if b}


def test_the_triggers_keep_each_users_bytes(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    store = Store(db)
    try:
        jobs = [store.create_job(bell_job(owner))[0] for owner in ("ann", "ann", "ben")]
        for job in jobs:
            store.set_status(job.id, RUNNING)
        store.set_status(jobs[0].id, DONE, result=orjson.dumps({"counts": "x" * 5000}))
        # A result stored again (a retried store after a restart) replaces the first.
        store.set_status(jobs[0].id, DONE, result=orjson.dumps({"counts": "y" * 9000}))
        assert store.stored_bytes("ann") == _recount(db)["ann"] > 0
        assert store.stored_bytes("ben") == _recount(db)["ben"] > 0
        assert store.stored_bytes("nobody") == 0
        store.set_status(jobs[2].id, DONE, result=b"{}")
        assert store.delete_job(jobs[2].id)
        assert store.stored_bytes("ben") == 0
        store.set_status(jobs[1].id, DONE, result=b"{}")
        # The retention's sweep deletes through the same triggers.
        assert sum(store.sweep_finished("9999-01-01T00:00:00Z", batch=2)) == 2
        assert store.stored_bytes("ann") == 0
    finally:
        store.close()


def test_a_store_made_before_the_quota_is_counted_when_opened(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    add_finished_jobs(db, 30, utcnow(), "old-user", result_bytes=512)
    with sqlite3.connect(db) as conn:  # as an earlier version left it
        for (trigger,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE user_bytes")
    store = Store(db)
    try:
        assert store.stored_bytes("old-user") == _recount(db)["old-user"] > 30 * 512
    finally:
        store.close()


def test_a_user_at_the_quota_is_refused_until_they_delete(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, "--workers", "1", "--max-user-store-mb", str(QUOTA_MB))
    service.start()
    try:
        heavy, other = service.client(), service.client(service.token_for("quota-other"))
        assert heavy.get("/info").json()["max_user_store_bytes"] == int(QUOTA_MB * 1024 * 1024)
        done: list[str] = []
        while True:
            answer = heavy.post(
                "/jobs",
                content=orjson.dumps(
                    {"backend": "aer_simulator", "qobj": bell_qobj(shots=1000, memory=True)}
                ),
            )
            if answer.status_code != 201:
                break
            done.append(answer.json()["id"])
            wait_final(heavy, done[-1])
            assert len(done) < 200, "the quota never applied"
        error = answer.json()["error"]
        assert (answer.status_code, error["code"]) == (403, "storage_quota"), answer.text
        assert error["quota_bytes"] == int(QUOTA_MB * 1024 * 1024)
        assert error["stored_bytes"] >= error["quota_bytes"]
        assert "delete finished jobs" in error["message"]
        assert service.client().get("/info").json()  # the service is fine
        # Another user is not refused for it.
        wait_final(other, submit(other, "aer_simulator", bell_qobj())["id"])
        # Through the client: the documented exception, with the status and the code.
        with qdispatch.connect(service.url, token=service.token) as connected:
            backend = connected.backend("aer_simulator")
            usage = connected.usage()
            assert usage["max_user_store_bytes"] == int(QUOTA_MB * 1024 * 1024)
            assert usage["stored_bytes"] >= usage["max_user_store_bytes"]
            with pytest.raises(IBMQBackendApiError, match="at their quota") as exc:
                backend.run(_bell_circuit())
            assert (exc.value.status, exc.value.code) == (403, "storage_quota")
            # Deleting jobs frees their bytes, and the user can submit again.
            for job_id in done[: len(done) // 2 + 1]:
                connected.delete_job(job_id)
            assert backend.run(_bell_circuit(), shots=10).result().get_counts()
        assert _kept(service.db) == {u: b for u, b in _recount(service.db).items() if b}
    finally:
        service.stop()


def _bell_circuit() -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    return circuit


def test_a_job_admitted_before_the_quota_was_reached_ends_storage_quota(tmp_path: Path) -> None:
    """Admission checks what is stored then; jobs queued meanwhile are held to the quota
    when they start: they end ERROR ``storage_quota``, saying why, instead of storing a
    result on top."""
    service = ServiceProcess(tmp_path, "--workers", "1", "--max-user-store-mb", str(QUOTA_MB))
    service.start()
    try:
        client = service.client()
        running = submit(client, "aer_simulator", slow_qobj())["id"]
        queued = submit(client, "aer_simulator", bell_qobj())["id"]  # behind it: 1 worker
        wait_status(client, running, "RUNNING")
        # Jobs of the same user elsewhere (another client's results) fill the quota now.
        with sqlite3.connect(service.db) as db:
            (owner,) = db.execute("SELECT owner FROM jobs WHERE id = ?", (running,)).fetchone()
        add_finished_jobs(service.db, 1, utcnow(), owner, result_bytes=64 * 1024)
        assert wait_final(client, running, timeout=120)["status"] == DONE  # it was running
        ended = wait_final(client, queued, timeout=120)
        assert ended["status"] == "ERROR", ended
        assert ended["error"]["code"] == "storage_quota"
        assert "delete finished jobs and submit it again" in ended["error"]["message"]
        assert client.get(f"/jobs/{queued}/qobj").status_code == 200  # its inputs stay
    finally:
        service.stop()


def test_the_stream_limit_zero_means_none(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, "--workers", "1", "--max-streams-per-user", "0").start()
    try:
        assert service.client().get("/info").json()["max_streams_per_user"] == 0
        with qdispatch.connect(service.url, token=service.token) as connected:
            job = connected.backend("aer_simulator").run(_bell_circuit(), shots=10)
            assert sum(job.result(timeout=120).get_counts().values()) == 10
            assert connected.api.client.stream_connected()
    finally:
        service.stop()
