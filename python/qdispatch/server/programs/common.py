"""What the built-in programs share: input checks that name the input, and circuits made
fit for the backend they run on."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qiskit import transpile

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.providers import BackendV2
    from qiskit.transpiler import Target

__all__ = [
    "MEMORY_BYTES_PER_SHOT",
    "InvalidInputs",
    "Limits",
    "check_options",
    "fix_target",
    "for_backend",
    "is_isa",
    "optional_int",
    "positive_int",
    "run_here",
]

#: The seed every built-in transpiles with: the same inputs give the same circuits.
TRANSPILER_SEED = 0
# Directives that every target takes on any qubits (the transpiler never refuses them).
_ANYWHERE = frozenset({"barrier"})


def run_here(primitive: Any, pubs: list[Any]) -> Any:
    """``primitive.run(pubs).result()``, run in this thread.

    A V2 primitive's ``run`` starts a thread for every job (qiskit's ``PrimitiveJob``) and
    ``result()`` waits for it: for a small job that costs as much as its simulation. The
    pubs are coerced already (their shots or precision set), which ``run``'s coercion
    leaves as they are; its checks (``_validate_pubs``) are made here all the same. A
    primitive without those methods runs as ``run`` does.
    """
    validate = getattr(primitive, "_validate_pubs", None)
    run = getattr(primitive, "_run", None)
    if validate is None or run is None:
        return primitive.run(pubs).result()
    validate(pubs)
    return run(pubs)


class InvalidInputs(ValueError):
    """A program's inputs are not what it takes; the message names the input and why.

    ``POST /jobs`` answers it with 400 ``invalid_params``.
    """


#: The fewest bytes one shot's outcome takes in a result's ``memory`` (``"0x0",``).
MEMORY_BYTES_PER_SHOT = 6


@dataclass(frozen=True)
class Limits:
    """What one job may ask of its backend (docs/service.md, "Limits"): shots per circuit
    (the backend's ``max_shots``), shots in all (``max_job_shots``: circuits x parameter
    sets x shots), and the size of its result (``max_result_bytes``). A program's
    ``estimate(inputs, limits)`` checks its inputs against them."""

    backend: str
    max_shots: int
    max_job_shots: int
    max_result_bytes: int

    def shots(self, value: int, what: str) -> int:
        """``value`` if it is within the backend's ``max_shots``, else
        :class:`InvalidInputs` naming ``what``, the value and the limit."""
        if value > self.max_shots:
            raise InvalidInputs(
                f"{what} {value} is over the max_shots of backend '{self.backend}' "
                f"({self.max_shots})"
            )
        return value

    def total(self, shots: int, what: str) -> int:
        """``shots``, a job's shots in all, if within ``max_job_shots``; else
        :class:`InvalidInputs` naming ``what`` and the limit."""
        if shots > self.max_job_shots:
            raise InvalidInputs(
                f"{what} make {shots} shots in all, over the limit of {self.max_job_shots} "
                "shots per job (max_job_shots); split the work into several jobs"
            )
        return shots

    def memory(self, shots: int, what: str) -> None:
        """Refuse a job whose per-shot ``memory`` (``shots`` outcomes in all) cannot fit in
        ``max_result_bytes``, counting the fewest bytes an outcome takes."""
        least = shots * MEMORY_BYTES_PER_SHOT
        if least > self.max_result_bytes:
            raise InvalidInputs(
                f"{what}: the memory of {shots} shots takes at least {least} bytes, over the "
                f"result limit of {self.max_result_bytes} bytes (max_result_bytes)"
            )


def _is_int(value: Any) -> bool:
    # bool is an int to Python, never to a user who wrote `true`.
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any, what: str) -> int:
    """``value`` as a positive integer, else :class:`InvalidInputs` naming ``what``."""
    if not _is_int(value) or value < 1:
        raise InvalidInputs(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def optional_int(value: Any, what: str) -> int | None:
    """``None`` or an integer (a seed), else :class:`InvalidInputs` naming ``what``."""
    if value is not None and not _is_int(value):
        raise InvalidInputs(f"{what} must be an integer or null, got {value!r}")
    return value


def check_options(options: Any, known: Sequence[str]) -> dict[str, Any]:
    """The ``options`` input: a dict of ``known`` keys (or nothing)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidInputs(f"options must be an object, got {type(options).__name__}")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InvalidInputs(
            f"options: unknown option(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(known)})"
        )
    return dict(options)


# What ``for_backend`` reads of a backend's target, for backends whose options no longer
# change (``fix_target``): the target, and the qubit tuples of each of its operations.
_Supported = dict[str, frozenset[tuple[int, ...]] | None]
_fixed: weakref.WeakKeyDictionary[Any, tuple[Target, _Supported]] = weakref.WeakKeyDictionary()


def fix_target(backend: BackendV2) -> None:
    """Read ``backend``'s target once, for every later :func:`for_backend` on it.

    qiskit-aer builds a simulator's ``Target`` anew at each read (its options may have
    changed the configuration since): about 2 ms, as much as a small job's simulation.
    Only for a backend that nothing reconfigures after this call (the workers' own copies
    for the built-in programs, ``programs.worker.program_backend``).
    """
    target = backend.target
    _fixed[backend] = (target, _supported(target))


def _target_of(backend: BackendV2) -> tuple[Target, _Supported]:
    fixed = _fixed.get(backend)
    if fixed is not None:
        return fixed
    target = backend.target
    return target, _supported(target)


def _supported(target: Target) -> _Supported:
    """Operation name -> the qubit tuples it is supported on (``None``: any)."""
    table: dict[str, frozenset[tuple[int, ...]] | None] = {}
    for name in target.operation_names:
        qargs = target.qargs_for_operation_name(name)
        table[name] = None if qargs is None else frozenset(qargs)
    return table


def is_isa(circuit: QuantumCircuit, target: Target) -> bool:
    """Whether every instruction of ``circuit`` (control-flow blocks included) is one the
    ``target`` supports on the qubits it acts on."""
    return not _unsupported(circuit, _supported(target), list(range(circuit.num_qubits)))


def _unsupported(
    circuit: QuantumCircuit,
    supported: dict[str, frozenset[tuple[int, ...]] | None],
    physical: list[int],
) -> set[str]:
    """Names of the operations of ``circuit`` the target does not support where they are
    (the first found is enough to say it is not ISA; lowering wants them all)."""
    where = {qubit: physical[i] for i, qubit in enumerate(circuit.qubits)}
    bad: set[str] = set()
    for instruction in circuit.data:
        operation = instruction.operation
        name = operation.name
        if name in _ANYWHERE:
            continue
        if name not in supported:
            bad.add(name)
            continue
        allowed = supported[name]
        qargs = tuple(where[q] for q in instruction.qubits)
        if allowed is not None and qargs not in allowed:
            bad.add(name)
            continue
        for block in getattr(operation, "blocks", ()):
            # A block's qubits are, in order, the qubits its instruction acts on.
            bad |= _unsupported(block, supported, list(qargs))
    return bad


def _lower(
    circuit: QuantumCircuit, supported: dict[str, frozenset[tuple[int, ...]] | None]
) -> QuantumCircuit:
    """``circuit`` with the gates an all-to-all target lacks replaced by their definitions
    (a level or two always reaches gates Aer has), the rest untouched."""
    for _ in range(4):
        unknown = _unsupported(circuit, supported, list(range(circuit.num_qubits)))
        if not unknown:
            break
        lowered = circuit.decompose(gates_to_decompose=sorted(unknown))
        lowered.metadata = circuit.metadata
        circuit = lowered
    return circuit


def for_backend(
    circuits: list[QuantumCircuit],
    backend: BackendV2,
    *,
    optimization_level: int = 1,
    initial_layout: Any = None,
    force: bool = False,
) -> list[QuantumCircuit]:
    """``circuits`` made fit for ``backend``. Those that are ISA for its target (unless
    ``force``) are left exactly as they are. Otherwise, on a target with a coupling map
    (a device) they are transpiled for it; on an all-to-all one (the ideal simulator) only
    the gates it lacks are decomposed, so that the circuits keep their qubits and layout.
    ``force`` transpiles every circuit, whatever the target."""
    target, supported = _target_of(backend)
    todo = [
        i
        for i, c in enumerate(circuits)
        if force or _unsupported(c, supported, list(range(c.num_qubits)))
    ]
    if not todo:
        return circuits
    out = list(circuits)
    if not force and target.build_coupling_map() is None:
        for i in todo:
            out[i] = _lower(circuits[i], supported)
        return out
    transpiled = transpile(
        [circuits[i] for i in todo],
        backend=backend,
        optimization_level=optimization_level,
        initial_layout=initial_layout,
        seed_transpiler=TRANSPILER_SEED,
    )
    for i, circuit in zip(todo, transpiled, strict=True):
        out[i] = circuit
    return out
