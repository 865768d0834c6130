"""Runtime programs: ``RuntimeJob``, its result decoders, its events, and submission.

A program job (docs/runtime.md) is submitted with ``service.run(program_id, inputs)`` or by
a primitive (``qdispatch.Sampler``/``Estimator``), and answered as a :class:`RuntimeJob`,
qiskit-ibm-runtime's job API:

- :mod:`.result_decoder`: ``ResultDecoder``, ``RunnerResult``;
- :mod:`.events`: ``EventRouter``, ``JobFeed`` (interim results off the one WebSocket);
- :mod:`.runtime_job`: ``RuntimeJob``;
- :mod:`.submission`: ``submit_program`` and the runtime options.
"""

from .events import EventRouter, JobFeed
from .result_decoder import ResultDecoder, RunnerResult
from .runtime_job import RuntimeJob
from .submission import submit_program

__all__ = [
    "EventRouter",
    "JobFeed",
    "ResultDecoder",
    "RunnerResult",
    "RuntimeJob",
    "submit_program",
]
