"""The wheel ``make wheel`` builds, installed the way a cluster user installs it: into a new
virtual environment, with no Rust toolchain on PATH and every dependency from wheels.

Runs only where ``QDISPATCH_WHEEL`` names the wheel (``make wheel test-wheel`` sets it):
installing qiskit, qiskit-aer and the service's dependencies from the package index takes
minutes, and a wheel left in dist/ by an earlier build may not match the sources.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

WHEEL = os.environ.get("QDISPATCH_WHEEL", "")

pytestmark = pytest.mark.skipif(
    not WHEEL, reason="QDISPATCH_WHEEL names no wheel (make wheel test-wheel)"
)

# manylinux2014 is glibc 2.17 (CentOS 7); RHEL/Rocky 8 have 2.28, 9 has 2.34.
GLIBC_FLOOR = (2, 17)
RUST_TOOLS = ("cargo", "rustc", "rustup")
# What this test may not inherit: our sources on the import path, our venv, Rust's homes.
DROPPED_ENV = ("PYTHONPATH", "MYPYPATH", "VIRTUAL_ENV", "CARGO_HOME", "RUSTUP_HOME")


def _wheel() -> Path:
    path = Path(WHEEL).resolve()
    assert path.is_file(), f"QDISPATCH_WHEEL={WHEEL} is not a file"
    return path


def _without_rust(venv: Path, data_dir: Path) -> dict[str, str]:
    """The environment of a cluster login: the venv first, no directory that holds Rust."""
    kept = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not any((Path(d) / tool).exists() for tool in RUST_TOOLS)
    ]
    path = os.pathsep.join([str(venv / "bin"), *kept])
    for tool in RUST_TOOLS:
        assert shutil.which(tool, path=path) is None, f"{tool} still on PATH"
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(PATH=path, QDISPATCH_DATA_DIR=str(data_dir), PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A new venv with the wheel installed (binaries only), and the environment to use it."""
    root = tmp_path_factory.mktemp("wheel")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = _without_rust(venv, root / "data")
    # --only-binary: a dependency that would have to be compiled (orjson, pydantic-core and
    # rustworkx are Rust too) fails here instead of passing only where Rust is installed.
    # --no-compile: byte-compiling qiskit and scipy was a third of the install's time.
    install = ["install", "--quiet", "--no-compile", "--only-binary", ":all:", str(_wheel())]
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", *install],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    yield venv, env
    # The demo leaves the local service running for later scripts; this one has none.
    subprocess.run(
        [str(venv / "bin" / "qdispatch"), "stop"], env=env, cwd=root, timeout=120, check=False
    )


def test_wheel_is_abi3_for_glibc_2_17() -> None:
    with zipfile.ZipFile(_wheel()) as wheel:
        meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/WHEEL"))
        tags = re.findall(r"^Tag: (\S+)$", wheel.read(meta).decode(), re.MULTILINE)
    # abi3 from CPython 3.10 (pyo3's abi3-py310), glibc 2.17; maturin also writes the
    # manylinux2014 alias, which older pips know.
    assert "cp310-abi3-manylinux_2_17_x86_64" in tags
    assert all(t.startswith("cp310-abi3-manylinux") for t in tags), tags


def test_extension_needs_no_symbol_newer_than_glibc_2_17(tmp_path: Path) -> None:
    with zipfile.ZipFile(_wheel()) as wheel:
        so = wheel.extract("qdispatch/_native.abi3.so", tmp_path)
    symbols = subprocess.run(
        ["objdump", "-T", so], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    versions = {
        tuple(int(part) for part in v.split("."))
        for v in re.findall(r"\bGLIBC_(\d+(?:\.\d+)+)\b", symbols)
    }
    assert versions, "no versioned glibc symbol found: not a glibc extension?"
    assert max(versions) <= GLIBC_FLOOR, sorted(versions)


def test_extension_unwinds_with_the_systems_libgcc_s(tmp_path: Path) -> None:
    # glibc unwinds an exiting thread with libgcc_s; an unwinder linked into the extension
    # (zig's libunwind) misreads that unwind's context (the next test shows the crash).
    with zipfile.ZipFile(_wheel()) as wheel:
        so = wheel.extract("qdispatch/_native.abi3.so", tmp_path)
    headers = subprocess.run(
        ["objdump", "-p", so], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert re.search(r"NEEDED\s+libgcc_s\.so\.1\b", headers), headers
    symbols = subprocess.run(
        ["objdump", "-T", so], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert re.search(r"\*UND\*.*\(GCC_[\d.]+\)\s+_Unwind_GetLanguageSpecificData$", symbols, re.M)


# A daemon thread whose blocking native call (GIL released) returns while the interpreter
# shuts down: Python <= 3.13 ends it with pthread_exit, which unwinds through the
# extension's Rust frames. Late.__del__ runs after shutdown has begun and keeps the
# interpreter alive (GIL released) past the end of the thread's 2 s wait.
EXIT_DURING_SHUTDOWN = """
import threading, time
from qdispatch._native import Client

client = Client("http://127.0.0.1:9", "token")
threading.Thread(target=client.next_events, args=(2.0,), daemon=True).start()

class Late:
    def __del__(self):
        time.sleep(5)

late = Late()
"""


@pytest.mark.timeout(1800)
def test_a_thread_ending_at_interpreter_exit_does_not_crash(
    installed: tuple[Path, dict[str, str]],
) -> None:
    venv, env = installed
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", EXIT_DURING_SHUTDOWN],
        env=env,
        cwd=venv.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)


@pytest.mark.timeout(1800)
def test_demo_runs_from_the_installed_wheel(installed: tuple[Path, dict[str, str]]) -> None:
    venv, env = installed
    code = "import qdispatch, qdispatch._native as n; print(qdispatch.__file__, n.__file__)"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        env=env,
        cwd=venv.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).is_relative_to(venv), f"imported {line}, not the wheel's"
    demo = subprocess.run(
        [str(venv / "bin" / "qdispatch"), "demo", "--circuits", "200", "--shots", "256"],
        env=env,
        cwd=venv.parent,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "200 circuits in " in demo.stdout
    assert "circuit 0: {" in demo.stdout
    assert "in a session: Estimator <ZZ> = " in demo.stdout
    stopped = subprocess.run(
        [str(venv / "bin" / "qdispatch"), "stop"],
        env=env,
        cwd=venv.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "stopped the local service" in stopped.stdout, stopped.stdout + stopped.stderr
