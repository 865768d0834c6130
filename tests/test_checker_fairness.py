"""One user's input checks delay only that user (``server/programs/checker.py``,
docs/service.md "Checking inputs fairly"): a user's checks hold at most half of the
checking processes, a user has at most ``--max-checks-per-user`` running or waiting (429
``check_limit`` beyond), and the second try of a check whose process died runs in a process
of its own rather than holding every shared one.

No assertion of speed: an innocent check is shown not to have waited by the order of
events (it is answered while the hostile check it would wait behind is still running)."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import qdispatch
from qdispatch import encoding
from qdispatch.exceptions import IBMApiError
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
        if "log" in inputs:  # one line each time a check starts
            with open(inputs["log"], "a") as log:
                log.write(how + "\\n")
        if how == "slow":
            time.sleep(inputs["seconds"])
            if "log" in inputs:  # and once it has ended
                with open(inputs["log"], "a") as log:
                    log.write("slow-done\\n")
        if how == "crash-once":
            # Kills its process the first time; on its second try it holds its process as
            # long as a check may.
            if not os.path.exists(inputs["marker"]):
                open(inputs["marker"], "w").close()
                time.sleep(inputs["before"])
                os.abort()
            time.sleep(inputs["seconds"])
        return 2, 100

    def main(backend, publisher, **inputs):
        return None
    """
)

#: How long a hostile check holds its process: under the checker's 30 s, so it is not
#: stopped as a runaway.
HOSTILE_SECONDS = 27.0


def _log_count(log: Path, how: str) -> int:
    return log.read_text().split().count(how) if log.exists() else 0


def _wait_for(done: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- through the service -------------------------------------------------------------------


@pytest.fixture
def checking_service(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> ServiceProcess:
    programs = tmp_path / "programs"
    programs.mkdir()
    (programs / "probe.py").write_text(PROGRAM)
    return service_factory(
        "--workers",
        "1",
        "--programs-dir",
        str(programs),
        "--check-processes",
        "2",
        "--max-checks-per-user",
        "3",
    )


def _post(url: str, token: str, inputs: dict[str, Any], timeout: float = 120.0) -> httpx.Response:
    body = {
        "program_id": "probe",
        "backend": "aer_simulator",
        "params": orjson.Fragment(encoding.dumps(inputs)),
    }
    with httpx.Client(base_url=url, timeout=timeout) as client:
        return client.post(
            "/jobs", content=orjson.dumps(body), headers={"Authorization": f"Bearer {token}"}
        )


def test_a_user_filling_the_checks_delays_only_themselves(
    checking_service: ServiceProcess, tmp_path: Path
) -> None:
    """Mallory sends three checks that each take 27 s: one runs, two wait behind it, and a
    fourth is refused at once with 429 ``check_limit``. Alice's check meanwhile takes a
    process of its own and is answered; it would wait behind Mallory's for a minute if
    Mallory's checks could take every process and the queue."""
    service = checking_service
    mallory = service.token_for("mallory")
    alice = service.token_for("alice")
    log = tmp_path / "checks.log"
    # Both checking processes up first (each starts on demand, seconds on a loaded machine).
    warm = [
        threading.Thread(target=_post, args=(service.url, token, {"how": "fine"}))
        for token in (mallory, alice)
    ]
    for thread in warm:
        thread.start()
    for thread in warm:
        thread.join()

    answers: list[httpx.Response | Exception] = []

    def hostile() -> None:
        try:
            answers.append(
                _post(
                    service.url,
                    mallory,
                    {"how": "slow", "seconds": HOSTILE_SECONDS, "log": str(log)},
                )
            )
        except httpx.HTTPError as exc:  # the service stopped at the test's end
            answers.append(exc)

    flood = [threading.Thread(target=hostile, daemon=True) for _ in range(3)]
    for thread in flood:
        thread.start()
        time.sleep(0.2)  # in order, so that all three are in before the fourth
    _wait_for(lambda: _log_count(log, "slow") >= 1)
    time.sleep(0.5)  # the other two have reached the checker and wait there

    innocent = _post(service.url, alice, {"how": "fine"})
    assert innocent.status_code == 201, innocent.text
    # Answered while Mallory's first check still runs: Alice did not wait behind it.
    assert _log_count(log, "slow-done") == 0

    refused = _post(service.url, mallory, {"how": "fine"})
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "check_limit"
    assert error["limit"] == 3
    assert "mallory" in error["message"]
    assert refused.headers["Retry-After"] == "1"
    # Refused with nothing created: Mallory's only job is the warm-up one.
    assert service.client(mallory).get("/jobs").json()["count"] == 1
    # The client retries it after Retry-After, a few times (not without end), then raises
    # it with its status and code.
    with (
        qdispatch.connect(service.url, token=mallory) as connected,
        pytest.raises(IBMApiError, match="being checked") as info,
    ):
        connected.run("probe", {"how": "fine"}, options={"backend": "aer_simulator"})
    assert (info.value.status, info.value.code) == (429, "check_limit")
    assert "gave up after 6 attempts" in info.value.message
    # Mallory's checks ran one at a time: the second had not started.
    assert _log_count(log, "slow") == 1
    assert service.client().get("/info").json()["max_checks_per_user"] == 3
    service.stop()
    for thread in flood:
        thread.join(60)


# -- the checker itself --------------------------------------------------------------------


@pytest.fixture
def checker(tmp_path: Path) -> Iterator[InputChecker]:
    (tmp_path / "probe.py").write_text(PROGRAM)
    checker = InputChecker(
        tmp_path, processes=2, memory_bytes=1 << 30, seconds=60.0, user_running=1, user_checks=2
    )
    yield checker
    checker.close()


async def _check(checker: InputChecker, user: str, inputs: dict[str, Any]) -> object:
    try:
        return await checker.check(
            "probe", encoding.dumps(inputs), "aer_simulator", LIMITS, user=user
        )
    except ServiceError as exc:
        return exc


def test_the_second_try_of_a_crash_holds_no_one_elses_process(
    checker: InputChecker, tmp_path: Path
) -> None:
    """Mallory's check kills its process beside Alice's: both are tried again, Mallory's
    first (it was sent first), and it then holds its process for 40 s. Alice's second try
    runs in a process of its own and is answered; a second try that took every process
    would keep it waiting those 40 s. Meanwhile Bob's first try takes a shared process."""
    marker = tmp_path / "crashed"

    async def run() -> tuple[object, object]:
        warm = await asyncio.gather(
            _check(checker, "alice", {"how": "slow", "seconds": 0.5}),
            _check(checker, "bob", {"how": "slow", "seconds": 0.5}),
        )
        assert warm == [(2, 100, None), (2, 100, None)]
        hostile = asyncio.ensure_future(
            _check(
                checker,
                "mallory",
                {"how": "crash-once", "marker": str(marker), "before": 2.0, "seconds": 40.0},
            )
        )
        await asyncio.sleep(0.5)
        innocent = await _check(checker, "alice", {"how": "slow", "seconds": 3.0})
        bob = await _check(checker, "bob", {"how": "fine"})
        assert marker.exists()  # mallory's check did crash
        # Both were answered while its second try still holds its own process (40 s):
        # neither waited behind it.
        assert not hostile.done()
        hostile.cancel()
        return innocent, bob

    innocent, bob = asyncio.run(run())
    assert innocent == (2, 100, None)
    assert bob == (2, 100, None)


def test_a_user_over_the_limit_is_refused_and_others_are_not(
    checker: InputChecker, tmp_path: Path
) -> None:
    """With two checks of Mallory's running or waiting, a third is refused at once with 429
    ``check_limit``; Alice's check is not, and once Mallory's are answered Mallory may
    check again."""

    async def run() -> tuple[list[object], object, object, object]:
        slow = [
            asyncio.ensure_future(_check(checker, "mallory", {"how": "slow", "seconds": 3.0}))
            for _ in range(2)
        ]
        await asyncio.sleep(0)  # both have taken their places
        over = await _check(checker, "mallory", {"how": "fine"})
        alice = await _check(checker, "alice", {"how": "fine"})
        done = list(await asyncio.gather(*slow))
        again = await _check(checker, "mallory", {"how": "fine"})
        return done, over, alice, again

    done, over, alice, again = asyncio.run(run())
    assert done == [(2, 100, None), (2, 100, None)]
    assert isinstance(over, ServiceError)
    assert (over.status, over.code) == (429, "check_limit")
    assert over.headers == {"Retry-After": "1"}
    assert over.extra == {"limit": 2}
    assert alice == (2, 100, None)
    assert again == (2, 100, None)


def test_a_check_waiting_while_another_overruns_gets_a_fresh_process(tmp_path: Path) -> None:
    """With one checking process, Alice's check waits while Mallory's runs past the time
    limit; Mallory's check stops that process. Alice's check then runs in a fresh one and
    is answered, rather than being handed the stopped pool it found on arrival (which
    failed it with a 500)."""
    (tmp_path / "probe.py").write_text(PROGRAM)
    checker = InputChecker(tmp_path, processes=1, memory_bytes=1 << 30, seconds=3.0)

    async def run() -> tuple[object, object]:
        assert await _check(checker, "alice", {"how": "fine"}) == (2, 100, None)  # warm
        hostile = asyncio.ensure_future(
            _check(checker, "mallory", {"how": "slow", "seconds": 30.0})
        )
        await asyncio.sleep(0.5)  # Mallory's check holds the one process
        innocent = await _check(checker, "alice", {"how": "fine"})
        return await hostile, innocent

    try:
        hostile, innocent = asyncio.run(run())
    finally:
        checker.close()
    assert isinstance(hostile, ServiceError)
    assert "took longer than the service's 3 s" in hostile.message
    assert innocent == (2, 100, None)
