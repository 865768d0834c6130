"""Fixtures: a real job service in a subprocess on an ephemeral 127.0.0.1 port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import qdispatch
from support import ServiceProcess


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Any]:
    """Start services with given ``qdispatch serve`` arguments; all stopped at teardown."""
    started: list[ServiceProcess] = []

    def start(*args: str, root: Path | None = None) -> ServiceProcess:
        path = root or tmp_path / f"service{len(started)}"
        path.mkdir(exist_ok=True)
        svc = ServiceProcess(path, *args).start()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One service shared by a module's tests (2 local workers)."""
    svc = ServiceProcess(tmp_path_factory.mktemp("service"), "--workers", "2").start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def connected(service: ServiceProcess) -> Iterator[Any]:
    """``qdispatch.connect()`` to the module's service."""
    with qdispatch.connect(service.url, token=service.token) as handle:
        yield handle


@pytest.fixture
def dask_scheduler() -> Iterator[str]:
    """The address of a local dask.distributed cluster (one worker process, two threads)."""
    distributed = pytest.importorskip("distributed")
    # A dashboard on a free port: with none asked for, dask tries 8787 and warns (an error
    # here) when another cluster on this machine has it.
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0"
    )
    yield cluster.scheduler_address
    cluster.close()
