"""Circuits → QasmQobj: :func:`assemble` and the wire-bytes fast path.

:func:`circuits_to_qobj_json` is what the client sends: it returns the Qobj's JSON bytes
directly. Where Qiskit's C API is usable (``qdispatch._native.capi_available()``), circuits
are read natively, a few microseconds each; a circuit the C API cannot represent (control
flow, ``unitary``, unbound parameters, custom instructions) is built by the Python path in
this module, for that circuit only. The two paths write the same bytes.

A circuit whose control flow or classical expressions the Qobj's instructions cannot
express (anything but an ``if_test`` of one instruction on a bit or register compared with
a value: loops, ``switch``, ``else`` branches, ``expr`` conditions, ``Var`` s) travels in the
same Qobj as a QPY experiment: its usual header and config, no instructions, and the
circuit as base64 QPY in ``qpy`` (docs/protocol.md, "Circuits as QPY").

:func:`assemble` returns a :class:`~qdispatch.qobj.QasmQobj` for users who want the object
that qiskit < 2's ``assemble`` returned.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from qiskit import qpy
from qiskit.circuit import (
    ClassicalRegister,
    Clbit,
    ControlFlowOp,
    Delay,
    IfElseOp,
    Instruction,
    ParameterExpression,
    QuantumCircuit,
)
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.exceptions import QiskitError

from qdispatch import _native
from qdispatch.qobj import QasmQobj, QobjHeader

__all__ = ["AssembleError", "assemble", "circuits_to_qobj_json"]

_DEFAULT_SHOTS = 1024
# Config fields computed from the circuits; a run option of the same name is ignored.
_COMPUTED_CONFIG = ("memory_slots", "n_qubits")


class AssembleError(QiskitError, ValueError):
    """A circuit cannot be written as a QasmQobj; the message names the circuit (its index
    in the list, when assembling a list, and its name), the instruction and the problem.

    ``index`` is the circuit's position in the list given (``None`` when not known) and
    ``detail`` the message without that position, for callers that renumber circuits
    (the job manager names a circuit by its index in the whole set).
    """

    def __init__(self, message: str, index: int | None = None, detail: str | None = None):
        super().__init__(message)
        self.index = index
        self.detail = detail if detail is not None else message
        #: The circuit it is about, where known.
        self.circuit: QuantumCircuit | None = None


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def assemble(
    experiments: QuantumCircuit | Sequence[QuantumCircuit],
    backend: Any = None,
    *,
    shots: int | None = None,
    memory: bool = False,
    seed_simulator: int | None = None,
    qobj_id: str | None = None,
    qobj_header: QobjHeader | Mapping[str, Any] | None = None,
    **run_config: Any,
) -> QasmQobj:
    """Assembles circuits into a :class:`~qdispatch.qobj.QasmQobj`.

    Args:
        experiments: a ``QuantumCircuit`` or a list of them. Pulse ``Schedule`` objects do
            not exist in qiskit >= 2 and are rejected.
        backend: optional backend; its ``name`` (and ``backend_version``, if any) go in the
            Qobj header as ``backend_name`` / ``backend_version``.
        shots: number of repetitions of each circuit (default 1024).
        memory: whether to return per-shot measurement outcomes.
        seed_simulator: seed of the simulator's random number generator.
        qobj_id: identifier of the Qobj (default: a new UUID).
        qobj_header: user data returned in the result header.
        **run_config: any other run option; written to the Qobj config as given.

    Returns:
        The Qobj; ``qobj.to_json()`` gives the same bytes as :func:`circuits_to_qobj_json`.
        Its experiments are kept as those bytes until first read (``qobj.experiments``,
        ``to_dict()``…), so assembling and sending costs about what writing the bytes does;
        read or changed, the Qobj behaves as one built from objects.

    Raises:
        TypeError: an experiment is not a ``QuantumCircuit`` (e.g. a Pulse schedule).
        AssembleError: a circuit has unbound parameters or control flow that a QasmQobj
            cannot express.
    """
    circuits = _as_circuits(experiments)
    wire = circuits_to_qobj_json(
        circuits,
        backend,
        shots=shots,
        memory=memory,
        seed_simulator=seed_simulator,
        qobj_id=qobj_id,
        qobj_header=qobj_header,
        **run_config,
    )
    return QasmQobj._from_wire(wire, len(circuits))


def circuits_to_qobj_json(
    circuits: QuantumCircuit | Sequence[QuantumCircuit],
    backend: Any = None,
    *,
    shots: int | None = None,
    memory: bool = False,
    seed_simulator: int | None = None,
    qobj_id: str | None = None,
    qobj_header: QobjHeader | Mapping[str, Any] | None = None,
    **run_config: Any,
) -> bytes:
    """The QasmQobj JSON bytes of ``circuits``, without building Python Qobj objects.

    Takes the same arguments as :func:`assemble`, and raises the same errors.
    """
    circuit_list = _as_circuits(circuits)
    config = _config(shots, memory, seed_simulator, run_config)
    header = _header(qobj_header, backend)
    qid = str(qobj_id) if qobj_id is not None else str(uuid.uuid4())
    try:
        if _native.capi_available():
            return _native.circuits_to_qobj_json(circuit_list, config, qid, header)
        return _python_qobj_json(circuit_list, config, qid, header)
    except AssembleError as exc:
        raise _located(exc, circuit_list) from exc


def _located(exc: AssembleError, circuits: Sequence[QuantumCircuit]) -> AssembleError:
    """``exc`` naming the position of the circuit it is about (which `_experiment_json`
    recorded: both paths call it one circuit at a time)."""
    circuit = exc.circuit
    index = next((i for i, c in enumerate(circuits) if c is circuit), None)
    if index is None:
        return exc
    return AssembleError(f"circuit {index}: {exc.detail}", index=index, detail=exc.detail)


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def _as_circuits(experiments: Any) -> list[QuantumCircuit]:
    items = [experiments] if not isinstance(experiments, (list, tuple)) else list(experiments)
    if not items:
        raise ValueError("no circuits to assemble")
    for index, item in enumerate(items):
        if not isinstance(item, QuantumCircuit):
            kind = type(item).__name__
            what = f"experiment {index} is a {type(item).__module__}.{kind}"
            if kind in ("Schedule", "ScheduleBlock") or "pulse" in type(item).__module__:
                raise TypeError(
                    f"{what}: Pulse schedules are not supported (qiskit >= 2 has no Pulse); "
                    "only QuantumCircuit can be assembled"
                )
            raise TypeError(
                f"{what}, not a QuantumCircuit; only QuantumCircuit can be assembled "
                "(Pulse schedules are not supported)"
            )
    return items


def _config(
    shots: int | None, memory: bool, seed_simulator: int | None, run_config: dict[str, Any]
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "shots": _DEFAULT_SHOTS if shots is None else int(shots),
        "memory": bool(memory),
    }
    if seed_simulator is not None:
        config["seed_simulator"] = int(seed_simulator)
    for key, value in run_config.items():
        if value is not None and key not in _COMPUTED_CONFIG:
            config[key] = value
    return config


def _header(qobj_header: Any, backend: Any) -> dict[str, Any]:
    if qobj_header is None:
        header: dict[str, Any] = {}
    elif isinstance(qobj_header, QobjHeader):
        header = qobj_header.to_dict()
    else:
        header = dict(qobj_header)
    if backend is not None:
        name = backend.name() if callable(getattr(backend, "name", None)) else backend.name
        header.setdefault("backend_name", name)
        version = getattr(backend, "backend_version", None)
        if version is not None:
            header.setdefault("backend_version", str(version))
    return header


# ---------------------------------------------------------------------------------------------
# The Python path (also the native path's per-circuit fallback)
# ---------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, complex):
        return [value.real, value.imag]
    if isinstance(value, ParameterExpression):
        if value.parameters:
            names = ", ".join(sorted(p.name for p in value.parameters))
            raise TypeError(f"unbound parameter(s) {names}")
        return _real(value.numeric())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> bytes:
    """JSON of config, header and metadata values, as both paths write them."""
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)


def _python_qobj_json(
    circuits: Sequence[QuantumCircuit], config: dict[str, Any], qobj_id: str, header: dict
) -> bytes:
    experiments = [_experiment_dict(circuit) for circuit in circuits]
    qobj = {
        "qobj_id": qobj_id,
        "type": "QASM",
        "schema_version": "1.3.0",
        "header": header,
        "config": {
            **{k: v for k, v in config.items() if k not in _COMPUTED_CONFIG},
            "memory_slots": max(e["header"]["memory_slots"] for e in experiments),
            "n_qubits": max(e["header"]["n_qubits"] for e in experiments),
        },
        "experiments": experiments,
    }
    return _dumps(qobj)


def _experiment_json(circuit: QuantumCircuit) -> tuple[bytes, int, int]:
    """One experiment's JSON and widths: the native path's fallback for one circuit."""
    experiment = _experiment_dict(circuit)
    return _dumps(experiment), circuit.num_qubits, circuit.num_clbits


def _experiment_dict(circuit: QuantumCircuit) -> dict[str, Any]:
    try:
        return _build_experiment(circuit)
    except AssembleError as exc:
        exc.circuit = circuit  # for _located
        raise


# Instructions a Qobj names and the simulator knows; any other gate with a definition (a
# custom or composite gate, a controlled unitary) is written as its definition.
_QOBJ_NAMES = frozenset(get_standard_gate_name_mapping()) | {"unitary", "initialize"}
# Definitions inlined within definitions, at most (a definition that names itself ends).
_INLINE_DEPTH = 16


def _inline_custom(circuit: QuantumCircuit) -> QuantumCircuit:
    """``circuit`` with every gate a Qobj cannot name replaced by its definition, as
    AerSimulator inlines them before it runs (a custom ``Gate``, a composite instruction,
    ``UnitaryGate(...).control()``); ``circuit`` itself when it has none. Control flow
    travels as QPY, which carries definitions. An instruction without a definition is
    left for the service to refuse by name."""
    for _ in range(_INLINE_DEPTH):
        custom = {
            ci.operation.name
            for ci in circuit.data
            if ci.operation.name not in _QOBJ_NAMES
            and not isinstance(ci.operation, ControlFlowOp)
            and getattr(ci.operation, "definition", None) is not None
        }
        if not custom:
            return circuit
        circuit = circuit.decompose(gates_to_decompose=sorted(custom))
    return circuit


def _build_experiment(circuit: QuantumCircuit) -> dict[str, Any]:
    circuit = _inline_custom(circuit)
    qregs, cregs = circuit.qregs, circuit.cregs
    n_qubits, memory_slots = circuit.num_qubits, circuit.num_clbits
    header = {
        "name": circuit.name,
        "n_qubits": n_qubits,
        "memory_slots": memory_slots,
        "qreg_sizes": [[reg.name, reg.size] for reg in qregs],
        "creg_sizes": [[reg.name, reg.size] for reg in cregs],
        # As qiskit's assembler labelled bits: register by register; loose bits get none.
        "qubit_labels": [[reg.name, j] for reg in qregs for j in range(reg.size)],
        "clbit_labels": [[reg.name, j] for reg in cregs for j in range(reg.size)],
        "global_phase": _global_phase(circuit),
        "metadata": circuit.metadata or {},
    }
    config = {"n_qubits": n_qubits, "memory_slots": memory_slots}
    if _needs_qpy(circuit):
        return {"header": header, "config": config, "instructions": [], "qpy": _qpy(circuit)}
    return {
        "header": header,
        "config": config,
        "instructions": _instructions(circuit, memory_slots),
    }


def _needs_qpy(circuit: QuantumCircuit) -> bool:
    """Whether the Qobj's instructions cannot express ``circuit``: classical variables, or
    control flow other than an ``if_test`` of one instruction on a bit or a register
    compared with a value (which is a ``bfunc`` and a ``conditional``)."""
    if circuit.num_vars or circuit.num_stretches:
        return True
    for ci in circuit.data:
        op = ci.operation
        if op.name == "store":
            return True
        if isinstance(op, ControlFlowOp):
            try:
                _single_gate_if(op, ci.qubits, ci.clbits, "")
                _condition_bits(op, {bit: i for i, bit in enumerate(circuit.clbits)}, "")
            except AssembleError:
                return True
    return False


def _qpy(circuit: QuantumCircuit) -> str:
    """The base64 QPY of ``circuit``, whose name and metadata travel in the header."""
    if circuit.parameters:
        names = ", ".join(sorted(p.name for p in circuit.parameters))
        raise AssembleError(
            f"circuit '{circuit.name}': unbound parameter(s) {names}; assign parameters "
            "before running (QuantumCircuit.assign_parameters)"
        )
    bare = circuit.copy()
    bare.metadata = {}  # any JSON the header's writer takes, which QPY's may not
    buffer = io.BytesIO()
    try:
        qpy.dump(bare, buffer)
    except Exception as exc:  # QPY refuses e.g. an instruction class it cannot describe
        raise AssembleError(
            f"circuit '{circuit.name}' cannot be written as QPY: {type(exc).__name__}: {exc}"
        ) from exc
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _global_phase(circuit: QuantumCircuit) -> float:
    phase = circuit.global_phase
    if isinstance(phase, ParameterExpression):
        if phase.parameters:
            names = ", ".join(sorted(p.name for p in phase.parameters))
            raise AssembleError(
                f"circuit '{circuit.name}': global phase has unbound parameter(s) {names}; "
                "assign parameters before running (QuantumCircuit.assign_parameters)"
            )
        return _real(phase.numeric())
    return float(phase)


def _real(value: Any) -> float:
    if isinstance(value, complex):
        if value.imag != 0:
            raise TypeError(f"complex value {value} where a real number is needed")
        return value.real
    return float(value)


def _instructions(circuit: QuantumCircuit, memory_slots: int) -> list[dict[str, Any]]:
    qindex = {bit: i for i, bit in enumerate(circuit.qubits)}
    cindex = {bit: i for i, bit in enumerate(circuit.clbits)}
    data = circuit.data
    conditional = any(isinstance(ci.operation, IfElseOp) for ci in data)
    out: list[dict[str, Any]] = []
    n_conditions = 0
    for position, ci in enumerate(data):
        op = ci.operation
        where = f"circuit '{circuit.name}', instruction {position} ({op.name})"
        qubits = [qindex[q] for q in ci.qubits]
        clbits = [cindex[c] for c in ci.clbits]
        if isinstance(op, ControlFlowOp):
            body_op, body_qubits, body_clbits = _single_gate_if(op, ci.qubits, ci.clbits, where)
            slot = memory_slots + n_conditions
            n_conditions += 1
            mask, val = _condition_bits(op, cindex, where)
            out.append(
                {
                    "name": "bfunc",
                    "register": slot,
                    "mask": f"0x{mask:X}",
                    "relation": "==",
                    "val": f"0x{val:X}",
                }
            )
            inst = _instruction(
                body_op, [qindex[q] for q in body_qubits], [cindex[c] for c in body_clbits], where
            )
            inst["conditional"] = slot
            out.append(inst)
            continue
        inst = _instruction(op, qubits, clbits, where)
        if conditional and op.name == "measure":
            # As qiskit's assembler did: every measurement may feed a later condition.
            inst["register"] = clbits
        out.append(inst)
    return out


def _single_gate_if(
    op: ControlFlowOp, qubits: Sequence[Any], clbits: Sequence[Any], where: str
) -> tuple[Instruction, list[Any], list[Any]]:
    """The one instruction of an ``if_test`` without ``else``, on the outer circuit's bits."""
    if not isinstance(op, IfElseOp):
        raise AssembleError(
            f"{where}: control flow '{op.name}' cannot be written as a QasmQobj; only "
            "if_test with a single gate in its body and no else branch can"
        )
    true_body, false_body = op.blocks[0], (op.blocks[1] if len(op.blocks) > 1 else None)
    if false_body is not None and len(false_body.data) > 0:
        raise AssembleError(
            f"{where}: if_test with an else branch cannot be written as a QasmQobj; "
            "only a single gate in the true body and no else branch can"
        )
    if len(true_body.data) != 1 or isinstance(true_body.data[0].operation, ControlFlowOp):
        raise AssembleError(
            f"{where}: if_test body has {len(true_body.data)} instructions; a QasmQobj "
            "conditional holds exactly one (non-control-flow) instruction"
        )
    inner = true_body.data[0]
    qmap = dict(zip(true_body.qubits, qubits, strict=True))
    cmap = dict(zip(true_body.clbits, clbits, strict=True))
    return inner.operation, [qmap[q] for q in inner.qubits], [cmap[c] for c in inner.clbits]


def _condition_bits(op: ControlFlowOp, cindex: dict[Clbit, int], where: str) -> tuple[int, int]:
    condition = getattr(op, "condition", None)
    if not isinstance(condition, tuple) or len(condition) != 2:
        raise AssembleError(
            f"{where}: condition {condition!r} cannot be written as a QasmQobj; only a "
            "classical register or a single bit compared with a value can"
        )
    target, value = condition
    if isinstance(target, Clbit):
        index = cindex[target]
        return 1 << index, (int(bool(value)) << index)
    if isinstance(target, ClassicalRegister):
        mask = val = 0
        for j, bit in enumerate(target):
            index = cindex[bit]
            mask |= 1 << index
            val |= ((int(value) >> j) & 1) << index
        return mask, val
    raise AssembleError(f"{where}: condition on {target!r} is not a register or a bit")


def _instruction(
    op: Instruction, qubits: list[int], clbits: list[int], where: str
) -> dict[str, Any]:
    inst: dict[str, Any] = {"name": op.name, "qubits": qubits}
    unit = None
    if isinstance(op, Delay):
        duration = op.duration
        if isinstance(duration, ParameterExpression):
            duration = _param(duration, where)
        elif not isinstance(duration, (int, float)):
            raise AssembleError(f"{where}: delay duration {duration!r} is not a number")
        params: list[Any] = [duration]
        if op.unit != "dt":
            unit = op.unit
    elif op.name == "unitary":
        matrix = np.asarray(op.to_matrix(), dtype=complex)
        params = [np.stack([matrix.real, matrix.imag], axis=-1).tolist()]
    else:
        params = [_param(p, where) for p in op.params]
    if params:
        inst["params"] = params
    if clbits:
        inst["memory"] = clbits
    if unit is not None:
        inst["unit"] = unit
    return inst


def _param(value: Any, where: str) -> Any:
    if isinstance(value, ParameterExpression):
        if value.parameters:
            names = ", ".join(sorted(p.name for p in value.parameters))
            raise AssembleError(
                f"{where}: unbound parameter(s) {names}; assign parameters before running "
                "(QuantumCircuit.assign_parameters)"
            )
        value = value.numeric()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, complex):
        return _real(value)
    if isinstance(value, np.ndarray):
        if np.iscomplexobj(value):
            return np.stack([value.real, value.imag], axis=-1).tolist()
        return value.tolist()
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return [_param(v, where) for v in value]
    raise AssembleError(
        f"{where}: parameter {value!r} of type {type(value).__name__} cannot be written as JSON"
    )
