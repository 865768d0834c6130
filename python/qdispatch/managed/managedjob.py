"""``ManagedJob``: job managed by the Job Manager.

One job of a :class:`~qdispatch.managed.ManagedJobSet`: a chunk of the set's experiments,
from ``start_index``, ``experiments_count`` of them, and the ``IBMQJob`` that runs them
(``None`` until it is submitted, or if it could not be).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from qiskit.circuit import QuantumCircuit
from qiskit.providers import JobStatus
from qiskit.result import Result

from .. import _native
from ..api import Family
from ..assembler import circuits_to_qobj_json
from ..constants import QUEUED, RUNNING
from ..exceptions import (
    IBMQBackendJobLimitError,
    IBMQJobApiError,
    IBMQJobInvalidStateError,
    IBMQJobTimeoutError,
    IBMQManagedResultDataNotAvailable,
)
from ..qobj import QasmQobj
from ..results import result_from_json

if TYPE_CHECKING:
    from ..backend import QDispatchBackend
    from ..job import IBMQJob
    from ..service import QDispatchService

__all__ = ["ManagedJob"]


class ManagedJob:
    """Job managed by the Job Manager: one chunk of a set's experiments."""

    def __init__(self, start_index: int, experiments_count: int, job: IBMQJob | None = None):
        self.start_index = start_index
        self.experiments_count = experiments_count
        self.end_index = start_index + experiments_count - 1
        self.job = job
        self.submit_error: Exception | None = None
        self.future: Future[None] | None = None
        self.job_index = 0
        self._raw_result: bytes | None = None
        self._result: Result | None = None
        self._counts: list[dict[str, int] | None] | None = None

    def __repr__(self) -> str:
        job = self.job.job_id() if self.job else None
        return (
            f"<ManagedJob {self.job_index}: experiments {self.start_index}-{self.end_index}, "
            f"job {job}, submit_error={self.submit_error!r}>"
        )

    def submit(
        self,
        circuits: QuantumCircuit | Sequence[QuantumCircuit],
        job_name: str,
        backend: QDispatchBackend,
        executor: ThreadPoolExecutor,
        submit_lock: Any,
        job_share_level: str | None = None,
        job_tags: Sequence[str] | None = None,
        **run_config: Any,
    ) -> None:
        """Submit the job (on ``executor``; ``future`` says when it is submitted).

        ``submit_lock`` serializes waiting for a free slot when the service answers that
        the user's active-job limit is reached.
        """
        qobj = circuits_to_qobj_json(circuits, backend, **backend.run_options(**run_config))
        self.submit_qobj(qobj, job_name, backend, executor, submit_lock, job_share_level, job_tags)

    def submit_qobj(
        self,
        qobj: bytes | QasmQobj,
        job_name: str,
        backend: QDispatchBackend,
        executor: ThreadPoolExecutor,
        submit_lock: Any,
        job_share_level: str | None = None,
        job_tags: Sequence[str] | None = None,
    ) -> None:
        """Like :meth:`submit`, for a chunk already serialized or assembled (a
        :class:`~qdispatch.qobj.QasmQobj` whose experiments were never read goes as the
        bytes ``assemble`` wrote)."""
        if isinstance(qobj, QasmQobj):
            # Serialized here, not on the executor: what is sent is the Qobj as it is now,
            # whatever the caller changes in it afterwards.
            qobj = qobj.to_json()
        self.future = executor.submit(
            self._submit, qobj, job_name, backend, submit_lock, job_share_level, job_tags
        )

    def _submit(
        self,
        qobj: bytes,
        job_name: str,
        backend: QDispatchBackend,
        submit_lock: Any,
        job_share_level: str | None,
        job_tags: Sequence[str] | None,
    ) -> None:
        self.submit_error = None
        while True:
            try:
                self.job = backend.submit_qobj(qobj, job_name, job_share_level, job_tags)
                return
            except IBMQBackendJobLimitError:
                # Never fail a set for the limit: wait for some active job, then go on.
                with submit_lock:
                    _wait_for_a_free_slot(backend.service)
            except Exception as exc:  # recorded; the other chunks go on
                self.submit_error = exc
                return

    def status(self) -> JobStatus | None:
        """Query the server for job status; ``None`` if the job was never submitted or the
        query failed."""
        if self.job is None:
            return None
        try:
            return self.job.status()
        except IBMQJobApiError:
            return None

    def result(
        self, timeout: float | None = None, partial: bool = False, refresh: bool = False
    ) -> Result | None:
        """Return the result of the job, or ``None`` if it could not be retrieved.

        Raises:
            IBMQJobTimeoutError: If the job does not return results before ``timeout``.
        """
        if self.job is None:
            return None
        if self._result is not None and not refresh:
            return self._result
        raw = self._fetch(timeout, partial, refresh)
        if raw is None:
            return None
        self._result = result_from_json(raw)
        return self._result

    def _fetch(self, timeout: float | None, partial: bool, refresh: bool = False) -> bytes | None:
        """The job's result JSON, waiting for the job; ``None`` if it has none to give."""
        if self.job is None:
            return None
        if self._raw_result is not None and not refresh:
            return self._raw_result
        try:
            self.job.wait_for_final_state(timeout=timeout)
        except IBMQJobTimeoutError:
            raise
        status = self.job.status()
        if status is JobStatus.CANCELLED or (status is JobStatus.ERROR and not partial):
            return None
        try:
            api = self.job.backend().service.api
            self._raw_result = api.job_results(self.job.job_id(), Family.IBMQ)
        except (IBMQJobApiError, IBMQJobInvalidStateError):
            return None
        self._counts = None
        return self._raw_result

    def counts(self, index: int) -> dict[str, int]:
        """Counts of experiment ``index`` of this job, parsed natively on first use."""
        if self._counts is None:
            if self._raw_result is None:
                raise IBMQManagedResultDataNotAvailable(
                    f"no result for experiments {self.start_index}-{self.end_index}"
                )
            self._counts = _native.counts_from_result(self._raw_result)
        counts = self._counts[index]
        if counts is None:
            raise IBMQManagedResultDataNotAvailable(
                f"experiment {self.start_index + index} has no counts"
            )
        return counts

    def cancel(self) -> None:
        """Attempt to cancel the job (a finished job is left as it is)."""
        if self.job is None:
            return
        with contextlib.suppress(IBMQJobInvalidStateError):
            self.job.cancel()

    def error_message(self) -> str | None:
        """Provide details about the reason of failure: an error report if the job failed
        (or could not be submitted), ``None`` otherwise."""
        if self.submit_error is not None:
            return f"submission failed: {self.submit_error}"
        if self.job is None:
            return None
        status = self.status()
        if status is JobStatus.CANCELLED:
            return f"Job {self.job.job_id()} was cancelled."
        return self.job.error_message()

    def qobj(self) -> QasmQobj | None:
        """Return the Qobj for this job, or ``None`` if it could not be retrieved."""
        if self.job is None:
            return None
        try:
            qobj = self.job.qobj()
        except IBMQJobApiError:
            return None
        return qobj if isinstance(qobj, QasmQobj) else None


def _wait_for_a_free_slot(service: QDispatchService) -> None:
    """Block until one of the user's active jobs finishes (or a few seconds pass)."""
    try:
        active = service.api.jobs(statuses=[QUEUED, RUNNING], limit=1000)
    except Exception:
        time.sleep(1.0)
        return
    ids = [j["id"] for j in active]
    if ids:
        service.api.wait_any_final(ids, 5.0)
    else:
        time.sleep(0.2)
