"""The local service: found through its state file, or started on 127.0.0.1.

A service bound to loopback writes ``server.json`` (url, token, pid, host) beside its
store in the user's data directory (``QDISPATCH_DATA_DIR`` chooses another). Anything on
this machine that wants "the local service" reads that file, checks the service runs on
this host and still answers, and otherwise starts one, under the store's lock so that
there is never more than one.

The state file is believed only while the store's lock is held by the process it names
(its pid and host in the lock file): after a crash the file stays, naming a port any
local user may bind next, and a client that believed it would send that user its token.
``qdispatch stop`` signals no pid the lock does not confirm either.
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
from typing import Any

import orjson
import platformdirs

from .storelock import (
    HANDOFF_ENV,
    StoreLock,
    UnsafeStoreError,
    current_holder,
    holder,
    this_host,
)


def default_data_dir() -> Path:
    """Where the local service keeps its store and state file."""
    override = os.environ.get("QDISPATCH_DATA_DIR")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir("qdispatch", appauthor=False))


#: How long stopping the local service waits for it to drain (``serve --drain-timeout``,
#: default 20 s, plus its last writes) before it is killed or given up on.
STOP_GRACE_SECONDS = 40.0


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
                # Room for the service's drain (--drain-timeout, 20 s) and its last writes:
                # killed earlier, a running job's run would count as a failed attempt.
                self.process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/info", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class LocalServiceError(RuntimeError):
    """The local service cannot be found or started; the message says why and what to do."""


def _read_state_file(data_dir: Path) -> dict[str, Any] | None:
    try:
        state = orjson.loads((data_dir / "server.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def _elsewhere(state: dict[str, Any] | None) -> str | None:
    """The other host a state file was written on; ``None`` if it is this one's (or says
    none, as before state files named their host)."""
    host = state.get("host") if state else None
    return str(host) if host and host != this_host() else None


def _confirmed(data_dir: Path, state: dict[str, Any]) -> bool:
    """Whether the process ``state`` names holds its store's lock right now: the lock is
    held, and its record names the same pid on the same host."""
    db = Path(state.get("db") or data_dir / "jobs.db")
    held = current_holder(db)
    try:
        pid = int(state.get("pid") or 0)
    except (TypeError, ValueError):
        return False
    host = state.get("host") or this_host()
    return held is not None and (held.pid, held.host) == (pid, host)


def read_state(data_dir: Path) -> LocalService | None:
    """The service described by ``data_dir/server.json``, if it runs on this host, holds
    its store's lock and is up.

    A loopback URL written on another host is never tried: on this host the same port may
    be another service, or nothing. Nor is one whose service no longer holds the store's
    lock (it crashed): whoever answers on that port now is not it, and never sees the
    token."""
    state = _read_state_file(data_dir)
    if not state or not state.get("token") or _elsewhere(state):
        return None
    if not _confirmed(data_dir, state) or not _answers(state["url"]):
        return None
    return LocalService(state["url"], state["token"], int(state["pid"]))


DEFAULT_IDLE_TIMEOUT = 600.0

# Detached services this process started, by pid: kept so that they are reaped (a zombie
# still "exists" for ``kill(pid, 0)``) and their Popen never warns that it outlived us.
_DETACHED: dict[int, subprocess.Popen[bytes]] = {}


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

    One service per store, whoever calls: the store's lock (:mod:`qdispatch.storelock`)
    is taken before a service is started and handed to it, so processes that call this at
    the same moment start one service and all get it. A state file written on another host
    (a shared home directory) is never trusted, and no second service is started on a
    store another host's service holds: :class:`LocalServiceError` says what to do.

    A *detached* service runs in its own session: it outlives this process (jobs keep
    running after the script exits) and stops itself after ``idle_timeout`` seconds
    without work; ``qdispatch stop`` stops it at once. Otherwise :meth:`LocalService.stop`
    stops a service this call started.
    """
    data_dir = data_dir or default_data_dir()
    db = data_dir / "jobs.db"
    deadline = time.monotonic() + timeout
    while True:
        found = read_state(data_dir)
        if found is not None:
            return found
        other = _elsewhere(_read_state_file(data_dir))
        if other is not None:
            raise LocalServiceError(_served_elsewhere(data_dir, other))
        try:
            lock = StoreLock.try_acquire(db)
        except UnsafeStoreError as exc:  # a symlinked lock file, a directory others write
            raise LocalServiceError(str(exc)) from exc
        if lock is not None:
            with lock:  # the service keeps its own copy of the lock
                return _start(data_dir, lock, workers, deadline, detached, idle_timeout)
        held = holder(db)
        if held is not None and not held.here:
            raise LocalServiceError(_served_elsewhere(data_dir, held.host))
        if time.monotonic() > deadline:
            who = str(held) if held is not None else "another process"
            raise LocalServiceError(
                f"the store {db} is held by {who}, but no service answers at the URL in "
                f"{data_dir / 'server.json'} after {timeout:.0f} s; see {data_dir / 'service.log'}"
            )
        time.sleep(0.05)


def _served_elsewhere(data_dir: Path, host: str) -> str:
    return (
        f"the local qdispatch service of {data_dir} runs on host {host}, not on this one "
        f"({this_host()}): its 127.0.0.1 address cannot be reached from here, and a second "
        "service on the same store would corrupt it. Connect to that service by its network "
        "address (connect(url, token=...), QDISPATCH_URL/QDISPATCH_TOKEN), or give this "
        "host a store of its own on a node-local disk (QDISPATCH_DATA_DIR). If that service "
        f"is no longer running, delete {data_dir / 'server.json'}"
    )


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _start(
    data_dir: Path,
    lock: StoreLock,
    workers: int | None,
    deadline: float,
    detached: bool,
    idle_timeout: float | None,
) -> LocalService:
    """Start the service on ``data_dir``'s store, handing it ``lock``, and wait for it."""
    state_file = data_dir / "server.json"
    # We hold the store's lock, so no service serves it: a state file left is stale.
    state_file.unlink(missing_ok=True)
    lock.record()
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
        # One user, whose store is bounded by their disk (and `--max-store-mb`) alone.
        "--max-user-store-mb",
        "0",
    ]
    if workers:
        cmd += ["--workers", str(workers)]
    if idle_timeout:
        cmd += ["--idle-timeout", str(idle_timeout)]
    log_path = data_dir / "service.log"
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=detached,  # no SIGINT from our terminal, no death with our session
        pass_fds=(lock.fd,),
        env={**os.environ, HANDOFF_ENV: str(lock.fd)},
    )
    log.close()
    for pid, started in list(_DETACHED.items()):
        if started.poll() is not None:
            del _DETACHED[pid]
    if detached:
        _DETACHED[process.pid] = process
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalServiceError(
                f"the local qdispatch service exited with code {process.returncode}; "
                f"see {log_path}:\n{_log_tail(log_path)}"
            )
        found = read_state(data_dir)
        if found is not None and found.pid == process.pid:
            return LocalService(found.url, found.token, found.pid, None if detached else process)
        time.sleep(0.05)
    process.kill()
    raise LocalServiceError(f"the local qdispatch service did not start in time; see {log_path}")


def stop(data_dir: Path | None = None, timeout: float = STOP_GRACE_SECONDS) -> int | None:
    """Stop the local service (SIGTERM, then wait); returns its pid, or None if none ran."""
    found = read_state(data_dir or default_data_dir())
    if found is None:
        return None
    os.kill(found.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    ours = _DETACHED.get(found.pid)
    while time.monotonic() < deadline:
        if ours is not None:
            if ours.poll() is not None:  # our child: reaped here, else it stays a zombie
                return found.pid
        else:
            try:
                os.kill(found.pid, 0)
            except ProcessLookupError:
                return found.pid
        time.sleep(0.05)
    raise RuntimeError(
        f"the local qdispatch service (pid {found.pid}) did not stop in {timeout:.0f} s"
    )
