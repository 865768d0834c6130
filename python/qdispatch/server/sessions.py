"""Sessions and batches: groups of one user's jobs on one backend (docs/runtime.md).

A session is ``open`` (it takes jobs), then ``closed`` (no new jobs; those queued still
run), ``cancelled`` (its queued jobs were cancelled) or ``expired`` (its ``max_time``,
counted from the start of its first job, ran out; its queued jobs failed). The service
closes an open session itself when it has been idle, with no job queued or running and
none submitted, for ``idle_timeout`` seconds (the runtime services' interactive timeout),
and records why in its ``closed_reason``. The jobs of a ``dedicated`` session go ahead of
other queued jobs on a share of the workers (scheduler.py); a ``batch`` only groups
jobs. Sessions are private to their owner: another user's session answers 404,
like one that does not exist.

This module holds the rules, not the HTTP routes (those are ``routes/sessions.py``):
:class:`Sessions` finds a user's session, says whether a job may join one, and expires
sessions. Deadlines are kept in the store only (the first job's start and
``max_time``), so a service that restarts expires what ran out while it was down before
it dispatches anything, and a background task checks the rest every ``DEADLINE_TICK``
seconds. The same task closes idle sessions; when a session became idle is kept in
memory only, so a restarted service gives every idle session its full timeout again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import overload

from .. import codes as E
from ..constants import ERROR, QUEUED, SESSION_CLOSED, SESSION_EXPIRED
from .errors import ServiceError
from .scheduler import Scheduler
from .store import Job, Session, Store

log = logging.getLogger(__name__)

DEADLINE_TICK = 0.5  # seconds between checks of session deadlines


def not_found(session_id: str) -> ServiceError:
    """The one answer for a session that does not exist *or* belongs to someone else."""
    return ServiceError(404, E.UNKNOWN_SESSION, f"session '{session_id}' not found")


class Sessions:
    """The sessions of a service's store: lookups, the check of a job that joins one,
    deadlines and expiry (which end queued jobs through the scheduler)."""

    def __init__(
        self, store: Store, scheduler: Scheduler, idle_timeout: float | None = None
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.idle_timeout = idle_timeout
        self._modes: dict[str, str] = {}
        self._idle_since: dict[str, float] = {}  # open session → when it was first seen idle

    def own(self, user: str, session_id: str, *, operator: bool = False) -> Session:
        """``user``'s session (any user's for an ``operator``), brought up to date with its
        deadline; else 404."""
        session = self.store.session(session_id)
        if session is None or (session.owner != user and not operator):
            raise not_found(session_id)
        if _past_deadline(session, time.time()):
            self.expire(session)
            session = self.store.session(session_id) or session
        return session

    @overload
    def check_job(self, user: str, session_id: str | None, backend: str) -> str: ...

    @overload
    def check_job(self, user: str, session_id: str | None, backend: str | None) -> str | None: ...

    def check_job(self, user: str, session_id: str | None, backend: str | None) -> str | None:
        """Check that ``user`` may submit a job into ``session_id`` and return its backend.

        No session: ``backend`` as given. Otherwise the session must be the user's (404
        ``unknown_session``), still take jobs (409 ``session_closed``) and be on
        ``backend`` when one is given (400 ``session_backend_mismatch``); a job without a
        backend takes the session's.
        """
        if session_id is None:
            return backend
        session = self.own(user, session_id)
        if not session.accepting_jobs:
            why = f" ({session.closed_reason})" if session.closed_reason else ""
            raise ServiceError(
                409,
                E.SESSION_CLOSED,
                f"session '{session_id}' is {session.state}{why} and accepts no more jobs",
            )
        # A job on its way in: the session is not idle, whatever the store says until the
        # job is stored.
        self._idle_since.pop(session_id, None)
        if backend is not None and backend != session.backend:
            raise ServiceError(
                400,
                E.SESSION_BACKEND_MISMATCH,
                f"session '{session_id}' runs on backend '{session.backend}', not on '{backend}'",
            )
        return session.backend

    def run_mode(self, job: Job) -> str:
        """``dedicated`` for a job of a dedicated session (it goes ahead of others),
        else ``fairshare``. A session's mode never changes, so it is cached."""
        if job.session_id is None:
            return "fairshare"
        mode = self._modes.get(job.session_id)
        if mode is None:
            mode = self.store.session_mode(job.session_id) or "none"
            self._modes[job.session_id] = mode
        return "dedicated" if mode == "dedicated" else "fairshare"

    def expire(self, session: Session) -> None:
        """``max_time`` has run out: the session takes no more jobs and its queued jobs
        fail with ``session_expired`` (running jobs finish)."""
        self.store.end_session(session.id, SESSION_EXPIRED)
        error = {
            "code": E.SESSION_EXPIRED,
            "message": f"session '{session.id}' reached its max_time of {session.max_time:g} s "
            "before this job could start",
        }
        for job in self.store.session_jobs(session.id, QUEUED):
            self.scheduler.end(job, ERROR, error)
        log.info("session %s expired after %g s", session.id, session.max_time)

    def expire_due(self) -> None:
        """Expire every session whose deadline has passed."""
        now = time.time()
        for session in self.store.sessions_with_deadline():
            if _past_deadline(session, now):
                self.expire(session)

    def close_idle(self) -> None:
        """Close every open session that has had no job queued or running, and none
        submitted, for ``idle_timeout`` seconds (counted from when this check first saw
        it idle)."""
        if not self.idle_timeout:
            return
        now = time.monotonic()
        idle = set(self.store.idle_sessions())
        for session_id in list(self._idle_since):
            if session_id not in idle:  # busy again, or ended
                del self._idle_since[session_id]
        for session_id in idle:
            since = self._idle_since.setdefault(session_id, now)
            if now - since >= self.idle_timeout:
                reason = f"idle: no job queued or running for {self.idle_timeout:g} s"
                self.store.end_session(session_id, SESSION_CLOSED, reason)
                del self._idle_since[session_id]
                log.info("session %s closed: %s", session_id, reason)

    def watch_deadlines(self) -> asyncio.Task[None]:
        """Expire the sessions that ran out while the service was down, then keep checking
        in the background. Call it before the scheduler starts dispatching, so that no
        job of an expired session starts; cancel the task on shutdown."""
        self.expire_due()
        return asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(DEADLINE_TICK)
            try:
                self.expire_due()
                self.close_idle()
            except Exception:  # one failed check must not end expiry for the service's lifetime
                log.exception("checking session deadlines failed")


def _past_deadline(session: Session, now: float) -> bool:
    deadline = session.deadline
    return deadline is not None and deadline <= now and not session.ended
