"""Runs circuits on the backend and returns the qiskit ``Result`` as a dict."""

from __future__ import annotations

from typing import Any

from qiskit import QuantumCircuit

from .common import InvalidInputs, Limits, for_backend, optional_int, positive_int

VERSION = "1"
DESCRIPTION = "Runs circuits (transpiled for the backend) and returns the qiskit Result."

_DEFAULT_SHOTS = 1024


def _circuits(value: Any) -> list[Any]:
    circuits = value if isinstance(value, list) else [value]
    if not circuits:
        raise InvalidInputs("circuits must not be empty")
    for i, circuit in enumerate(circuits):
        if not isinstance(circuit, QuantumCircuit):
            where = f"circuits[{i}]" if isinstance(value, list) else "circuits"
            raise InvalidInputs(f"{where} must be a QuantumCircuit, got {type(circuit).__name__}")
    return circuits


def _optimization_level(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 3:
        raise InvalidInputs(f"optimization_level must be 0, 1, 2 or 3, got {value!r}")
    return value


def estimate(inputs: dict[str, Any], limits: Limits | None = None) -> tuple[int, int]:
    """(number of circuits, shots); refuses inputs ``main`` would refuse, and with
    ``limits`` shots over the backend's ``max_shots``, circuits x shots over
    ``max_job_shots`` and a ``memory`` that cannot fit in a result."""
    if "circuits" not in inputs:
        raise InvalidInputs("circuits is required")
    circuits = _circuits(inputs["circuits"])
    shots = positive_int(inputs.get("shots", _DEFAULT_SHOTS), "shots")
    optional_int(inputs.get("seed_simulator"), "seed_simulator")
    _optimization_level(inputs.get("optimization_level", 1))
    if limits is not None:
        limits.shots(shots, "shots")
        limits.total(len(circuits) * shots, f"{len(circuits)} circuits x {shots} shots")
        if inputs.get("memory"):
            limits.memory(len(circuits) * shots, "memory")
    return len(circuits), shots


def main(
    backend: Any,
    publisher: Any,
    circuits: Any,
    shots: int = _DEFAULT_SHOTS,
    seed_simulator: int | None = None,
    memory: bool = False,
    optimization_level: int = 1,
    skip_transpilation: bool = False,
    initial_layout: Any = None,
) -> dict[str, Any]:
    """Transpile ``circuits`` for ``backend`` (unless ``skip_transpilation``), run them
    with ``shots`` and return ``Result.to_dict()``."""
    batch = _circuits(circuits)
    shots = positive_int(shots, "shots")
    if not skip_transpilation:
        batch = for_backend(
            batch,
            backend,
            optimization_level=_optimization_level(optimization_level),
            initial_layout=initial_layout,
            force=True,
        )
    options: dict[str, Any] = {"shots": shots, "memory": bool(memory)}
    if seed_simulator is not None:
        options["seed_simulator"] = optional_int(seed_simulator, "seed_simulator")
    result: dict[str, Any] = backend.run(batch, **options).result().to_dict()
    return result
