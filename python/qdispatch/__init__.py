"""qdispatch: a high-throughput quantum job system with the Qiskit job API.

The job service lives in :mod:`qdispatch.server` (``qdispatch serve``); the client
classes that talk to it are added on top of the same wire format (docs/protocol.md).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qdispatch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
