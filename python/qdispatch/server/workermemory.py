"""A local worker's memory limit (``serve --worker-memory-mb``).

A job can make the process that runs it allocate without bound: a statevector of many
qubits, a result of millions of memory strings, inputs that decode into large arrays.
Without a limit of its own, one worker takes the machine (and every other user's jobs)
down with it. Each local worker therefore runs under ``RLIMIT_DATA``: the kernel refuses
the allocation that would take its private writable memory past the limit, and the
library that asked fails (Python's ``MemoryError``, Aer's failed experiment, or an abort
of C++ or Rust code, which kills the worker; :mod:`.executors` tells the job why and
starts another worker).

``RLIMIT_DATA``, not ``RLIMIT_AS``: the address space also counts what is reserved and
never used (glibc's 64 MiB arena per thread that allocates, every thread's stack, the
shared libraries), so a limit on it grows with Aer's OpenMP threads rather than with the
job. qiskit's Rust allocator (mimalloc) reserves, and maps writable, a 1 GiB arena up
front, which ``RLIMIT_DATA`` would count: :func:`prepare_environment` makes it reserve
64 MiB at a time instead (before a worker starts, as it reads its options at load).

Aer's own ``max_memory_mb`` is set below the limit (:func:`aer_max_memory_mb`), so that a
statevector too large for the worker is refused by Aer, cleanly, before it allocates.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

#: The smallest limit ``--worker-memory-mb`` takes (0 aside): a worker holds about 250 MB
#: before any job (Python, qiskit, Aer), measured with ``/proc/self/status``'s ``VmData``.
MIN_WORKER_MEMORY_MB = 512
#: The default per worker: this share of the machine's memory (or its cgroup's limit),
#: divided among the workers, and at least this much.
DEFAULT_SHARE = 0.8
DEFAULT_FLOOR_MB = 1024
# What the limit keeps from Aer's statevector: the worker's own ~250 MB, the job's
# circuits and its result (at least this much, or a quarter of the limit).
_AER_RESERVE_MB = 256
_MIMALLOC_ARENA = "MIMALLOC_ARENA_RESERVE"

# This process's limit in MB, once apply() has set it (0: none).
_limit_mb = 0


def machine_memory_bytes(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Physical memory, or the cgroup v2 ``memory.max`` of this process's group when it
    is lower (a container, a Slurm allocation); 0 when neither can be read."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        total = 0
    # No cgroup v2 file to read (cgroup v1, no /proc): physical memory stands.
    with contextlib.suppress(OSError):
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        groups = [line[3:] for line in lines if line.startswith("0::")]  # cgroup v2
        for group in groups:
            text = (cgroup_root / group.strip("/") / "memory.max").read_text().strip()
            if text.isdigit() and (total == 0 or int(text) < total):
                total = int(text)
    return total


def default_worker_memory_mb(workers: int) -> int:
    """The default limit of each of ``workers`` local workers: all of them at their limit
    still fit in ``DEFAULT_SHARE`` of the machine's memory (the rest is the service's and
    the system's), but never less than ``DEFAULT_FLOOR_MB``."""
    share = int(machine_memory_bytes() * DEFAULT_SHARE) // max(1, workers) >> 20
    return max(DEFAULT_FLOOR_MB, share)


#: The largest memory limit (a worker's, a checking process's) the service takes: 1 TiB,
#: or the machine's memory where that is more. Beyond it a limit means nothing, and a big
#: enough one overflows ``setrlimit`` (every worker would die at start, respawned forever).
MAX_LIMIT_FLOOR_MB = 1 << 20


def max_limit_mb() -> int:
    """The largest memory limit, in MB, that ``--worker-memory-mb`` or
    ``--check-memory-mb`` takes on this machine."""
    return max(MAX_LIMIT_FLOOR_MB, machine_memory_bytes() >> 20)


def overcommitted(workers: int, limit_mb: int, machine_bytes: int | None = None) -> str | None:
    """Why ``workers`` workers of ``limit_mb`` each do not protect the machine (their
    limits together exceed its memory, as the 1024 MB floor allows on a small machine with
    many CPUs), or ``None``."""
    machine = machine_memory_bytes() if machine_bytes is None else machine_bytes
    if not limit_mb or not machine or workers * (limit_mb << 20) <= machine:
        return None
    return (
        f"{workers} workers x {limit_mb} MB (--worker-memory-mb) is more than the machine's "
        f"{machine >> 20} MB: several large jobs at once can still exhaust it; fewer "
        "--workers or a lower --worker-memory-mb keep them within it"
    )


def prepare_environment() -> None:
    """Before workers are spawned: qiskit's allocator (mimalloc) is to reserve 64 MiB at
    a time, not a 1 GiB arena that ``RLIMIT_DATA`` counts from the start (an operator's
    own setting is kept)."""
    os.environ.setdefault(_MIMALLOC_ARENA, "64MiB")


def apply(limit_mb: int) -> None:
    """In a worker, at start: limit its data segment to ``limit_mb`` (0: no limit)."""
    global _limit_mb  # the process's one limit, read by its jobs
    if limit_mb <= 0:
        return
    limit = limit_mb << 20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    _limit_mb = limit_mb


def limit_mb() -> int:
    """This process's memory limit in MB (0: none was applied)."""
    return _limit_mb


def aer_max_memory_mb() -> int | None:
    """Aer's ``max_memory_mb`` for this process: below its limit by what the worker needs
    besides the statevector; ``None`` without a limit (Aer's own default then)."""
    if not _limit_mb:
        return None
    return max(1, _limit_mb - max(_AER_RESERVE_MB, _limit_mb // 4))


def exceeded(limit: int | None = None) -> str:
    """The error of a job that needed more memory than its worker may use."""
    limit = _limit_mb if limit is None else limit
    if not limit:
        return "the job ran out of memory in its worker (MemoryError)"
    return (
        f"the job needed more memory than a worker may use: {limit} MB (the service's "
        "--worker-memory-mb); the worker was replaced"
    )


# How often a worker notes how much it uses, and how near its limit a worker that died of
# a signal must have come for its death to be put down to the limit: not every library
# checks what malloc returns (orjson, writing a result, dies of SIGSEGV at the limit).
_WATCH_SECONDS = 0.05
NEAR_LIMIT = 0.8


def data_bytes(pid: int | str = "self") -> int:
    """The data segment (``VmData``) of process ``pid`` in bytes; 0 when it cannot be read
    (the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return 0


#: A worker that kept more than this share of what its limit leaves beyond what it held at
#: start is replaced after its job: qiskit's Rust allocator (mimalloc) keeps what a large
#: job took, so the worker would stay near its limit and every later job on it, anyone's,
#: would fail to allocate. Measured from its start, so that a small limit, most of it
#: imports, does not replace the worker after every job.
RETIRE_SHARE = 0.5

#: A worker's exit status when a MemoryError is raised outside a job's own code (unpickling
#: its task, pickling its reply): its job failed for memory, not a transient death.
EXIT_OUT_OF_MEMORY = 75


def holds_too_much(pid: int | None, limit: int, baseline: int = 0) -> bool:
    """Whether a worker (process ``pid``, limit ``limit`` MB, ``baseline`` bytes held when
    it started) kept so much of what its last job took that it is to be replaced rather
    than given another job."""
    if not limit or pid is None:
        return False
    budget = (limit << 20) - baseline
    return data_bytes(pid) > baseline + RETIRE_SHARE * budget


# The shared peak of this worker, once watch() has started, and what keeps its watcher
# and restart_peak() (this process's two threads, its only writers) from losing a write.
_peak: Any = None
_peak_lock = threading.Lock()


def watch(peak: Any) -> None:
    """In a worker with a limit: keep ``peak.value`` (read by the service when the worker
    dies) at the most data the process has used since it last took a job. Only the worker
    writes it: a reset by the service could be lost to the watcher's unlocked max."""
    global _peak  # the process's one watcher
    _peak = peak

    def sample() -> None:
        while True:
            used = data_bytes()
            with _peak_lock:
                peak.value = max(peak.value, used)
            time.sleep(_WATCH_SECONDS)

    threading.Thread(target=sample, name="qd-memory-watch", daemon=True).start()


def restart_peak() -> None:
    """In a worker, as it takes a job: the peak counts from what it uses now, not from
    what an earlier job took."""
    if _peak is None:
        return
    with _peak_lock:
        _peak.value = data_bytes()


def came_near(peak_bytes: int, limit: int) -> bool:
    """Whether a worker that used ``peak_bytes`` came near its limit of ``limit`` MB."""
    return bool(limit) and peak_bytes >= NEAR_LIMIT * (limit << 20)


# What a process says on stderr as an allocation at its limit kills it: C++'s uncaught
# std::bad_alloc, Rust's alloc error handler, mimalloc, libc (posix_memalign's ENOMEM).
# Only allocator aborts: a job's own words ("MemoryError" in a traceback it printed) are not
# a death by the limit.
OUT_OF_MEMORY_MARKERS = (
    b"std::bad_alloc",
    b"memory allocation of ",
    b"mimalloc: error: unable to allocate",
    b"Cannot allocate memory",
)


def says_out_of_memory(stderr_tail: bytes) -> bool:
    """Whether a dead worker's last words (since it took its job) are those of a refused
    allocation."""
    return any(marker in stderr_tail for marker in OUT_OF_MEMORY_MARKERS)
