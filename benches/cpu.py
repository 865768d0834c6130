"""CPU time of the processes a bench runs (the client, a service, its workers, a Dask
cluster), for the figures that say what the machine's cores allow."""

from __future__ import annotations

from typing import Any

import pytest


def psutil_module() -> Any:
    """psutil (installed with distributed), or the bench is skipped."""
    return pytest.importorskip("psutil")


def cpu_seconds(*processes: Any) -> float:
    """User + system CPU seconds the ``psutil.Process`` es have used so far (0 for one that
    has exited)."""
    psutil = psutil_module()
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total
