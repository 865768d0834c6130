"""What every route shares: how it gets the :class:`~qdispatch.server.service.Service`
and its authenticated :class:`Caller` (the ``Svc`` and ``Who`` dependencies), the checks
of who may see or change a job, and the JSON response the service answers with.

Routes (``routes/``) import this module and ``service.py``; nothing here knows a route.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response
from starlette.requests import HTTPConnection

from .. import codes as E
from .errors import ServiceError, not_found
from .service import Service
from .store import Job
from .ui.logins import Login, Logins


@dataclass(frozen=True)
class Caller:
    """The authenticated user of a request; an ``operator`` sees and cancels every
    user's jobs and sessions and pauses backends."""

    user: str
    project: str | None
    operator: bool = False


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response serialized by orjson."""
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer …`` header (prefix in any case)."""
    return authorization[7:].strip() if authorization.lower().startswith("bearer ") else None


def authenticate(service: Service, token: str | None) -> Caller:
    """The user a bearer token belongs to; 401 for a missing, unknown, revoked or expired
    one. The one token check: the front door (``front.py``), the routes and the stream
    (and its re-checks) all use it."""
    if not token:
        raise ServiceError(401, E.UNAUTHORIZED, "missing bearer token (Authorization: Bearer …)")
    found = service.access.user_for_token(token)
    if found is None:
        raise ServiceError(401, E.UNAUTHORIZED, "invalid token")
    return Caller(*found)


def authenticate_hash(service: Service, token_hash: str) -> Caller:
    """:func:`authenticate` for a token known only by its hash (a dashboard login keeps
    no token): the same store lookup, by the hash it looks tokens up by; 401 likewise."""
    found = service.store.user_for_token_hash(token_hash)
    if found is None:
        raise ServiceError(401, E.UNAUTHORIZED, "invalid token")
    return Caller(*found)


# The dependencies below are coroutines although nothing in them awaits: FastAPI runs a
# plain ``def`` dependency in its thread pool, two thread hops per request (a small job's
# round trip makes three requests); these are a few attribute reads, and an indexed
# lookup of the token only when the front door did not run.


async def service_of(request: Request) -> Service:
    """The service a request is for."""
    return _service(request)


def _service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


#: Where the front door leaves the :class:`Caller` it authenticated, in the ASGI scope.
CALLER_KEY = "qdispatch.caller"


async def caller_of(request: Request) -> Caller:
    """The authenticated caller of a request (401 otherwise): the one the front door found,
    if it ran. Every authenticated request counts as activity for the idle watchdog."""
    return _caller(request)


def _caller(request: Request) -> Caller:
    svc = _service(request)
    svc.last_request = time.monotonic()
    found = request.scope.get(CALLER_KEY)
    if isinstance(found, Caller):
        return found
    return authenticate(svc, bearer_token(request.headers.get("authorization", "")))


async def operator_of(request: Request) -> Caller:
    """The authenticated caller, who must hold an operator token (403 otherwise)."""
    who = _caller(request)
    if not who.operator:
        raise ServiceError(403, E.OPERATOR_ONLY, "this needs an operator token")
    return who


#: The dashboard's login cookie: the id of a login held in the service's memory
#: (:mod:`~qdispatch.server.ui.logins`), never the token itself.
UI_COOKIE = "qdispatch_ui"


def ui_logins(conn: HTTPConnection) -> Logins:
    """The dashboard's logins (one table per application)."""
    logins: Logins = conn.app.state.ui_logins
    return logins


def ui_login_of(conn: HTTPConnection) -> tuple[Caller, Login]:
    """The caller of a dashboard request or stream, and their login, from the login
    cookie: 401 without a login, or when the token it was made with no longer passes the
    same store lookup as a bearer token (:func:`authenticate_hash`, by the token's hash,
    which is all a login keeps; the login ends then)."""
    svc: Service = conn.app.state.service
    logins = ui_logins(conn)
    login = logins.get(conn.cookies.get(UI_COOKIE))
    if login is None:
        raise ServiceError(401, E.UNAUTHORIZED, "not logged in to the dashboard")
    try:
        who = authenticate_hash(svc, login.token_hash)
    except ServiceError:
        logins.end(login.id)
        raise
    svc.last_request = time.monotonic()
    return who, login


Svc = Annotated[Service, Depends(service_of)]
Who = Annotated[Caller, Depends(caller_of)]
Operator = Annotated[Caller, Depends(operator_of)]


def can_see(svc: Service, who: Caller, job: Job) -> bool:
    """Whether the caller may see ``job``: an operator sees every job."""
    return who.operator or svc.visible(who.user, who.project, job)


def visible_job(svc: Service, who: Caller, job_id: str) -> Job:
    """A job the caller may see, else 404 (never 403: existence is not disclosed)."""
    job = svc.store.job(job_id)
    if job is None or not can_see(svc, who, job):
        raise not_found(job_id)
    return job


def own_job(svc: Service, who: Caller, job_id: str, *, operator: bool = False) -> Job:
    """A job the caller may change: only its owner may (403 for one shared with them);
    with ``operator``, an operator may too."""
    job = visible_job(svc, who, job_id)
    if job.owner != who.user and not (operator and who.operator):
        raise ServiceError(403, E.READ_ONLY, f"job '{job_id}' is shared with you read-only")
    return job


def unknown_backend(svc: Service, name: str, status: int) -> ServiceError:
    """The answer for a backend that is not in the catalog (400 in a body, 404 in a path)."""
    return ServiceError(
        status, E.UNKNOWN_BACKEND, f"unknown backend '{name}' (available: {svc.backend_names()})"
    )


def iso_timestamp(ts: str | None) -> str | None:
    """A client-given timestamp in the store's UTC ISO form (naive = UTC); 400 if it is
    not ISO 8601."""
    if ts is None:
        return None
    try:
        parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ServiceError(400, E.INVALID_REQUEST, f"not an ISO 8601 timestamp: {ts!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
