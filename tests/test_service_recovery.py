"""Nothing is lost: a killed service, a killed worker, a dask cluster instead of workers."""

from __future__ import annotations

from typing import Any

import psutil
from qiskit.result import Result

from qobjs import bell_qobj, slow_qobj
from support import submit, wait_final, wait_status


def worker_processes(pid: int) -> list[psutil.Process]:
    """The service's spawned worker processes."""
    return [
        p
        for p in psutil.Process(pid).children()
        if any("spawn_main" in part for part in p.cmdline())
    ]


def test_kill_9_and_restart_loses_no_job_and_no_result(service_factory: Any) -> None:
    svc = service_factory("--workers", "1")
    client = svc.client()
    finished = submit(client, "aer_simulator", bell_qobj(shots=100))
    assert wait_final(client, finished["id"])["status"] == "DONE"
    before = client.get(f"/jobs/{finished['id']}/results").json()
    running = submit(client, "aer_simulator", slow_qobj(shots=800), name="interrupted")
    queued = [submit(client, "aer_simulator", bell_qobj(shots=100))["id"] for _ in range(5)]
    wait_status(client, running["id"], "RUNNING")
    old_workers = worker_processes(svc.proc.pid)

    svc.kill()
    # Orphaned workers notice the closed pipe and exit by themselves.
    _, alive = psutil.wait_procs(old_workers, timeout=30)
    assert not alive

    svc.start()
    client = svc.client()
    after_restart = client.get(f"/jobs/{running['id']}").json()
    assert after_restart["status"] in ("QUEUED", "RUNNING", "DONE")
    assert "REQUEUED" in after_restart["time_per_step"]
    for job_id in [running["id"], *queued]:
        job = wait_final(client, job_id)
        assert job["status"] == "DONE", job
        counts = Result.from_dict(client.get(f"/jobs/{job_id}/results").json()).get_counts(0)
        assert sum(counts.values()) == job["shots"]
    assert client.get(f"/jobs/{finished['id']}/results").json() == before
    metrics = client.get(f"/jobs/{running['id']}/metrics").json()
    assert metrics["attempts"] == 2


def test_clean_stop_and_restart_keeps_everything(service_factory: Any) -> None:
    svc = service_factory("--workers", "1")
    client = svc.client()
    blocker = submit(client, "aer_simulator", slow_qobj(shots=600))
    waiting = submit(client, "aer_simulator", bell_qobj(), tags=["kept"])
    wait_status(client, blocker["id"], "RUNNING")
    svc.stop()
    svc.start()
    client = svc.client()
    assert wait_final(client, blocker["id"])["status"] == "DONE"
    assert wait_final(client, waiting["id"])["status"] == "DONE"
    # A clean stop requeues without counting it against the job's attempts.
    assert "REQUEUED" in client.get(f"/jobs/{blocker['id']}").json()["time_per_step"]
    assert client.get(f"/jobs/{blocker['id']}/metrics").json()["attempts"] == 1
    assert client.get("/jobs", params={"tags": "kept"}).json()["count"] == 1


def test_a_crashed_worker_fails_only_its_own_job(service_factory: Any) -> None:
    # One attempt allowed: a worker's death is transient, and would otherwise be retried
    # (tests/test_faults.py).
    svc = service_factory("--workers", "1", "--max-attempts", "1")
    client = svc.client()
    victim = submit(client, "aer_simulator", slow_qobj(shots=3000))
    bystander = submit(client, "aer_simulator", bell_qobj())
    wait_status(client, victim["id"], "RUNNING")
    (worker,) = worker_processes(svc.proc.pid)
    worker.kill()

    failed = wait_final(client, victim["id"])
    assert failed["status"] == "ERROR"
    assert failed["error"]["code"] == "execution_failed"
    assert (
        "worker process running this job died (killed by signal SIGKILL)"
        in (failed["error"]["message"])
    )
    assert wait_final(client, bystander["id"])["status"] == "DONE"
    (replacement,) = worker_processes(svc.proc.pid)
    assert replacement.pid != worker.pid


def test_dask_executor_end_to_end(dask_scheduler: str, service_factory: Any) -> None:
    # dask_scheduler first: torn down last, after the service that uses it.
    svc = service_factory("--executor", "dask", "--scheduler", dask_scheduler)
    client = svc.client()
    assert client.get("/info").json()["capacity"] == 2
    bell = submit(client, "aer_simulator", bell_qobj(shots=300))
    assert wait_final(client, bell["id"])["status"] == "DONE"
    counts = Result.from_dict(client.get(f"/jobs/{bell['id']}/results").json()).get_counts(0)
    assert set(counts) == {"00", "11"}

    running = submit(client, "aer_simulator", slow_qobj(shots=700))
    wait_status(client, running["id"], "RUNNING")
    queued = [submit(client, "aer_simulator", slow_qobj(shots=700)) for _ in range(2)]
    for job in [running, *queued]:
        assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "CANCELLED"
    after = submit(client, "aer_simulator", bell_qobj())
    assert wait_final(client, after["id"])["status"] == "DONE"
    for job in [running, *queued]:
        assert client.get(f"/jobs/{job['id']}").json()["status"] == "CANCELLED"
