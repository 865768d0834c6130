"""How many CPUs this process may use: ``--workers auto``.

``os.cpu_count()`` counts the machine's CPUs, not this process's share. A Slurm
allocation (or a container) limits it in two ways: the CPU affinity mask (Slurm's task
binding, ``cpuset`` cgroups) and a CFS bandwidth quota (cgroup v2 ``cpu.max``, v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us``). The usable count is the smaller of the two.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all of the machine's where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` (``"150000 100000"``: 1.5); ``None`` for
    ``"max …"`` (no limit) or text that is not a quota."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``; ``None``
    for a quota of ``-1`` (no limit)."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _candidates(mount: Path, group: str) -> list[Path]:
    """The cgroup directory of ``group`` under ``mount`` and each of its parents up to
    the mount (limits nest: the tightest one counts); the mount alone when the group's
    path is not visible there (a container with its own cgroup namespace)."""
    here = mount / group.strip("/") if group.strip("/") else mount
    found = [here, *(p for p in here.parents if p.is_relative_to(mount))]
    return [p for p in found if p.is_dir()] or [mount]


def cgroup_cpu_limit(
    root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The CPU quota of this process's cgroup (v2, else v1), the tightest of its
    ancestors; ``None`` when there is none."""
    membership = _read(proc_self_cgroup) or ""
    limits: list[float] = []
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, group = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2, the unified hierarchy
            for directory in _candidates(root, group):
                text = _read(directory / "cpu.max")
                limit = parse_cpu_max(text) if text is not None else None
                if limit is not None:
                    limits.append(limit)
        elif "cpu" in controllers.split(","):  # cgroup v1's cpu controller
            mount = next(
                (
                    root / name
                    for name in (controllers, "cpu,cpuacct", "cpu")
                    if (root / name).is_dir()
                ),
                None,
            )
            if mount is None:
                continue
            for directory in _candidates(mount, group):
                quota = _read(directory / "cpu.cfs_quota_us")
                period = _read(directory / "cpu.cfs_period_us")
                if quota is not None and period is not None:
                    limit = parse_cfs(quota, period)
                    if limit is not None:
                        limits.append(limit)
    return min(limits) if limits else None


def usable_cpus(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """The CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota
    (a fractional quota counts down: 1.5 CPUs is 1, never less than 1)."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_limit(root, proc_self_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return cpus
