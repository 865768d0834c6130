"""What a worker process executes: rebuild circuits from a QasmQobj and run them on Aer.

The entry point is :func:`run_qobj`, which takes and returns bytes so that it can be
shipped to a spawned worker process or a Dask worker unchanged. Importing this module has
no side effects beyond imports; qiskit-aer is imported when the first job runs.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime, timezone
from typing import Any

import orjson
from qiskit.circuit import ControlFlowOp, QuantumCircuit, get_control_flow_name_mapping
from qiskit.circuit.classical import expr

from qdispatch.constants import SERVICE_RUN_OPTIONS
from qdispatch.disassembler import (
    QobjExecutionError,
    _gc_paused,
    _loads,
    qobj_bytes_to_circuits,
)
from qdispatch.server import workermemory
from qdispatch.server.backends import BACKEND_VERSION, DIRECTIVES, BackendDef, catalog, simulator

__all__ = ["QobjExecutionError", "run_qobj"]


# Aer options the service controls (threading, memory, placement, noise); a Qobj's config
# may set any other option that `AerSimulator` knows.
_CONTROLLED_OPTIONS = SERVICE_RUN_OPTIONS
_DEFAULT_SHOTS = 1024
# Qobj instructions that never reach Aer under their own name.
_QOBJ_ONLY = frozenset({"bfunc", "barrier"})
# Result header fields qiskit's `Result` reads to format counts and memory.
_FORMATTING_KEYS = ("memory_slots", "creg_sizes", "n_qubits", "qreg_sizes")


@functools.lru_cache(maxsize=1)
def _aer_option_names() -> frozenset[str]:
    # qiskit-aer costs ~0.5 s to import; import it when a job first runs.
    from qiskit_aer import AerSimulator  # noqa: PLC0415

    return frozenset(AerSimulator._default_options().__dict__)


def _run_options(config: dict[str, Any]) -> dict[str, Any]:
    """Aer run options from a Qobj (or experiment) config: what Aer knows, minus ours."""
    known = _aer_option_names()
    options = {
        key: value
        for key, value in config.items()
        if key in known and key not in _CONTROLLED_OPTIONS and value is not None
    }
    return options


def _name_the_limit(res: dict[str, Any]) -> None:
    # Aer's refusal names its own max_memory_mb, which the service set below the worker's.
    status = res.get("status")
    if not res.get("success") and isinstance(status, str) and "Insufficient memory" in status:
        limit = workermemory.limit_mb()
        if limit:
            res["status"] = (
                f"{status} (a worker may use {limit} MB: the service's --worker-memory-mb)"
            )


def _lower_unsupported(circuits: list[QuantumCircuit], experiments: list[dict[str, Any]]) -> None:
    """Decomposes, in place, standard gates Aer has no native implementation of.

    Aer rejects e.g. ``ch``, ``iswap``, ``rccx``, ``global_phase`` ("unknown instruction")
    although the ideal backend advertises every standard gate; a level or two of their
    definitions are made of gates Aer knows. The Qobj's instruction names say which
    circuits need it, which is cheaper than walking every circuit's data.
    """
    supported = _aer_supported()
    for index, experiment in enumerate(experiments):
        names = {inst.get("name") for inst in experiment.get("instructions") or ()}
        if not (names - supported - _QOBJ_ONLY):
            continue
        circuit = circuits[index]
        for _ in range(4):
            unknown = {
                inst.operation.name
                for inst in circuit.data
                if inst.operation.name not in supported
                and not isinstance(inst.operation, ControlFlowOp)
                and inst.operation.definition is not None
            }
            if not unknown:
                break
            lowered = circuit.decompose(gates_to_decompose=sorted(unknown))
            lowered.metadata = circuit.metadata
            circuit = lowered
        circuits[index] = circuit


# What a QPY experiment may hold besides a backend's basis gates and the directives.
_DYNAMIC = frozenset({*get_control_flow_name_mapping(), "store"})


def _check_qpy_circuit(circuit: QuantumCircuit, defn: BackendDef, label: str) -> None:
    """Holds a decoded QPY experiment, loop and branch bodies included, to the rules the
    Qobj validator applies to instructions: the backend's basis gates (plus the
    directives and control flow) and its coupling map."""
    allowed = frozenset(defn.basis_gates) | frozenset(DIRECTIVES) | _DYNAMIC
    edges = frozenset(defn.coupling_map) if defn.coupling_map else None
    pending: list[tuple[QuantumCircuit, list[int]]] = [(circuit, list(range(circuit.num_qubits)))]
    while pending:
        current, physical = pending.pop()
        where = dict(zip(current.qubits, physical, strict=True))
        for inst in current.data:
            op = inst.operation
            qubits = [where[q] for q in inst.qubits]
            if op.name not in allowed:
                raise QobjExecutionError(
                    f"{label}: instruction '{op.name}' is not supported by backend "
                    f"'{defn.name}' (supported: {', '.join(sorted(allowed))})"
                )
            _check_reads(op, label)
            blocks = getattr(op, "blocks", ())
            if blocks:
                pending.extend((block, qubits) for block in blocks)
            elif (
                edges is not None
                and len(qubits) == 2
                and op.name not in DIRECTIVES
                and (qubits[0], qubits[1]) not in edges
            ):
                raise QobjExecutionError(
                    f"{label}: '{op.name}' on qubits {qubits}, which backend '{defn.name}' "
                    "does not couple"
                )


def _check_reads(op: Any, label: str) -> None:
    """Refuses a condition or switch target that reads a classical variable (``Var``):
    qiskit-aer 0.18 aborts its whole process on one ("invalid cbit index"), as
    ``AerSimulator.run`` does in a user's own process; stores into variables run."""
    for value in (getattr(op, "condition", None), getattr(op, "target", None)):
        if not isinstance(value, expr.Expr):
            continue
        for var in expr.iter_vars(value):
            if var.standalone:
                raise QobjExecutionError(
                    f"{label}: '{op.name}' reads the classical variable '{var.name}'; "
                    "qiskit-aer aborts on a circuit that does (AerSimulator cannot run it)"
                )


@functools.lru_cache(maxsize=1)
def _aer_supported() -> frozenset[str]:
    # What Aer's engine executes; a noisy simulator's target lists only its device's basis,
    # but runs everything the ideal simulator does.
    from qiskit_aer import AerSimulator  # noqa: PLC0415

    return frozenset(AerSimulator().target.operation_names)


def run_qobj(
    backend_name: str, qobj_json: bytes, job_id: str, max_parallel_threads: int = 1
) -> bytes:
    """Runs a QasmQobj on a catalog backend and returns the qiskit ``Result`` dict as JSON.

    Options come from the Qobj config (``shots`` default 1024, ``memory`` default False,
    ``seed_simulator``, and any other option ``AerSimulator`` knows, except the threading,
    memory and noise options the service controls). Experiments whose config sets other
    options than the Qobj's are run in separate Aer calls. Each result carries its Qobj
    experiment header verbatim (register sizes and widths, which ``Result.get_counts``
    needs, are filled in from Aer only where the header lacks them). An experiment Aer
    fails keeps its place with ``success: False``; any other error raises
    :class:`QobjExecutionError`.
    """
    with _gc_paused():
        return _run_qobj(backend_name, qobj_json, job_id, max_parallel_threads)


def _run_qobj(backend_name: str, qobj_json: bytes, job_id: str, max_parallel_threads: int) -> bytes:
    started = time.monotonic()
    defn = catalog().get(backend_name)
    if defn is None:
        raise QobjExecutionError(f"unknown backend '{backend_name}'")
    qobj = _loads(qobj_json)
    circuits = qobj_bytes_to_circuits(qobj_json, qobj)
    experiments: list[dict[str, Any]] = qobj["experiments"]
    config: dict[str, Any] = qobj.get("config") or {}

    for i, experiment in enumerate(experiments):
        if "qpy" in experiment:
            _check_qpy_circuit(circuits[i], defn, f"experiment {i} ('{circuits[i].name}')")
    sim = simulator(defn)
    _lower_unsupported(circuits, experiments)
    base = {"shots": _DEFAULT_SHOTS, "memory": False, **_run_options(config)}
    threads = max(1, int(max_parallel_threads))

    # Group experiments by their effective options, keeping order within each group.
    groups: dict[bytes, tuple[dict[str, Any], list[int]]] = {}
    for i, exp in enumerate(experiments):
        options = {**base, **_run_options(exp.get("config") or {})}
        key = orjson.dumps(options, option=orjson.OPT_SORT_KEYS)
        groups.setdefault(key, (options, []))[1].append(i)

    results: list[dict[str, Any] | None] = [None] * len(circuits)
    metadata: dict[str, Any] = {}
    for options, indices in groups.values():
        batch = [circuits[i] for i in indices]
        try:
            aer_result = sim.run(
                batch,
                max_parallel_threads=threads,
                # Small circuits gain most from running side by side; Aer decides per job.
                max_parallel_experiments=threads,
                **options,
            ).result()
        except MemoryError:
            raise  # the worker's limit (Aer's std::bad_alloc): the worker says so, typed
        except Exception as exc:
            names = ", ".join(f"'{c.name}'" for c in batch[:5])
            more = f" and {len(batch) - 5} more" if len(batch) > 5 else ""
            raise QobjExecutionError(
                f"backend '{backend_name}' failed to run experiment(s) {names}{more}: {exc}"
            ) from exc
        result_dict = aer_result.to_dict()
        metadata = result_dict.get("metadata") or metadata
        aer_results = result_dict.get("results") or []
        if len(aer_results) != len(indices):
            raise QobjExecutionError(
                f"backend '{backend_name}' returned {len(aer_results)} results "
                f"for {len(indices)} experiments"
            )
        for i, res in zip(indices, aer_results, strict=True):
            res.pop("circ_id", None)
            header = dict(experiments[i].get("header") or {})
            aer_header = res.get("header") or {}
            for field in _FORMATTING_KEYS:
                # `Result.get_counts` needs these to format bitstrings; fill in only gaps.
                if field not in header and field in aer_header:
                    header[field] = aer_header[field]
            header.setdefault("name", circuits[i].name)
            res["header"] = header
            res.setdefault("data", {})
            res.setdefault("shots", options["shots"])
            _name_the_limit(res)
            results[i] = res

    success = all(r is not None and r.get("success") for r in results)
    any_success = any(r is not None and r.get("success") for r in results)
    out = {
        "backend_name": backend_name,
        "backend_version": BACKEND_VERSION,
        "qobj_id": str(qobj.get("qobj_id") or ""),
        "job_id": job_id,
        "success": success,
        "status": "COMPLETED" if success else ("PARTIAL COMPLETED" if any_success else "ERROR"),
        "date": datetime.now(timezone.utc).isoformat(),
        "header": qobj.get("header") or {},
        "metadata": metadata,
        "time_taken": time.monotonic() - started,
        "results": results,
    }
    # orjson writes Aer's IntEnums (meas_level) and numpy scalars as plain JSON numbers.
    return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)
