"""What the built-in programs share: input checks that name the input, and circuits made
fit for the backend they run on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.providers import BackendV2
    from qiskit.transpiler import Target

__all__ = [
    "InvalidInputs",
    "check_options",
    "for_backend",
    "is_isa",
    "optional_int",
    "positive_int",
]

#: The seed every built-in transpiles with: the same inputs give the same circuits.
TRANSPILER_SEED = 0
# Directives that every target takes on any qubits (the transpiler never refuses them).
_ANYWHERE = frozenset({"barrier"})


class InvalidInputs(ValueError):
    """A program's inputs are not what it takes; the message names the input and why.

    ``POST /jobs`` answers it with 400 ``invalid_params``.
    """


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


def is_isa(circuit: QuantumCircuit, target: Target) -> bool:
    """Whether every instruction of ``circuit`` (control-flow blocks included) is one the
    ``target`` supports on the qubits it acts on."""
    return _isa(circuit, target, list(range(circuit.num_qubits)))


def _isa(circuit: QuantumCircuit, target: Target, physical: list[int]) -> bool:
    for instruction in circuit.data:
        operation = instruction.operation
        if operation.name in _ANYWHERE:
            continue
        qargs = tuple(physical[circuit.find_bit(q).index] for q in instruction.qubits)
        if not target.instruction_supported(operation.name, qargs):
            return False
        for block in getattr(operation, "blocks", ()):
            # A block's qubits are, in order, the qubits its instruction acts on.
            if not _isa(block, target, list(qargs)):
                return False
    return True


def for_backend(
    circuits: list[QuantumCircuit],
    backend: BackendV2,
    *,
    optimization_level: int = 1,
    initial_layout: Any = None,
    force: bool = False,
) -> list[QuantumCircuit]:
    """``circuits`` made fit for ``backend``: those that are not ISA for its target (or
    all, with ``force``) are transpiled for it; the others are left exactly as they are."""
    from qiskit import transpile

    todo = [i for i, c in enumerate(circuits) if force or not is_isa(c, backend.target)]
    if not todo:
        return circuits
    transpiled = transpile(
        [circuits[i] for i in todo],
        backend=backend,
        optimization_level=optimization_level,
        initial_layout=initial_layout,
        seed_transpiler=TRANSPILER_SEED,
    )
    out = list(circuits)
    for i, circuit in zip(todo, transpiled, strict=True):
        out[i] = circuit
    return out
