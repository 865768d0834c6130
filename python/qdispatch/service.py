"""``qdispatch.connect()``: a handle on a job service, local or shared.

With no URL (and no ``QDISPATCH_URL``/``QDISPATCH_TOKEN`` in the environment) it finds the
local service through its state file in the user's data directory, or starts one as a
detached process on 127.0.0.1 with a persistent store: jobs keep running after the script
exits, a later script finds them, and the service stops itself after an idle period
(``qdispatch stop`` stops it at once).

Every call goes through the service's adapter (:class:`qdispatch.api.ServiceApi`) and
its one native client (``qdispatch._native.Client``): pooled HTTP with retries and
idempotent POSTs, and one multiplexed WebSocket that pushes job statuses.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from qiskit.providers.exceptions import QiskitBackendNotFoundError

from . import _native
from .api import Family, ServiceApi, Verify
from .backend import QDispatchBackend
from .constants import ACTIVE_STATUSES, FINAL_STATUSES, status_name
from .exceptions import (
    IBMInputValueError,
    IBMQApiError,
    IBMQBackendNotFoundError,
)
from .job import IBMQJob
from .local import LocalService, find_or_start
from .runtime import EventRouter, ResultDecoder, RuntimeJob, submit_program

E = TypeVar("E", bound=Exception)


class QDispatchService:
    """A connection to a qdispatch job service: backends, jobs, and the shared client."""

    def __init__(
        self,
        url: str,
        token: str,
        local: bool = False,
        timeout: float = 30.0,
        verify: Verify = True,
    ) -> None:
        self._api = ServiceApi(url, token, local=local, timeout=timeout, verify=verify)
        self._lock = threading.Lock()
        self._backends: dict[str, QDispatchBackend] = {}
        self._events: EventRouter | None = None

        # How this connection was made, so that a pickled service (or backend) reconnects
        # in another process: the local service is found again, a shared one by URL+token.
        self._reopen_args = (None if local else url, None if local else token, timeout, verify)

    def __repr__(self) -> str:
        return f"<QDispatchService {self.url}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # The connection (native client, locks, stream) cannot cross processes; how to
        # make it again can. The token travels inside the pickle of a shared service: a
        # pickle of it is as secret as the token.
        return (_reopen, self._reopen_args)

    def __copy__(self) -> QDispatchService:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> QDispatchService:
        # A copy shares the connection: one client per service, as qiskit's providers.
        return self

    @property
    def url(self) -> str:
        """The service's base URL."""
        return self._api.url

    @property
    def api(self) -> ServiceApi:
        """The adapter every call to the service goes through (one method per call)."""
        return self._api

    @property
    def client(self) -> _native.Client:
        """The native client (HTTP and stream) every call goes through."""
        return self._api.client

    @property
    def events(self) -> EventRouter:
        """Routes the stream's events (interim results, logs) to the jobs that want them."""
        if self._events is None:
            with self._lock:
                if self._events is None:
                    self._events = EventRouter(self._api)
        return self._events

    # -- calls ------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        query: Sequence[tuple[str, str]] | None = None,
        error: Callable[[str, int, str], E] | None = None,
    ) -> Any:
        """One JSON call; a service error becomes ``error(message, status, code)``
        (default :class:`IBMQApiError`)."""
        return self._api.call(method, path, body, query=query, error=error)

    def raw_call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        query: Sequence[tuple[str, str]] | None = None,
        error: Callable[[str, int, str], E] | None = None,
    ) -> bytes:
        """One call returning the raw (decompressed) body."""
        return self._api.raw_call(method, path, body, query=query, error=error)

    def submit(self, envelope: bytes, qobj: bytes) -> dict[str, Any]:
        """``POST /jobs`` with a Qobj spliced into ``envelope``; answers the new job."""
        return self._api.submit_job(envelope, qobj)

    def info(self) -> dict[str, Any]:
        """The service's version and limits (``max_request_bytes``, ``max_active_jobs``…)."""
        if not hasattr(self, "_info"):
            self._info: dict[str, Any] = self._api.info()
        return self._info

    # -- backends ---------------------------------------------------------------------------

    def backends(
        self,
        name: str | None = None,
        min_num_qubits: int | None = None,
        instance: str | None = None,
        dynamic_circuits: bool | None = None,
        filters: Callable[[QDispatchBackend], bool] | None = None,
        *,
        use_fractional_gates: bool | None = False,
        **kwargs: Any,
    ) -> list[QDispatchBackend]:
        """The service's backends, subject to optional filtering (as
        ``QiskitRuntimeService.backends``).

        Args:
            name: Backend name to filter by.
            min_num_qubits: Minimum number of qubits the backend has to have.
            instance: Accepted for compatibility; a qdispatch service has one instance.
            dynamic_circuits: Filter by whether the backend runs conditional circuits.
            filters: More complex filters, a callable taking a backend, e.g.
                ``lambda b: b.status().pending_jobs < 5``.
            use_fractional_gates: ``False`` or ``None`` (the backends have no fractional
                gates; ``True`` raises :class:`IBMInputValueError`).
            **kwargs: Simple filters: each must equal the backend's configuration field
                of that name (``simulator=False``, ``n_qubits=5``), else its status field
                (``operational=True``, ``status_msg="active"``).

        Raises:
            IBMInputValueError: A ``kwargs`` name is neither a configuration nor a
                status field.
        """
        _no_fractional_gates(use_fractional_gates)
        out: list[QDispatchBackend] = []
        for entry in self._api.backends():
            if name is not None and entry["name"] != name:
                continue
            backend = self._backends.get(entry["name"])
            if backend is None:
                config = self._api.backend_configuration(entry["name"])
                backend = self._backends.setdefault(entry["name"], QDispatchBackend(self, config))
            config = backend.configuration()
            if min_num_qubits is not None and backend.num_qubits < min_num_qubits:
                continue
            if dynamic_circuits is not None and bool(config.get("conditional")) != dynamic_circuits:
                continue
            if not all(_field_matches(config, entry, k, v) for k, v in kwargs.items()):
                continue
            if filters is not None and not filters(backend):
                continue
            out.append(backend)
        return out

    def least_busy(
        self,
        min_num_qubits: int | None = None,
        instance: str | None = None,
        filters: Callable[[QDispatchBackend], bool] | None = None,
        use_fractional_gates: bool | None = False,
        **kwargs: Any,
    ) -> QDispatchBackend:
        """The operational, active (not paused) backend with the fewest pending jobs,
        among those :meth:`backends` finds with the same filters.

        Raises:
            QiskitBackendNotFoundError: No backend matches (as qiskit-ibm-runtime).
        """
        candidates = [
            (status.pending_jobs, backend.name, backend)
            for backend in self.backends(
                min_num_qubits=min_num_qubits,
                instance=instance,
                filters=filters,
                use_fractional_gates=use_fractional_gates,
                **kwargs,
            )
            for status in [backend.status()]
            if status.operational and status.status_msg == "active"
        ]
        if not candidates:
            raise QiskitBackendNotFoundError("No backend matches the criteria.")
        return min(candidates, key=lambda c: (c[0], c[1]))[2]

    def backend(
        self, name: str, instance: str | None = None, use_fractional_gates: bool | None = False
    ) -> QDispatchBackend:
        """The backend called ``name`` (``instance`` and ``use_fractional_gates`` as
        :meth:`backends` takes them)."""
        _no_fractional_gates(use_fractional_gates)
        if name in self._backends:
            return self._backends[name]
        found = self.backends(name)
        if not found:
            names = ", ".join(b.name for b in self.backends())
            raise IBMQBackendNotFoundError(f"unknown backend '{name}' (available: {names})", 404)
        return found[0]

    # -- jobs -------------------------------------------------------------------------------

    def job(self, job_id: str) -> IBMQJob | RuntimeJob:
        """The job ``job_id``, as the service knows it now: a :class:`RuntimeJob` for a
        program job, an :class:`IBMQJob` for a circuit job."""
        return self._job_from_info(self._api.job(job_id, Family.IBMQ))

    def _job_from_info(self, info: dict[str, Any]) -> IBMQJob | RuntimeJob:
        if info.get("kind") == "program":
            return RuntimeJob.from_info(self, info)
        return IBMQJob.from_info(self.backend(info["backend"]), self, info)

    # -- programs -------------------------------------------------------------------------

    def programs(self) -> list[dict[str, Any]]:
        """The programs the service runs: ``id``, ``version``, ``description``, ``source``."""
        return self._api.programs()

    def run(
        self,
        program_id: str,
        inputs: dict[str, Any],
        options: dict[str, Any] | Any | None = None,
        callback: Callable[[str, Any], Any] | None = None,
        result_decoder: type[ResultDecoder] | Sequence[type[ResultDecoder]] | None = None,
        session_id: str | None = None,
        job_tags: list[str] | None = None,
        image: str | None = None,
    ) -> RuntimeJob:
        """Execute the runtime program ``program_id``.

        Args:
            program_id: Program ID (``circuit-runner``, ``sampler``, ``estimator``, or one
                the service's operator registered; :meth:`programs` lists them).
            inputs: Program input parameters, encoded in the runtime JSON convention
                (:mod:`qdispatch.encoding`).
            options: Runtime options: ``backend`` (a name or backend; without one, the
                session's, else the service picks the least busy), ``job_tags``,
                ``image``, ``name``, ``share_level``.
            callback: Called with ``(job_id, result)`` for every interim result and the
                final result.
            result_decoder: A ``ResultDecoder`` subclass (or one for interim and one for
                final results) used to decode job results.
            session_id: The session to run the job in.
            job_tags: Tags to assign to the job.
            image: The program image to use, ``"<program_id>:<version>"``.

        Returns:
            A :class:`RuntimeJob`.

        Raises:
            RuntimeProgramNotFound: If the service has no such program.
            IBMInputValueError: If the inputs or options cannot be used; the message names
                the input.
            IBMApiError: If the service's store is full or the caller's quota reached
                (``storage_full``, ``storage_quota``), or the caller has as many jobs being
                checked as allowed (``check_limit``, after retries); ``status`` and ``code``
                say which.
            IBMRuntimeError: If the service refused the job for another reason.
        """
        return submit_program(
            self,
            program_id,
            inputs,
            options,
            callback=callback,
            result_decoder=result_decoder,
            session_id=session_id,
            job_tags=job_tags,
            image=image,
        )

    def jobs(
        self,
        limit: int | None = 10,
        skip: int = 0,
        backend_name: str | None = None,
        status: str | Any | Sequence[str | Any] | None = None,
        job_name: str | None = None,
        start_datetime: datetime | None = None,
        end_datetime: datetime | None = None,
        job_tags: Sequence[str] | None = None,
        job_tags_operator: str = "OR",
        descending: bool = True,
        program_id: str | None = None,
        session_id: str | None = None,
        *,
        pending: bool | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        instance: str | None = None,
    ) -> list[IBMQJob | RuntimeJob]:
        """Jobs matching the filters, newest first unless ``descending=False``.

        ``limit=None`` returns every matching job. ``status`` is a ``JobStatus`` or its
        name (or a list of them); ``job_name`` is a regular expression matched partially;
        ``job_tags`` match any tag (``job_tags_operator="AND"``: all of them). Program jobs
        come back as :class:`RuntimeJob`, circuit jobs as :class:`IBMQJob`.

        qiskit-ibm-runtime's names work too: ``pending=True`` (queued or running jobs;
        ``False``: finished ones), ``created_after``/``created_before`` (what
        ``start_datetime``/``end_datetime`` mean); ``instance`` is accepted for
        compatibility (a qdispatch service has one instance).

        Raises:
            IBMInputValueError: A time bound is given under both of its names.
        """
        start_datetime = _one_of("start_datetime", start_datetime, "created_after", created_after)
        end_datetime = _one_of("end_datetime", end_datetime, "created_before", created_before)
        statuses = status if isinstance(status, (list, tuple)) else [status] if status else []
        names = [status_name(s) for s in statuses]
        if pending is not None:
            wanted = ACTIVE_STATUSES if pending else tuple(sorted(FINAL_STATUSES))
            names = [n for n in names if n in wanted] if names else list(wanted)
            if not names:
                return []  # ``status`` and ``pending`` exclude each other
        filters: dict[str, Any] = {
            "descending": descending,
            "backend_name": backend_name,
            "statuses": names,
            "name": job_name,
            "created_after": start_datetime,
            "created_before": end_datetime,
            "tags": list(job_tags or []),
            "tags_operator": job_tags_operator,
            "program_id": program_id,
            "session_id": session_id,
        }
        jobs: list[IBMQJob | RuntimeJob] = []
        while limit is None or len(jobs) < limit:
            page = 1000 if limit is None else min(1000, limit - len(jobs))
            found = self._api.jobs(limit=page, skip=skip + len(jobs), **filters)
            jobs.extend(self._job_from_info(info) for info in found)
            if len(found) < page:
                break
        return jobs

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job: its record, circuits or inputs, result, logs and
        interim results. This cannot be undone. Only the job's owner (or an operator)
        may; a queued or running job must be cancelled first.

        Raises:
            RuntimeJobNotFound: The job does not exist (or the caller cannot see it).
            IBMRuntimeError: The job is queued or running, or shared read-only.
        """
        self._api.delete_job(job_id)

    def usage(self) -> dict[str, Any]:
        """Usage in the keys of ``QiskitRuntimeService.usage()``. The service has no time
        quota: ``usage_limit_seconds``, ``usage_consumed_seconds`` and
        ``usage_remaining_seconds`` are ``None`` and ``usage_limit_reached`` is
        ``False``. Its one limit is on each user's queued and running jobs:
        ``max_active_jobs`` (``None``: unlimited), and ``active_jobs`` counts the queued
        and running jobs this caller sees (its own and those its project shares). Its
        storage quota: ``stored_bytes`` (what the caller's jobs store) and
        ``max_user_store_bytes`` (``None``: no quota)."""
        info = self._api.info()
        limit = info.get("max_active_jobs") or None  # 0: unlimited
        active = 0
        while True:  # counted a page at a time: only records, no job objects built
            page = self._api.jobs(limit=1000, skip=active, statuses=ACTIVE_STATUSES)
            active += len(page)
            if len(page) < 1000:
                break
        return {
            "usage_limit_seconds": None,
            "usage_consumed_seconds": None,
            "usage_remaining_seconds": None,
            "usage_limit_reached": False,
            "active_jobs": active,
            "max_active_jobs": limit,
            "stored_bytes": info.get("stored_bytes"),
            "max_user_store_bytes": info.get("max_user_store_bytes") or None,
        }

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (this object's connections are gone)."""
        return getattr(self, "_closed", False)

    def close(self) -> None:
        """Close the stream and the connections (the service itself keeps running)."""
        self._closed = True
        if self._events is not None:
            self._events.close()
        self._api.close()

    def __enter__(self) -> QDispatchService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Services reopened from pickles in this process, so that the backends of one service
# unpickled one by one (a task each) share one connection.
_REOPENED: weakref.WeakValueDictionary[tuple[Any, ...], QDispatchService] = (
    weakref.WeakValueDictionary()
)
_REOPENED_LOCK = threading.Lock()


def _reopen(url: str | None, token: str | None, timeout: float, verify: Verify) -> QDispatchService:
    """A pickled service, connected again: the local service when ``url`` is ``None``
    (found through its state file, or started), else the shared service at ``url``."""
    key = (url, token, timeout, verify)
    with _REOPENED_LOCK:
        service = _REOPENED.get(key)
        if service is None or service.closed:  # one closed by its user is not handed out
            if url is None:
                local: LocalService = find_or_start(detached=True)
                service = QDispatchService(local.url, local.token, local=True, timeout=timeout)
            else:
                service = QDispatchService(url, token or "", timeout=timeout, verify=verify)
            _REOPENED[key] = service
    return service


def _no_fractional_gates(use_fractional_gates: bool | None) -> None:
    if use_fractional_gates:
        raise IBMInputValueError(
            "use_fractional_gates=True: this service's backends have no fractional gates"
        )


def _one_of(name: str, value: Any, alias: str, alias_value: Any) -> Any:
    if value is not None and alias_value is not None:
        raise IBMInputValueError(f"give {name} or {alias}, not both")
    return value if value is not None else alias_value


def _field_matches(config: dict[str, Any], status: dict[str, Any], key: str, value: Any) -> bool:
    """Whether a backend's configuration field ``key`` (else its status field) is ``value``."""
    if key in config:
        return bool(config[key] == value)
    if key in status:
        return bool(status[key] == value)
    raise IBMInputValueError(
        f"cannot filter backends by '{key}': it is neither a configuration nor a status field"
    )


def connect(
    url: str | None = None,
    token: str | None = None,
    *,
    timeout: float = 30.0,
    verify: Verify = True,
) -> QDispatchService:
    """Connect to a job service.

    ``connect()`` uses ``QDISPATCH_URL`` and ``QDISPATCH_TOKEN`` if set, else the local
    service (found through its state file, or started detached on 127.0.0.1).
    ``connect(url, token=...)`` talks to a shared service; ``https://`` URLs (and the
    event stream over ``wss://``) check the service's certificate:

    * ``verify=True`` (default): against the platform's CA certificates (the file
      ``SSL_CERT_FILE`` names, if set), or the PEM bundle ``QDISPATCH_CA_BUNDLE`` names;
    * ``verify="ca.pem"``: against that PEM bundle alone (a private CA);
    * ``verify=False``: not at all, with an :class:`InsecureConnectionWarning` (testing only).

    A certificate that is not trusted fails the first call with :class:`IBMQApiError`
    (``status`` 0, ``code`` ``"tls_error"``, the message naming the host and the reason);
    the client never falls back to plain HTTP.

    A client of the local service restarts it if it dies (docs/service.md, "One service
    per store"). :class:`qdispatch.local.LocalServiceError` says why no local service could
    be had: its store is served from another host, it is on a network filesystem, or the
    service did not start (the message ends with its log).
    """
    url = url or os.environ.get("QDISPATCH_URL")
    token = token or os.environ.get("QDISPATCH_TOKEN")
    if url:
        if not token:
            raise IBMQApiError(
                f"a token is needed to connect to {url} (token=… or QDISPATCH_TOKEN)"
            )
        return QDispatchService(url.rstrip("/"), token, timeout=timeout, verify=verify)
    local: LocalService = find_or_start(detached=True)
    return QDispatchService(local.url, local.token, local=True, timeout=timeout)
