"""The Qobj reader: a QasmQobj (a dict or its JSON bytes) back into qiskit circuits.

The counterpart of :mod:`qdispatch.assembler`, which writes circuits as a QasmQobj: what
``IBMQJob.circuits()`` returns, and what the service's workers run. Experiments of standard
gates, measures, resets, barriers and delays are rebuilt natively through Qiskit's C API
(``_native.qobj_to_circuits``); the others (conditionals, ``unitary``) by the Python path
here, which also gives every error its experiment and instruction. A QPY experiment
(docs/protocol.md, "Circuits as QPY") is decoded here, checked as hostile input: header
first, then qiskit's reader with its instruction lookups narrowed
(:mod:`qdispatch.qpyguard`), then the decoded circuit against its Qobj header.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import gc
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import orjson
from qiskit.circuit import (
    Barrier,
    ClassicalRegister,
    Clbit,
    Delay,
    Instruction,
    Measure,
    QuantumCircuit,
    QuantumRegister,
    Qubit,
    Reset,
)
from qiskit.circuit.library import UnitaryGate, get_standard_gate_name_mapping

from qdispatch import _native
from qdispatch.encoding import MAX_QPY_INSTRUCTIONS, EncodingError, _check_qpy
from qdispatch.qpyguard import guarded_load

__all__ = [
    "MAX_QPY_EXPERIMENT_BYTES",
    "QobjExecutionError",
    "qobj_bytes_to_circuits",
    "qobj_to_circuits",
]

#: Characters of one experiment's base64 ``qpy``: the Qobj validator's default
#: ``max_qpy_bytes`` (docs/service.md, "Limits"), checked again where it is decoded.
MAX_QPY_EXPERIMENT_BYTES = 8 << 20


class QobjExecutionError(Exception):
    """A Qobj could not be turned into circuits or run; the message names the problem."""


@functools.lru_cache(maxsize=1)
def _standard_gates() -> dict[str, Instruction]:
    return get_standard_gate_name_mapping()


def _registers(
    sizes: Any, default_name: str, default_size: int, kind: str, exp_name: str
) -> list[tuple[str, int]]:
    if not sizes:
        return [(default_name, default_size)] if default_size > 0 else []
    regs: list[tuple[str, int]] = []
    try:
        for name, size in sizes:
            regs.append((str(name), int(size)))
    except (TypeError, ValueError) as exc:
        raise QobjExecutionError(
            f"experiment '{exp_name}': malformed {kind}_sizes {sizes!r}"
        ) from exc
    total = sum(size for _, size in regs)
    if total < default_size:
        # The header declares more qubits/slots than its registers hold (hand-written Qobjs
        # do); give the rest a register of their own rather than dropping them.
        regs.append((f"{default_name}_extra", default_size - total))
    return regs


def _max_index(instructions: Iterable[dict[str, Any]], key: str) -> int:
    highest = -1
    for inst in instructions:
        for index in inst.get(key) or ():
            if isinstance(index, int) and index > highest:
                highest = index
    return highest + 1


def _to_matrix(param: Any) -> Any:
    arr = np.asarray(param)
    if arr.ndim == 3 and arr.shape[-1] == 2 and not np.iscomplexobj(arr):
        # Qobj JSON has no complex numbers: entries are [re, im] pairs.
        return arr[..., 0] + 1j * arr[..., 1]
    if arr.ndim == 2:
        return arr.astype(complex)
    raise ValueError(f"unitary matrix has shape {arr.shape}")


class _Condition:
    """A bfunc's test, resolved to what `QuantumCircuit.if_test` takes."""

    __slots__ = ("negate", "target")

    def __init__(self, target: tuple[Any, Any], negate: bool) -> None:
        self.target = target
        self.negate = negate


def _parse_hex(value: Any, what: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 16)
    except ValueError as exc:
        raise QobjExecutionError(f"{what} {value!r} is not a hex string") from exc


def _resolve_condition(
    mask_in: Any,
    relation: Any,
    val_in: Any,
    cregs: Sequence[tuple[ClassicalRegister, int]],
    clbits: Sequence[Clbit],
) -> _Condition:
    mask = _parse_hex(mask_in, "bfunc mask")
    val = _parse_hex(val_in, "bfunc val")
    if relation not in ("==", "!="):
        raise QobjExecutionError(
            f"bfunc relation {relation!r} is not supported (only '==' and '!=')"
        )
    negate = relation == "!="
    if val & ~mask:
        raise QobjExecutionError(f"bfunc val {val_in!r} has bits outside mask {mask_in!r}")
    # A condition on a whole classical register, as qiskit's assembler wrote `c_if(creg, v)`.
    for creg, offset in cregs:
        if mask == ((1 << len(creg)) - 1) << offset:
            return _Condition((creg, val >> offset), negate)
    if mask > 0 and mask & (mask - 1) == 0:
        index = mask.bit_length() - 1
        if index < len(clbits):
            return _Condition((clbits[index], bool(val)), negate)
    raise QobjExecutionError(
        f"bfunc mask {mask_in!r} covers neither one classical register nor one bit; "
        "only such conditions are supported"
    )


def _build_operation(inst: dict[str, Any], name: str, n_qargs: int) -> Instruction:
    params = inst.get("params") or []
    if name == "barrier":
        return Barrier(n_qargs)
    if name == "delay":
        duration = params[0] if params else 0
        unit = inst.get("unit", "dt")
        if unit == "dt" and isinstance(duration, float) and duration.is_integer():
            # JSON writers may emit 100.0; a duration in dt must be an integer.
            duration = int(duration)
        return Delay(duration, unit=unit)
    if name == "unitary":
        if len(params) != 1:
            raise ValueError("unitary takes exactly one parameter (its matrix)")
        return UnitaryGate(_to_matrix(params[0]), label=inst.get("label"))
    template = _standard_gates().get(name)
    if template is None:
        raise ValueError(f"unknown instruction '{name}'")
    if not params and not template.params:
        # Parameterless standard gates are immutable singletons: reuse the instance.
        return template
    if len(params) != len(template.params):
        raise ValueError(f"'{name}' takes {len(template.params)} parameters, got {len(params)}")
    # The mapping holds instances with Parameter placeholders; build a bound one.
    return template.base_class(*params)


def _experiment_to_circuit(
    experiment: dict[str, Any], index: int, qobj_config: dict[str, Any]
) -> QuantumCircuit:
    header = experiment.get("header") or {}
    exp_config = experiment.get("config") or {}
    instructions: list[dict[str, Any]] = experiment.get("instructions") or []
    name = str(header.get("name") or f"circuit-{index}")
    label = f"experiment {index} ('{name}')"
    if "qpy" in experiment:
        return _qpy_experiment(experiment["qpy"], header, name, label)

    # Declared register sizes are authoritative (an index beyond them is an error); without
    # them, one register is sized to fit every index used.
    n_qubits = int(header.get("n_qubits") or 0)
    if not header.get("qreg_sizes"):
        n_qubits = max(n_qubits, _max_index(instructions, "qubits"))
    n_clbits = int(
        header.get("memory_slots")
        or exp_config.get("memory_slots")
        or (0 if header.get("creg_sizes") else qobj_config.get("memory_slots") or 0)
    )
    if not header.get("creg_sizes"):
        n_clbits = max(n_clbits, _max_index(instructions, "memory"))
    qregs = [
        QuantumRegister(size, reg_name)
        for reg_name, size in _registers(header.get("qreg_sizes"), "q", n_qubits, "qreg", name)
    ]
    cregs = [
        ClassicalRegister(size, reg_name)
        for reg_name, size in _registers(header.get("creg_sizes"), "c", n_clbits, "creg", name)
    ]
    circuit = QuantumCircuit(*qregs, *cregs, name=name)
    qubits: list[Qubit] = list(circuit.qubits)
    clbits: list[Clbit] = list(circuit.clbits)
    creg_offsets: list[tuple[ClassicalRegister, int]] = []
    offset = 0
    for creg in cregs:
        creg_offsets.append((creg, offset))
        offset += len(creg)

    conditions: dict[int, _Condition] = {}
    measure = Measure()
    reset = Reset()
    for i, inst in enumerate(instructions):
        op_name = inst.get("name")
        try:
            if op_name == "bfunc":
                register = inst.get("register")
                # The old assembler wrote a register slot number; some writers wrap it in a list.
                if isinstance(register, list) and len(register) == 1:
                    register = register[0]
                if not isinstance(register, int):
                    raise ValueError(f"bfunc register {register!r} is not an integer")
                conditions[register] = _resolve_condition(
                    inst.get("mask"),
                    inst.get("relation", "=="),
                    inst.get("val"),
                    creg_offsets,
                    clbits,
                )
                continue
            if not isinstance(op_name, str):
                raise ValueError("instruction has no name")
            qidx: list[int] = inst.get("qubits") or []
            if len(set(qidx)) != len(qidx):
                raise ValueError(f"qubits {qidx} repeat")
            if qidx and min(qidx) < 0:
                # A negative index would silently pick a qubit from the end of the list.
                raise IndexError(min(qidx))
            qargs = [qubits[q] for q in qidx]
            if op_name == "measure":
                cidx: list[int] = inst.get("memory") or []
                if len(cidx) != len(qidx):
                    raise ValueError(f"measures {len(qidx)} qubits into {len(cidx)} slots")
                if cidx and min(cidx) < 0:
                    raise IndexError(min(cidx))
                ops = [(measure, [qa], [clbits[c]]) for qa, c in zip(qargs, cidx, strict=True)]
            elif op_name == "reset":
                ops = [(reset, [qa], []) for qa in qargs]
            else:
                ops = [(_build_operation(inst, op_name, len(qargs)), qargs, [])]
            condition = inst.get("conditional")
            if isinstance(condition, dict):
                # The oldest Qobj schema inlined the condition in the instruction.
                cond = _resolve_condition(
                    condition.get("mask"), "==", condition.get("val"), creg_offsets, clbits
                )
            elif condition is not None:
                if condition not in conditions:
                    raise ValueError(f"conditional on register {condition}, set by no bfunc")
                cond = conditions[condition]
            else:
                for op, qa, ca in ops:
                    circuit._append(op, qa, ca)
                continue
            _append_conditional(circuit, cond, ops)
        except QobjExecutionError as exc:
            raise QobjExecutionError(f"{label}, instruction {i} ({op_name}): {exc}") from exc
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            detail = "qubit or memory slot out of range" if isinstance(exc, IndexError) else exc
            raise QobjExecutionError(f"{label}, instruction {i} ({op_name}): {detail}") from exc
        except Exception as exc:  # qiskit's own errors (CircuitError, ...)
            raise QobjExecutionError(f"{label}, instruction {i} ({op_name}): {exc}") from exc

    circuit.global_phase = float(header.get("global_phase") or 0.0)
    metadata = header.get("metadata")
    circuit.metadata = dict(metadata) if isinstance(metadata, dict) else {}
    return circuit


def check_qpy_experiments(raw: bytes) -> int:
    """Decodes the QPY experiments of the Qobj ``raw`` as a worker will, and holds each to
    its header; returns how many there were. The service runs it in a checking process
    with a memory limit at submission: what qiskit's reader allocates is declared in
    nested headers that no check before loading reads.

    Raises:
        QobjExecutionError: an experiment's QPY does not decode or fit its header.
    """
    qobj = _loads(raw)
    found = 0
    for index, experiment in enumerate(qobj.get("experiments") or []):
        if isinstance(experiment, dict) and "qpy" in experiment:
            header = experiment.get("header") or {}
            name = str(header.get("name") or f"circuit-{index}")
            _qpy_experiment(experiment["qpy"], header, name, f"experiment {index} ('{name}')")
            found += 1
    return found


def _qpy_experiment(payload: Any, header: dict[str, Any], name: str, label: str) -> QuantumCircuit:
    """The circuit of a QPY experiment, held to its header: the widths and registers the
    result is shaped by, and the instruction limit of any experiment."""

    def refuse(problem: str) -> QobjExecutionError:
        return QobjExecutionError(f"{label}: {problem}")

    if not isinstance(payload, str):
        raise refuse(f"qpy must be a base64 string, not {type(payload).__name__}")
    if len(payload) > MAX_QPY_EXPERIMENT_BYTES:
        raise refuse(
            f"qpy is {len(payload)} bytes; at most {MAX_QPY_EXPERIMENT_BYTES} are allowed "
            "(max_qpy_bytes)"
        )
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise refuse(f"qpy is not base64: {exc}") from exc
    try:
        _check_qpy("QuantumCircuit", raw)
        loaded = guarded_load(raw)
    except EncodingError as exc:
        raise refuse(str(exc)) from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    # qiskit's reader raises many kinds of errors on bad data and its Rust part panics on
    # some (pyo3's PanicException derives from BaseException).
    except BaseException as exc:
        raise refuse(f"invalid QPY data ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if len(loaded) != 1 or not isinstance(loaded[0], QuantumCircuit):
        raise refuse(f"qpy holds {len(loaded)} programs; expected one circuit")
    circuit: QuantumCircuit = loaded[0]
    for field, value in (("n_qubits", circuit.num_qubits), ("memory_slots", circuit.num_clbits)):
        if header.get(field) != value:
            raise refuse(f"the QPY circuit has {field}={value}, its header {header.get(field)!r}")
    for field, registers in (("qreg_sizes", circuit.qregs), ("creg_sizes", circuit.cregs)):
        declared = header.get(field)
        if declared is not None and declared != [[r.name, r.size] for r in registers]:
            raise refuse(f"the QPY circuit's registers are not the header's {field}")
    count = _count_instructions(circuit, MAX_QPY_INSTRUCTIONS)
    if count > MAX_QPY_INSTRUCTIONS:
        raise refuse(
            f"the QPY circuit has more than {MAX_QPY_INSTRUCTIONS} instructions, loop and "
            "branch bodies included (max_instructions)"
        )
    circuit.name = name
    metadata = header.get("metadata")
    circuit.metadata = dict(metadata) if isinstance(metadata, dict) else {}
    return circuit


def _count_instructions(circuit: QuantumCircuit, most: int) -> int:
    """Instructions of ``circuit`` and of every block in it, counted until past ``most``."""
    total = 0
    pending = [circuit]
    while pending and total <= most:
        current = pending.pop()
        total += len(current.data)
        for inst in current.data:
            pending.extend(getattr(inst.operation, "blocks", ()))
    return total


def _append_conditional(
    circuit: QuantumCircuit,
    cond: _Condition,
    ops: Sequence[tuple[Instruction, Sequence[Any], Sequence[Any]]],
) -> None:
    # `append` (not `_append`) so that the control-flow builder scope sees the instruction.
    if cond.negate:
        with circuit.if_test(cond.target) as else_:
            pass
        with else_:
            for op, qa, ca in ops:
                circuit.append(op, qa, ca)
    else:
        with circuit.if_test(cond.target):
            for op, qa, ca in ops:
                circuit.append(op, qa, ca)


def qobj_to_circuits(qobj: dict[str, Any] | bytes) -> list[QuantumCircuit]:
    """Rebuilds the circuits of a QasmQobj, given as a dict or as its JSON bytes.

    Registers come from each experiment header's ``qreg_sizes``/``creg_sizes`` (else one
    ``q`` and one ``c`` register); ``bfunc`` + ``conditional`` become ``if_test`` blocks on a
    classical register or a single bit; the header's name, ``global_phase`` and
    ``metadata`` are restored. Raises :class:`QobjExecutionError` naming the experiment and
    instruction for anything that cannot be rebuilt. Bytes go through
    :func:`qobj_bytes_to_circuits` (natively, where it can).
    """
    if isinstance(qobj, bytes | bytearray | memoryview):
        return qobj_bytes_to_circuits(bytes(qobj))
    if not isinstance(qobj, dict):
        raise QobjExecutionError("Qobj is not a JSON object")
    kind = qobj.get("type", "QASM")
    if kind != "QASM":
        raise QobjExecutionError(f"Qobj type '{kind}' cannot run: only 'QASM' is supported")
    experiments = qobj.get("experiments")
    if not isinstance(experiments, list) or not experiments:
        raise QobjExecutionError("Qobj has no experiments")
    config = qobj.get("config") or {}
    return [_experiment_to_circuit(exp, i, config) for i, exp in enumerate(experiments)]


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise QobjExecutionError(f"Qobj is not valid JSON: {exc}") from exc


def qobj_bytes_to_circuits(raw: bytes, qobj: dict[str, Any] | None = None) -> list[QuantumCircuit]:
    """Rebuilds the circuits of a QasmQobj from its JSON bytes, as :func:`qobj_to_circuits`.

    Experiments of standard gates, measures, resets, barriers and delays are rebuilt
    natively through Qiskit's C API (``_native.qobj_to_circuits``), without a Python tree
    of the Qobj; the others (conditionals, ``unitary``, anything the rules reject) and,
    when the C API is unavailable, all of them, by the Python path, from ``qobj`` (the
    already parsed ``raw``) or from ``raw`` parsed here.
    """
    with _gc_paused():
        native = _native.qobj_to_circuits(raw)
    if native is not None and all(circuit is not None for circuit in native):
        return native  # no None left, as checked
    if qobj is None:
        qobj = _loads(raw)
    if native is None:
        return qobj_to_circuits(qobj)
    # The native reader accepted the Qobj's shape: a dict with a non-empty experiments list.
    assert isinstance(qobj, dict)
    experiments: list[dict[str, Any]] = qobj["experiments"]
    config = qobj.get("config") or {}
    return [
        circuit if circuit is not None else _experiment_to_circuit(experiments[i], i, config)
        for i, circuit in enumerate(native)
    ]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Parsing a Qobj and building its circuits allocate hundreds of thousands of acyclic
    # objects; the cyclic GC rescanning them made orjson.loads alone 5-10x slower (measured:
    # 1.8 MB Qobj, 0.1-0.18 s vs 0.02 s). Nothing here creates cycles worth collecting early.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
