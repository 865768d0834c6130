"""The web dashboard and ``GET /info`` under attack (a security review's findings): forged
job-set tags, a job of millions of events, histograms asked for in a loop, guessed
tokens at the login form, and what ``/info`` tells a visitor. Each is refused or served
bounded, and where it could stall the service ANOTHER user is answered within a second
throughout (``watched``)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from qdispatch import codes, monitor
from qdispatch.server.errors import ServiceError
from qdispatch.server.routes.ui import SET_LISTED_MISSING, _timeline
from qdispatch.server.store import Store
from qdispatch.server.stream import Hub, Subscription
from qdispatch.server.ui.counts import CountsCache
from qdispatch.server.ui.logins import LoginThrottle
from qobjs import bell_qobj
from support import ServiceProcess, bell_job, submit, wait_final
from test_hostile_front import make_token, ready
from test_hostile_front import watched as _watched

BACKEND = "aer_simulator"
#: Log lines of the job whose page must not read them all.
N_EVENTS = 200_000
#: The size a forged set declares (before the service checked set tags).
FORGED_SIZE = 2_000_000

# A program that publishes many tiny events: their payloads alone fit the budget.
TINY = """
def main(backend, publisher, count=10_000):
    for i in range(count):
        publisher.publish(1)
    return {"published": count}
"""


@contextlib.contextmanager
def watched(svc: ServiceProcess, token: str) -> Iterator[list[float]]:
    """``test_hostile_front.watched``, held until the other user has been answered at
    least once (a refusal can be quicker than their first request)."""
    with _watched(svc, token) as latencies:
        yield latencies
        deadline = time.monotonic() + 30
        while not latencies and time.monotonic() < deadline:
            time.sleep(0.05)


def _seed(root: Path) -> dict[str, str]:
    """Jobs written straight to the store, as a service that did not check set tags
    kept them: a set declaring 2,000,000 chunks, a set with a non-numeric size, a job of
    200,000 log events, and a DONE job whose result has 8 experiments of 40,000 outcomes.
    All are DONE, so nothing runs them."""
    store = Store(root / "jobs.db")
    ids: dict[str, str] = {}
    try:
        forged = [
            ("evil", ["qdispatch_jobset:evil", f"qdispatch_jobset_size:{FORGED_SIZE}:1"]),
            (
                "junk",
                ["qdispatch_jobset:junk", "qdispatch_jobset_size:lots:x", "qdispatch_job:a:b"],
            ),
            ("events", []),
            ("big", []),
        ]
        for name, tags in forged:
            job, _ = store.create_job(bell_job("mallory", tags))
            ids[name] = job.id
    finally:
        store.close()
    counts = [
        {
            "header": {"name": f"e{e}", "memory_slots": 16},
            "data": {"counts": {hex(i): 1 + (i % 7) for i in range(40_000)}},
        }
        for e in range(8)
    ]
    result = orjson.dumps({"results": counts, "success": True})
    payload = orjson.dumps({"text": "line\n"})
    with sqlite3.connect(root / "jobs.db") as db:
        for job_id in ids.values():
            steps = {"CREATED": "2026-01-01T00:00:00Z", "COMPLETED": "2026-01-01T00:00:01Z"}
            db.execute(
                "UPDATE jobs SET status = 'DONE', time_per_step = ? WHERE id = ?",
                (json.dumps(steps), job_id),
            )
        db.execute(
            "INSERT OR REPLACE INTO job_data (job_id, kind, data) VALUES (?, 'result', ?)",
            (ids["big"], zlib.compress(result)),
        )
        (base,) = db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (ids["events"],)
        ).fetchone()
        last = orjson.dumps({"text": "the very last line\n"})
        db.executemany(
            "INSERT INTO events (job_id, seq, type, data) VALUES (?, ?, 'log', ?)",
            (
                (ids["events"], base + 1 + i, last if i == N_EVENTS - 1 else payload)
                for i in range(N_EVENTS)
            ),
        )
    return ids


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, Any]]:
    """A service over the seeded store, with the tiny-events program and a 0.5 MiB event
    budget per job; and the seeded job ids."""
    root = tmp_path_factory.mktemp("hostile-ui")
    ids = _seed(root)
    (root / "programs").mkdir()
    (root / "programs" / "tiny.py").write_text(TINY)
    svc = ServiceProcess(
        root,
        "--workers",
        "1",
        "--programs-dir",
        str(root / "programs"),
        "--max-job-events-mb",
        "0.5",
    ).start()
    yield ready(svc), ids
    svc.stop()


def browser(svc: ServiceProcess, token: str) -> httpx.Client:
    """A logged-in dashboard client (the pages' own Origin, the login cookie)."""
    client = httpx.Client(base_url=svc.url, headers={"Origin": svc.url}, timeout=120.0)
    answer = client.post("/ui/login", data={"token": token})
    assert answer.status_code == 303, answer.text
    return client


@pytest.fixture(scope="module")
def mallory(hostile: tuple[ServiceProcess, Any]) -> Iterator[httpx.Client]:
    svc, _ = hostile
    client = browser(svc, make_token(svc, "mallory"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def trent(hostile: tuple[ServiceProcess, Any]) -> str:
    return make_token(hostile[0], "trent")


# -- 1. forged job-set tags ------------------------------------------------------------------


@pytest.mark.parametrize(
    "tags",
    [
        ["qdispatch_jobset:x", f"qdispatch_jobset_size:{FORGED_SIZE}:1"],
        ["qdispatch_jobset:x", "qdispatch_jobset_size:lots:1"],
        ["qdispatch_jobset:x", "qdispatch_jobset_size:4:8", "qdispatch_job:4:0:2"],
        ["qdispatch_jobset:x", "qdispatch_job:1:2"],
        ["qdispatch_jobset:x", "qdispatch_jobset:y"],
    ],
)
def test_forged_set_tags_are_refused_at_submission_and_tag_edits(
    hostile: tuple[ServiceProcess, Any], tags: list[str]
) -> None:
    svc, _ = hostile
    client = svc.client()
    refused = client.post("/jobs", json={"backend": BACKEND, "qobj": bell_qobj(), "tags": tags})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == codes.INVALID_REQUEST
    assert any(tag in error["message"] for tag in tags[1:]), error["message"]
    job = submit(client, BACKEND, bell_qobj(), tags=["plain"])
    edited = client.put(f"/jobs/{job['id']}/tags", json={"tags": tags})
    assert edited.status_code == 400, edited.text
    assert edited.json()["error"]["code"] == codes.INVALID_REQUEST
    assert client.get(f"/jobs/{job['id']}").json()["tags"] == ["plain"]


def test_well_formed_set_tags_are_accepted(hostile: tuple[ServiceProcess, Any]) -> None:
    svc, _ = hostile
    tags = ["qdispatch_jobset:ok", "qdispatch_job:1:2:2", "qdispatch_jobset_size:3:6"]
    job = submit(svc.client(), BACKEND, bell_qobj(), tags=tags)
    assert set(tags) <= set(job["tags"])


def test_a_forged_set_already_stored_is_shown_bounded_while_others_are_served(
    hostile: tuple[ServiceProcess, Any], mallory: httpx.Client, trent: str
) -> None:
    """A set that declares 2,000,000 chunks (stored before tags were checked) lists its
    chunks found plus 1,000 missing ones and counts the rest; a non-numeric size tag
    reads as no size, not a 500."""
    svc, _ = hostile
    with watched(svc, trent):
        page = mallory.get("/ui/sets/evil")
        data = mallory.get("/ui/api/sets/evil").json()
        junk = mallory.get("/ui/sets/junk")
        listing = mallory.get("/ui/sets")
    assert page.status_code == 200, page.text[:300]
    assert len(page.content) < 8 * 1024 * 1024
    assert data["n_jobs"] == FORGED_SIZE
    assert len(data["chunks"]) == SET_LISTED_MISSING
    assert data["not_listed"] == FORGED_SIZE - SET_LISTED_MISSING
    assert data["statuses"] == {monitor.NOT_SUBMITTED: FORGED_SIZE}
    assert f"and {FORGED_SIZE - SET_LISTED_MISSING} more chunks" in page.text
    assert junk.status_code == 200, junk.text[:300]
    assert listing.status_code == 200
    assert "evil" in listing.text


def test_the_clis_set_progress_never_walks_a_declared_size() -> None:
    """The CLI reads the same functions: a set of 10^11 declared chunks and one chunk at
    index 10^10 is two gaps, listed up to the cap and counted."""
    jobs = [
        {
            "id": "j1",
            "status": "DONE",
            "backend": "b",
            "creation_date": "2026-01-01T00:00:00Z",
            "n_experiments": 1,
            "tags": [
                "qdispatch_jobset:s",
                f"qdispatch_jobset_size:{10**11}:1",
                f"qdispatch_job:{10**10}:0:1",
            ],
        },
        {"id": "j2", "status": "DONE", "tags": ["qdispatch_jobset:s", "qdispatch_job:x:y:z"]},
    ]
    state = monitor.job_set_progress("s", jobs, listed_missing=5)
    assert state["jobs"] == 10**11
    assert [c["index"] for c in state["chunks"]] == [0, 1, 2, 3, 4, 10**10]
    assert state["not_listed"] == 10**11 - 1 - 5
    assert state["statuses"] == {"DONE": 1, monitor.NOT_SUBMITTED: 10**11 - 1}
    assert state["experiments_done"] == 1
    (listed,) = monitor.job_sets(jobs)
    assert listed["jobs"] == 10**11
    assert "chunks" not in listed


# -- 2. a job of millions of events ----------------------------------------------------------


def test_a_jobs_page_reads_only_its_newest_events(
    hostile: tuple[ServiceProcess, Any], mallory: httpx.Client, trent: str
) -> None:
    svc, ids = hostile
    with watched(svc, trent):
        page = mallory.get(f"/ui/jobs/{ids['events']}")
    assert page.status_code == 200
    assert "the very last line" in page.text
    assert page.text.count("line\n") <= 500
    # counted up to 10,000 (a bounded read), then "more than"
    assert "more than 10000 older ones are left out" in page.text


def test_tiny_events_are_charged_an_overhead_against_the_budget(
    hostile: tuple[ServiceProcess, Any],
) -> None:
    """10,000 one-byte interim results fit a 0.5 MiB budget by their payloads alone;
    charged 256 bytes each besides, at most ~2,000 are stored."""
    svc, _ = hostile
    client = svc.client()
    created = client.post("/jobs", json={"program_id": "tiny", "backend": BACKEND, "params": {}})
    assert created.status_code == 201, created.text
    job = wait_final(client, created.json()["id"], timeout=300)
    assert job["status"] == "DONE", job
    with sqlite3.connect(svc.db) as db:
        (stored,) = db.execute(
            "SELECT count(*) FROM events WHERE job_id = ? AND type IN ('interim', 'log')",
            (job["id"],),
        ).fetchone()
    assert 1000 < stored <= 512 * 1024 // 256 + 1
    assert "passed the service's limit" in client.get(f"/jobs/{job['id']}/logs").text


# -- 3. histograms asked for in a loop ---------------------------------------------------------


def test_counts_are_cached_and_two_at_a_time_per_user(
    hostile: tuple[ServiceProcess, Any], mallory: httpx.Client, trent: str
) -> None:
    svc, ids = hostile
    path = f"/ui/api/jobs/{ids['big']}/counts"
    first = mallory.get(path, params={"experiment": 3, "top": 5})
    assert first.status_code == 200, first.text
    assert first.json()["distinct"] == 40_000
    # Once answered for a DONE job it is not worked out again: a spoilt stored result
    # does not change the answer.
    with sqlite3.connect(svc.db) as db:
        db.execute(
            "UPDATE job_data SET data = ? WHERE job_id = ? AND kind = 'result'",
            (zlib.compress(b'{"results": []}'), ids["big"]),
        )
    again = mallory.get(path, params={"experiment": 3, "top": 5})
    assert again.status_code == 200
    assert again.json() == first.json()
    out_of_range = mallory.get(path, params={"experiment": 0, "top": 1})
    assert out_of_range.status_code == 400  # the spoilt result, worked out (and kept)


def test_a_user_has_at_most_two_histograms_worked_out_at_once(
    hostile: tuple[ServiceProcess, Any], trent: str
) -> None:
    svc, _ = hostile
    client = svc.client(make_token(svc, "hist"))
    job = submit(client, BACKEND, bell_qobj(), tags=["hist"])
    job_id = job["id"]
    counts = [{"data": {"counts": {hex(i): 1 for i in range(40_000)}}} for _ in range(8)]
    blob = zlib.compress(orjson.dumps({"results": counts}))
    wait_final(client, job_id)
    with sqlite3.connect(svc.db) as db:
        db.execute(
            "UPDATE job_data SET data = ? WHERE job_id = ? AND kind = 'result'", (blob, job_id)
        )
    hist = browser(svc, make_token(svc, "hist"))
    with contextlib.closing(hist), watched(svc, trent):
        statuses: list[int] = []
        refusal: httpx.Response | None = None
        for round_ in range(5):  # distinct (experiment, top): none of them cached

            def ask(i: int, first_top: int = 1 + round_ * 12) -> httpx.Response:
                params = {"experiment": i % 8, "top": first_top + i}
                return hist.get(f"/ui/api/jobs/{job_id}/counts", params=params)

            with ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(ask, range(12)))
            statuses += [a.status_code for a in answers]
            refusal = next((a for a in answers if a.status_code == 429), refusal)
            if refusal is not None:
                break
    assert set(statuses) <= {200, 429}, statuses
    assert refusal is not None, "12 requests at once were never more than 2 in flight"
    assert refusal.json()["error"]["code"] == codes.RATE_LIMITED
    assert refusal.headers["Retry-After"] == "1"


def test_the_counts_cache_is_bounded_in_bytes_and_slots_are_given_back() -> None:
    cache = CountsCache(max_bytes=4000, per_user=2)
    for i in range(100):
        cache.put((f"job{i}", 0, 16), {"outcomes": [["0" * 16, i]] * 10})
    assert cache.size_bytes <= 4000
    assert cache.get(("job99", 0, 16)) is not None
    assert cache.get(("job0", 0, 16)) is None
    with (
        cache.computing("u"),
        cache.computing("u"),
        pytest.raises(ServiceError, match="at most 2 at once"),
        cache.computing("u"),
    ):
        pytest.fail("a third computation was let in")
    with cache.computing("u"), cache.computing("u"):
        assert cache.get(("job99", 0, 16)) is not None


# -- 4. guessed tokens at the login form -------------------------------------------------------


def test_failed_logins_per_address_are_throttled_and_good_ones_count_as_requests(
    tmp_path: Path,
) -> None:
    svc = ServiceProcess(
        tmp_path,
        "--workers",
        "1",
        "--rate-limit",
        "0.2",
        "--rate-burst",
        "3",
        "--ui-login-failure-burst",
        "3",
        "--ui-login-failures-per-minute",
        "1",
    ).start()
    try:
        ready(svc)
        token = make_token(svc, "alice")
        client = httpx.Client(base_url=svc.url, headers={"Origin": svc.url}, timeout=30)
        # Good logins are requests of their user: past the user's burst, 429.
        answers = [client.post("/ui/login", data={"token": token}) for _ in range(4)]
        assert [a.status_code for a in answers][-1] == 429, [a.status_code for a in answers]
        assert answers[-1].headers["Retry-After"]
        # Guesses: three are looked up and fail; then the address must wait (a minute
        # per guess), whatever it sends.
        guesses = [client.post("/ui/login", data={"token": f"guess{i}"}) for i in range(5)]
        assert [g.status_code for g in guesses] == [401, 401, 401, 429, 429]
        assert int(guesses[-1].headers["Retry-After"]) >= 30
        assert "too many failed logins" in guesses[-1].text
        client.close()
    finally:
        svc.stop()


def test_the_login_throttle_refills_and_forgets_the_oldest() -> None:
    now = [0.0]
    throttle = LoginThrottle(per_minute=6, burst=2, limit=3, clock=lambda: now[0])
    throttle.failed("a")
    throttle.failed("a")
    wait = throttle.wait("a")
    assert wait is not None
    assert 9.9 < wait <= 10.0
    now[0] += 10.0
    assert throttle.wait("a") is None
    for address in ("b", "c", "d"):
        throttle.failed(address)
    assert throttle.wait("a") is None  # forgotten: the oldest of four
    assert len(throttle._buckets) == 3


# -- 5. what /info tells a visitor ---------------------------------------------------------------

ACTIVITY = {
    "queues",
    "workers",
    "queued_jobs",
    "running_jobs",
    "storage",
    "retention",
    "uptime_seconds",
    "jobs_per_second",
    "held_outcomes",
}


def test_info_shows_activity_only_to_a_valid_token(
    hostile: tuple[ServiceProcess, Any], trent: str
) -> None:
    svc, _ = hostile
    public = httpx.get(f"{svc.url}/info", timeout=30)
    forged = httpx.get(f"{svc.url}/info", headers={"Authorization": "Bearer nope"}, timeout=30)
    full = svc.client(trent).get("/info")
    assert public.status_code == forged.status_code == full.status_code == 200
    assert public.json() == forged.json()
    assert not ACTIVITY & set(public.json()), sorted(public.json())
    assert {"version", "max_request_bytes", "rate_limit", "capacity"} <= set(public.json())
    assert set(full.json()) >= ACTIVITY
    env = {**os.environ, "QDISPATCH_URL": svc.url, "QDISPATCH_TOKEN": trent}
    status = subprocess.run(
        [sys.executable, "-m", "qdispatch", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert BACKEND in json.dumps(json.loads(status.stdout)["queues"])


# -- 6. the stream hub ----------------------------------------------------------------------------


def test_the_hub_takes_subscriptions_without_observers_and_stays_going_away() -> None:
    hub = Hub(lambda *_: True)
    first = Subscription("u", None)
    hub.add(first)  # no observer registered: no AttributeError
    assert not first.leaving.is_set()
    hub.going_away()
    assert first.leaving.is_set()
    hub.observe(lambda job, events: None)  # registered late: the service still leaves
    later = Subscription("u", None)
    hub.add(later)
    assert later.leaving.is_set()


def test_the_job_pages_timeline_orders_steps_as_the_cli_does() -> None:
    """The page's timeline is ``monitor.steps`` (one ordering: equal timestamps by the
    steps' order), each step timed until the next, a running one until now."""
    steps = {
        "RUNNING": "2026-01-01T00:00:02Z",
        "QUEUED": "2026-01-01T00:00:00Z",
        "CREATED": "2026-01-01T00:00:00Z",
    }
    now = datetime(2026, 1, 1, 0, 0, 5, tzinfo=timezone.utc)
    timeline = _timeline(steps, now)
    assert [t["step"] for t in timeline] == [s["step"] for s in monitor.steps(steps)]
    assert [t["step"] for t in timeline] == ["CREATED", "QUEUED", "RUNNING"]
    assert [t["seconds"] for t in timeline] == [0.0, 2.0, 3.0]
    assert [t["ongoing"] for t in timeline] == [False, False, True]
