"""Sessions and batches: groups of one user's jobs on one backend (docs/runtime.md).

A session is ``open`` (it takes jobs), then ``closed`` (no new jobs; those queued still
run), ``cancelled`` (its queued jobs were cancelled) or ``expired`` (its ``max_time``,
counted from the start of its first job, ran out; its queued jobs failed). The jobs of a
``dedicated`` session go ahead of every other queued job (scheduler.py); a ``batch`` only
groups jobs. Sessions are private to their owner: another user's session answers 404,
like one that does not exist.

Deadlines are kept in the store only (the first job's start and ``max_time``), so a
service that restarts expires what ran out while it was down before it dispatches
anything, and a background task checks the rest every ``DEADLINE_TICK`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any, Literal, overload

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from .. import codes as E
from ..constants import (
    CANCELLED,
    DONE,
    ERROR,
    QUEUED,
    RUNNING,
    SESSION_CANCELLED,
    SESSION_CLOSED,
    SESSION_EXPIRED,
    SESSION_OPEN,
)
from .app import Caller, Service, Svc, Who, json_response
from .errors import ServiceError
from .store import Session

log = logging.getLogger(__name__)

DEADLINE_TICK = 0.5  # seconds between checks of session deadlines

# Job statuses as the session's ``jobs`` counts name them.
_COUNTED = {
    QUEUED: "queued",
    RUNNING: "running",
    DONE: "done",
    ERROR: "error",
    CANCELLED: "cancelled",
}

State = Literal["open", "closed", "cancelled", "expired"]


class SessionCreate(BaseModel):
    """Body of ``POST /sessions``."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(description="The backend every job of the session runs on.")
    mode: Literal["dedicated", "batch"] = Field(
        "dedicated",
        description="dedicated: its queued jobs go ahead of all others; batch: grouping only.",
    )
    max_time: Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)] | None = Field(
        None, description="Seconds from the start of its first job until it expires."
    )


class SessionUpdate(BaseModel):
    """Body of ``PATCH /sessions/{id}``: ``{"accepting_jobs": false}`` closes the session."""

    model_config = ConfigDict(extra="forbid")

    accepting_jobs: bool = Field(strict=True)


router = APIRouter(tags=["sessions"])


def view(session: Session, counts: dict[str, int], usage: float = 0.0) -> dict[str, Any]:
    """The JSON form of a session, with its jobs counted by status and the execution
    seconds they have used."""
    return {
        "id": session.id,
        "backend": session.backend,
        "mode": session.mode,
        "max_time": session.max_time,
        "state": session.state,
        "accepting_jobs": session.accepting_jobs,
        "owner": session.owner,
        "created": session.created,
        "started": session.started,
        "closed": session.closed,
        "jobs": {name: counts.get(status, 0) for status, name in _COUNTED.items()},
        "usage_seconds": usage,
    }


def _view_one(service: Service, session: Session) -> dict[str, Any]:
    counts = service.store.session_job_counts([session.id])[session.id]
    return view(session, counts, service.store.session_usage(session.id))


def _not_found(session_id: str) -> ServiceError:
    """The one answer for a session that does not exist *or* belongs to someone else."""
    return ServiceError(404, E.UNKNOWN_SESSION, f"session '{session_id}' not found")


def own_session(service: Service, caller: Caller, session_id: str) -> Session:
    """The caller's session, brought up to date with its deadline; else 404."""
    session = service.store.session(session_id)
    if session is None or session.owner != caller.user:
        raise _not_found(session_id)
    if _past_deadline(session, time.time()):
        expire(service, session)
        session = service.store.session(session_id) or session
    return session


@overload
def check_session(
    service: Service, caller: Caller, session_id: str | None, backend: str
) -> str: ...


@overload
def check_session(
    service: Service, caller: Caller, session_id: str | None, backend: str | None
) -> str | None: ...


def check_session(
    service: Service, caller: Caller, session_id: str | None, backend: str | None
) -> str | None:
    """Check that a job may be submitted into ``session_id`` and return its backend.

    No session: ``backend`` as given. Otherwise the session must be the caller's (404
    ``unknown_session``), still take jobs (409 ``session_closed``) and be on ``backend``
    when one is given (400 ``session_backend_mismatch``); a job without a backend takes
    the session's.
    """
    if session_id is None:
        return backend
    session = own_session(service, caller, session_id)
    if not session.accepting_jobs:
        raise ServiceError(
            409,
            E.SESSION_CLOSED,
            f"session '{session_id}' is {session.state} and accepts no more jobs",
        )
    if backend is not None and backend != session.backend:
        raise ServiceError(
            400,
            E.SESSION_BACKEND_MISMATCH,
            f"session '{session_id}' runs on backend '{session.backend}', not on '{backend}'",
        )
    return session.backend


@router.post("/sessions", status_code=201)
async def create_session(body: SessionCreate, svc: Svc, who: Who) -> Response:
    """Open a session on a backend."""
    if body.backend not in svc.catalog:
        raise ServiceError(
            400,
            E.UNKNOWN_BACKEND,
            f"unknown backend '{body.backend}' (available: {', '.join(sorted(svc.catalog))})",
        )
    session = svc.store.create_session(who.user, body.backend, body.mode, body.max_time)
    return json_response(view(session, {}), 201)


@router.get("/sessions")
async def list_sessions(
    svc: Svc,
    who: Who,
    state: State | None = None,
    backend: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    skip: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """The caller's sessions, newest first."""
    expire_due(svc)  # so that the state filter sees deadlines that just ran out
    sessions, total = svc.store.list_sessions(who.user, state, backend, limit, skip)
    counts = svc.store.session_job_counts([s.id for s in sessions])
    listed = [view(s, counts[s.id], svc.store.session_usage(s.id)) for s in sessions]
    return json_response({"sessions": listed, "count": total})


@router.get("/sessions/{session_id}")
async def get_session(session_id: str, svc: Svc, who: Who) -> Response:
    """One of the caller's sessions."""
    return json_response(_view_one(svc, own_session(svc, who, session_id)))


@router.patch("/sessions/{session_id}")
async def update_session(session_id: str, body: SessionUpdate, svc: Svc, who: Who) -> Response:
    """``{"accepting_jobs": false}`` closes the session: it takes no more jobs, and those
    queued still run. A session that is not open cannot be closed or reopened (409)."""
    session = own_session(svc, who, session_id)
    if session.state != SESSION_OPEN:
        what = "reopened" if body.accepting_jobs else "closed"
        raise ServiceError(
            409,
            E.SESSION_CLOSED,
            f"session '{session_id}' is already {session.state} and cannot be {what}",
        )
    if not body.accepting_jobs:
        svc.store.end_session(session_id, SESSION_CLOSED)
        session = own_session(svc, who, session_id)
    return json_response(_view_one(svc, session))


@router.delete("/sessions/{session_id}")
async def cancel_session(session_id: str, svc: Svc, who: Who) -> Response:
    """Cancel the session: it is closed and its queued jobs are cancelled; running jobs
    finish. 409 if it was already cancelled or expired."""
    session = own_session(svc, who, session_id)
    if session.ended:
        raise ServiceError(
            409,
            E.SESSION_CLOSED,
            f"session '{session_id}' is already {session.state} and cannot be cancelled",
        )
    svc.store.end_session(session_id, SESSION_CANCELLED)
    for job in svc.store.session_jobs(session_id, QUEUED):
        svc.scheduler.cancel(job)
    return json_response(_view_one(svc, own_session(svc, who, session_id)))


def _past_deadline(session: Session, now: float) -> bool:
    deadline = session.deadline
    return deadline is not None and deadline <= now and not session.ended


def expire(service: Service, session: Session) -> None:
    """``max_time`` has run out: the session takes no more jobs and its queued jobs fail
    with ``session_expired`` (running jobs finish)."""
    service.store.end_session(session.id, SESSION_EXPIRED)
    error = {
        "code": E.SESSION_EXPIRED,
        "message": f"session '{session.id}' reached its max_time of {session.max_time:g} s "
        "before this job could start",
    }
    for job in service.store.session_jobs(session.id, QUEUED):
        service.scheduler.end(job, ERROR, error)
    log.info("session %s expired after %g s", session.id, session.max_time)


def expire_due(service: Service) -> None:
    """Expire every session whose deadline has passed."""
    now = time.time()
    for session in service.store.sessions_with_deadline():
        if _past_deadline(session, now):
            expire(service, session)


def watch_deadlines(service: Service) -> asyncio.Task[None]:
    """Expire the sessions that ran out while the service was down, then keep checking in
    the background. Call it before the scheduler starts dispatching, so that no job of
    an expired session starts; cancel the task on shutdown."""
    expire_due(service)
    return asyncio.get_running_loop().create_task(_watch(service))


async def _watch(service: Service) -> None:
    while True:
        await asyncio.sleep(DEADLINE_TICK)
        try:
            expire_due(service)
        except Exception:  # one failed check must not end expiry for the service's lifetime
            log.exception("checking session deadlines failed")
