"""Retention: ``Store.delete_finished_before``, and ``qdispatch gc``
delete old finished jobs with everything of theirs, and nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from qdispatch.cli import parse_duration
from qdispatch.constants import CANCELLED, DONE, ERROR, QUEUED, RUNNING
from qdispatch.server import store as store_module
from qdispatch.server.store import NewJob, Store

OLD = "2020-01-01T00:00:00.000000Z"
CUTOFF = "2021-01-01T00:00:00.000000Z"


def _job(store: Store, status: str, old: bool, owner: str = "alice", **extra: Any) -> str:
    new = NewJob(
        owner=owner,
        backend="aer_simulator",
        kind="circuits",
        inputs=b'{"qobj": 1}',
        n_experiments=1,
        shots=1,
        n_instructions=1,
        tags=["t"],
        **extra,
    )
    job, _ = store.create_job(new)
    if status == RUNNING:
        store.set_status(job.id, RUNNING)
    elif status != QUEUED:
        store.set_status(job.id, RUNNING)
        store.set_status(job.id, status, result=b'{"r": 1}' if status == DONE else None)
    if old:
        # Every step (the end included) long ago: as if it had run in 2020.
        with store.transaction() as db:
            steps = orjson.loads(
                db.execute("SELECT time_per_step FROM jobs WHERE id = ?", (job.id,)).fetchone()[0]
            )
            db.execute(
                "UPDATE jobs SET time_per_step = ?, created = ? WHERE id = ?",
                (orjson.dumps(dict.fromkeys(steps, OLD)).decode(), OLD, job.id),
            )
    return job.id


def _rows(store: Store, table: str, job_id: str) -> int:
    column = "id" if table == "jobs" else "job_id"
    sql = f"SELECT COUNT(*) FROM {table} WHERE {column} = ?"
    return int(store._db.execute(sql, (job_id,)).fetchone()[0])


def _everywhere(store: Store, job_id: str) -> int:
    return sum(_rows(store, t, job_id) for t in ("jobs", "events", "job_data", "job_tags"))


@pytest.mark.parametrize("batch", [1, 2, 500])
def test_deletes_exactly_the_old_finished_jobs(tmp_path: Path, batch: int) -> None:
    store = Store(tmp_path / "jobs.db")
    old_final = [_job(store, s, old=True) for s in (DONE, ERROR, CANCELLED, DONE, DONE)]
    kept = [_job(store, s, old=True) for s in (QUEUED, RUNNING)]
    kept += [_job(store, s, old=False) for s in (QUEUED, RUNNING, DONE, ERROR, CANCELLED)]
    keyed = _job(store, DONE, old=True, idempotency_key="k1")
    old_final.append(keyed)
    assert all(_everywhere(store, j) > 0 for j in old_final)

    assert store.delete_finished_before(CUTOFF, batch=batch) == len(old_final)
    for job_id in old_final:
        assert _everywhere(store, job_id) == 0
    for job_id in kept:
        assert store.job(job_id) is not None
        assert _rows(store, "events", job_id) > 0
        assert store.inputs(job_id)
    # The idempotency key is free again, and a second pass finds nothing.
    assert store.job_by_idempotency_key("alice", "k1") is None
    assert store.delete_finished_before(CUTOFF, batch=batch) == 0
    store.close()


def test_ended_sessions_without_jobs_go_too(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobs.db")
    ended = store.create_session("alice", "aer_simulator", "batch", None)
    busy = store.create_session("alice", "aer_simulator", "batch", None)
    store_open = store.create_session("alice", "aer_simulator", "batch", None)
    store.end_session(ended.id, "cancelled")
    store.end_session(busy.id, "cancelled")
    _job(store, QUEUED, old=True, session_id=busy.id)
    with store.transaction() as db:
        db.execute("UPDATE sessions SET closed = ?, created = ?", (OLD, OLD))
    store.delete_finished_before(CUTOFF)
    assert store.session(ended.id) is None
    assert store.session(busy.id) is not None
    assert store.session(store_open.id) is not None
    store.close()


def test_durations() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("45m") == 45 * 60
    assert parse_duration("12h") == 12 * 3600
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("2w") == 14 * 86400
    for bad in ("", "30", "0d", "-1d", "3y"):
        with pytest.raises(ValueError, match="positive duration"):
            parse_duration(bad)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "qdispatch", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)


def test_gc_command(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    store = Store(db)
    old = _job(store, DONE, old=True)
    new = _job(store, DONE, old=False)
    queued = _job(store, QUEUED, old=True)
    store.close()

    done = _cli("gc", "--older-than", "30d", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert "deleted 1 " in done.stdout
    store = Store(db)
    assert store.job(old) is None
    assert store.job(new) is not None
    assert store.job(queued) is not None
    store.close()

    refused = _cli("gc", "--older-than", "soon", "--db", str(db))
    assert refused.returncode == 2
    assert "positive duration" in refused.stderr


def _add_events(store: Store, job_id: str, count: int) -> None:
    with store.transaction() as db:
        (top,) = db.execute("SELECT MAX(seq) FROM events WHERE job_id = ?", (job_id,)).fetchone()
        db.executemany(
            "INSERT INTO events VALUES (?, ?, 'log', ?)",
            [(job_id, top + i, b"a log line") for i in range(1, count + 1)],
        )


def _all_events(store: Store) -> int:
    return int(store._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])


@pytest.mark.parametrize("how", ["sweep", "delete"])
def test_many_events_are_deleted_a_bounded_slice_a_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A job may hold ~262,000 events: deleting it (or a sweep of many such jobs) must not
    hold the write lock for all of them at once, which would stall every other writer."""
    monkeypatch.setattr(store_module, "DELETE_ROWS_PER_STEP", 100)
    store = Store(tmp_path / "jobs.db")
    try:
        big = _job(store, DONE, old=True)
        _add_events(store, big, 1000)
        small = [_job(store, DONE, old=True) for _ in range(30)]
        live = _job(store, RUNNING, old=True)
        steps = (
            store.sweep_finished(CUTOFF, batch=500)
            if how == "sweep"
            else store.delete_job_steps(big)
        )
        before, deleted, transactions = _all_events(store), 0, 0
        for count in steps:
            now = _all_events(store)
            assert before - now <= 100  # one step's transaction
            before, deleted, transactions = now, deleted + count, transactions + 1
        assert transactions >= 10
        assert _everywhere(store, big) == 0
        assert _everywhere(store, live) > 0
        if how == "sweep":
            assert deleted == 31
            assert all(_everywhere(store, job_id) == 0 for job_id in small)
        else:
            assert deleted == 1
            assert all(_everywhere(store, job_id) > 0 for job_id in small)
    finally:
        store.close()


def test_a_live_job_is_not_deleted_on_request(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobs.db")
    try:
        for status in (QUEUED, RUNNING):
            job_id = _job(store, status, old=True)
            assert list(store.delete_job_steps(job_id)) == [0]
            assert not store.delete_job(job_id)
            assert _rows(store, "jobs", job_id) == 1
        assert not store.delete_job("no-such-job")
    finally:
        store.close()
