"""The local service: found through its state file, or started on 127.0.0.1.

A service bound to loopback writes ``server.json`` (url, token, pid) beside its store in
the user's data directory. Anything on this machine that wants "the local service" reads
that file, checks the service still answers, and otherwise starts one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson
import platformdirs


def default_data_dir() -> Path:
    """Where the local service keeps its store and state file."""
    override = os.environ.get("QDISPATCH_DATA_DIR")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir("qdispatch", appauthor=False))


@dataclass(frozen=True)
class LocalService:
    """How to reach a running local service; ``process`` is set if we started it."""

    url: str
    token: str
    pid: int
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Stop the service if this process started it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/info", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def read_state(data_dir: Path) -> LocalService | None:
    """The service described by ``data_dir/server.json``, if it is up."""
    path = data_dir / "server.json"
    try:
        state = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not state.get("token") or not _answers(state["url"]):
        return None
    return LocalService(state["url"], state["token"], int(state["pid"]))


DEFAULT_IDLE_TIMEOUT = 600.0


def find_or_start(
    data_dir: Path | None = None,
    workers: int | None = None,
    timeout: float = 60.0,
    *,
    detached: bool = False,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
) -> LocalService:
    """The running local service, or a new one on 127.0.0.1 with its store in
    ``data_dir``.

    A *detached* service runs in its own session: it outlives this process (jobs keep
    running after the script exits) and stops itself after ``idle_timeout`` seconds
    without work; ``qdispatch stop`` stops it at once. Otherwise :meth:`LocalService.stop`
    stops a service this call started.
    """
    data_dir = data_dir or default_data_dir()
    found = read_state(data_dir)
    if found is not None:
        return found
    data_dir.mkdir(parents=True, exist_ok=True)
    state_file = data_dir / "server.json"
    state_file.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "qdispatch",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--db",
        str(data_dir / "jobs.db"),
        "--state-file",
        str(state_file),
    ]
    if workers:
        cmd += ["--workers", str(workers)]
    if idle_timeout:
        cmd += ["--idle-timeout", str(idle_timeout)]
    log = open(data_dir / "service.log", "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=detached,  # no SIGINT from our terminal, no death with our session
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the local qdispatch service exited with code {process.returncode}; "
                f"see {data_dir / 'service.log'}"
            )
        found = read_state(data_dir)
        if found is not None and found.pid == process.pid:
            return LocalService(found.url, found.token, found.pid, None if detached else process)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"the local qdispatch service did not start within {timeout:.0f} s")


def stop(data_dir: Path | None = None, timeout: float = 30.0) -> int | None:
    """Stop the local service (SIGTERM, then wait); returns its pid, or None if none ran."""
    found = read_state(data_dir or default_data_dir())
    if found is None:
        return None
    os.kill(found.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(found.pid, 0)
        except ProcessLookupError:
            return found.pid
        time.sleep(0.05)
    raise RuntimeError(
        f"the local qdispatch service (pid {found.pid}) did not stop in {timeout:.0f} s"
    )
