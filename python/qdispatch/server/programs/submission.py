"""``POST /jobs`` with a ``program_id``: the checks a program job passes before it is
queued, and what is stored with it (docs/runtime.md, "Program jobs")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from qdispatch import _native, encoding
from qdispatch._native import BackendSpec

from ... import codes as E
from ..errors import ServiceError
from . import Limits, Program, Registry
from .sharding import SHARD_MAX_PUBS, pub_runs, shardable

if TYPE_CHECKING:
    from .checker import InputChecker


def decode_and_estimate(
    program: Program, params: bytes, circuit_checks: BackendSpec, limits: Limits
) -> tuple[int, int, list[int] | None]:
    """Decode a program job's params and run the program's ``estimate`` over them:
    (executions, shots per execution, each pub's executions for a program that may run
    as shards, else ``None``), or the :class:`ServiceError` that refuses them. The service
    runs it in a checking process (:mod:`.checker`), never in its own."""
    # Inputs a program declares as Qobjs (QOBJ_INPUTS) are validated natively, and
    # estimate() sees their summaries, never a Python tree of them (a Qobj of thousands
    # of circuits would take a second to build).
    qobjs: dict[str, bytes] = {}
    rest = params
    for key in getattr(program.module, "QOBJ_INPUTS", ()):
        try:
            rest, member = _native.split_member(rest, key, "params")
        except _native.MalformedPayloadError as exc:
            raise ServiceError(400, E.INVALID_PARAMS, str(exc)) from exc
        if member is not None and member.strip() != b"null":
            qobjs[key] = member
    try:
        inputs = encoding.loads(rest, settings_types=getattr(program.module, "SETTINGS_TYPES", ()))
    except Exception as exc:
        raise ServiceError(
            400, E.INVALID_PARAMS, f"params do not decode: {type(exc).__name__}: {exc}"
        ) from exc
    for key, qobj in qobjs.items():
        try:
            inputs[key] = _native.validate_qobj(qobj, circuit_checks)
        except ValueError as exc:  # MalformedPayloadError, InvalidQobjError
            raise ServiceError(400, E.INVALID_PARAMS, f"{key}: {exc}") from exc
    try:
        if shardable(program.ref):
            per_pub, shots = program.estimate_pubs(inputs, limits)
            return sum(per_pub), shots, per_pub
        n_executions, shots = program.estimate(inputs, limits)
        return n_executions, shots, None
    except (ValueError, TypeError) as exc:  # InvalidInputs is a ValueError
        raise ServiceError(400, E.INVALID_PARAMS, str(exc)) from exc


async def program_job_fields(
    registry: Registry,
    checker: InputChecker,
    program_id: str,
    image: str | None,
    params: bytes | None,
    seconds_per_execution: float,
    limits: Limits,
    max_shard_pubs: int = SHARD_MAX_PUBS,
    *,
    user: str = "",
) -> dict[str, Any]:
    """The :class:`~qdispatch.server.store.NewJob` fields of a program job submitted with
    ``program_id`` and ``image`` (the request's, already checked to be strings) and
    ``params`` (their raw JSON, which only the program's checks read), after its checks:
    ``unknown_program``, ``unknown_image``, ``invalid_params`` (the inputs do not decode,
    the program's ``estimate`` refuses them, or they are over the job's ``limits``: shots
    over the backend's ``max_shots``, shots in all over ``max_job_shots``).
    ``usage_estimation`` is the estimated
    number of executions times ``seconds_per_execution``. Each pub's executions, what
    the scheduler shards the job by, are kept for at most ``max_shard_pubs`` pubs.
    ``user``'s checks are bounded per user (``429 check_limit``)."""
    program = registry.get(program_id)
    if program is None:
        raise ServiceError(
            400,
            E.UNKNOWN_PROGRAM,
            f"unknown program {program_id!r} (available: {', '.join(registry.ids())})",
        )
    image = image or ""
    current = f"{program.id}:{program.version}"
    if image and image != current:
        raise ServiceError(
            400,
            E.UNKNOWN_IMAGE,
            f"unknown image '{image}': this service runs program '{program.id}' as "
            f"image '{current}' only",
        )
    raw = b"{}" if params is None or params.strip() == b"null" else params
    if not raw.lstrip().startswith(b"{"):
        try:
            kind = type(orjson.loads(raw)).__name__
        except orjson.JSONDecodeError:
            kind = "not JSON"
        raise ServiceError(
            400, E.INVALID_PARAMS, f"params must be an object of the program's inputs, got {kind}"
        )
    # Decoding what a user sent runs qiskit code that cannot all be bounded from outside:
    # in a checking process, with a memory and a time limit, never in the service's own.
    n_executions, shots, per_pub = await checker.check(
        program.id, raw, limits.backend, limits, max_shard_pubs, user=user
    )
    return {
        "kind": "program",
        "program_id": program.id,
        "inputs": raw,
        "n_experiments": n_executions,
        "shots": shots,
        "n_instructions": 0,
        "image": image,
        "program_version": program.version,
        "usage_estimation": {"quantum_seconds": n_executions * seconds_per_execution},
        # What the scheduler splits the job into shards by (docs/service.md, "Sharding"):
        # at most ``max_shard_pubs`` figures (the check sends none for more), so this and
        # the reading at each dispatch stay short on the event loop.
        "pub_runs": pub_runs(per_pub) if per_pub and len(per_pub) <= max_shard_pubs else None,
    }
