"""Test support: the job service in a subprocess on an ephemeral 127.0.0.1 port, and
waiting for jobs."""

from __future__ import annotations

import contextlib
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

from qdispatch.constants import FINAL_STATUSES


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
