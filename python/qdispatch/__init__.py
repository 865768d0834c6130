"""qdispatch: a high-throughput quantum job system with the Qiskit job API.

The job service lives in :mod:`qdispatch.server` (``qdispatch serve``); the client
classes that talk to it are added on top of the same wire format (docs/protocol.md).
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qdispatch.algorithms import AlgorithmJob
    from qdispatch.assembler import AssembleError, assemble
    from qdispatch.backend import QDispatchBackend
    from qdispatch.completion import as_completed
    from qdispatch.encoding import RuntimeDecoder, RuntimeEncoder
    from qdispatch.exceptions import (
        IBMApiError,
        IBMError,
        IBMInputValueError,
        IBMQApiError,
        IBMQBackendApiError,
        IBMQBackendError,
        IBMQBackendJobLimitError,
        IBMQBackendNotFoundError,
        IBMQBackendValueError,
        IBMQError,
        IBMQJobApiError,
        IBMQJobError,
        IBMQJobFailureError,
        IBMQJobInvalidStateError,
        IBMQJobManagerError,
        IBMQJobManagerInvalidStateError,
        IBMQJobManagerJobNotFound,
        IBMQJobManagerTimeoutError,
        IBMQJobManagerUnknownJobSet,
        IBMQJobTimeoutError,
        IBMQManagedResultDataNotAvailable,
        IBMRuntimeError,
        InsecureConnectionWarning,
        JobsTimeoutError,
        RuntimeInvalidStateError,
        RuntimeJobFailureError,
        RuntimeJobMaxTimeoutError,
        RuntimeJobNotFound,
        RuntimeJobTimeoutError,
        RuntimeProgramNotFound,
    )
    from qdispatch.job import IBMQJob
    from qdispatch.managed import IBMQJobManager, ManagedJob, ManagedJobSet, ManagedResults
    from qdispatch.models import BackendProperties, QueueInfo
    from qdispatch.primitives import Estimator, Sampler
    from qdispatch.qobj import (
        PulseQobj,
        QasmQobj,
        QasmQobjConfig,
        QasmQobjExperiment,
        QasmQobjExperimentConfig,
        QasmQobjExperimentHeader,
        QasmQobjInstruction,
        QobjHeader,
    )
    from qdispatch.runtime import ResultDecoder, RunnerResult, RuntimeJob
    from qdispatch.service import QDispatchService, connect
    from qdispatch.sessions import Batch, Session

# qiskit costs ~0.5 s to import; `import qdispatch` (the CLI, the service) should not pay
# for it until the assembler or the Qobj classes are used.
_LAZY = {
    "AlgorithmJob": "qdispatch.algorithms",
    "IBMQJobManager": "qdispatch.managed",
    "ManagedJobSet": "qdispatch.managed",
    "ManagedJob": "qdispatch.managed",
    "ManagedResults": "qdispatch.managed",
    "IBMQJobManagerError": "qdispatch.exceptions",
    "IBMQJobManagerInvalidStateError": "qdispatch.exceptions",
    "IBMQJobManagerTimeoutError": "qdispatch.exceptions",
    "IBMQJobManagerJobNotFound": "qdispatch.exceptions",
    "IBMQJobManagerUnknownJobSet": "qdispatch.exceptions",
    "IBMQManagedResultDataNotAvailable": "qdispatch.exceptions",
    "connect": "qdispatch.service",
    "QDispatchService": "qdispatch.service",
    "QDispatchBackend": "qdispatch.backend",
    "IBMQJob": "qdispatch.job",
    "QueueInfo": "qdispatch.models",
    "BackendProperties": "qdispatch.models",
    "IBMQError": "qdispatch.exceptions",
    "IBMQApiError": "qdispatch.exceptions",
    "InsecureConnectionWarning": "qdispatch.exceptions",
    "IBMQJobError": "qdispatch.exceptions",
    "IBMQJobApiError": "qdispatch.exceptions",
    "IBMQJobFailureError": "qdispatch.exceptions",
    "IBMQJobInvalidStateError": "qdispatch.exceptions",
    "IBMQJobTimeoutError": "qdispatch.exceptions",
    "IBMQBackendError": "qdispatch.exceptions",
    "IBMQBackendApiError": "qdispatch.exceptions",
    "IBMQBackendNotFoundError": "qdispatch.exceptions",
    "IBMQBackendValueError": "qdispatch.exceptions",
    "IBMQBackendJobLimitError": "qdispatch.exceptions",
    "AssembleError": "qdispatch.assembler",
    "assemble": "qdispatch.assembler",
    "PulseQobj": "qdispatch.qobj",
    "QasmQobj": "qdispatch.qobj",
    "QasmQobjConfig": "qdispatch.qobj",
    "QasmQobjExperiment": "qdispatch.qobj",
    "QasmQobjExperimentConfig": "qdispatch.qobj",
    "QasmQobjExperimentHeader": "qdispatch.qobj",
    "QasmQobjInstruction": "qdispatch.qobj",
    "QobjHeader": "qdispatch.qobj",
    "IBMError": "qdispatch.exceptions",
    "IBMApiError": "qdispatch.exceptions",
    "IBMInputValueError": "qdispatch.exceptions",
    "IBMRuntimeError": "qdispatch.exceptions",
    "RuntimeJobFailureError": "qdispatch.exceptions",
    "RuntimeJobNotFound": "qdispatch.exceptions",
    "RuntimeProgramNotFound": "qdispatch.exceptions",
    "RuntimeInvalidStateError": "qdispatch.exceptions",
    "RuntimeJobTimeoutError": "qdispatch.exceptions",
    "RuntimeJobMaxTimeoutError": "qdispatch.exceptions",
    "JobsTimeoutError": "qdispatch.exceptions",
    "as_completed": "qdispatch.completion",
    "RuntimeJob": "qdispatch.runtime",
    "ResultDecoder": "qdispatch.runtime",
    "RunnerResult": "qdispatch.runtime",
    "Session": "qdispatch.sessions",
    "Batch": "qdispatch.sessions",
    "Sampler": "qdispatch.primitives",
    "Estimator": "qdispatch.primitives",
    "RuntimeEncoder": "qdispatch.encoding",
    "RuntimeDecoder": "qdispatch.encoding",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qdispatch' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)


try:
    __version__ = version("qdispatch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AlgorithmJob",
    "AssembleError",
    "BackendProperties",
    "Batch",
    "Estimator",
    "IBMApiError",
    "IBMError",
    "IBMInputValueError",
    "IBMQApiError",
    "IBMQBackendApiError",
    "IBMQBackendError",
    "IBMQBackendJobLimitError",
    "IBMQBackendNotFoundError",
    "IBMQBackendValueError",
    "IBMQError",
    "IBMQJob",
    "IBMQJobApiError",
    "IBMQJobError",
    "IBMQJobFailureError",
    "IBMQJobInvalidStateError",
    "IBMQJobManager",
    "IBMQJobManagerError",
    "IBMQJobManagerInvalidStateError",
    "IBMQJobManagerJobNotFound",
    "IBMQJobManagerTimeoutError",
    "IBMQJobManagerUnknownJobSet",
    "IBMQJobTimeoutError",
    "IBMQManagedResultDataNotAvailable",
    "IBMRuntimeError",
    "InsecureConnectionWarning",
    "JobsTimeoutError",
    "ManagedJob",
    "ManagedJobSet",
    "ManagedResults",
    "PulseQobj",
    "QDispatchBackend",
    "QDispatchService",
    "QasmQobj",
    "QasmQobjConfig",
    "QasmQobjExperiment",
    "QasmQobjExperimentConfig",
    "QasmQobjExperimentHeader",
    "QasmQobjInstruction",
    "QobjHeader",
    "QueueInfo",
    "ResultDecoder",
    "RunnerResult",
    "RuntimeDecoder",
    "RuntimeEncoder",
    "RuntimeInvalidStateError",
    "RuntimeJob",
    "RuntimeJobFailureError",
    "RuntimeJobMaxTimeoutError",
    "RuntimeJobNotFound",
    "RuntimeJobTimeoutError",
    "RuntimeProgramNotFound",
    "Sampler",
    "Session",
    "__version__",
    "as_completed",
    "assemble",
    "connect",
]
