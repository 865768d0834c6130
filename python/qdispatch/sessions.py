"""``Session`` and ``Batch``: a group of jobs on one backend (docs/runtime.md).

While a session (``dedicated`` mode) is open, the service runs its queued jobs ahead of
every other job on its backend, so an iterative algorithm does not wait in the queue
between steps. A ``Batch`` groups jobs without that priority. Both are context managers:
leaving the ``with`` block closes them (no new jobs; queued ones still run).

    with Session(backend) as session:
        sampler = Sampler(mode=session)
        result = sampler.run([circuit]).result()
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .exceptions import IBMInputValueError, IBMRuntimeError
from .service import QDispatchService, connect

if TYPE_CHECKING:
    from .backend import QDispatchBackend
    from .runtime import ResultDecoder, RuntimeJob

_DURATION = re.compile(r"^\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?\s*$")


def parse_max_time(max_time: int | float | str | None) -> float | None:
    """``max_time`` in seconds: a number, or a string such as ``"1h 30m"`` or ``"45s"``."""
    if max_time is None:
        return None
    if isinstance(max_time, bool):
        raise IBMInputValueError(f"max_time must be seconds or a duration, got {max_time!r}")
    if isinstance(max_time, (int, float)):
        seconds = float(max_time)
    else:
        match = _DURATION.match(str(max_time))
        if not match or not any(match.groups()):
            raise IBMInputValueError(
                f"max_time {max_time!r} is not a duration such as 3600, '1h 30m' or '45s'"
            )
        hours, minutes, secs = (int(g or 0) for g in match.groups())
        seconds = float(hours * 3600 + minutes * 60 + secs)
    if seconds <= 0:
        raise IBMInputValueError(f"max_time must be positive, got {max_time!r}")
    return seconds


class Session:
    """A session on one backend: its jobs go ahead of other jobs on the backend while it
    is open (``dedicated`` mode)."""

    _mode = "dedicated"

    def __init__(
        self,
        backend: QDispatchBackend | str | None = None,
        max_time: int | float | str | None = None,
        *,
        service: QDispatchService | None = None,
        create_new: bool = True,
    ) -> None:
        """Open a session.

        Args:
            backend: The backend (or its name) the session's jobs run on; without one,
                the service's least busy backend.
            max_time: The most time the session may run, counted from the start of its
                first job: seconds, or a duration such as ``"1h 30m"``. When it is
                reached, the session's queued jobs fail. ``None``: the service's default
                (``session_max_time`` in ``service.info()``, 1 h unless configured); more
                than its ceiling (``session_max_time_ceiling``, 8 h) raises
                :class:`IBMInputValueError`. A session left idle (no job queued or
                running) for ``session_idle_timeout`` seconds is closed by the service.
            service: The service to use; by default the backend's, else
                ``qdispatch.connect()``.
            create_new: Open a new session on the service (``False`` is for
                :meth:`from_id`).
        """
        self._service = service or getattr(backend, "service", None) or connect()
        self._max_time = parse_max_time(max_time)
        name = getattr(backend, "name", backend)
        if name is not None and not isinstance(name, str):
            raise IBMInputValueError(f"backend must be a backend or its name, got {backend!r}")
        self._backend_name: str | None = name
        self._session_id: str | None = None
        self._details: dict[str, Any] = {}
        if create_new:
            if self._backend_name is None:
                self._backend_name = _least_busy(self._service)
            self._details = self._service.api.create_session(
                self._backend_name, self._mode, self._max_time
            )
            self._session_id = self._details["id"]

    @classmethod
    def from_id(cls, session_id: str, service: QDispatchService | None = None) -> Session:
        """The existing session ``session_id``."""
        session = cls(service=service or connect(), create_new=False)
        session._session_id = session_id
        session._details = session._service.api.session(session_id)
        session._backend_name = session._details["backend"]
        session._max_time = session._details.get("max_time")
        return session

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._session_id} on {self._backend_name}>"

    # -- attributes -----------------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        """The session's id."""
        return self._session_id

    @property
    def service(self) -> QDispatchService:
        """The service the session is on."""
        return self._service

    @property
    def mode(self) -> str:
        """``dedicated`` (a session) or ``batch``."""
        return self._mode

    def backend(self) -> str | None:
        """The name of the backend the session's jobs run on."""
        return self._backend_name

    # -- jobs -----------------------------------------------------------------------------

    def run(
        self,
        program_id: str,
        inputs: dict[str, Any],
        options: dict[str, Any] | None = None,
        callback: Callable[[str, Any], Any] | None = None,
        result_decoder: type[ResultDecoder] | Sequence[type[ResultDecoder]] | None = None,
    ) -> RuntimeJob:
        """Run a program in this session (``service.run`` with the session's id and
        backend)."""
        opts = dict(options or {})
        opts.setdefault("backend", self._backend_name)
        return self._service.run(
            program_id,
            inputs,
            opts,
            callback=callback,
            result_decoder=result_decoder,
            session_id=self._session_id,
        )

    # -- life cycle -----------------------------------------------------------------------

    def details(self) -> dict[str, Any]:
        """The session as the service knows it now: ``id``, ``backend``, ``mode``,
        ``max_time``, ``state``, ``accepting_jobs``, timestamps and job counts."""
        self._details = self._service.api.session(self._session_id)
        return dict(self._details)

    def status(self) -> str:
        """``Pending`` (no job started yet), ``In progress, accepting new jobs``,
        ``In progress, not accepting new jobs``, or ``Closed``."""
        details = self.details()
        state = details.get("state")
        jobs = details.get("jobs") or {}
        unfinished = int(jobs.get("queued", 0)) + int(jobs.get("running", 0))
        if state == "open":
            return "Pending" if not details.get("started") else "In progress, accepting new jobs"
        if state == "closed" and unfinished:
            return "In progress, not accepting new jobs"
        return "Closed"

    def usage(self) -> float:
        """Execution seconds used by the session's jobs so far."""
        return float(self.details().get("usage_seconds") or 0.0)

    def close(self) -> None:
        """Close the session: it takes no new jobs; those queued still run. Closing a
        session that has already ended does nothing."""
        if self._session_id is None:
            return
        details = self._service.api.close_session(self._session_id)
        if details is not None:  # None: it had already ended
            self._details = details

    def cancel(self) -> None:
        """Cancel the session: it takes no new jobs and its queued jobs are cancelled
        (running ones finish)."""
        self._details = self._service.api.cancel_session(self._session_id)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Batch(Session):
    """A group of jobs on one backend, without the priority of a dedicated session: the
    service runs them as it runs any job, in parallel where workers are free."""

    _mode = "batch"


def _least_busy(service: QDispatchService) -> str:
    backends = service.backends()
    if not backends:
        raise IBMRuntimeError("the service has no backends")
    return min(backends, key=lambda b: b.status().get("pending_jobs", 0)).name
