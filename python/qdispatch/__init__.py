"""qdispatch: a high-throughput quantum job system with the Qiskit job API.

The job service lives in :mod:`qdispatch.server` (``qdispatch serve``); the client
classes that talk to it are added on top of the same wire format (docs/protocol.md).
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qdispatch.assembler import AssembleError, assemble
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

# qiskit costs ~0.5 s to import; `import qdispatch` (the CLI, the service) should not pay
# for it until the assembler or the Qobj classes are used.
_LAZY = {
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
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qdispatch' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module), name)


try:
    __version__ = version("qdispatch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AssembleError",
    "PulseQobj",
    "QasmQobj",
    "QasmQobjConfig",
    "QasmQobjExperiment",
    "QasmQobjExperimentConfig",
    "QasmQobjExperimentHeader",
    "QasmQobjInstruction",
    "QobjHeader",
    "__version__",
    "assemble",
]
