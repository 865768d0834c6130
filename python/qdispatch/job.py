"""``IBMQJob``: a job on a qdispatch service, with the documented Qiskit job API.

Statuses are pushed: every job is watched on the service's one multiplexed WebSocket
(the native client's), so ``status()`` answers from the latest pushed status and
``wait_for_final_state()`` returns milliseconds after the job finishes, instead of the
seconds a poll loop would add. The client falls back to bulk polling when no socket can
be had.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from qiskit.circuit import QuantumCircuit
from qiskit.providers import JobStatus, JobV1
from qiskit.result import Result

from . import progress
from .api import Family
from .constants import FINAL_STATUSES, job_status, local_time
from .disassembler import qobj_to_circuits
from .exceptions import (
    IBMQJobFailureError,
    IBMQJobInvalidStateError,
    IBMQJobTimeoutError,
)
from .models import BackendProperties, QueueInfo, updated_tags
from .qobj import PulseQobj, QasmQobj
from .results import result_from_json

if TYPE_CHECKING:
    from .backend import QDispatchBackend
    from .service import QDispatchService


class IBMQJob(JobV1):
    """Representation of a job that executes on a qdispatch backend.

    A new ``IBMQJob`` is returned by ``backend.run()``; ``service.job(job_id)`` and
    ``service.jobs()`` return existing ones. Job information retrieved from the service is
    attached to the instance; methods that need fresh information ask the service (or
    use the status it pushed).
    """

    version = 1

    def __init__(
        self,
        backend: QDispatchBackend,
        api_client: QDispatchService,
        job_id: str,
        creation_date: str,
        status: str,
        kind: str | None = None,
        name: str | None = None,
        time_per_step: dict[str, str] | None = None,
        result: dict[str, Any] | None = None,
        qobj: dict[str, Any] | QasmQobj | PulseQobj | None = None,
        error: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        run_mode: str | None = None,
        share_level: str | None = None,
        client_info: dict[str, str] | None = None,
        experiment_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backend, job_id)
        self._backend: QDispatchBackend = backend
        self._api = api_client.api
        self._creation_date = creation_date
        self._status = status
        self._kind = kind
        self._name = name
        self._time_per_step = time_per_step or {}
        self._result: Result | None = Result.from_dict(result) if result else None
        self._qobj: QasmQobj | PulseQobj | None = (
            QasmQobj.from_dict(qobj) if isinstance(qobj, dict) else qobj
        )
        self._error = error
        self._tags = list(tags or [])
        self._run_mode = run_mode
        self._share_level = share_level
        self._client_info = client_info or {}
        self._experiment_id = experiment_id
        self._queue_info: dict[str, Any] | None = kwargs.pop("queue_info", None)
        # Whether the details (steps, error) may be older than the status: a job seen to
        # finish DONE on the stream is not asked again until a detail is wanted.
        self._stale = False
        self._extra = kwargs
        if status not in FINAL_STATUSES:
            self._api.watch([job_id])

    @classmethod
    def from_info(
        cls, backend: QDispatchBackend, api_client: QDispatchService, info: dict[str, Any]
    ) -> IBMQJob:
        """A job from the service's JSON form of it (``GET /jobs/{id}``)."""
        fields = dict(info)
        job_id = fields.pop("id")
        fields.pop("backend", None)  # the name; the object is ``backend``
        return cls(
            backend,
            api_client,
            job_id,
            creation_date=fields.pop("creation_date"),
            status=fields.pop("status"),
            **fields,
        )

    def __repr__(self) -> str:
        return f"<IBMQJob('{self._job_id}') on {self._backend.name}: {self._status}>"

    # -- attributes ---------------------------------------------------------------------

    @property
    def client_version(self) -> dict[str, str]:
        """Version of the client used for this job: client name → version."""
        return dict(self._client_info)

    @property
    def experiment_id(self) -> str:
        """ID of the experiment this job is part of."""
        return self._experiment_id or ""

    def backend(self) -> QDispatchBackend:
        """Return the backend where this job was executed."""
        return self._backend

    # -- talking to the service -----------------------------------------------------------

    def _update(self, info: dict[str, Any]) -> None:
        self._status = info["status"]
        self._name = info.get("name")
        self._tags = list(info.get("tags") or [])
        self._time_per_step = info.get("time_per_step") or {}
        self._error = info.get("error")
        self._queue_info = info.get("queue_info")
        self._share_level = info.get("share_level")
        self._run_mode = info.get("run_mode")
        self._stale = False

    def refresh(self) -> None:
        """Obtain the latest job information from the server."""
        self._update(self._api.job(self._job_id, Family.IBMQ))

    def submit(self) -> None:
        """Unsupported method.

        Raises:
            NotImplementedError: Upon invocation.
        """
        raise NotImplementedError(
            "job.submit() is not supported. Please use backend.run() to submit a job."
        )

    # -- status ---------------------------------------------------------------------------

    def status(self) -> JobStatus:
        """Query the server for the latest job status.

        A watched job's status is the one the service last pushed; otherwise (or before
        the first push) the service is asked.
        """
        if self._status not in FINAL_STATUSES:
            pushed = self._api.last_status(self._job_id)
            if pushed is not None and pushed != self._status:
                # Details (steps, error, queue info) change with the status: fetch them.
                self.refresh()
            elif pushed is None:
                self.refresh()
        return job_status(self._status)

    def in_final_state(self) -> bool:
        """Return whether the job is in a final job state such as ``DONE`` or ``ERROR``."""
        return self.status() in (JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELLED)

    def wait_for_final_state(
        self,
        timeout: float | None = None,
        wait: float | None = None,
        callback: Callable[..., Any] | None = None,
    ) -> None:
        """Wait until the job progresses to a final state such as ``DONE`` or ``ERROR``.

        Args:
            timeout: Seconds to wait for the job. If ``None``, wait indefinitely.
            wait: Seconds between callback invocations while the job's status does not
                change (statuses are pushed, so this does not delay the return).
            callback: Called with ``(job_id, job_status, job, queue_info)`` whenever the
                status changes, and every ``wait`` seconds otherwise; ``queue_info`` is the
                job's :class:`QueueInfo` while it is queued, else ``None``.

        Raises:
            IBMQJobTimeoutError: If the job does not reach a final state before the
                specified timeout.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        api = self._api
        if callback is None:
            self._wait_final(timeout, show=False)
            return
        step = wait if wait is not None else 5.0
        last: JobStatus | None = None
        while True:
            status = self.status()
            if status != last or status in (JobStatus.QUEUED, JobStatus.RUNNING):
                callback(self._job_id, status, self, self.queue_info())
                last = status
            if status in (JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELLED):
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise IBMQJobTimeoutError(
                    f"Timeout while waiting for job {self._job_id} (still {status.name} "
                    f"after {timeout} s)."
                )
            api.wait_final(self._job_id, step if remaining is None else min(step, remaining))

    def _wait_final(self, timeout: float | None, show: bool | None) -> None:
        """Wait for the pushed final status, then refresh; a progress bar if ``show``
        (``None``: if someone is watching, :func:`qdispatch.progress.interactive`)."""
        if self._status in FINAL_STATUSES:
            return
        label = f"job {self._job_id} on {self._backend.name}"
        final = progress.wait_final(self._api, self._job_id, timeout, Family.IBMQ, label, show)
        if final is None:
            raise IBMQJobTimeoutError(
                f"Timeout while waiting for job {self._job_id} (still "
                f"{self._api.last_status(self._job_id) or self._status} after {timeout} s)."
            )
        if final == "DONE":
            # A DONE job's record differs only in its steps: a small job's result is not
            # delayed by a request for them (time_per_step() asks when called).
            self._status = final
            self._stale = True
            return
        self.refresh()

    def cancel(self) -> bool:
        """Attempt to cancel the job.

        Returns:
            ``True`` if the job is cancelled.

        Raises:
            IBMQJobInvalidStateError: If the job is in a state that cannot be cancelled.
            IBMQJobApiError: If unable to cancel the job.
        """
        self._update(self._api.cancel_job(self._job_id, Family.IBMQ))
        return self._status == "CANCELLED"

    def error_message(self) -> str | None:
        """Provide details about the reason of failure.

        Returns:
            An error report if the job failed or ``None`` otherwise.
        """
        self.status()
        if self._status != "ERROR":
            return None
        if self._error is None:
            self.refresh()
        message = (self._error or {}).get("message", "unknown error")
        return f"Job {self._job_id} failed: {message}"

    def queue_info(self) -> QueueInfo | None:
        """Return queue information for this job: position and estimated start and
        completion times while it is queued, else ``None``."""
        if self.status() is not JobStatus.QUEUED:
            return None
        self.refresh()
        if self._status != "QUEUED" or not self._queue_info:
            return None
        return QueueInfo(job_id=self._job_id, **self._queue_info)

    def queue_position(self, refresh: bool = False) -> int | None:
        """Return the position of the job in the server queue (``None`` unless queued).

        Args:
            refresh: If ``True``, re-query the server to get the latest value.
        """
        if refresh or self._queue_info is None:
            info = self.queue_info()
            return info.position if info else None
        return self._queue_info.get("position") if self._status == "QUEUED" else None

    # -- results --------------------------------------------------------------------------

    def result(
        self,
        timeout: float | None = None,
        wait: float = 5,
        partial: bool = False,
        refresh: bool = False,
    ) -> Result:
        """Return the result of the job, waiting for it to finish (with a progress bar on
        stderr when in a terminal or a notebook: :mod:`qdispatch.progress`).

        Args:
            timeout: Seconds to wait for the job.
            wait: Seconds between queries (statuses are pushed; kept for compatibility).
            partial: If ``True``, return the partial results of a failed job: the results of
                the experiments that succeeded, the others with ``success=False``.
            refresh: If ``True``, re-query the server for the result; otherwise return the
                cached value.

        Raises:
            IBMQJobInvalidStateError: If the job was cancelled, or failed without a result.
            IBMQJobFailureError: If the job failed (and ``partial`` is ``False``).
            IBMQJobTimeoutError: If the job does not complete before ``timeout``.
        """
        if self._result is not None and not refresh and (partial or self._status == "DONE"):
            return self._result
        self._wait_final(timeout, show=None)
        if self._status == "CANCELLED":
            raise IBMQJobInvalidStateError(
                f"Unable to retrieve result for job {self._job_id}. Job was cancelled."
            )
        if self._status == "ERROR" and not partial:
            raise IBMQJobFailureError(
                f"Unable to retrieve result for job {self._job_id}. Job has failed: "
                f"{(self._error or {}).get('message', 'unknown error')}. Use job.result("
                "partial=True) for the results of the experiments that succeeded, if any."
            )
        raw = self._api.job_results(self._job_id, Family.IBMQ)
        self._result = result_from_json(raw)
        return self._result

    # -- the job's record -----------------------------------------------------------------

    def backend_options(self) -> dict[str, Any]:
        """Return the run options used for this job (from its Qobj's config)."""
        qobj = self.qobj()
        if qobj is None:
            return {}
        config = qobj.to_dict().get("config", {})
        return {k: v for k, v in config.items() if k not in ("memory_slots", "n_qubits")}

    def circuits(self) -> list[QuantumCircuit]:
        """Return the circuits for this job, rebuilt from its Qobj."""
        qobj = self.qobj()
        return qobj_to_circuits(qobj.to_dict()) if isinstance(qobj, QasmQobj) else []

    def header(self) -> dict[str, Any]:
        """Return the user header specified for this job."""
        qobj = self.qobj()
        header: dict[str, Any] = qobj.to_dict().get("header", {}) if qobj else {}
        return header

    def qobj(self) -> QasmQobj | PulseQobj | None:
        """Return the Qobj for this job, or ``None`` if it could not be retrieved."""
        if self._qobj is None:
            raw = self._api.job_qobj(self._job_id)
            data = orjson.loads(raw) if raw else None
            if data:
                self._qobj = QasmQobj.from_dict(data)
        return self._qobj

    def properties(self) -> BackendProperties | None:
        """Return the backend properties in force when this job was submitted (``None`` for
        an ideal simulator)."""
        data = self._api.job_properties(self._job_id)
        return BackendProperties.from_dict(data) if data else None

    def creation_date(self) -> datetime:
        """Return job creation date, in local time."""
        created = local_time(self._creation_date)
        assert created is not None
        return created

    def time_per_step(self) -> dict[str, datetime] | None:
        """Return the date and time (local) of each step of the job's processing:
        ``CREATED``, ``VALIDATED``, ``QUEUED``, ``RUNNING``, ``COMPLETED`` (or ``ERROR``,
        ``CANCELLED``), and ``REQUEUED`` if a service restart interrupted it."""
        if self._status not in FINAL_STATUSES or self._stale:
            self.refresh()
        if not self._time_per_step:
            return None
        return {step: local_time(ts) for step, ts in self._time_per_step.items()}  # type: ignore[misc]

    def scheduling_mode(self) -> str | None:
        """Return the scheduling mode the job is in: ``dedicated`` for a job of a
        dedicated session, else ``fairshare``."""
        return self._run_mode

    def share_level(self) -> str:
        """Return the share level of the job: ``none``, ``project`` or ``global``."""
        return self._share_level or "none"

    def name(self) -> str | None:
        """Return the name assigned to this job."""
        return self._name

    def update_name(self, name: str) -> str:
        """Update the name associated with this job; returns the new name."""
        if not isinstance(name, str):
            raise IBMQJobInvalidStateError(f"job name must be a string, got {name!r}")
        self._update(self._api.update_job_name(self._job_id, name))
        return self._name or ""

    def tags(self) -> list[str]:
        """Return the tags assigned to this job."""
        return list(self._tags)

    def update_tags(
        self,
        replacement_tags: Sequence[str] | None = None,
        additional_tags: Sequence[str] | None = None,
        removal_tags: Sequence[str] | None = None,
    ) -> list[str]:
        """Update the tags associated with this job.

        ``replacement_tags`` replaces every tag (``[]`` removes them all); then
        ``additional_tags`` are added and ``removal_tags`` removed.

        Returns:
            The new tags associated with this job.

        Raises:
            IBMQJobInvalidStateError: If none of the arguments is given, or one is not a
                list of strings.
        """
        if replacement_tags is None and additional_tags is None and removal_tags is None:
            raise IBMQJobInvalidStateError(
                "Unable to update tags: none of replacement_tags, additional_tags or "
                "removal_tags was given."
            )
        for arg in (replacement_tags, additional_tags, removal_tags):
            if arg is not None and (
                isinstance(arg, str) or not all(isinstance(t, str) for t in arg)
            ):
                raise IBMQJobInvalidStateError(f"tags must be a list of strings, got {arg!r}")
        self.refresh()
        tags = updated_tags(self._tags, replacement_tags, additional_tags, removal_tags)
        self._update(self._api.update_job_tags(self._job_id, tags, Family.IBMQ))
        return list(self._tags)
