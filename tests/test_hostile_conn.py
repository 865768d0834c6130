"""Connections and local files an attacker could hold or plant: bodies trickled to routes
that need no token (public routes, the dashboard), a body that stalls after a burst,
control characters in what users name, a stale state file whose port someone else now
answers on, and a lock file or data directory others can write."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
import pytest

import qdispatch
from qdispatch import codes
from qdispatch.cli import jobs as cli_jobs
from qdispatch.cli import sets as cli_sets
from qdispatch.cli.output import Out as output
from qdispatch.local import LocalServiceError, find_or_start, read_state
from qdispatch.local import stop as stop_local
from qdispatch.storelock import StoreLock, UnsafeStoreError, holder, lock_path, this_host
from qobjs import bell_qobj
from support import ServiceProcess, submit, wait_final
from test_hostile_front import (
    MiB,
    big_upload_head,
    make_token,
    open_request,
    read_answer,
    ready,
    watched,
)
from test_hostile_slow import closed_by_peer

GRACE = 1.0
IDLE = 2.0

# A program whose log holds escape sequences: OSC 52 (write the clipboard), clear screen.
NOISY = """
def main(backend, publisher):
    print("one\\t\\x1b]52;c;ZXZpbA==\\x07")
    print("two \\x1b[2Jend")
    return {}
"""


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A service whose bodies must come at 64 KiB/s after a second, with no gap of two
    seconds, and room for 20 connections at once (the reviewer's probe)."""
    root = tmp_path_factory.mktemp("hostile-conn")
    (root / "programs").mkdir()
    (root / "programs" / "noisy.py").write_text(NOISY)
    service = ServiceProcess(
        root,
        "--programs-dir",
        str(root / "programs"),
        "--workers",
        "1",
        "--body-grace",
        str(GRACE),
        "--body-min-rate-kb",
        "64",
        "--body-idle-timeout",
        str(IDLE),
        "--header-timeout",
        "3",
        "--max-connections",
        "20",
    ).start()
    yield ready(service)
    service.stop()


def host_of(svc: ServiceProcess) -> str:
    return svc.url.removeprefix("http://")


def public_head(svc: ServiceProcess, length: int) -> str:
    return f"GET /info HTTP/1.1\nHost: {host_of(svc)}\nContent-Length: {length}"


def form_head(svc: ServiceProcess, length: int, origin: str | None = None) -> str:
    return (
        f"POST /ui/login HTTP/1.1\nHost: {host_of(svc)}\nOrigin: {origin or svc.url}\n"
        f"Content-Type: application/x-www-form-urlencoded\nContent-Length: {length}"
    )


def trickle_until_answered(sock: socket.socket, within: float) -> tuple[int, dict[str, str], dict]:
    """Send a byte every 0.2 s until the service answers (or ``within`` seconds pass)."""
    sock.settimeout(0.2)
    began = time.monotonic()
    while time.monotonic() - began < within:
        try:
            sock.sendall(b"a")
            return read_answer(sock)
        except (TimeoutError, BlockingIOError):
            continue
        except (BrokenPipeError, ConnectionResetError):  # answered and closed meanwhile
            break
    sock.settimeout(5)
    return read_answer(sock)


# -- 1. bodies on routes that need no token -------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_public_route_sent_a_body_is_answered_and_closed(
    svc: ServiceProcess, framing: str
) -> None:
    """GET /info declaring a body it never sends is answered at once, without waiting for
    the body, and the connection is closed rather than kept for the body to trickle in."""
    head = (
        public_head(svc, 8000)
        if framing == "length"
        else f"POST /info HTTP/1.1\nHost: {host_of(svc)}\nTransfer-Encoding: chunked"
    )
    sock = open_request(svc, head)
    sock.settimeout(5)
    status, headers, _ = read_answer(sock)
    assert status in (200, 405)
    assert headers.get("connection") == "close"
    assert closed_by_peer(sock, 5)
    sock.close()


def test_a_public_route_without_a_body_keeps_its_connection(svc: ServiceProcess) -> None:
    with httpx.Client(base_url=svc.url) as client:
        first = client.get("/info")
        assert first.status_code == 200
        assert first.headers.get("connection") != "close"
        assert client.get("/info").status_code == 200


def test_a_trickled_dashboard_form_is_cut(svc: ServiceProcess) -> None:
    """A login form trickled a byte at a time is 408 once the minimum rate is missed, as an
    authenticated request's body would be, and its connection is closed."""
    sock = open_request(svc, form_head(svc, 8000))
    status, headers, body = trickle_until_answered(sock, GRACE + 10)
    assert (status, body["error"]["code"]) == (408, codes.REQUEST_TIMEOUT)
    assert headers.get("connection") == "close"
    sock.close()


def test_a_big_dashboard_form_is_refused(svc: ServiceProcess) -> None:
    """Over 8 KiB, declared or streamed in chunks, is 413 before the login is looked at."""
    declared = open_request(svc, form_head(svc, 9000))
    declared.settimeout(5)
    status, headers, body = read_answer(declared)
    assert (status, body["error"]["code"]) == (413, codes.PAYLOAD_TOO_LARGE)
    assert headers.get("connection") == "close"
    declared.close()
    head = form_head(svc, 0).replace("Content-Length: 0", "Transfer-Encoding: chunked")
    chunk = b"a" * 4096
    piece = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    streamed = open_request(svc, head, piece * 3)
    streamed.settimeout(5)
    status, _, body = read_answer(streamed)
    assert (status, body["error"]["code"]) == (413, codes.PAYLOAD_TOO_LARGE)
    streamed.close()


def test_the_dashboard_still_gets_its_forms(svc: ServiceProcess) -> None:
    """A login from the dashboard's origin works; one from elsewhere is 403 csrf_failed."""
    with httpx.Client(base_url=svc.url, headers={"Origin": svc.url}) as client:
        answer = client.post("/ui/login", data={"token": svc.token, "next": "/ui/jobs"})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/jobs"
        assert client.get("/ui/jobs").status_code == 200
    with httpx.Client(base_url=svc.url, headers={"Origin": "http://evil.example"}) as evil:
        forged = evil.post("/ui/login", data={"token": svc.token})
        assert forged.status_code == 403
        assert "set-cookie" not in forged.headers


def test_trickling_without_a_token_does_not_hold_the_service(svc: ServiceProcess) -> None:
    """The reviewer's probe: 10 trickled login forms and 9 trickled GET /info bodies with
    room for 20 connections. The public ones are answered and closed at once, the forms
    cut after the grace; meanwhile and after, GET /info is answered."""
    with watched(svc, make_token(svc, "bystander")):
        forms = [open_request(svc, form_head(svc, 8000)) for _ in range(10)]
        public = [open_request(svc, public_head(svc, 8000)) for _ in range(9)]
        for sock in public:
            sock.settimeout(5)
            assert read_answer(sock)[1].get("connection") == "close"
            assert closed_by_peer(sock, 5)
            sock.close()
        assert httpx.get(f"{svc.url}/info", timeout=5).status_code == 200
        began = time.monotonic()
        answers = []
        for sock in forms:
            answers.append(trickle_until_answered(sock, GRACE + 10 - (time.monotonic() - began)))
        assert {(a[0], a[2]["error"]["code"]) for a in answers} == {(408, codes.REQUEST_TIMEOUT)}
        for sock in forms:
            sock.close()
    assert httpx.get(f"{svc.url}/info", timeout=5).status_code == 200


def test_a_body_that_stalls_after_a_burst_is_cut(svc: ServiceProcess) -> None:
    """1 MiB at once buys 16 s at the minimum rate; stalling after it is cut after the
    idle timeout instead, and the upload slot it held is given back."""
    token = make_token(svc, "burster")
    start = b'{"backend": "aer_simulator", "pad": "'
    sock = open_request(svc, big_upload_head(token), start + b"x" * MiB)
    began = time.monotonic()
    sock.settimeout(IDLE + 10)
    status, headers, body = read_answer(sock)
    assert (status, body["error"]["code"]) == (408, codes.REQUEST_TIMEOUT)
    assert "stalled" in body["error"]["message"]
    assert body["error"]["idle_seconds"] == IDLE
    assert headers.get("connection") == "close"
    assert time.monotonic() - began < 10  # well before the rate's 16 s
    sock.close()
    # Both of the user's upload slots are free again: two big bodies are read.
    for _ in range(2):
        answer = svc.client(token).post("/jobs", content=start + b"x" * 2 * MiB + b'"}')
        assert answer.status_code == 400


def test_the_idle_timeout_is_published(svc: ServiceProcess) -> None:
    assert svc.client().get("/info").json()["body_idle_seconds"] == IDLE


# -- 2. control characters and markup in what users name ------------------------------------

# OSC 52 (write the clipboard) and OSC 8 (a link), and rich markup.
CLIPBOARD = "\x1b]52;c;ZXZpbA==\x07"
LINK = "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\"
MARKUP = "[link=http://evil.example]x[/link][bold red]"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", f"bell{CLIPBOARD}"),
        ("tags", ["ok", f"t{LINK}"]),
        ("experiment_id", "exp\x9b31m"),  # C1 CSI
        ("client_info", {"qiskit": "2.0\x1b[2J"}),
    ],
)
def test_control_characters_are_refused_at_submission(
    svc: ServiceProcess, field: str, value: object
) -> None:
    answer = svc.client().post(
        "/jobs",
        content=orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(), field: value}),
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == codes.INVALID_REQUEST
    assert f"'{field}'" in error["message"]
    assert "control character" in error["message"]


def test_control_characters_are_refused_in_edits(svc: ServiceProcess) -> None:
    client = svc.client()
    job = submit(client, "aer_simulator", bell_qobj(), name=MARKUP, tags=[MARKUP])
    assert job["name"] == MARKUP  # brackets are printable: kept, shown literally
    tags = client.put(f"/jobs/{job['id']}/tags", json={"tags": ["fine", CLIPBOARD]})
    assert (tags.status_code, tags.json()["error"]["code"]) == (400, codes.INVALID_REQUEST)
    assert "'tags'" in tags.json()["error"]["message"]
    name = client.put(f"/jobs/{job['id']}/name", json={"name": f"x{LINK}"})
    assert (name.status_code, name.json()["error"]["code"]) == (400, codes.INVALID_REQUEST)
    assert "'name'" in name.json()["error"]["message"]
    shown = client.get(f"/jobs/{job['id']}").json()
    assert (shown["name"], shown["tags"]) == (MARKUP, [MARKUP])


def hostile_job() -> dict[str, Any]:
    """A job as an older service (or a store written before the check) might send it."""
    return {
        "id": f"job{CLIPBOARD}",
        "status": "ERROR",
        "backend": "aer_simulator",
        "name": f"{MARKUP}{LINK}",
        "tags": [f"{MARKUP}{CLIPBOARD}", "qdispatch_jobset:s1", "qdispatch_jobset_size:2:0"],
        "creation_date": "2026-01-01T00:00:00Z",
        "n_experiments": 1,
        "shots": 100,
        "steps": [{"step": f"CREATING{CLIPBOARD}", "time": None, "seconds": None}],
        "error": {"code": "failed", "message": f"boom {MARKUP}\x1b[31m"},
    }


def assert_inert(printed: str) -> None:
    for control in ("\x1b", "\x07", "\x9b"):
        assert control not in printed
    assert "[link=http://evil.example]x[/link][bold red]" in printed


def test_the_cli_prints_hostile_strings_inert(capsys: pytest.CaptureFixture[str]) -> None:
    """A job's name, tags, id and error with escape sequences and rich markup: the
    tables show the brackets literally and carry no escape sequence."""
    job = hostile_job()
    cli_jobs._show(job)
    output.console().print(output.table(cli_jobs.JOB_COLUMNS, [cli_jobs.job_row(job)]))
    assert_inert(capsys.readouterr().out)
    state = {
        "id": f"s1{CLIPBOARD}",
        "name": MARKUP,
        "backend": "aer_simulator",
        "created": None,
        "tags": [MARKUP],
        "experiments_done": 0,
        "experiments": 2,
        "statuses": {"ERROR": 1},
        "chunks": [{"index": 0, "job_id": job["id"], "status": "ERROR", "error": MARKUP}],
        "resubmitted": [{"index": 0, "job_id": None, "error": f"{MARKUP}{LINK}"}],
    }
    cli_sets._show(state)
    printed = capsys.readouterr().out
    assert_inert(printed)
    assert "job set s1]52;c;ZXZpbA==" in printed
    assert f"resubmission failed: {MARKUP}]8;;http://evil.example" in printed


def test_logs_are_filtered_unless_raw(svc: ServiceProcess) -> None:
    """``qdispatch job --logs`` drops the escape sequences a program printed (keeping its
    lines and tabs); ``--raw`` prints the log as the program wrote it."""
    client = svc.client()
    created = client.post(
        "/jobs", json={"program_id": "noisy", "backend": "aer_simulator", "params": {}}
    )
    assert created.status_code == 201, created.text
    assert wait_final(client, created.json()["id"])["status"] == "DONE"
    filtered = run_cli(svc, "job", created.json()["id"], "--logs")
    assert filtered.returncode == 0, filtered.stderr
    assert "\x1b" not in filtered.stdout
    assert "\x07" not in filtered.stdout
    assert "one\t]52;c;ZXZpbA==\ntwo [2Jend\n" in filtered.stdout
    raw = run_cli(svc, "job", created.json()["id"], "--logs", "--raw")
    assert f"one\t{CLIPBOARD}\ntwo \x1b[2Jend\n" in raw.stdout


def run_cli(svc: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``qdispatch ARGS`` connected to ``svc`` through QDISPATCH_URL/QDISPATCH_TOKEN."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("QDISPATCH_")}
    environ.update(QDISPATCH_URL=svc.url, QDISPATCH_TOKEN=svc.token)
    return subprocess.run(
        [sys.executable, "-m", "qdispatch", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=environ,
    )


# -- 3. a stale state file and whoever answers on its port ----------------------------------


class _Impostor(BaseHTTPRequestHandler):
    """Answers every request 200 (``/info`` included) and keeps what it was sent."""

    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        _Impostor.seen.append((self.path, self.headers.get("Authorization")))
        body = b'{"version": "0.1.0"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def impostor() -> Iterator[str]:
    """Another local user's HTTP server on the port a crashed service had; its URL."""
    _Impostor.seen.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data directory for the local service; its service is stopped afterwards."""
    where = tmp_path / "data"
    where.mkdir(mode=0o700)
    monkeypatch.setenv("QDISPATCH_DATA_DIR", str(where))
    monkeypatch.delenv("QDISPATCH_URL", raising=False)
    monkeypatch.delenv("QDISPATCH_TOKEN", raising=False)
    yield where
    stop_local(where)


def crashed_state(data_dir: Path, url: str, pid: int) -> None:
    """What a service killed with -9 leaves: its state file and its lock file's record,
    the lock itself free."""
    state = {"url": url, "token": "the-users-token", "pid": pid, "host": this_host()}
    (data_dir / "server.json").write_bytes(orjson.dumps({**state, "db": str(data_dir / "jobs.db")}))
    with StoreLock.acquire(data_dir / "jobs.db") as lock:
        lock.record(pid)


def test_a_stale_state_file_is_not_trusted(data_dir: Path, impostor: str) -> None:
    """connect() does not send the token to whatever answers on the stale state file's
    port: the store's lock is free, so it starts a service of its own."""
    crashed_state(data_dir, impostor, 4242)
    assert read_state(data_dir) is None
    service = qdispatch.connect()
    try:
        assert not service.url.startswith(impostor)
        assert service.backends()
    finally:
        service.close()
    assert not any(auth for _, auth in _Impostor.seen), _Impostor.seen
    state = orjson.loads((data_dir / "server.json").read_bytes())
    assert state["url"] != impostor
    found = read_state(data_dir)
    assert found is not None
    assert found.pid == state["pid"]
    assert stop_local(data_dir) == found.pid


def test_stop_signals_no_pid_the_lock_does_not_confirm(data_dir: Path, impostor: str) -> None:
    """A stale state file naming a pid that now is someone else's process: ``stop`` leaves
    it alone."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        crashed_state(data_dir, impostor, bystander.pid)
        assert stop_local(data_dir) is None
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


# -- 4. the lock file and the data directory ------------------------------------------------


def test_a_symlinked_lock_file_is_refused(tmp_path: Path) -> None:
    """A lock file planted as a symlink is neither followed nor written through."""
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    target = tmp_path / "victim"
    target.write_text("precious\n")
    lock_path(store / "jobs.db").symlink_to(target)
    with pytest.raises(UnsafeStoreError, match="symbolic link"):
        StoreLock.try_acquire(store / "jobs.db")
    assert holder(store / "jobs.db") is None
    assert target.read_text() == "precious\n"
    with pytest.raises(LocalServiceError, match="symbolic link"):
        find_or_start(store, timeout=30)
    done = subprocess.run(
        [sys.executable, "-m", "qdispatch", "serve", "--port", "0", "--db", str(store / "jobs.db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "symbolic link" in done.stderr + done.stdout
    assert target.read_text() == "precious\n"


def test_the_data_directory_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "new" / "jobs.db"
    with StoreLock.acquire(db):
        assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700


def test_a_data_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafeStoreError, match="writable by anyone"):
        StoreLock.try_acquire(shared / "jobs.db")
    assert not lock_path(shared / "jobs.db").exists()
    shared.chmod(0o770)  # our group's: allowed, with a warning
    with pytest.warns(UserWarning, match="writable by its group"):
        lock = StoreLock.try_acquire(shared / "jobs.db")
    assert lock is not None
    lock.close()
