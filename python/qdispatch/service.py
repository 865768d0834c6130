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

from . import _native
from .api import Family, ServiceApi, Verify
from .backend import QDispatchBackend
from .constants import status_name
from .exceptions import IBMQApiError, IBMQBackendApiError
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

    def backends(self, name: str | None = None, **filters: Any) -> list[QDispatchBackend]:
        """The service's backends, optionally only the one called ``name`` or those whose
        configuration matches every ``filters`` item (e.g. ``simulator=False``)."""
        listed = self._api.backends()
        out: list[QDispatchBackend] = []
        for entry in listed:
            if name is not None and entry["name"] != name:
                continue
            backend = self._backends.get(entry["name"])
            if backend is None:
                config = self._api.backend_configuration(entry["name"])
                backend = self._backends.setdefault(entry["name"], QDispatchBackend(self, config))
            if all(backend.configuration().get(k) == v for k, v in filters.items()):
                out.append(backend)
        return out

    def backend(self, name: str) -> QDispatchBackend:
        """The backend called ``name``."""
        if name in self._backends:
            return self._backends[name]
        found = self.backends(name)
        if not found:
            names = ", ".join(b.name for b in self.backends())
            raise IBMQBackendApiError(f"unknown backend '{name}' (available: {names})", 404)
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
    ) -> list[IBMQJob | RuntimeJob]:
        """Jobs matching the filters, newest first unless ``descending=False``.

        ``limit=None`` returns every matching job. ``status`` is a ``JobStatus`` or its
        name (or a list of them); ``job_name`` is a regular expression matched partially;
        ``job_tags`` match any tag (``job_tags_operator="AND"``: all of them). Program jobs
        come back as :class:`RuntimeJob`, circuit jobs as :class:`IBMQJob`.
        """
        statuses = status if isinstance(status, (list, tuple)) else [status] if status else []
        filters: dict[str, Any] = {
            "descending": descending,
            "backend_name": backend_name,
            "statuses": [status_name(s) for s in statuses],
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

    def close(self) -> None:
        """Close the stream and the connections (the service itself keeps running)."""
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
        if service is None:
            if url is None:
                local: LocalService = find_or_start(detached=True)
                service = QDispatchService(local.url, local.token, local=True, timeout=timeout)
            else:
                service = QDispatchService(url, token or "", timeout=timeout, verify=verify)
            _REOPENED[key] = service
    return service


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
