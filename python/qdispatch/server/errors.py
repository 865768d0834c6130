"""The service's error answers: one exception, one JSON shape, documented codes.

Every 4xx/5xx the service sends has the body ``{"error": {"code": ..., "message": ...}}``;
``code`` is stable (clients branch on it), ``message`` names the problem for a person.
"""

from __future__ import annotations

from typing import Any

from ..codes import JOB_NOT_FOUND, STORAGE_FULL


class ServiceError(Exception):
    """An error answered to the client with ``status`` and a JSON body naming the problem."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body sent to the client."""
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class StorageFull(ServiceError):
    """The store refused a write for lack of space (SQLite's ``SQLITE_FULL``: the disk, or
    the store's ``--max-store-mb``, is full). Raised by the store for every write it
    refuses, after rolling the write back: answered ``507 storage_full``; what runs in
    the background (a job's outcome) keeps what it could not store and tries again."""

    def __init__(self) -> None:
        super().__init__(
            507,
            STORAGE_FULL,
            "the service's disk is full: its store cannot take more data, and nothing was "
            "changed. Retry later, once the operator has freed space",
        )


def not_found(job_id: str) -> ServiceError:
    """The one answer for a job that does not exist *or* that the caller may not see."""
    return ServiceError(404, JOB_NOT_FOUND, f"job '{job_id}' not found")
