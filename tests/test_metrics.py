"""``GET /metrics`` against a real service: who may read it, that it parses as the
Prometheus text format, and that its figures move as jobs run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qobjs import bell_qobj, ghz, qobj, slow_qobj
from support import ServiceProcess, submit, wait_final, wait_status

METRICS_TOKEN = "scrape-me-0123456789"


def make_token(svc: ServiceProcess, user: str, *extra: str) -> str:
    command = [sys.executable, "-m", "qdispatch", "token", "create", "--user", user]
    made = subprocess.run(
        [*command, "--db", str(svc.db), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(
        tmp_path_factory.mktemp("metrics"), "--workers", "1", "--metrics-token", METRICS_TOKEN
    ).start()
    yield svc
    svc.stop()


def scrape(svc: ServiceProcess, token: str) -> dict[str, list[Any]]:
    """The metrics as ``name → samples`` (prometheus_client's own parser)."""
    answer = httpx.get(
        f"{svc.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    """The sample of ``name`` whose labels include ``labels`` (0 if there is none)."""
    for sample in samples.get(name, []):
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return 0.0


def test_only_operators_and_the_metrics_token_may_scrape(metered: ServiceProcess) -> None:
    url = f"{metered.url}/metrics"
    missing = httpx.get(url, timeout=30)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-a-token"}, timeout=30)
    assert wrong.status_code == 401
    # A user's valid token is not enough: metrics describe every user's jobs.
    user = httpx.get(url, headers={"Authorization": f"Bearer {metered.token}"}, timeout=30)
    assert user.status_code == 403
    assert user.json()["error"]["code"] == "operator_only"
    # A near miss of the metrics token is just an unknown token.
    near = httpx.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}x"}, timeout=30)
    assert near.status_code == 401
    operator = make_token(metered, "ops", "--operator")
    assert value(scrape(metered, operator), "qdispatch_worker_capacity") == 1.0
    samples = scrape(metered, METRICS_TOKEN)
    assert value(samples, "qdispatch_service_info", executor="local") == 1.0
    assert value(samples, "qdispatch_worker_capacity") == 1.0


def test_figures_move_as_jobs_run(metered: ServiceProcess) -> None:
    client = metered.client()
    before = scrape(metered, METRICS_TOKEN)
    done = [submit(client, "aer_simulator", bell_qobj()) for _ in range(2)]
    many = submit(client, "aer_simulator", qobj([ghz(3, "a"), ghz(3, "b"), ghz(3, "c")]))
    for job in [*done, many]:
        assert wait_final(client, job["id"])["status"] == "DONE"
    # One worker: a slow job holds it while two more wait in the queue.
    slow = submit(client, "aer_simulator", slow_qobj(shots=20000))
    wait_status(client, slow["id"], "RUNNING")
    waiting = [submit(client, "aer_simulator", bell_qobj()) for _ in range(2)]
    during = scrape(metered, METRICS_TOKEN)
    assert value(during, "qdispatch_queue_depth", backend="aer_simulator") == 2
    assert value(during, "qdispatch_jobs", status="QUEUED", backend="aer_simulator") == 2
    assert value(during, "qdispatch_jobs", status="RUNNING", backend="aer_simulator") == 1
    assert value(during, "qdispatch_workers", state="busy") == 1
    assert value(during, "qdispatch_worker_utilisation") == 1.0
    # GET /info shows the same queue, with an estimate of how long it takes to drain.
    info = client.get("/info").json()
    queue = info["queues"]["aer_simulator"]
    assert queue["queued"] == 2
    assert queue["mean_run_seconds"] > 0
    assert queue["eta_seconds"] == pytest.approx(2 * queue["mean_run_seconds"], abs=0.01)
    assert info["jobs_per_second"] > 0
    assert client.post(f"/jobs/{waiting[0]['id']}/cancel").json()["status"] == "CANCELLED"
    client.post(f"/jobs/{slow['id']}/cancel")
    assert wait_final(client, waiting[1]["id"])["status"] == "DONE"

    wait_final(client, slow["id"])
    after = scrape(metered, METRICS_TOKEN)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("qdispatch_jobs_finished_total", backend="aer_simulator", status="DONE") == 4
    # The slow one while running, the waiting one while queued.
    assert grew("qdispatch_jobs_finished_total", status="CANCELLED") == 2
    assert grew("qdispatch_circuits_completed_total", backend="aer_simulator") == 1 + 1 + 3 + 1
    assert grew("qdispatch_job_duration_seconds_count", kind="circuit", status="DONE") == 4
    assert grew("qdispatch_job_duration_seconds_count", status="CANCELLED") == 1
    # Every job that reached a worker waited first; the one cancelled in the queue did not
    # wait through it.
    assert grew("qdispatch_job_queue_wait_seconds_count", backend="aer_simulator") == 5
    assert value(after, "qdispatch_job_duration_seconds_sum", status="DONE") > 0
    assert value(after, "qdispatch_queue_depth", backend="aer_simulator") == 0
    assert value(after, "qdispatch_jobs", status="DONE", backend="aer_simulator") >= 4


def test_request_latency_is_labelled_by_route_template(metered: ServiceProcess) -> None:
    client = metered.client()
    job = submit(client, "aer_simulator", bell_qobj())
    wait_final(client, job["id"])
    for _ in range(3):
        client.get(f"/jobs/{job['id']}")
    client.get("/jobs/no-such-job")
    client.get("/no/such/route")
    samples = scrape(metered, METRICS_TOKEN)
    routes = {s.labels["route"] for s in samples["qdispatch_http_request_duration_seconds_count"]}
    assert "/jobs/{job_id}" in routes
    assert "/jobs" in routes
    assert "<unmatched>" in routes
    # Raw paths never become labels: the series stay bounded whatever ids are asked for.
    assert not any(job["id"] in route or "no-such" in route for route in routes)
    assert (
        value(
            samples,
            "qdispatch_http_request_duration_seconds_count",
            method="GET",
            route="/jobs/{job_id}",
            status="404",
        )
        >= 1
    )
