"""The ``qdispatch`` command line: ``token create``, ``serve``'s checks, ``demo`` and ``stop``."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from qdispatch import cli, local
from qdispatch.server.store import Store
from qdispatch.storelock import this_host


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qdispatch", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_token_create_prints_a_token_stored_hashed(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    made = run("token", "create", "--user", "ada", "--project", "lab", "--db", str(db))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert len(token) >= 40
    store = Store(db)
    try:
        assert store.user_for_token(token) == ("ada", "lab", False)
        assert store.user_for_token(token + "x") is None
        stored = [r[0] for r in store._db.execute("SELECT hash FROM tokens")]
        assert token not in stored  # only its hash is kept
    finally:
        store.close()
    empty = run("token", "create", "--user", " ", "--db", str(db))
    assert empty.returncode == 2
    assert "user name must not be empty" in empty.stderr


def test_serve_refuses_dask_without_scheduler(tmp_path: Path) -> None:
    answer = run("serve", "--port", "0", "--db", str(tmp_path / "x.db"), "--executor", "dask")
    assert answer.returncode == 2
    assert "--executor dask needs --scheduler ADDRESS" in answer.stderr


def test_serve_refuses_a_programs_dir_that_is_not_a_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    answer = run(
        "serve", "--port", "0", "--db", str(tmp_path / "x.db"), "--programs-dir", str(missing)
    )
    assert answer.returncode == 2
    assert f"--programs-dir {missing} is not a directory" in answer.stderr


def test_demo_runs_end_to_end_on_a_noisy_device(tmp_path: Path) -> None:
    done = run(
        "demo",
        "--circuits",
        "40",
        "--backend",
        "fake_generic_5q",
        "--shots",
        "200",
        env={"QDISPATCH_DATA_DIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "40 circuits in 1 jobs" in done.stdout
    assert "circuit 0: {" in done.stdout
    assert "in a session: Estimator <ZZ> = " in done.stdout
    # The local service stays up for later scripts, until idle or `qdispatch stop`.
    assert (tmp_path / "server.json").exists()
    stopped = run("stop", env={"QDISPATCH_DATA_DIR": str(tmp_path)})
    assert "stopped the local service" in stopped.stdout
    assert not (tmp_path / "server.json").exists()


# A stand-in for a service that will not stop: it answers GET /info as the state file's
# service must, and ignores SIGTERM.
_STUBBORN = textwrap.dedent(
    """
    import signal, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Info(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            return  # quiet: the test reads stderr

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # As a real service does: it holds its store's lock, which names it (stop signals no
    # process the lock does not confirm).
    from pathlib import Path
    from qdispatch.storelock import StoreLock
    lock = StoreLock.acquire(Path(sys.argv[1]) / "jobs.db")
    lock.record()
    server = HTTPServer(("127.0.0.1", 0), Info)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """
)


def test_stop_reports_a_service_that_does_not_exit_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _STUBBORN, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            port = int(child.stdout.readline())
            state = {
                "url": f"http://127.0.0.1:{port}",
                "token": "t",
                "pid": child.pid,
                "host": this_host(),
            }
            (tmp_path / "server.json").write_bytes(orjson.dumps(state))
            monkeypatch.setenv("QDISPATCH_DATA_DIR", str(tmp_path))
            # The real stop, with a short grace instead of STOP_GRACE_SECONDS (40 s).
            stop = functools.partial(local.stop, timeout=1.0)
            monkeypatch.setattr(cli.admin, "stop_local_service", stop)
            assert cli.main(["stop"]) == 1
            out, err = capsys.readouterr()
            assert out == ""
            assert err == (
                f"qdispatch stop: the local qdispatch service (pid {child.pid}) "
                "did not stop in 1 s\n"
            )
            assert child.poll() is None  # it was signalled, not killed
        finally:
            child.kill()
