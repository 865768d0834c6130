"""The service's REST + WebSocket API (FastAPI on uvicorn); docs/protocol.md describes it.

``create_app(config)`` builds the application; its lifespan opens the store, recovers
jobs left over from a previous run, starts the executor and the dispatcher, and (for a
service on loopback) writes the state file that local clients find it by.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import ipaddress
import logging
import os
import re
import signal
import sqlite3
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, _native
from .. import codes as E
from ..constants import FINAL_STATUSES, SHARE_LEVELS, utcnow
from . import backends as bk
from .bodies import RequestBodies
from .errors import ServiceError, not_found
from .executors import DaskExecutor, Executor, LocalExecutor
from .programs import Registry
from .programs.submission import program_job_fields
from .scheduler import Scheduler
from .store import Job, JobFilter, NewJob, Store
from .stream import CLOSE_UNAUTHORIZED, Hub, StreamSession, encode_event

log = logging.getLogger(__name__)

DEFAULT_SHOTS = 1024
# The circuits a program job carries as a Qobj are checked for the job's backend's width
# with the ideal simulator's gates (programs make circuits fit a device themselves,
# docs/runtime.md), and no limit on their number but the request size.
_PROGRAM_GATES = "aer_simulator"
_PROGRAM_MAX_CIRCUITS = 10_000_000


@dataclass
class ServiceConfig:
    """Everything ``qdispatch serve`` can be told."""

    db: Path
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    executor: str = "local"
    scheduler_address: str | None = None
    threads_per_worker: int = 1
    max_active_jobs: int | None = None
    max_request_bytes: int = 64 * 1024 * 1024
    heartbeat_seconds: float = 10.0
    max_attempts: int = 3
    state_file: Path | None = None
    local_user: str | None = None
    idle_timeout: float | None = None
    programs_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The service's base URL (IPv6 addresses in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Whether the service listens on a loopback address only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class Caller:
    """The authenticated user of a request."""

    user: str
    project: str | None


def visible(user: str, project: str | None, job: Job, owner_project: str | None = None) -> bool:
    """Whether ``user`` may see ``job``: its owner, or as the job's share level allows."""
    if job.owner == user or job.share_level == "global":
        return True
    return job.share_level == "project" and project is not None and owner_project == project


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response serialized by orjson."""
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _iso(ts: str | None) -> str | None:
    """Normalize a client-given timestamp to the store's UTC ISO form (naive = UTC)."""
    if ts is None:
        return None
    try:
        parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ServiceError(400, E.INVALID_REQUEST, f"not an ISO 8601 timestamp: {ts!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


# -- request models (documentation of bodies in the OpenAPI spec) ----------------------


class JobCreate(BaseModel):
    """Body of ``POST /jobs``: a ``qobj`` (read by the Rust core, not by pydantic), or a
    ``program_id`` with its ``params`` (docs/runtime.md)."""

    backend: str | None = Field(
        None, description="Backend to run on; a program job without one gets the least busy."
    )
    qobj: dict[str, Any] | None = Field(None, description="A QasmQobj (docs/protocol.md).")
    program_id: str | None = Field(None, description="A program (GET /programs) to run.")
    params: dict[str, Any] | None = Field(
        None, description="The program's inputs, encoded as qdispatch.encoding writes them."
    )
    image: str | None = Field(None, description="'<program_id>:<version>' of the program.")
    name: str | None = None
    tags: list[str] = Field(default_factory=list)
    share_level: str = Field("none", description="none | project | global")
    session_id: str | None = None
    experiment_id: str | None = None
    client_info: dict[str, str] | None = None


class TagsUpdate(BaseModel):
    """Body of ``PUT /jobs/{id}/tags``: the complete new list of tags."""

    tags: list[str]


class NameUpdate(BaseModel):
    """Body of ``PUT /jobs/{id}/name``."""

    name: str | None


class BulkStatus(BaseModel):
    """Body of ``POST /jobs:status``."""

    ids: list[str]


# -- the application --------------------------------------------------------------------


class Service:
    """State shared by the routes: the store, the backends, the scheduler, the hub."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.store = Store(config.db)
        self.catalog = bk.catalog()
        self.specs = {name: bk.native_spec(defn) for name, defn in self.catalog.items()}
        self.program_specs = {
            name: bk.program_circuits_spec(
                defn, self.catalog[_PROGRAM_GATES], _PROGRAM_MAX_CIRCUITS
            )
            for name, defn in self.catalog.items()
        }
        self.hub = Hub(self.visible)
        self.programs = Registry.discover(config.programs_dir)
        self.scheduler = Scheduler(
            self.store, self.hub, self._executor(), config.max_attempts, self.programs.ref
        )
        self._properties_ids: dict[str, int] = {}
        self._session_modes: dict[str, str] = {}
        self.last_request = time.monotonic()

    def _executor(self) -> Executor:
        if self.config.executor == "local":
            return LocalExecutor(self.config.workers, self.config.threads_per_worker)
        if self.config.executor == "dask":
            if not self.config.scheduler_address:
                raise ValueError("--executor dask needs --scheduler ADDRESS")
            return DaskExecutor(self.config.scheduler_address, None, self.config.threads_per_worker)
        raise ValueError(f"unknown executor {self.config.executor!r} (local, dask)")

    def visible(self, user: str, project: str | None, job: Job) -> bool:
        """Whether ``user`` (of ``project``) may see ``job``."""
        if job.owner == user or job.share_level == "global":
            return True
        if job.share_level != "project" or project is None:
            return False
        return visible(user, project, job, self.store.project_of(job.owner))

    def calibrate(self) -> None:
        """Snapshot each noisy device's properties, dated when this store first saw them."""
        for name, defn in self.catalog.items():
            key = f"calibration_date:{name}"
            date = self.store.meta(key)
            if date is None:
                date = utcnow()
                self.store.set_meta(key, date)
            props = bk.properties(defn, datetime.fromisoformat(date.replace("Z", "+00:00")))
            if props is not None:
                self._properties_ids[name] = self.store.properties_snapshot(
                    name, orjson.dumps(props), props["last_update_date"]
                )

    def caller(self, token: str | None) -> Caller:
        """Authenticate a bearer token."""
        if not token:
            raise ServiceError(
                401, E.UNAUTHORIZED, "missing bearer token (Authorization: Bearer …)"
            )
        found = self.store.user_for_token(token)
        if found is None:
            raise ServiceError(401, E.UNAUTHORIZED, "invalid token")
        return Caller(*found)

    def get_job(self, caller: Caller, job_id: str) -> Job:
        """A job the caller may see, else 404 (never 403: existence is not disclosed)."""
        job = self.store.job(job_id)
        if job is None or not self.visible(caller.user, caller.project, job):
            raise not_found(job_id)
        return job

    def own_job(self, caller: Caller, job_id: str) -> Job:
        """A job the caller may change: only its owner may."""
        job = self.get_job(caller, job_id)
        if job.owner != caller.user:
            raise ServiceError(403, E.READ_ONLY, f"job '{job_id}' is shared with you read-only")
        return job

    def view(self, job: Job, queue_info: bool = True) -> dict[str, Any]:
        """The JSON form of a job (``queue_info`` only when asked: it costs a pass over
        the backend's queue the first time after each change)."""
        return {
            "id": job.id,
            "backend": job.backend,
            "kind": job.kind,
            "program_id": job.program_id,
            "name": job.name,
            "tags": job.tags,
            "status": job.status,
            "creation_date": job.created,
            "time_per_step": job.time_per_step,
            "share_level": job.share_level,
            "owner": job.owner,
            "session_id": job.session_id,
            "experiment_id": job.experiment_id,
            "client_info": job.client_info,
            "n_experiments": job.n_experiments,
            "shots": job.shots,
            "error": job.error,
            "run_mode": self.run_mode(job),
            "queue_info": self.scheduler.queue_info(job) if queue_info else None,
            "last_seq": job.last_seq,
            "run_seconds": job.run_seconds,
            "image": job.image,
            "program_version": job.program_version,
            "usage_estimation": job.usage_estimation,
        }

    def run_mode(self, job: Job) -> str:
        """``dedicated`` for a job of a dedicated session (it goes ahead of others),
        else ``fairshare``. A session's mode never changes, so it is cached."""
        if job.session_id is None:
            return "fairshare"
        mode = self._session_modes.get(job.session_id)
        if mode is None:
            mode = self.store.session_mode(job.session_id) or "none"
            self._session_modes[job.session_id] = mode
        return "dedicated" if mode == "dedicated" else "fairshare"

    def backend_status(self, name: str) -> dict[str, Any]:
        """``BackendStatus``-shaped dict."""
        return {
            "backend_name": name,
            "backend_version": __version__,
            "operational": True,
            "pending_jobs": self.scheduler.pending_jobs(name),
            "status_msg": "active",
        }

    def backend(self, name: str) -> bk.BackendDef:
        """A backend of the catalog, else 404."""
        try:
            return self.catalog[name]
        except KeyError:
            raise ServiceError(
                404, E.UNKNOWN_BACKEND, f"unknown backend '{name}' (available: {self._names()})"
            ) from None

    def _names(self) -> str:
        return ", ".join(sorted(self.catalog))


def service_of(request: Request) -> Service:
    """The service a request is for."""
    svc: Service = request.app.state.service
    return svc


def caller_of(request: Request) -> Caller:
    """The authenticated caller of a request (401 otherwise)."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    svc = service_of(request)
    svc.last_request = time.monotonic()
    return svc.caller(token)


Svc = Annotated[Service, Depends(service_of)]
Who = Annotated[Caller, Depends(caller_of)]


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ServiceError(400, E.MALFORMED_JSON, f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ServiceError(400, E.MALFORMED_JSON, f"{what} must be a JSON object")
    return value


def _field(
    envelope: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    value = envelope.get(key, default)
    if value is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ServiceError(400, E.INVALID_REQUEST, f"'{key}' must be {names}, got {value!r}")
    return value


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ServiceError(
            400, E.INVALID_REQUEST, f"'tags' must be a list of strings, got {value!r}"
        )
    return list(dict.fromkeys(value))


def create_app(config: ServiceConfig) -> FastAPI:
    """Build the service application for ``config``."""
    from . import sessions  # it builds on this module's Service and dependencies

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service(config)
        app.state.service = service
        service.calibrate()
        deadlines = sessions.watch_deadlines(service)  # before any job is dispatched
        requeued, failed = await service.scheduler.start()
        if requeued or failed:
            log.warning(
                "recovered after restart: %d requeued, %d failed", len(requeued), len(failed)
            )
        state_written = _write_state(service) if config.state_file else None
        watchdog = None
        if config.idle_timeout:
            watchdog = asyncio.get_running_loop().create_task(_stop_when_idle(service))
        try:
            yield
        finally:
            if watchdog is not None:
                watchdog.cancel()
            deadlines.cancel()
            await service.scheduler.stop()
            service.store.close()
            if state_written and config.state_file and config.state_file.exists():
                with contextlib.suppress(OSError):
                    if orjson.loads(config.state_file.read_bytes()).get("pid") == os.getpid():
                        config.state_file.unlink()

    app = FastAPI(
        title="qdispatch job service",
        version=__version__,
        description="Jobs of quantum circuits, queued per backend and run on qiskit-aer.",
        lifespan=lifespan,
    )

    app.add_middleware(RequestBodies, limit=config.max_request_bytes)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        return json_response(exc.body(), exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return json_response(body, exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        message = f"internal error: {type(exc).__name__}: {exc}"
        return json_response({"error": {"code": "internal_error", "message": message}}, 500)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return json_response({"error": {"code": E.INVALID_REQUEST, "message": problems}}, 400)

    @app.get("/info", tags=["service"])
    async def info(svc: Svc) -> Response:
        """Service version and the limits clients pace and split their work by."""
        return json_response(
            {
                "version": __version__,
                "max_request_bytes": config.max_request_bytes,
                "max_active_jobs": config.max_active_jobs,
                "executor": config.executor,
                "capacity": svc.scheduler.executor.capacity,
                "heartbeat_seconds": config.heartbeat_seconds,
            }
        )

    @app.get("/programs", tags=["programs"])
    async def list_programs(svc: Svc, who: Who) -> Response:
        """The programs this service runs (``program_id`` of ``POST /jobs``)."""
        return json_response({"programs": [p.view() for p in svc.programs]})

    @app.get("/backends", tags=["backends"])
    async def list_backends(svc: Svc, who: Who) -> Response:
        """The backends of this service, with their status."""
        out = []
        for name, defn in sorted(svc.catalog.items()):
            out.append(
                {
                    "name": name,
                    "n_qubits": defn.n_qubits,
                    "simulator": defn.simulator,
                    "description": defn.description,
                    **svc.backend_status(name),
                }
            )
        return json_response({"backends": out})

    @app.get("/backends/{name}/configuration", tags=["backends"])
    async def backend_configuration(name: str, svc: Svc, who: Who) -> Response:
        """The backend's configuration (``BackendConfiguration`` shape)."""
        return json_response(bk.configuration(svc.backend(name)))

    @app.get("/backends/{name}/properties", tags=["backends"])
    async def backend_properties(
        name: str,
        svc: Svc,
        who: Who,
        when: Annotated[str | None, Query(alias="datetime")] = None,
    ) -> Response:
        """The backend's calibration data, or as it was at ``datetime``; null for an ideal
        simulator."""
        defn = svc.backend(name)
        if when is not None:
            data = svc.store.properties_at(name, _iso(when) or "")
            return Response(data or b"null", media_type="application/json")
        pid = svc._properties_ids.get(defn.name)
        data = svc.store.properties(pid) if pid is not None else None
        return Response(data or b"null", media_type="application/json")

    @app.get("/backends/{name}/status", tags=["backends"])
    async def backend_status(name: str, svc: Svc, who: Who) -> Response:
        """Whether the backend is operational and how many jobs wait for it."""
        return json_response(svc.backend_status(svc.backend(name).name))

    @app.post(
        "/jobs",
        tags=["jobs"],
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": JobCreate.model_json_schema()}},
            },
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "A retried POST with the same key returns the same job.",
                }
            ],
        },
    )
    async def create_job(request: Request, svc: Svc, who: Who) -> Response:
        """Submit a job: a QasmQobj for a backend, or a program with its inputs. Answers
        201 with the job, or 200 with the job created earlier under the same
        ``Idempotency-Key``."""
        key = request.headers.get("idempotency-key")
        if key:
            earlier = svc.store.job_by_idempotency_key(who.user, key)
            if earlier is not None:
                return json_response(svc.view(earlier, queue_info=False), 200)
        body = await request.body()  # limited and decompressed by RequestBodies
        try:
            envelope_raw, qobj = _native.split_submission(body)
        except _native.MalformedPayloadError as exc:
            raise ServiceError(400, E.MALFORMED_JSON, str(exc)) from exc
        # A program's params (megabytes of circuits, perhaps) stay bytes: the program's
        # checks read what they need of them.
        envelope_raw, params = _native.split_member(envelope_raw, "params", "request body")
        envelope = _json_object(envelope_raw, "request body")
        program_id = _field(envelope, "program_id", str)
        backend_name = _field(envelope, "backend", str) or None
        session_id = _field(envelope, "session_id", str)
        if backend_name and backend_name not in svc.catalog:
            raise ServiceError(
                400,
                E.UNKNOWN_BACKEND,
                f"unknown backend '{backend_name}' (available: {svc._names()})",
            )
        # A session job without a backend takes the session's; a program job without
        # either runs on the least busy backend.
        backend_name = sessions.check_session(svc, who, session_id, backend_name)
        if program_id is not None and not backend_name:
            backend_name = svc.scheduler.least_busy(list(svc.catalog))
        if not backend_name:
            raise ServiceError(400, E.INVALID_REQUEST, "'backend' is required")
        if qobj is None and program_id is None:
            raise ServiceError(400, E.INVALID_REQUEST, "'qobj' is required (or 'program_id')")
        if qobj is not None and program_id is not None:
            raise ServiceError(
                400, E.INVALID_REQUEST, "a job has a 'qobj' or a 'program_id', not both"
            )
        share_level = _field(envelope, "share_level", str, "none") or "none"
        if share_level not in SHARE_LEVELS:
            raise ServiceError(
                400, E.INVALID_REQUEST, f"share_level must be one of {', '.join(SHARE_LEVELS)}"
            )
        if program_id is not None:
            rate = svc.scheduler.seconds_per_experiment(backend_name)
            payload = await program_job_fields(
                svc.programs, envelope, params, rate, svc.program_specs[backend_name]
            )
        else:
            assert qobj is not None
            try:
                summary = _native.validate_qobj(qobj, svc.specs[backend_name])
            except _native.MalformedPayloadError as exc:
                raise ServiceError(400, E.MALFORMED_JSON, str(exc)) from exc
            except _native.InvalidQobjError as exc:
                raise ServiceError(400, E.INVALID_QOBJ, str(exc)) from exc
            payload = {
                "kind": "circuit",
                "inputs": qobj,
                "n_experiments": summary.n_experiments,
                "shots": summary.shots or DEFAULT_SHOTS,
                "n_instructions": summary.n_instructions,
            }
        if config.max_active_jobs is not None:
            active = svc.store.count_active(who.user)
            if active >= config.max_active_jobs:
                raise ServiceError(
                    429,
                    E.ACTIVE_JOB_LIMIT,
                    f"user '{who.user}' has {active} active jobs, the limit is "
                    f"{config.max_active_jobs}; submit more when some have finished",
                    active_jobs=active,
                    limit=config.max_active_jobs,
                )
        client_info = _field(envelope, "client_info", dict)
        new = NewJob(
            owner=who.user,
            backend=backend_name,
            **payload,
            name=_field(envelope, "name", str),
            tags=_tags(envelope.get("tags")),
            share_level=share_level,
            session_id=_field(envelope, "session_id", str),
            idempotency_key=key,
            client_info={str(k): str(v) for k, v in client_info.items()} if client_info else None,
            experiment_id=_field(envelope, "experiment_id", str),
            properties_id=svc._properties_ids.get(backend_name),
        )
        try:
            job, event = svc.store.create_job(new)
        except sqlite3.IntegrityError:
            # A concurrent retry with the same Idempotency-Key won the race: its job is ours.
            earlier = svc.store.job_by_idempotency_key(who.user, key or "")
            if earlier is None:
                raise
            return json_response(svc.view(earlier, queue_info=False), 200)
        svc.scheduler.submit(job)
        svc.hub.publish(job, [event])
        return json_response(svc.view(job, queue_info=False), 201)

    @app.get("/jobs", tags=["jobs"])
    async def list_jobs(
        svc: Svc,
        who: Who,
        limit: Annotated[int, Query(ge=1, le=1000)] = 10,
        skip: Annotated[int, Query(ge=0)] = 0,
        backend: str | None = None,
        status: Annotated[list[str] | None, Query()] = None,
        name: Annotated[
            str | None, Query(description="regular expression, matched partially")
        ] = None,
        tags: Annotated[list[str] | None, Query()] = None,
        tags_operator: Annotated[str, Query(pattern="^(OR|AND)$")] = "OR",
        session_id: str | None = None,
        program_id: str | None = None,
        kind: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        descending: bool = True,
    ) -> Response:
        """Jobs the caller may see, newest first, with filters and paging."""
        if name is not None:
            try:
                re.compile(name)
            except re.error as exc:
                raise ServiceError(
                    400, E.INVALID_REQUEST, f"bad name pattern {name!r}: {exc}"
                ) from exc
        statuses = [s.upper() for s in status or []]
        filters = JobFilter(
            backend=backend,
            statuses=statuses,
            name_regex=name,
            tags=tags or [],
            tags_operator=tags_operator,
            session_id=session_id,
            program_id=program_id,
            kind=kind,
            created_after=_iso(created_after),
            created_before=_iso(created_before),
        )
        jobs, total = svc.store.list_jobs((who.user, who.project), filters, limit, skip, descending)
        return json_response({"jobs": [svc.view(j) for j in jobs], "count": total})

    @app.post("/jobs:status", tags=["jobs"])
    async def bulk_status(body: BulkStatus, svc: Svc, who: Who) -> Response:
        """Status of many jobs in one call; ids the caller cannot see are ``missing``."""
        found = svc.store.jobs_by_ids(body.ids)
        out: dict[str, Any] = {}
        for job_id, job in found.items():
            if svc.visible(who.user, who.project, job):
                out[job_id] = {
                    "status": job.status,
                    "error": job.error,
                    "last_seq": job.last_seq,
                    "queue_info": svc.scheduler.queue_info(job),
                }
        return json_response({"statuses": out, "missing": [i for i in body.ids if i not in out]})

    @app.get("/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str, svc: Svc, who: Who) -> Response:
        """One job."""
        return json_response(svc.view(svc.get_job(who, job_id)))

    @app.get("/jobs/{job_id}/qobj", tags=["jobs"])
    async def get_qobj(job_id: str, request: Request, svc: Svc, who: Who) -> Response:
        """The Qobj the job was submitted with."""
        svc.get_job(who, job_id)
        return _stored_blob(request, svc.store.data(job_id, "inputs"))

    @app.get("/jobs/{job_id}/inputs", tags=["jobs"])
    async def get_inputs(job_id: str, request: Request, svc: Svc, who: Who) -> Response:
        """What the job was submitted with: a program's encoded inputs (a circuit job's
        Qobj)."""
        svc.get_job(who, job_id)
        return _stored_blob(request, svc.store.data(job_id, "inputs"))

    @app.get("/jobs/{job_id}/results", tags=["jobs"])
    async def get_results(job_id: str, request: Request, svc: Svc, who: Who) -> Response:
        """The job's result: a qiskit ``Result`` dict, or what a program's ``main``
        returned (encoded). A failed job's partial result is returned when it has one;
        the job's ``error`` says what failed."""
        job = svc.get_job(who, job_id)
        blob = svc.store.data(job_id, "result")
        if blob is None:
            if not job.final:
                raise ServiceError(
                    409, E.JOB_NOT_FINISHED, f"job '{job_id}' is {job.status}; it has no result yet"
                )
            reason = f": {job.error['message']}" if job.error else ""
            raise ServiceError(
                409,
                E.JOB_HAS_NO_RESULT,
                f"job '{job_id}' ended {job.status} without a result{reason}",
            )
        return _stored_blob(request, blob)

    @app.get("/jobs/{job_id}/properties", tags=["jobs"])
    async def get_job_properties(job_id: str, svc: Svc, who: Who) -> Response:
        """The backend properties in force when the job was submitted (null for ideal
        simulators)."""
        job = svc.get_job(who, job_id)
        data = svc.store.properties(job.properties_id) if job.properties_id else None
        return Response(data or b"null", media_type="application/json")

    @app.get("/jobs/{job_id}/interim_results", tags=["jobs"])
    async def get_interim_results(job_id: str, svc: Svc, who: Who) -> Response:
        """Interim results the job has published so far, oldest first."""
        svc.get_job(who, job_id)
        items = [
            orjson.Fragment(e.data)
            for e in svc.store.events_since(job_id, 0)
            if e.type == "interim" and e.data is not None
        ]
        return json_response(items)

    @app.get("/jobs/{job_id}/events", tags=["jobs"])
    async def get_events(
        job_id: str,
        svc: Svc,
        who: Who,
        since: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> Response:
        """The job's events after seq ``since``, in order, as the stream sends them
        (result events without the result): what a client that cannot keep a WebSocket
        open polls instead, resuming by seq just the same."""
        svc.get_job(who, job_id)
        events = svc.store.events_since(job_id, since, limit)
        return json_response(
            {"events": [orjson.Fragment(encode_event(svc.store, e, False)) for e in events]}
        )

    @app.get("/jobs/{job_id}/logs", tags=["jobs"])
    async def get_logs(job_id: str, svc: Svc, who: Who) -> Response:
        """The job's log lines (its program's output), as text."""
        svc.get_job(who, job_id)
        lines = [
            orjson.loads(e.data).get("text", "")
            for e in svc.store.events_since(job_id, 0)
            if e.type == "log" and e.data is not None
        ]
        return Response("".join(lines), media_type="text/plain")

    @app.get("/jobs/{job_id}/metrics", tags=["jobs"])
    async def get_metrics(job_id: str, svc: Svc, who: Who) -> Response:
        """Timestamps of each step, the execution time, and a program's usage estimation
        and timings."""
        job = svc.get_job(who, job_id)
        steps = job.time_per_step
        # Time on the (simulated) quantum backend: all of a circuit job's run, and of a
        # program's only what its main took.
        if job.kind == "program":
            quantum_seconds = (job.timings or {}).get("execute")
        else:
            quantum_seconds = job.run_seconds
        return json_response(
            {
                "timestamps": {
                    "created": steps.get("CREATED"),
                    "queued": steps.get("QUEUED"),
                    "running": steps.get("RUNNING"),
                    "finished": steps.get("COMPLETED")
                    or steps.get("ERROR")
                    or steps.get("CANCELLED"),
                },
                "time_per_step": steps,
                "usage": {"seconds": job.run_seconds, "quantum_seconds": quantum_seconds},
                "usage_estimation": job.usage_estimation,
                "timings": job.timings,
                "n_experiments": job.n_experiments,
                "shots": job.shots,
                "attempts": job.attempts,
            }
        )

    @app.post("/jobs/{job_id}/cancel", tags=["jobs"])
    async def cancel_job(job_id: str, svc: Svc, who: Who) -> Response:
        """Cancel a queued or running job; 409 if it has already finished."""
        job = svc.own_job(who, job_id)
        if job.status in FINAL_STATUSES:
            raise ServiceError(
                409,
                E.JOB_FINISHED,
                f"job '{job_id}' is already {job.status} and cannot be cancelled",
            )
        svc.scheduler.cancel(job)
        return json_response(svc.view(svc.get_job(who, job_id)))

    @app.put("/jobs/{job_id}/tags", tags=["jobs"])
    async def put_tags(job_id: str, body: TagsUpdate, svc: Svc, who: Who) -> Response:
        """Replace the job's tags."""
        svc.own_job(who, job_id)
        svc.store.update_tags(job_id, list(dict.fromkeys(body.tags)))
        return json_response(svc.view(svc.get_job(who, job_id)))

    @app.put("/jobs/{job_id}/name", tags=["jobs"])
    async def put_name(job_id: str, body: NameUpdate, svc: Svc, who: Who) -> Response:
        """Rename the job."""
        svc.own_job(who, job_id)
        svc.store.update_name(job_id, body.name)
        return json_response(svc.view(svc.get_job(who, job_id)))

    app.include_router(sessions.router)

    @app.websocket("/stream")
    async def stream(ws: WebSocket) -> None:
        """Status, result, interim and log events of subscribed jobs (see stream.py)."""
        svc: Service = ws.app.state.service
        await ws.accept()
        header = ws.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        token = token or ws.query_params.get("token")
        try:
            who = svc.caller(token)
        except ServiceError as exc:
            await ws.send_text(orjson.dumps({"type": "error", **exc.body()["error"]}).decode())
            await ws.close(CLOSE_UNAUTHORIZED, exc.message)
            return
        session = StreamSession(
            ws, svc.store, svc.hub, svc.visible, who.user, who.project, config.heartbeat_seconds
        )
        await session.run()

    return app


def _stored_blob(request: Request, blob: bytes | None) -> Response:
    """Serve a zlib-compressed blob: as-is to clients that accept deflate, else inflated."""
    if blob is None:
        return Response(b"null", media_type="application/json")
    vary = {"Vary": "Accept-Encoding"}
    if _accepts(request.headers.get("accept-encoding", ""), "deflate"):
        headers = {**vary, "Content-Encoding": "deflate"}
        return Response(blob, media_type="application/json", headers=headers)
    return Response(zlib.decompress(blob), media_type="application/json", headers=vary)


def _accepts(header: str, coding: str) -> bool:
    """Whether an Accept-Encoding header accepts ``coding`` (q-values honoured)."""
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() not in (coding, "*"):
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


async def _stop_when_idle(service: Service) -> None:
    """Stop the service (as SIGTERM would) once it has had no job queued or running, no
    stream open and no request for ``idle_timeout`` seconds: the local service started by
    ``qdispatch.connect()`` goes away by itself when nobody needs it."""
    timeout = service.config.idle_timeout or 0.0
    while True:
        await asyncio.sleep(min(1.0, timeout / 4))
        busy = service.scheduler.active_jobs() or service.hub.subscriptions()
        if busy:
            service.last_request = time.monotonic()
        elif time.monotonic() - service.last_request > timeout:
            log.warning("idle for %.0f s: stopping", timeout)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _write_state(service: Service) -> bool:
    """Write the state file local clients find the service by (url, token, pid), mode 0600."""
    config = service.config
    assert config.state_file is not None
    token = None
    if config.loopback:
        # One local user, with a fresh token each start: clients read it from this file.
        # Tokens of earlier starts are revoked: only the state file's token is valid.
        user = config.local_user or getpass.getuser()
        service.store.revoke_tokens(user, origin="state-file")
        token = service.store.create_token(user, origin="state-file")
    state = {
        "url": config.url,
        "token": token,
        "pid": os.getpid(),
        "db": str(config.db),
        "version": __version__,
        "started": utcnow(),
    }
    path = config.state_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(state))
    os.replace(tmp, path)
    return True
