"""The client's one adapter to the job service's wire: every path, query string and error.

:class:`ServiceApi` wraps the native client (``qdispatch._native.Client``: pooled HTTP with
retries and idempotent POSTs, and the one multiplexed WebSocket that pushes job statuses
and events) with one method per service call (docs/protocol.md, docs/runtime.md). The job,
backend, job manager, runtime and session classes call these methods; none of them builds
a path or looks at an error code.

A service error carries a code (:mod:`qdispatch.codes`); the tables here turn it into the
documented exception of the caller's API. The same error can surface differently for the
two APIs qdispatch presents: a call about a job made by ``IBMQJob`` raises the IBMQ
provider's exceptions, the same call made by ``RuntimeJob`` those of qiskit-ibm-runtime.
Calls that both make take a :class:`Family`.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import orjson

from . import _native, codes
from .constants import MAX_BULK_IDS, utc_iso
from .exceptions import (
    IBMApiError,
    IBMInputValueError,
    IBMQApiError,
    IBMQBackendApiError,
    IBMQBackendJobLimitError,
    IBMQJobApiError,
    IBMQJobInvalidStateError,
    IBMRuntimeError,
    InsecureConnectionWarning,
    RuntimeInvalidStateError,
    RuntimeJobNotFound,
    RuntimeProgramNotFound,
)
from .local import LocalServiceError, default_data_dir, find_or_start

E = TypeVar("E", bound=Exception)
T = TypeVar("T")

log = logging.getLogger(__name__)

# A wait on the local service's stream wakes this often to see whether the service is
# still there (a wait with no timeout would otherwise outlive a killed service forever).
_LOCAL_CHECK_SECONDS = 2.0
# How long a result announced by a job's final status may take to follow it on the stream
# (it is sent right behind the status) before it is fetched over HTTP instead.
_RESULT_FOLLOWS_SECONDS = 1.0

# Exceptions that carry the service's answer (``status``, ``code``) besides the message.
_CARRY_ANSWER = (IBMQApiError, IBMQJobApiError, IBMQBackendApiError, IBMApiError)
# Runtime submissions above this size go gzip-compressed.
_GZIP_ABOVE = 4096


class Family(enum.Enum):
    """Whose documented exceptions a call raises."""

    IBMQ = "ibmq"
    """The IBMQ provider's: ``IBMQJob``, backends, the job manager."""
    RUNTIME = "runtime"
    """qiskit-ibm-runtime's: ``RuntimeJob``, sessions, programs."""


@dataclass(frozen=True)
class Raise:
    """One documented exception: its class and its message, a format of the service's
    ``message`` and the call's subject (``job_id``, ``session_id``)."""

    exception: type[Exception]
    message: str = "{message}"

    def make(self, error: _native.ApiError, subject: Mapping[str, Any]) -> Exception:
        """The exception for the service's ``error``."""
        text = self.message.format(message=str(error.message), **subject)
        if issubclass(self.exception, _CARRY_ANSWER):
            return self.exception(text, int(error.status), str(error.code))
        return self.exception(text)


@dataclass(frozen=True)
class Errors:
    """How one call's service errors surface: the codes with a documented exception of
    their own, ``default`` for any other; ``ignored`` codes are no error for this call
    (it answers ``None``)."""

    default: Raise
    by_code: Mapping[str, Raise] = field(default_factory=dict)
    ignored: frozenset[str] = frozenset()

    def make(self, error: _native.ApiError, subject: Mapping[str, Any]) -> Exception:
        """The exception for the service's ``error``."""
        return self.by_code.get(str(error.code), self.default).make(error, subject)


def _unable_to_retrieve(exception: type[Exception]) -> Raise:
    return Raise(exception, "Unable to retrieve result for job {job_id}: {message}")


def _storage_full(message: str) -> dict[str, Raise]:
    """``507 storage_full`` (the service's disk is full) and ``403 storage_quota`` (the
    caller stores as much as their quota allows) for a runtime call that writes:
    :class:`IBMApiError`, which carries ``status`` and ``code`` (the runtime family's
    other exceptions carry neither), so callers can tell them from a refused input. The
    IBMQ family's exceptions carry them already."""
    return dict.fromkeys((codes.STORAGE_FULL, codes.STORAGE_QUOTA), Raise(IBMApiError, message))


# -- the tables ---------------------------------------------------------------------------

_SERVICE = Errors(Raise(IBMQApiError))
_BACKEND = Errors(Raise(IBMQBackendApiError))
_IBMQ_JOB = Errors(Raise(IBMQJobApiError))
_RUNTIME_API = Errors(Raise(IBMApiError))
# qiskit-ibm-runtime's job methods name the job in an IBMRuntimeError.
_RUNTIME_JOB = Errors(Raise(IBMRuntimeError, "job {job_id}: {message}"))

_JOB: Mapping[Family, Errors] = {Family.IBMQ: _IBMQ_JOB, Family.RUNTIME: _RUNTIME_JOB}
_JOB_RESULTS: Mapping[Family, Errors] = {
    Family.IBMQ: Errors(
        _IBMQ_JOB.default,
        {codes.JOB_HAS_NO_RESULT: _unable_to_retrieve(IBMQJobInvalidStateError)},
    ),
    Family.RUNTIME: Errors(
        _RUNTIME_JOB.default,
        {
            codes.JOB_HAS_NO_RESULT: _unable_to_retrieve(RuntimeInvalidStateError),
            codes.JOB_NOT_FINISHED: _unable_to_retrieve(RuntimeInvalidStateError),
        },
    ),
}
_JOB_CANCEL: Mapping[Family, Errors] = {
    Family.IBMQ: Errors(
        _IBMQ_JOB.default,
        {
            codes.JOB_FINISHED: Raise(
                IBMQJobInvalidStateError, "Unable to cancel job {job_id}: {message}"
            )
        },
    ),
    Family.RUNTIME: Errors(
        Raise(IBMRuntimeError, "Failed to cancel job {job_id}: {message}"),
        {
            codes.JOB_FINISHED: Raise(
                RuntimeInvalidStateError, "Job {job_id} cannot be cancelled: {message}"
            ),
            **_storage_full("Failed to cancel job {job_id}: {message}"),
        },
    ),
}
# qiskit-ibm-runtime's delete_job: RuntimeJobNotFound for an unknown job, else
# IBMRuntimeError ("Failed to delete job").
_JOB_DELETE = Errors(
    Raise(IBMRuntimeError, "Failed to delete job {job_id}: {message}"),
    {codes.JOB_NOT_FOUND: Raise(RuntimeJobNotFound, "Job not found: {message}")},
)
_STREAM: Mapping[Family, Errors] = {Family.IBMQ: _SERVICE, Family.RUNTIME: _RUNTIME_API}
_JOB_TAGS: Mapping[Family, Errors] = {Family.IBMQ: _IBMQ_JOB, Family.RUNTIME: _RUNTIME_API}
_JOB_LOGS = Errors(Raise(IBMRuntimeError, "Failed to get job logs: {message}"))

_SUBMIT_JOB = Errors(
    _BACKEND.default,
    # The job manager waits for a free slot on this one rather than fail. A full store
    # (storage_full) is the default's IBMQBackendApiError, with status 507 and its code.
    {codes.ACTIVE_JOB_LIMIT: Raise(IBMQBackendJobLimitError)},
)
# Codes of a refused program submission that name a bad input.
_INPUT_ERRORS = (
    codes.INVALID_PARAMS,
    codes.INVALID_REQUEST,
    codes.UNKNOWN_IMAGE,
    codes.UNKNOWN_BACKEND,
)
_SUBMIT_PROGRAM = Errors(
    Raise(IBMRuntimeError, "job not submitted: {message}"),
    {
        codes.UNKNOWN_PROGRAM: Raise(RuntimeProgramNotFound),
        **dict.fromkeys(_INPUT_ERRORS, Raise(IBMInputValueError)),
        **_storage_full("job not submitted: {message}"),
        # Too many of the caller's submissions being checked at once, still so after the
        # native client's retries: IBMApiError carries the status and code to tell it by.
        codes.CHECK_LIMIT: Raise(IBMApiError, "job not submitted: {message}"),
    },
)

_SESSION = Errors(
    Raise(IBMRuntimeError, "session {session_id}: {message}"),
    {
        **dict.fromkeys((codes.INVALID_REQUEST, codes.UNKNOWN_BACKEND), Raise(IBMInputValueError)),
        **_storage_full("session {session_id}: {message}"),
    },
)
# Closing a session that has already ended (closed, cancelled, expired) does nothing.
_SESSION_CLOSE = Errors(
    _SESSION.default,
    _storage_full("session {session_id}: {message}"),
    ignored=frozenset({codes.SESSION_CLOSED}),
)


def _json(raw: bytes) -> Any:
    return orjson.loads(raw) if raw else None


#: What ``connect(verify=...)`` takes: check against the platform's CAs, a CA bundle, or not.
Verify = bool | str | os.PathLike[str]


def tls_options(verify: Verify) -> dict[str, Any]:
    """The native client's TLS keywords for ``verify``: ``True`` trusts the platform's CA
    certificates (``SSL_CERT_FILE`` if set), or the PEM bundle ``QDISPATCH_CA_BUNDLE``
    names; a path trusts that PEM bundle alone; ``False`` checks nothing and warns
    (:class:`InsecureConnectionWarning`)."""
    if verify is False:
        warnings.warn(
            "verify=False: the service's TLS certificate is not checked; anyone on the "
            "network path can read and change tokens, circuits and results",
            InsecureConnectionWarning,
            stacklevel=5,  # tls_options <- ServiceApi <- QDispatchService <- connect() <- caller
        )
        return {"verify": False, "ca_bundle": None}
    if verify is True:
        return {"verify": True, "ca_bundle": os.environ.get("QDISPATCH_CA_BUNDLE") or None}
    return {"verify": True, "ca_bundle": os.fspath(verify)}


def _service_gone(outcome: object) -> bool:
    """Whether a call's error says the local service is not the one we knew: it could
    not be reached, or refused our token (a restarted service revokes the old one)."""
    return isinstance(outcome, _native.ApiError) and (
        outcome.status == 401 or str(outcome.code) == codes.CONNECTION_FAILED
    )


class ServiceApi:
    """The calls of one job service, through one native client.

    For the local service (``local=True``), the client survives the service: when a call
    cannot reach it (``connection_failed``: killed, OOM, stopped when idle) or is refused
    with 401 (it restarted and revoked our token), the service is found again or
    restarted through :func:`~qdispatch.local.find_or_start` (under the store's lock, so
    many clients restart one service), the native client is replaced by one for its new
    URL and token, every watched job is watched again on the new event stream, and the
    call is retried once. Waits on the stream check every few seconds that the service
    is still there. The store keeps the jobs; the restarted service requeues the ones the
    dead one was running.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        local: bool = False,
        timeout: float = 30.0,
        verify: Verify = True,
    ):
        self._local = local
        self._token = token
        self._data_dir = default_data_dir() if local else None
        self._watched: set[str] = set()  # to watch again on a restarted service's stream
        self._timeout = timeout
        self._lock = threading.Lock()
        self._tls = tls_options(verify)
        try:
            self._client = self._new_client(url, token)
        except _native.ApiError as exc:  # an unreadable CA bundle
            raise _SERVICE.make(exc, {}) from exc

    def _new_client(self, url: str, token: str) -> _native.Client:
        return _native.Client(url, token, timeout=self._timeout, **self._tls)

    def __repr__(self) -> str:
        return f"<ServiceApi {self.url}>"

    @property
    def url(self) -> str:
        """The service's base URL."""
        return str(self._client.url)

    @property
    def client(self) -> _native.Client:
        """The native client (HTTP and stream) every call goes through now."""
        return self._client

    def close(self) -> None:
        """Close the stream and the connections."""
        self._client.close()

    # -- the plumbing -------------------------------------------------------------------------

    def _revive(self, client: _native.Client) -> bool:
        """Move to the local service as it is now, if it is not the one ``client`` talks
        to: find it, or start it if it is gone. Answers whether calls should be retried
        (``False``: the service is the same, or none could be had)."""
        with self._lock:
            if self._client is not client:
                return True  # another thread moved already
            try:
                found = find_or_start(self._data_dir, detached=True)
            except (LocalServiceError, OSError) as exc:
                log.warning("the local qdispatch service is gone; no restart: %s", exc)
                return False
            if found.url == str(client.url) and found.token == self._token:
                return False
            log.warning("the local qdispatch service restarted: now %s", found.url)
            fresh = self._new_client(found.url, found.token)
            if self._watched:
                fresh.watch(sorted(self._watched.copy()))
            self._client, self._token = fresh, found.token
        client.close()
        return True

    def _with_live_service(self, call: Callable[[_native.Client], T]) -> T:
        client = self._client
        try:
            return call(client)
        except _native.ApiError as exc:
            if not self._local or not _service_gone(exc) or not self._revive(client):
                raise
            return call(self._client)

    def _wait(
        self,
        wait: Callable[[_native.Client, float | None], T],
        timeout: float | None,
        family: Family,
    ) -> T:
        """``wait(client, timeout)`` on the stream; for the local service, in slices, moving
        to a restarted service when the stream is down and the service gone."""
        if not self._local:
            return self._stream_call(lambda: wait(self._client, timeout), family)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            client = self._client
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = _LOCAL_CHECK_SECONDS if left is None else min(_LOCAL_CHECK_SECONDS, left)
            try:
                found = wait(client, step)
            except _native.ApiError as exc:
                if self._client is client:
                    raise _STREAM[family].make(exc, {}) from exc
                continue  # the client was replaced (and closed) while we waited on it
            if found or (left is not None and left <= step):
                return found
            if not client.stream_connected():
                self._revive(client)

    def _request(
        self,
        method: str,
        path: str,
        errors: Errors,
        body: bytes | None = None,
        *,
        query: Sequence[tuple[str, str]] | None = None,
        **subject: Any,
    ) -> bytes | None:
        """One call returning the raw body; a service error becomes what ``errors`` says
        (``subject`` fills in its message); ``None`` for an ignored one."""
        try:
            return self._with_live_service(
                lambda c: c.request(method, path, body, query=list(query or []))
            )
        except _native.ApiError as exc:
            if str(exc.code) in errors.ignored:
                return None
            raise errors.make(exc, subject) from exc

    def _raw(
        self,
        method: str,
        path: str,
        errors: Errors,
        body: bytes | None = None,
        *,
        query: Sequence[tuple[str, str]] | None = None,
        **subject: Any,
    ) -> bytes:
        raw = self._request(method, path, errors, body, query=query, **subject)
        assert raw is not None, "only a call with ignored codes answers None"
        return raw

    def _call(
        self,
        method: str,
        path: str,
        errors: Errors,
        body: Any = None,
        *,
        query: Sequence[tuple[str, str]] | None = None,
        **subject: Any,
    ) -> Any:
        data = orjson.dumps(body) if body is not None else None
        return _json(self._raw(method, path, errors, data, query=query, **subject))

    def raw_call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        query: Sequence[tuple[str, str]] | None = None,
        error: Callable[[str, int, str], E] | None = None,
    ) -> bytes:
        """Any call, returning the raw (decompressed) body; a service error becomes
        ``error(message, status, code)`` (default :class:`IBMQApiError`)."""
        make: Callable[[str, int, str], Exception] = error or IBMQApiError
        try:
            return self._with_live_service(
                lambda c: c.request(method, path, body, query=list(query or []))
            )
        except _native.ApiError as exc:
            raise make(str(exc.message), int(exc.status), str(exc.code)) from exc

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        query: Sequence[tuple[str, str]] | None = None,
        error: Callable[[str, int, str], E] | None = None,
    ) -> Any:
        """Any JSON call, as :meth:`raw_call`."""
        return _json(self.raw_call(method, path, body, query=query, error=error))

    # -- the service ------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """``GET /info``: the service's version and limits."""
        info: dict[str, Any] = self._call("GET", "/info", _SERVICE)
        return info

    def programs(self) -> list[dict[str, Any]]:
        """``GET /programs``: the programs the service runs."""
        programs: list[dict[str, Any]] = self._call("GET", "/programs", _SERVICE)["programs"]
        return programs

    # -- backends ---------------------------------------------------------------------------

    def backends(self) -> list[dict[str, Any]]:
        """``GET /backends``: the service's backends (``name`` and a summary each)."""
        backends: list[dict[str, Any]] = self._call("GET", "/backends", _BACKEND)["backends"]
        return backends

    def backend_configuration(self, name: str) -> dict[str, Any]:
        """``GET /backends/{name}/configuration``."""
        config: dict[str, Any] = self._call("GET", f"/backends/{name}/configuration", _BACKEND)
        return config

    def backend_properties(self, name: str, when: datetime | None = None) -> dict[str, Any] | None:
        """``GET /backends/{name}/properties``: the calibration now, or at ``when``
        (``None`` for an ideal simulator)."""
        query = [("datetime", utc_iso(when))] if when is not None else None
        properties: dict[str, Any] | None = self._call(
            "GET", f"/backends/{name}/properties", _BACKEND, query=query
        )
        return properties

    def backend_status(self, name: str) -> dict[str, Any]:
        """``GET /backends/{name}/status``."""
        status: dict[str, Any] = self._call("GET", f"/backends/{name}/status", _BACKEND)
        return status

    # -- submitting ---------------------------------------------------------------------------

    def submit_job(self, envelope: bytes, qobj: bytes) -> dict[str, Any]:
        """``POST /jobs`` with a Qobj spliced into ``envelope``; answers the new job.

        Raises:
            IBMQBackendJobLimitError: The user's active-job limit is reached.
            IBMQBackendApiError: The service refused the job for another reason.
        """
        key = uuid.uuid4().hex  # one key for every try: a restarted service makes one job
        try:
            raw = self._with_live_service(lambda c: c.submit(envelope, qobj, idempotency_key=key))
        except _native.ApiError as exc:
            raise _SUBMIT_JOB.make(exc, {}) from exc
        job: dict[str, Any] = orjson.loads(raw)
        return job

    def submit_jobs(
        self, envelopes: list[bytes], qobjs: list[bytes]
    ) -> list[dict[str, Any] | Exception]:
        """Many ``POST /jobs`` at once (concurrent, the GIL released): per chunk, its new
        job or the :class:`IBMQBackendApiError` it was refused with (not raised). A chunk
        over the active-job limit waits for a job to finish.

        For the local service, the chunks that could not reach it (or were refused 401)
        are submitted once more to the service as found or restarted then, with the same
        idempotency keys: a job the dead service stored without answering is answered by
        the next one (same store), never created twice."""
        keys = [uuid.uuid4().hex for _ in envelopes]
        client = self._client
        outcomes: list[bytes | _native.ApiError] = client.submit_many(
            envelopes, qobjs, idempotency_keys=keys
        )
        lost = [i for i, outcome in enumerate(outcomes) if _service_gone(outcome)]
        if self._local and lost and self._revive(client):
            again = self._client.submit_many(
                [envelopes[i] for i in lost],
                [qobjs[i] for i in lost],
                idempotency_keys=[keys[i] for i in lost],
            )
            for i, outcome in zip(lost, again, strict=True):
                outcomes[i] = outcome
        return [
            orjson.loads(outcome) if isinstance(outcome, bytes) else _BACKEND.make(outcome, {})
            for outcome in outcomes
        ]

    def submit_program(self, body: bytes) -> dict[str, Any]:
        """``POST /jobs`` for a program job; answers the new job.

        Raises:
            RuntimeProgramNotFound: The service has no such program.
            IBMInputValueError: An input, the image or the backend cannot be used.
            IBMRuntimeError: The service refused the job for another reason.
        """
        key = uuid.uuid4().hex  # one key for every retry: the service makes one job
        try:
            raw = self._with_live_service(
                lambda c: c.request(
                    "POST", "/jobs", body, idempotency_key=key, gzip=len(body) > _GZIP_ABOVE
                )
            )
        except _native.ApiError as exc:
            raise _SUBMIT_PROGRAM.make(exc, {}) from exc
        job: dict[str, Any] = orjson.loads(raw)
        return job

    # -- jobs ---------------------------------------------------------------------------------

    def jobs(
        self,
        *,
        limit: int | None = None,
        skip: int | None = None,
        descending: bool | None = None,
        backend_name: str | None = None,
        statuses: Sequence[str] = (),
        name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        tags: Sequence[str] = (),
        tags_operator: str | None = None,
        program_id: str | None = None,
        session_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /jobs``: one page of the jobs matching the filters given (the service's
        defaults for the others)."""
        query: list[tuple[str, str]] = []
        if descending is not None:
            query.append(("descending", str(descending).lower()))
        if backend_name:
            query.append(("backend", backend_name))
        query += [("status", status) for status in statuses]
        if name:
            query.append(("name", name))
        if created_after:
            query.append(("created_after", utc_iso(created_after)))
        if created_before:
            query.append(("created_before", utc_iso(created_before)))
        query += [("tags", tag) for tag in tags]
        if tags_operator is not None:
            query.append(("tags_operator", tags_operator.upper()))
        if program_id:
            query.append(("program_id", program_id))
        if session_id:
            query.append(("session_id", session_id))
        if limit is not None:
            query.append(("limit", str(limit)))
        if skip is not None:
            query.append(("skip", str(skip)))
        jobs: list[dict[str, Any]] = self._call("GET", "/jobs", _BACKEND, query=query)["jobs"]
        return jobs

    def job_statuses(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``POST /jobs:status``: the status of each of ``job_ids`` the service knows."""
        ids = list(job_ids)
        statuses: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), MAX_BULK_IDS):  # the service takes so many a call
            body = {"ids": ids[start : start + MAX_BULK_IDS]}
            statuses.update(self._call("POST", "/jobs:status", _SERVICE, body)["statuses"])
        return statuses

    def job(self, job_id: str, family: Family) -> dict[str, Any]:
        """``GET /jobs/{id}``: the job's record."""
        info: dict[str, Any] = self._call("GET", f"/jobs/{job_id}", _JOB[family], job_id=job_id)
        return info

    def job_results(self, job_id: str, family: Family) -> bytes:
        """The result's JSON: the one the event stream brought, if it did (a small result
        rides the job's final events, once: docs/service.md), else ``GET
        /jobs/{id}/results``.

        Raises:
            IBMQJobInvalidStateError, RuntimeInvalidStateError: The job has no result (it
                failed without one, or has not finished).
        """
        pushed = self._client.take_result(job_id, _RESULT_FOLLOWS_SECONDS)
        if pushed is not None:
            return pushed
        return self._raw("GET", f"/jobs/{job_id}/results", _JOB_RESULTS[family], job_id=job_id)

    def cancel_job(self, job_id: str, family: Family) -> dict[str, Any]:
        """``POST /jobs/{id}/cancel``; answers the job's record.

        Raises:
            IBMQJobInvalidStateError, RuntimeInvalidStateError: The job has finished.
        """
        path = f"/jobs/{job_id}/cancel"
        info: dict[str, Any] = self._call("POST", path, _JOB_CANCEL[family], job_id=job_id)
        return info

    def delete_job(self, job_id: str) -> None:
        """``DELETE /jobs/{id}``: a finished job and everything stored with it.

        Raises:
            RuntimeJobNotFound: No such job (or not one the caller sees).
            IBMRuntimeError: The job is not finished, or is shared with the caller
                read-only.
        """
        self._request("DELETE", f"/jobs/{job_id}", _JOB_DELETE, None, job_id=job_id)

    def update_job_tags(self, job_id: str, tags: list[str], family: Family) -> dict[str, Any]:
        """``PUT /jobs/{id}/tags``; answers the job's record."""
        path = f"/jobs/{job_id}/tags"
        errors = _JOB_TAGS[family]
        info: dict[str, Any] = self._call("PUT", path, errors, {"tags": tags}, job_id=job_id)
        return info

    def update_job_name(self, job_id: str, name: str) -> dict[str, Any]:
        """``PUT /jobs/{id}/name`` (an IBMQJob's); answers the job's record."""
        path = f"/jobs/{job_id}/name"
        info: dict[str, Any] = self._call("PUT", path, _IBMQ_JOB, {"name": name}, job_id=job_id)
        return info

    def job_qobj(self, job_id: str) -> bytes:
        """``GET /jobs/{id}/qobj`` (an IBMQJob's): the submitted Qobj's JSON."""
        return self._raw("GET", f"/jobs/{job_id}/qobj", _IBMQ_JOB, job_id=job_id)

    def job_properties(self, job_id: str) -> dict[str, Any] | None:
        """``GET /jobs/{id}/properties`` (an IBMQJob's): the backend's calibration when
        the job was submitted, ``None`` for an ideal simulator."""
        properties: dict[str, Any] | None = self._call(
            "GET", f"/jobs/{job_id}/properties", _IBMQ_JOB, job_id=job_id
        )
        return properties

    def job_inputs(self, job_id: str) -> bytes:
        """``GET /jobs/{id}/inputs`` (a RuntimeJob's): the encoded inputs."""
        return self._raw("GET", f"/jobs/{job_id}/inputs", _RUNTIME_API, job_id=job_id)

    def interim_results(self, job_id: str) -> list[Any]:
        """``GET /jobs/{id}/interim_results`` (a RuntimeJob's), oldest first."""
        path = f"/jobs/{job_id}/interim_results"
        results: list[Any] = self._call("GET", path, _RUNTIME_JOB, job_id=job_id)
        return results

    def job_events(self, job_id: str, since: int) -> list[dict[str, Any]]:
        """``GET /jobs/{id}/events`` (a RuntimeJob's): the events after seq ``since``."""
        query = [("since", str(since))]
        events: list[dict[str, Any]] = self._call(
            "GET", f"/jobs/{job_id}/events", _RUNTIME_API, query=query, job_id=job_id
        )["events"]
        return events

    def job_logs(self, job_id: str) -> str:
        """``GET /jobs/{id}/logs`` (a RuntimeJob's)."""
        return self._raw("GET", f"/jobs/{job_id}/logs", _JOB_LOGS, job_id=job_id).decode()

    def job_metrics(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{id}/metrics`` (a RuntimeJob's)."""
        path = f"/jobs/{job_id}/metrics"
        metrics: dict[str, Any] = self._call("GET", path, _RUNTIME_JOB, job_id=job_id)
        return metrics

    # -- sessions -----------------------------------------------------------------------------

    def create_session(
        self, backend_name: str | None, mode: str, max_time: float | None
    ) -> dict[str, Any]:
        """``POST /sessions``; answers the session's record."""
        body = {"backend": backend_name, "mode": mode, "max_time": max_time}
        session: dict[str, Any] = self._call("POST", "/sessions", _SESSION, body, session_id="")
        return session

    def sessions(
        self,
        *,
        state: str | None = None,
        backend_name: str | None = None,
        limit: int | None = None,
        skip: int | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /sessions``: the caller's sessions (an operator's: everyone's), newest
        first."""
        query = [("state", state)] if state else []
        query += [("backend", backend_name)] if backend_name else []
        query += [("limit", str(limit))] if limit is not None else []
        query += [("skip", str(skip))] if skip is not None else []
        path = "/sessions"
        found: list[dict[str, Any]] = self._call("GET", path, _SESSION, query=query, session_id="")[
            "sessions"
        ]
        return found

    def session(self, session_id: str | None) -> dict[str, Any]:
        """``GET /sessions/{id}``."""
        path = f"/sessions/{session_id}"
        found: dict[str, Any] = self._call("GET", path, _SESSION, session_id=session_id or "")
        return found

    def close_session(self, session_id: str) -> dict[str, Any] | None:
        """``PATCH /sessions/{id}`` to take no new jobs; answers the session's record, or
        ``None`` if it had already ended."""
        body = orjson.dumps({"accepting_jobs": False})
        path = f"/sessions/{session_id}"
        raw = self._request("PATCH", path, _SESSION_CLOSE, body, session_id=session_id)
        return None if raw is None else _json(raw)

    def cancel_session(self, session_id: str | None) -> dict[str, Any]:
        """``DELETE /sessions/{id}``: no new jobs, queued ones cancelled."""
        path = f"/sessions/{session_id}"
        found: dict[str, Any] = self._call("DELETE", path, _SESSION, session_id=session_id or "")
        return found

    # -- the stream ---------------------------------------------------------------------------

    def _stream_call(self, call: Callable[[], T], family: Family) -> T:
        # The stream fails for good only when TLS refused the service (``tls_error``) or
        # the service refused the token (``unauthorized``, close code 4401): that
        # surfaces as the family's documented exception, like any failed call.
        try:
            return call()
        except _native.ApiError as exc:
            raise _STREAM[family].make(exc, {}) from exc

    def watch(self, job_ids: list[str], family: Family = Family.IBMQ) -> None:
        """Follow ``job_ids`` on the event stream (does not block)."""
        if self._local:
            self._watched.update(job_ids)
        self._stream_call(lambda: self._client.watch(job_ids), family)

    def last_status(self, job_id: str) -> str | None:
        """The latest status pushed for ``job_id``; ``None`` if none yet."""
        return self._client.last_status(job_id)

    def wait_final(
        self, job_id: str, timeout: float | None = None, family: Family = Family.IBMQ
    ) -> str | None:
        """Block until ``job_id`` is final and answer its status; ``None`` on timeout."""
        return self._wait(lambda c, t: c.wait_final(job_id, t), timeout, family)

    def wait_any_final(
        self, job_ids: list[str], timeout: float | None = None, family: Family = Family.IBMQ
    ) -> list[str]:
        """Block until one of ``job_ids`` is final; answer all that are."""
        return self._wait(lambda c, t: c.wait_any_final(job_ids, t), timeout, family)

    def next_events(self, timeout: float) -> list[tuple[str, int, str, bytes | None]]:
        """The stream's queued events ``(job_id, seq, type, data)``, waiting up to
        ``timeout`` for one."""
        return self._client.next_events(timeout)

    def stream_connected(self) -> bool:
        """Whether the event WebSocket is open now."""
        return self._client.stream_connected()

    def stream_polling(self) -> bool:
        """Whether statuses are being polled because no WebSocket could be opened lately."""
        return self._client.stream_polling()
