"""``/jobs``: submit a job, list and read jobs (the job, its inputs, result, properties,
interim results, events, logs, metrics), cancel it, and change its tags and name.

``POST /jobs`` never hands its body to pydantic whole: the Rust core splits the Qobj (it
may be hundreds of megabytes) and a program's ``params`` off the small envelope, then
:class:`JobCreate` validates the envelope, the Rust core the Qobj against the backend,
and the program's own checks its ``params`` (``programs/submission.py``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ... import _native
from ... import codes as E
from ...constants import (
    CONTROL_CHARACTERS,
    FINAL_STATUSES,
    MAX_BULK_IDS,
    MAX_CLIENT_INFO_ITEMS,
    MAX_CLIENT_INFO_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    SHARE_LEVELS,
)
from ...monitor import set_tags_problem
from .. import scheduler as scheduling
from ..deps import (
    Svc,
    Who,
    can_see,
    iso_timestamp,
    json_response,
    own_job,
    unknown_backend,
    visible_job,
)
from ..errors import ServiceError, not_found
from ..programs import InvalidInputs, Limits
from ..programs.submission import program_job_fields
from ..service import Service
from ..store import Job, JobFilter, NewJob, compress
from ..stream import encode_event

DEFAULT_SHOTS = 1024

T = TypeVar("T")
# A stored blob that inflates to at most this much is inflated on the event loop for a
# client that does not take deflate; a larger one in a worker thread, piecewise.
_INFLATE_ON_LOOP = 1024 * 1024

router = APIRouter(tags=["jobs"])


# -- request bodies ---------------------------------------------------------------------


def _invalid(message: str) -> PydanticCustomError:
    """A validation error whose message is the service's (no context: not a template)."""
    return PydanticCustomError(E.INVALID_REQUEST, message)


class JobCreate(BaseModel):
    """Body of ``POST /jobs``: a ``qobj`` for a ``backend``, or a ``program_id`` with its
    ``params`` (docs/runtime.md).

    The service validates it without ``qobj`` and ``params``: those are split off the body
    natively, so a Qobj is read by the Rust core only and never becomes a Python tree. A
    problem is ``400 invalid_request`` naming the field (``'name' must be str, got 5``);
    when there are several, the first in the order of the fields below. Fields the
    service does not know are ignored.
    """

    model_config = ConfigDict(extra="ignore")

    # The order is the order in which problems are reported.
    program_id: str | None = Field(None, description="A program (GET /programs) to run.")
    backend: str | None = Field(
        None, description="Backend to run on; a program job without one gets the least busy."
    )
    session_id: str | None = None
    share_level: Literal["none", "project", "global"] = Field(
        "none", description="none | project | global"
    )
    image: str | None = Field(None, description="'<program_id>:<version>' of the program.")
    client_info: dict[str, str] | None = Field(None, description="Values are stringified.")
    name: str | None = None
    tags: list[str] = Field(default_factory=list, description="Duplicates are dropped.")
    experiment_id: str | None = None
    qobj: dict[str, Any] | None = Field(
        None, description="A QasmQobj (docs/protocol.md), read by the Rust core."
    )
    params: dict[str, Any] | None = Field(
        None, description="The program's inputs, encoded as qdispatch.encoding writes them."
    )

    @model_validator(mode="before")
    @classmethod
    def _image_of_programs_only(cls, data: Any) -> Any:
        # Only a program job reads its image; a circuit job's is ignored, unchecked.
        if isinstance(data, dict) and data.get("program_id") is None and "image" in data:
            return {k: v for k, v in data.items() if k != "image"}
        return data

    @field_validator("program_id", "backend", "session_id", "name", "experiment_id", mode="before")
    @classmethod
    def _string(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not isinstance(value, str):
            raise _invalid(f"'{info.field_name}' must be str, got {value!r}")
        if value is not None and len(value) > MAX_NAME_LENGTH:
            raise _invalid(
                f"'{info.field_name}' has {len(value)} characters (at most {MAX_NAME_LENGTH})"
            )
        return value if value is None else _printable(str(info.field_name), value)

    @field_validator("image", mode="before")
    @classmethod
    def _image(cls, value: Any) -> Any:
        if not value:
            return None  # an empty image (null, "", false…) asks for none
        if not isinstance(value, str):
            raise _invalid(f"'image' must be str, got {value!r}")
        return value

    @field_validator("backend")
    @classmethod
    def _no_backend(cls, value: str | None) -> str | None:
        return value or None  # "" is no backend

    @field_validator("share_level", mode="before")
    @classmethod
    def _share_level(cls, value: Any) -> Any:
        if value is None or value == "":
            return "none"
        if not isinstance(value, str):
            raise _invalid(f"'share_level' must be str, got {value!r}")
        if value not in SHARE_LEVELS:
            raise _invalid(f"share_level must be one of {', '.join(SHARE_LEVELS)}")
        return value

    @field_validator("client_info", mode="before")
    @classmethod
    def _client_info(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _invalid(f"'client_info' must be dict, got {value!r}")
        info = {
            _printable("client_info", str(k)): _printable("client_info", str(v))
            for k, v in value.items()
        }
        if len(info) > MAX_CLIENT_INFO_ITEMS or any(
            len(k) > MAX_CLIENT_INFO_LENGTH or len(v) > MAX_CLIENT_INFO_LENGTH
            for k, v in info.items()
        ):
            raise _invalid(
                f"'client_info' may hold {MAX_CLIENT_INFO_ITEMS} items of at most "
                f"{MAX_CLIENT_INFO_LENGTH} characters"
            )
        return info or None

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise _invalid(f"'tags' must be a list of strings, got {value!r}")
        return _bounded_tags(value)


def _bounded_tags(tags: list[str]) -> list[str]:
    unique = list(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS or any(len(t) > MAX_TAG_LENGTH for t in unique):
        raise _invalid(f"a job has at most {MAX_TAGS} tags of at most {MAX_TAG_LENGTH} characters")
    for tag in unique:
        _printable("tags", tag)
    # The job manager's set tags are read back by the dashboard and `qdispatch sets`:
    # anyone may write them, so their form and numbers are checked here, once.
    problem = set_tags_problem(unique)
    if problem is not None:
        raise _invalid(problem)
    return unique


def _printable(field: str, value: str) -> str:
    """``value``, refused (400 naming ``field``) if it holds a control character: what a
    user names is shown to others, in terminals that would act on an escape sequence."""
    found = CONTROL_CHARACTERS.search(value)
    if found is not None:
        raise _invalid(
            f"'{field}' holds the control character {found.group()!r} at {found.start()}; "
            "names, tags and ids take printable characters only"
        )
    return value


class TagsUpdate(BaseModel):
    """Body of ``PUT /jobs/{id}/tags``: the complete new list of tags."""

    tags: list[str]

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        _bounded_tags(value)
        return value


class NameUpdate(BaseModel):
    """Body of ``PUT /jobs/{id}/name``."""

    name: str | None = Field(max_length=MAX_NAME_LENGTH)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return value if value is None else _printable("name", value)


class BulkStatus(BaseModel):
    """Body of ``POST /jobs:status``."""

    ids: list[str] = Field(max_length=MAX_BULK_IDS)


def split_body(raw: bytes) -> tuple[JobCreate, bytes | None, bytes | None]:
    """A submission's validated envelope, its Qobj and its program ``params`` (raw)."""
    try:
        envelope_raw, qobj = _native.split_submission(raw)
    except _native.MalformedPayloadError as exc:
        raise ServiceError(400, E.MALFORMED_JSON, str(exc)) from exc
    # A program's params (megabytes of circuits, perhaps) stay bytes: the program's
    # checks read what they need of them.
    envelope_raw, params = _native.split_member(envelope_raw, "params", "request body")
    return parse_envelope(envelope_raw), qobj, params


def validate(qobj: bytes, spec: _native.BackendSpec) -> _native.QobjSummary:
    """The Qobj's summary, checked against the backend (400 otherwise)."""
    try:
        return _native.validate_qobj(qobj, spec)
    except _native.MalformedPayloadError as exc:
        raise ServiceError(400, E.MALFORMED_JSON, str(exc)) from exc
    except _native.InvalidQobjError as exc:
        raise ServiceError(400, E.INVALID_QOBJ, str(exc)) from exc


async def _off_loop(big: bool, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``: in a worker thread for a big body, else right here (a thread hop
    costs more than small work)."""
    return await asyncio.to_thread(fn, *args) if big else fn(*args)


def parse_envelope(raw: bytes) -> JobCreate:
    """The submission's envelope (its body without ``qobj`` and ``params``), validated."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ServiceError(400, E.MALFORMED_JSON, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ServiceError(400, E.MALFORMED_JSON, "request body must be a JSON object")
    try:
        return JobCreate.model_validate(value)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        message = first["msg"]
        if first["type"] != E.INVALID_REQUEST:  # not one of JobCreate's own messages
            message = f"{'.'.join(str(p) for p in first['loc'])}: {message}"
        raise ServiceError(400, E.INVALID_REQUEST, message) from None


# -- limits of a circuit job --------------------------------------------------------------


def _check_qobj_limits(limits: Limits, qobj: bytes, n_experiments: int, shots: int) -> None:
    """A Qobj's shots in all within ``max_job_shots``, and, with ``memory`` on, a result
    that can fit in ``max_result_bytes`` (else 400 ``invalid_qobj`` naming the limit).
    The native validator has checked the shots of each experiment against the backend."""
    try:
        total = limits.total(n_experiments * shots, f"{n_experiments} experiments x {shots} shots")
        if _memory_on(qobj):
            limits.memory(total, "config.memory is true")
    except InvalidInputs as exc:
        raise ServiceError(400, E.INVALID_QOBJ, str(exc)) from exc


def _memory_on(qobj: bytes) -> bool:
    """Whether the Qobj's config asks for per-shot memory. The Qobj is searched for the
    words first (cheap, and absent from most); only then is its config split off and read.
    An experiment's own config is not read here: its result is measured when it is done."""
    if b'"memory":true' not in qobj and b'"memory": true' not in qobj:
        return False
    _, config = _native.split_member(qobj, "config", "qobj")
    if config is None:
        return False
    try:
        parsed = orjson.loads(config)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("memory") is True


# -- the JSON form of a job --------------------------------------------------------------


def view(
    svc: Service,
    job: Job,
    queue_info: bool = True,
    attempts: bool = False,
    clock: scheduling.Clock | None = None,
) -> dict[str, Any]:
    """The JSON form of a job (``queue_info`` only when asked: it costs a pass over the
    backend's queue the first time after each change; ``clock``, one reading for a list of
    jobs; ``attempts``, each run on a worker and how it ended, only for one job: it reads
    the job's status events)."""
    extra = {"attempts": svc.store.attempts(job.id)} if attempts else {}
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
        "run_mode": svc.sessions.run_mode(job),
        "queue_info": svc.scheduler.queue_info(job, clock) if queue_info else None,
        "last_seq": job.last_seq,
        "run_seconds": job.run_seconds,
        "image": job.image,
        "program_version": job.program_version,
        "usage_estimation": job.usage_estimation,
        **extra,
    }


# -- routes ------------------------------------------------------------------------------


def _check_active_jobs(svc: Service, user: str) -> None:
    """429 ``active_job_limit`` when ``user`` has as many queued and running jobs as allowed."""
    limit = svc.config.active_job_limit
    if limit is None:
        return
    active = svc.scheduler.active_jobs_of(user)
    if active >= limit:
        raise ServiceError(
            429,
            E.ACTIVE_JOB_LIMIT,
            f"user '{user}' has {active} active jobs, the limit is {limit}; "
            "submit more when some have finished",
            active_jobs=active,
            limit=limit,
        )


def _check_storage_quota(svc: Service, user: str) -> None:
    """403 ``storage_quota`` when ``user``'s jobs store as much as the quota allows, checked
    against what is stored already. What jobs admitted before then store on top is
    bounded by the scheduler: a job that starts while its owner is at the quota ends
    ``storage_quota``, and a running one's events stop at what was left of it."""
    quota = svc.config.max_user_store_bytes
    if quota <= 0:
        return
    stored = svc.store.stored_bytes(user)
    if stored >= quota:
        mib = 1024 * 1024
        raise ServiceError(
            403,
            E.STORAGE_QUOTA,
            f"user '{user}' stores {stored / mib:.1f} MiB of jobs, at their quota of "
            f"{quota / mib:.1f} MiB; delete finished jobs (qdispatch delete, "
            "service.delete_job) to submit more",
            stored_bytes=stored,
            quota_bytes=quota,
        )


@router.post(
    "/jobs",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}}},
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
            return json_response(view(svc, earlier, queue_info=False), 200)
    # The user's own limits first: a user at one costs no reading, parsing or checking.
    _check_active_jobs(svc, who.user)
    _check_storage_quota(svc, who.user)
    raw = await request.body()  # limited and decompressed by RequestBodies
    big = len(raw) > svc.config.big_body_bytes
    # A big body is split and checked in a worker thread (the Rust core releases the
    # GIL): the event loop goes on serving everyone else meanwhile.
    body, qobj, params = await _off_loop(big, split_body, raw)
    backend_name = body.backend
    if backend_name and backend_name not in svc.catalog:
        raise unknown_backend(svc, backend_name, 400)
    # A session job without a backend takes the session's; a program job without
    # either runs on the least busy backend.
    backend_name = svc.sessions.check_job(who.user, body.session_id, backend_name)
    if body.program_id is not None and not backend_name:
        backend_name = svc.scheduler.least_busy(list(svc.catalog))
    if not backend_name:
        raise ServiceError(400, E.INVALID_REQUEST, "'backend' is required")
    if qobj is None and body.program_id is None:
        raise ServiceError(400, E.INVALID_REQUEST, "'qobj' is required (or 'program_id')")
    if qobj is not None and body.program_id is not None:
        raise ServiceError(400, E.INVALID_REQUEST, "a job has a 'qobj' or a 'program_id', not both")
    if body.program_id is not None:
        rate = svc.scheduler.seconds_per_experiment(backend_name)
        payload = await program_job_fields(
            svc.programs,
            svc.input_checker,
            body.program_id,
            body.image,
            params,
            rate,
            svc.limits(backend_name),
            svc.config.shard_max_pubs,
            user=who.user,
        )
    else:
        assert qobj is not None
        summary = await _off_loop(big, validate, qobj, svc.specs[backend_name])
        shots = summary.shots or DEFAULT_SHOTS
        _check_qobj_limits(svc.limits(backend_name), qobj, summary.n_experiments, shots)
        if b'"qpy"' in qobj:
            # Dynamic circuits travel as QPY, which only a checking process decodes here.
            await svc.input_checker.check_qobj(qobj, user=who.user)
        payload = {
            "kind": "circuit",
            "inputs": qobj,
            "n_experiments": summary.n_experiments,
            "shots": shots,
            "n_instructions": summary.n_instructions,
        }
    inputs_blob = None
    if len(payload["inputs"]) > svc.config.big_body_bytes:
        inputs_blob = await asyncio.to_thread(compress, payload["inputs"])
    new = NewJob(
        owner=who.user,
        backend=backend_name,
        **payload,
        inputs_blob=inputs_blob,
        name=body.name,
        tags=body.tags,
        share_level=body.share_level,
        session_id=body.session_id,
        idempotency_key=key,
        client_info=body.client_info,
        experiment_id=body.experiment_id,
        properties_id=svc.properties_ids.get(backend_name),
    )
    try:
        job, event = svc.store.create_job(new)
    except sqlite3.IntegrityError:
        # A concurrent retry with the same Idempotency-Key won the race: its job is ours.
        earlier = svc.store.job_by_idempotency_key(who.user, key or "")
        if earlier is None:
            raise
        return json_response(view(svc, earlier, queue_info=False), 200)
    # QUEUED is published before the job may start (submit() dispatches it if a worker is
    # free, and a job that cannot start ends at once): subscribers see its events in order.
    svc.hub.publish(job, [event])
    svc.scheduler.submit(job, payload["inputs"])
    # One turn of the loop before answering: a job that submit() started reaches its
    # worker now (its task's first step sends it), and simulates while the answer travels.
    await asyncio.sleep(0)
    return json_response(view(svc, job, queue_info=False), 201)


@router.get("/jobs")
async def list_jobs(
    svc: Svc,
    who: Who,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    skip: Annotated[int, Query(ge=0)] = 0,
    backend: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
    name: Annotated[str | None, Query(description="regular expression, matched partially")] = None,
    tags: Annotated[list[str] | None, Query()] = None,
    tags_operator: Annotated[str, Query(pattern="^(OR|AND)$")] = "OR",
    session_id: str | None = None,
    program_id: str | None = None,
    kind: str | None = None,
    created_after: str | None = None,
    created_before: str | None = None,
    descending: bool = True,
    user: Annotated[str | None, Query(description="only this user's jobs")] = None,
) -> Response:
    """Jobs the caller may see (an operator: every user's), newest first, with filters
    and paging."""
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
        created_after=iso_timestamp(created_after),
        created_before=iso_timestamp(created_before),
        owner=user,
    )
    visible_to = None if who.operator else (who.user, who.project)
    jobs, total = svc.store.list_jobs(visible_to, filters, limit, skip, descending)
    clock = scheduling.now()  # one reading: the estimates keep the queue's order
    return json_response({"jobs": [view(svc, j, clock=clock) for j in jobs], "count": total})


@router.post("/jobs:status")
async def bulk_status(body: BulkStatus, svc: Svc, who: Who) -> Response:
    """Status of many jobs in one call; ids the caller cannot see are ``missing``."""
    found = svc.store.jobs_by_ids(body.ids)
    out: dict[str, Any] = {}
    clock = scheduling.now()  # one reading: the estimates keep the queue's order
    for job_id, job in found.items():
        if can_see(svc, who, job):
            out[job_id] = {
                "status": job.status,
                "error": job.error,
                "last_seq": job.last_seq,
                "queue_info": svc.scheduler.queue_info(job, clock),
            }
    return json_response({"statuses": out, "missing": [i for i in body.ids if i not in out]})


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, svc: Svc, who: Who) -> Response:
    """One job, with its attempts."""
    return json_response(view(svc, visible_job(svc, who, job_id), attempts=True))


@router.get("/jobs/{job_id}/qobj")
async def get_qobj(job_id: str, request: Request, svc: Svc, who: Who) -> Response:
    """The Qobj the job was submitted with."""
    visible_job(svc, who, job_id)
    return _stored_blob(request, svc.store.data(job_id, "inputs"))


@router.get("/jobs/{job_id}/inputs")
async def get_inputs(job_id: str, request: Request, svc: Svc, who: Who) -> Response:
    """What the job was submitted with: a program's encoded inputs (a circuit job's
    Qobj)."""
    visible_job(svc, who, job_id)
    return _stored_blob(request, svc.store.data(job_id, "inputs"))


@router.get("/jobs/{job_id}/results")
async def get_results(job_id: str, request: Request, svc: Svc, who: Who) -> Response:
    """The job's result: a qiskit ``Result`` dict, or what a program's ``main``
    returned (encoded). A failed job's partial result is returned when it has one;
    the job's ``error`` says what failed."""
    job = visible_job(svc, who, job_id)
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


@router.get("/jobs/{job_id}/properties")
async def get_job_properties(job_id: str, svc: Svc, who: Who) -> Response:
    """The backend properties in force when the job was submitted (null for ideal
    simulators)."""
    job = visible_job(svc, who, job_id)
    data = svc.store.properties(job.properties_id) if job.properties_id else None
    return Response(data or b"null", media_type="application/json")


@router.get("/jobs/{job_id}/interim_results")
async def get_interim_results(job_id: str, svc: Svc, who: Who) -> Response:
    """Interim results the job has published so far, oldest first."""
    visible_job(svc, who, job_id)
    items = [
        orjson.Fragment(e.data)
        for e in svc.store.events_since(job_id, 0)
        if e.type == "interim" and e.data is not None
    ]
    return json_response(items)


@router.get("/jobs/{job_id}/events")
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
    visible_job(svc, who, job_id)
    events = svc.store.events_since(job_id, since, limit)
    return json_response(
        {"events": [orjson.Fragment(encode_event(svc.store, e, 0)) for e in events]}
    )


@router.get("/jobs/{job_id}/logs")
async def get_logs(job_id: str, svc: Svc, who: Who) -> Response:
    """The job's log lines (its program's output), as text."""
    visible_job(svc, who, job_id)
    lines = [
        orjson.loads(e.data).get("text", "")
        for e in svc.store.events_since(job_id, 0)
        if e.type == "log" and e.data is not None
    ]
    return Response("".join(lines), media_type="text/plain")


@router.get("/jobs/{job_id}/metrics")
async def get_metrics(job_id: str, svc: Svc, who: Who) -> Response:
    """Timestamps of each step, the execution time, and a program's usage estimation
    and timings."""
    job = visible_job(svc, who, job_id)
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
                "finished": steps.get("COMPLETED") or steps.get("ERROR") or steps.get("CANCELLED"),
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


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, svc: Svc, who: Who) -> Response:
    """Cancel a queued or running job (its owner, or an operator); 409 if it has already
    finished."""
    job = own_job(svc, who, job_id, operator=True)
    if job.status in FINAL_STATUSES:
        raise ServiceError(
            409,
            E.JOB_FINISHED,
            f"job '{job_id}' is already {job.status} and cannot be cancelled",
        )
    svc.scheduler.cancel(job)
    return json_response(view(svc, visible_job(svc, who, job_id)))


@router.delete("/jobs/{job_id}")
async def delete_job(job_id: str, svc: Svc, who: Who) -> Response:
    """Delete a finished job and everything stored with it (its owner, or an operator);
    409 while it is queued or running (cancel it first). Cannot be undone."""
    job = own_job(svc, who, job_id, operator=True)
    if job.status not in FINAL_STATUSES:
        raise ServiceError(
            409,
            E.JOB_NOT_FINISHED,
            f"job '{job_id}' is {job.status}; only a finished job can be deleted (cancel it first)",
        )
    deleted = 0
    for step in svc.store.delete_job_steps(job_id):
        deleted += step
        await asyncio.sleep(0)  # between two transactions: let everyone else in
    if not deleted:
        raise not_found(job_id)  # deleted meanwhile (a final status never changes)
    return Response(status_code=204)


@router.put("/jobs/{job_id}/tags")
async def put_tags(job_id: str, body: TagsUpdate, svc: Svc, who: Who) -> Response:
    """Replace the job's tags."""
    own_job(svc, who, job_id)
    svc.store.update_tags(job_id, list(dict.fromkeys(body.tags)))
    return json_response(view(svc, visible_job(svc, who, job_id)))


@router.put("/jobs/{job_id}/name")
async def put_name(job_id: str, body: NameUpdate, svc: Svc, who: Who) -> Response:
    """Rename the job."""
    own_job(svc, who, job_id)
    svc.store.update_name(job_id, body.name)
    return json_response(view(svc, visible_job(svc, who, job_id)))


# -- stored blobs ------------------------------------------------------------------------


def _stored_blob(request: Request, blob: bytes | None) -> Response:
    """Serve a zlib-compressed blob: as-is to clients that accept deflate, else inflated."""
    if blob is None:
        return Response(b"null", media_type="application/json")
    vary = {"Vary": "Accept-Encoding"}
    if _accepts(request.headers.get("accept-encoding", ""), "deflate"):
        headers = {**vary, "Content-Encoding": "deflate"}
        return Response(blob, media_type="application/json", headers=headers)
    inflater = zlib.decompressobj()
    head = inflater.decompress(blob, _INFLATE_ON_LOOP + 1)
    if len(head) <= _INFLATE_ON_LOOP:
        return Response(head, media_type="application/json", headers=vary)
    # A big one is inflated piecewise in a worker thread (Starlette iterates a plain
    # iterator in its thread pool), never whole in memory nor on the event loop.
    pieces = _inflated(inflater, head)
    return StreamingResponse(pieces, media_type="application/json", headers=vary)


def _inflated(inflater: Any, head: bytes) -> Iterator[bytes]:
    yield head
    while inflater.unconsumed_tail:
        yield inflater.decompress(inflater.unconsumed_tail, _INFLATE_ON_LOOP)
    yield inflater.flush()


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
