"""A service backend as a qiskit ``BackendV2``: its Target, options and ``run``."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
import qiskit
from qiskit.circuit import Parameter, QuantumCircuit
from qiskit.circuit.controlflow import IfElseOp
from qiskit.circuit.delay import Delay
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.circuit.measure import Measure
from qiskit.circuit.reset import Reset
from qiskit.providers import BackendV2, Options, QubitProperties
from qiskit.transpiler import InstructionProperties, Target

from . import __version__
from .assembler import circuits_to_qobj_json
from .exceptions import IBMQBackendApiError, IBMQBackendValueError, IBMQError
from .job import IBMQJob
from .models import BackendProperties

if TYPE_CHECKING:
    from .runtime import RuntimeJob
    from .service import QDispatchService

# What a Qobj config carries besides run options; never passed back as options.
_QOBJ_ONLY = frozenset({"memory_slots", "n_qubits"})


class QDispatchBackend(BackendV2):
    """A backend of a qdispatch service. ``run`` submits circuits as one job."""

    def __init__(self, service: QDispatchService, configuration: dict[str, Any]) -> None:
        super().__init__(
            provider=service,
            name=configuration["backend_name"],
            description=configuration.get("description"),
            online_date=configuration.get("online_date"),
            backend_version=configuration.get("backend_version"),
        )
        self._service = service
        self._configuration = configuration
        self._target: Target | None = None
        self._properties: BackendProperties | None = None

    def __repr__(self) -> str:
        return f"<QDispatchBackend('{self.name}') on {self._service.url}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as "the backend ``name`` of this service, with these options": the
        # service pickles as how to reconnect (QDispatchService.__reduce__), so the
        # backend works in another process (multiprocessing, dask).
        return (_backend_of, (self._service, self.name, dict(self.options.__dict__)))

    def __copy__(self) -> QDispatchBackend:
        return self._clone(copy.copy(self.options.__dict__), self._target)

    def __deepcopy__(self, memo: dict[int, Any]) -> QDispatchBackend:
        # The copy shares the connection (the service is not copied) but not the options,
        # so ``set_options`` on a copy (qiskit-ibm-runtime's local mode copies the
        # backend with its options) leaves the original alone.
        options = copy.deepcopy(self.options.__dict__, memo)
        target = copy.deepcopy(self._target, memo)
        return self._clone(options, target)

    def _clone(self, options: dict[str, Any], target: Target | None) -> QDispatchBackend:
        clone = QDispatchBackend(self._service, self._configuration)
        clone._options.update_options(**options)
        clone._properties = self._properties
        clone._target = target
        return clone

    @classmethod
    def _default_options(cls) -> Options:
        return Options(shots=1024, memory=False, seed_simulator=None)

    @property
    def service(self) -> QDispatchService:
        """The service this backend belongs to."""
        return self._service

    @property
    def max_circuits(self) -> int:
        """How many circuits one job may hold (the service's ``max_experiments``)."""
        return int(self._configuration["max_experiments"])

    @property
    def target(self) -> Target:
        """The Target built from the backend's configuration (and, for devices, its
        calibration), so ``transpile(circuits, backend)`` produces what the backend runs."""
        if self._target is None:
            self._target = _build_target(self._configuration, self.properties())
        return self._target

    @property
    def meas_map(self) -> list[list[int]]:
        """Which qubits are measured together (a fake device's, as its
        ``GenericBackendV2``'s); ``NotImplementedError`` where unknown, as ``AerSimulator``."""
        groups = self.target.concurrent_measurements
        if groups is None:
            raise NotImplementedError(f"backend '{self.name}' has no measurement map")
        return [list(group) for group in groups]

    @property
    def dtm(self) -> float:
        """The output signal timestep in seconds (a fake device's ``dt``);
        ``NotImplementedError`` where unknown, as ``AerSimulator``."""
        dtm = self._configuration.get("dtm")
        if not dtm:
            raise NotImplementedError(f"backend '{self.name}' has no dtm")
        return float(dtm) * 1e-9

    def configuration(self) -> dict[str, Any]:
        """The backend's configuration, as the service describes it."""
        return self._configuration

    def properties(
        self, refresh: bool = False, datetime: datetime | None = None
    ) -> BackendProperties | None:
        """The backend's calibration data (``None`` for an ideal simulator); with
        ``datetime``, as it was then."""
        if datetime is not None:
            data = self._service.api.backend_properties(self.name, datetime)
            return BackendProperties.from_dict(data) if data else None
        if self._properties is None or refresh:
            data = self._service.api.backend_properties(self.name)
            self._properties = BackendProperties.from_dict(data) if data else None
        return self._properties

    def status(self) -> dict[str, Any]:
        """Whether the backend is operational and how many jobs wait for it."""
        return self._service.api.backend_status(self.name)

    def run(
        self,
        circuits: QuantumCircuit | Sequence[QuantumCircuit],
        job_name: str | None = None,
        job_share_level: str | None = None,
        job_tags: Sequence[str] | None = None,
        experiment_id: str | None = None,
        header: dict[str, Any] | None = None,
        **run_config: Any,
    ) -> IBMQJob:
        """Run circuits as one job and return it (it is queued; ``result()`` waits).

        ``run_config`` holds run options (``shots``, ``memory``, ``seed_simulator``, and any
        option qiskit-aer takes); unset ones come from ``backend.options``.
        """
        options = self.run_options(**run_config)
        try:
            qobj = circuits_to_qobj_json(circuits, self, qobj_header=header, **options)
        except (TypeError, ValueError, qiskit.exceptions.QiskitError) as exc:
            raise IBMQBackendValueError(str(exc)) from exc
        return self.submit_qobj(qobj, job_name, job_share_level, job_tags, experiment_id)

    def run_options(self, **run_config: Any) -> dict[str, Any]:
        """``backend.options`` overridden by ``run_config`` (``None`` values dropped)."""
        options = {k: v for k, v in self.options.__dict__.items() if v is not None}
        options.update({k: v for k, v in run_config.items() if v is not None})
        return options

    def envelope(
        self,
        job_name: str | None = None,
        job_share_level: str | None = None,
        job_tags: Sequence[str] | None = None,
        experiment_id: str | None = None,
    ) -> bytes:
        """The JSON of a job submission to this backend, without its Qobj."""
        envelope: dict[str, Any] = {
            "backend": self.name,
            "client_info": {"qdispatch": __version__, "qiskit": qiskit.__version__},
        }
        if job_name is not None:
            envelope["name"] = job_name
        if job_tags:
            if isinstance(job_tags, str) or not all(isinstance(t, str) for t in job_tags):
                raise IBMQBackendValueError(f"job_tags must be a list of strings, got {job_tags!r}")
            envelope["tags"] = list(job_tags)
        if job_share_level is not None:
            envelope["share_level"] = str(getattr(job_share_level, "value", job_share_level))
        if experiment_id is not None:
            envelope["experiment_id"] = experiment_id
        return orjson.dumps(envelope)

    def submit_qobj(
        self,
        qobj: bytes,
        job_name: str | None = None,
        job_share_level: str | None = None,
        job_tags: Sequence[str] | None = None,
        experiment_id: str | None = None,
    ) -> IBMQJob:
        """Submit an already serialized QasmQobj (JSON bytes) as one job.

        What ``run`` does after serializing; the job manager serializes every chunk first
        and then submits them concurrently through this (the GIL is released meanwhile).
        """
        envelope = self.envelope(job_name, job_share_level, job_tags, experiment_id)
        info = self._service.api.submit_job(envelope, qobj)
        return IBMQJob.from_info(self, self._service, info)

    def retrieve_job(self, job_id: str) -> IBMQJob | RuntimeJob:
        """A job of this backend by id."""
        job = self._service.job(job_id)
        ran_on = getattr(job.backend(), "name", None)
        if ran_on != self.name:
            raise IBMQBackendApiError(f"job '{job_id}' ran on '{ran_on}', not '{self.name}'")
        return job

    def jobs(
        self, limit: int | None = 10, skip: int = 0, **filters: Any
    ) -> list[IBMQJob | RuntimeJob]:
        """This backend's jobs (the filters of ``QDispatchService.jobs``)."""
        return self._service.jobs(limit, skip, backend_name=self.name, **filters)


def _backend_of(service: QDispatchService, name: str, options: dict[str, Any]) -> QDispatchBackend:
    """The backend ``name`` of ``service`` with ``options`` set (how a pickled backend is
    rebuilt); a backend of its own, so its options are not the service's shared one's."""
    return service.backend(name)._clone(options, None)


def _qubit_properties(
    n_qubits: int, props: BackendProperties | None
) -> list[QubitProperties] | None:
    """T1, T2 and frequency of every qubit from the calibration (what ``qubit_properties``
    answers, and what ``NoiseModel.from_backend`` builds thermal relaxation from)."""
    if props is None:
        return None

    def value(read: Callable[[int], float], qubit: int) -> float | None:
        try:
            return read(qubit)
        except IBMQError:
            return None

    return [
        QubitProperties(
            t1=value(props.t1, q), t2=value(props.t2, q), frequency=value(props.frequency, q)
        )
        for q in range(n_qubits)
    ]


def _build_target(config: dict[str, Any], props: BackendProperties | None) -> Target:
    n_qubits = int(config["n_qubits"])
    dt = config.get("dt")
    target = Target(
        description=config.get("description"),
        num_qubits=n_qubits,
        dt=dt * 1e-9 if dt else None,
        qubit_properties=_qubit_properties(n_qubits, props),
        concurrent_measurements=config.get("meas_map"),
    )
    gates = get_standard_gate_name_mapping()
    coupling = config.get("coupling_map")
    edges = [tuple(e) for e in coupling] if coupling else None

    def qargs_props(
        name: str, arity: int
    ) -> dict[tuple[int, ...], InstructionProperties | None] | None:
        if arity == 1:
            qargs: list[tuple[int, ...]] = [(q,) for q in range(n_qubits)]
        elif arity == 2 and edges is not None:
            qargs = [tuple(e) for e in edges]
        elif edges is None:
            return None  # all-to-all: a global instruction
        else:
            return {}
        out: dict[tuple[int, ...], InstructionProperties | None] = {}
        for q in qargs:
            error = duration = None
            if props is not None:
                # Not calibrated: no properties, still supported. Each separately: a
                # reset has a length but no error.
                with contextlib.suppress(IBMQError):
                    error = props.gate_error(name, list(q))
                with contextlib.suppress(IBMQError):
                    duration = props.gate_length(name, list(q))
            out[q] = InstructionProperties(duration=duration, error=error)
        return out

    for name in config["basis_gates"]:
        if name not in gates:
            continue  # 'unitary' and other non-standard names are run, not targeted
        gate = gates[name]
        qprops = qargs_props(name, gate.num_qubits)
        if qprops == {}:
            continue
        target.add_instruction(gate, qprops, name=name)
    for op in (Measure(), Reset(), Delay(Parameter("t"))):
        qprops = qargs_props(op.name, 1)
        if op.name == "measure" and props is not None and qprops:
            for q in list(qprops):
                try:
                    err = props.readout_error(q[0])
                    length = props.readout_length(q[0])
                except IBMQError:
                    continue
                qprops[q] = InstructionProperties(duration=length, error=err)
        target.add_instruction(op, qprops)
    target.add_instruction(IfElseOp, name="if_else")
    return target
