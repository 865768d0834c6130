"""``DELETE /jobs/{id}`` and ``service.delete_job``: a finished job goes with everything
stored for it; a live one, another user's, or one shared read-only stays."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import pytest
from qiskit import QuantumCircuit

import qdispatch
from circuits import slow_circuit
from qdispatch import IBMRuntimeError, RuntimeJobNotFound
from qobjs import bell_qobj, slow_qobj
from support import ServiceProcess, submit, wait_final, wait_status


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(tmp_path_factory.mktemp("delete"), "--workers", "1").start()
    yield proc
    proc.stop()


def bell_circuit() -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    return circuit


def _rows(svc: ServiceProcess, job_id: str) -> dict[str, int]:
    with sqlite3.connect(svc.db) as db:
        return {
            table: db.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (job_id,)
            ).fetchone()[0]
            for table, column in (
                ("jobs", "id"),
                ("job_data", "job_id"),
                ("events", "job_id"),
                ("job_tags", "job_id"),
            )
        }


def test_a_finished_job_is_deleted_with_all_it_stored(svc: ServiceProcess) -> None:
    client = svc.client()
    job_id = submit(client, "aer_simulator", bell_qobj(), tags=["to-delete"])["id"]
    wait_final(client, job_id)
    before = _rows(svc, job_id)
    assert before["jobs"] == before["job_tags"] == 1
    assert before["job_data"] >= 2  # the Qobj and the result
    assert before["events"] >= 1

    answer = client.delete(f"/jobs/{job_id}")
    assert answer.status_code == 204, answer.text
    assert _rows(svc, job_id) == {"jobs": 0, "job_data": 0, "events": 0, "job_tags": 0}
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get(f"/jobs/{job_id}/results").status_code == 404
    listed = client.get("/jobs", params={"tags": "to-delete"}).json()["jobs"]
    assert job_id not in [job["id"] for job in listed]
    again = client.delete(f"/jobs/{job_id}")
    assert (again.status_code, again.json()["error"]["code"]) == (404, "job_not_found")


def test_live_jobs_and_other_users_jobs_stay(svc: ServiceProcess) -> None:
    owner, other = svc.client(), svc.client(svc.token_for("delete-other"))
    slow = submit(owner, "aer_simulator", slow_qobj())["id"]
    queued = submit(owner, "aer_simulator", bell_qobj())["id"]  # behind it: 1 worker
    wait_status(owner, slow, "RUNNING")
    for job_id in (slow, queued):
        refused = owner.delete(f"/jobs/{job_id}")
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "job_not_finished"
        assert "cancel it first" in refused.json()["error"]["message"]
    # Not visible to another user: not disclosed either.
    hidden = other.delete(f"/jobs/{slow}")
    assert (hidden.status_code, hidden.json()["error"]["code"]) == (404, "job_not_found")
    assert owner.post(f"/jobs/{slow}/cancel").status_code == 200
    wait_final(owner, slow)
    wait_final(owner, queued)
    assert owner.get(f"/jobs/{slow}").json()["status"] == "CANCELLED"
    assert owner.delete(f"/jobs/{slow}").status_code == 204


def test_service_delete_job_raises_the_runtimes_errors(svc: ServiceProcess) -> None:
    with qdispatch.connect(svc.url, token=svc.token) as service:
        backend = service.backend("aer_simulator")
        running = backend.run(slow_circuit(), shots=600)
        done = backend.run(bell_circuit(), shots=10)
        with pytest.raises(IBMRuntimeError, match="only a finished job can be deleted"):
            service.delete_job(running.job_id())
        running.cancel()
        done.wait_for_final_state(timeout=120)
        service.delete_job(done.job_id())
        with pytest.raises(RuntimeJobNotFound):
            service.delete_job(done.job_id())
        with pytest.raises(RuntimeJobNotFound):
            service.delete_job("no-such-job")


def test_a_shared_job_is_read_only_and_an_operator_may_delete_any(svc: ServiceProcess) -> None:
    owner = svc.client(svc.token_for("lab-owner", project="lab"))
    colleague = svc.client(svc.token_for("lab-colleague", project="lab"))
    shared = submit(owner, "aer_simulator", bell_qobj(), share_level="project")["id"]
    wait_final(owner, shared)
    refused = colleague.delete(f"/jobs/{shared}")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "read_only")
    other_token = svc.token_for("lab-colleague-2", project="lab")
    with (
        qdispatch.connect(svc.url, token=other_token) as other,
        pytest.raises(IBMRuntimeError, match="read-only"),
    ):
        other.delete_job(shared)
    assert owner.get(f"/jobs/{shared}").status_code == 200  # still there
    command = [sys.executable, "-m", "qdispatch", "token", "create", "--user", "ops"]
    made = subprocess.run(
        [*command, "--operator", "--db", str(svc.db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    operator = svc.client(made.stdout.strip())
    assert operator.delete(f"/jobs/{shared}").status_code == 204
    assert owner.get(f"/jobs/{shared}").status_code == 404
