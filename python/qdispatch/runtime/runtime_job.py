"""``RuntimeJob``: representation of a runtime program execution.

A new ``RuntimeJob`` is returned when you call ``service.run()`` to execute a runtime
program (a primitive's ``run()`` calls it too), or ``service.job()`` to retrieve a
previously executed one (docs/runtime.md). Like every job it is watched on the service's
one multiplexed WebSocket; its interim results and final result reach it through the
service's :class:`~qdispatch.runtime.events.EventRouter`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from qiskit.primitives import BasePrimitiveJob
from qiskit.providers import JobStatus

from .. import progress
from ..api import Family
from ..constants import FINAL_STATUSES, job_status, local_time
from ..encoding import loads
from ..exceptions import (
    IBMApiError,
    IBMRuntimeError,
    RuntimeInvalidStateError,
    RuntimeJobFailureError,
    RuntimeJobMaxTimeoutError,
    RuntimeJobTimeoutError,
)
from .result_decoder import ResultDecoder, RunnerResult, _decoders

if TYPE_CHECKING:
    from ..backend import QDispatchBackend
    from ..service import QDispatchService

__all__ = ["RuntimeJob"]


class RuntimeJob(BasePrimitiveJob[Any, JobStatus]):
    """Representation of a runtime program execution.

    A new ``RuntimeJob`` is returned by ``service.run()`` (or a primitive's ``run()``),
    and ``service.job(job_id)`` returns a previously executed one. ``result()`` blocks
    until the job finishes. With a ``callback`` (``run(..., callback=...)`` or
    :meth:`stream_results`) the interim results and the final result are streamed to it.
    """

    version = 1

    def __init__(
        self,
        backend: QDispatchBackend | None,
        api_client: QDispatchService,
        client_params: Any,
        job_id: str,
        program_id: str,
        service: QDispatchService | None = None,
        params: dict[str, Any] | None = None,
        creation_date: str | None = None,
        user_callback: Callable[[str, Any], Any] | None = None,
        result_decoder: type[ResultDecoder] | Sequence[type[ResultDecoder]] | None = None,
        image: str | None = "",
        session_id: str | None = None,
        tags: list[str] | None = None,
        *,
        info: dict[str, Any] | None = None,
    ) -> None:
        """RuntimeJob constructor (``service.run`` and ``service.job`` make them).

        Args:
            backend: The backend instance used to run this job.
            api_client: The connection the job's calls go through.
            client_params: Parameters used for the server connection (kept for
                reference: ``api_client`` holds the connection).
            job_id: Job ID.
            program_id: ID of the program this job is for.
            service: The service the job belongs to (``api_client`` if not given).
            params: Job parameters (read back from the service when not given).
            creation_date: Job creation date, in UTC (ISO 8601).
            user_callback: Called with ``(job_id, result)`` for every interim result
                and the final result.
            result_decoder: A ``ResultDecoder`` subclass (or one for interim and one for
                final results) used to decode job results.
            image: Runtime image used for this job: ``image_name:tag``.
            session_id: ID of the session the job runs in.
            tags: Tags assigned to the job.
            info: The service's record of the job (``GET /jobs/{id}``), if at hand.
        """
        super().__init__(job_id)
        self._backend = backend
        self._api = api_client.api
        self._client_params = client_params
        self._service = service or api_client
        self._program_id = program_id
        self._params = params
        self._creation_date = creation_date
        self._image = image or ""
        self._session_id = session_id
        self._tags = list(tags or [])
        self._interim_decoder, self._final_decoder = _decoders(result_decoder)
        self._info: dict[str, Any] = dict(info or {})
        self._status = self._info.get("status", "QUEUED")
        self._results: dict[type[ResultDecoder], Any] = {}
        # Register the feed before watching: the first watch replays the job's events
        # from the start, and none may be routed before the feed exists.
        self._events = api_client.events
        self._feed = self._events.feed(job_id)
        if self._status not in FINAL_STATUSES:
            self._api.watch([job_id], Family.RUNTIME)
        if user_callback is not None:
            self.stream_results(user_callback, self._interim_decoder)

    @classmethod
    def from_info(
        cls,
        api_client: QDispatchService,
        info: dict[str, Any],
        backend: QDispatchBackend | None = None,
        params: dict[str, Any] | None = None,
        user_callback: Callable[[str, Any], Any] | None = None,
        result_decoder: type[ResultDecoder] | Sequence[type[ResultDecoder]] | None = None,
    ) -> RuntimeJob:
        """A job from the service's JSON form of it (``GET /jobs/{id}``)."""
        program_id = info.get("program_id") or ""
        if result_decoder is None and program_id == "circuit-runner":
            result_decoder = RunnerResult
        return cls(
            backend if backend is not None else api_client.backend(info["backend"]),
            api_client,
            api_client.url,
            info["id"],
            program_id,
            api_client,
            params=params,
            creation_date=info.get("creation_date"),
            user_callback=user_callback,
            result_decoder=result_decoder,
            image=info.get("image") or "",
            session_id=info.get("session_id"),
            tags=info.get("tags"),
            info=info,
        )

    def __repr__(self) -> str:
        return f"<RuntimeJob('{self._job_id}', '{self._program_id}')>"

    # -- attributes -----------------------------------------------------------------------

    @property
    def creation_date(self) -> datetime | None:
        """Job creation date in local time (``None`` if not available)."""
        return local_time(self._creation_date)

    @property
    def image(self) -> str:
        """The runtime image used for the job: ``image_name:tag``, or ``""`` if the
        default image is used."""
        return self._image

    @property
    def inputs(self) -> dict[str, Any]:
        """Job input parameters."""
        if self._params is None:
            raw = self._api.job_inputs(self._job_id)
            self._params = loads(raw) if raw else {}
        return self._params

    @property
    def program_id(self) -> str:
        """ID of the program this job is for."""
        return self._program_id

    @property
    def session_id(self) -> str | None:
        """ID of the session the job runs in, if any."""
        return self._session_id

    @property
    def tags(self) -> list[str]:
        """Tags assigned to the job that can be used for filtering."""
        return list(self._tags)

    @property
    def usage_estimation(self) -> dict[str, Any]:
        """The usage estimation of this job: ``quantum_seconds``, the estimated time the
        backend is dedicated to it, computed by the service from the inputs."""
        estimation: dict[str, Any] = self._info.get("usage_estimation") or {}
        return dict(estimation)

    # -- talking to the service -------------------------------------------------------------

    def _refresh(self) -> None:
        info = self._api.job(self._job_id, Family.RUNTIME)
        self._info = info
        self._status = info["status"]
        self._tags = list(info.get("tags") or [])

    def _fetch_result(self) -> bytes:
        return self._api.job_results(self._job_id, Family.RUNTIME)

    # -- methods ----------------------------------------------------------------------------

    def job_id(self) -> str:
        """Return a unique id identifying the job."""
        return self._job_id

    def backend(self, timeout: float | None = None) -> QDispatchBackend | None:
        """Return the backend where this job was executed (retrieved again if unknown).

        Raises:
            IBMRuntimeError: If a network error occurred.
        """
        if self._backend is None:
            try:
                self._refresh()
                self._backend = self._service.backend(self._info["backend"])
            except Exception as exc:
                if isinstance(exc, IBMRuntimeError):
                    raise
                raise IBMRuntimeError(f"backend of job {self._job_id}: {exc}") from exc
        return self._backend

    def submit(self) -> None:
        """Unsupported method: use ``service.run()`` to submit a job.

        Raises:
            NotImplementedError: Upon invocation.
        """
        raise NotImplementedError(
            "job.submit() is not supported. Please use service.run() to submit a job."
        )

    def status(self) -> JobStatus:
        """Return the status of the job (the one the service last pushed)."""
        if self._status not in FINAL_STATUSES:
            pushed = self._api.last_status(self._job_id)
            if pushed is None:
                self._refresh()
            elif pushed != self._status:
                self._status = pushed
                if pushed in FINAL_STATUSES:
                    self._refresh()  # error details, final tags
        return job_status(self._status)

    def done(self) -> bool:
        """Return whether the job has successfully run."""
        return self.status() is JobStatus.DONE

    def running(self) -> bool:
        """Return whether the job is actively running."""
        return self.status() is JobStatus.RUNNING

    def cancelled(self) -> bool:
        """Return whether the job has been cancelled."""
        return self.status() is JobStatus.CANCELLED

    def in_final_state(self) -> bool:
        """Return whether the job is in a final job state such as ``DONE`` or ``ERROR``."""
        return self.status() in (JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELLED)

    def error_message(self) -> str | None:
        """Returns the reason if the job failed, else ``None``."""
        if self.status() is not JobStatus.ERROR:
            return None
        if not self._info.get("error"):
            self._refresh()
        error = self._info.get("error") or {}
        return str(error.get("message", "unknown error"))

    def cancel(self) -> None:
        """Cancel the job.

        Raises:
            RuntimeInvalidStateError: If the job is in a state that cannot be cancelled.
            IBMRuntimeError: If unable to cancel job.
        """
        info = self._api.cancel_job(self._job_id, Family.RUNTIME)
        self._info = info
        self._status = info["status"]

    def wait_for_final_state(self, timeout: float | None = None) -> None:
        """Wait for the final state of the job (pushed over the service's WebSocket).

        Also waits for a streaming callback to have had the final result, so that what
        it collected is complete when this returns.

        Args:
            timeout: Seconds to wait for the job. If ``None``, wait indefinitely.

        Raises:
            RuntimeJobTimeoutError: If the job does not complete within given timeout.
        """
        self._wait_final(timeout, show=False)

    def _wait_final(self, timeout: float | None, show: bool | None) -> None:
        """:meth:`wait_for_final_state`, with a progress bar if ``show`` (``None``: if
        someone is watching, :func:`qdispatch.progress.interactive`)."""
        if self._status not in FINAL_STATUSES:
            session = f" in session {self._session_id}" if self._session_id else ""
            label = f"{self._program_id} job {self._job_id}{session}"
            status = progress.wait_final(
                self._api, self._job_id, timeout, Family.RUNTIME, label, show
            )
            if status is None:
                raise RuntimeJobTimeoutError(
                    f"Timed out waiting for job {self._job_id} (still "
                    f"{self._api.last_status(self._job_id) or self._status} after "
                    f"{timeout} s)."
                )
            if status == "DONE":
                # Finishing DONE changes nothing else of the record a RuntimeJob shows: a
                # small job's result is not delayed by a request for it.
                self._status = status
                self._info["status"] = status
            else:
                self._refresh()  # the error's details
        if self._feed.streaming and not self._events.on_router_thread():
            # The final events follow the final status by a few milliseconds.
            self._feed.idle.wait(timeout if timeout is not None else 30.0)

    def result(
        self, timeout: float | None = None, decoder: type[ResultDecoder] | None = None
    ) -> Any:
        """Return the results of the job, waiting for it to finish (with a progress bar
        on stderr when in a terminal or a notebook: :mod:`qdispatch.progress`).

        Args:
            timeout: Number of seconds to wait for job.
            decoder: A ``ResultDecoder`` subclass used to decode job results.

        Raises:
            RuntimeJobFailureError: If the job failed.
            RuntimeJobMaxTimeoutError: If the job does not complete within given timeout.
            RuntimeInvalidStateError: If the job was cancelled, and attempting to retrieve
                result.
        """
        use = decoder or self._final_decoder
        if use in self._results:
            return self._results[use]
        try:
            self._wait_final(timeout, show=None)
        except RuntimeJobTimeoutError as exc:
            raise RuntimeJobMaxTimeoutError(str(exc)) from exc
        if self._status == "ERROR":
            raise RuntimeJobFailureError(
                f"Unable to retrieve job result. Job {self._job_id} failed: {self.error_message()}"
            )
        if self._status == "CANCELLED":
            raise RuntimeInvalidStateError(
                f"Unable to retrieve result for job {self._job_id}. Job was cancelled."
            )
        self._results[use] = use.decode(self._fetch_result())
        return self._results[use]

    def interim_results(self, decoder: type[ResultDecoder] | None = None) -> Any:
        """Return the interim results of the job, oldest first.

        Args:
            decoder: A ``ResultDecoder`` subclass used to decode interim results.

        Raises:
            RuntimeJobFailureError: If the job failed.
        """
        if self.status() is JobStatus.ERROR:
            raise RuntimeJobFailureError(f"Job {self._job_id} failed: {self.error_message()}")
        use = decoder or self._interim_decoder
        return [use.decode(item) for item in self._interim_raw()]

    def _interim_raw(self) -> list[bytes]:
        """The interim results' JSON, each as its own bytes."""
        return [orjson.dumps(item) for item in self._api.interim_results(self._job_id)]

    def stream_results(
        self, callback: Callable[[str, Any], Any], decoder: type[ResultDecoder] | None = None
    ) -> None:
        """Start streaming job results.

        Args:
            callback: Called with ``(job_id, result)`` for every interim result (those
                published before this call first) and then for the final result.
            decoder: A ``ResultDecoder`` subclass used to decode job results.

        Raises:
            RuntimeInvalidStateError: If a callback function is already streaming results
                or if the job already finished.
        """
        if self._feed.streaming:
            raise RuntimeInvalidStateError(
                f"A callback function is already streaming results of job {self._job_id}."
            )
        if self._status in FINAL_STATUSES or self._api.last_status(self._job_id) in FINAL_STATUSES:
            raise RuntimeInvalidStateError(f"Job {self._job_id} already finished.")
        use = decoder or self._interim_decoder
        self._feed.start_streaming(callback, use, self._fetch_result, self._events_since)

    def _events_since(self, seq: int) -> list[tuple[int, str, bytes | None]]:
        """The job's events after ``seq``, over HTTP: ``(seq, type, data JSON)``."""
        return [
            (e["seq"], e["type"], None if e["data"] is None else orjson.dumps(e["data"]))
            for e in self._api.job_events(self._job_id, seq)
        ]

    def cancel_result_streaming(self) -> None:
        """Cancel result streaming."""
        self._feed.stop_streaming()

    def logs(self) -> str:
        """Return job logs: the program's standard output and error.

        Raises:
            IBMRuntimeError: If a network error occurred.
        """
        return self._api.job_logs(self._job_id)

    def metrics(self) -> dict[str, Any]:
        """Return job metrics: timestamps, usage and per-step timings.

        Raises:
            IBMRuntimeError: If a network error occurred.
        """
        return self._api.job_metrics(self._job_id)

    def update_tags(self, new_tags: list[str]) -> list[str]:
        """Update the tags associated with this job.

        Args:
            new_tags: New tags to assign to the job.

        Returns:
            The new tags associated with this job.

        Raises:
            IBMApiError: If an unexpected error occurred when communicating with the server
                or updating the job tags.
        """
        if isinstance(new_tags, str) or not all(isinstance(t, str) for t in new_tags):
            raise IBMApiError(f"tags must be a list of strings, got {new_tags!r}", 400)
        info = self._api.update_job_tags(self._job_id, list(new_tags), Family.RUNTIME)
        self._info = info
        self._tags = list(info.get("tags") or [])
        return list(self._tags)
