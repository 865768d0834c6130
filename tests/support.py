"""Test support: the job service in a subprocess on an ephemeral 127.0.0.1 port, and
waiting for jobs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from qdispatch.constants import DONE, FINAL_STATUSES, RUNNING
from qdispatch.server.store import NewJob, Store, compress


class ServiceProcess:
    """``qdispatch serve`` on a store in a temporary directory; restartable on the same store.

    ``launcher`` is what follows the interpreter on the command line, before ``serve``: a
    test that injects faults into the service's own process gives ``("-c", code)``, code
    that patches the service and then calls ``qdispatch.cli.main(sys.argv[1:])``.

    Unless ``args`` say otherwise, the service runs with ``--drain-timeout 0``: ``stop()``
    (SIGTERM) requeues running jobs at once rather than letting them finish, so that a
    test's teardown never waits for its jobs (tests/test_shutdown.py tests the drain)."""

    def __init__(
        self, root: Path, *args: str, launcher: tuple[str, ...] = ("-m", "qdispatch")
    ) -> None:
        self.root = root
        self.launcher = launcher
        self.db = root / "jobs.db"
        self.state_file = root / "server.json"
        self.args = list(args)
        if not any(arg.startswith("--drain-timeout") for arg in self.args):
            self.args += ["--drain-timeout", "0"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""
        self._clients: list[httpx.Client] = []

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        """Start the service and wait until it has written its state file."""
        self.state_file.unlink(missing_ok=True)
        log = open(self.root / "service.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *self.launcher,
                "serve",
                "--port",
                "0",
                "--db",
                str(self.db),
                "--state-file",
                str(self.state_file),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()}")
            if self.state_file.exists():
                state = orjson.loads(self.state_file.read_bytes())
                if state.get("pid") == self.proc.pid:
                    self.url, self.token = state["url"], state["token"]
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"service did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """What the service printed so far."""
        path = self.root / "service.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client authenticated as the local user (or with ``token``)."""
        headers = {"Authorization": f"Bearer {token or self.token}"}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)
        self._clients.append(client)
        return client

    def token_for(self, user: str, project: str | None = None) -> str:
        """Create a user with ``qdispatch token create`` and return its token."""
        cmd = [
            sys.executable,
            "-m",
            "qdispatch",
            "token",
            "create",
            "--user",
            user,
            "--db",
            str(self.db),
        ]
        if project:
            cmd += ["--project", project]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def kill(self) -> None:
        """``kill -9`` the service (its workers notice and exit)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """Stop the service gracefully."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_final(client: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll a job until it is in a final state."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in FINAL_STATUSES:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(0.05)


def wait_status(client: httpx.Client, job_id: str, status: str, timeout: float = 60.0) -> None:
    """Poll a job until it reaches ``status``."""
    deadline = time.monotonic() + timeout
    while client.get(f"/jobs/{job_id}").json()["status"] != status:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} never reached {status}")
        time.sleep(0.05)


def submit(
    client: httpx.Client, backend: str, qobj: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    """POST a job and return it; fails the test on any error answer."""
    response = client.post(
        "/jobs", content=orjson.dumps({"backend": backend, "qobj": qobj, **fields})
    )
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of a service, whose open connections can be cut
    at once (``cut()``): a dropped network, as a client sees it. New connections work
    again right after a cut. With ``refuse_websockets`` it closes every connection that
    asks for a WebSocket upgrade, as some HTTP proxies do."""

    def __init__(self, target_url: str, refuse_websockets: bool = False) -> None:
        host, port = target_url.removeprefix("http://").rsplit(":", 1)
        self._target = (host, int(port))
        self._refuse_websockets = refuse_websockets
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.cuts = 0
        self.refused = 0
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream: socket.socket) -> None:
        if self._refuse_websockets:
            # An HTTP proxy that does not pass WebSocket upgrades: the connection is closed.
            head = downstream.recv(8192, socket.MSG_PEEK)
            if b"upgrade: websocket" in head.lower():
                self.refused += 1
                downstream.close()
                return
        try:
            upstream = socket.create_connection(self._target)
        except OSError:
            downstream.close()
            return
        with self._lock:
            self._open |= {downstream, upstream}
        threading.Thread(target=self._pump, args=(upstream, downstream), daemon=True).start()
        self._pump(downstream, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass  # cut, or the other side closed
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)
            src.close()

    def cut(self) -> None:
        """Drop every open connection (both directions), as a network failure would."""
        with self._lock:
            sockets = list(self._open)
            self.cuts += 1
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        self._closed = True
        self._server.close()
        self.cut()


def bell_job(owner: str, tags: list[str] | None = None) -> NewJob:
    """A one-experiment Bell job as the service stores it (a real Qobj: it can run)."""
    qobj = {
        "qobj_id": "stored-bell",
        "type": "QASM",
        "schema_version": "1.3.0",
        "header": {},
        "config": {"shots": 64, "memory_slots": 2},
        "experiments": [
            {
                "header": {"name": "bell", "n_qubits": 2, "memory_slots": 2},
                "config": {"n_qubits": 2, "memory_slots": 2},
                "instructions": [
                    {"name": "h", "qubits": [0]},
                    {"name": "cx", "qubits": [0, 1]},
                    {"name": "measure", "qubits": [0, 1], "memory": [0, 1]},
                ],
            }
        ],
    }
    return NewJob(
        owner=owner,
        backend="aer_simulator",
        kind="circuit",
        inputs=orjson.dumps(qobj),
        n_experiments=1,
        shots=64,
        n_instructions=3,
        tags=tags or [],
    )


def backdate(store: Store, job_id: str, when: str) -> None:
    """Make every status step (and the creation) of a stored job happen at ``when``."""
    with store.transaction() as db:
        (steps,) = db.execute("SELECT time_per_step FROM jobs WHERE id = ?", (job_id,)).fetchone()
        db.execute(
            "UPDATE jobs SET time_per_step = ?, created = ? WHERE id = ?",
            (orjson.dumps(dict.fromkeys(orjson.loads(steps), when)).decode(), when, job_id),
        )


def add_finished_jobs(
    db: Path, count: int, ended: str, owner: str, result_bytes: int = 64, tag: str = "old"
) -> list[str]:
    """Put ``count`` DONE jobs of ``owner`` that ended at ``ended`` into the store at
    ``db``, as if they had run then: each with its inputs, events, tag ``tag`` and a
    result of ``result_bytes`` random (incompressible) bytes. One job is made the way the
    service makes them, the rest are copies of it, in one transaction of this process's
    own connection (never the service's: a second connection in the service's process
    would be the corruption hazard the store warns about)."""
    store = Store(db)
    try:
        template, _ = store.create_job(bell_job(owner, [tag]))
        store.set_status(template.id, RUNNING)
        store.set_status(template.id, DONE, result=orjson.dumps({"filler": True}))
        backdate(store, template.id, ended)
        columns = [row[1] for row in store._db.execute("PRAGMA table_info(jobs)")]
        copied = ", ".join(c for c in columns if c != "id")
        ids = [template.id]
        with store.transaction() as tx:
            for _ in range(count - 1):
                job_id = os.urandom(12).hex()
                tx.execute(
                    f"INSERT INTO jobs (id, {copied}) SELECT ?, {copied} FROM jobs WHERE id = ?",
                    (job_id, template.id),
                )
                for table, select in (
                    ("events", "?, seq, type, data FROM events"),
                    ("job_data", "?, kind, data FROM job_data"),
                    ("job_tags", "tag, ? FROM job_tags"),
                ):
                    tx.execute(
                        f"INSERT INTO {table} SELECT {select} WHERE job_id = ?",
                        (job_id, template.id),
                    )
                ids.append(job_id)
            tx.executemany(
                "UPDATE job_data SET data = ? WHERE job_id = ? AND kind = 'result'",
                [(compress(os.urandom(result_bytes)), job_id) for job_id in ids],
            )
    finally:
        store.close()
    return ids
