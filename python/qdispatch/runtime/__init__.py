"""Runtime programs (its modules follow: decoders, events, the job, submission)."""

from .runtime_job import (
    EventRouter,
    JobFeed,
    ResultDecoder,
    RunnerResult,
    RuntimeJob,
    submit_program,
)

__all__ = [
    "EventRouter",
    "JobFeed",
    "ResultDecoder",
    "RunnerResult",
    "RuntimeJob",
    "submit_program",
]
