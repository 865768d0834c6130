"""The service's error answers: one exception, one JSON shape, documented codes.

Every 4xx/5xx the service sends has the body ``{"error": {"code": ..., "message": ...}}``;
``code`` is stable (clients branch on it), ``message`` names the problem for a person.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error answered to the client with ``status`` and a JSON body naming the problem."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body sent to the client."""
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


# Codes clients may branch on. ACTIVE_JOB_LIMIT in particular tells a job manager to wait
# for some of its jobs to finish and then go on, rather than fail.
MALFORMED_JSON = "malformed_json"
INVALID_REQUEST = "invalid_request"
INVALID_QOBJ = "invalid_qobj"
UNKNOWN_BACKEND = "unknown_backend"
UNKNOWN_PROGRAM = "unknown_program"
UNKNOWN_IMAGE = "unknown_image"
INVALID_PARAMS = "invalid_params"
JOB_NOT_FOUND = "job_not_found"
JOB_NOT_FINISHED = "job_not_finished"
JOB_FINISHED = "job_finished"
JOB_HAS_NO_RESULT = "job_has_no_result"
READ_ONLY = "read_only"
PAYLOAD_TOO_LARGE = "payload_too_large"
UNSUPPORTED_ENCODING = "unsupported_encoding"
UNAUTHORIZED = "unauthorized"
ACTIVE_JOB_LIMIT = "active_job_limit"
UNKNOWN_SESSION = "unknown_session"
SESSION_CLOSED = "session_closed"
SESSION_BACKEND_MISMATCH = "session_backend_mismatch"
SESSION_EXPIRED = "session_expired"  # a job's error code: its session ran out of time


def not_found(job_id: str) -> ServiceError:
    """The one answer for a job that does not exist *or* that the caller may not see."""
    return ServiceError(404, JOB_NOT_FOUND, f"job '{job_id}' not found")
