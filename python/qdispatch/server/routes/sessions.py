"""``/sessions``: open, list, read, close and cancel a user's sessions (docs/runtime.md).

The rules (privacy, deadlines, expiry, which jobs may join) are ``server/sessions.py``'s;
this module is their HTTP form.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ... import codes as E
from ...constants import (
    CANCELLED,
    DONE,
    ERROR,
    QUEUED,
    RUNNING,
    SESSION_CANCELLED,
    SESSION_CLOSED,
    SESSION_OPEN,
)
from ..deps import Svc, Who, json_response, unknown_backend
from ..errors import ServiceError
from ..service import Service
from ..store import Session

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
        description="dedicated: its queued jobs go ahead of others on a share of the "
        "workers; batch: grouping only.",
    )
    max_time: Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)] | None = Field(
        None,
        description="Seconds from the start of its first job until it expires; null: the "
        "service's default. At most the service's ceiling (GET /info).",
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
        "closed_reason": session.closed_reason,
        "jobs": {name: counts.get(status, 0) for status, name in _COUNTED.items()},
        "usage_seconds": usage,
    }


def _view_one(svc: Service, session: Session) -> dict[str, Any]:
    counts = svc.store.session_job_counts([session.id])[session.id]
    return view(session, counts, svc.store.session_usage(session.id))


@router.post("/sessions", status_code=201)
async def create_session(body: SessionCreate, svc: Svc, who: Who) -> Response:
    """Open a session on a backend."""
    if body.backend not in svc.catalog:
        raise unknown_backend(svc, body.backend, 400)
    config = svc.config
    max_time = config.session_max_time if body.max_time is None else body.max_time
    if max_time > config.session_max_time_ceiling:
        raise ServiceError(
            400,
            E.INVALID_REQUEST,
            f"max_time {max_time:g} s is over this service's ceiling of "
            f"{config.session_max_time_ceiling:g} s",
            max_time_ceiling=config.session_max_time_ceiling,
        )
    session = svc.store.create_session(who.user, body.backend, body.mode, max_time)
    return json_response(view(session, {}), 201)


@router.get("/sessions")
async def list_sessions(
    svc: Svc,
    who: Who,
    state: State | None = None,
    backend: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    skip: Annotated[int, Query(ge=0)] = 0,
    user: Annotated[str | None, Query(description="an operator: only this user's")] = None,
) -> Response:
    """The caller's sessions (an operator: every user's, or ``user``'s), newest first."""
    svc.sessions.expire_due()  # so that the state filter sees deadlines that just ran out
    owner = user if who.operator else who.user
    sessions, total = svc.store.list_sessions(owner, state, backend, limit, skip)
    counts = svc.store.session_job_counts([s.id for s in sessions])
    listed = [view(s, counts[s.id], svc.store.session_usage(s.id)) for s in sessions]
    return json_response({"sessions": listed, "count": total})


@router.get("/sessions/{session_id}")
async def get_session(session_id: str, svc: Svc, who: Who) -> Response:
    """One of the caller's sessions."""
    return json_response(
        _view_one(svc, svc.sessions.own(who.user, session_id, operator=who.operator))
    )


@router.patch("/sessions/{session_id}")
async def update_session(session_id: str, body: SessionUpdate, svc: Svc, who: Who) -> Response:
    """``{"accepting_jobs": false}`` closes the session: it takes no more jobs, and those
    queued still run. A session that is not open cannot be closed or reopened (409)."""
    session = svc.sessions.own(who.user, session_id, operator=who.operator)
    if session.state != SESSION_OPEN:
        what = "reopened" if body.accepting_jobs else "closed"
        raise ServiceError(
            409,
            E.SESSION_CLOSED,
            f"session '{session_id}' is already {session.state} and cannot be {what}",
        )
    if not body.accepting_jobs:
        svc.store.end_session(session_id, SESSION_CLOSED)
        session = svc.sessions.own(who.user, session_id, operator=who.operator)
    return json_response(_view_one(svc, session))


@router.delete("/sessions/{session_id}")
async def cancel_session(session_id: str, svc: Svc, who: Who) -> Response:
    """Cancel the session: it is closed and its queued jobs are cancelled; running jobs
    finish. 409 if it was already cancelled or expired."""
    session = svc.sessions.own(who.user, session_id, operator=who.operator)
    if session.ended:
        raise ServiceError(
            409,
            E.SESSION_CLOSED,
            f"session '{session_id}' is already {session.state} and cannot be cancelled",
        )
    svc.store.end_session(session_id, SESSION_CANCELLED)
    for job in svc.store.session_jobs(session_id, QUEUED):
        svc.scheduler.cancel(job)
    return json_response(
        _view_one(svc, svc.sessions.own(who.user, session_id, operator=who.operator))
    )
