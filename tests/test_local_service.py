"""The local service on a batch node: one service per store (the lock, simultaneous
``connect()`` calls), state files written on another host, stores on network
filesystems, and ``--workers auto``."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from qdispatch.local import LocalServiceError, find_or_start, read_state
from qdispatch.local import stop as stop_local
from qdispatch.server.cpus import (
    cgroup_cpu_limit,
    parse_cfs,
    parse_cpu_max,
    usable_cpus,
)
from qdispatch.server.filesystems import (
    fstype_of_magic,
    is_network_fstype,
    mount_fstype,
    network_fs_refusal,
)
from qdispatch.storelock import StoreBusyError, StoreLock, holder, lock_path, this_host
from support import ServiceProcess


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("QDISPATCH_URL", "QDISPATCH_TOKEN")}
    return {**env, "QDISPATCH_DATA_DIR": str(data_dir), **extra}


def _serve(
    db: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "qdispatch", "serve", "--port", "0", "--db", str(db), *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data directory for the local service; its service is stopped afterwards."""
    where = tmp_path / "data"
    monkeypatch.setenv("QDISPATCH_DATA_DIR", str(where))
    monkeypatch.delenv("QDISPATCH_URL", raising=False)
    monkeypatch.delenv("QDISPATCH_TOKEN", raising=False)
    yield where
    stop_local(where)


# -- one service per store -------------------------------------------------------------------


def test_a_second_serve_on_a_served_store_refuses_naming_host_and_pid(
    service_factory: Any,
) -> None:
    first: ServiceProcess = service_factory("--workers", "1")
    answer = _serve(first.db, "--workers", "1", "--state-file", str(first.root / "other.json"))
    assert answer.returncode == 2, answer.stdout + answer.stderr
    assert f"already served by pid {first.proc.pid} on host {this_host()}" in answer.stderr
    assert str(lock_path(first.db)) in answer.stderr
    # The first service is untouched: its state file and token still work.
    assert first.client().get("/jobs").status_code == 200
    assert not (first.root / "other.json").exists()
    # Once it is gone (even by kill -9) the store is free again.
    first.kill()
    assert StoreLock.try_acquire(first.db) is not None


def test_the_lock_excludes_other_openers_and_names_its_holder(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with StoreLock.acquire(db) as lock:
        lock.record()
        # Another open file description, even in this process, cannot take it.
        assert StoreLock.try_acquire(db) is None
        with pytest.raises(StoreBusyError, match=f"pid {os.getpid()} on host {this_host()}"):
            StoreLock.acquire(db)
        found = holder(db)
        assert found is not None
        assert found.here
        assert found.pid == os.getpid()
    assert StoreLock.try_acquire(db) is not None
    # The lock is a file of its own: the store itself is never locked or opened by it.
    assert not db.exists()


def _connect_and_run(data_dir: str, barrier: Any, results: Any) -> None:
    """One of many processes that connect at the same moment, run a job, and (after
    every other one has connected too) run another on the same connection."""
    os.environ["QDISPATCH_DATA_DIR"] = data_dir
    os.environ.pop("QDISPATCH_URL", None)
    from qiskit import QuantumCircuit  # noqa: PLC0415 - in the spawned child only

    import qdispatch  # noqa: PLC0415 - in the spawned child, after its environment is set

    qc = QuantumCircuit(2, 2)
    qc.x(1)
    qc.measure([0, 1], [0, 1])
    barrier.wait(timeout=300)  # every process is ready: connect at once
    try:
        service = qdispatch.connect()
        state = orjson.loads((Path(data_dir) / "server.json").read_bytes())
        first = service.backend("aer_simulator").run(qc, shots=20).result().get_counts()
        barrier.wait(timeout=300)  # every process has connected: no later start revokes
        second = service.backend("aer_simulator").run(qc, shots=30).result().get_counts()
        results.put((service.url, state["pid"], first, second))
    except Exception as exc:  # reported to the test, which fails with it
        results.put(("error", repr(exc), None, None))
        barrier.abort()


@pytest.mark.timeout(900)  # six processes import qiskit at once on a small machine
def test_simultaneous_connects_start_one_service_and_all_run_jobs(data_dir: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    n = 6
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_connect_and_run, args=(str(data_dir), barrier, results))
        for _ in range(n)
    ]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=600) for _ in range(n)]
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
    errors = [o for o in outcomes if o[0] == "error"]
    assert not errors, errors
    assert len({url for url, *_ in outcomes}) == 1
    assert len({pid for _, pid, *_ in outcomes}) == 1
    assert all(first == {"10": 20} and second == {"10": 30} for *_, first, second in outcomes)
    # One service was started: one start line in its log.
    log = (data_dir / "service.log").read_text()
    assert log.count("qdispatch service on") == 1, log


# -- node-aware state ------------------------------------------------------------------------


def test_a_state_file_from_another_host_is_never_trusted(
    data_dir: Path, service_factory: Any
) -> None:
    # A live service on this host at the URL the file names: a client that trusted a
    # loopback URL written elsewhere would connect to it.
    live: ServiceProcess = service_factory("--workers", "1")
    data_dir.mkdir(parents=True)
    state = {"url": live.url, "token": live.token, "pid": 1, "host": "node-b"}
    (data_dir / "server.json").write_bytes(orjson.dumps(state))
    assert read_state(data_dir) is None
    with pytest.raises(LocalServiceError) as caught:
        find_or_start(data_dir, detached=True)
    message = str(caught.value)
    assert "runs on host node-b" in message
    assert "QDISPATCH_DATA_DIR" in message
    assert "network address" in message
    # ...and no second service was started on the store node-b's service holds.
    assert not lock_path(data_dir / "jobs.db").exists()
    assert not (data_dir / "service.log").exists()
    # The same state file written here is trusted (it names the process holding the store).
    assert live.proc is not None
    here = {**state, "host": this_host(), "pid": live.proc.pid, "db": str(live.db)}
    (data_dir / "server.json").write_bytes(orjson.dumps(here))
    found = read_state(data_dir)
    assert found is not None
    assert found.url == live.url
    (data_dir / "server.json").unlink()  # not the data dir's own service: not to be stopped


def test_a_store_held_by_another_host_is_not_served_twice(data_dir: Path) -> None:
    db = data_dir / "jobs.db"
    lock = StoreLock.acquire(db)
    record = {"host": "node-c", "pid": 4242, "since": "2030-01-01T00:00:00Z"}
    os.pwrite(lock.fd, orjson.dumps(record), 0)
    try:
        with pytest.raises(LocalServiceError, match="runs on host node-c"):
            find_or_start(data_dir, detached=True, timeout=30)
    finally:
        lock.close()
    assert not (data_dir / "service.log").exists()


def test_the_state_file_records_the_host(data_dir: Path) -> None:
    found = find_or_start(data_dir, workers=1, detached=True)
    state = orjson.loads((data_dir / "server.json").read_bytes())
    assert state["host"] == this_host()
    assert state["pid"] == found.pid
    held = holder(data_dir / "jobs.db")
    assert held is not None
    assert held.pid == found.pid
    assert held.here


# -- network filesystems ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fstype",
    [
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "cifs",
        "smb3",
        "ceph",
        "9p",
        "fuse.sshfs",
        "fuse.glusterfs",
        "NFS4",
    ],
)
def test_network_filesystems_are_detected(fstype: str) -> None:
    assert is_network_fstype(fstype)


@pytest.mark.parametrize(
    "fstype", ["ext4", "xfs", "btrfs", "tmpfs", "zfs", "overlay", "fuse.lxcfs", "proc"]
)
def test_local_filesystems_are_not(fstype: str) -> None:
    assert not is_network_fstype(fstype)


@pytest.mark.parametrize(
    ("magic", "fstype"),
    [
        (0x6969, "nfs"),
        (0x0BD00BD0, "lustre"),
        (0x47504653, "gpfs"),
        (0x19830326, "beegfs"),
        (0xFF534D42, "cifs"),
        (0xFE534D42, "smb3"),
        (0x00C36400, "ceph"),
        (0x01021997, "9p"),
        (0xEF53, None),  # ext4
        (0x58465342, None),  # xfs
        (0x01021994, None),  # tmpfs
        (0x65735546, None),  # plain FUSE: statfs cannot tell sshfs from a local one
    ],
)
def test_statfs_magic_numbers(magic: int, fstype: str | None) -> None:
    assert fstype_of_magic(magic) == fstype


_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 27 0:50 / /home rw,relatime - nfs4 fs1:/export/home rw,vers=4.2
41 40 0:51 / /home/me/scratch\\040dir rw,relatime - lustre 10.0.0.1@o2ib:/scratch rw
42 27 0:52 / /mnt/remote rw,nosuid - fuse.sshfs me@host:/ rw,user_id=1000
43 27 8:2 / /home/local rw - xfs /dev/sda2 rw
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/home/me/.local/share/qdispatch", "nfs4"),
        ("/home", "nfs4"),
        ("/home/me/scratch dir/jobs", "lustre"),
        ("/home/me/scratch dirt", "nfs4"),  # a prefix of the name is not the mount
        ("/mnt/remote/x", "fuse.sshfs"),
        ("/home/local/x", "xfs"),
        ("/tmp/x", "ext4"),
    ],
)
def test_the_mount_containing_a_path_gives_its_type(path: str, fstype: str) -> None:
    assert mount_fstype(Path(path), _MOUNTINFO) == fstype


def test_this_machines_tmp_is_not_refused(tmp_path: Path) -> None:
    assert network_fs_refusal(tmp_path / "jobs.db") is None


def test_a_store_on_a_network_filesystem_is_refused_end_to_end(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    nfs = _env(tmp_path / "data", QDISPATCH_TEST_FSTYPE="nfs4")
    refused = _serve(db, "--workers", "1", env=nfs)
    assert refused.returncode == 2
    assert f"the store {db} is on a network filesystem (nfs4)" in refused.stderr
    for advice in ("--db", "QDISPATCH_DATA_DIR", "qdispatch serve", "--allow-network-fs"):
        assert advice in refused.stderr
    assert not db.exists()  # refused before SQLite made a store (and its WAL) there
    # connect() without a URL says the same: the service's refusal is in the error.
    code = "import qdispatch\nqdispatch.connect()\n"
    client = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=nfs,
    )
    assert client.returncode == 1
    assert "LocalServiceError" in client.stderr
    assert "is on a network filesystem (nfs4)" in client.stderr


def test_the_operator_can_opt_in_to_a_network_filesystem(
    service_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QDISPATCH_TEST_FSTYPE", "nfs")  # inherited by the service's process
    svc: ServiceProcess = service_factory("--workers", "1", "--allow-network-fs")
    assert svc.client().get("/info").status_code == 200


# -- --workers auto ----------------------------------------------------------------------------


def test_cpu_max_and_cfs_quota_parsing() -> None:
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("150000 100000\n") == 1.5
    assert parse_cpu_max("400000 100000") == 4.0
    assert parse_cpu_max("") is None
    assert parse_cfs("-1\n", "100000\n") is None
    assert parse_cfs("200000\n", "100000\n") == 2.0
    assert parse_cfs("garbage", "100000") is None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_tightest_of_the_job_and_its_parents(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    job = "/system.slice/slurmstepd.scope/job_42/step_0"
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "system.slice/slurmstepd.scope/job_42/cpu.max", "300000 100000\n")
    _write(root / job.strip("/") / "cpu.max", "max 100000\n")
    membership = tmp_path / "cgroup.txt"
    _write(membership, f"0::{job}\n")
    assert cgroup_cpu_limit(root, membership) == 3.0
    # A fractional quota rounds down (never below one), and the affinity mask caps it.
    _write(root / job.strip("/") / "cpu.max", "150000 100000\n")
    assert usable_cpus(root, membership) == min(1, len(os.sched_getaffinity(0)))
    _write(root / job.strip("/") / "cpu.max", "50000 100000\n")
    assert usable_cpus(root, membership) == 1


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cpu,cpuacct/slurm/uid_1000/job_7/cpu.cfs_quota_us", "200000\n")
    _write(root / "cpu,cpuacct/slurm/uid_1000/job_7/cpu.cfs_period_us", "100000\n")
    _write(root / "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    membership = tmp_path / "cgroup.txt"
    _write(membership, "4:memory:/slurm/uid_1000/job_7\n3:cpu,cpuacct:/slurm/uid_1000/job_7\n")
    assert cgroup_cpu_limit(root, membership) == 2.0
    assert usable_cpus(root, membership) == min(2, len(os.sched_getaffinity(0)))


def test_no_cgroup_quota_leaves_the_affinity_mask(tmp_path: Path) -> None:
    membership = tmp_path / "cgroup.txt"
    _write(membership, "0::/user.slice\n")
    assert cgroup_cpu_limit(tmp_path / "nothing", membership) is None
    assert usable_cpus(tmp_path / "nothing", membership) == len(os.sched_getaffinity(0))


def test_workers_auto_is_the_default_and_bad_counts_are_refused(
    service_factory: Any, tmp_path: Path
) -> None:
    svc: ServiceProcess = service_factory()
    info = httpx.get(f"{svc.url}/info", timeout=30).json()
    assert info["capacity"] == usable_cpus()
    bad = _serve(tmp_path / "x.db", "--workers", "none")
    assert bad.returncode == 2
    assert "give a positive number of workers, or auto" in bad.stderr
