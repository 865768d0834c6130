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
import importlib
import io
import json
import math
import struct
import uuid
from collections.abc import Callable
from typing import Any, Literal, overload

import numpy as np
import orjson
from qiskit import qpy
from qiskit.circuit import Instruction, Parameter, ParameterExpression, QuantumCircuit
from qiskit.primitives.containers import (
    BitArray,
    DataBin,
    PrimitiveResult,
    PubResult,
    SamplerPubResult,
)
from qiskit.primitives.containers.bindings_array import BindingsArray
from qiskit.primitives.containers.observables_array import ObservablesArray
from qiskit.result import Result

from qdispatch import _native

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

# `settings` objects name the class to rebuild; importing an arbitrary module named by the
# peer would let it run code here, so only these packages are looked in.
SETTINGS_PACKAGES = ("qiskit", "qiskit_aer", "qiskit_ibm_runtime")

# Non-string dict keys become strings as json.dumps makes them; datetimes and dataclasses
# come to the hook so that both entry points write the same thing.
_ORJSON_OPTIONS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


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


def _unpack(type_name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise EncodingError(type_name, f"expected a base64 string, got {type(value).__name__}")
    try:
        return _native.unpack_payload(value)
    except _native.PayloadError as exc:
        raise EncodingError(type_name, str(exc)) from exc


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


def _dtype(descr: str) -> np.dtype[Any]:
    dtype = _DTYPES.get(descr)
    if dtype is None:
        try:
            if descr.startswith("["):
                dtype = np.lib.format.descr_to_dtype(ast.literal_eval(descr))
            else:
                dtype = np.dtype(descr)
        except (TypeError, ValueError, SyntaxError) as exc:
            raise EncodingError("ndarray", f"descr {descr!r} is not a dtype ({exc})") from exc
        if len(_DTYPES) < 256:
            _DTYPES[descr] = dtype
    return dtype


def _decode_ndarray(value: Any) -> np.ndarray:
    if not isinstance(value, str):
        return np.array(value, dtype=object)
    try:
        descr, shape, fortran, data = _native.decode_ndarray(value)
    except _native.PayloadError as exc:
        raise EncodingError("ndarray", str(exc)) from exc
    dtype = _dtype(descr)
    if dtype.hasobject:
        raise EncodingError("ndarray", f"dtype {descr!r} holds Python objects (needs pickle)")
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


def _load_qpy_circuit(type_name: str, value: Any) -> QuantumCircuit:
    payload = _unpack(type_name, value)
    try:
        circuits = qpy.load(io.BytesIO(payload))
    except Exception as exc:  # QPY raises a variety of errors on truncated data
        raise EncodingError(type_name, f"invalid QPY data ({type(exc).__name__}: {exc})") from exc
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
    fields = value["fields"]
    if not isinstance(fields, dict):
        raise EncodingError("DataBin", f"fields is a {type(fields).__name__}, not an object")
    try:
        ordered = {name: fields[name] for name in value["field_names"]}
        return DataBin(shape=tuple(value["shape"]), **ordered)
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
    try:
        data = {tuple(json.loads(key)): array for key, array in value["data"].items()}
        return BindingsArray(data, shape=tuple(value["shape"]))
    except (AttributeError, TypeError, ValueError) as exc:
        raise EncodingError("BindingsArray", str(exc)) from exc


def _decode_observables_array(value: Any) -> ObservablesArray:
    try:
        return ObservablesArray(value)
    except (TypeError, ValueError) as exc:
        raise EncodingError("ObservablesArray", str(exc)) from exc


def _decode_result(value: Any) -> Result:
    try:
        return Result.from_dict(_require_dict("Result", value, ()))
    except (KeyError, TypeError, ValueError) as exc:
        raise EncodingError("Result", f"{type(exc).__name__}: {exc}") from exc


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
        return set(value)
    except TypeError as exc:
        raise EncodingError("set", str(exc)) from exc


def _decode_datetime(value: Any) -> _dt.datetime:
    if not isinstance(value, str):
        raise EncodingError("datetime", f"expected an ISO 8601 string, got {value!r}")
    try:
        # Python 3.10's fromisoformat does not read the "Z" suffix.
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise EncodingError("datetime", str(exc)) from exc


def _decode_settings(tagged: dict[str, Any]) -> Any:
    module_name, class_name = tagged.get("__module__"), tagged.get("__class__")
    if not isinstance(module_name, str) or not isinstance(class_name, str):
        raise EncodingError("settings", "__module__ and __class__ must be strings")
    if module_name.split(".", 1)[0] not in SETTINGS_PACKAGES:
        raise EncodingError("settings", f"module {module_name!r} is not an allowed package")
    settings = tagged[VALUE_KEY]
    if not isinstance(settings, dict):
        raise EncodingError("settings", f"expected an object, got {type(settings).__name__}")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise EncodingError("settings", f"no class {module_name}.{class_name}") from exc
    try:
        return cls(**settings)
    except (TypeError, ValueError) as exc:
        raise EncodingError("settings", f"{class_name}(**settings) failed: {exc}") from exc


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


def _decode_tagged(obj: dict[str, Any]) -> Any:
    """One JSON object whose members are already decoded, as the value it stands for."""
    type_name = obj.get(TYPE_KEY)
    if type_name is None or VALUE_KEY not in obj:
        return obj
    if type_name == "settings":
        return _decode_settings(obj)
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
    """JSON decoder for the runtime types (``json.loads(s, cls=RuntimeDecoder)``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["object_hook"] = _decode_tagged
        super().__init__(*args, **kwargs)


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


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode runtime JSON to the values it encodes.

    An object with an unknown ``__type__`` stays a dict; a known type whose value does
    not decode raises :class:`EncodingError`.
    """
    try:
        tree = orjson.loads(data)
    except orjson.JSONDecodeError:
        # Python's json writes NaN and Infinity tokens, which orjson does not read.
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        return json.loads(text, cls=RuntimeDecoder)
    # A document without a single tag (a Qobj, plain inputs) needs no pass over its tree,
    # which costs about a microsecond a node. A key spelled with JSON escapes is missed
    # by this check, and then stays a dict: nothing is decoded that was not asked for.
    marker = _MARKER_STR if isinstance(data, str) else _MARKER
    if marker not in data:
        return tree
    return _walk(tree)


_MARKER = f'"{TYPE_KEY}"'.encode()
_MARKER_STR = f'"{TYPE_KEY}"'


def _walk(node: Any) -> Any:
    """Decode a tree fresh from orjson, children first, as json's object_hook would."""
    if type(node) is dict:
        for key, child in node.items():
            if type(child) is dict or type(child) is list:
                node[key] = _walk(child)
        return _decode_tagged(node) if TYPE_KEY in node else node
    if type(node) is list:
        for index, child in enumerate(node):
            if type(child) is dict or type(child) is list:
                node[index] = _walk(child)
    return node
