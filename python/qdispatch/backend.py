"""A service backend as a qiskit ``BackendV2``: its Target, options and ``run``."""

from __future__ import annotations

import contextlib
import copy
import functools
import numbers
from collections.abc import Callable, Mapping, Sequence
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
from .constants import SERVICE_RUN_OPTIONS
from .exceptions import IBMQBackendApiError, IBMQBackendValueError, IBMQError
from .job import IBMQJob
from .models import BackendConfiguration, BackendProperties, BackendStatus
from .qobj import QasmQobj

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
        self._configuration = BackendConfiguration(configuration)
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

    def configuration(self) -> BackendConfiguration:
        """The backend's configuration, as the service describes it: a dict whose fields
        also read as attributes (``configuration().n_qubits``), as qiskit's
        ``QasmBackendConfiguration``."""
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

    def status(self) -> BackendStatus:
        """Whether the backend is operational and how many jobs wait for it (a dict whose
        keys also read as attributes: ``status().operational``, ``.pending_jobs``)."""
        return BackendStatus(self._service.api.backend_status(self.name))

    def run(
        self,
        circuits: QuantumCircuit | Sequence[QuantumCircuit] | QasmQobj,
        job_name: str | None = None,
        job_share_level: str | None = None,
        job_tags: Sequence[str] | None = None,
        experiment_id: str | None = None,
        header: dict[str, Any] | None = None,
        **run_config: Any,
    ) -> IBMQJob:
        """Run circuits as one job and return it (it is queued; ``result()`` waits).

        ``run_config`` holds run options (``shots``, ``memory``, ``seed_simulator``, and any
        option qiskit-aer takes); unset ones come from ``backend.options``. Options the
        service sets itself (threads, memory, placement) are ignored, as are unknown ones
        (as on Aer); ``noise_model`` raises :class:`IBMQBackendValueError`.
        ``parameter_binds`` takes AerSimulator's form: one ``{parameter: [values]}`` per
        circuit; each circuit runs once per value set, in order, as on Aer.

        A :class:`~qdispatch.qobj.QasmQobj` (what qiskit < 2 code gets from ``assemble``)
        runs as it is: its config holds the run options, its header the user data, so
        ``header``, ``parameter_binds`` and run options are refused with it; one whose
        experiments were never read is sent as the bytes ``assemble`` wrote.
        """
        if isinstance(circuits, QasmQobj):
            given = sorted(k for k, v in {**run_config, "header": header}.items() if v is not None)
            if given:
                raise IBMQBackendValueError(
                    f"run() of a QasmQobj takes no {', '.join(given)}: the Qobj's config and "
                    "header are what runs; pass them to assemble() or set them on the Qobj"
                )
            return self.submit_qobj(circuits, job_name, job_share_level, job_tags, experiment_id)
        if run_config.get("noise_model") is not None:
            # Silently dropping it (as the thread and memory options the service also sets)
            # would return results of a noise the caller did not ask for.
            raise IBMQBackendValueError(
                f"run option noise_model: the service simulates backend '{self.name}' with "
                "its own noise model; choose the backend whose noise you want (an ideal "
                "'aer_simulator' or a device), or run your noise model on a local AerSimulator"
            )
        binds = run_config.pop("parameter_binds", None)
        if binds is not None:
            circuits = _bind_parameters(circuits, binds)
        options = self.run_options(**run_config)
        try:
            qobj = circuits_to_qobj_json(circuits, self, qobj_header=header, **options)
        except (TypeError, ValueError, qiskit.exceptions.QiskitError) as exc:
            raise IBMQBackendValueError(str(exc)) from exc
        return self.submit_qobj(qobj, job_name, job_share_level, job_tags, experiment_id)

    def set_options(self, **fields: Any) -> None:
        """Set run options, checked before any is set: an option neither this backend nor
        qiskit-aer knows raises ``AttributeError`` (as qiskit's ``BackendV2`` documents;
        so does one the service sets itself, such as ``noise_model``), a value of the
        wrong type :class:`IBMQBackendValueError` naming the option."""
        aer_defaults = _aer_option_defaults()
        for name, value in fields.items():
            if name in SERVICE_RUN_OPTIONS:
                raise AttributeError(
                    f"Options field {name} is set by the service for backend '{self.name}'; "
                    "a job cannot set it"
                )
            if not hasattr(self._options, name) and name not in aer_defaults:
                raise AttributeError(f"Options field {name} is not valid for this backend")
            _check_option(name, value, aer_defaults.get(name), self.max_shots)
        self._options.update_options(**fields)

    @property
    def max_shots(self) -> int:
        """The most shots one circuit may run (the service's ``max_shots``)."""
        return int(self._configuration["max_shots"])

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
        qobj: bytes | QasmQobj,
        job_name: str | None = None,
        job_share_level: str | None = None,
        job_tags: Sequence[str] | None = None,
        experiment_id: str | None = None,
    ) -> IBMQJob:
        """Submit a QasmQobj, serialized (JSON bytes) or not, as one job.

        What ``run`` does after serializing; the job manager serializes every chunk first
        and then submits them concurrently through this (the GIL is released meanwhile).
        """
        if isinstance(qobj, QasmQobj):
            qobj = _qobj_bytes(qobj)
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


def _qobj_bytes(qobj: QasmQobj) -> bytes:
    """A Qobj's wire bytes (those ``assemble`` wrote, if its experiments were never read);
    a value JSON cannot hold, put there by a user, is the backend's value error."""
    try:
        return qobj.to_json()
    except (TypeError, AttributeError) as exc:
        raise IBMQBackendValueError(f"the Qobj cannot be serialized: {exc}") from exc


@functools.cache
def _aer_option_defaults() -> dict[str, Any]:
    """The run options qiskit-aer's ``AerSimulator`` knows, with their defaults."""
    # qiskit-aer costs ~0.5 s to import; only a set_options call pays for it.
    from qiskit_aer import AerSimulator  # noqa: PLC0415

    return dict(AerSimulator._default_options().__dict__)


def _check_option(name: str, value: Any, default: Any, max_shots: int) -> None:
    """Raise :class:`IBMQBackendValueError` naming ``name`` if ``value`` is not what the
    option takes: ``shots`` a positive integer, ``memory`` a bool, ``seed_simulator`` an
    integer or ``None``, an Aer option the type of its default (when it has one)."""
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    got = f"got {value!r} ({type(value).__name__})"
    if name == "shots":
        if not is_int or not 1 <= int(value) <= max_shots:
            raise IBMQBackendValueError(
                f"option 'shots' must be an integer from 1 to {max_shots}, {got}"
            )
    elif name == "memory":
        if not isinstance(value, bool):
            raise IBMQBackendValueError(f"option 'memory' must be a bool, {got}")
    elif name == "seed_simulator":
        if value is not None and not is_int:
            raise IBMQBackendValueError(f"option 'seed_simulator' must be an integer, {got}")
    elif value is not None and default is not None:
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, numbers.Integral):
            ok = is_int
        elif isinstance(default, numbers.Real):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise IBMQBackendValueError(
                f"option '{name}' must be a {type(default).__name__}, {got}"
            )


def _bind_parameters(
    circuits: QuantumCircuit | Sequence[QuantumCircuit], binds: Any
) -> list[QuantumCircuit]:
    """The circuits ``run`` submits for AerSimulator's ``parameter_binds``: one mapping per
    circuit from its parameters (or their names) to equally long value lists (a number is
    one value); each circuit bound once per value set, in order, as Aer runs them."""
    circuit_list = [circuits] if isinstance(circuits, QuantumCircuit) else list(circuits)
    bind_list = [binds] if isinstance(binds, Mapping) else list(binds)
    if len(bind_list) != len(circuit_list):
        raise IBMQBackendValueError(
            f"parameter_binds has {len(bind_list)} mappings for {len(circuit_list)} circuits "
            "(one per circuit, as AerSimulator takes)"
        )
    bound: list[QuantumCircuit] = []
    for index, (circuit, bind) in enumerate(zip(circuit_list, bind_list, strict=True)):
        where = f"parameter_binds[{index}] (circuit '{circuit.name}')"
        if not isinstance(bind, Mapping):
            raise IBMQBackendValueError(f"{where} must be a mapping, got {type(bind).__name__}")
        by_name = {p.name: p for p in circuit.parameters}
        values: dict[Parameter, list[Any]] = {}
        for key, given in bind.items():
            param = by_name.get(key if isinstance(key, str) else getattr(key, "name", None))
            if param is None or (not isinstance(key, str) and param != key):
                raise IBMQBackendValueError(f"{where} has no parameter {key!s}")
            values[param] = [given] if isinstance(given, numbers.Real) else list(given)
        missing = sorted(p.name for p in circuit.parameters if p not in values)
        if missing:
            raise IBMQBackendValueError(f"{where} leaves {', '.join(missing)} unbound")
        counts = {p.name: len(v) for p, v in values.items()}
        if len(set(counts.values())) > 1:
            raise IBMQBackendValueError(f"{where}: every parameter needs as many values ({counts})")
        for i in range(next(iter(counts.values()), 1)):
            copy_i = circuit.assign_parameters({p: v[i] for p, v in values.items()})
            copy_i.name = circuit.name  # results named as on Aer (binding renames a copy)
            bound.append(copy_i)
    return bound


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
