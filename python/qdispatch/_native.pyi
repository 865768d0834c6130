"""Type stubs of the native extension ``qdispatch._native`` (rust/py)."""

from typing import Any, final

from qiskit.circuit import QuantumCircuit

__all__ = [
    "BackendSpec",
    "InvalidQobjError",
    "MalformedPayloadError",
    "QobjSummary",
    "capi_available",
    "circuits_to_qobj_json",
    "split_submission",
    "validate_qobj",
]

class MalformedPayloadError(ValueError):
    """The payload is not JSON, or not JSON of the expected shape."""

class InvalidQobjError(ValueError):
    """The Qobj is well-formed JSON but cannot run on the backend; the message says why."""

@final
class BackendSpec:
    """What a backend accepts; built once per backend and reused for every submission."""

    def __new__(
        cls,
        name: str,
        n_qubits: int,
        max_shots: int,
        max_experiments: int,
        gates: dict[str, tuple[int | None, int | None]],
        coupling_map: list[tuple[int, ...]] | None = None,
    ) -> BackendSpec: ...
    @property
    def name(self) -> str: ...

@final
class QobjSummary:
    """What the service needs to know of a valid Qobj."""

    @property
    def qobj_id(self) -> str | None: ...
    @property
    def n_experiments(self) -> int: ...
    @property
    def shots(self) -> int | None: ...
    @property
    def n_instructions(self) -> int: ...
    @property
    def max_qubits(self) -> int: ...

def validate_qobj(qobj: bytes, backend: BackendSpec) -> QobjSummary:
    """Validates a QasmQobj (JSON bytes) against a backend."""

def split_submission(body: bytes) -> tuple[bytes, bytes | None]:
    """Splits a job-submission body into (envelope JSON without ``qobj``, raw ``qobj``)."""

def capi_available() -> bool:
    """Whether circuits are read through Qiskit's C API (a known API version)."""

def circuits_to_qobj_json(
    circuits: list[QuantumCircuit], config: dict[str, Any], qobj_id: str, header: dict[str, Any]
) -> bytes:
    """The QasmQobj JSON bytes of ``circuits``."""
