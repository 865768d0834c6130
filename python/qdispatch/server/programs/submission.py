"""``POST /jobs`` with a ``program_id``: the checks a program job passes before it is
queued, and what is stored with it (docs/runtime.md, "Program jobs")."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from .. import errors as E
from ..errors import ServiceError
from . import Program, Registry


def _decode_and_estimate(program: Program, params: bytes) -> tuple[int, int]:
    from qdispatch import encoding

    try:
        inputs = encoding.loads(params)
    except Exception as exc:
        raise ServiceError(
            400, E.INVALID_PARAMS, f"params do not decode: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(inputs, dict):
        raise ServiceError(400, E.INVALID_PARAMS, "params must be an object of the inputs")
    try:
        return program.estimate(inputs)
    except (ValueError, TypeError) as exc:  # InvalidInputs is a ValueError
        raise ServiceError(400, E.INVALID_PARAMS, str(exc)) from exc


async def program_job_fields(
    registry: Registry, envelope: dict[str, Any], seconds_per_execution: float
) -> dict[str, Any]:
    """The :class:`~qdispatch.server.store.NewJob` fields of a program job submitted with
    ``envelope`` (the request body), after its checks: ``unknown_program``,
    ``unknown_image``, ``invalid_params`` (the inputs do not decode, or the program's
    ``estimate`` refuses them). ``usage_estimation`` is the estimated number of
    executions times ``seconds_per_execution``."""
    program_id = envelope.get("program_id")
    program = registry.get(program_id) if isinstance(program_id, str) else None
    if program is None:
        raise ServiceError(
            400,
            E.UNKNOWN_PROGRAM,
            f"unknown program {program_id!r} (available: {', '.join(registry.ids())})",
        )
    image = envelope.get("image") or ""
    current = f"{program.id}:{program.version}"
    if not isinstance(image, str):
        raise ServiceError(400, E.INVALID_REQUEST, f"'image' must be str, got {image!r}")
    if image and image != current:
        raise ServiceError(
            400,
            E.UNKNOWN_IMAGE,
            f"unknown image '{image}': this service runs program '{program.id}' as "
            f"image '{current}' only",
        )
    params = envelope.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ServiceError(
            400,
            E.INVALID_PARAMS,
            f"params must be an object of the program's inputs, got {type(params).__name__}",
        )
    raw = orjson.dumps(params)
    # Decoding circuits and checking pubs costs milliseconds: not on the event loop.
    n_executions, shots = await asyncio.to_thread(_decode_and_estimate, program, raw)
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
    }
