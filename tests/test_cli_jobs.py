"""The job commands of ``qdispatch`` (jobs, job, cancel, sets, set, sessions, status,
top) against a real service: their ``--json`` parsed, their tables smoke-tested, their
exit statuses (0 done, 1 a failed operation with one line on stderr, 2 usage)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from qiskit import QuantumCircuit

import qdispatch
from qobjs import bell_qobj, ghz, qobj, slow_qobj
from support import ServiceProcess, submit, wait_final, wait_status


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = ServiceProcess(tmp_path_factory.mktemp("cli_jobs"), "--workers", "1").start()
    yield service
    service.stop()


def run(svc: ServiceProcess, *args: str, env: bool = True) -> subprocess.CompletedProcess[str]:
    """``qdispatch ARGS``, connected through QDISPATCH_URL/QDISPATCH_TOKEN (``env``)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("QDISPATCH_")}
    if env:
        environ.update(QDISPATCH_URL=svc.url, QDISPATCH_TOKEN=svc.token)
    return subprocess.run(
        [sys.executable, "-m", "qdispatch", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=environ,
    )


def as_json(svc: ServiceProcess, *args: str) -> Any:
    done = run(svc, *args, "--json")
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def one_line_failure(done: subprocess.CompletedProcess[str], command: str) -> str:
    """The failure's line, checked to be one line that names the command."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"qdispatch {command}: ")
    assert "Traceback" not in done.stderr
    return lines[0]


def operator_token(svc: ServiceProcess) -> str:
    done = run(svc, "token", "create", "--user", "ops", "--operator", "--db", str(svc.db))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_jobs_lists_with_filters(svc: ServiceProcess) -> None:
    client = svc.client()
    tagged = submit(client, "aer_simulator", bell_qobj(), name="cli-bell", tags=["cli-x"])
    other = submit(client, "aer_simulator", qobj([ghz(3, "g")]), name="cli-ghz")
    for job in (tagged, other):
        wait_final(client, job["id"])
    listed = as_json(svc, "jobs", "--limit", "50")
    assert {tagged["id"], other["id"]} <= {j["id"] for j in listed}
    assert [j["id"] for j in as_json(svc, "jobs", "--tag", "cli-x")] == [tagged["id"]]
    assert [j["id"] for j in as_json(svc, "jobs", "--name", "^cli-g")] == [other["id"]]
    assert len(as_json(svc, "jobs", "--limit", "1")) == 1
    done = as_json(svc, "jobs", "--status", "DONE", "--since", "1h", "--backend", "aer_simulator")
    assert {tagged["id"], other["id"]} <= {j["id"] for j in done}
    assert as_json(svc, "jobs", "--status", "RUNNING", "--tag", "cli-x") == []
    # The same through --url/--token instead of the environment.
    flags = run(svc, "jobs", "--url", svc.url, "--token", svc.token, "--json", env=False)
    assert flags.returncode == 0, flags.stderr
    assert tagged["id"] in {j["id"] for j in orjson.loads(flags.stdout)}
    table = run(svc, "jobs", "--tag", "cli-x")
    assert table.returncode == 0, table.stderr
    assert tagged["id"] in table.stdout
    assert "DONE" in table.stdout
    assert "cli-x" in table.stdout


def test_job_details_result_and_counts(svc: ServiceProcess) -> None:
    client = svc.client()
    job = submit(client, "aer_simulator", qobj([ghz(2, "a"), ghz(3, "b")], shots=300))
    details = as_json(svc, "job", job["id"], "--wait", "--timeout", "120")
    assert details["status"] == "DONE"
    assert [s["step"] for s in details["steps"]][-1] == "COMPLETED"
    assert details["run_seconds"] > 0
    assert details["queued_seconds"] >= 0
    assert details["counts"]["experiments"] == 2
    for summary, n_qubits in zip(details["counts"]["summary"], (2, 3), strict=True):
        assert summary["shots"] == 300
        assert summary["outcomes"] == 2  # a GHZ state: all zeros or all ones
        assert {outcome for outcome, _ in summary["top"]} == {"0" * n_qubits, "1" * n_qubits}
    result = run(svc, "job", job["id"], "--result")
    assert result.returncode == 0
    assert len(orjson.loads(result.stdout)["results"]) == 2
    table = run(svc, "job", job["id"])
    assert table.returncode == 0, table.stderr
    assert "time per step" in table.stdout
    assert "COMPLETED" in table.stdout
    assert "counts" in table.stdout


def test_a_failed_job_shows_its_error(svc: ServiceProcess) -> None:
    client = svc.client()
    # A Qobj the worker cannot run: an instruction on a qubit the experiment lacks.
    bad = qobj([ghz(2, "bad")])
    bad["experiments"][0]["instructions"].insert(0, {"name": "x", "qubits": [7]})
    answer = client.post("/jobs", content=orjson.dumps({"backend": "aer_simulator", "qobj": bad}))
    if answer.status_code != 201:
        pytest.skip("the service refuses this Qobj at submission")
    job = wait_final(client, answer.json()["id"])
    assert job["status"] == "ERROR"
    details = as_json(svc, "job", job["id"])
    assert details["error"]["message"]
    assert "counts" not in details
    assert "error" in run(svc, "job", job["id"]).stdout


def test_cancel_really_cancels(svc: ServiceProcess) -> None:
    client = svc.client()
    running = submit(client, "aer_simulator", slow_qobj(shots=20000))
    wait_status(client, running["id"], "RUNNING")
    queued = submit(client, "aer_simulator", bell_qobj())
    cancelled = run(svc, "cancel", queued["id"], running["id"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"cancelled {queued['id']}" in cancelled.stdout
    for job_id in (queued["id"], running["id"]):
        assert client.get(f"/jobs/{job_id}").json()["status"] == "CANCELLED"
    # Cancelling it again fails (it is final), and so does an unknown id; the exit
    # status says so, and every job is still tried.
    again = run(svc, "cancel", queued["id"], "no-such-job", "--json")
    assert again.returncode == 1
    outcomes = orjson.loads(again.stdout)
    assert outcomes[queued["id"]]["cancelled"] is False
    assert "CANCELLED" in outcomes[queued["id"]]["error"]
    assert outcomes["no-such-job"]["cancelled"] is False


def test_delete_removes_finished_jobs_only(svc: ServiceProcess) -> None:
    client = svc.client()
    done = submit(client, "aer_simulator", bell_qobj())
    wait_final(client, done["id"])
    running = submit(client, "aer_simulator", slow_qobj(shots=20000))
    wait_status(client, running["id"], "RUNNING")
    deleted = run(svc, "delete", done["id"], running["id"], "--json")
    assert deleted.returncode == 1  # one of them is still running
    outcomes = orjson.loads(deleted.stdout)
    assert outcomes[done["id"]] == {"deleted": True}
    assert outcomes[running["id"]]["deleted"] is False
    assert "only a finished job can be deleted" in outcomes[running["id"]]["error"]
    assert client.get(f"/jobs/{done['id']}").status_code == 404
    assert client.get(f"/jobs/{running['id']}").json()["status"] == "RUNNING"
    client.post(f"/jobs/{running['id']}/cancel")
    plain = run(svc, "delete", running["id"])
    assert plain.returncode == 0, plain.stderr
    assert f"deleted {running['id']}" in plain.stdout


def test_exit_statuses(svc: ServiceProcess) -> None:
    assert "no-such-job" in one_line_failure(run(svc, "job", "no-such-job"), "job")
    usage = run(svc, "jobs", "--limit", "many")
    assert usage.returncode == 2
    assert "usage:" in usage.stderr
    assert run(svc, "jobs", "--since", "soon").returncode == 2
    assert run(svc, "job").returncode == 2
    nobody = run(svc, "status", "--url", "http://127.0.0.1:9", "--token", "t", env=False)
    one_line_failure(nobody, "status")
    bad_token = run(svc, "jobs", "--url", svc.url, "--token", "wrong", env=False)
    assert "401" in one_line_failure(bad_token, "jobs") or "token" in bad_token.stderr


def bells(n: int) -> list[QuantumCircuit]:
    circuits = []
    for i in range(n):
        circuit = QuantumCircuit(2, 2, name=f"bell{i}")
        circuit.h(0)
        circuit.cx(0, 1)
        circuit.measure([0, 1], [0, 1])
        circuits.append(circuit)
    return circuits


def test_sets_progress_failures_and_resubmission(svc: ServiceProcess) -> None:
    operator = svc.client(operator_token(svc))
    assert operator.post("/backends/aer_simulator/pause").status_code == 200
    try:
        with qdispatch.connect(svc.url, token=svc.token) as service:
            job_set = qdispatch.IBMQJobManager().run(
                bells(7), service.backend("aer_simulator"), name="sweep", max_experiments_per_job=3
            )
            middle = job_set.managed_jobs()[1].job
            assert middle is not None
            middle.cancel()  # a failed chunk, as far as the set is concerned
    finally:
        assert operator.post("/backends/aer_simulator/resume").status_code == 200
    set_id = job_set.job_set_id()
    state = as_json(svc, "set", set_id, "--wait", "--timeout", "120")
    assert state["name"] == "sweep"
    assert state["jobs"] == 3
    assert state["experiments"] == 7
    assert state["statuses"] == {"CANCELLED": 1, "DONE": 2}
    assert state["experiments_done"] == 4
    assert [(c["start"], c["count"]) for c in state["chunks"]] == [(0, 3), (3, 3), (6, 1)]
    assert state["chunks"][1]["job_id"] == middle.job_id()
    listed = {s["id"]: s for s in as_json(svc, "sets")}
    assert listed[set_id]["statuses"] == {"CANCELLED": 1, "DONE": 2}
    assert "chunks" not in listed[set_id]
    assert set_id in run(svc, "sets").stdout

    redone = as_json(svc, "set", set_id, "--resubmit-failed", "--wait", "--timeout", "120")
    [again] = redone["resubmitted"]
    assert again["index"] == 1
    assert again["job_id"] != middle.job_id()
    assert not again["error"]
    assert redone["statuses"] == {"DONE": 3}
    assert redone["experiments_done"] == 7
    table = run(svc, "set", set_id)
    assert table.returncode == 0, table.stderr
    assert "chunks" in table.stdout
    assert "7 of 7" in table.stdout
    one_line_failure(run(svc, "set", "no-such-set"), "set")


def test_sessions(svc: ServiceProcess) -> None:
    with qdispatch.connect(svc.url, token=svc.token) as service:
        session = qdispatch.Session("aer_simulator", service=service)
        batch = qdispatch.Batch("aer_simulator", service=service)
        batch.close()
    listed = {s["id"]: s for s in as_json(svc, "sessions")}
    assert listed[session.session_id]["mode"] == "dedicated"
    assert listed[batch.session_id]["accepting_jobs"] is False
    assert [s["id"] for s in as_json(svc, "sessions", "--state", "closed")] == [batch.session_id]
    assert session.session_id in run(svc, "sessions").stdout


def test_status_and_top(svc: ServiceProcess) -> None:
    client = svc.client()
    wait_final(client, submit(client, "aer_simulator", bell_qobj())["id"])
    status = as_json(svc, "status")
    assert status["version"] == qdispatch.__version__
    assert status["executor"] == "local"
    assert status["capacity"] == 1
    assert set(status["workers"]) >= {"idle", "busy"}
    queue = status["queues"]["aer_simulator"]
    assert queue["queued"] == 0
    assert queue["mean_run_seconds"] > 0
    table = run(svc, "status")
    assert table.returncode == 0
    assert "queues" in table.stdout
    assert "aer_simulator" in table.stdout
    once = run(svc, "top", "--once")
    assert once.returncode == 0, once.stderr
    assert "running" in once.stdout
    assert "queued" in once.stdout
    lines = run(svc, "top", "--iterations", "2", "--interval", "0.1", "--json")
    assert lines.returncode == 0, lines.stderr
    snapshots = [orjson.loads(line) for line in lines.stdout.splitlines()]
    assert len(snapshots) == 2
    assert all({"info", "running", "queued"} <= set(s) for s in snapshots)
