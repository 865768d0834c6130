"""Hostile payloads: what another user may send to the service, its workers, or a client
reading a shared job. Each attack is refused with a typed error, quickly, and without the
side effect it was after (no file, no import, no call, no allocation out of proportion to
the payload). Service-level attacks go here too."""

from __future__ import annotations

import base64
import builtins
import importlib
import io
import json
import struct
import sys
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from qiskit import QuantumCircuit, qpy
from qiskit.quantum_info import Pauli, SparsePauliOp

from qdispatch import encoding
from qdispatch.encoding import EncodingError, RuntimeDecoder, dumps, loads
from qdispatch.runtime import ResultDecoder
from support import ServiceProcess, wait_final

Decode = Callable[..., Any]

DECODERS: dict[str, Decode] = {
    "fast": loads,
    "json": lambda data, **kwargs: json.loads(data, cls=RuntimeDecoder, **kwargs),
}


@pytest.fixture(params=sorted(DECODERS))
def decode(request: pytest.FixtureRequest) -> Decode:
    """Each entry point: ``loads`` and ``json.loads(cls=RuntimeDecoder)``."""
    return DECODERS[request.param]


def settings(module: str, cls: str, value: Any) -> dict[str, Any]:
    return {"__type__": "settings", "__module__": module, "__class__": cls, "__value__": value}


def wire(obj: Any) -> bytes:
    """``obj`` as JSON, encoded values (circuits, arrays) inside it encoded."""
    return dumps(obj)


def tagged(type_name: str, value: Any) -> bytes:
    return orjson.dumps({"__type__": type_name, "__value__": value})


def packed(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data)).decode()


@contextmanager
def recorded_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record every import (statement or importlib) while the block runs."""
    seen: list[str] = []
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def record_import(name: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(name)
        return real_import(name, *args, **kwargs)

    def record_import_module(name: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(name)
        return real_import_module(name, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "__import__", record_import)
        patch.setattr(importlib, "import_module", record_import_module)
        seen.clear()  # monkeypatch's own
        yield seen


@contextmanager
def bounded(seconds: float, megabytes: float) -> Iterator[None]:
    """The block uses under ``seconds`` of CPU and its Python allocations peak under
    ``megabytes``: a bound on the work done (the unbounded inputs would take minutes or
    gigabytes), measured as CPU time so that other processes on a busy machine do not
    count."""
    tracemalloc.start()
    start = time.process_time()
    try:
        yield
    finally:
        elapsed = time.process_time() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.2f} s of CPU"
    assert peak < megabytes * 1e6, f"allocated {peak / 1e6:.1f} MB"


def attempt(decode: Decode, payload: bytes | str) -> EncodingError:
    """The EncodingError decoding ``payload`` raises (no pytest machinery while it runs,
    so that what it imports is the decoder's)."""
    try:
        decode(payload)
    except EncodingError as exc:
        return exc
    raise AssertionError("the payload decoded")


def refused(decode: Decode, payload: bytes | str, type_name: str, match: str, **kw: Any) -> str:
    with pytest.raises(EncodingError, match=match) as info:
        decode(payload, **kw)
    assert info.value.type_name == type_name
    return str(info.value)


# --- settings: arbitrary callables ------------------------------------------------------------


def drawer_payload(target: Path) -> bytes:
    """The attack that wrote a file on the server: qiskit.visualization.circuit_drawer
    called with the client's keyword arguments."""
    circuit = QuantumCircuit(1)
    circuit.h(0)
    return wire(
        {
            "pubs": [
                settings(
                    "qiskit.visualization",
                    "circuit_drawer",
                    {"circuit": circuit, "output": "text", "filename": str(target)},
                )
            ]
        }
    )


def test_circuit_drawer_writes_no_file(
    decode: Decode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "written-by-attacker.txt"
    payload = drawer_payload(target)
    already = set(sys.modules)
    with recorded_imports(monkeypatch) as imports:
        error = attempt(decode, payload)
    assert error.type_name == "settings"
    assert "'qiskit.visualization.circuit_drawer' is not an allowed settings type" in str(error)
    assert not target.exists()
    # The circuit inside is decoded first (QPY imports what it needs, lazily); the module
    # the payload names is not imported.
    assert not [name for name in imports if "visualization" in name]
    assert not [name for name in set(sys.modules) - already if "visualization" in name]


CALLABLES = [
    ("os", "system", {"command": "touch /tmp/qdispatch-pwned"}),
    ("posix", "system", {"command": "touch /tmp/qdispatch-pwned"}),
    ("subprocess", "check_output", {"args": ["id"]}),
    ("subprocess", "Popen", {"args": ["id"]}),
    ("builtins", "eval", {"source": "__import__('os').getcwd()"}),
    ("builtins", "exec", {"source": "pass"}),
    ("builtins", "__import__", {"name": "os"}),
    ("importlib", "import_module", {"name": "antigravity"}),
    ("shutil", "rmtree", {"path": "/tmp/nothing-here"}),
    ("pickle", "loads", {"data": "x"}),
    # A module whose import alone does something (opens a web browser).
    ("antigravity", "geohash", {}),
    # In the packages the old check allowed, but not on the list.
    ("qiskit.qpy", "load", {"file_obj": None}),
    ("qiskit.quantum_info", "random_unitary", {"dims": 2**20}),
    ("qiskit.quantum_info.operators.channel.choi", "Choi", {"data": [[1]]}),
    ("qiskit.circuit.library", "QFT", {"num_qubits": 10**6}),
    ("qiskit_aer", "AerSimulator", {"method": "statevector"}),
    ("qiskit_ibm_runtime", "QiskitRuntimeService", {"channel": "ibm_cloud", "token": "x"}),
    # A method or attribute path of an allowed class, and a near-miss module.
    ("qiskit.quantum_info.operators.operator", "Operator.from_label", {"label": "X" * 40}),
    ("qiskit.quantum_info.operators.operator", "__builtins__", {}),
    ("qiskit.quantum_info.operators.operator ", "Operator", {"data": [[1]]}),
    ("qiskit.quantum_info.operators.operator", "operator", {}),
    ("qdispatch.encoding", "SparsePauliOp", {"data": "X"}),
]


@pytest.mark.parametrize(("module", "name", "kwargs"), CALLABLES, ids=lambda v: str(v)[:40])
def test_settings_call_nothing_off_the_list(
    decode: Decode, monkeypatch: pytest.MonkeyPatch, module: str, name: str, kwargs: Any
) -> None:
    payload = orjson.dumps(settings(module, name, kwargs))
    already = set(sys.modules)
    with recorded_imports(monkeypatch) as imports:
        error = attempt(decode, payload)
    assert "is not an allowed settings type" in str(error)
    assert imports == []
    assert set(sys.modules) == already
    assert not Path("/tmp/qdispatch-pwned").exists()


@pytest.mark.parametrize(
    "tag",
    [
        {"__module__": ["os"], "__class__": "system"},
        {"__module__": "os"},
        {"__module__": None, "__class__": {"x": 1}},
    ],
    ids=["list-module", "no-class", "odd-types"],
)
def test_settings_names_must_be_strings(decode: Decode, tag: dict[str, Any]) -> None:
    payload = orjson.dumps({"__type__": "settings", "__value__": {}, **tag})
    refused(decode, payload, "settings", "must be strings")


def test_refusal_quotes_a_huge_name_briefly(decode: Decode) -> None:
    message = refused(
        decode, orjson.dumps(settings("x" * 100_000, "y", {})), "settings", "not an allowed"
    )
    assert len(message) < 500


# --- settings: the allowed classes, hostile values --------------------------------------------


@pytest.mark.parametrize(
    ("cls", "value", "match"),
    [
        (SparsePauliOp, {"data": ["X"], "copy": False}, "takes no setting 'copy'"),
        (SparsePauliOp, {"data": ["X"], "ignore_pauli_phase": True}, "'ignore_pauli_phase'"),
        (Pauli, {"data": "X", "__class__": "x"}, "takes no setting '__class__'"),
        (Pauli, {}, "missing data"),
        (Pauli, {"data": ["X"]}, "Pauli data must be a Pauli label"),
        (SparsePauliOp, {"data": [1, 2]}, r"data\[0\] must be a Pauli label"),
        (SparsePauliOp, {"data": {"X": 1}}, "must be a list of Pauli labels"),
    ],
    ids=["copy", "phase", "dunder", "missing", "pauli-list", "ints", "dict"],
)
def test_settings_keys_and_types_are_checked(
    decode: Decode, cls: type, value: Any, match: str
) -> None:
    refused(decode, wire(settings(cls.__module__, cls.__name__, value)), "settings", match)


def object_array(*items: Any) -> np.ndarray:
    # Not np.array(items, dtype=object): numpy would ask each Pauli for its dense matrix.
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array


def circuit_of(num_qubits: int) -> QuantumCircuit:
    circuit = QuantumCircuit(num_qubits)
    circuit.h(range(num_qubits))
    return circuit


@pytest.mark.parametrize(
    ("cls", "value", "match"),
    [
        # qiskit simulates a circuit into the 2**40 by 2**40 matrix (or the 2**40 state).
        ("Operator", {"data": circuit_of(40)}, "Operator data must be a numeric ndarray"),
        ("Statevector", {"data": circuit_of(40)}, "Statevector data must be a numeric"),
        ("DensityMatrix", {"data": circuit_of(40)}, "DensityMatrix data must be a numeric"),
        # A Pauli (or an object array of them) converts to its dense matrix.
        ("Operator", {"data": Pauli("X" * 40)}, "must be a numeric ndarray"),
        ("Operator", {"data": object_array(Pauli("X" * 40))}, "numeric ndarray"),
        # 4 MiB of booleans that qiskit would copy as 64 MiB of complex.
        ("Operator", {"data": np.zeros((2048, 2048), dtype=bool)}, "2048 rows or columns"),
        ("Statevector", {"data": np.zeros(2**21, dtype=np.uint8)}, "2097152 rows"),
        ("Statevector", {"data": np.zeros(4), "dims": [2] * 1000}, "dims must be null"),
        ("Operator", {"data": np.eye(2), "input_dims": "x" * 10}, "input_dims must be null"),
    ],
    ids=[
        "operator-circuit",
        "state-circuit",
        "density-circuit",
        "operator-pauli",
        "operator-object-array",
        "operator-2048",
        "state-21-qubits",
        "dims",
        "str-dims",
    ],
)
def test_oversized_quantum_info_is_refused_before_allocating(
    decode: Decode, cls: str, value: Any, match: str
) -> None:
    payload = wire(settings("qiskit.quantum_info", cls, value))
    with bounded(seconds=2.0, megabytes=24):
        refused(decode, payload, "settings", match)


def test_pauli_limits(decode: Decode, monkeypatch: pytest.MonkeyPatch) -> None:
    module = "qiskit.quantum_info"
    long_label = "X" * (encoding.MAX_PAULI_QUBITS + 1)
    refused(decode, wire(settings(module, "Pauli", {"data": long_label})), "settings", "qubits")
    # 100,001 terms: qiskit would take about 2 s to build them.
    many = ["X"] * (encoding.MAX_PAULI_TERMS + 1)
    payload = wire(settings(module, "SparsePauliOp", {"data": many}))
    with bounded(seconds=1.0, megabytes=64):
        refused(decode, payload, "settings", "MAX_PAULI_TERMS")
    monkeypatch.setattr(encoding, "MAX_PAULI_CELLS", 1000)
    wide = ["X" * 100] * 11
    refused(decode, wire(settings(module, "PauliList", {"data": wide})), "settings", "CELLS")


def test_sparse_pauli_op_coefficients_must_match(decode: Decode) -> None:
    module = SparsePauliOp.__module__
    value = {"data": ["XX", "ZZ"], "coeffs": np.ones(3)}
    refused(decode, wire(settings(module, "SparsePauliOp", value)), "settings", "2 coefficients")
    value = {"data": ["XX"], "coeffs": np.array([{"x": 1}], dtype=object)}
    refused(decode, wire(settings(module, "SparsePauliOp", value)), "settings", "numbers")


def test_constructor_errors_are_encoding_errors(decode: Decode) -> None:
    # qiskit raises QiskitError (not a ValueError) for a label it cannot read.
    payload = wire(settings("qiskit.quantum_info", "Pauli", {"data": "XQ"}))
    refused(decode, payload, "settings", r"Pauli\(\*\*settings\) failed")


def test_allowed_types_still_decode(decode: Decode) -> None:
    op = SparsePauliOp(["XXI", "ZIY"], [0.5, -1j])
    assert decode(dumps(op)) == op
    # The public module name is accepted too.
    assert decode(wire(settings("qiskit.quantum_info", "Pauli", {"data": "-iXZ"}))) == Pauli("-iXZ")


# --- settings: extension by programs and clients ----------------------------------------------


class Rotation:
    """A program's own type: settings ``{"angle": float}``."""

    def __init__(self, angle: float, axis: str = "z") -> None:
        self.angle, self.axis = angle, axis

    @property
    def settings(self) -> dict[str, Any]:
        return {"angle": self.angle, "axis": self.axis}


def test_programs_and_clients_extend_the_list(decode: Decode) -> None:
    payload = dumps({"r": Rotation(0.5)})
    refused(decode, payload, "settings", "test_hostile.Rotation' is not an allowed")
    got = decode(payload, settings_types=[Rotation])["r"]
    assert isinstance(got, Rotation)
    assert (got.angle, got.axis) == (0.5, "z")
    # Only the constructor's named parameters.
    bad = orjson.dumps(settings(__name__, "Rotation", {"angle": 1, "self": 2}))
    refused(decode, bad, "settings", "takes no setting 'self'", settings_types=[Rotation])
    refused(decode, orjson.dumps(settings(__name__, "Rotation", {})), "settings", "missing angle",
            settings_types=[Rotation])  # fmt: skip
    # Listing a built-in class does not drop its checks.
    big = wire(settings("qiskit.quantum_info", "Operator", {"data": circuit_of(30)}))
    refused(decode, big, "settings", "numeric ndarray", settings_types=[SparsePauliOp])


def test_result_decoder_is_closed_and_extensible(tmp_path: Path) -> None:
    target = tmp_path / "client-side.txt"
    with pytest.raises(EncodingError):
        ResultDecoder.decode(drawer_payload(target))
    assert not target.exists()

    class RotationResults(ResultDecoder):
        settings_types = (Rotation,)

    assert RotationResults.decode(dumps(Rotation(1.0))).angle == 1.0


# --- ndarray ---------------------------------------------------------------------------------


def npy(descr: str, shape: tuple[int, ...], data: bytes = b"") -> str:
    """A packed .npy file with this header (version 1.0), as numpy frames it."""
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * (pad % 64) + "\n"
    return packed(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data)


def test_object_array_leaves_are_not_converted(decode: Decode) -> None:
    # numpy's np.array(..., dtype=object) asks each leaf for __array__: a 40-qubit Pauli
    # would answer with its 2**40 by 2**40 matrix.
    payload = wire({"__type__": "ndarray", "__value__": [Pauli("X" * 40), Pauli("Z" * 40)]})
    with bounded(seconds=1.0, megabytes=8):
        got = decode(payload)
    assert got.shape == (2,)
    assert got.dtype == object
    assert got[0] == Pauli("X" * 40)


@pytest.mark.parametrize(
    ("value", "shape"),
    [([[1, 2], [3, 4]], (2, 2)), ([[1, 2], [3]], (2,)), ([], (0,)), ([[], []], (2, 0)), (5, ())],
    ids=["square", "ragged", "empty", "empty-rows", "scalar"],
)
def test_object_arrays_shape_as_numpy(decode: Decode, value: Any, shape: tuple[int, ...]) -> None:
    got = decode(tagged("ndarray", value))
    want = np.array(value, dtype=object)
    assert got.shape == want.shape == shape
    assert got.tolist() == want.tolist()


def test_empty_array_cannot_claim_a_huge_shape(decode: Decode) -> None:
    # No data for 0 elements, but 10**18 positions for any loop over its leading axes.
    payload = tagged("ndarray", npy("<f8", (10**9, 10**9, 0)))
    refused(decode, payload, "ndarray", "MAX_ARRAY_ELEMENTS")
    payload = tagged("ndarray", npy("|V0", (10**6, 10**6)))
    refused(decode, payload, "ndarray", "MAX_ARRAY_ELEMENTS")
    # A zero-size field of a structured dtype is a free (10**9, 10**9, 0) view of each row.
    payload = tagged("ndarray", npy("[('a', '<f8', (1000000000, 1000000000, 0))]", (1,)))
    refused(decode, payload, "ndarray", "MAX_ARRAY_ELEMENTS")


def test_deep_object_array_is_refused(decode: Decode) -> None:
    nested: Any = 1
    for _ in range(70):
        nested = [nested]
    refused(decode, tagged("ndarray", nested), "ndarray", "more than 64 dimensions")


def test_dtype_descr_is_bounded(decode: Decode, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = "[('a', " * 20 + "'<f8'" + ")]" * 20
    refused(decode, tagged("ndarray", npy(deep, (1,))), "ndarray", "MAX_DTYPE_NESTING")
    fields = repr([(f"f{i}", "<f8") for i in range(2000)])
    refused(decode, tagged("ndarray", npy(fields, (0,))), "ndarray", "MAX_DTYPE_DESCR")


# --- set, containers, results -------------------------------------------------------------------


def colliding_complexes(count: int) -> list[complex]:
    """Distinct complex numbers with one hash: hash(a + bj) = hash(a) + 1000003 * hash(b)."""
    return [complex(5 - 1_000_003 * k, k) for k in range(1, count + 1)]


def test_set_hash_flood_is_refused(decode: Decode) -> None:
    values = colliding_complexes(20_000)
    assert len({hash(v) for v in values}) == 1  # a set of these is quadratic
    payload = tagged(
        "set", [{"__type__": "complex", "__value__": [v.real, v.imag]} for v in values]
    )
    with bounded(seconds=2.0, megabytes=64):
        refused(decode, payload, "set", "share one hash")
    assert decode(tagged("set", [1, 2, "a"])) == {1, 2, "a"}


@pytest.mark.parametrize("name", ["__dict__", "__class__", "keys", "shape", 3])
def test_data_bin_field_names(decode: Decode, name: Any) -> None:
    payload = tagged("DataBin", {"field_names": [name], "shape": [], "fields": {str(name): 1}})
    refused(decode, payload, "DataBin", "cannot be a field name")


def test_data_bin_and_bindings_shapes_are_bounded(decode: Decode) -> None:
    huge = [10**9, 10**9]
    refused(decode, tagged("DataBin", {"field_names": [], "shape": huge, "fields": {}}),
            "DataBin", "MAX_ARRAY_ELEMENTS")  # fmt: skip
    refused(decode, tagged("BindingsArray", {"shape": huge, "data": {}}),
            "BindingsArray", "MAX_ARRAY_ELEMENTS")  # fmt: skip


def test_bindings_keys_are_lists_of_names(decode: Decode) -> None:
    deep = "[" * 5000 + "]" * 5000
    refused(decode, tagged("BindingsArray", {"shape": [], "data": {deep: 1}}), "BindingsArray",
            "not JSON")  # fmt: skip
    refused(decode, tagged("BindingsArray", {"shape": [], "data": {'{"a": 1}': 1}}),
            "BindingsArray", "not a list of names")  # fmt: skip


@pytest.mark.parametrize("key", ["_data_attributes", "to_dict", "__dict__", "__class__"])
def test_result_data_cannot_shadow_attributes(decode: Decode, key: str) -> None:
    result = {
        "backend_name": "b",
        "backend_version": "1",
        "qobj_id": "q",
        "job_id": "j",
        "success": True,
        "results": [{"shots": 1, "success": True, "data": {key: {"x": 1}}}],
    }
    refused(decode, tagged("Result", result), "Result", "cannot be a data key")


def test_malformed_result_is_an_encoding_error(decode: Decode) -> None:
    refused(decode, tagged("Result", {"results": 5}), "Result", "not a list")
    refused(decode, tagged("Result", {"results": [{"data": {}}]}), "Result", "missing shots")
    bad = {"results": [{"data": {}, "shots": 1, "success": True, "meas_return": "x"}]}
    refused(decode, tagged("Result", bad), "Result", "QiskitError")


def test_deep_nesting_is_an_encoding_error(decode: Decode) -> None:
    refused(decode, "[" * 100_000 + "]" * 100_000, "JSON", "nested too deeply")
    # Within orjson's limit, beyond Python's recursion in the decoding pass.
    deep = '{"a":' * 1020 + '{"__type__": "complex", "__value__": [1, 2]}' + "}" * 1020
    refused(decode, deep, "JSON", "nested too deeply")


# --- QPY --------------------------------------------------------------------------------------


def qpy_payload(circuit: QuantumCircuit) -> bytearray:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return bytearray(buffer.getvalue())


def circuit_header_offset(payload: bytes) -> int:
    # FILE_HEADER_V10 (19 bytes), the type key, then (version 16 on) the circuit table.
    return struct.unpack_from("!Q", payload, 20)[0]


def set_qubits(payload: bytearray, qubits: int) -> bytes:
    struct.pack_into("!I", payload, circuit_header_offset(payload) + 5, qubits)
    return bytes(payload)


@pytest.fixture
def no_qpy_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """qpy.load must not be reached."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("qpy.load was called")

    monkeypatch.setattr(encoding.qpy, "load", refuse)


@pytest.mark.parametrize("type_name", ["QuantumCircuit", "Instruction", "ParameterExpression"])
def test_qpy_declaring_billions_of_qubits_is_refused(
    decode: Decode, no_qpy_load: None, type_name: str
) -> None:
    # 100 bytes that made qiskit's QPY reader allocate 3.2 GB, then abort the process.
    payload = set_qubits(qpy_payload(QuantumCircuit(1)), 200_000_000)
    refused(decode, tagged(type_name, packed(payload)), type_name, "MAX_CIRCUIT_QUBITS")


def test_qpy_header_checks(
    decode: Decode, no_qpy_load: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = qpy_payload(QuantumCircuit(2, 2))
    old = bytearray(good)
    old[6] = 12
    refused(decode, tagged("QuantumCircuit", packed(bytes(old))), "QuantumCircuit", "version 12")
    two = bytearray(good)
    struct.pack_into("!Q", two, 10, 2)
    refused(decode, tagged("QuantumCircuit", packed(bytes(two))), "QuantumCircuit", "2 programs")
    lying = bytearray(good)
    struct.pack_into("!Q", lying, circuit_header_offset(good) + 25, 2**40)
    refused(decode, tagged("QuantumCircuit", packed(bytes(lying))), "QuantumCircuit",
            "instructions")  # fmt: skip
    clbits = bytearray(good)
    struct.pack_into("!I", clbits, circuit_header_offset(good) + 9, 2**31)
    refused(decode, tagged("QuantumCircuit", packed(bytes(clbits))), "QuantumCircuit", "clbits")
    monkeypatch.setattr(encoding, "MAX_QPY_BYTES", 100)
    refused(decode, tagged("QuantumCircuit", packed(bytes(good))), "QuantumCircuit",
            "MAX_QPY_BYTES")  # fmt: skip


def test_circuits_still_decode(decode: Decode) -> None:
    circuit = circuit_of(5)
    assert decode(dumps(circuit)) == circuit


# --- through the service ------------------------------------------------------------------------


def post_inputs(service: ServiceProcess, params: bytes) -> Any:
    body = {"program_id": "sampler", "backend": "aer_simulator", "params": orjson.Fragment(params)}
    return service.client().post("/jobs", content=orjson.dumps(body))


def test_service_refuses_hostile_inputs(
    service_factory: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    service = service_factory("--workers", "1")
    client = service.client()
    target = tmp_path / "written-on-the-server.txt"

    answer = post_inputs(service, drawer_payload(target))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_params"
    assert (
        "'qiskit.visualization.circuit_drawer' is not an allowed settings type"
        in (error["message"])
    )
    assert not target.exists()

    # A 100-byte circuit that used to abort the service's process.
    wide = set_qubits(qpy_payload(QuantumCircuit(1)), 200_000_000)
    params = orjson.dumps({"pubs": [[{"__type__": "QuantumCircuit", "__value__": packed(wide)}]]})
    answer = post_inputs(service, params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_params"
    assert "MAX_CIRCUIT_QUBITS" in answer.json()["error"]["message"]

    # A nested circuit (a custom gate's definition) declaring 2**28 qubits: qiskit's
    # reader allocates 4 GiB for it and aborts its process. It is checked in a separate
    # process, so only that one ends; the job is refused and the next check still runs.
    params = orjson.dumps(
        {"pubs": [[{"__type__": "QuantumCircuit", "__value__": packed(nested_wide_qpy())}]]}
    )
    answer = post_inputs(service, params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_params"
    assert "memory" in answer.json()["error"]["message"]
    good = QuantumCircuit(1, 1)
    good.measure(0, 0)
    answer = post_inputs(service, dumps({"pubs": [[good]], "shots": 10}))
    assert answer.status_code == 201, answer.text
    assert wait_final(client, answer.json()["id"])["status"] == "DONE"

    # No job was created for any attack, and the service keeps answering.
    assert client.get("/jobs").json()["count"] == 1
    assert client.get("/info").status_code == 200
    assert service.proc is not None
    assert service.proc.poll() is None


def nested_wide_qpy(qubits: int = 1 << 28) -> bytes:
    """QPY of a one-qubit circuit whose custom gate's definition declares ``qubits``."""
    inner = QuantumCircuit(1, name="nestedgate")
    inner.x(0)
    outer = QuantumCircuit(1)
    outer.append(inner.to_gate(), [0])
    data = bytearray(qpy_payload(outer))
    header = struct.Struct("!H1cHIIQIQI")
    name = b"nestedgate"
    for offset in range(len(data) - header.size):
        fields = header.unpack_from(data, offset)
        end = offset + header.size
        if fields[0] == len(name) and fields[3] == 1 and data[end : end + len(name)] == name:
            struct.pack_into("!I", data, offset + 5, qubits)  # after name, phase type, size
            return bytes(data)
    raise AssertionError("no nested circuit header in the QPY data")


def test_payloads_of_one_document_share_one_budget() -> None:
    """Each payload alone fits the budget; together they do not: the second is refused
    before it is unpacked, whatever its own size."""
    array = np.zeros(1 << 16, dtype=np.uint8)  # 64 KiB, compresses to almost nothing
    doc = encoding.dumps({"a": array, "b": array})
    assert len(doc) < 4096
    decoded = encoding.loads(doc, max_bytes=2 * ((1 << 16) + 1024))
    assert decoded["a"].nbytes == decoded["b"].nbytes == 1 << 16
    with pytest.raises(encoding.EncodingError, match="ndarray"):
        encoding.loads(doc, max_bytes=(1 << 16) + 1024)


def test_a_zlib_bomb_stops_at_the_document_budget() -> None:
    bomb = encoding.dumps(np.zeros(64 << 20, dtype=np.uint8))  # 64 MiB of zeros
    assert len(bomb) < 1 << 20
    with pytest.raises(encoding.EncodingError, match="ndarray"):
        encoding.loads(bomb, max_bytes=1 << 20)


def test_qpy_instruction_count_is_bounded(decode: Decode, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few bytes of zlib can describe millions of instructions: the count the header
    declares is bounded as a Qobj experiment's is."""
    monkeypatch.setattr(encoding, "MAX_QPY_INSTRUCTIONS", 10)
    circuit = QuantumCircuit(1)
    for _ in range(11):
        circuit.x(0)
    refused(decode, dumps(circuit), "QuantumCircuit", "MAX_QPY_INSTRUCTIONS")
    circuit.data.pop()
    assert decode(dumps(circuit)) == circuit


def test_runtime_decoder_alone_has_a_document_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """``json.loads(cls=RuntimeDecoder)`` outside ``loads`` still shares one budget between
    the document's payloads."""
    monkeypatch.setattr(encoding, "MAX_DECODED_BYTES", (1 << 16) + 1024)
    array = np.zeros(1 << 16, dtype=np.uint8)
    doc = dumps({"a": array, "b": array}).decode()
    assert json.loads(dumps({"a": array}).decode(), cls=RuntimeDecoder)["a"].nbytes == 1 << 16
    with pytest.raises(EncodingError, match="ndarray"):
        json.loads(doc, cls=RuntimeDecoder)
