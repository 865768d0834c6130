"""The ``qdispatch`` command line: ``token create`` and ``demo``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from qdispatch.server.store import Store


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
