"""``qdispatch serve --executor dask --dask-cluster KIND``: the service starts a
dask-jobqueue cluster and scales its workers (batch jobs) from its own queue.

dask-jobqueue's ``local`` cluster runs each "batch job" as a local process, through the
same machinery as Slurm or PBS (job script, submit, cancel): the scaling path is real.
The cluster is configured the way a user configures Slurm, from a Dask config file."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from qobjs import bell_qobj
from support import submit, wait_final

pytest.importorskip("dask_jobqueue")
from distributed import Client
from distributed.security import Security

# What a user puts in ~/.config/dask/jobqueue.yaml, for the local test cluster: one
# single-threaded worker per batch job, a dashboard on a free port, quick adapting.
JOBQUEUE_YAML = """\
jobqueue:
  local:
    cores: 1
    memory: 1GiB
    processes: 1
    death-timeout: 30
    shared-temp-directory: {shared}
    scheduler-options:
      dashboard_address: ":0"
      host: 127.0.0.1
distributed:
  adaptive:
    interval: 500ms
    wait-count: 4
"""


def _info(client: httpx.Client) -> dict[str, Any]:
    info: dict[str, Any] = client.get("/info").json()
    return info


def _batch_jobs(service_pid: int) -> list[psutil.Process]:
    """The local cluster's "batch jobs": dask worker processes the service started."""
    found = []
    for child in psutil.Process(service_pid).children(recursive=True):
        try:
            if any("dask_worker" in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_workers_follow_the_queue_up_and_back_to_zero(
    service_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "dask-config"
    config.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    (config / "jobqueue.yaml").write_text(JOBQUEUE_YAML.format(shared=shared))
    monkeypatch.setenv("DASK_CONFIG", str(config))  # the service (and its workers) read it
    svc = service_factory(
        "--executor", "dask", "--dask-cluster", "local-jobqueue", "--dask-max-workers", "2"
    )
    client = svc.client()
    assert svc.proc is not None
    info = _info(client)
    assert info["capacity"] == 0  # nothing queued: no batch job asked for
    assert info["workers"] == {"idle": 0, "busy": 0, "starting": 0}
    assert _batch_jobs(svc.proc.pid) == []

    # The cluster speaks TLS with its own temporary CA: a client without its certificate
    # (another user of the cluster's network) is refused.
    found = re.search(r"Scheduler at:\s+(tls://[\d.]+:\d+)", svc.log())
    assert found is not None, svc.log()
    with pytest.raises((OSError, TimeoutError)):
        Client(found.group(1), security=Security.temporary(), timeout="3s")  # another CA
    with pytest.raises((OSError, TimeoutError)):
        Client(found.group(1).replace("tls://", "tcp://"), timeout="3s")

    jobs = [submit(client, "aer_simulator", bell_qobj(shots=200)) for _ in range(24)]
    most_capacity, most_batch_jobs = 0, 0
    deadline = time.monotonic() + 120
    pending = {job["id"] for job in jobs}
    while pending:
        assert time.monotonic() < deadline, f"jobs {pending} not done: {_info(client)}"
        most_capacity = max(most_capacity, _info(client)["capacity"])
        most_batch_jobs = max(most_batch_jobs, len(_batch_jobs(svc.proc.pid)))
        statuses = client.post("/jobs:status", json={"ids": sorted(pending)}).json()["statuses"]
        pending = {i for i, s in statuses.items() if s["status"] in ("QUEUED", "RUNNING")}
        time.sleep(0.2)
    for job in jobs:
        final = wait_final(client, job["id"])
        assert final["status"] == "DONE", final
        assert client.get(f"/jobs/{job['id']}/results").status_code == 200
    # 24 jobs queued asked for 24 single-thread workers; --dask-max-workers allowed two.
    assert most_capacity == 2
    assert 1 <= most_batch_jobs <= 2

    # Idle: the workers are released (their batch jobs end) and the capacity is 0 again.
    deadline = time.monotonic() + 60
    while _info(client)["capacity"] or _batch_jobs(svc.proc.pid):
        assert time.monotonic() < deadline, f"workers never released: {_info(client)}"
        time.sleep(0.2)
