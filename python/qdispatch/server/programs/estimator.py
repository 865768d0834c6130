"""Estimates expectation values with EstimatorV2 semantics, from measurement shots."""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
from typing import Any

from qiskit import QuantumCircuit
from qiskit.primitives import BackendEstimatorV2
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.quantum_info import PauliList

from .common import InvalidInputs, Limits, check_options, for_backend, optional_int, run_here

VERSION = "1"
DESCRIPTION = "EstimatorV2: expectation values and standard errors, measured with shots."

DEFAULT_PRECISION = 0.015625
_OPTIONS = ("seed_simulator",)
# BackendEstimatorV2 builds a one-qubit optimisation pass from its backend's target when it
# is created: ~30 ms, twenty times a small job's simulation. It is built once per catalog
# backend (the runs of a thread share its simulator: programs.worker.program_backend) and
# per thread (a pass manager's passes hold the state of the run in progress; a dask worker
# runs jobs in threads).
_estimators = threading.local()


def _precision(value: Any, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidInputs(f"{what} must be a positive number, got {value!r}")
    return float(value)


def _least_precision(limits: Limits) -> float:
    """The smallest precision whose shots (``shots_for``) fit in ``max_shots``: about
    ``1/sqrt(max_shots)``, the next float up where rounding would ask one shot more."""
    floor = 1.0 / math.sqrt(limits.max_shots)
    while shots_for(floor) > limits.max_shots:
        floor = math.nextafter(floor, math.inf)
    return floor


def _check_precision(precision: float, what: str, limits: Limits | None) -> float:
    if limits is not None and precision < _least_precision(limits):
        shots = 1.0 / precision / precision  # inf rather than an error for 1e-200
        raise InvalidInputs(
            f"{what} {precision!r} is under {_least_precision(limits):.6g}, the least precision "
            f"backend '{limits.backend}' can reach: it would take {shots:.4g} shots per "
            f"measurement, over its max_shots ({limits.max_shots}); precision must be at "
            "least 1/sqrt(max_shots)"
        )
    return precision


def _parse(
    inputs: dict[str, Any], limits: Limits | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """The pubs as ``EstimatorPub`` objects, checked (against ``limits`` too, when
    given), with the default precision applied; and the options."""
    version = inputs.get("version", 2)
    if version != 2:
        raise InvalidInputs(f"version must be 2 (EstimatorV2), got {version!r}")
    options = check_options(inputs.get("options"), _OPTIONS)
    optional_int(options.get("seed_simulator"), "options.seed_simulator")
    default = inputs.get("precision")
    if default is None:
        default = DEFAULT_PRECISION
    else:
        default = _check_precision(_precision(default, "precision"), "precision", limits)
    pubs = inputs.get("pubs")
    if not isinstance(pubs, list) or not pubs:
        raise InvalidInputs(
            "pubs must be a non-empty list of [circuit, observables, parameter_values, precision]"
        )
    parsed = []
    for i, pub in enumerate(pubs):
        where = f"pubs[{i}]"
        if not isinstance(pub, list | tuple) or not 2 <= len(pub) <= 4:
            raise InvalidInputs(
                f"{where} must be [circuit, observables, parameter_values, precision]"
            )
        circuit, observables, values, precision = [*pub, None, None][:4]
        if not isinstance(circuit, QuantumCircuit):
            raise InvalidInputs(
                f"{where}: circuit must be a QuantumCircuit, got {type(circuit).__name__}"
            )
        if precision is None:
            precision = default
        else:
            what = f"{where}: precision"
            precision = _check_precision(_precision(precision, what), what, limits)
        try:
            parsed.append(EstimatorPub.coerce((circuit, observables, values, precision)))
        except (ValueError, TypeError) as exc:
            raise InvalidInputs(f"{where}: {exc}") from exc
        except Exception as exc:  # qiskit's own errors (QiskitError) for bad observables
            raise InvalidInputs(f"{where}: {type(exc).__name__}: {exc}") from exc
    return parsed, options


#: Distinct Pauli terms the observables of one pub may hold. Their measurement settings
#: are found by grouping the terms, which is quadratic in their number.
MAX_OBSERVABLE_TERMS = 1000


def shots_for(precision: float) -> int:
    """Shots per observable group for a target precision (a standard error of at most
    ``precision`` for an observable of norm 1)."""
    return math.ceil(1.0 / precision**2)


def _groups(pub: Any) -> int:
    """How many measurement settings the pub's observables need (qubit-wise commuting
    groups of their Pauli terms)."""
    terms: set[str] = set()
    for observable in pub.observables.ravel().tolist():
        terms.update(observable)
    if len(terms) > MAX_OBSERVABLE_TERMS:
        # Grouping is quadratic in the terms (seconds at a few thousand): bounded first.
        raise InvalidInputs(
            f"the observables hold {len(terms)} distinct Pauli terms "
            f"(at most {MAX_OBSERVABLE_TERMS} a pub)"
        )
    paulis = [t for t in terms if set(t) <= set("IXYZ") and set(t) != {"I"}]
    others = len(terms) - len(paulis) - sum(1 for t in terms if set(t) == {"I"})
    grouped = len(PauliList(paulis).group_qubit_wise_commuting()) if paulis else 0
    return max(1, grouped + others)


def estimate(inputs: dict[str, Any], limits: Limits | None = None) -> tuple[int, int]:
    """(circuit executions: parameter sets times measurement settings, summed over the pubs;
    the most shots per execution). With ``limits``, refuses a precision under
    ``1/sqrt(max_shots)`` and pubs x parameter sets x settings x shots over
    ``max_job_shots``."""
    executions, shots = estimate_pubs(inputs, limits)
    return sum(executions), shots


def estimate_pubs(inputs: dict[str, Any], limits: Limits | None = None) -> tuple[list[int], int]:
    """:func:`estimate` pub by pub: (each pub's circuit executions, the most shots per
    execution), what the service splits a job into shards by."""
    pubs, _ = _parse(inputs, limits)
    runs = [
        (max(1, pub.parameter_values.size) * _groups(pub), shots_for(pub.precision)) for pub in pubs
    ]
    if limits is not None:
        total = sum(n * shots for n, shots in runs)
        limits.total(total, f"pubs ({len(pubs)} pub(s) x parameter sets x settings x shots)")
    return [n for n, _ in runs], max(shots for _, shots in runs)


def main(
    backend: Any,
    publisher: Any,
    pubs: list[Any],
    precision: float | None = None,
    options: dict[str, Any] | None = None,
    version: int = 2,
) -> Any:
    """Estimate the pubs' expectation values on ``backend`` (circuits that are not ISA
    for it are transpiled, their observables mapped through the layout) and return the
    ``PrimitiveResult``."""
    inputs = {"pubs": pubs, "precision": precision, "options": options, "version": version}
    parsed, opts = _parse(inputs)
    ready = []
    for pub in parsed:
        (circuit,) = for_backend([pub.circuit], backend)
        observables = pub.observables
        if circuit is not pub.circuit and circuit.layout is not None:
            observables = observables.apply_layout(circuit.layout, circuit.num_qubits)
        ready.append(
            EstimatorPub(circuit, observables, pub.parameter_values, pub.precision, validate=True)
        )
    estimator = _estimator(
        backend,
        {
            "default_precision": DEFAULT_PRECISION if precision is None else precision,
            "seed_simulator": opts.get("seed_simulator"),
        },
    )
    return run_here(estimator, ready)


def _estimator(backend: Any, options: dict[str, Any]) -> BackendEstimatorV2:
    """A ``BackendEstimatorV2`` on ``backend`` with ``options``, its pass manager built
    once per backend name in this thread."""
    built: dict[str, BackendEstimatorV2] = _estimators.__dict__.setdefault("by_backend", {})
    template = built.get(backend.name)
    if template is None:
        template = built[backend.name] = BackendEstimatorV2(backend=backend)
    estimator = copy.copy(template)
    # What BackendEstimatorV2.__init__ sets besides the (shared) pass manager: this run's
    # backend and options.
    estimator._backend = backend
    estimator._options = dataclasses.replace(template.options, **options)
    return estimator
