"""A full disk: the service's store cannot take more data.

Fault injection, not mocks: the service runs with ``--max-store-mb`` (SQLite's
``max_page_count`` on its connection), and another process fills the store up to it, as
another program would fill a shared disk. New work is then refused with
``507 storage_full`` (and the client raises the mapped exception with that code), reads
go on, jobs already running finish and their outcomes are held; once ``qdispatch gc``
has freed space the held outcomes land, every accepted job ends DONE with its result, and
the store is intact."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from qiskit import QuantumCircuit

import qdispatch
from qdispatch import Session, encoding
from qdispatch.codes import STORAGE_FULL
from qdispatch.constants import DONE
from qdispatch.exceptions import IBMApiError, IBMQBackendApiError
from qdispatch.server.errors import StorageFull
from qdispatch.server.store import Store
from qobjs import bell_qobj
from support import (
    ServiceProcess,
    add_finished_jobs,
    bell_job,
    submit,
    wait_final,
    wait_status,
)

OLD = "2020-01-01T00:00:00.000000Z"
CAP_MB = 4
RESULT_BYTES = 48 * 1024

# A program that runs until the test opens its gate (a file), then returns a result that
# needs new pages to be stored: random hex from a seed, which the test recomputes.
GATE = """
    import random
    import time
    from pathlib import Path

    def main(backend, publisher, gate, seed, size):
        deadline = time.monotonic() + 300
        while not Path(gate).exists():
            if time.monotonic() > deadline:
                raise TimeoutError("nobody opened the gate")
            time.sleep(0.02)
        return random.Random(seed).randbytes(size).hex()
"""


def _tags(n: int = 60) -> list[str]:
    """Distinct tags of random hex: about 15 KB that compress to nothing less."""
    return [os.urandom(125).hex() for _ in range(n)]


def _bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2, 2, name=os.urandom(500).hex())  # incompressible
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit


def _post_job(client: httpx.Client, **fields: Any) -> httpx.Response:
    body = {"backend": "aer_simulator", "tags": _tags(), **fields}
    return client.post("/jobs", content=orjson.dumps(body))


def _fill(db: Path, cap_bytes: int) -> int:
    """Fill the store from this process until it is at least ``cap_bytes``: back-dated
    finished jobs with incompressible results. Answers how many were added."""
    added = 0
    while True:
        with sqlite3.connect(db) as probe:
            pages, size = (
                probe.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("page_count", "page_size")
            )
        probe.close()
        if pages * size >= cap_bytes:
            return added
        added += len(add_finished_jobs(db, 8, OLD, "filler", result_bytes=64 * 1024))


def _until_refused(call: Any, tries: int = 200) -> httpx.Response:
    """``call()`` until it is answered other than 201 (a row that fits is stored)."""
    for _ in range(tries):
        answer: httpx.Response = call()
        if answer.status_code != 201:
            return answer
    raise AssertionError(f"{tries} small writes all fitted")


def _sessions_until_refused(handle: Any, tries: int = 200) -> None:
    """Open sessions through the client until one raises (small rows fit for a while)."""
    for _ in range(tries):
        Session("aer_simulator", service=handle)
    raise AssertionError(f"{tries} sessions all fitted")


def _wait_info(client: httpx.Client, ok: Any, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = client.get("/info").json()
        if ok(info):
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.1)


def test_a_full_store_refuses_new_work_keeps_outcomes_and_recovers(tmp_path: Path) -> None:
    root = tmp_path / "svc"
    (root / "programs").mkdir(parents=True)
    (root / "programs" / "gate.py").write_text(textwrap.dedent(GATE))
    gate = root / "gate-open"
    service = ServiceProcess(
        root,
        "--workers",
        "2",
        "--max-store-mb",
        str(CAP_MB),
        "--programs-dir",
        str(root / "programs"),
    ).start()
    try:
        client = service.client()
        info = client.get("/info").json()
        assert info["storage"]["max_bytes"] == CAP_MB * 1024 * 1024
        assert info["storage"]["full"] is False
        # Two jobs on the two workers until the gate opens, and one queued behind them.
        running = []
        for seed in range(2):
            inputs = {"gate": str(gate), "seed": seed, "size": RESULT_BYTES}
            params = orjson.Fragment(encoding.dumps(inputs))
            answer = _post_job(client, program_id="gate", params=params, tags=[])
            assert answer.status_code == 201, answer.text
            running.append(answer.json()["id"])
        queued = submit(client, "aer_simulator", bell_qobj())["id"]
        for job_id in running:
            wait_status(client, job_id, "RUNNING", timeout=120)
        # The disk fills up under them.
        assert _fill(service.db, CAP_MB * 1024 * 1024) > 0

        # Every write a request makes is refused, saying why, and creates nothing.
        refused = _post_job(client, qobj=bell_qobj())
        assert refused.status_code == 507, refused.text
        error = refused.json()["error"]
        assert error["code"] == STORAGE_FULL
        assert "disk is full" in error["message"]
        assert "etry later" in error["message"]
        params = orjson.Fragment(encoding.dumps({"circuits": [_bell()], "shots": 10}))
        program = _post_job(client, program_id="circuit-runner", params=params)
        assert (program.status_code, program.json()["error"]["code"]) == (507, STORAGE_FULL)
        # A session is a small row: one may still fit in a page's free space, as on a
        # disk with a few bytes left; the first that needs a new page is refused.
        session = _until_refused(
            lambda: client.post("/sessions", json={"backend": "aer_simulator"})
        )
        assert (session.status_code, session.json()["error"]["code"]) == (507, STORAGE_FULL)
        tags = client.put(f"/jobs/{queued}/tags", json={"tags": _tags(90)})
        assert (tags.status_code, tags.json()["error"]["code"]) == (507, STORAGE_FULL)
        # The client raises each family's exception, with the status and the code.
        with qdispatch.connect(service.url, token=service.token) as handle:
            with pytest.raises(IBMQBackendApiError, match="disk is full") as ibmq:
                handle.backend("aer_simulator").run([_bell() for _ in range(30)], shots=10)
            assert (ibmq.value.status, ibmq.value.code) == (507, STORAGE_FULL)
            with pytest.raises(IBMApiError, match="disk is full") as runtime:
                handle.run("circuit-runner", {"circuits": [_bell() for _ in range(30)]})
            assert (runtime.value.status, runtime.value.code) == (507, STORAGE_FULL)
            with pytest.raises(IBMApiError, match="disk is full") as runtime:
                _sessions_until_refused(handle)
            assert (runtime.value.status, runtime.value.code) == (507, STORAGE_FULL)

        # Reads go on, and /info says the store is full.
        assert client.get(f"/jobs/{running[0]}").json()["status"] == "RUNNING"
        assert client.get("/jobs", params={"limit": 50}).status_code == 200
        storage = client.get("/info").json()["storage"]
        assert storage["refused_writes"] >= 4, storage
        assert storage["size_bytes"] >= CAP_MB * 1024 * 1024

        # The running jobs finish; what the store refuses is held, not dropped, and
        # /info says the store is full.
        gate.touch()
        _wait_info(
            client,
            lambda i: (
                i["running_jobs"] == 0
                and i["queued_jobs"] == 0
                and i["held_outcomes"] >= 1
                and i["storage"]["full"]
            ),
        )

        # Space is back: the operator deletes old finished jobs.
        gc = subprocess.run(
            [
                sys.executable,
                "-m",
                "qdispatch",
                "gc",
                "--older-than",
                "30d",
                "--db",
                str(service.db),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert gc.returncode == 0, gc.stderr
        # The held outcomes land at the watchdog's next retry.
        _wait_info(client, lambda i: i["held_outcomes"] == 0)
        for seed, job_id in enumerate(running):
            job = wait_final(client, job_id, timeout=120)
            assert job["status"] == DONE, job
            result = encoding.loads(client.get(f"/jobs/{job_id}/results").content)
            assert result == random.Random(seed).randbytes(RESULT_BYTES).hex()
        circuits = [queued, submit(client, "aer_simulator", bell_qobj(), tags=_tags())["id"]]
        for job_id in circuits:
            job = wait_final(client, job_id, timeout=120)
            assert job["status"] == DONE, job
            results = client.get(f"/jobs/{job_id}/results").json()
            assert sum(results["results"][0]["data"]["counts"].values()) == 256
        assert client.get("/info").json()["storage"]["full"] is False
        assert "is kept until it fits" in service.log()
    finally:
        service.stop()

    store = Store(service.db)
    try:
        assert store._db.execute("PRAGMA integrity_check").fetchall()[0][0] == "ok"
        assert store._db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        store.close()


def test_a_refused_write_is_rolled_back_whole_and_the_store_goes_on(tmp_path: Path) -> None:
    # SQLite rolls a transaction back itself on SQLITE_FULL; the store must neither hide
    # that behind "cannot rollback" nor leave half a job behind.
    store = Store(tmp_path / "jobs.db", max_bytes=1024 * 1024)
    try:
        # Five finished jobs first, while there is room: deleting them frees pages later
        # (finishing a job once the store is full would itself need room).
        finished = [store.create_job(bell_job("alice", _tags(90)))[0] for _ in range(5)]
        for job in finished:
            store.set_status(job.id, "CANCELLED")
        made = 5
        refused: StorageFull | None = None
        while refused is None and made < 1000:
            try:
                store.create_job(bell_job("alice", _tags(90)))
                made += 1
            except StorageFull as exc:
                refused = exc
        assert refused is not None
        assert (refused.status, refused.code) == (507, STORAGE_FULL)
        assert made > 0
        assert store.refused_writes == 1
        assert store.full_since is not None
        assert store.storage()["full"] is True
        assert not store._db.in_transaction
        counts = [
            store._db.execute(f"SELECT COUNT(DISTINCT job_id) FROM {table}").fetchone()[0]
            for table in ("job_data", "events")
        ]
        assert counts == [made, made]  # every job whole, the refused one not at all
        assert store._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == made
        # Reads go on, and once pages are freed writes succeed again and clear the flag.
        assert len(store.jobs_with_status("QUEUED")) == made - 5
        assert store.delete_finished_before("9999-01-01T00:00:00.000000Z") == 5
        store.create_job(bell_job("alice", _tags(90)))
        assert store.full_since is None
        assert store.storage()["refused_writes"] == 1
        assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (("--max-store-mb", "0.5"), "at least 1 MiB"),
        (("--retention", "soon"), "positive duration"),
        (("--retention", "0d"), "positive duration"),
    ],
)
def test_serve_refuses_bad_storage_options(
    tmp_path: Path, flag: tuple[str, str], message: str
) -> None:
    answer = subprocess.run(
        [
            sys.executable,
            "-m",
            "qdispatch",
            "serve",
            "--port",
            "0",
            "--db",
            str(tmp_path / "j.db"),
            *flag,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert answer.returncode == 2, answer.stderr
    assert message in answer.stderr
