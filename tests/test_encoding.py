"""The runtime JSON encoding: round trips, wire shapes, interop with qiskit-ibm-runtime, errors."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
import re
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import ClassicalRegister, Parameter, ParameterVector, QuantumRegister
from qiskit.circuit.library import CXGate, RZGate, UGate
from qiskit.primitives.containers import (
    BitArray,
    DataBin,
    PrimitiveResult,
    PubResult,
    SamplerPubResult,
)
from qiskit.primitives.containers.bindings_array import BindingsArray
from qiskit.primitives.containers.observables_array import ObservablesArray
from qiskit.quantum_info import Operator, Pauli, SparsePauliOp
from qiskit.result import Result

from qdispatch import _native, encoding
from qdispatch.encoding import (
    EncodingError,
    FastBitArray,
    RuntimeDecoder,
    RuntimeEncoder,
    bitarray_counts,
    dumps,
    loads,
)

Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]

CODECS: dict[str, Codec] = {
    "fast": (dumps, loads),
    "json": (
        lambda obj: json.dumps(obj, cls=RuntimeEncoder),
        lambda text: json.loads(text, cls=RuntimeDecoder),
    ),
}


@pytest.fixture(params=sorted(CODECS))
def codec(request: pytest.FixtureRequest) -> Codec:
    """Each entry point pair: ``dumps``/``loads`` and the json classes."""
    return CODECS[request.param]


def round_trip(codec: Codec, obj: Any) -> Any:
    encode, decode = codec
    return decode(encode(obj))


# --- sample objects ---------------------------------------------------------------------


def sample_circuit() -> QuantumCircuit:
    theta = Parameter("θ")
    vec = ParameterVector("v", 2)
    qr, cr = QuantumRegister(3, "q"), ClassicalRegister(3, "meas")
    qc = QuantumCircuit(qr, cr, name="sample", metadata={"origin": "test", "n": 3})
    qc.h(0)
    qc.rz(theta * 2 + vec[0], 1)
    qc.ry(vec[1], 2)
    qc.cx(0, 1)
    qc.barrier()
    qc.measure(qr, cr)
    return qc


def random_bits(shape: tuple[int, ...], num_shots: int, num_bits: int, seed: int) -> BitArray:
    rng = np.random.default_rng(seed)
    num_bytes = (num_bits + 7) // 8
    array = rng.integers(0, 256, size=(*shape, num_shots, num_bytes), dtype=np.uint8)
    if num_bits % 8:
        # Unused high bits of the first byte must be zero in a valid BitArray.
        array[..., 0] &= (1 << (num_bits % 8)) - 1
    return BitArray(array, num_bits)


def sampler_result(seed: int = 1) -> SamplerPubResult:
    data = DataBin(
        meas=random_bits((), 16, 3, seed),
        flags=random_bits((), 16, 9, seed + 1),
        shape=(),
    )
    return SamplerPubResult(data, metadata={"shots": 16, "circuit_metadata": {"name": "c"}})


def estimator_result() -> PubResult:
    data = DataBin(evs=np.array([0.5, -0.25]), stds=np.array([0.01, 0.02]), shape=(2,))
    return PubResult(data, metadata={"target_precision": 0.015625, "shots": 4096})


def primitive_result() -> PrimitiveResult[Any]:
    pubs = [sampler_result(1), sampler_result(7)]
    return PrimitiveResult(pubs, metadata={"version": 2, "execution": {"seconds": 1.5}})


def qiskit_result() -> Result:
    return Result.from_dict(
        {
            "backend_name": "aer_simulator",
            "backend_version": "0.18",
            "qobj_id": "q",
            "job_id": "j",
            "success": True,
            "results": [
                {
                    "shots": 8,
                    "success": True,
                    "data": {"counts": {"0x0": 5, "0x3": 3}},
                    "header": {"name": "bell", "memory_slots": 2},
                }
            ],
        }
    )


# --- equality helpers -------------------------------------------------------------------


def assert_array_equal(got: Any, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def assert_bits_equal(got: Any, want: BitArray) -> None:
    assert isinstance(got, BitArray)
    assert got.num_bits == want.num_bits
    assert_array_equal(got.array, want.array)


def assert_value_equal(got: Any, want: Any) -> None:
    if isinstance(want, BitArray):
        assert_bits_equal(got, want)
    elif isinstance(want, np.ndarray):
        assert_array_equal(got, want)
    else:
        assert got == want


def assert_data_bin_equal(got: Any, want: DataBin) -> None:
    assert isinstance(got, DataBin)
    assert got.shape == want.shape
    assert list(got.keys()) == list(want.keys())
    for name, value in want.items():
        assert_value_equal(got[name], value)


def assert_pub_equal(got: Any, want: PubResult) -> None:
    assert type(got) is type(want)
    assert got.metadata == want.metadata
    assert_data_bin_equal(got.data, want.data)


def assert_primitive_equal(got: Any, want: PrimitiveResult[Any]) -> None:
    assert isinstance(got, PrimitiveResult)
    assert got.metadata == want.metadata
    assert len(got) == len(want)
    for got_pub, want_pub in zip(got, want, strict=True):
        assert_pub_equal(got_pub, want_pub)


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        1 + 2j,
        -0.5j,
        {1, "a", 2.5},
        dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
        dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        {"nested": [1, 2.5, None, True, "s", {"c": 3 - 1j}]},
    ],
    ids=["complex", "imaginary", "set", "naive-datetime", "aware-datetime", "nested"],
)
def test_plain_values_round_trip(codec: Codec, value: Any) -> None:
    assert round_trip(codec, value) == value


@pytest.mark.parametrize(
    ("scalar", "plain"),
    [
        (np.int64(-3), -3),
        (np.uint8(200), 200),
        (np.float32(1.5), 1.5),
        (np.float64(0.1), 0.1),
        (np.bool_(True), True),
        (np.complex128(1 - 2j), 1 - 2j),
    ],
    ids=lambda v: type(v).__name__,
)
def test_numpy_scalars_become_numbers(codec: Codec, scalar: Any, plain: Any) -> None:
    got = round_trip(codec, {"x": scalar})["x"]
    assert got == plain
    assert type(got) is type(plain)


ARRAYS = {
    "uint8": np.arange(12, dtype=np.uint8).reshape(3, 4),
    "int64": np.array([-(2**62), 0, 2**62], dtype=np.int64),
    "float64": np.linspace(-1, 1, 7),
    "float32-fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    "complex128": np.array([1 + 2j, -3.5j]),
    "bool": np.array([[True, False], [False, True]]),
    "big-endian": np.arange(4, dtype=">i4"),
    "zero-d": np.array(2.5),
    "empty": np.zeros((0, 3)),
    "unicode": np.array(["ab", "c"]),
    "nan-inf": np.array([np.nan, np.inf, -np.inf]),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_ndarray_round_trip(codec: Codec, name: str) -> None:
    array = ARRAYS[name]
    got = round_trip(codec, array)
    assert_array_equal(got, array)
    assert got.flags.f_contiguous == array.flags.f_contiguous


def test_structured_ndarray_round_trip(codec: Codec) -> None:
    dtype = np.dtype([("a", "<i4"), ("b", "<f8", (2,))])
    array = np.array([(1, [2.0, 3.0]), (4, [5.0, 6.0])], dtype=dtype)
    assert_array_equal(round_trip(codec, array), array)


def test_decoded_arrays_are_writable(codec: Codec) -> None:
    got = round_trip(codec, {"evs": np.arange(4.0), "bits": random_bits((), 4, 3, 0)})
    got["evs"] *= 2
    got["bits"].array[0, 0] = 1
    assert got["evs"].tolist() == [0.0, 2.0, 4.0, 6.0]


def test_npy_framing_is_what_numpy_reads_and_writes() -> None:
    for array in ARRAYS.values():
        wire = json.loads(dumps(array))["__value__"]
        npy = _native.unpack_payload(wire)
        assert_array_equal(np.load(io.BytesIO(npy), allow_pickle=False), array)
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        descr, shape, fortran, data = _native.decode_ndarray(
            _native.pack_payload(buffer.getvalue())
        )
        assert (np.dtype(descr), shape) == (array.dtype, array.shape)
        assert fortran == (array.flags.f_contiguous and not array.flags.c_contiguous)
        assert bytes(data) == array.tobytes(order="F" if fortran else "C")


def test_object_array_travels_as_nested_list(codec: Codec) -> None:
    array = np.array([[1, "a"], [2.5, 1j]], dtype=object)
    encode, decode = codec
    wire = json.loads(encode(array))
    assert wire["__type__"] == "ndarray"
    assert wire["__value__"][0] == [1, "a"]
    got = decode(encode(array))
    assert got.dtype == object
    assert got.tolist() == array.tolist()


def test_circuit_round_trip(codec: Codec) -> None:
    qc = sample_circuit()
    got = round_trip(codec, qc)
    assert isinstance(got, QuantumCircuit)
    assert got == qc
    assert got.name == qc.name
    assert got.metadata == qc.metadata


def test_parameters_round_trip(codec: Codec) -> None:
    theta = Parameter("θ")
    vec = ParameterVector("v", 3)
    values = {
        "parameter": theta,
        "expression": theta * 2 + vec[1] - 0.5,
        "vector_element": vec[2],
    }
    got = round_trip(codec, values)
    assert got == values
    assert got["parameter"].uuid == theta.uuid
    assert got["vector_element"].vector.name == "v"
    assert got["expression"].parameters == {theta, vec[1]}


@pytest.mark.parametrize(
    "instruction",
    [CXGate(), RZGate(0.25), UGate(Parameter("a"), 0.1, 0.2)],
    ids=lambda i: i.name,
)
def test_instruction_round_trip(codec: Codec, instruction: Any) -> None:
    got = round_trip(codec, instruction)
    assert got == instruction
    assert got.num_qubits == instruction.num_qubits


@pytest.mark.parametrize(("num_bits", "shape"), [(1, ()), (8, (2,)), (9, (2, 3)), (65, ())])
def test_bit_array_round_trip(codec: Codec, num_bits: int, shape: tuple[int, ...]) -> None:
    bits = random_bits(shape, 20, num_bits, seed=num_bits)
    assert_bits_equal(round_trip(codec, bits), bits)


def test_data_bin_round_trip(codec: Codec) -> None:
    data = DataBin(meas=random_bits((2,), 8, 4, 3), evs=np.array([1.0, 2.0]), label="x", shape=(2,))
    assert_data_bin_equal(round_trip(codec, data), data)


def test_pub_results_round_trip(codec: Codec) -> None:
    for pub in (sampler_result(), estimator_result()):
        assert_pub_equal(round_trip(codec, pub), pub)


def test_primitive_result_round_trip(codec: Codec) -> None:
    result = primitive_result()
    assert_primitive_equal(round_trip(codec, result), result)


@pytest.mark.parametrize(
    "operator",
    [
        SparsePauliOp(["XXI", "ZIY"], [0.5, -1j]),
        Pauli("-iXZ"),
        Operator(np.array([[0, 1], [1, 0]])),
    ],
    ids=lambda op: type(op).__name__,
)
def test_settings_objects_round_trip(codec: Codec, operator: Any) -> None:
    got = round_trip(codec, operator)
    assert type(got) is type(operator)
    assert got == operator


def test_observables_and_bindings_round_trip(codec: Codec) -> None:
    observables = ObservablesArray([["XX", "ZZ"], ["IY", SparsePauliOp(["XY", "ZZ"], [0.5, 0.25])]])
    got = round_trip(codec, observables)
    assert isinstance(got, ObservablesArray)
    assert got.shape == observables.shape
    assert got.tolist() == observables.tolist()

    a, b = Parameter("a"), Parameter("b")
    bindings = BindingsArray({(a, b): np.arange(6.0).reshape(3, 2), "c": [1.0, 2.0, 3.0]})
    got = round_trip(codec, bindings)
    assert isinstance(got, BindingsArray)
    assert got.shape == bindings.shape
    assert got.data.keys() == bindings.data.keys()
    for names, values in bindings.data.items():
        assert_array_equal(got.data[names], values)


def test_result_round_trip(codec: Codec) -> None:
    result = qiskit_result()
    got = round_trip(codec, result)
    assert isinstance(got, Result)
    assert got.to_dict() == result.to_dict()
    assert got.get_counts() == {"00": 5, "11": 3}


def test_unknown_type_stays_a_dict(codec: Codec) -> None:
    wire = {
        "__type__": "NotAType",
        "__value__": {"x": {"__type__": "complex", "__value__": [1, 2]}},
    }
    _, decode = codec
    assert decode(json.dumps(wire)) == {"__type__": "NotAType", "__value__": {"x": 1 + 2j}}


# --- wire shapes --------------------------------------------------------------------------


def test_wire_shapes() -> None:
    wire = json.loads(dumps(sampler_result()))
    assert wire["__type__"] == "SamplerPubResult"
    assert set(wire["__value__"]) == {"data", "metadata"}
    data = wire["__value__"]["data"]
    assert data["__type__"] == "DataBin"
    assert data["__value__"]["field_names"] == ["meas", "flags"]
    assert data["__value__"]["shape"] == []
    meas = data["__value__"]["fields"]["meas"]
    assert meas["__type__"] == "BitArray"
    assert meas["__value__"]["num_bits"] == 3
    array = meas["__value__"]["array"]
    assert array["__type__"] == "ndarray"
    npy = zlib.decompress(base64.b64decode(array["__value__"]))
    assert npy.startswith(b"\x93NUMPY\x01\x00")
    assert b"'descr': '|u1'" in npy

    spo = json.loads(dumps(SparsePauliOp(["XY"])))
    assert spo["__type__"] == "settings"
    assert spo["__class__"] == "SparsePauliOp"
    assert spo["__module__"] == SparsePauliOp.__module__
    assert spo["__value__"]["data"]["__class__"] == "PauliList"

    circuit = json.loads(dumps(sample_circuit()))
    assert zlib.decompress(base64.b64decode(circuit["__value__"])).startswith(b"QISKIT")
    assert json.loads(dumps(2 - 1j)) == {"__type__": "complex", "__value__": [2.0, -1.0]}


def test_both_entry_points_write_the_same() -> None:
    values = [primitive_result(), estimator_result(), {"t": dt.datetime(2020, 1, 1), 3: {1, 2}}]
    for value in values:
        assert json.loads(dumps(value)) == json.loads(json.dumps(value, cls=RuntimeEncoder))


def test_loads_reads_nan_tokens_and_wide_integers() -> None:
    text = json.dumps(
        {"x": math.nan, "big": 2**70, "c": {"__type__": "complex", "__value__": [1, 0]}}
    )
    got = loads(text)
    assert math.isnan(got["x"])
    assert got["big"] == 2**70
    assert got["c"] == 1 + 0j
    assert loads(dumps({"big": 2**70}))["big"] == pytest.approx(2**70)


# --- BitArray counts in the Rust core ---------------------------------------------------------

COUNT_CASES = [
    (num_bits, shape) for num_bits in (1, 7, 8, 9, 64, 65) for shape in ((), (3,), (2, 3))
]


@pytest.mark.parametrize(("num_bits", "shape"), COUNT_CASES)
def test_counts_equal_qiskit(num_bits: int, shape: tuple[int, ...]) -> None:
    bits = random_bits(shape, 50, num_bits, seed=num_bits * 10 + len(shape))
    # Few distinct outcomes too, so counts above 1 are checked.
    few = BitArray(bits.array & 0x03, num_bits)
    for plain in (bits, few):
        fast = FastBitArray(plain.array, plain.num_bits)
        assert list(fast.get_counts().items()) == list(plain.get_counts().items())
        assert list(fast.get_int_counts().items()) == list(plain.get_int_counts().items())
        assert list(bitarray_counts(plain).items()) == list(plain.get_counts().items())
        per_position = bitarray_counts(plain, per_position=True)
        assert per_position == [plain.get_counts(loc) for loc in np.ndindex(plain.shape)]
        if shape:
            assert fast.get_counts(0) == plain.get_counts(0)


def test_counts_mask_bits_above_num_bits() -> None:
    raw = np.array([[0xFF], [0x07], [0x05]], dtype=np.uint8)
    plain, fast = BitArray(raw, 3), FastBitArray(raw, 3)
    assert fast.get_counts() == plain.get_counts() == {"111": 2, "101": 1}
    assert fast.get_int_counts() == plain.get_int_counts()


def test_decoded_bit_arrays_count_in_rust(codec: Codec) -> None:
    bits = random_bits((2,), 64, 5, 11)
    got = round_trip(codec, sampler_result().data)["meas"]
    assert isinstance(got, FastBitArray)
    assert isinstance(got, BitArray)
    got = round_trip(codec, bits)
    assert got == bits
    assert got.get_counts() == bits.get_counts()
    assert got.get_counts((1,)) == bits.get_counts((1,))


def test_native_bit_counts_refuse_ragged_data() -> None:
    with pytest.raises(_native.PayloadError, match="not whole shots of 2 bytes"):
        _native.bitarray_counts(b"\x01\x02\x03", 9)
    with pytest.raises(_native.PayloadError, match="evenly into 2 positions"):
        _native.bitarray_counts_by_position(b"\x01\x02\x03", 3, 2)


# --- interop with qiskit-ibm-runtime ---------------------------------------------------------

INTEROP_SAMPLES: dict[str, Callable[[], Any]] = {
    "circuit": sample_circuit,
    "ndarray": lambda: ARRAYS["float32-fortran"],
    "ndarray-complex": lambda: ARRAYS["complex128"],
    "complex": lambda: 3 - 4j,
    "bit_array": lambda: random_bits((2,), 10, 9, 5),
    "data_bin": lambda: sampler_result().data,
    "sampler_pub_result": sampler_result,
    "pub_result": estimator_result,
    "primitive_result": primitive_result,
    "sparse_pauli_op": lambda: SparsePauliOp(["XXI", "ZIY"], [0.5, -1j]),
    "parameter": lambda: Parameter("θ"),
    "instruction": lambda: RZGate(0.5),
    "set": lambda: {1, 2},
}


def assert_same(got: Any, want: Any) -> None:
    if isinstance(want, PrimitiveResult):
        assert_primitive_equal(got, want)
    elif isinstance(want, PubResult):
        assert_pub_equal(got, want)
    elif isinstance(want, DataBin):
        assert_data_bin_equal(got, want)
    else:
        assert_value_equal(got, want)


@pytest.mark.parametrize("name", sorted(INTEROP_SAMPLES))
def test_runtime_encoded_decodes_here(name: str) -> None:
    runtime = pytest.importorskip("qiskit_ibm_runtime")
    value = INTEROP_SAMPLES[name]()
    text = json.dumps(value, cls=runtime.RuntimeEncoder)
    assert_same(loads(text), value)
    assert_same(json.loads(text, cls=RuntimeDecoder), value)


@pytest.mark.parametrize("name", sorted(INTEROP_SAMPLES))
def test_encoded_here_decodes_in_runtime(name: str) -> None:
    runtime = pytest.importorskip("qiskit_ibm_runtime")
    value = INTEROP_SAMPLES[name]()
    assert_same(json.loads(dumps(value), cls=runtime.RuntimeDecoder), value)
    assert_same(
        json.loads(json.dumps(value, cls=RuntimeEncoder), cls=runtime.RuntimeDecoder), value
    )


def test_runtime_encoded_extras_decode_here() -> None:
    runtime = pytest.importorskip("qiskit_ibm_runtime")
    observables = ObservablesArray(["XX", "ZZ"])
    bindings = BindingsArray({"a": [1.0, 2.0]})
    text = json.dumps([observables, bindings, qiskit_result()], cls=runtime.RuntimeEncoder)
    got_observables, got_bindings, got_result = loads(text)
    assert got_observables.tolist() == observables.tolist()
    assert_array_equal(got_bindings.data[("a",)], bindings.data[("a",)])
    assert got_result.to_dict() == qiskit_result().to_dict()


# --- errors -------------------------------------------------------------------------------


def tagged(type_name: str, value: Any) -> bytes:
    return orjson.dumps({"__type__": type_name, "__value__": value})


def packed(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data)).decode()


def npy_bytes(old: bytes = b"", new: bytes = b"") -> bytes:
    """The .npy file of a one-element float64 array, with ``old`` replaced by ``new``."""
    buffer = io.BytesIO()
    np.save(buffer, np.ones(1))
    return buffer.getvalue().replace(old, new) if old else buffer.getvalue()


def qpy_bytes() -> bytes:
    return zlib.decompress(base64.b64decode(json.loads(dumps(sample_circuit()))["__value__"]))


@pytest.mark.parametrize(
    ("wire", "type_name", "problem"),
    [
        (tagged("ndarray", "not base64!"), "ndarray", "invalid base64"),
        (tagged("ndarray", base64.b64encode(b"plain").decode()), "ndarray", "invalid zlib"),
        (tagged("ndarray", packed(b"\x93NUMPY garbage")), "ndarray", "invalid .npy"),
        (tagged("ndarray", packed(npy_bytes()[:-3])), "ndarray", "5 data bytes"),
        (tagged("ndarray", packed(npy_bytes(b"'<f8'", b"'|O' "))), "ndarray", "needs pickle"),
        (tagged("ndarray", packed(npy_bytes(b"'<f8'", b"'zz' "))), "ndarray", "not a dtype"),
        (tagged("ndarray", packed(npy_bytes(b"(1,)", b"(1) "))), "ndarray", "trailing comma"),
        (
            tagged("ndarray", json.loads(dumps(np.ones(2)))["__value__"][:-8]),
            "ndarray",
            "truncated",
        ),
        (tagged("QuantumCircuit", packed(qpy_bytes()[:40])), "QuantumCircuit", "invalid QPY"),
        (tagged("QuantumCircuit", None), "QuantumCircuit", "expected a base64 string"),
        (
            tagged("Parameter", base64.b64encode(b"\x00\x05short").decode()),
            "Parameter",
            "too short",
        ),
        (tagged("complex", [1]), "complex", "expected [real, imag]"),
        (tagged("datetime", "yesterday"), "datetime", "Invalid isoformat"),
        (tagged("BitArray", {"array": [1]}), "BitArray", "missing num_bits"),
        (tagged("DataBin", {"field_names": ["a"], "shape": [], "fields": {}}), "DataBin", "'a'"),
        (tagged("PrimitiveResult", {"pub_results": [1]}), "PrimitiveResult", "pub results"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None,
)
def test_bad_values_raise_encoding_error(
    codec: Codec, wire: bytes, type_name: str, problem: str
) -> None:
    with pytest.raises(EncodingError, match=re.escape(problem)) as info:
        codec[1](wire)
    assert info.value.type_name == type_name
    assert type_name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_settings_refuses_classes_off_the_list(codec: Codec) -> None:
    # tests/test_hostile.py has the attacks; this is the message.
    wire = orjson.dumps(
        {"__type__": "settings", "__module__": "os", "__class__": "system", "__value__": {}}
    )
    with pytest.raises(EncodingError, match=r"'os\.system' is not an allowed settings type"):
        codec[1](wire)


class Opaque:
    """Has no runtime encoding."""


@pytest.mark.parametrize(
    "value", [Opaque(), [1, {"x": Opaque()}], b"raw"], ids=["opaque", "nested", "bytes"]
)
def test_unencodable_objects_raise_type_error(codec: Codec, value: Any) -> None:
    name = "bytes" if isinstance(value, bytes) else "Opaque"
    with pytest.raises(TypeError, match=f"{name} is not runtime-JSON encodable"):
        codec[0](value)


def test_public_names() -> None:
    assert set(encoding.__all__) == {
        "EncodingError",
        "FastBitArray",
        "RuntimeDecoder",
        "RuntimeEncoder",
        "bitarray_counts",
        "dumps",
        "loads",
    }
