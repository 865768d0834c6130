"""The error codes of the service's answers, shared by the service and the client.

Every 4xx/5xx the service sends carries one of these as ``error.code``; the client maps
them to the documented exceptions. A code is stable: clients branch on it, so it never
changes meaning.
"""

from __future__ import annotations

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
OPERATOR_ONLY = "operator_only"  # 403: a route for operator tokens
ACTIVE_JOB_LIMIT = "active_job_limit"
# The front door's (docs/service.md, "Limits"): each answer carries a Retry-After, and
# the client retries after it.
RATE_LIMITED = "rate_limited"  # 429: the user is over their request rate
UPLOAD_LIMIT = "upload_limit"  # 429: the user has as many big bodies in flight as allowed
STREAM_LIMIT = "stream_limit"  # 429: the user has as many event streams open as allowed
# 429: the user has as many submissions whose inputs are being checked as allowed
# (--max-checks-per-user); the client retries after Retry-After, a few times.
CHECK_LIMIT = "check_limit"
SERVICE_BUSY = "service_busy"  # 503: the service reads as many big bodies as it allows
# 408: the request's body came slower than the service's minimum rate (a slow or stalled
# upload would otherwise hold its connection, and a big one its upload slot, for ever).
REQUEST_TIMEOUT = "request_timeout"
UNKNOWN_SESSION = "unknown_session"
SESSION_CLOSED = "session_closed"
SESSION_BACKEND_MISMATCH = "session_backend_mismatch"
SESSION_EXPIRED = "session_expired"  # a job's error code: its session ran out of time
# A job's error code: it ran longer than the service's per-job time limit (not retried).
TIME_LIMIT_EXCEEDED = "time_limit_exceeded"
RESULT_TOO_LARGE = "result_too_large"  # a job's error code: its result is over the limit
# A job's error code: it needed more memory than a local worker may use (--worker-memory-mb;
# not retried, the worker is replaced).
MEMORY_LIMIT_EXCEEDED = "memory_limit_exceeded"
# 507: the service's store cannot take more data (its disk, or its --max-store-mb, is full).
# Nothing was changed; reads still work. Retry later, once the operator has freed space.
STORAGE_FULL = "storage_full"
# 403: the user stores as much as their quota allows (--max-user-store-mb)
STORAGE_QUOTA = "storage_quota"
# 403 from the dashboard (/ui): a POST without its login's CSRF token, or from another
# origin; and the dashboard's answer for a job set it finds no job of.
CSRF_FAILED = "csrf_failed"
JOB_SET_NOT_FOUND = "job_set_not_found"

# The client's own codes (status 0: no answer came), on ``ConnectionFailedError``: the
# service could not be reached, or its TLS certificate was refused (never retried).
CONNECTION_FAILED = "connection_failed"
TLS_ERROR = "tls_error"

__all__ = [
    "ACTIVE_JOB_LIMIT",
    "CHECK_LIMIT",
    "CONNECTION_FAILED",
    "CSRF_FAILED",
    "INVALID_PARAMS",
    "INVALID_QOBJ",
    "INVALID_REQUEST",
    "JOB_FINISHED",
    "JOB_HAS_NO_RESULT",
    "JOB_NOT_FINISHED",
    "JOB_NOT_FOUND",
    "JOB_SET_NOT_FOUND",
    "MALFORMED_JSON",
    "MEMORY_LIMIT_EXCEEDED",
    "OPERATOR_ONLY",
    "PAYLOAD_TOO_LARGE",
    "RATE_LIMITED",
    "READ_ONLY",
    "REQUEST_TIMEOUT",
    "RESULT_TOO_LARGE",
    "SERVICE_BUSY",
    "SESSION_BACKEND_MISMATCH",
    "SESSION_CLOSED",
    "SESSION_EXPIRED",
    "STORAGE_FULL",
    "STORAGE_QUOTA",
    "STREAM_LIMIT",
    "TIME_LIMIT_EXCEEDED",
    "TLS_ERROR",
    "UNAUTHORIZED",
    "UNKNOWN_BACKEND",
    "UNKNOWN_IMAGE",
    "UNKNOWN_PROGRAM",
    "UNKNOWN_SESSION",
    "UNSUPPORTED_ENCODING",
    "UPLOAD_LIMIT",
]
