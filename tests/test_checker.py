"""The checking processes of program inputs (``server/programs/checker.py``): what a
check that crashes its process, runs past its time or allocates past its memory gets,
and that the next check runs in a fresh process."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import qdispatch
from circuits import bell
from qdispatch import Sampler, encoding
from qdispatch.server.errors import ServiceError
from qdispatch.server.programs import Limits
from qdispatch.server.programs.checker import InputChecker
from support import ServiceProcess

LIMITS = Limits("aer_simulator", 100_000, 30_000_000, 128 << 20)

PROGRAM = textwrap.dedent(
    """
    import os
    import time

    def estimate(inputs):
        how = inputs.get("how")
        if "log" in inputs:  # one line a time this check runs
            with open(inputs["log"], "a") as log:
                log.write(how + "\\n")
        if how == "slow":
            time.sleep(inputs["seconds"])
        if how == "crash":
            os.abort()  # as a failed allocation in a native library ends a process
        if how == "hang":
            time.sleep(3600)
        if how == "hog":
            hog = bytearray(8 << 30)  # past the process's address-space limit
        if how == "refuse":
            raise ValueError("n must be positive")
        return 2, 100

    def main(backend, publisher, **inputs):
        return None
    """
)


@pytest.fixture
def checker(tmp_path: Path) -> InputChecker:
    (tmp_path / "probe.py").write_text(PROGRAM)
    return InputChecker(tmp_path, processes=1, memory_bytes=1 << 30, seconds=5.0)


def check(checker: InputChecker, how: str) -> tuple[int, int, list[int] | None]:
    params = encoding.dumps({"how": how})

    async def run() -> tuple[int, int, list[int] | None]:
        try:
            return await checker.check("probe", params, "aer_simulator", LIMITS)
        finally:
            checker.close()

    return asyncio.run(run())


def test_a_check_answers_the_estimate(checker: InputChecker) -> None:
    assert check(checker, "fine") == (2, 100, None)  # no pubs: it never runs as shards
    with pytest.raises(ServiceError, match="n must be positive") as info:
        check(checker, "refuse")
    assert (info.value.status, info.value.code) == (400, "invalid_params")


@pytest.mark.parametrize(
    ("how", "message"),
    [("crash", "memory limit"), ("hog", "memory"), ("hang", "longer than")],
)
def test_a_runaway_check_is_refused_and_the_next_runs(
    checker: InputChecker, how: str, message: str
) -> None:
    with pytest.raises(ServiceError, match=message) as info:
        check(checker, how)
    assert (info.value.status, info.value.code) == (400, "invalid_params")
    assert check(checker, "fine") == (2, 100, None)  # no pubs: it never runs as shards


def _runs(log: Path, how: str) -> int:
    return log.read_text().split().count(how) if log.exists() else 0


async def _check(checker: InputChecker, how: str, delay: float = 0.0, **inputs: object) -> object:
    """The check's answer, or the ServiceError that refused it, after ``delay`` seconds."""
    await asyncio.sleep(delay)
    try:
        return await checker.check(
            "probe", encoding.dumps({"how": how, **inputs}), "aer_simulator", LIMITS
        )
    except ServiceError as exc:
        return exc


def test_a_check_that_kills_its_process_alone_is_not_run_twice(
    checker: InputChecker, tmp_path: Path
) -> None:
    """A hostile input that fills the checking process to its limit costs one process, not
    two: the second try exists for checks that were running beside it."""
    log = tmp_path / "runs.log"
    with pytest.raises(ServiceError, match="memory limit"):
        check_with(checker, "crash", log=str(log))
    assert _runs(log, "crash") == 1
    assert check(checker, "fine") == (2, 100, None)


def check_with(checker: InputChecker, how: str, **inputs: object) -> tuple[Any, ...]:
    async def run() -> tuple[Any, ...]:
        try:
            return await checker.check(
                "probe", encoding.dumps({"how": how, **inputs}), "aer_simulator", LIMITS
            )
        finally:
            checker.close()

    return asyncio.run(run())


async def _start_both(checker: InputChecker) -> None:
    """Both checking processes up (each takes seconds to start), so that the checks after
    run side by side from when they are sent."""
    both = await asyncio.gather(*(_check(checker, "slow", seconds=0.5) for _ in range(2)))
    assert both == [(2, 100, None), (2, 100, None)]


def test_a_check_beside_one_that_kills_the_process_is_tried_again(tmp_path: Path) -> None:
    """Two checking processes: one check's crash breaks the pool under the other, which is
    tried again in a fresh process and answers; the crashing one, not alone the first time,
    gets its second try and is refused after it."""
    (tmp_path / "probe.py").write_text(PROGRAM)
    checker = InputChecker(tmp_path, processes=2, memory_bytes=1 << 30, seconds=60.0)
    log = tmp_path / "runs.log"

    async def run() -> list[object]:
        try:
            await _start_both(checker)
            return await asyncio.gather(
                _check(checker, "slow", seconds=4.0, log=str(log)),
                _check(checker, "crash", delay=1.0, log=str(log)),
            )
        finally:
            checker.close()

    innocent, crashed = asyncio.run(run())
    assert innocent == (2, 100, None)
    assert isinstance(crashed, ServiceError)
    assert "memory limit" in crashed.message
    assert _runs(log, "slow") == 2  # cut short once, then run through
    assert _runs(log, "crash") == 2


def test_a_check_beside_a_runaway_that_is_stopped_is_tried_again(tmp_path: Path) -> None:
    """A check running past its time has its processes killed: a check running beside it
    did not kill them, and is tried again rather than refused as too big."""
    (tmp_path / "probe.py").write_text(PROGRAM)
    checker = InputChecker(tmp_path, processes=2, memory_bytes=1 << 30, seconds=4.0)

    async def run() -> list[object]:
        try:
            await _start_both(checker)
            return await asyncio.gather(
                _check(checker, "hang"), _check(checker, "slow", delay=2.0, seconds=3.0)
            )
        finally:
            checker.close()

    runaway, innocent = asyncio.run(run())
    assert isinstance(runaway, ServiceError)
    assert "longer than" in runaway.message
    assert innocent == (2, 100, None)


def test_a_service_killed_outright_leaves_no_process_behind(
    service_factory: Callable[..., ServiceProcess],
) -> None:
    """kill -9 gives the service no chance to stop its checking processes or its workers:
    they see it gone (the checkers' parent changes, the workers' pipes end) and exit."""
    psutil = pytest.importorskip("psutil")
    service = service_factory("--workers", "1")
    with qdispatch.connect(service.url, token=service.token) as connected:
        job = Sampler(mode=connected.backend("aer_simulator")).run([bell()], shots=10)
        assert sum(job.result()[0].data.c.get_counts().values()) == 10  # a check ran
    assert service.proc is not None
    children = psutil.Process(service.proc.pid).children(recursive=True)
    assert len(children) >= 2  # a worker and a checking process, at least
    service.kill()
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [p.cmdline() for p in alive]
