"""``qdispatch.as_completed(jobs)``: each job the moment it finishes, in the order they
finish, so that a sweep can be analysed while it runs.

The jobs are followed on the service's event stream (the one WebSocket the client keeps):
a job is yielded milliseconds after its final status is pushed, and waiting costs no
request. Like :func:`concurrent.futures.as_completed`, it yields the jobs themselves,
final (``DONE``, ``ERROR`` or ``CANCELLED``); their ``result()`` is then one fetch, with
no wait. ``ManagedJobSet.as_completed()`` is the same for a job set's chunks.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from .api import Family, ServiceApi
from .constants import FINAL_STATUSES
from .exceptions import IBMInputValueError, JobsTimeoutError
from .job import IBMQJob
from .runtime import RuntimeJob

J = TypeVar("J", IBMQJob, RuntimeJob)


def as_completed(jobs: Iterable[J], timeout: float | None = None) -> Iterator[J]:
    """Yield each of ``jobs`` as soon as it reaches a final state, in the order they
    finish (not the order given); jobs already final come first. A job given twice is
    yielded once.

    Args:
        jobs: :class:`IBMQJob` and :class:`RuntimeJob` objects, of one service.
        timeout: Seconds to wait for all of them, counted from the first ``next()``;
            ``None`` waits as long as it takes.

    Raises:
        JobsTimeoutError: ``timeout`` passed with jobs unfinished (its ``pending`` lists
            them); it is an ``IBMQJobTimeoutError`` and a ``RuntimeJobTimeoutError``.
        IBMInputValueError: The jobs are of different services.
    """
    pending: dict[str, J] = {}
    for job in jobs:
        pending.setdefault(job.job_id(), job)
    if not pending:
        return
    apis = {id(j._api): j._api for j in pending.values()}
    if len(apis) > 1:
        raise IBMInputValueError("as_completed() follows the jobs of one service at a time")
    api: ServiceApi = next(iter(apis.values()))
    everyone_runtime = all(isinstance(j, RuntimeJob) for j in pending.values())
    family = Family.RUNTIME if everyone_runtime else Family.IBMQ
    deadline = None if timeout is None else time.monotonic() + timeout
    for job_id in [i for i, j in pending.items() if j._status in FINAL_STATUSES]:
        yield pending.pop(job_id)
    while pending:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise JobsTimeoutError(
                f"timed out after {timeout} s with {len(pending)} job(s) unfinished: "
                + ", ".join(list(pending)[:5])
                + (", …" if len(pending) > 5 else ""),
                list(pending.values()),
            )
        for job_id in api.wait_any_final(list(pending), remaining, family):
            if job_id in pending:
                job = pending.pop(job_id)
                job.status()  # the pushed final status, and the job's details with it
                yield job
