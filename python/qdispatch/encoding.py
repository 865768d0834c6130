"""The runtime ecosystem's ``{"__type__": T, "__value__": V}`` JSON encoding.

Program inputs, interim results and final results travel in this form (docs/runtime.md).
The wire shapes are those qiskit-ibm-runtime writes and reads, so either side of a
connection may be that package: a value it encodes decodes here, and the other way round.

``dumps``/``loads`` are the fast entry points (orjson plus one pass over the decoded
tree); ``RuntimeEncoder``/``RuntimeDecoder`` are the same encoding as :mod:`json` classes.
"""

from __future__ import annotations

import ast
import base64
import binascii
import datetime as _dt
import functools
import inspect
import io
import json
import math
import struct
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import orjson
from qiskit import qpy
from qiskit.circuit import Instruction, Parameter, ParameterExpression, QuantumCircuit
from qiskit.exceptions import QiskitError
from qiskit.primitives.containers import (
    BitArray,
    DataBin,
    PrimitiveResult,
    PubResult,
    SamplerPubResult,
)
from qiskit.primitives.containers.bindings_array import BindingsArray
from qiskit.primitives.containers.observables_array import ObservablesArray
from qiskit.quantum_info import (
    DensityMatrix,
    Operator,
    Pauli,
    PauliList,
    SparsePauliOp,
    Statevector,
)
from qiskit.result import Result
from qiskit.result.models import ExperimentResultData

from qdispatch import _native
from qdispatch.qpyguard import guarded_load

__all__ = [
    "EncodingError",
    "FastBitArray",
    "RuntimeDecoder",
    "RuntimeEncoder",
    "bitarray_counts",
    "dumps",
    "loads",
]

TYPE_KEY = "__type__"
VALUE_KEY = "__value__"

# Non-string dict keys become strings as json.dumps makes them; datetimes and dataclasses
# come to the hook so that both entry points write the same thing.
_ORJSON_OPTIONS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)

# --- limits ------------------------------------------------------------------------------
# The decoder reads what other users send (program inputs in the service and its workers,
# shared jobs' inputs and results in clients). Each limit is checked before the object it
# bounds is built, so a small payload cannot make this process allocate or compute much
# more than it sent. They are read at each call: assign a new value to change one
# (docs/runtime.md, "Decoding hostile input").

#: Total bytes the binary payloads (base64 of zlib: ``ndarray``, QPY circuits, …) of one
#: document may unpack to, all of them together; each unpack is capped by what is left
#: before it allocates (docs/runtime.md). A request body is at most 64 MiB by default and
#: honest payloads compress 2 to 10 times, so 256 MiB is room for any of them and bounds a bomb.
MAX_DECODED_BYTES = _native.DEFAULT_MAX_PAYLOAD_BYTES

#: Largest dense matrix a ``settings`` value may describe (``Operator``,
#: ``DensityMatrix``): 2**10 rows and columns, 16 MiB of complex entries.
MAX_DENSE_QUBITS = 10
#: Largest ``Statevector`` a ``settings`` value may describe: 2**20 amplitudes, 16 MiB.
MAX_STATEVECTOR_QUBITS = 20
#: Longest Pauli label (``Pauli``, ``PauliList``, ``SparsePauliOp``).
MAX_PAULI_QUBITS = 10_000
#: Most terms of a ``PauliList`` or ``SparsePauliOp``; qiskit builds them at about 20 µs
#: a term.
MAX_PAULI_TERMS = 100_000
#: Most terms times qubits of one ``PauliList``/``SparsePauliOp`` (about 125 MB while building).
MAX_PAULI_CELLS = 10_000_000
#: Most positions of a decoded ndarray, counting an empty axis as 1: an empty array of
#: shape ``(10**9, 10**9, 0)`` costs no data but every loop over its positions forever.
#: Also bounds the ``shape`` of ``DataBin`` and ``BindingsArray``.
MAX_ARRAY_ELEMENTS = 1 << 28
#: Longest structured-dtype description of an ``.npy`` header, and its deepest nesting.
MAX_DTYPE_DESCR = 16_384
MAX_DTYPE_NESTING = 8
#: Most elements of a ``set`` that may share one hash. Honest encoders write a set's
#: distinct elements; many with one hash (complex numbers are easy to collide) make
#: building the set quadratic.
MAX_SET_HASH_COLLISIONS = 16
#: Largest QPY payload (after base64 and zlib) of a circuit, parameter expression or
#: instruction, and the widest circuit it may declare: QPY allocates the declared qubits
#: and clbits before reading anything else (a 100-byte payload declaring 2**32 qubits
#: aborts the process).
MAX_QPY_BYTES = 64 << 20
MAX_CIRCUIT_QUBITS = 1 << 14
MAX_CIRCUIT_CLBITS = 1 << 14
#: Most instructions a QPY circuit may declare: the same bound the Qobj validator puts on an
#: experiment (``max_instructions``), so a small zlib payload cannot unfold into millions
#: of instructions the reader then builds one by one.
MAX_QPY_INSTRUCTIONS = 100_000
#: Oldest QPY format version read. Older ones go through qiskit's Python reader
#: (symengine payloads, a sympy-repr parser); 13 is what qiskit 1.3 and later write.
MIN_QPY_VERSION = 13


class EncodingError(ValueError):
    """A ``{"__type__", "__value__"}`` value that cannot be decoded.

    ``type_name`` is the ``__type__`` and ``problem`` says what is wrong with the value.
    """

    def __init__(self, type_name: str, problem: str) -> None:
        super().__init__(f"cannot decode {type_name!r}: {problem}")
        self.type_name = type_name
        self.problem = problem


def _tag(type_name: str, value: Any) -> dict[str, Any]:
    return {TYPE_KEY: type_name, VALUE_KEY: value}


# --- compressed binary payloads -------------------------------------------------------
# base64, zlib and .npy framing run in the Rust core (qdispatch._native), without the GIL.


def _pack(data: bytes) -> str:
    return _native.pack_payload(data)


# What the payloads of the document being decoded may still unpack to (``loads`` sets it;
# a contextvar so that threads decoding at once each have their own).
_BUDGET: ContextVar[list[int] | None] = ContextVar("qdispatch_decode_budget", default=None)


@contextmanager
def _payload_budget(max_bytes: int) -> Iterator[None]:
    token = _BUDGET.set([max_bytes])
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _remaining() -> int:
    budget = _BUDGET.get()
    return MAX_DECODED_BYTES if budget is None else budget[0]


def _spend(size: int) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget[0] -= size


def _unpack(type_name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise EncodingError(type_name, f"expected a base64 string, got {type(value).__name__}")
    try:
        data = _native.unpack_payload(value, max_bytes=_remaining())
    except _native.PayloadError as exc:
        raise EncodingError(type_name, str(exc)) from exc
    _spend(len(data))
    return data


# --- ndarray ---------------------------------------------------------------------------

_DTYPES: dict[str, np.dtype[Any]] = {}


def _encode_ndarray(array: np.ndarray) -> dict[str, Any]:
    dtype = array.dtype
    # Object arrays cannot be framed as .npy without pickle; the ecosystem sends them as
    # nested lists whose elements are encoded in turn.
    if dtype.hasobject:
        return _tag("ndarray", array.tolist())
    # numpy's own rule: Fortran order only for arrays that are not also C-contiguous.
    fortran = array.flags.f_contiguous and not array.flags.c_contiguous
    descr = dtype.str if dtype.names is None else repr(np.lib.format.dtype_to_descr(dtype))
    data = array.tobytes(order="F" if fortran else "C")
    try:
        return _tag("ndarray", _native.encode_ndarray(descr, array.shape, fortran, data))
    except _native.PayloadError as exc:
        raise TypeError(f"ndarray of dtype {dtype} cannot be encoded: {exc}") from exc


def _short(text: Any, limit: int = 80) -> str:
    """``repr(text)``, cut to about ``limit`` characters: error messages quote what the
    peer sent, and that may be megabytes."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}…"


def _check_shape(type_name: str, shape: Any, what: str = "shape") -> tuple[int, ...]:
    if (
        not isinstance(shape, list | tuple)
        or len(shape) > 64  # numpy's most dimensions
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise EncodingError(type_name, f"{what} {_short(shape)} is not a list of sizes")
    positions = math.prod(max(d, 1) for d in shape)
    if positions > MAX_ARRAY_ELEMENTS:
        raise EncodingError(
            type_name,
            f"{what} {_short(shape)} has {positions} positions "
            f"(at most MAX_ARRAY_ELEMENTS = {MAX_ARRAY_ELEMENTS})",
        )
    return tuple(shape)


def _descr_nesting(descr: str) -> int:
    depth = deepest = 0
    for char in descr:
        if char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]":
            depth -= 1
    return deepest


def _dtype(descr: str) -> np.dtype[Any]:
    dtype = _DTYPES.get(descr)
    if dtype is None:
        # literal_eval and descr_to_dtype recurse over the nesting and walk every field:
        # bounded before either runs.
        if len(descr) > MAX_DTYPE_DESCR:
            raise EncodingError(
                "ndarray", f"descr of {len(descr)} characters (at most MAX_DTYPE_DESCR)"
            )
        if _descr_nesting(descr) > MAX_DTYPE_NESTING:
            raise EncodingError(
                "ndarray", f"descr nested deeper than MAX_DTYPE_NESTING = {MAX_DTYPE_NESTING}"
            )
        try:
            if descr.startswith("["):
                dtype = np.lib.format.descr_to_dtype(ast.literal_eval(descr))
            else:
                dtype = np.dtype(descr)
        except (TypeError, ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise EncodingError(
                "ndarray", f"descr {_short(descr)} is not a dtype ({_short(str(exc), 200)})"
            ) from exc
        _check_subarrays(dtype)
        if len(_DTYPES) < 256:
            _DTYPES[descr] = dtype
    return dtype


def _check_subarrays(dtype: np.dtype[Any]) -> None:
    """Bound the shapes a structured dtype's fields declare, as an array's own shape is
    bounded: a zero-size field can otherwise claim a (10**9, 10**9, 0) view for free."""
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        _check_shape("ndarray", list(shape), "field shape")
        _check_subarrays(base)
    for name in dtype.names or ():
        _check_subarrays(dtype.fields[name][0])  # type: ignore[index]


def _object_array(value: Any) -> np.ndarray:
    """The object array a nested list stands for, shaped as ``np.array(value,
    dtype=object)`` shapes it (nested lists of equal length become axes; ragged ones stay
    lists), without numpy looking into the leaves: it would call their ``__array__``, and a
    decoded ``Pauli`` of 40 qubits answers with a dense 2**40 by 2**40 matrix."""
    shape: list[int] = []
    level = [value]
    while level and all(type(item) is list for item in level):
        lengths = {len(item) for item in level}
        if len(lengths) != 1:
            break
        shape.append(lengths.pop())
        if len(shape) > 64:
            raise EncodingError("ndarray", "nested list of more than 64 dimensions")
        level = [child for item in level for child in item]
    _check_shape("ndarray", shape)
    flat = np.empty(len(level), dtype=object)
    for index, leaf in enumerate(level):
        flat[index] = leaf  # item assignment stores the object as it is
    return flat.reshape(shape)


def _decode_ndarray(value: Any) -> np.ndarray:
    if not isinstance(value, str):
        return _object_array(value)
    try:
        descr, shape, fortran, data = _native.decode_ndarray(value, max_bytes=_remaining())
    except _native.PayloadError as exc:
        raise EncodingError("ndarray", str(exc)) from exc
    _spend(len(data))
    dtype = _dtype(descr)
    if dtype.hasobject:
        raise EncodingError("ndarray", f"dtype {_short(descr)} holds Python objects (needs pickle)")
    # Checked before `size * itemsize` below is compared with the data: an empty array (or
    # one of zero-size items) can claim any shape at no cost in data.
    _check_shape("ndarray", shape)
    size = math.prod(shape)
    if len(data) != size * dtype.itemsize:
        raise EncodingError(
            "ndarray",
            f"{len(data)} data bytes for shape {shape} of {dtype} ({size * dtype.itemsize} needed)",
        )
    if dtype.itemsize == 0:
        return np.zeros(shape, dtype=dtype)
    # `data` is a fresh bytearray: the array views it, writable, without a copy.
    flat = np.frombuffer(data, dtype=dtype, count=size)
    return flat.reshape(shape, order="F" if fortran else "C")


# --- circuits and parameters (QPY) ----------------------------------------------------


def _qpy_bytes(circuit: QuantumCircuit) -> bytes:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return buffer.getvalue()


# QPY's FILE_HEADER_V10 and CIRCUIT_HEADER_V12 (the format's spec, qiskit.qpy): what is
# read of a payload before qpy.load sees it. A circuit's record starts with its header, at
# the offset of the circuit table from version 16 on, right after the type key before.
_QPY_FILE_HEADER = struct.Struct("!6sBBBBQc")
_QPY_OFFSET = struct.Struct("!Q")
_QPY_CIRCUIT_HEADER = struct.Struct("!H1cHIIQIQI")
# The smallest records a circuit's registers and instructions take (REGISTER_V4,
# CIRCUIT_INSTRUCTION_V2): a count a payload cannot hold is a lie that would size a
# preallocation.
_QPY_MIN_REGISTER = 9
_QPY_MIN_INSTRUCTION = 33


def _check_qpy(type_name: str, payload: bytes) -> None:
    """Refuse a QPY payload whose header asks for more than the limits allow, before
    qiskit's reader allocates what it declares."""

    def refuse(problem: str) -> EncodingError:
        return EncodingError(type_name, f"invalid QPY data: {problem}")

    size = len(payload)
    if size > MAX_QPY_BYTES:
        raise refuse(f"{size} bytes (at most MAX_QPY_BYTES = {MAX_QPY_BYTES})")
    try:
        preface, version, *_, num_programs, _ = _QPY_FILE_HEADER.unpack_from(payload)
        if preface != b"QISKIT":
            raise refuse("no QISKIT preface")
        if not MIN_QPY_VERSION <= version <= qpy.QPY_VERSION:
            raise refuse(
                f"format version {version}, this reader takes {MIN_QPY_VERSION} to "
                f"{qpy.QPY_VERSION} (MIN_QPY_VERSION)"
            )
        if num_programs != 1:
            raise refuse(f"{num_programs} programs, expected one circuit")
        offset = _QPY_FILE_HEADER.size
        if payload[offset : offset + 1] != b"q":
            raise refuse("the program is not a circuit")
        offset += 1
        if version >= 16:
            (offset,) = _QPY_OFFSET.unpack_from(payload, offset)
        header = _QPY_CIRCUIT_HEADER.unpack_from(payload, offset)
    except struct.error as exc:
        raise refuse(f"truncated header ({exc})") from exc
    _, _, _, qubits, clbits, metadata_size, registers, instructions, variables = header
    if instructions > MAX_QPY_INSTRUCTIONS:
        raise refuse(
            f"{instructions} instructions (at most MAX_QPY_INSTRUCTIONS = {MAX_QPY_INSTRUCTIONS})"
        )
    if qubits > MAX_CIRCUIT_QUBITS:
        raise refuse(f"{qubits} qubits (at most MAX_CIRCUIT_QUBITS = {MAX_CIRCUIT_QUBITS})")
    if clbits > MAX_CIRCUIT_CLBITS:
        raise refuse(f"{clbits} clbits (at most MAX_CIRCUIT_CLBITS = {MAX_CIRCUIT_CLBITS})")
    if (
        metadata_size > size
        or variables > size
        or registers * _QPY_MIN_REGISTER > size
        or instructions * _QPY_MIN_INSTRUCTION > size
    ):
        raise refuse(
            f"the header declares more than {size} bytes hold ({registers} registers, "
            f"{instructions} instructions, {variables} variables, {metadata_size} bytes of "
            "metadata)"
        )


def _load_qpy_circuit(type_name: str, value: Any) -> QuantumCircuit:
    payload = _unpack(type_name, value)
    _check_qpy(type_name, payload)
    try:
        circuits = guarded_load(payload)
    except (KeyboardInterrupt, SystemExit):
        raise
    # QPY raises a variety of errors on bad data, and its Rust reader panics on some: a
    # pyo3 PanicException derives from BaseException.
    except BaseException as exc:
        raise EncodingError(
            type_name, f"invalid QPY data ({type(exc).__name__}: {_short(str(exc), 200)})"
        ) from exc
    if len(circuits) != 1 or not isinstance(circuits[0], QuantumCircuit):
        raise EncodingError(type_name, f"expected one circuit in the QPY data, got {len(circuits)}")
    return circuits[0]


def _encode_instruction(instruction: Instruction) -> dict[str, Any]:
    # QPY stores circuits, so the instruction travels as the only operation of one.
    holder = QuantumCircuit(instruction.num_qubits, instruction.num_clbits)
    holder.append(instruction, holder.qubits, holder.clbits)
    return _tag("Instruction", _pack(_qpy_bytes(holder)))


def _decode_instruction(value: Any) -> Instruction:
    holder = _load_qpy_circuit("Instruction", value)
    if len(holder.data) != 1:
        raise EncodingError("Instruction", f"expected one instruction, got {len(holder.data)}")
    return holder.data[0].operation


# A Parameter is QPY's parameter record on its own, uncompressed: the name's length in
# bytes (big-endian u16), the 16-byte UUID, then the UTF-8 name.
_PARAMETER_HEAD = struct.Struct(">H16s")


def _encode_parameter(parameter: Parameter) -> dict[str, Any]:
    name = parameter.name.encode("utf-8")
    record = _PARAMETER_HEAD.pack(len(name), parameter.uuid.bytes) + name
    return _tag("Parameter", base64.b64encode(record).decode("ascii"))


def _decode_parameter(value: Any) -> Parameter:
    if not isinstance(value, str):
        raise EncodingError("Parameter", f"expected a base64 string, got {type(value).__name__}")
    try:
        record = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise EncodingError("Parameter", f"invalid base64 ({exc})") from exc
    if len(record) < _PARAMETER_HEAD.size:
        raise EncodingError("Parameter", f"record of {len(record)} bytes is too short")
    name_len, uuid_bytes = _PARAMETER_HEAD.unpack_from(record)
    name = record[_PARAMETER_HEAD.size :]
    if len(name) != name_len:
        raise EncodingError("Parameter", f"name is {len(name)} bytes, header says {name_len}")
    try:
        return Parameter(name.decode("utf-8"), uuid=uuid.UUID(bytes=uuid_bytes))
    except UnicodeDecodeError as exc:
        raise EncodingError("Parameter", f"name is not UTF-8 ({exc})") from exc


def _encode_parameter_expression(expression: ParameterExpression) -> dict[str, Any]:
    # qiskit-ibm-runtime 0.51 neither writes nor reads expressions; QPY keeps an expression
    # (symbols, UUIDs and vector elements included) as a circuit's global phase.
    holder = QuantumCircuit(global_phase=expression)
    return _tag("ParameterExpression", _pack(_qpy_bytes(holder)))


def _decode_parameter_expression(value: Any) -> ParameterExpression:
    phase = _load_qpy_circuit("ParameterExpression", value).global_phase
    if not isinstance(phase, ParameterExpression):
        raise EncodingError("ParameterExpression", "the QPY data holds no expression")
    return phase


# --- BitArray counts ---------------------------------------------------------------------


@overload
def bitarray_counts(bits: BitArray, *, per_position: Literal[False] = False) -> dict[str, int]: ...
@overload
def bitarray_counts(bits: BitArray, *, per_position: Literal[True]) -> list[dict[str, int]]: ...


def bitarray_counts(
    bits: BitArray, *, per_position: bool = False
) -> dict[str, int] | list[dict[str, int]]:
    """The counts of ``bits``, equal to ``bits.get_counts()`` (every position merged).

    With ``per_position``, one dict per position of ``bits.shape`` in C order (equal to
    ``bits.get_counts(loc)`` for each ``loc`` of ``np.ndindex(bits.shape)``). Each
    distinct outcome is formatted once, in the Rust core.
    """
    if bits.num_bits == 0:
        # No bits to count; qiskit's own answer covers the corner.
        if per_position:
            return [bits.get_counts(loc) for loc in np.ndindex(bits.shape)]
        return BitArray.get_counts(bits)
    data = bits.array.tobytes()
    if per_position:
        return _native.bitarray_counts_by_position(data, bits.num_bits, bits.size)
    return _native.bitarray_counts(data, bits.num_bits)


class FastBitArray(BitArray):
    """A ``BitArray`` whose ``get_counts()`` and ``get_int_counts()`` (over all positions)
    run in the Rust core; with a ``loc`` they are qiskit's. ``loads`` decodes bit arrays
    to this class; the results equal those of ``BitArray``."""

    def get_counts(self, loc: int | tuple[int, ...] | None = None) -> dict[str, int]:
        """How many shots gave each outcome, keyed by bitstring (``loc``: one position)."""
        if loc is not None or self.num_bits == 0:
            return super().get_counts(loc)
        return _native.bitarray_counts(self.array.tobytes(), self.num_bits)

    def get_int_counts(self, loc: int | tuple[int, ...] | None = None) -> dict[int, int]:
        """How many shots gave each outcome, keyed by integer value (``loc``: one position)."""
        if loc is not None or self.num_bits == 0:
            return super().get_int_counts(loc)
        return _native.bitarray_int_counts(self.array.tobytes(), self.num_bits)


# --- primitive containers ---------------------------------------------------------------


def _encode_data_bin(data: DataBin) -> dict[str, Any]:
    fields = dict(data.items())
    return _tag(
        "DataBin", {"field_names": list(fields), "shape": list(data.shape), "fields": fields}
    )


def _encode_primitive_result(result: PrimitiveResult[Any]) -> dict[str, Any]:
    return _tag("PrimitiveResult", {"pub_results": list(result), "metadata": result.metadata})


def _encode_bindings_array(bindings: BindingsArray) -> dict[str, Any]:
    # Keys name the parameters bound by one array; the wire spells the tuple as a JSON list.
    data = {json.dumps(list(names)): array for names, array in bindings.data.items()}
    return _tag("BindingsArray", {"shape": list(bindings.shape), "data": data})


def _require_dict(type_name: str, value: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EncodingError(type_name, f"expected an object, got {type(value).__name__}")
    missing = [key for key in keys if key not in value]
    if missing:
        raise EncodingError(type_name, f"missing {', '.join(missing)}")
    return value


def _decode_bit_array(value: Any) -> BitArray:
    value = _require_dict("BitArray", value, ("array", "num_bits"))
    array, num_bits = value["array"], value["num_bits"]
    if not isinstance(array, np.ndarray):
        raise EncodingError("BitArray", f"array is a {type(array).__name__}, not an ndarray")
    try:
        return FastBitArray(array, num_bits)
    except (TypeError, ValueError) as exc:
        raise EncodingError("BitArray", str(exc)) from exc


def _decode_data_bin(value: Any) -> DataBin:
    value = _require_dict("DataBin", value, ("field_names", "shape", "fields"))
    fields, names = value["fields"], value["field_names"]
    if not isinstance(fields, dict):
        raise EncodingError("DataBin", f"fields is a {type(fields).__name__}, not an object")
    if not isinstance(names, list):
        raise EncodingError("DataBin", f"field_names is a {type(names).__name__}, not a list")
    for name in names:
        # DataBin sets each field as an attribute: a dunder (__dict__, __class__) or a
        # name of the class would replace the object's insides or shadow its methods.
        if not isinstance(name, str) or name.startswith("__") or hasattr(DataBin, name):
            raise EncodingError("DataBin", f"{_short(name)} cannot be a field name")
    shape = _check_shape("DataBin", value["shape"])
    try:
        ordered = {name: fields[name] for name in names}
        return DataBin(shape=shape, **ordered)
    except KeyError as exc:
        raise EncodingError("DataBin", f"field {exc.args[0]!r} is named but absent") from exc
    except (TypeError, ValueError) as exc:
        raise EncodingError("DataBin", str(exc)) from exc


def _pub_result_decoder(cls: type[PubResult]) -> Callable[[Any], PubResult]:
    name = cls.__name__

    def decode(value: Any) -> PubResult:
        value = _require_dict(name, value, ("data",))
        if not isinstance(value["data"], DataBin):
            raise EncodingError(name, f"data is a {type(value['data']).__name__}, not a DataBin")
        return cls(value["data"], value.get("metadata"))

    return decode


def _decode_primitive_result(value: Any) -> PrimitiveResult[Any]:
    value = _require_dict("PrimitiveResult", value, ("pub_results",))
    pubs = value["pub_results"]
    if not isinstance(pubs, list) or not all(isinstance(pub, PubResult) for pub in pubs):
        raise EncodingError("PrimitiveResult", "pub_results is not a list of pub results")
    return PrimitiveResult(pubs, value.get("metadata"))


def _decode_bindings_array(value: Any) -> BindingsArray:
    value = _require_dict("BindingsArray", value, ("shape", "data"))
    # Without data the shape alone sizes every loop over the bindings' positions.
    shape = _check_shape("BindingsArray", value["shape"])
    if not isinstance(value["data"], dict):
        raise EncodingError("BindingsArray", "data is not an object")
    data = {}
    for key, array in value["data"].items():
        try:
            # orjson, not json: a key nested a thousand deep is a ValueError, not a
            # RecursionError.
            names = orjson.loads(key)
        except orjson.JSONDecodeError as exc:
            raise EncodingError("BindingsArray", f"key {_short(key)} is not JSON") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise EncodingError("BindingsArray", f"key {_short(key)} is not a list of names")
        data[tuple(names)] = array
    try:
        return BindingsArray(data, shape=shape)
    except (AttributeError, TypeError, ValueError) as exc:
        raise EncodingError("BindingsArray", str(exc)) from exc


def _decode_observables_array(value: Any) -> ObservablesArray:
    try:
        return ObservablesArray(value)
    except (TypeError, ValueError) as exc:
        raise EncodingError("ObservablesArray", str(exc)) from exc


# ExperimentResultData sets each key of an experiment's data as an attribute.
_RESULT_DATA_NAMES = frozenset(dir(ExperimentResultData))


def _decode_result(value: Any) -> Result:
    value = _require_dict("Result", value, ("results",))
    experiments = value["results"]
    if not isinstance(experiments, list):
        raise EncodingError("Result", "results is not a list")
    for index, experiment in enumerate(experiments):
        data = _require_dict("Result", experiment, ("data", "shots", "success"))["data"]
        if not isinstance(data, dict):
            raise EncodingError("Result", f"results[{index}].data is not an object")
        for name in data:
            if name.startswith("_") or name in _RESULT_DATA_NAMES:
                raise EncodingError(
                    "Result", f"results[{index}].data: {_short(name)} cannot be a data key"
                )
    try:
        return Result.from_dict(value)
    except (KeyError, TypeError, ValueError, AttributeError, QiskitError) as exc:
        raise EncodingError("Result", f"{type(exc).__name__}: {_short(str(exc), 200)}") from exc


# --- plain values -------------------------------------------------------------------------


def _decode_complex(value: Any) -> complex:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(part, (int, float)) for part in value)
    ):
        raise EncodingError("complex", f"expected [real, imag], got {value!r}")
    return complex(value[0], value[1])


def _decode_set(value: Any) -> set[Any]:
    if not isinstance(value, list):
        raise EncodingError("set", f"expected a list, got {type(value).__name__}")
    try:
        # Counting hashes is linear whatever they are; building a set of elements that
        # share one hash compares each with all the others.
        hashes = Counter(map(hash, value))
    except TypeError as exc:
        raise EncodingError("set", str(exc)) from exc
    if hashes and max(hashes.values()) > MAX_SET_HASH_COLLISIONS:
        raise EncodingError(
            "set",
            f"{max(hashes.values())} elements share one hash "
            f"(at most MAX_SET_HASH_COLLISIONS = {MAX_SET_HASH_COLLISIONS})",
        )
    return set(value)


def _decode_datetime(value: Any) -> _dt.datetime:
    if not isinstance(value, str):
        raise EncodingError("datetime", f"expected an ISO 8601 string, got {value!r}")
    try:
        # Python 3.10's fromisoformat does not read the "Z" suffix.
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise EncodingError("datetime", str(exc)) from exc


# --- settings: a closed list of classes ---------------------------------------------------
# A `settings` value names a module and a class, and the ecosystem's decoders rebuild it
# as `cls(**settings)`. Naming is all the peer gets to do here: the name is looked up in a
# table of classes imported by this module, never imported or looked up as an attribute,
# and its settings are checked (keys, types, sizes) before the class is called.


@dataclass(frozen=True)
class _SettingsType:
    cls: type
    keys: frozenset[str]
    required: frozenset[str]
    # Raises EncodingError for values the class must not be called with.
    check: Callable[[dict[str, Any]], None] | None = None


def _refuse(problem: str) -> EncodingError:
    return EncodingError("settings", problem)


def _pauli_qubits(where: str, label: Any) -> int:
    if not isinstance(label, str):
        raise _refuse(f"{where} must be a Pauli label, got {type(label).__name__}")
    # A label is an optional phase ("-i", "+1j") and one letter a qubit.
    qubits = len(label.lstrip("+-1ij"))
    if qubits > MAX_PAULI_QUBITS:
        raise _refuse(
            f"{where} has {qubits} qubits (at most MAX_PAULI_QUBITS = {MAX_PAULI_QUBITS})"
        )
    return qubits


def _pauli_labels(where: str, labels: Any) -> int:
    if not isinstance(labels, list):
        raise _refuse(f"{where} must be a list of Pauli labels, got {type(labels).__name__}")
    if len(labels) > MAX_PAULI_TERMS:
        raise _refuse(
            f"{where} has {len(labels)} terms (at most MAX_PAULI_TERMS = {MAX_PAULI_TERMS})"
        )
    widest = max(
        (_pauli_qubits(f"{where}[{i}]", label) for i, label in enumerate(labels)), default=0
    )
    if widest * len(labels) > MAX_PAULI_CELLS:
        raise _refuse(
            f"{where} has {len(labels)} terms of {widest} qubits "
            f"(at most MAX_PAULI_CELLS = {MAX_PAULI_CELLS} terms times qubits)"
        )
    return len(labels)


def _numeric_array(where: str, value: Any, ndim: int) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biufc":
        kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise _refuse(f"{where} must be a numeric ndarray, got {kind}")
    if value.ndim != ndim:
        raise _refuse(f"{where} must have {ndim} dimensions, got shape {value.shape}")
    return value


def _check_side(where: str, side: int, qubits: int, limit_name: str) -> None:
    if side > 1 << qubits:
        raise _refuse(
            f"{where} has {side} rows or columns (at most 2**{limit_name} = {1 << qubits})"
        )


def _check_dims(where: str, dims: Any) -> None:
    # qiskit checks that the dims multiply to the matrix's side; here only their form.
    if dims is None or (type(dims) is int and dims >= 1):
        return
    if (
        not isinstance(dims, list)
        or len(dims) > 64
        or not all(type(d) is int and d >= 1 for d in dims)
    ):
        raise _refuse(f"{where} must be null, a dimension or a list of them, got {_short(dims)}")


def _check_pauli(settings: dict[str, Any]) -> None:
    _pauli_qubits("Pauli data", settings["data"])


def _check_pauli_list(settings: dict[str, Any]) -> None:
    _pauli_labels("PauliList data", settings["data"])


def _check_sparse_pauli_op(settings: dict[str, Any]) -> None:
    data = settings["data"]
    if isinstance(data, PauliList):  # decoded (and checked) as settings of its own
        terms = len(data)
    elif isinstance(data, Pauli):
        terms = 1
    elif isinstance(data, str):
        terms = 1
        _pauli_qubits("SparsePauliOp data", data)
    else:
        terms = _pauli_labels("SparsePauliOp data", data)
    coeffs = settings.get("coeffs")
    if coeffs is None:
        return
    if not isinstance(coeffs, np.ndarray) or coeffs.ndim != 1 or len(coeffs) != terms:
        raise _refuse(f"SparsePauliOp coeffs must be an ndarray of {terms} coefficients")
    # A parametrized operator's coefficients travel as an object array of expressions.
    if coeffs.dtype.kind not in "biufc" and not all(
        isinstance(c, int | float | complex | ParameterExpression) for c in coeffs
    ):
        raise _refuse("SparsePauliOp coeffs must be numbers or parameter expressions")


def _check_operator(settings: dict[str, Any]) -> None:
    data = _numeric_array("Operator data", settings["data"], 2)
    for side in data.shape:
        _check_side("Operator data", side, MAX_DENSE_QUBITS, "MAX_DENSE_QUBITS")
    _check_dims("Operator input_dims", settings.get("input_dims"))
    _check_dims("Operator output_dims", settings.get("output_dims"))


def _check_statevector(settings: dict[str, Any]) -> None:
    data = _numeric_array("Statevector data", settings["data"], 1)
    _check_side("Statevector data", len(data), MAX_STATEVECTOR_QUBITS, "MAX_STATEVECTOR_QUBITS")
    _check_dims("Statevector dims", settings.get("dims"))


def _check_density_matrix(settings: dict[str, Any]) -> None:
    data = _numeric_array("DensityMatrix data", settings["data"], 2)
    for side in data.shape:
        _check_side("DensityMatrix data", side, MAX_DENSE_QUBITS, "MAX_DENSE_QUBITS")
    _check_dims("DensityMatrix dims", settings.get("dims"))


def _settings_type(
    cls: type, keys: tuple[str, ...], check: Callable[[dict[str, Any]], None]
) -> _SettingsType:
    return _SettingsType(cls, frozenset(keys), frozenset(("data",)), check)


# What the primitives exchange (observables: SparsePauliOp of a PauliList, Pauli) and the
# other quantum_info objects qiskit-ibm-runtime's decoder rebuilds and programs return
# (Operator; Statevector and DensityMatrix, which qiskit-ibm-runtime leaves as dicts).
# Each with the keys its `settings` property writes (qiskit 2.x).
_BUILTIN_TYPES = (
    _settings_type(Pauli, ("data",), _check_pauli),
    _settings_type(PauliList, ("data",), _check_pauli_list),
    _settings_type(SparsePauliOp, ("data", "coeffs"), _check_sparse_pauli_op),
    _settings_type(Operator, ("data", "input_dims", "output_dims"), _check_operator),
    _settings_type(Statevector, ("data", "dims"), _check_statevector),
    _settings_type(DensityMatrix, ("data", "dims"), _check_density_matrix),
)

# (module, class) as encoders write them (`type(obj).__module__`), and the public module
# too, resolved once, here.
_BUILTIN_SETTINGS: Mapping[tuple[str, str], _SettingsType] = {
    (module, entry.cls.__name__): entry
    for entry in _BUILTIN_TYPES
    for module in (entry.cls.__module__, "qiskit.quantum_info")
}


@functools.lru_cache(maxsize=64)
def _settings_table(extra: tuple[type, ...]) -> Mapping[tuple[str, str], _SettingsType]:
    """The built-in table plus the classes a program (``SETTINGS_TYPES``) or a caller of
    :func:`loads` allows; a built-in class keeps its checks."""
    if not extra:
        return _BUILTIN_SETTINGS
    table = dict(_BUILTIN_SETTINGS)
    for cls in extra:
        if not isinstance(cls, type):
            raise TypeError(f"settings types must be classes, got {cls!r}")
        key = (cls.__module__, cls.__name__)
        if key in table:
            continue
        # The keys it may be called with are the named parameters of its constructor.
        parameters = [
            p
            for p in inspect.signature(cls).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        table[key] = _SettingsType(
            cls,
            frozenset(p.name for p in parameters),
            frozenset(p.name for p in parameters if p.default is p.empty),
        )
    return table


def _allowed_names(table: Mapping[tuple[str, str], _SettingsType]) -> str:
    return ", ".join(sorted({entry.cls.__name__ for entry in table.values()}))


def _decode_settings(tagged: dict[str, Any], table: Mapping[tuple[str, str], _SettingsType]) -> Any:
    module_name, class_name = tagged.get("__module__"), tagged.get("__class__")
    if not isinstance(module_name, str) or not isinstance(class_name, str):
        raise _refuse("__module__ and __class__ must be strings")
    entry = table.get((module_name, class_name))
    if entry is None:
        raise _refuse(
            f"{_short(f'{module_name}.{class_name}', 120)} is not an allowed settings type "
            f"(allowed: {_allowed_names(table)})"
        )
    name = class_name
    settings = tagged[VALUE_KEY]
    if not isinstance(settings, dict):
        raise _refuse(f"{name}: expected an object, got {type(settings).__name__}")
    unknown = settings.keys() - entry.keys
    if unknown:
        listed = ", ".join(_short(key, 40) for key in sorted(unknown)[:5])
        raise _refuse(
            f"{name} takes no setting {listed} (it takes {', '.join(sorted(entry.keys))})"
        )
    missing = entry.required - settings.keys()
    if missing:
        raise _refuse(f"{name}: missing {', '.join(sorted(missing))}")
    if entry.check is not None:
        entry.check(settings)
    try:
        return entry.cls(**settings)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # qiskit's own errors, and panics of its Rust code
        raise _refuse(
            f"{name}(**settings) failed: {type(exc).__name__}: {_short(str(exc), 200)}"
        ) from exc


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "complex": _decode_complex,
    "ndarray": _decode_ndarray,
    "QuantumCircuit": lambda value: _load_qpy_circuit("QuantumCircuit", value),
    "Parameter": _decode_parameter,
    "ParameterExpression": _decode_parameter_expression,
    "Instruction": _decode_instruction,
    "set": _decode_set,
    "datetime": _decode_datetime,
    "BitArray": _decode_bit_array,
    "DataBin": _decode_data_bin,
    "SamplerPubResult": _pub_result_decoder(SamplerPubResult),
    "PubResult": _pub_result_decoder(PubResult),
    "PrimitiveResult": _decode_primitive_result,
    "ObservablesArray": _decode_observables_array,
    "BindingsArray": _decode_bindings_array,
    "Result": _decode_result,
}


def _decode_tagged(
    obj: dict[str, Any], table: Mapping[tuple[str, str], _SettingsType] = _BUILTIN_SETTINGS
) -> Any:
    """One JSON object whose members are already decoded, as the value it stands for."""
    type_name = obj.get(TYPE_KEY)
    if type_name is None or VALUE_KEY not in obj:
        return obj
    if type_name == "settings":
        return _decode_settings(obj, table)
    decoder = _DECODERS.get(type_name) if isinstance(type_name, str) else None
    if decoder is None:
        return obj
    return decoder(obj[VALUE_KEY])


# --- encoding dispatch --------------------------------------------------------------------


def _encode_numpy_scalar(value: np.generic) -> Any:
    if isinstance(value, np.complexfloating):
        return _tag("complex", [float(value.real), float(value.imag)])
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not runtime-JSON encodable")


def _encode_settings(obj: Any) -> dict[str, Any]:
    cls = type(obj)
    return {
        TYPE_KEY: "settings",
        "__module__": cls.__module__,
        "__class__": cls.__name__,
        VALUE_KEY: obj.settings,
    }


# Checked in order, so a subclass comes before its base.
_ENCODERS: tuple[tuple[type | tuple[type, ...], Callable[[Any], Any]], ...] = (
    (complex, lambda c: _tag("complex", [c.real, c.imag])),
    (np.ndarray, _encode_ndarray),
    (np.generic, _encode_numpy_scalar),
    ((set, frozenset), lambda s: _tag("set", list(s))),
    (_dt.datetime, lambda d: _tag("datetime", d.isoformat())),
    (QuantumCircuit, lambda qc: _tag("QuantumCircuit", _pack(_qpy_bytes(qc)))),
    (Parameter, _encode_parameter),
    (ParameterExpression, _encode_parameter_expression),
    (Instruction, _encode_instruction),
    (BitArray, lambda b: _tag("BitArray", {"array": b.array, "num_bits": b.num_bits})),
    (DataBin, _encode_data_bin),
    (
        SamplerPubResult,
        lambda r: _tag("SamplerPubResult", {"data": r.data, "metadata": r.metadata}),
    ),
    (PubResult, lambda r: _tag("PubResult", {"data": r.data, "metadata": r.metadata})),
    (PrimitiveResult, _encode_primitive_result),
    (ObservablesArray, lambda o: _tag("ObservablesArray", o.tolist())),
    (BindingsArray, _encode_bindings_array),
    (Result, lambda r: _tag("Result", r.to_dict())),
)


def _encode_default(obj: Any) -> Any:
    """A JSON-ready stand-in for ``obj``, which the JSON writer does not know."""
    # Parameter vector elements subclass Parameter but carry their vector, which only the
    # expression form keeps.
    if isinstance(obj, Parameter) and type(obj) is not Parameter:
        return _encode_parameter_expression(obj)
    for types, encode in _ENCODERS:
        if isinstance(obj, types):
            return encode(obj)
    if hasattr(obj, "settings"):
        return _encode_settings(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not runtime-JSON encodable")


class RuntimeEncoder(json.JSONEncoder):
    """JSON encoder for the runtime types (``json.dumps(obj, cls=RuntimeEncoder)``)."""

    def default(self, o: Any) -> Any:
        """Encode an object :mod:`json` does not know; ``TypeError`` if it has no encoding."""
        return _encode_default(o)


class RuntimeDecoder(json.JSONDecoder):
    """JSON decoder for the runtime types (``json.loads(s, cls=RuntimeDecoder)``).

    ``settings_types``: classes allowed as ``settings`` values besides the built-in ones
    (:func:`loads`)."""

    def __init__(self, *args: Any, settings_types: Iterable[type] = (), **kwargs: Any) -> None:
        table = _settings_table(tuple(settings_types))
        kwargs["object_hook"] = lambda obj: _decode_tagged(obj, table)
        super().__init__(*args, **kwargs)

    def decode(self, s: str, *args: Any, **kwargs: Any) -> Any:
        """Decode ``s``; :class:`EncodingError` for nesting deeper than Python recurses."""
        try:
            if _BUDGET.get() is not None:  # inside loads(), which set the document's budget
                return super().decode(s, *args, **kwargs)
            with _payload_budget(MAX_DECODED_BYTES):
                return super().decode(s, *args, **kwargs)
        except RecursionError as exc:
            raise EncodingError("JSON", "nested too deeply") from exc


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` as runtime JSON (UTF-8 bytes).

    Python floats that are NaN or infinite are written as ``null`` (JSON has no spelling
    for them; arrays keep them, in their ``.npy`` payload). ``TypeError`` names the type of
    an object that has no encoding.
    """
    try:
        return orjson.dumps(obj, default=_encode_default, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        # orjson refuses integers beyond 64 bits and very deep nesting, which json writes;
        # for an unencodable object this raises the hook's TypeError unwrapped.
        return json.dumps(obj, cls=RuntimeEncoder).encode()


def loads(
    data: bytes | bytearray | memoryview | str,
    *,
    settings_types: Iterable[type] = (),
    max_bytes: int | None = None,
) -> Any:
    """Decode runtime JSON to the values it encodes.

    An object with an unknown ``__type__`` stays a dict; a known type whose value does
    not decode raises :class:`EncodingError`. A ``settings`` object is rebuilt only as one
    of the built-in classes (docs/runtime.md) or of ``settings_types``, called with the
    keyword parameters of its constructor; any other raises :class:`EncodingError` before
    anything is imported or called. The document's binary payloads unpack to at most
    ``max_bytes`` in total (default :data:`MAX_DECODED_BYTES`), each refused before it is
    allocated once the rest would not fit.
    """
    with _payload_budget(MAX_DECODED_BYTES if max_bytes is None else max_bytes):
        return _loads(data, tuple(settings_types))


def _loads(data: bytes | bytearray | memoryview | str, settings_types: tuple[type, ...]) -> Any:
    table = _settings_table(settings_types)
    try:
        tree = orjson.loads(data)
    except orjson.JSONDecodeError:
        # Python's json writes NaN and Infinity tokens, which orjson does not read.
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        return json.loads(text, cls=RuntimeDecoder, settings_types=settings_types)
    # A document without a single tag (a Qobj, plain inputs) needs no pass over its tree,
    # which costs about a microsecond a node. A key spelled with JSON escapes is missed
    # by this check, and then stays a dict: nothing is decoded that was not asked for.
    marker = _MARKER_STR if isinstance(data, str) else _MARKER
    if marker not in data:
        return tree
    try:
        return _walk(tree, table)
    except RecursionError as exc:  # orjson reads deeper nesting than Python recurses
        raise EncodingError("JSON", "nested too deeply") from exc


_MARKER = f'"{TYPE_KEY}"'.encode()
_MARKER_STR = f'"{TYPE_KEY}"'


def _walk(node: Any, table: Mapping[tuple[str, str], _SettingsType]) -> Any:
    """Decode a tree fresh from orjson, children first, as json's object_hook would."""
    if type(node) is dict:
        for key, child in node.items():
            if type(child) is dict or type(child) is list:
                node[key] = _walk(child, table)
        return _decode_tagged(node, table) if TYPE_KEY in node else node
    if type(node) is list:
        for index, child in enumerate(node):
            if type(child) is dict or type(child) is list:
                node[index] = _walk(child, table)
    return node
