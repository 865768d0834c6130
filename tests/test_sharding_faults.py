"""Faults of a job running as shards, through a real service whose executor stops a
shard's worker as an operator would (``LocalExecutor.cancel``: the worker is killed, the
run comes back ``cancelled``), by the rules of docs/service.md, "Sharding":

- a shard stopped while its job runs on is run again, within the job's attempts, and the
  job ends DONE with every pub's result in pub order;
- the job's shards share its attempts (``--max-attempts``, each shard rerun counting
  one): a shard lost past them fails the job, saying so, and nothing more runs;
- a job cancelled while a shard is being run again ends CANCELLED, with no error and no
  further rerun;
- a shard that comes back stopped because its job was cancelled by a path that did not
  end the shards (the store says CANCELLED) ends the job's other shards and nothing else:
  no error, no rerun, no status after CANCELLED.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import qdispatch
from qdispatch import Sampler
from qdispatch.constants import CANCELLED, DONE, ERROR, RUNNING
from support import ServiceProcess, wait_final
from test_sharding import expected_counts, slow

# The service's executor, patched: when the file ``fault`` in the service's directory
# names a mode, the second shard of each job is stopped half a second after its worker
# took it — its first run only (``once``), every run (``always``), or its first run after
# the job is written CANCELLED in the store behind the scheduler's back (``store``).
_STOPPING_EXECUTOR = """
import asyncio, sys
from pathlib import Path
from qdispatch.constants import CANCELLED
from qdispatch.server import executors
from qdispatch.server.store import Store

ROOT = Path({root!r})
runs = {{}}
real_execute = executors.LocalExecutor.execute

async def execute(self, task, started, on_event=None):
    fault = ROOT / "fault"
    mode = fault.read_text().strip() if fault.exists() else ""
    job_id, _, shard = task.job_id.partition("#")
    runs[task.job_id] = runs.get(task.job_id, 0) + 1
    first = runs[task.job_id] == 1
    stop = shard == "1" and (mode == "always" or (mode in ("once", "store") and first))

    def took():
        started()
        if stop:
            asyncio.get_running_loop().call_later(0.5, halt)

    def halt():
        if mode == "store":
            store = Store(ROOT / "jobs.db")
            try:
                store.set_status(job_id, CANCELLED)
            finally:
                store.close()
        busy = ",".join(str(w.process.pid) for w in self._busy.values())
        print(f"FAULT: stopping {{task.job_id}} run {{runs[task.job_id]}}", flush=True)
        print(f"FAULT: busy workers {{busy}}", flush=True)
        self.cancel(task.job_id)

    return await real_execute(self, task, took, on_event)

executors.LocalExecutor.execute = execute
from qdispatch.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Small shards, so that jobs of a few dozen pubs are split in two (two workers).
MIN_PUBS = "4"


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("sharding-faults")
    proc = ServiceProcess(
        root,
        "--workers",
        "2",
        "--shard-min-pubs",
        MIN_PUBS,
        "--max-attempts",
        "2",
        launcher=("-c", _STOPPING_EXECUTOR.format(root=str(root))),
    ).start()
    yield proc
    proc.stop()


def _fault(svc: ServiceProcess, mode: str) -> None:
    (svc.root / "fault").write_text(mode)


def _wait(check: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _run(service: Any, n: int = 16, shots: int = 300) -> tuple[Any, list[dict[str, int]]]:
    circuits = [slow(i) for i in range(n)]
    job = Sampler(mode=service.backend("aer_simulator")).run(circuits, shots=shots)
    return job, expected_counts(circuits, shots)


def _statuses(client: Any, job_id: str) -> list[str]:
    events = client.get(f"/jobs/{job_id}/events").json()["events"]
    return [e["data"]["status"] for e in events if e["type"] == "status"]


def _idle(client: Any) -> None:
    _wait(lambda: client.get("/info").json()["running_jobs"] == 0, "no shard running")
    _wait(lambda: client.get("/info").json()["workers"]["idle"] == 2, "two idle workers")


def test_a_stopped_shard_runs_again_and_the_job_is_done(svc: ServiceProcess) -> None:
    _fault(svc, "once")
    client = svc.client()
    with qdispatch.connect(svc.url, token=svc.token) as service:
        job, expected = _run(service)
        result = job.result()
        assert job.status().name == DONE
        assert [pub.data.c.get_counts() for pub in result] == expected
    logs = client.get(f"/jobs/{job.job_id()}/logs").text
    assert "shard 2 of 2 (pubs 8-15): its run was stopped; requeued (attempt 1 of 2)" in logs
    assert f"FAULT: stopping {job.job_id()}#1 run 1" in svc.log()
    # One attempt of the job: the rerun was of one shard, not of the job.
    assert _statuses(client, job.job_id()) == ["QUEUED", RUNNING, DONE]
    _idle(client)


def test_lost_shards_share_the_jobs_attempts(svc: ServiceProcess) -> None:
    _fault(svc, "always")
    client = svc.client()
    with qdispatch.connect(svc.url, token=svc.token) as service:
        job, _ = _run(service)
        final = wait_final(client, job.job_id(), timeout=240)
    assert final["status"] == ERROR, final
    message = final["error"]["message"] if isinstance(final["error"], dict) else final["error"]
    assert "shard 2 of 2 (pubs 8-15): its run was stopped" in str(message), final
    assert "not trying again after 2 attempts" in str(message), final
    # --max-attempts 2: the shard ran twice (its first run and one rerun), no more.
    log = svc.log()
    assert f"FAULT: stopping {job.job_id()}#1 run 2" in log
    assert f"{job.job_id()}#1 run 3" not in log
    logs = client.get(f"/jobs/{job.job_id()}/logs").text
    assert logs.count("requeued") == 1, logs
    assert _statuses(client, job.job_id()) == ["QUEUED", RUNNING, ERROR]
    # The other shard was stopped with the job: nothing runs on.
    _idle(client)


def test_a_job_cancelled_while_a_shard_reruns_ends_cancelled_quietly(
    svc: ServiceProcess,
) -> None:
    _fault(svc, "once")
    client = svc.client()
    with qdispatch.connect(svc.url, token=svc.token) as service:
        job, _ = _run(service, n=24, shots=400)
        job_id = job.job_id()
        _wait(lambda: "requeued" in client.get(f"/jobs/{job_id}/logs").text, "the shard's rerun")
        job.cancel()
        assert wait_final(client, job_id)["status"] == CANCELLED
    _idle(client)
    record = client.get(f"/jobs/{job_id}").json()
    assert record["status"] == CANCELLED
    assert not record.get("error"), record
    assert _statuses(client, job_id) == ["QUEUED", RUNNING, CANCELLED]
    assert client.get(f"/jobs/{job_id}/logs").text.count("requeued") == 1
    assert client.get(f"/jobs/{job_id}/results").status_code != 200
    assert f"{job_id}#1 run 3" not in svc.log()


def test_a_shard_stopped_by_a_cancel_the_scheduler_missed_ends_the_job_quietly(
    svc: ServiceProcess,
) -> None:
    _fault(svc, "store")
    client = svc.client()
    with qdispatch.connect(svc.url, token=svc.token) as service:
        job, _ = _run(service, n=24, shots=400)
        job_id = job.job_id()
        assert wait_final(client, job_id, timeout=180)["status"] == CANCELLED
    _idle(client)
    # Both shards were on workers when one was stopped; the other's worker was stopped
    # too (killed and replaced), not left to finish.
    log = svc.log()
    assert f"FAULT: stopping {job_id}#1 run 1" in log
    busy = log.split(f"FAULT: stopping {job_id}#1 run 1")[1].split("FAULT: busy workers ")[1]
    pids = {int(pid) for pid in busy.splitlines()[0].split(",")}
    assert len(pids) == 2, busy
    assert svc.proc is not None
    alive = {p.pid for p in psutil.Process(svc.proc.pid).children() if p.status() != "zombie"}
    assert not pids & alive, (pids, alive)
    record = client.get(f"/jobs/{job_id}").json()
    assert not record.get("error"), record
    assert _statuses(client, job_id) == ["QUEUED", RUNNING, CANCELLED]
    assert "requeued" not in client.get(f"/jobs/{job_id}/logs").text
    assert f"{job_id}#1 run 2" not in log
    # The service goes on: the next job (no fault) is sharded and done.
    _fault(svc, "")
    with qdispatch.connect(svc.url, token=svc.token) as service:
        job, expected = _run(service, n=8, shots=20)
        assert [pub.data.c.get_counts() for pub in job.result()] == expected
