"""Type stubs of the native extension ``qdispatch._native`` (rust/py)."""

from collections.abc import Sequence
from typing import Any, TypeVar, final

from qiskit.circuit import QuantumCircuit
from qiskit.result import Counts

_C = TypeVar("_C", bound=Counts)

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_NAME_PATTERN_BYTES",
    "ApiError",
    "BackendSpec",
    "Client",
    "ConnectionFailedError",
    "InvalidNamePatternError",
    "InvalidQobjError",
    "MalformedPayloadError",
    "NamePattern",
    "PayloadError",
    "QobjSummary",
    "ResultOutline",
    "StreamTimeoutError",
    "bitarray_counts",
    "bitarray_counts_by_position",
    "bitarray_int_counts",
    "capi_available",
    "circuits_to_qobj_json",
    "counts_from_result",
    "decode_ndarray",
    "encode_ndarray",
    "pack_payload",
    "qobj_to_circuits",
    "split_member",
    "split_submission",
    "unpack_payload",
    "validate_qobj",
]

#: The default ``max_bytes`` of ``unpack_payload``, ``decode_ndarray`` and the bit-array
#: counts: 256 MiB (docs/service.md, "Limits").
DEFAULT_MAX_PAYLOAD_BYTES: int
#: The longest pattern ``NamePattern`` compiles, in bytes.
MAX_NAME_PATTERN_BYTES: int

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
        *,
        max_memory_slots: int = ...,
        max_instructions: int = ...,
        max_header_bytes: int = ...,
        max_name_bytes: int = ...,
        max_params: int = ...,
        max_register_slots: int = ...,
        max_qpy_bytes: int = ...,
    ) -> BackendSpec:
        """The limits default to 1024 memory slots, 100 000 instructions per experiment,
        64 KiB per header or config, 1024-byte names, 64 parameters per instruction,
        4096 register slots and 8 MiB of base64 QPY per experiment (docs/service.md,
        "Limits")."""
    @property
    def name(self) -> str: ...
    @property
    def limits(self) -> dict[str, int]:
        """The size limits of a Qobj besides qubits, shots and experiments, by name."""

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

@final
class ResultOutline:
    """The outline of a qiskit Result dict (JSON bytes): where each experiment lies in the
    bytes, its name, and its counts where they can be built without qiskit's constructor.
    ``MalformedPayloadError`` for a document ``Result.from_dict`` might refuse or read
    otherwise."""

    def __new__(cls, result_json: bytes) -> ResultOutline: ...
    @property
    def top(self) -> bytes:
        """The members other than ``results``, as a JSON object."""
    @property
    def names_ok(self) -> bool:
        """Whether every experiment's header is an object, null or absent."""
    def __len__(self) -> int: ...
    def span(self, index: int) -> tuple[int, int]:
        """The ``(start, end)`` byte range of experiment ``index``'s JSON object."""
    def names(self) -> list[str | None]:
        """Each experiment's name as qiskit's lookup by name matches it (``""`` for a
        header without one), ``None`` where none can match."""
    def counts(self, index: int) -> Counts | None:
        """Experiment ``index``'s ``Counts``, equal to what ``Result.get_counts(index)``
        builds; ``None`` when the experiment did not succeed or its counts are left to
        qiskit."""
    def bin_counts(self, index: int, cls: type[_C]) -> _C | None:
        """Experiment ``index``'s keys and counts (those of ``counts(index)``) in a new
        ``cls.__new__(cls)``, ``cls`` a ``Counts`` subclass, and nothing else: none of the
        attributes ``counts`` sets (``hex_raw``, ``int_raw``, ``creg_sizes``,
        ``memory_slots``, ``time_taken``), which ``cls`` makes from ``counts(index)`` when
        one is first read. ``None`` where ``counts`` gives ``None``."""

def validate_qobj(qobj: bytes, backend: BackendSpec) -> QobjSummary:
    """Validates a QasmQobj (JSON bytes) against a backend."""

def split_submission(body: bytes) -> tuple[bytes, bytes | None]:
    """Splits a job-submission body into (envelope JSON without ``qobj``, raw ``qobj``)."""

def split_member(body: bytes, key: str, what: str = "body") -> tuple[bytes, bytes | None]:
    """Splits a JSON object into (the object without member ``key``, that member's raw
    bytes or None)."""

def capi_available() -> bool:
    """Whether circuits are read through Qiskit's C API (a known API version)."""

def circuits_to_qobj_json(
    circuits: list[QuantumCircuit], config: dict[str, Any], qobj_id: str, header: dict[str, Any]
) -> bytes:
    """The QasmQobj JSON bytes of ``circuits``."""

def qobj_to_circuits(qobj: bytes) -> list[QuantumCircuit | None] | None:
    """The circuits of a QasmQobj (JSON bytes) rebuilt through Qiskit's C API: ``None`` for
    each experiment the Python path must rebuild, ``None`` overall when the C API is not
    available or the Qobj is not of a shape the native reader takes."""

class ApiError(Exception):
    """The job service answered with an error, or could not be reached."""

    status: int
    code: str
    message: str
    body: str

class ConnectionFailedError(ApiError):
    """The job service could not be reached after every retry (status 0, code
    ``connection_failed``), or its TLS certificate was refused (code ``tls_error``, not
    retried)."""

class StreamTimeoutError(TimeoutError):
    """Waiting on the event stream timed out."""

@final
class Client:
    """A client of one job service: pooled HTTP with retries and idempotent POSTs, and one
    multiplexed event WebSocket. Thread-safe; blocking calls release the GIL."""

    def __new__(
        cls,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        max_attempts: int = 6,
        verify: bool = True,
        ca_bundle: str | None = None,
    ) -> Client:
        """``verify=False`` checks no certificate; ``ca_bundle`` (a PEM file) replaces the
        platform's CA certificates; raises ``ConnectionFailedError`` (code ``tls_error``)
        for an unusable bundle."""
    @property
    def url(self) -> str: ...
    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        query: list[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
        gzip: bool = False,
        timeout: float | None = None,
    ) -> bytes:
        """Sends a request and returns the (decompressed) response body."""
    def submit(self, envelope: bytes, qobj: bytes, *, idempotency_key: str | None = None) -> bytes:
        """``POST /jobs`` with ``qobj`` spliced into ``envelope``, gzip-compressed."""
    def submit_many(
        self,
        envelopes: list[bytes],
        qobjs: list[bytes],
        *,
        concurrency: int = 8,
        idempotency_keys: list[str] | None = None,
    ) -> list[bytes | ApiError]:
        """Many ``POST /jobs`` at once: per chunk, its job record or its error (not
        raised); a chunk over the active-job limit waits for a job to finish.
        ``idempotency_keys[i]``, when given, is chunk i's key for all its attempts."""
    def watch(self, job_ids: list[str]) -> None:
        """Subscribes ``job_ids`` on the event stream (does not block)."""
    def unwatch(self, job_ids: list[str]) -> None:
        """Stops following ``job_ids``."""
    def last_status(self, job_id: str) -> str | None:
        """The latest status seen for ``job_id``; None if none yet."""
    def wait_final(self, job_id: str, timeout: float | None = None) -> str | None:
        """Blocks until ``job_id`` is final and returns its status; None on timeout."""
    def wait_any_final(self, job_ids: list[str], timeout: float | None = None) -> list[str]:
        """Blocks until one of ``job_ids`` is final; returns all that are final."""
    def take_result(self, job_id: str, timeout: float = 1.0) -> bytes | None:
        """The result the event stream brought for ``job_id``, handed over once; None:
        fetch it."""
    def next_events(self, timeout: float) -> list[tuple[str, int, str, bytes | None]]:
        """Queued events ``(job_id, seq, type, data)``; waits up to ``timeout`` for one."""
    def stream_connected(self) -> bool:
        """Whether the event WebSocket is open now."""
    def stream_polling(self) -> bool:
        """Whether statuses are being polled (no WebSocket could be opened lately)."""
    def close(self) -> None:
        """Closes the socket and stops the background tasks."""

def counts_from_result(result_json: bytes) -> list[dict[str, int] | None]:
    """Each experiment's counts as ``qiskit.result.Result.get_counts`` gives them."""

class PayloadError(ValueError):
    """A payload of the runtime encoding does not decode (bad base64, zlib, .npy or
    bit-array data); the message says which and why."""

def pack_payload(data: bytes) -> str:
    """base64 of the zlib stream of ``data``."""

def unpack_payload(value: str, *, max_bytes: int = ...) -> bytes:
    """The bytes of a ``pack_payload`` string; ``PayloadError`` past ``max_bytes``
    (default ``DEFAULT_MAX_PAYLOAD_BYTES``), checked before they are made."""

def encode_ndarray(descr: str, shape: Sequence[int], fortran_order: bool, data: bytes) -> str:
    """base64 of the zlib-compressed ``.npy`` file of an array's descr, shape, order and data."""

def decode_ndarray(
    value: str, *, max_bytes: int = ...
) -> tuple[str, tuple[int, ...], bool, bytearray]:
    """An ``encode_ndarray`` string as ``(descr, shape, fortran_order, data)``; the
    ``.npy`` file may be at most ``max_bytes``, checked from its header first."""

def bitarray_counts(data: bytes, num_bits: int, *, max_bytes: int = ...) -> dict[str, int]:
    """A ``BitArray``'s counts over all positions, as ``BitArray.get_counts()`` gives them."""

def bitarray_counts_by_position(
    data: bytes, num_bits: int, num_positions: int, *, max_bytes: int = ...
) -> list[dict[str, int]]:
    """A ``BitArray``'s counts at each position (C order)."""

def bitarray_int_counts(data: bytes, num_bits: int, *, max_bytes: int = ...) -> dict[int, int]:
    """A ``BitArray``'s counts over all positions, keyed by integer outcome."""

class InvalidNamePatternError(ValueError):
    """A job-name filter is not a valid pattern (Rust ``regex`` syntax), or is over the
    size limits; the message says which."""

@final
class NamePattern:
    """A compiled job-name filter: a regular expression in the syntax of Rust's ``regex``
    crate (no backreferences or lookaround), searched in linear time."""

    def __new__(cls, pattern: str) -> NamePattern: ...
    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in ``text``."""
    @property
    def pattern(self) -> str:
        """The pattern as given."""
