"""The Dask executor when the cluster fails under it: a scheduler stopped and started
again on the same address while a job set runs through a real service.

Losing the scheduler cancels every future of the service's client; only a user's cancel
may end a job CANCELLED. Every other job must be requeued (an attempt counted), wait
QUEUED while the scheduler is away, and finish once the service has reconnected."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from qiskit.result import Result

from qobjs import bell_qobj, slow_qobj
from support import submit, wait_final, wait_status

distributed = pytest.importorskip("distributed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RestartableCluster:
    """A ``distributed.LocalCluster`` (one worker process, two threads) that can be
    stopped and started again on the same scheduler address."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.cluster: Any = None

    def start(self) -> None:
        # A dashboard on a free port: dask warns (an error here) when 8787 is taken.
        self.cluster = distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,
            host="127.0.0.1",
            scheduler_port=self.port,
            dashboard_address=":0",
        )
        assert self.cluster.scheduler_address == self.address

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


@pytest.fixture
def restartable_cluster() -> Iterator[RestartableCluster]:
    cluster = RestartableCluster()
    cluster.start()
    yield cluster
    cluster.stop()


def _info(client: httpx.Client) -> dict[str, Any]:
    info: dict[str, Any] = client.get("/info").json()
    return info


def _wait_info(client: httpx.Client, check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check(_info(client)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"/info never showed {what}: {_info(client)}")
        time.sleep(0.1)


def _result_counts(client: httpx.Client, job_id: str) -> dict[str, int]:
    response = client.get(f"/jobs/{job_id}/results")
    assert response.status_code == 200, response.text
    counts: dict[str, int] = Result.from_dict(response.json()).get_counts(0)
    return counts


def test_a_scheduler_restart_requeues_running_jobs_and_cancels_none(
    restartable_cluster: RestartableCluster, service_factory: Any
) -> None:
    # The cluster fixture first: torn down last, after the service that uses it.
    svc = service_factory(
        "--executor", "dask", "--scheduler", restartable_cluster.address, "--max-attempts", "4"
    )
    client = svc.client()
    assert _info(client)["capacity"] == 2
    jobs = [submit(client, "aer_simulator", slow_qobj(shots=500)) for _ in range(4)]
    wait_status(client, jobs[0]["id"], "RUNNING")
    wait_status(client, jobs[1]["id"], "RUNNING")

    restartable_cluster.stop()  # the scheduler goes away with both jobs on its worker
    # Disconnected: no capacity, and the slots it waits for shown as starting.
    _wait_info(
        client,
        lambda i: i["capacity"] == 0 and i["workers"]["starting"] >= 1,
        "capacity 0 and workers starting",
    )
    _wait_info(client, lambda i: i["running_jobs"] == 0, "no running job")
    while_down = submit(client, "aer_simulator", bell_qobj(shots=100))
    # Longer than the dask client retries by itself (5 s): the service reconnects anew.
    time.sleep(7.0)
    for job in [*jobs, while_down]:
        status = client.get(f"/jobs/{job['id']}").json()["status"]
        assert status == "QUEUED", (job["id"], status)

    restartable_cluster.start()  # same address: the service finds it again by itself
    _wait_info(client, lambda i: i["capacity"] == 2, "capacity 2 again")
    for job in [*jobs, while_down]:
        final = wait_final(client, job["id"], timeout=180)
        assert final["status"] == "DONE", final
        counts = _result_counts(client, job["id"])
        assert sum(counts.values()) == (500 if job in jobs else 100)
    for job in jobs[:2]:  # they were running when the scheduler went: one lost attempt each
        attempts = client.get(f"/jobs/{job['id']}").json()["attempts"]
        assert [a["outcome"] for a in attempts] == ["requeued", "done"], attempts
        assert "the dask cluster lost the job" in attempts[0]["reason"]
        assert "requeued (attempt 1 of 4)" in attempts[0]["reason"]

    # A user's cancel is still a cancel: CANCELLED, and not run again.
    # (Dask cannot stop the computation: it holds a worker thread until it ends.)
    running = submit(client, "aer_simulator", slow_qobj(shots=500))
    wait_status(client, running["id"], "RUNNING")
    assert client.post(f"/jobs/{running['id']}/cancel").json()["status"] == "CANCELLED"
    after = submit(client, "aer_simulator", bell_qobj(shots=100))
    assert wait_final(client, after["id"], timeout=180)["status"] == "DONE"
    job = client.get(f"/jobs/{running['id']}").json()
    assert job["status"] == "CANCELLED"
    assert [a["outcome"] for a in job["attempts"]] == ["cancelled"], job["attempts"]

    log = svc.log()
    assert "lost the connection to the dask scheduler" in log
    assert "reconnected to the dask scheduler" in log


# dask-jobqueue's local cluster, as a user would configure Slurm: one single-threaded
# worker per "batch job"; a lost batch job is replaced after 1 s, not Dask's 15 s.
JOBQUEUE_YAML = """\
jobqueue:
  local:
    cores: 1
    memory: 1GiB
    processes: 1
    scheduler-options:
      dashboard_address: ":0"
      host: 127.0.0.1
distributed:
  adaptive:
    interval: 500ms
  deploy:
    lost-worker-timeout: 1s
"""


def _batch_jobs(service_pid: int) -> list[psutil.Process]:
    """The "batch jobs" of the service's local jobqueue cluster (``dask_worker``)."""
    found = []
    for child in psutil.Process(service_pid).children():
        try:
            if any("dask_worker" in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_batch_job_ending_under_a_job_requeues_the_job(
    service_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("dask_jobqueue")
    config = tmp_path / "dask-config"
    config.mkdir()
    (config / "jobqueue.yaml").write_text(JOBQUEUE_YAML)
    monkeypatch.setenv("DASK_CONFIG", str(config))
    # One worker kept even when idle: the replacement stays to be seen.
    svc = service_factory(
        "--executor",
        "dask",
        "--dask-cluster",
        "local-jobqueue",
        "--dask-min-workers",
        "1",
        "--dask-max-workers",
        "1",
    )
    assert svc.proc is not None
    client = svc.client()
    job = submit(client, "aer_simulator", slow_qobj(shots=800))
    wait_status(client, job["id"], "RUNNING")
    (batch_job,) = _batch_jobs(svc.proc.pid)
    # The allocation ends (walltime, preemption): the batch job and its worker are gone.
    doomed = [batch_job, *batch_job.children(recursive=True)]
    for process in doomed:
        process.kill()
    psutil.wait_procs(doomed, timeout=30)

    final = wait_final(client, job["id"], timeout=180)  # on a new batch job
    assert final["status"] == "DONE", final
    assert sum(_result_counts(client, job["id"]).values()) == 800
    attempts = client.get(f"/jobs/{job['id']}").json()["attempts"]
    assert [a["outcome"] for a in attempts] == ["requeued", "done"], attempts
    assert "the dask cluster lost the job" in attempts[0]["reason"]
    (replacement,) = _batch_jobs(svc.proc.pid)
    assert replacement.pid != batch_job.pid
