"""``RuntimeJob``: a program run on the job service, with streamed interim results.

A program job (docs/runtime.md) is submitted with ``service.run(program_id, inputs)`` or by
a primitive (``qdispatch.Sampler``/``Estimator``). Like every job it is watched on the
service's one multiplexed WebSocket; its ``interim`` and ``result`` events carry per-job
sequence numbers, and the native client resumes a dropped connection from the last one it
saw, so a callback gets every interim result once, in order, even across reconnects.

Events reach Python through :class:`EventRouter`: one thread per service that drains the
native client's event queue and hands each event to the feed of its job. A feed keeps the
job's interim results from the first event on, so ``stream_results`` started while the
job runs still gets all of them.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from qiskit.primitives import BasePrimitiveJob
from qiskit.providers import JobStatus
from qiskit.result import Result

from .. import codes
from ..constants import FINAL_STATUSES, job_status, local_time
from ..exceptions import (
    IBMApiError,
    IBMRuntimeError,
    RuntimeInvalidStateError,
    RuntimeJobFailureError,
    RuntimeJobMaxTimeoutError,
    RuntimeJobTimeoutError,
)

if TYPE_CHECKING:
    from ..backend import QDispatchBackend
    from ..service import QDispatchService

log = logging.getLogger(__name__)

# Codes of a refused submission that name a bad input (IBMInputValueError).
_INPUT_ERRORS = (
    codes.INVALID_PARAMS,
    codes.INVALID_REQUEST,
    codes.UNKNOWN_IMAGE,
    codes.UNKNOWN_BACKEND,
)


class ResultDecoder:
    """Decodes a runtime job's result (and interim results) from the service's JSON.

    The default decodes the ``{"__type__", "__value__"}`` convention
    (:mod:`qdispatch.encoding`): primitives' results come back as qiskit
    ``PrimitiveResult`` objects. Subclass it and override :meth:`decode` for a program
    whose results need more.
    """

    @classmethod
    def decode(cls, raw_result: str | bytes) -> Any:
        """Convert the result JSON to Python objects."""
        from ..encoding import loads

        return loads(raw_result)


class RunnerResult(ResultDecoder):
    """Decoder of ``circuit-runner`` results: a qiskit :class:`~qiskit.result.Result`."""

    @classmethod
    def decode(cls, raw_result: str | bytes) -> Result:
        """Convert the result JSON to a qiskit ``Result``."""
        decoded = super().decode(raw_result)
        return decoded if isinstance(decoded, Result) else Result.from_dict(decoded)


def _decoders(
    decoder: type[ResultDecoder] | Sequence[type[ResultDecoder]] | None,
) -> tuple[type[ResultDecoder], type[ResultDecoder]]:
    """(interim decoder, final decoder) from a ``result_decoder`` argument."""
    if decoder is None:
        return ResultDecoder, ResultDecoder
    if isinstance(decoder, Sequence):
        if len(decoder) != 2:
            raise ValueError("result_decoder must be one decoder or (interim, final) decoders")
        return decoder[0], decoder[1]
    return decoder, decoder


# -- events -----------------------------------------------------------------------------


class JobFeed:
    """The events of one job as they arrive: interim results kept in order, and the
    streaming callback (if any) called for each on the router's thread."""

    def __init__(self, job_id: str, pinned: set[JobFeed] | None = None) -> None:
        self.job_id = job_id
        # Feeds live as long as their jobs, except while streaming: a callback keeps
        # getting results even if the script dropped the job object.
        self._pinned = pinned if pinned is not None else set()
        self._lock = threading.Lock()
        self.interim: list[bytes] = []
        self.status: str | None = None
        self.has_result = False
        self.last_seq = 0
        self._callback: Callable[[str, Any], Any] | None = None
        self._fetch_events: Callable[[int], list[tuple[int, str, bytes | None]]] | None = None
        self._decoder: type[ResultDecoder] = ResultDecoder
        self._fetch_result: Callable[[], bytes] | None = None
        self._streamed = 0  # interim results handed to the callback so far
        self._delivering = False
        self.idle = threading.Event()  # no callback is running or pending
        self.idle.set()

    @property
    def streaming(self) -> bool:
        """Whether a callback receives this job's results."""
        return self._callback is not None

    def start_streaming(
        self,
        callback: Callable[[str, Any], Any],
        decoder: type[ResultDecoder],
        fetch_result: Callable[[], bytes],
        fetch_events: Callable[[int], list[tuple[int, str, bytes | None]]] | None = None,
    ) -> None:
        """Hand every interim result (those already here first) and then the final
        result to ``callback``."""
        with self._lock:
            if self._callback is not None:
                raise RuntimeInvalidStateError(
                    f"A callback function is already streaming results of job {self.job_id}."
                )
            self._callback, self._decoder, self._fetch_result = callback, decoder, fetch_result
            self._fetch_events = fetch_events
            self._streamed = 0
            self.idle.clear()
            self._pinned.add(self)
        self._drain()

    def stop_streaming(self) -> None:
        """No more callbacks (one running now completes)."""
        with self._lock:
            self._callback = None
            self._pinned.discard(self)
            self.idle.set()

    def on_event(self, seq: int, kind: str, data: bytes | None) -> None:
        """An event of this job, from the router or from :meth:`catch_up`; one already
        seen (by seq) is ignored, so the two sources never deliver anything twice."""
        with self._lock:
            if seq <= self.last_seq:
                return
            self.last_seq = seq
            if kind == "interim" and data is not None:
                self.interim.append(data)
            elif kind == "status" and data is not None:
                self.status = orjson.loads(data).get("status")
            elif kind == "result":
                self.has_result = True
        self._drain()

    def catch_up(self) -> None:
        """Fetch the events after the last one seen over HTTP (``GET /jobs/{id}/events``):
        what the router does for a streaming job while no WebSocket can be had."""
        fetch = self._fetch_events
        if fetch is None or self._callback is None:
            return
        for seq, kind, data in fetch(self.last_seq):
            self.on_event(seq, kind, data)

    def _drain(self) -> None:
        """Deliver what the callback has not had yet, the final result last. One thread
        delivers at a time (the router's, or the one that started streaming), so the
        callback sees the results in order."""
        with self._lock:
            if self._delivering:
                return  # the delivering thread picks up what was just added
            self._delivering = True
        while True:
            with self._lock:
                callback = self._callback
                final = False
                raw: bytes | None = None
                if callback is None:
                    self._delivering = False
                    return
                if self._streamed < len(self.interim):
                    raw = self.interim[self._streamed]
                    self._streamed += 1
                elif self.has_result or self.status in ("ERROR", "CANCELLED"):
                    final = True
                else:
                    self._delivering = False
                    return
                decoder, fetch = self._decoder, self._fetch_result
            try:
                if not final:
                    callback(self.job_id, decoder.decode(raw or b"null"))
                elif self.has_result and fetch is not None:
                    callback(self.job_id, decoder.decode(fetch()))
            except Exception:
                # A user callback that raises must not stop the router (or other jobs).
                log.exception("result callback of job %s raised", self.job_id)
            if final:
                with self._lock:
                    self._callback = None
                    self._delivering = False
                    self._pinned.discard(self)
                    self.idle.set()
                return


class EventRouter:
    """Drains a service's event queue on one daemon thread and routes each event to the
    feed of its job. Events of jobs without a live feed are dropped (their status is
    still tracked by the native client)."""

    def __init__(self, service: QDispatchService) -> None:
        self._service = weakref.ref(service)
        self._feeds: weakref.WeakValueDictionary[str, JobFeed] = weakref.WeakValueDictionary()
        self._pinned: set[JobFeed] = set()  # feeds with a callback streaming
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def feed(self, job_id: str) -> JobFeed:
        """The feed of ``job_id`` (one per job and service), created on first use; the
        router starts with the first feed."""
        with self._lock:
            found = self._feeds.get(job_id)
            if found is None:
                found = JobFeed(job_id, self._pinned)
                self._feeds[job_id] = found
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="qdispatch-events", daemon=True
                )
                self._thread.start()
            return found

    def on_router_thread(self) -> bool:
        """Whether the caller is the router's thread (a callback)."""
        return threading.current_thread() is self._thread

    def close(self) -> None:
        """Stop routing (the thread exits within half a second)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            service = self._service()
            if service is None:
                return
            client = service.client
            del service
            try:
                events = client.next_events(0.5)
            except Exception:  # a closed client: the service is going away
                if self._stop.wait(0.5):
                    return
                continue
            for job_id, seq, kind, data in events:
                feed = self._feeds.get(job_id)
                if feed is not None:
                    feed.on_event(seq, kind, data)
            if self._pinned and not client.stream_connected():
                # No socket (a proxy that refuses WebSockets, a service restarting): poll
                # the streaming jobs' events over HTTP, resuming by seq all the same.
                for feed in list(self._pinned):
                    try:
                        feed.catch_up()
                    except Exception:
                        log.debug("catching up on job %s failed", feed.job_id, exc_info=True)


# -- the job ------------------------------------------------------------------------------


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
        self._api = api_client
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
        self._feed = api_client.events.feed(job_id)
        if self._status not in FINAL_STATUSES:
            api_client.client.watch([job_id])
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
            from ..encoding import loads

            raw = self._raw("GET", "/inputs")
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

    def _raw(self, method: str, suffix: str = "", body: Any = None) -> bytes:
        data = orjson.dumps(body) if body is not None else None
        return self._api.raw_call(method, f"/jobs/{self._job_id}{suffix}", data, error=IBMApiError)

    def _call(self, method: str, suffix: str = "", body: Any = None) -> Any:
        """One call about this job; a network or service error is an IBMRuntimeError."""
        try:
            raw = self._raw(method, suffix, body)
        except IBMApiError as exc:
            raise IBMRuntimeError(f"job {self._job_id}: {exc.message}") from exc
        return orjson.loads(raw) if raw else None

    def _refresh(self) -> None:
        info = self._call("GET")
        self._info = info
        self._status = info["status"]
        self._tags = list(info.get("tags") or [])

    def _fetch_result(self) -> bytes:
        try:
            return self._raw("GET", "/results")
        except IBMApiError as exc:
            if exc.code in (codes.JOB_HAS_NO_RESULT, codes.JOB_NOT_FINISHED):
                raise RuntimeInvalidStateError(
                    f"Unable to retrieve result for job {self._job_id}: {exc.message}"
                ) from exc
            raise IBMRuntimeError(f"job {self._job_id}: {exc.message}") from exc

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
            pushed = self._api.client.last_status(self._job_id)
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
        try:
            info = orjson.loads(self._raw("POST", "/cancel"))
        except IBMApiError as exc:
            if exc.code == codes.JOB_FINISHED:
                raise RuntimeInvalidStateError(
                    f"Job {self._job_id} cannot be cancelled: {exc.message}"
                ) from exc
            raise IBMRuntimeError(f"Failed to cancel job {self._job_id}: {exc.message}") from exc
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
        if self._status not in FINAL_STATUSES:
            status = self._api.client.wait_final(self._job_id, timeout)
            if status is None:
                raise RuntimeJobTimeoutError(
                    f"Timed out waiting for job {self._job_id} (still "
                    f"{self._api.client.last_status(self._job_id) or self._status} after "
                    f"{timeout} s)."
                )
            self._refresh()
        if self._feed.streaming and not self._api.events.on_router_thread():
            # The final events follow the final status by a few milliseconds.
            self._feed.idle.wait(timeout if timeout is not None else 30.0)

    def result(
        self, timeout: float | None = None, decoder: type[ResultDecoder] | None = None
    ) -> Any:
        """Return the results of the job, waiting for it to finish.

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
            self.wait_for_final_state(timeout)
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
        try:
            raw = self._raw("GET", "/interim_results")
        except IBMApiError as exc:
            raise IBMRuntimeError(f"job {self._job_id}: {exc.message}") from exc
        return [orjson.dumps(item) for item in orjson.loads(raw)]

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
        if (
            self._status in FINAL_STATUSES
            or self._api.client.last_status(self._job_id) in FINAL_STATUSES
        ):
            raise RuntimeInvalidStateError(f"Job {self._job_id} already finished.")
        use = decoder or self._interim_decoder
        self._feed.start_streaming(callback, use, self._fetch_result, self._events_since)

    def _events_since(self, seq: int) -> list[tuple[int, str, bytes | None]]:
        """The job's events after ``seq``, over HTTP: ``(seq, type, data JSON)``."""
        raw = self._api.raw_call(
            "GET", f"/jobs/{self._job_id}/events", query=[("since", str(seq))], error=IBMApiError
        )
        return [
            (e["seq"], e["type"], None if e["data"] is None else orjson.dumps(e["data"]))
            for e in orjson.loads(raw)["events"]
        ]

    def cancel_result_streaming(self) -> None:
        """Cancel result streaming."""
        self._feed.stop_streaming()

    def logs(self) -> str:
        """Return job logs: the program's standard output and error.

        Raises:
            IBMRuntimeError: If a network error occurred.
        """
        try:
            return self._raw("GET", "/logs").decode()
        except IBMApiError as exc:
            raise IBMRuntimeError(f"Failed to get job logs: {exc.message}") from exc

    def metrics(self) -> dict[str, Any]:
        """Return job metrics: timestamps, usage and per-step timings.

        Raises:
            IBMRuntimeError: If a network error occurred.
        """
        metrics: dict[str, Any] = self._call("GET", "/metrics")
        return metrics

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
        info = orjson.loads(self._raw("PUT", "/tags", {"tags": list(new_tags)}))
        self._info = info
        self._tags = list(info.get("tags") or [])
        return list(self._tags)


# -- submission ---------------------------------------------------------------------------

_OPTION_KEYS = ("backend", "job_tags", "image", "name", "share_level", "session_id")


def _options_dict(options: dict[str, Any] | Any | None) -> dict[str, Any]:
    """Runtime options as a dict, from a dict or an options object with attributes."""
    if options is None:
        return {}
    if isinstance(options, dict):
        unknown = sorted(set(options) - set(_OPTION_KEYS) - {"log_level", "max_execution_time"})
        if unknown:
            from ..exceptions import IBMInputValueError

            raise IBMInputValueError(
                f"unknown runtime option(s) {', '.join(unknown)} (known: {', '.join(_OPTION_KEYS)})"
            )
        return dict(options)
    return {k: getattr(options, k) for k in _OPTION_KEYS if getattr(options, k, None) is not None}


def submit_program(
    service: QDispatchService,
    program_id: str,
    inputs: dict[str, Any],
    options: dict[str, Any] | Any | None = None,
    *,
    callback: Callable[[str, Any], Any] | None = None,
    result_decoder: type[ResultDecoder] | Sequence[type[ResultDecoder]] | None = None,
    session_id: str | None = None,
    job_tags: list[str] | None = None,
    image: str | None = None,
    encoded_inputs: bytes | None = None,
    keep_inputs: bool = True,
) -> RuntimeJob:
    """``POST /jobs`` for a program; what ``service.run`` and the primitives call.

    ``encoded_inputs`` is the inputs' JSON when the caller has already encoded them (the
    primitives write their pubs in one pass); ``inputs`` is then kept as the job's
    ``inputs`` without being encoded again (unless ``keep_inputs`` is false: then
    ``job.inputs`` reads them back from the service when asked).
    """
    import uuid

    from ..encoding import dumps
    from ..exceptions import IBMInputValueError, RuntimeProgramNotFound

    if not isinstance(program_id, str) or not program_id:
        raise IBMInputValueError(f"program_id must be a non-empty string, got {program_id!r}")
    if not isinstance(inputs, dict):
        raise IBMInputValueError(f"inputs must be a dict of the program's inputs, got {inputs!r}")
    opts = _options_dict(options)
    backend = opts.get("backend")
    backend_name = getattr(backend, "name", backend)
    if backend_name is not None and not isinstance(backend_name, str):
        raise IBMInputValueError(f"options['backend'] must be a backend or its name: {backend!r}")
    tags = list(job_tags if job_tags is not None else opts.get("job_tags") or [])
    if not all(isinstance(t, str) for t in tags):
        raise IBMInputValueError(f"job_tags must be a list of strings, got {tags!r}")
    if encoded_inputs is None:
        try:
            encoded_inputs = dumps(inputs)
        except (TypeError, ValueError) as exc:
            raise IBMInputValueError(f"inputs cannot be encoded: {exc}") from exc
    envelope: dict[str, Any] = {
        "program_id": program_id,
        "backend": backend_name,
        "params": orjson.Fragment(encoded_inputs),
        "tags": tags,
        "name": opts.get("name"),
        "session_id": session_id or opts.get("session_id"),
        "image": image or opts.get("image"),
        "share_level": opts.get("share_level") or "none",
        "client_info": {"qdispatch": _version()},
    }
    body = orjson.dumps({k: v for k, v in envelope.items() if v is not None})
    try:
        key = uuid.uuid4().hex  # one key for every retry: the service makes one job
        raw = service._with_fresh_token(
            lambda c: c.request("POST", "/jobs", body, idempotency_key=key, gzip=len(body) > 4096)
        )
    except Exception as exc:
        from .. import _native

        if not isinstance(exc, _native.ApiError):
            raise
        code, message = str(exc.code), str(exc.message)
        if code == codes.UNKNOWN_PROGRAM:
            raise RuntimeProgramNotFound(message) from exc
        if code in (
            codes.INVALID_PARAMS,
            codes.INVALID_REQUEST,
            codes.UNKNOWN_IMAGE,
            codes.UNKNOWN_BACKEND,
        ):
            raise IBMInputValueError(message) from exc
        raise IBMRuntimeError(f"job not submitted: {message}") from exc
    info = orjson.loads(raw)
    backend_obj = backend if backend is not None and not isinstance(backend, str) else None
    return RuntimeJob.from_info(
        service,
        info,
        backend=backend_obj,
        params=inputs if keep_inputs else None,
        user_callback=callback,
        result_decoder=result_decoder,
    )


def _version() -> str:
    from .. import __version__

    return __version__
