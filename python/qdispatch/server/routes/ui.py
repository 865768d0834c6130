"""``/ui``: the web dashboard, server-rendered pages (Jinja2, autoescaped) and small
scripts of our own (``server/ui/static``), no build step.

Pages: the overview (workers, queues per backend with depth and ETA, throughput, recent
failures), the jobs table (filters, paging, live statuses), a job (status timeline,
histogram of its counts, logs and interim results as they come, cancel), job sets and a
job set (a bar per chunk, failed chunks with their errors). Their scripts read the JSON
under ``/ui/api`` and follow jobs on ``/ui/stream``: the event stream of ``WS /stream``
(the same :class:`~qdispatch.server.stream.StreamSession`, the same messages), entered
with the login cookie instead of a token, so that the token never reaches a script.

**Who sees what.** A login is a cookie holding a random login id (``deps.ui_login_of``);
the token it was made with is checked on every request with the same one check as a
bearer token, and every job the dashboard shows or cancels goes through the REST API's own
route functions and access checks (``routes/jobs.py``, ``deps.visible_job``,
``deps.own_job``): a user sees exactly what ``GET /jobs`` shows them, an operator what an
operator sees. Another user's job is a 404, as in the API.

**Forged requests.** The cookie is ``HttpOnly; SameSite=Strict`` (and ``Secure`` behind
TLS); every POST must come from the dashboard's own origin (``Origin``, else
``Referer``) and carry the login's CSRF token (``X-CSRF-Token`` or a form field), else
403 ``csrf_failed``. Pages are sent with a Content-Security-Policy that allows scripts
and styles from ``/ui/static`` only (no inline script), and cannot be framed.
"""

from __future__ import annotations

import asyncio
import hmac
import zlib
from collections import Counter
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import jinja2
import orjson
from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection

from ... import codes as E
from ... import monitor
from ...constants import (
    ACTIVE_STATUSES,
    CANCELLED,
    DONE,
    ERROR,
    FINAL_STATUSES,
    RUNNING,
    SET_TAG,
    utc_iso,
)
from ..access import retry_after
from ..deps import (
    UI_COOKIE,
    Caller,
    Svc,
    authenticate,
    json_response,
    ui_login_of,
    ui_logins,
    visible_job,
)
from ..errors import ServiceError
from ..front import rate_limited
from ..service import Service
from ..store import JobFilter, hash_token
from ..stream import CLOSE_UNAUTHORIZED, close_reason
from ..ui import TEMPLATES
from ..ui.counts import CountsCache
from ..ui.logins import Login, LoginThrottle
from . import jobs as jobs_api
from .stream import serve_stream

#: Where the dashboard lives; the front door lets these paths through to authenticate
#: themselves (with the login cookie).
PREFIX = "/ui"

#: Jobs per page of the jobs table.
PAGE_SIZE = 25
#: The most jobs of one job set the set's page reads (1,000 at a time).
MAX_SET_JOBS = 20_000
#: Never-submitted chunks a set's page lists one by one (the rest are counted): a row
#: each in the page, rendered on the event loop.
SET_LISTED_MISSING = 1000
#: The newest jobs the job sets page looks through for sets.
SETS_SCAN = 1000
#: Finished jobs the throughput sparkline counts at most, and its window and buckets.
THROUGHPUT_JOBS = 1000
THROUGHPUT_BUCKETS = 30
THROUGHPUT_BUCKET_SECONDS = 60
#: Finished jobs of a backend whose mean run time estimates its queue's ETA.
ETA_SAMPLE = 20
#: A result larger than this (inflated) is not read for the histogram.
MAX_PLOT_RESULT_BYTES = 32 * 1024 * 1024
#: Outcomes the histogram shows (the rest are summed as "other").
TOP_OUTCOMES = 16
#: Log and interim-result events a job's page shows when it opens (the newest).
PAGE_EVENTS = 500
#: Older events a job's page counts as left out, at most (beyond: "more than").
LEFT_OUT_COUNTED = 10_000
#: A login form or a cancel form is a few hundred bytes (``bodies.py`` reads the
#: dashboard's bodies with this limit, under the service's body deadlines).
MAX_FORM_BYTES = 8 * 1024

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_STATUSES = [*ACTIVE_STATUSES, *sorted(FINAL_STATUSES)]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class _DashboardRoute(APIRoute):
    """A dashboard route: its answers carry the security headers; a page (not
    ``/ui/api``) that is refused shows an error page, or the login page for a visitor not
    logged in."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except ServiceError as exc:
                if request.url.path.startswith(f"{PREFIX}/api/"):
                    raise
                response = _refused_page(request, exc)
            response.headers.update(_PAGE_HEADERS)
            return response

        return guarded


router = APIRouter(route_class=_DashboardRoute, include_in_schema=False)

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,  # every value a page shows is escaped, user-named ones above all
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: str | None) -> str:
    """A wire timestamp as the pages show it (UTC, to the second)."""
    if not value:
        return "—"
    return value.replace("T", " ")[:19] + " UTC"


def _duration(seconds: float | None) -> str:
    """Seconds as the pages show them: ``0.42 s``, ``3 min 4 s``, ``2 h 5 min``."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


_env.filters["when"] = _when
_env.filters["duration"] = _duration


def _render(name: str, request: HTTPConnection, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("who", None)
    context.setdefault("csrf", None)
    context.setdefault("nav", "")
    html = _env.get_template(name).render(prefix=PREFIX, statuses=_STATUSES, **context)
    return HTMLResponse(html, status)


def _refused_page(request: Request, exc: ServiceError) -> Response:
    if exc.status == 401 and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?{urlencode({'next': target})}", 303)
    page = _render("error.html", request, exc.status, error=exc.message, code=exc.code)
    page.headers.update(exc.headers)  # a 429's Retry-After
    return page


# -- who is asking ------------------------------------------------------------------------


def _caller(conn: HTTPConnection) -> tuple[Caller, Login]:
    """The logged-in caller, counted against their request rate like any request."""
    svc: Service = conn.app.state.service
    who, login = ui_login_of(conn)
    wait = svc.access.admit(who.user)
    if wait is not None:
        raise rate_limited(who.user, wait, svc.access.rate, svc.access.burst)
    return who, login


def _same_origin(conn: HTTPConnection) -> bool:
    """Whether the request comes from a page of this service (``Origin``, else
    ``Referer``, names the host the request was sent to)."""
    source = conn.headers.get("origin") or conn.headers.get("referer")
    host = conn.headers.get("host")
    if not source or not host:
        return False
    parts = urlsplit(source)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def _forged(message: str) -> ServiceError:
    return ServiceError(403, E.CSRF_FAILED, message)


def _check_post(request: Request, login: Login | None, form: dict[str, str]) -> None:
    """A POST must come from the dashboard's origin and, once logged in, carry the
    login's CSRF token (header ``X-CSRF-Token`` or form field ``csrf``); 403 otherwise."""
    if not _same_origin(request):
        raise _forged("a dashboard POST must come from the dashboard's own origin")
    if login is None:
        return
    sent = request.headers.get("x-csrf-token") or form.get("csrf") or ""
    if not hmac.compare_digest(sent.encode(), login.csrf.encode()):
        raise _forged("missing or wrong CSRF token; reload the page")


async def _form(request: Request) -> dict[str, str]:
    """A small url-encoded form, from the dashboard's own origin (checked before the form
    is looked at; ``bodies.py`` has read it under the body deadlines and MAX_FORM_BYTES,
    bounded here again for a route mounted without that middleware)."""
    if not _same_origin(request):
        raise _forged("a dashboard POST must come from the dashboard's own origin")
    declared = request.headers.get("content-length", "")
    too_large = ServiceError(
        413, E.PAYLOAD_TOO_LARGE, f"a dashboard form is at most {MAX_FORM_BYTES} bytes"
    )
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise too_large
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=8)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ServiceError(400, E.INVALID_REQUEST, f"not a dashboard form: {exc}") from exc
    return {key: values[0] for key, values in fields.items()}


def _secure(request: Request) -> bool:
    """Whether the browser reaches the service over TLS: its own, or a proxy's in front
    (``--plaintext`` is for a TLS-terminating proxy)."""
    config = request.app.state.service.config
    return bool(config.tls or config.plaintext or request.url.scheme == "https")


def _next_page(target: str | None) -> str:
    """Where to go after logging in: a dashboard path only (never another site)."""
    if target and target.startswith(f"{PREFIX}") and not target.startswith("//"):
        return target
    return f"{PREFIX}/"


# -- data: through the REST API's own routes and checks ----------------------------------


def _loads(response: Response) -> Any:
    return orjson.loads(bytes(response.body))


async def _listing(
    svc: Service,
    who: Caller,
    *,
    limit: int,
    skip: int = 0,
    backend: str | None = None,
    status: list[str] | None = None,
    name: str | None = None,
    tags: list[str] | None = None,
    created_after: str | None = None,
    descending: bool = True,
) -> dict[str, Any]:
    """What ``GET /jobs`` answers the caller with these filters."""
    answer = await jobs_api.list_jobs(
        svc,
        who,
        limit=limit,
        skip=skip,
        backend=backend or None,
        status=status,
        name=name or None,
        tags=tags,
        created_after=created_after,
        descending=descending,
    )
    listing: dict[str, Any] = _loads(answer)
    return listing


def _finished_at(job: dict[str, Any]) -> str | None:
    steps = job.get("time_per_step") or {}
    return steps.get("COMPLETED") or steps.get("ERROR") or steps.get("CANCELLED")


def _mean_run_seconds(svc: Service, backend: str) -> float | None:
    """The mean run time of the backend's latest finished jobs (every user's: it is an
    aggregate, like the queue's depth in ``GET /backends/{name}/status``)."""
    recent, _ = svc.store.list_jobs(
        None, JobFilter(backend=backend, statuses=[DONE]), ETA_SAMPLE, 0, True
    )
    times = [j.run_seconds for j in recent if j.run_seconds is not None]
    return sum(times) / len(times) if times else None


async def _overview(svc: Service, who: Caller) -> dict[str, Any]:
    """Workers, queues, throughput and recent failures."""
    health = svc.scheduler.health()
    capacity = max(1, svc.scheduler.executor.capacity)
    queues = []
    for backend in sorted(svc.catalog):
        depth = svc.scheduler.pending_jobs(backend)
        mean = _mean_run_seconds(svc, backend) if depth else None
        queues.append(
            {
                "backend": backend,
                "depth": depth,
                "paused": backend in svc.scheduler.paused,
                "mean_run_seconds": mean,
                # depth x recent mean run time / workers: when the last queued job starts
                "eta_seconds": depth * mean / capacity if mean is not None else None,
            }
        )
    now = datetime.now(timezone.utc)
    window = THROUGHPUT_BUCKETS * THROUGHPUT_BUCKET_SECONDS
    # Jobs created within twice the window: a job that waited long still counts when it ends.
    finished = await _listing(
        svc,
        who,
        limit=THROUGHPUT_JOBS,
        status=sorted(FINAL_STATUSES),
        created_after=utc_iso(now - timedelta(seconds=2 * window)),
    )
    buckets = [0] * THROUGHPUT_BUCKETS
    for job in finished["jobs"]:
        ended = _finished_at(job)
        if ended is None:
            continue
        age = (now - datetime.fromisoformat(ended.replace("Z", "+00:00"))).total_seconds()
        if 0 <= age < window:
            buckets[THROUGHPUT_BUCKETS - 1 - int(age // THROUGHPUT_BUCKET_SECONDS)] += 1
    failures = await _listing(svc, who, limit=8, status=[ERROR])
    return {
        "now": utc_iso(now),
        "executor": svc.config.executor,
        "capacity": svc.scheduler.executor.capacity,
        "workers": health["workers"],
        "queued_jobs": health["queued_jobs"],
        "running_jobs": health["running_jobs"],
        "queues": queues,
        "throughput": {
            "bucket_seconds": THROUGHPUT_BUCKET_SECONDS,
            "finished": buckets,
            "jobs_per_second": sum(buckets[-5:]) / (5 * THROUGHPUT_BUCKET_SECONDS),
        },
        "failures": [_row(j) for j in failures["jobs"]],
    }


def _row(job: dict[str, Any]) -> dict[str, Any]:
    """What the jobs table shows of a job (tags without a set's bookkeeping ones)."""
    return {
        "id": job["id"],
        "name": job["name"],
        "backend": job["backend"],
        "kind": job["kind"],
        "owner": job["owner"],
        "status": job["status"],
        "created": job["creation_date"],
        "finished": _finished_at(job),
        "tags": monitor.user_tags(job["tags"]),
        "set_id": monitor.set_id_of(job),
        "n_experiments": job["n_experiments"],
        "error": (job.get("error") or {}).get("message"),
        "position": (job.get("queue_info") or {}).get("position"),
    }


def _filters(
    status: str | None, backend: str | None, tag: str | None, name: str | None, page: int
) -> dict[str, Any]:
    return {
        "status": status or "",
        "backend": backend or "",
        "tag": tag or "",
        "name": name or "",
        "page": page,
    }


async def _jobs_page(svc: Service, who: Caller, filters: dict[str, Any]) -> dict[str, Any]:
    """One page of the jobs table."""
    page = max(1, int(filters["page"]))
    listing = await _listing(
        svc,
        who,
        limit=PAGE_SIZE,
        skip=(page - 1) * PAGE_SIZE,
        backend=filters["backend"],
        status=[filters["status"]] if filters["status"] else None,
        name=filters["name"],
        tags=[filters["tag"]] if filters["tag"] else None,
    )
    count = int(listing["count"])
    return {
        "jobs": [_row(j) for j in listing["jobs"]],
        "count": count,
        "page": page,
        "pages": max(1, -(-count // PAGE_SIZE)),
        "page_size": PAGE_SIZE,
    }


def _timeline(steps: dict[str, str], now: datetime) -> list[dict[str, Any]]:
    """The job's steps in the order ``monitor.steps`` puts them (as ``qdispatch jobs
    show`` lists them), each with the time until the next (the last one, of a job still
    going, until now)."""
    ordered = monitor.steps(steps)
    out = []
    for i, step in enumerate(ordered):
        ongoing = False
        if i + 1 < len(ordered):
            seconds = ordered[i + 1]["seconds"]
        elif step["step"] in ("COMPLETED", ERROR, CANCELLED):
            seconds = None
        else:
            seconds, ongoing = monitor.seconds_between(step["time"], utc_iso(now)), True
        out.append(
            {"step": step["step"], "time": step["time"], "seconds": seconds, "ongoing": ongoing}
        )
    return out


async def _job(svc: Service, who: Caller, job_id: str) -> dict[str, Any]:
    """What a job's page shows: ``GET /jobs/{id}`` and ``GET /jobs/{id}/metrics``, the
    timeline, whether the caller may cancel it, and its job set."""
    job: dict[str, Any] = _loads(await jobs_api.get_job(job_id, svc, who))
    metrics = _loads(await jobs_api.get_metrics(job_id, svc, who))
    now = datetime.now(timezone.utc)
    return {
        "job": job,
        "row": _row(job),
        "metrics": metrics,
        "timeline": _timeline(job["time_per_step"], now),
        "final": job["status"] in FINAL_STATUSES,
        # own_job(operator=True), as POST /jobs/{id}/cancel decides
        "can_cancel": job["status"] not in FINAL_STATUSES
        and (job["owner"] == who.user or who.operator),
        "now": utc_iso(now),
    }


def _events(svc: Service, job_id: str) -> dict[str, Any]:
    """The job's newest log lines and interim results (at most PAGE_EVENTS, read newest
    first along the index: a job of millions of events costs the same), how many older
    ones are left out (counted up to LEFT_OUT_COUNTED), and the seq they go up to (the
    page's script follows the stream from there). The caller may see the job."""
    kinds = ("log", "interim")
    logs: list[str] = []
    interim: list[str] = []
    newest = svc.store.newest_events(job_id, kinds, PAGE_EVENTS)
    for event in newest:
        if event.data is None:
            continue
        if event.type == "log":
            logs.append(str(orjson.loads(event.data).get("text", "")))
        else:
            interim.append(event.data.decode(errors="replace"))
    left_out = 0
    if len(newest) == PAGE_EVENTS:
        left_out = svc.store.count_events_before(job_id, kinds, newest[0].seq, LEFT_OUT_COUNTED)
    return {
        "logs": "".join(logs),
        "interim": interim,
        "since": svc.store.last_seq(job_id),
        "left_out": left_out,
        "left_out_more": left_out >= LEFT_OUT_COUNTED,
    }


def _counts(blob: bytes, experiment: int, top: int) -> dict[str, Any]:
    """The top outcomes of one experiment of a stored circuit result (in a worker
    thread: it inflates and parses the whole result, at most MAX_PLOT_RESULT_BYTES)."""
    inflater = zlib.decompressobj()
    raw = inflater.decompress(blob, MAX_PLOT_RESULT_BYTES + 1)
    if len(raw) > MAX_PLOT_RESULT_BYTES or inflater.unconsumed_tail:
        raise ServiceError(
            413,
            E.PAYLOAD_TOO_LARGE,
            f"the result is over {MAX_PLOT_RESULT_BYTES} bytes, too large to plot here; "
            "fetch it with GET /jobs/{id}/results",
        )
    results = orjson.loads(raw).get("results") or []
    if not 0 <= experiment < len(results):
        raise ServiceError(
            400,
            E.INVALID_REQUEST,
            f"experiment {experiment} is out of range (the job has {len(results)})",
        )
    exp = results[experiment]
    header = exp.get("header") or {}
    counts = (exp.get("data") or {}).get("counts") or {}
    width = int(header.get("memory_slots") or 0)
    ranked = Counter(
        {
            format(int(k, 16), f"0{width}b") if k.startswith("0x") else k: v
            for k, v in counts.items()
        }
    ).most_common()
    shown = ranked[:top]
    return {
        "experiments": len(results),
        "experiment": experiment,
        "name": header.get("name"),
        "shots": sum(counts.values()),
        "distinct": len(ranked),
        "outcomes": shown,
        "other": sum(n for _, n in ranked[top:]),
    }


async def _job_set(svc: Service, who: Caller, set_id: str) -> dict[str, Any]:
    """A job set's chunks (``monitor.job_set_progress``, as ``qdispatch sets show``
    shows them), each with how far it is, read from the tags the job manager gives every
    job of a set."""
    jobs: list[dict[str, Any]] = []
    while len(jobs) < MAX_SET_JOBS:
        page = await _listing(
            svc, who, limit=1000, skip=len(jobs), tags=[f"{SET_TAG}{set_id}"], descending=False
        )
        jobs.extend(page["jobs"])
        if not page["jobs"] or len(jobs) >= int(page["count"]):
            break
    if not jobs:
        raise ServiceError(404, E.JOB_SET_NOT_FOUND, f"job set '{set_id}' not found")
    state = monitor.job_set_progress(set_id, jobs, SET_LISTED_MISSING)
    by_id = {job["id"]: job for job in jobs}
    chunks = []
    for chunk in state["chunks"]:
        job = by_id.get(chunk["job_id"] or "")
        if job is None:
            chunks.append({**chunk, "error": "never submitted", "progress": 0.0})
        else:
            chunks.append({**chunk, **_chunk(svc, job, chunk["count"])})
    failed = (ERROR, CANCELLED, monitor.NOT_SUBMITTED)
    return {
        "id": set_id,
        "name": state["name"] or set_id,
        "backend": state["backend"],
        "tags": state["tags"],
        "n_jobs": state["jobs"],
        "n_experiments": state["experiments"],
        "experiments_done": state["experiments_done"],
        "statuses": state["statuses"],
        "chunks": chunks,
        "not_listed": state["not_listed"],
        "failed": [c for c in chunks if c["status"] in failed],
        "now": utc_iso(datetime.now(timezone.utc)),
    }


def _chunk(svc: Service, job: dict[str, Any], count: int) -> dict[str, Any]:
    """One chunk's job and how far it is: 1 when finished, 0 while queued, and while
    running the time since it started over the time its experiments are expected to take
    (the backend's measured rate; the page moves it on, at most to 0.95)."""
    status = job["status"]
    running_since = (job["time_per_step"] or {}).get(RUNNING) if status == RUNNING else None
    expected = svc.scheduler.seconds_per_experiment(job["backend"]) * max(1, count)
    progress = 1.0 if status in FINAL_STATUSES else 0.0
    if running_since is not None:
        started = datetime.fromisoformat(running_since.replace("Z", "+00:00"))
        elapsed = (datetime.now(timezone.utc) - started).total_seconds()
        progress = min(0.95, elapsed / expected) if expected > 0 else 0.5
    return {
        "error": (job.get("error") or {}).get("message")
        or ("cancelled" if status == CANCELLED else None),
        "progress": progress,
        "running_since": running_since,
        "expected_seconds": expected,
    }


# -- logging in and out -------------------------------------------------------------------


@router.get(f"{PREFIX}/login")
async def login_page(
    request: Request, next_page: Annotated[str | None, Query(alias="next")] = None
) -> Response:
    """The login form: a token, posted once."""
    return _render("login.html", request, next=_next_page(next_page), error=None)


@router.post(f"{PREFIX}/login")
async def login(request: Request, svc: Svc) -> Response:
    """Log in with a token: the answer sets the login cookie (a random login id, never
    the token) and goes on to the page asked for."""
    form = await _form(request)
    _check_post(request, None, form)
    # Guessing tokens: failed logins per client address go through a token bucket, and
    # past it a login is refused before its token is looked up.
    throttle: LoginThrottle = request.app.state.ui_login_throttle
    address = request.client.host if request.client else "?"
    wait = throttle.wait(address)
    if wait is not None:
        raise ServiceError(
            429,
            E.RATE_LIMITED,
            f"too many failed logins from {address}; retry after {wait:.0f} s",
            headers={"Retry-After": retry_after(wait)},
            retry_after=round(wait, 3),
        )
    target = _next_page(form.get("next"))
    token = form.get("token", "").strip()
    try:
        who = authenticate(svc, token)
    except ServiceError as exc:
        throttle.failed(address)
        page = _render("login.html", request, 401, next=target, error=exc.message)
        return page
    # A good login is a request of its user like any other (and makes a login each).
    wait = svc.access.admit(who.user)
    if wait is not None:
        raise rate_limited(who.user, wait, svc.access.rate, svc.access.burst)
    login_ = ui_logins(request).create(hash_token(token), who.user)
    response = RedirectResponse(target, 303)
    response.set_cookie(
        UI_COOKIE,
        login_.id,
        max_age=int(svc.config.ui_login_seconds),
        path=PREFIX,
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


@router.post(f"{PREFIX}/logout")
async def logout(request: Request) -> Response:
    """End the login and drop its cookie."""
    form = await _form(request)
    _who, login_ = ui_login_of(request)
    _check_post(request, login_, form)
    ui_logins(request).end(login_.id)
    response = RedirectResponse(f"{PREFIX}/login", 303)
    response.delete_cookie(UI_COOKIE, path=PREFIX, secure=_secure(request), httponly=True)
    return response


# -- pages ---------------------------------------------------------------------------------


@router.get(PREFIX)
@router.get(f"{PREFIX}/")
async def overview_page(request: Request, svc: Svc) -> Response:
    """Workers, queues per backend, throughput, recent failures."""
    who, login_ = _caller(request)
    data = await _overview(svc, who)
    return _render("overview.html", request, who=who, csrf=login_.csrf, nav="overview", data=data)


@router.get(f"{PREFIX}/jobs")
async def jobs_page(
    request: Request,
    svc: Svc,
    status: str | None = None,
    backend: str | None = None,
    tag: str | None = None,
    name: str | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
) -> Response:
    """The jobs table: filters, paging, statuses followed live."""
    who, login_ = _caller(request)
    filters = _filters(status, backend, tag, name, page)
    data = await _jobs_page(svc, who, filters)
    query = {k: v for k, v in filters.items() if v and k != "page"}
    return _render(
        "jobs.html",
        request,
        who=who,
        csrf=login_.csrf,
        nav="jobs",
        data=data,
        filters=filters,
        backends=sorted(svc.catalog),
        query=urlencode(query),
    )


@router.get(f"{PREFIX}/jobs/{{job_id}}")
async def job_page(request: Request, job_id: str, svc: Svc) -> Response:
    """A job: timeline, histogram, logs and interim results, cancel."""
    who, login_ = _caller(request)
    data = await _job(svc, who, job_id)
    return _render(
        "job.html",
        request,
        who=who,
        csrf=login_.csrf,
        nav="jobs",
        data=data,
        events=_events(svc, job_id),
    )


@router.post(f"{PREFIX}/jobs/{{job_id}}/cancel")
async def cancel_form(request: Request, job_id: str, svc: Svc) -> Response:
    """Cancel from the job page's form (without its script): back to the job's page."""
    await _cancel(request, job_id, svc)
    return RedirectResponse(f"{PREFIX}/jobs/{quote(job_id, safe='')}", 303)


@router.get(f"{PREFIX}/sets")
async def sets_page(request: Request, svc: Svc) -> Response:
    """The job sets among the caller's newest jobs."""
    who, login_ = _caller(request)
    listing = await _listing(svc, who, limit=SETS_SCAN)
    return _render(
        "sets.html",
        request,
        who=who,
        csrf=login_.csrf,
        nav="sets",
        sets=monitor.job_sets(listing["jobs"]),
        scanned=len(listing["jobs"]),
    )


@router.get(f"{PREFIX}/sets/{{set_id}}")
async def set_page(request: Request, set_id: str, svc: Svc) -> Response:
    """A job set: a bar per chunk, failed chunks with their errors."""
    who, login_ = _caller(request)
    data = await _job_set(svc, who, set_id)
    return _render(
        "set.html", request, who=who, csrf=login_.csrf, nav="sets", data=data, set_tag=SET_TAG
    )


# -- what the pages' scripts read ----------------------------------------------------------


@router.get(f"{PREFIX}/api/overview")
async def overview_json(request: Request, svc: Svc) -> Response:
    """The overview's figures."""
    who, _ = _caller(request)
    return json_response(await _overview(svc, who))


@router.get(f"{PREFIX}/api/jobs")
async def jobs_json(
    request: Request,
    svc: Svc,
    status: str | None = None,
    backend: str | None = None,
    tag: str | None = None,
    name: str | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
) -> Response:
    """One page of the jobs table."""
    who, _ = _caller(request)
    return json_response(await _jobs_page(svc, who, _filters(status, backend, tag, name, page)))


@router.get(f"{PREFIX}/api/jobs/{{job_id}}")
async def job_json(request: Request, job_id: str, svc: Svc) -> Response:
    """A job as its page shows it."""
    who, _ = _caller(request)
    return json_response(await _job(svc, who, job_id))


@router.get(f"{PREFIX}/api/jobs/{{job_id}}/counts")
async def counts_json(
    request: Request,
    job_id: str,
    svc: Svc,
    experiment: Annotated[int, Query(ge=0)] = 0,
    top: Annotated[int, Query(ge=1, le=64)] = TOP_OUTCOMES,
) -> Response:
    """The top outcomes of one experiment of a finished circuit job (cached once the
    job is DONE; at most ``counts.PER_USER`` worked out at once per user)."""
    who, _ = _caller(request)
    job = visible_job(svc, who, job_id)
    cache: CountsCache = request.app.state.ui_counts
    key = (job_id, experiment, top)
    answer = cache.get(key) if job.status == DONE else None
    if answer is None:
        blob = svc.store.data(job_id, "result") if job.kind == "circuit" else None
        if blob is None:
            reason = "a program job's result has no counts to plot" if job.kind != "circuit" else ""
            raise ServiceError(
                409, E.JOB_HAS_NO_RESULT, reason or f"job '{job_id}' is {job.status}: no counts yet"
            )
        with cache.computing(who.user):
            try:
                answer = await asyncio.to_thread(_counts, blob, experiment, top)
            except ServiceError as exc:  # too large, out of range: as final as an answer
                answer = exc.with_traceback(None)
        if job.status == DONE:  # a DONE job's result never changes again
            cache.put(key, answer)
    if isinstance(answer, ServiceError):
        # a new exception each time: re-raising the cached one would grow its traceback
        raise ServiceError(
            answer.status, answer.code, answer.message, headers=answer.headers, **answer.extra
        )
    return json_response(answer)


@router.post(f"{PREFIX}/api/jobs/{{job_id}}/cancel")
async def cancel_json(request: Request, job_id: str, svc: Svc) -> Response:
    """Cancel a job from its page's script (``X-CSRF-Token``)."""
    return await _cancel(request, job_id, svc)


async def _cancel(request: Request, job_id: str, svc: Svc) -> Response:
    who, login_ = _caller(request)
    _check_post(request, login_, await _form(request))
    # POST /jobs/{id}/cancel itself: its owner or an operator (own_job), 409 if finished
    return await jobs_api.cancel_job(job_id, svc, who)


@router.get(f"{PREFIX}/api/sets/{{set_id}}")
async def set_json(request: Request, set_id: str, svc: Svc) -> Response:
    """A job set's chunks."""
    who, _ = _caller(request)
    return json_response(await _job_set(svc, who, set_id))


@router.websocket(f"{PREFIX}/stream")
async def stream(ws: WebSocket) -> None:
    """``WS /stream``'s protocol for the dashboard's pages, entered with the login cookie
    from a page of this service's origin (a page elsewhere cannot open it with the
    visitor's cookie). The login and its token are re-checked every second."""
    svc: Service = ws.app.state.service
    await ws.accept()
    try:
        if not _same_origin(ws):
            raise ServiceError(401, E.UNAUTHORIZED, "the dashboard's stream is for its pages")
        who, _login = ui_login_of(ws)
    except ServiceError as exc:
        await ws.send_text(orjson.dumps({"type": "error", **exc.body()["error"]}).decode())
        await ws.close(CLOSE_UNAUTHORIZED, close_reason(exc.message))
        return

    def recheck() -> ServiceError | None:
        try:
            ui_login_of(ws)
        except ServiceError as exc:
            return exc
        return None

    # Results are fetched when wanted (the histogram), never pushed to a page.
    await serve_stream(ws, svc, who, recheck, 0)
