"""Samples circuits with SamplerV2 semantics: one BitArray per classical register."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qiskit import QuantumCircuit
from qiskit.primitives.containers.sampler_pub import SamplerPub

from qdispatch._native import QobjSummary
from qdispatch.disassembler import qobj_bytes_to_circuits, qobj_to_circuits

from .common import (
    InvalidInputs,
    Limits,
    check_options,
    for_backend,
    optional_int,
    positive_int,
    run_here,
)

VERSION = "1"
DESCRIPTION = "SamplerV2: bitstrings of each classical register, per pub."

# Inputs that carry a QasmQobj: the service validates them natively at submission.
QOBJ_INPUTS = ("circuits",)

_DEFAULT_SHOTS = 1024
_OPTIONS = ("seed_simulator",)


@dataclass
class _Pub:
    """One pub as sent: a circuit (or an index into the ``circuits`` Qobj), its
    parameter values and shots."""

    circuit: Any  # QuantumCircuit | int
    parameter_values: Any
    shots: int
    size: int  # circuit executions: the size of the parameter values' shape


def _experiments(circuits: Any) -> int:
    """How many experiments the ``circuits`` Qobj has (0 when there is none). At
    submission the service hands ``estimate`` the Qobj's native summary, not the Qobj; in
    a worker ``main`` has rebuilt its circuits already (a list)."""
    if circuits is None:
        return 0
    if isinstance(circuits, QobjSummary):
        return int(circuits.n_experiments)
    if isinstance(circuits, list):
        return len(circuits)
    if not isinstance(circuits, dict):
        raise InvalidInputs(f"circuits must be a QasmQobj object, got {type(circuits).__name__}")
    experiments = circuits.get("experiments")
    if not isinstance(experiments, list) or not experiments:
        raise InvalidInputs("circuits must be a QasmQobj with a non-empty 'experiments' list")
    return len(experiments)


def _parse(
    inputs: dict[str, Any], limits: Limits | None = None
) -> tuple[list[_Pub], dict[str, Any]]:
    """The pubs, checked (against ``limits`` too, when given), with the default shots
    applied; and the options."""
    version = inputs.get("version", 2)
    if version != 2:
        raise InvalidInputs(f"version must be 2 (SamplerV2), got {version!r}")
    options = check_options(inputs.get("options"), _OPTIONS)
    optional_int(options.get("seed_simulator"), "options.seed_simulator")
    default_shots = inputs.get("shots")
    default_shots = (
        _DEFAULT_SHOTS if default_shots is None else positive_int(default_shots, "shots")
    )
    if limits is not None:
        limits.shots(default_shots, "shots")
    n_experiments = _experiments(inputs.get("circuits"))
    pubs = inputs.get("pubs")
    if not isinstance(pubs, list) or not pubs:
        raise InvalidInputs("pubs must be a non-empty list of [circuit, parameter_values, shots]")
    parsed: list[_Pub] = []
    for i, pub in enumerate(pubs):
        where = f"pubs[{i}]"
        items = list(pub) if isinstance(pub, list | tuple) else [pub]
        if not 1 <= len(items) <= 3:
            raise InvalidInputs(
                f"{where} must be [circuit, parameter_values, shots], got {len(items)} items"
            )
        circuit, values, shots = [*items, None, None][:3]
        if shots is not None:
            shots = positive_int(shots, f"{where}: shots")
            if limits is not None:
                limits.shots(shots, f"{where}: shots")
        else:
            shots = default_shots
        size = 1
        if isinstance(circuit, int) and not isinstance(circuit, bool):
            if not 0 <= circuit < n_experiments:
                have = f"circuits has {n_experiments}" if n_experiments else "there is no circuits"
                raise InvalidInputs(f"{where}: circuit index {circuit} is out of range ({have})")
            if values is not None:
                raise InvalidInputs(
                    f"{where}: a circuit given by index has no parameters; "
                    "parameter_values must be null"
                )
        elif isinstance(circuit, QuantumCircuit):
            try:
                size = int(SamplerPub.coerce((circuit, values, shots)).size)
            except (ValueError, TypeError) as exc:
                raise InvalidInputs(f"{where}: {exc}") from exc
            if not circuit.num_clbits:
                raise InvalidInputs(f"{where}: the circuit measures nothing (no classical bits)")
        else:
            raise InvalidInputs(
                f"{where}: circuit must be a QuantumCircuit or an index into circuits, "
                f"got {type(circuit).__name__}"
            )
        parsed.append(_Pub(circuit, values, shots, size))
    if limits is not None:
        total = sum(p.size * p.shots for p in parsed)
        limits.total(total, f"pubs ({len(parsed)} pub(s) x parameter sets x shots)")
    return parsed, options


def estimate(inputs: dict[str, Any], limits: Limits | None = None) -> tuple[int, int]:
    """(circuit executions over all pubs, the most shots of a pub); with ``limits``,
    refuses shots over the backend's ``max_shots`` and pubs x parameter sets x shots
    over ``max_job_shots``."""
    executions, shots = estimate_pubs(inputs, limits)
    return sum(executions), shots


def estimate_pubs(inputs: dict[str, Any], limits: Limits | None = None) -> tuple[list[int], int]:
    """:func:`estimate` pub by pub: (each pub's circuit executions, the most shots of a
    pub), what the service splits a job into shards by."""
    pubs, _ = _parse(inputs, limits)
    return [p.size for p in pubs], max(p.shots for p in pubs)


def main(
    backend: Any,
    publisher: Any,
    pubs: list[Any],
    circuits: bytes | dict[str, Any] | None = None,
    shots: int | None = None,
    options: dict[str, Any] | None = None,
    version: int = 2,
) -> Any:
    """Run the pubs on ``backend`` (circuits that are not ISA for it are transpiled) and
    return the ``PrimitiveResult``. ``circuits`` is a QasmQobj: its JSON bytes (what the
    service's worker passes, see ``QOBJ_INPUTS``) or a dict."""
    # qiskit-aer costs ~0.5 s to import: the service, which only checks inputs, never pays.
    from qiskit_aer.primitives import SamplerV2  # noqa: PLC0415

    if isinstance(circuits, bytes):
        # The Qobj was validated at submission: rebuild it first (natively), then check
        # the pubs' indices against the circuits.
        from_qobj = qobj_bytes_to_circuits(circuits)
        inputs = {"pubs": pubs, "circuits": from_qobj, "shots": shots, "options": options}
        parsed, opts = _parse({**inputs, "version": version})
    else:
        inputs = {"pubs": pubs, "circuits": circuits, "shots": shots, "options": options}
        parsed, opts = _parse({**inputs, "version": version})
        from_qobj = qobj_to_circuits(circuits) if circuits is not None else []
    # Each distinct circuit is made fit for the backend once, however many pubs use it.
    originals: dict[int, Any] = {}
    for pub in parsed:
        circuit = from_qobj[pub.circuit] if isinstance(pub.circuit, int) else pub.circuit
        originals.setdefault(id(circuit), circuit)
    keys = list(originals)
    fitted = dict(zip(keys, for_backend([originals[k] for k in keys], backend), strict=True))
    ready = []
    for pub in parsed:
        circuit = from_qobj[pub.circuit] if isinstance(pub.circuit, int) else pub.circuit
        ready.append(SamplerPub.coerce((fitted[id(circuit)], pub.parameter_values, pub.shots)))
    sampler = SamplerV2.from_backend(backend, seed=opts.get("seed_simulator"))
    return run_here(sampler, ready)
