"""The exceptions users catch, with the names and bases of the Qiskit job API."""

from __future__ import annotations

from typing import Any

from qiskit.exceptions import QiskitError
from qiskit.providers.exceptions import JobError, JobTimeoutError, QiskitBackendNotFoundError


class IBMQError(QiskitError):
    """Base class for errors raised by qdispatch's IBMQ-compatible classes."""


class IBMQApiError(IBMQError):
    """An error answered by the job service, or no answer at all.

    ``status`` is the HTTP status (0 when the service could not be reached) and ``code``
    the service's error code (docs/protocol.md), so callers can branch on either.
    """

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class InsecureConnectionWarning(UserWarning):
    """``connect(..., verify=False)``: the service's TLS certificate is not checked, so
    anyone on the path can read or change tokens, circuits and results. For testing only;
    trust a private CA with ``verify="ca.pem"`` instead."""


class IBMQJobError(JobError, IBMQError):
    """Base class for errors raised by a job."""


class IBMQJobApiError(IBMQJobError):
    """Errors that occur unexpectedly when querying the server about a job."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class IBMQJobFailureError(IBMQJobError):
    """Errors raised when a job failed."""


class IBMQJobInvalidStateError(IBMQJobError):
    """Errors raised when a job is not in a valid state for the operation."""


class IBMQJobTimeoutError(JobTimeoutError, IBMQJobError):
    """Errors raised when a job operation times out."""


class IBMQBackendError(IBMQError):
    """Base class for errors raised by a backend."""


class IBMQBackendApiError(IBMQBackendError):
    """Errors that occur unexpectedly when querying the server about a backend, or when
    the server refuses a submission (the message is the server's, naming the problem)."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class IBMQBackendNotFoundError(IBMQBackendApiError, QiskitBackendNotFoundError):
    """The service has no backend of that name. Both qdispatch's API error (``status`` 404)
    and qiskit's ``QiskitBackendNotFoundError``, which qiskit-ibm-runtime's
    ``service.backend(name)`` raises, so code written for either catches it."""


class IBMQBackendValueError(IBMQBackendError, ValueError):
    """Value errors raised by a backend: what was given to ``run`` cannot be run."""


class IBMQBackendJobLimitError(IBMQBackendError):
    """The user has reached the service's limit of active jobs; wait for some to finish."""


class IBMQJobManagerError(IBMQError):
    """Base class for errors raised by the job manager."""


class IBMQJobManagerInvalidStateError(IBMQJobManagerError):
    """Errors raised when an operation is invalid in the current state."""


class IBMQJobManagerTimeoutError(JobTimeoutError, IBMQJobManagerError):
    """Errors raised when a job manager operation times out."""


class IBMQJobManagerJobNotFound(IBMQJobManagerError):
    """Errors raised when a job cannot be found."""


class IBMQManagedResultDataNotAvailable(IBMQJobManagerError):
    """Errors raised when result data is not available (its job failed or was cancelled)."""


class IBMQJobManagerUnknownJobSet(IBMQJobManagerError):
    """Errors raised when the job set ID is unknown."""


# -- runtime programs (qiskit-ibm-runtime's names and bases) ------------------------------


class IBMError(QiskitError):
    """Base class for errors raised by qdispatch's runtime classes."""


class IBMApiError(IBMError):
    """An error answered by the job service about a runtime request (``status`` and
    ``code`` as in :class:`IBMQApiError`)."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class IBMInputValueError(IBMError, ValueError):
    """The inputs of a program, session or primitive call cannot be used; the message
    names the input and the problem."""


class IBMRuntimeError(IBMError):
    """Base class for errors raised by runtime jobs, programs and sessions."""


class RuntimeJobFailureError(IBMRuntimeError, JobError):
    """The runtime job failed; the message has the service's reason."""


class RuntimeJobNotFound(IBMRuntimeError):
    """No runtime job with that id (or not one the caller may see)."""


class RuntimeProgramNotFound(IBMRuntimeError):
    """The service has no program with that id."""


class RuntimeInvalidStateError(IBMRuntimeError):
    """The job (or session) is not in a state that allows the operation."""


class RuntimeJobTimeoutError(JobTimeoutError, IBMRuntimeError):
    """Waiting for a runtime job timed out."""


class RuntimeJobMaxTimeoutError(IBMRuntimeError):
    """The runtime job did not finish within the time allowed."""


class JobsTimeoutError(IBMQJobTimeoutError, RuntimeJobTimeoutError):
    """:func:`qdispatch.as_completed` timed out with jobs still unfinished (``pending``).

    Both a job timeout of the IBMQ provider and of the runtime: ``except
    IBMQJobTimeoutError``, ``except RuntimeJobTimeoutError`` and qiskit's
    ``except JobTimeoutError`` all catch it, whichever kind of job was waited for."""

    def __init__(self, message: str, pending: list[Any] | None = None) -> None:
        super().__init__(message)
        self.pending = list(pending or [])
