"""``qdispatch serve --retention``: a running service deletes old finished jobs itself,
on its own store connection and in small batches, while it takes and runs new jobs; it
never touches a queued, running or recent job, and leaves the store intact."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from qdispatch.constants import DONE, RUNNING, utcnow
from qdispatch.server.retention import FIRST_SWEEP_AFTER
from qdispatch.server.store import Store
from qobjs import bell_qobj
from support import ServiceProcess, add_finished_jobs, backdate, bell_job, submit, wait_final

OLD = "2020-01-01T00:00:00.000000Z"


def _count(db: sqlite3.Connection, sql: str) -> int:
    return int(db.execute(sql).fetchone()[0])


def test_serve_retention_sweeps_while_jobs_are_submitted(tmp_path: Path) -> None:
    root = tmp_path / "svc"
    root.mkdir()
    db = root / "jobs.db"
    # The loop below submits as fast as the service answers, beyond the default per-user
    # rate; rate limiting is not what this test is about (test_hostile_quotas is).
    service = ServiceProcess(root, "--workers", "2", "--retention", "30d", "--rate-limit", "0")
    owner = "retention-user"  # read back from the store itself, not through the API
    old = add_finished_jobs(db, 3000, OLD, owner, result_bytes=256)
    recent = add_finished_jobs(db, 20, utcnow(), owner, tag="recent")
    store = Store(db)
    # Old, but not finished: a queued job and one the service was running when it died.
    old_queued, _ = store.create_job(bell_job(owner, ["old-live"]))
    old_running, _ = store.create_job(bell_job(owner, ["old-live"]))
    store.set_status(old_running.id, RUNNING, attempts_delta=1)
    for job_id in (old_queued.id, old_running.id):
        backdate(store, job_id, OLD)
    store.close()

    service.start()
    try:
        client = service.client()
        # Submit without pause from before the first sweep until it has ended, so the
        # sweep's transactions interleave with the submissions' (and dispatch's).
        submitted: list[str] = []
        deadline = time.monotonic() + FIRST_SWEEP_AFTER + 120
        while True:
            submitted.append(submit(client, "aer_simulator", bell_qobj(shots=32))["id"])
            retention = client.get("/info").json()["retention"]
            if retention["last_sweep"] is not None:
                break
            assert time.monotonic() < deadline, retention
        submitted += [submit(client, "aer_simulator", bell_qobj())["id"] for _ in range(5)]
        assert retention["seconds"] == 30 * 86400
        assert retention["deleted"] == len(old), retention
        assert len(submitted) > 5

        for job_id in submitted:
            job = wait_final(client, job_id, timeout=120)
            assert job["status"] == DONE, job
            assert client.get(f"/jobs/{job_id}/results").status_code == 200
        # The old queued job and the requeued running one ran: they were never deleted.
        root_db = sqlite3.connect(db)
        for job_id in (old_queued.id, old_running.id):
            deadline = time.monotonic() + 120
            while (
                root_db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
                != DONE
            ):
                assert time.monotonic() < deadline, job_id
                time.sleep(0.1)
        root_db.close()
        assert "retention: deleted 3000 finished jobs" in service.log()
    finally:
        service.stop()

    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert check.execute("PRAGMA foreign_key_check").fetchall() == []
        marks = ",".join("?" * len(old))
        assert _count(check, "SELECT COUNT(*) FROM jobs WHERE status = 'DONE'") >= len(recent)
        assert (
            check.execute(f"SELECT COUNT(*) FROM jobs WHERE id IN ({marks})", old).fetchone()[0]
            == 0
        )
        for table in ("events", "job_data", "job_tags"):
            orphans = f"SELECT COUNT(*) FROM {table} WHERE job_id NOT IN (SELECT id FROM jobs)"
            assert _count(check, orphans) == 0, table
        kept = set(submitted) | set(recent) | {old_queued.id, old_running.id}
        marks = ",".join("?" * len(kept))
        found = check.execute(f"SELECT COUNT(*) FROM jobs WHERE id IN ({marks})", list(kept))
        assert found.fetchone()[0] == len(kept)
    check.close()


def test_a_sweep_goes_a_batch_at_a_time_and_lets_writes_in_between(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    old = add_finished_jobs(db, 25, OLD, "alice")
    store = Store(db)
    try:
        steps = store.sweep_finished("2021-01-01T00:00:00.000000Z", batch=4)
        counts = []
        made = []
        for count in steps:
            counts.append(count)
            assert not store._db.in_transaction  # nothing held between two steps
            job, _ = store.create_job(bell_job("alice"))  # a write between two steps
            made.append(job.id)
        assert sum(counts) == len(old)
        assert max(counts) <= 4
        assert len(counts) == 25 // 4 + 1 + 1  # the windows, then the sessions
        assert all(store.job(job_id) is not None for job_id in made)
        assert store._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == len(made)
    finally:
        store.close()
