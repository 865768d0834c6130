"""``Sampler`` and ``Estimator``: qiskit's V2 primitives, run as program jobs.

They implement ``qiskit.primitives.BaseSamplerV2`` / ``BaseEstimatorV2``, so code written
for qiskit's primitives runs here unchanged: ``run(pubs)`` returns a :class:`RuntimeJob`
whose ``result()`` is a qiskit ``PrimitiveResult``. The pubs go to the service's
``sampler`` / ``estimator`` programs (docs/runtime.md). Circuits without parameters are
written in qdispatch's native wire form (a QasmQobj, a few microseconds per circuit);
circuits with parameters, or that a Qobj cannot express, go as QPY.

``mode`` is where the jobs run: a backend (or its name), a :class:`Session` or a
:class:`Batch`; without one, the default service's least busy backend.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from qiskit.circuit import QuantumCircuit
from qiskit.primitives import BaseEstimatorV2, BaseSamplerV2
from qiskit.primitives.containers.estimator_pub import EstimatorPub, EstimatorPubLike
from qiskit.primitives.containers.sampler_pub import SamplerPub, SamplerPubLike

from . import _native
from .assembler import AssembleError
from .encoding import dumps
from .exceptions import IBMInputValueError
from .runtime import RuntimeJob, submit_program
from .service import QDispatchService, connect
from .sessions import Session

if TYPE_CHECKING:
    from .backend import QDispatchBackend

DEFAULT_SHOTS = 1024
DEFAULT_PRECISION = 0.015625


class PrimitiveOptions(dict[str, Any]):
    """A primitive's options: a dict whose known keys are also attributes, so both
    ``sampler.options["default_shots"] = 2000`` and ``sampler.options.default_shots =
    2000`` work. An unknown name is refused."""

    def __init__(self, owner: str, defaults: dict[str, Any], given: dict[str, Any]) -> None:
        unknown = set(given) - set(defaults)
        if unknown:
            raise IBMInputValueError(
                f"unknown {owner} option(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(defaults))})"
            )
        super().__init__({**defaults, **given})
        object.__setattr__(self, "_owner", owner)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{self._owner} has no option '{name}'") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in self:
            raise IBMInputValueError(
                f"unknown {self._owner} option '{name}' (known: {', '.join(sorted(self))})"
            )
        super().__setitem__(name, value)


class _Primitive:
    """What both primitives share: where their jobs run, and their options."""

    _program_id = ""
    _defaults: dict[str, Any] = {}  # noqa: RUF012 - overridden per class, never mutated

    def __init__(
        self,
        mode: QDispatchBackend | Session | str | None = None,
        options: dict[str, Any] | None = None,
        *,
        service: QDispatchService | None = None,
    ) -> None:
        self._session: Session | None = None
        if isinstance(mode, Session):
            self._session = mode
            self._service = mode.service
            self._backend_name = mode.backend()
        elif isinstance(mode, str) or mode is None:
            self._service = service or connect()
            self._backend_name = mode
        else:
            self._service = mode.service
            self._backend_name = mode.name
        self._options = PrimitiveOptions(type(self).__name__, self._defaults, dict(options or {}))

    @property
    def options(self) -> PrimitiveOptions:
        """The primitive's options (change them to change later runs)."""
        return self._options

    @property
    def mode(self) -> Session | str | None:
        """Where jobs run: the session, or the backend's name."""
        return self._session or self._backend_name

    def backend(self) -> QDispatchBackend | None:
        """The backend jobs run on (``None`` when the service picks one per job)."""
        return self._service.backend(self._backend_name) if self._backend_name else None

    @property
    def _backend(self) -> QDispatchBackend | None:
        # Where qiskit's BackendSamplerV2/BackendEstimatorV2 and the runtime's primitives
        # keep their backend, and where qiskit-experiments reads it when it is given only a
        # sampler (`experiment.run(sampler=...)`).
        return self.backend()

    def _submit(self, params: dict[str, Any], encoded: bytes) -> RuntimeJob:
        session_id = self._session.session_id if self._session is not None else None
        return submit_program(
            self._service,
            self._program_id,
            params,
            {"backend": self._backend_name, "job_tags": self._options.get("job_tags") or []},
            session_id=session_id,
            encoded_inputs=encoded,
            keep_inputs=False,
        )


def _parameter_values(pub: SamplerPub | EstimatorPub) -> np.ndarray | None:
    """The pub's parameter values as one array of shape ``(*pub.shape, n_parameters)``
    in the order of ``circuit.parameters``; ``None`` for a circuit without parameters."""
    if pub.circuit.num_parameters == 0:
        return None
    return np.asarray(pub.parameter_values.as_array(pub.circuit.parameters), dtype=float)


class Sampler(_Primitive, BaseSamplerV2):
    """Samples the output registers of circuits on a service backend (SamplerV2).

    Options: ``default_shots`` (1024), ``seed_simulator`` (``None``), ``job_tags``.
    """

    _program_id = "sampler"
    _defaults = {"default_shots": DEFAULT_SHOTS, "seed_simulator": None, "job_tags": None}  # noqa: RUF012

    def run(self, pubs: Iterable[SamplerPubLike], *, shots: int | None = None) -> RuntimeJob:
        """Run the pubs: ``(circuit, parameter_values, shots)`` tuples or circuits.

        Returns:
            A :class:`RuntimeJob` whose ``result()`` is a ``PrimitiveResult`` of
            ``SamplerPubResult``, with one ``BitArray`` per classical register.
        """
        default = shots if shots is not None else self._options["default_shots"]
        try:
            coerced = [SamplerPub.coerce(pub, default) for pub in pubs]
        except (TypeError, ValueError) as exc:
            raise IBMInputValueError(f"invalid pub: {exc}") from exc
        if not coerced:
            raise IBMInputValueError("no pubs to run")
        for i, pub in enumerate(coerced):
            if pub.circuit.num_clbits == 0:
                raise IBMInputValueError(
                    f"pubs[{i}]: circuit '{pub.circuit.name}' has no classical bits to sample; "
                    "add measurements (e.g. circuit.measure_all())"
                )
        # Circuits without parameters go in one native Qobj, referenced by index.
        fixed: dict[int, int] = {}
        circuits: list[QuantumCircuit] = []
        for pub in coerced:
            if pub.circuit.num_parameters == 0 and id(pub.circuit) not in fixed:
                fixed[id(pub.circuit)] = len(circuits)
                circuits.append(pub.circuit)
        qobj = _native_qobj(circuits)
        if qobj is None:
            fixed = {}
        entries: list[list[Any]] = []
        for pub in coerced:
            index = fixed.get(id(pub.circuit))
            circuit: Any = index if index is not None else pub.circuit
            entries.append([circuit, _parameter_values(pub), pub.shots])
        params: dict[str, Any] = {"pubs": entries, "shots": default, "version": 2}
        if self._options.get("seed_simulator") is not None:
            params["options"] = {"seed_simulator": self._options["seed_simulator"]}
        if qobj is not None:
            params["circuits"] = orjson.Fragment(qobj)
        return self._submit(params, dumps(params))


class Estimator(_Primitive, BaseEstimatorV2):
    """Estimates expectation values of observables on a service backend (EstimatorV2),
    from measurement shots: ``stds`` are the standard errors of the estimates.

    Options: ``default_precision`` (0.015625), ``seed_simulator`` (``None``), ``job_tags``.
    """

    _program_id = "estimator"
    _defaults = {  # noqa: RUF012
        "default_precision": DEFAULT_PRECISION,
        "seed_simulator": None,
        "job_tags": None,
    }

    def run(
        self, pubs: Iterable[EstimatorPubLike], *, precision: float | None = None
    ) -> RuntimeJob:
        """Run the pubs: ``(circuit, observables, parameter_values, precision)`` tuples.

        Returns:
            A :class:`RuntimeJob` whose ``result()`` is a ``PrimitiveResult`` of
            ``PubResult`` with ``evs`` and ``stds``.
        """
        default = precision if precision is not None else self._options["default_precision"]
        try:
            coerced = [EstimatorPub.coerce(pub, default) for pub in pubs]
        except (TypeError, ValueError) as exc:
            raise IBMInputValueError(f"invalid pub: {exc}") from exc
        if not coerced:
            raise IBMInputValueError("no pubs to run")
        entries = [
            [pub.circuit, pub.observables.tolist(), _parameter_values(pub), pub.precision]
            for pub in coerced
        ]
        params: dict[str, Any] = {"pubs": entries, "precision": default, "version": 2}
        if self._options.get("seed_simulator") is not None:
            params["options"] = {"seed_simulator": self._options["seed_simulator"]}
        return self._submit(params, dumps(params))


def _native_qobj(circuits: list[QuantumCircuit]) -> bytes | None:
    """The circuits as one QasmQobj (native writer), or ``None`` if a circuit cannot be
    written as one (control flow, classical expressions): those go as QPY."""
    if not circuits:
        return None
    try:
        return _native.circuits_to_qobj_json(circuits, {}, uuid.uuid4().hex, {})
    except (AssembleError, ValueError, TypeError):
        return None
