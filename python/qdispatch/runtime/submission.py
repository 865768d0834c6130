"""Submitting a program job: ``submit_program`` and the runtime options it takes.

What ``service.run()``, ``Session.run()`` and the primitives call: it checks the inputs and
options the way qiskit-ibm-runtime documents them (``IBMInputValueError`` names the bad
one), encodes the inputs, and answers the new :class:`RuntimeJob`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from .. import __version__
from ..encoding import dumps
from ..exceptions import IBMInputValueError
from .result_decoder import ResultDecoder
from .runtime_job import RuntimeJob

if TYPE_CHECKING:
    from ..service import QDispatchService

__all__ = ["submit_program"]

_OPTION_KEYS = ("backend", "job_tags", "image", "name", "share_level", "session_id")


def _options_dict(options: dict[str, Any] | Any | None) -> dict[str, Any]:
    """Runtime options as a dict, from a dict or an options object with attributes."""
    if options is None:
        return {}
    if isinstance(options, dict):
        unknown = sorted(set(options) - set(_OPTION_KEYS) - {"log_level", "max_execution_time"})
        if unknown:
            raise IBMInputValueError(
                f"unknown runtime option(s) {', '.join(unknown)} (known: {', '.join(_OPTION_KEYS)})"
            )
        return dict(options)
    return {k: getattr(options, k) for k in _OPTION_KEYS if getattr(options, k, None) is not None}


def submit_program(
    service: QDispatchService,
    program_id: str,
    inputs: dict[str, Any],
    options: dict[str, Any] | Any | None = None,
    *,
    callback: Callable[[str, Any], Any] | None = None,
    result_decoder: type[ResultDecoder] | Sequence[type[ResultDecoder]] | None = None,
    session_id: str | None = None,
    job_tags: list[str] | None = None,
    image: str | None = None,
    encoded_inputs: bytes | None = None,
    keep_inputs: bool = True,
) -> RuntimeJob:
    """``POST /jobs`` for a program; what ``service.run`` and the primitives call.

    ``encoded_inputs`` is the inputs' JSON when the caller has already encoded them (the
    primitives write their pubs in one pass); ``inputs`` is then kept as the job's
    ``inputs`` without being encoded again (unless ``keep_inputs`` is false: then
    ``job.inputs`` reads them back from the service when asked).
    """
    if not isinstance(program_id, str) or not program_id:
        raise IBMInputValueError(f"program_id must be a non-empty string, got {program_id!r}")
    if not isinstance(inputs, dict):
        raise IBMInputValueError(f"inputs must be a dict of the program's inputs, got {inputs!r}")
    opts = _options_dict(options)
    backend = opts.get("backend")
    backend_name = getattr(backend, "name", backend)
    if backend_name is not None and not isinstance(backend_name, str):
        raise IBMInputValueError(f"options['backend'] must be a backend or its name: {backend!r}")
    tags = list(job_tags if job_tags is not None else opts.get("job_tags") or [])
    if not all(isinstance(t, str) for t in tags):
        raise IBMInputValueError(f"job_tags must be a list of strings, got {tags!r}")
    if encoded_inputs is None:
        try:
            encoded_inputs = dumps(inputs)
        except (TypeError, ValueError) as exc:
            raise IBMInputValueError(f"inputs cannot be encoded: {exc}") from exc
    envelope: dict[str, Any] = {
        "program_id": program_id,
        "backend": backend_name,
        "params": orjson.Fragment(encoded_inputs),
        "tags": tags,
        "name": opts.get("name"),
        "session_id": session_id or opts.get("session_id"),
        "image": image or opts.get("image"),
        "share_level": opts.get("share_level") or "none",
        "client_info": {"qdispatch": __version__},
    }
    body = orjson.dumps({k: v for k, v in envelope.items() if v is not None})
    info = service.api.submit_program(body)
    backend_obj = backend if backend is not None and not isinstance(backend, str) else None
    return RuntimeJob.from_info(
        service,
        info,
        backend=backend_obj,
        params=inputs if keep_inputs else None,
        user_callback=callback,
        result_decoder=result_decoder,
    )
