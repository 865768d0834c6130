"""``AlgorithmJob``: a function (an algorithm loop) run in the background as a job."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import wait as wait_futures
from typing import Any

from qiskit.primitives import PrimitiveJob
from qiskit.providers import JobError, JobStatus, JobTimeoutError

from .constants import FINAL_JOB_STATUSES


class AlgorithmJob(PrimitiveJob):
    """A job that runs ``function(*args, **kwargs)`` on a background thread.

    Unlike qiskit's ``PrimitiveJob``, a job that has not started yet reports
    ``INITIALIZING`` (not submitted) or ``QUEUED`` (submitted, waiting for its thread),
    never ``ERROR``.
    """

    version = 1

    def __init__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(function, *args, **kwargs)

    def submit(self) -> None:
        """Submit the job for execution.

        Raises:
            JobError: If the job was submitted already.
        """
        self._submit()

    def backend(self) -> Any:
        """Return the backend where this job was executed: the ``backend`` of the
        primitive whose method is the job's function, if it has one, else ``None``."""
        owner = getattr(self._function, "__self__", None)
        backend = getattr(owner, "backend", None)
        return backend() if callable(backend) else backend

    def status(self) -> JobStatus:
        """Return the status of the job, among the values of ``JobStatus``."""
        future = self._future
        if future is None:
            return JobStatus.INITIALIZING
        if future.cancelled():
            return JobStatus.CANCELLED
        if future.done():
            return JobStatus.ERROR if future.exception() is not None else JobStatus.DONE
        return JobStatus.RUNNING if future.running() else JobStatus.QUEUED

    def cancel(self) -> bool:
        """Attempt to cancel the job (possible only before it starts running)."""
        if self._future is None:
            raise JobError("Algorithm job has not been submitted yet.")
        return bool(self._future.cancel())

    def wait_for_final_state(
        self,
        timeout: float | None = None,
        wait: float = 5,
        callback: Callable[[str, JobStatus, AlgorithmJob], Any] | None = None,
    ) -> None:
        """Wait until the job progresses to a final state such as ``DONE`` or ``ERROR``.

        Args:
            timeout: Seconds to wait for the job. If ``None``, wait indefinitely.
            wait: Seconds between callback invocations (the wait itself returns as soon
                as the job finishes).
            callback: Called after each wait with ``(job_id, job_status, job)``.

        Raises:
            JobTimeoutError: If the job does not reach a final state before the timeout.
            JobError: If the job was never submitted.
        """
        if self._future is None:
            raise JobError("Algorithm job has not been submitted yet.")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if callback is not None:
                callback(self.job_id(), status, self)
            if status in FINAL_JOB_STATUSES:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise JobTimeoutError(
                    f"Timeout while waiting for job {self.job_id()} (still {status.name} "
                    f"after {timeout} s)."
                )
            step = wait if remaining is None else min(wait, remaining)
            wait_futures([self._future], timeout=step)
