"""The checking processes of program inputs (``server/programs/checker.py``): what a
check that crashes its process, runs past its time or allocates past its memory gets,
and that the next check runs in a fresh process."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from qdispatch import encoding
from qdispatch.server.errors import ServiceError
from qdispatch.server.programs import Limits
from qdispatch.server.programs.checker import InputChecker

LIMITS = Limits("aer_simulator", 100_000, 30_000_000, 128 << 20)

PROGRAM = textwrap.dedent(
    """
    import os
    import time

    def estimate(inputs):
        how = inputs.get("how")
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
