"""The backend catalog: what each backend the service offers is, says and runs on.

Two kinds of backend are built in: the ideal ``aer_simulator`` and noisy fake devices built
from :class:`qiskit.providers.fake_provider.GenericBackendV2` with a fixed seed, so that
their (random) calibration data and noise are the same in every process and every run.

Everything here is a pure function of a :class:`BackendDef`. Expensive objects (the
``GenericBackendV2``, the Aer simulator, the native validation spec) are cached per
process; qiskit-aer is imported only where a simulator is built, so that the web process
does not pay for it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.providers.fake_provider import GenericBackendV2

from qdispatch._native import BackendSpec

from . import workermemory

if TYPE_CHECKING:
    from qiskit_aer import AerSimulator

__all__ = [
    "DIRECTIVES",
    "BackendDef",
    "catalog",
    "configuration",
    "gate_spec",
    "generic_backend",
    "native_spec",
    "properties",
    "simulator",
]

BACKEND_VERSION = "0.1.0"
#: Instructions every backend accepts whatever its basis gates (the validator allows them).
DIRECTIVES: tuple[str, ...] = ("measure", "reset", "barrier", "delay")
# Accepted on every backend besides the directives: a Qobj's classical-condition test.
_CONDITION = "bfunc"
# Fixed so that the fake devices' calibration data, and so their noise, never change.
_FAKE_SEED_5Q = 5_000_001
_FAKE_SEED_27Q = 27_000_001
_FAKE_BASIS: tuple[str, ...] = ("cx", "id", "rz", "sx", "x")
_ONLINE_DATE = "2025-01-01T00:00:00+00:00"


@dataclass(frozen=True)
class BackendDef:
    """The static description of one backend; hashable, so it keys per-process caches."""

    name: str
    n_qubits: int
    simulator: bool
    basis_gates: tuple[str, ...]
    #: Directed edges two-qubit gates may act on; ``None`` for all-to-all.
    coupling_map: tuple[tuple[int, int], ...] | None
    max_shots: int = 100_000
    max_experiments: int = 300
    #: ``GenericBackendV2`` seed of a noisy fake device; ``None`` for an ideal simulator.
    seed: int | None = None
    description: str = ""

    @property
    def is_fake_device(self) -> bool:
        """Whether this backend is a noisy fake device (built from ``GenericBackendV2``)."""
        return self.seed is not None


def _both_directions(edges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    return tuple(edge for a, b in edges for edge in ((a, b), (b, a)))


_T_SHAPE_5Q = _both_directions(((0, 1), (1, 2), (1, 3), (3, 4)))
# IBM Falcon r4 heavy-hex layout (e.g. ibmq_montreal), 27 qubits.
_HEAVY_HEX_27Q = _both_directions(
    (
        (0, 1), (1, 2), (1, 4), (2, 3), (3, 5), (4, 7), (5, 8), (6, 7), (7, 10), (8, 9),
        (8, 11), (10, 12), (11, 14), (12, 13), (12, 15), (13, 14), (14, 16), (15, 18),
        (16, 19), (17, 18), (18, 21), (19, 20), (19, 22), (21, 23), (22, 25), (23, 24),
        (24, 25), (25, 26),
    )
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def _standard_gates() -> dict[str, Any]:
    return get_standard_gate_name_mapping()


@functools.lru_cache(maxsize=1)
def _catalog() -> dict[str, BackendDef]:
    ideal_basis = (
        *(name for name in _standard_gates() if name not in DIRECTIVES),
        "unitary",
    )
    defs = (
        BackendDef(
            name="aer_simulator",
            n_qubits=30,
            simulator=True,
            basis_gates=ideal_basis,
            coupling_map=None,
            description="Ideal (noiseless) qiskit-aer simulator, all-to-all, all standard gates.",
        ),
        BackendDef(
            name="fake_generic_5q",
            n_qubits=5,
            simulator=False,
            basis_gates=_FAKE_BASIS,
            coupling_map=_T_SHAPE_5Q,
            seed=_FAKE_SEED_5Q,
            description="Noisy 5-qubit fake device (T-shaped coupling), simulated by qiskit-aer.",
        ),
        BackendDef(
            name="fake_generic_27q",
            n_qubits=27,
            simulator=False,
            basis_gates=_FAKE_BASIS,
            coupling_map=_HEAVY_HEX_27Q,
            seed=_FAKE_SEED_27Q,
            description="Noisy 27-qubit fake device (Falcon heavy-hex), simulated by qiskit-aer.",
        ),
    )
    return {d.name: d for d in defs}


def catalog() -> dict[str, BackendDef]:
    """All built-in backends by name (a fresh dict; the definitions are immutable)."""
    return dict(_catalog())


@functools.cache
def generic_backend(defn: BackendDef) -> GenericBackendV2:
    """The seeded ``GenericBackendV2`` behind a fake device (cached per process).

    Raises ``ValueError`` for a backend that is not a fake device.
    """
    if defn.seed is None:
        raise ValueError(f"backend '{defn.name}' is an ideal simulator, not a fake device")
    coupling = [list(edge) for edge in defn.coupling_map] if defn.coupling_map else None
    return GenericBackendV2(
        defn.n_qubits,
        basis_gates=list(defn.basis_gates),
        coupling_map=coupling,
        seed=defn.seed,
    )


def gate_spec(defn: BackendDef) -> dict[str, tuple[int | None, int | None]]:
    """Gate name → (number of qubits, number of parameters) for every basis gate.

    ``unitary`` takes any number of qubits and one parameter (its matrix). Directives
    (measure, reset, barrier, delay, bfunc) are not listed: the validator always allows them.
    """
    standard = _standard_gates()
    spec: dict[str, tuple[int | None, int | None]] = {}
    for name in defn.basis_gates:
        if name in DIRECTIVES:
            continue
        if name == "unitary":
            spec[name] = (None, 1)
        elif name in standard:
            gate = standard[name]
            spec[name] = (gate.num_qubits, len(gate.params))
        else:  # pragma: no cover - the catalog only holds standard gates and unitary
            raise ValueError(f"backend '{defn.name}': unknown basis gate '{name}'")
    return spec


#: What the Qobj validator holds every Qobj to besides a backend's qubits, shots and
#: experiments: each bounds something a worker allocates by (docs/service.md, "Limits").
QOBJ_LIMITS: dict[str, int] = {
    "max_memory_slots": 1024,
    "max_instructions": 100_000,
    "max_header_bytes": 64 * 1024,
    "max_name_bytes": 1024,
    "max_params": 64,
    "max_register_slots": 4096,
    "max_qpy_bytes": 8 << 20,
}


@functools.cache
def native_spec(defn: BackendDef) -> BackendSpec:
    """The Rust-side validation spec of a backend."""
    coupling = [tuple(edge) for edge in defn.coupling_map] if defn.coupling_map else None
    return BackendSpec(
        defn.name,
        defn.n_qubits,
        defn.max_shots,
        defn.max_experiments,
        gates=gate_spec(defn),
        coupling_map=coupling,
        **QOBJ_LIMITS,
    )


def program_circuits_spec(defn: BackendDef, gates_of: BackendDef, max_circuits: int) -> BackendSpec:
    """What a program's Qobj input (docs/runtime.md, ``QOBJ_INPUTS``) must fit for a job
    on ``defn``: its width and shot limit, but the gates of ``gates_of`` (the ideal
    simulator) and no coupling map, because programs make circuits fit the device
    themselves; at most ``max_circuits`` circuits."""
    return BackendSpec(
        defn.name,
        defn.n_qubits,
        defn.max_shots,
        max_circuits,
        gates=gate_spec(gates_of),
        coupling_map=None,
        **QOBJ_LIMITS,
    )


@functools.cache
def simulator(defn: BackendDef) -> AerSimulator:
    """The Aer simulator that runs a backend's jobs (cached per process).

    The ideal ``AerSimulator()`` for a simulator; for a fake device, one built from its
    ``GenericBackendV2`` so that it carries that device's noise model.
    """
    # qiskit-aer costs ~0.5 s to import; only processes that simulate pay for it.
    from qiskit_aer import AerSimulator  # noqa: PLC0415

    sim = AerSimulator() if defn.seed is None else AerSimulator.from_backend(generic_backend(defn))
    aer_memory = workermemory.aer_max_memory_mb()
    if aer_memory is not None:
        # Below the worker's own limit: Aer refuses a statevector too large, cleanly.
        sim.set_options(max_memory_mb=aer_memory)
    return sim


def _gate_parameters(name: str) -> list[str]:
    if name == "unitary":
        return ["matrix"]
    gate = _standard_gates().get(name)
    return [str(p) for p in gate.params] if gate is not None else []


def configuration(defn: BackendDef) -> dict[str, Any]:
    """The backend's configuration, shaped as IBM's ``BackendConfiguration`` JSON.

    ``dt``/``dtm`` are in nanoseconds, as in IBM's JSON (qiskit's
    ``QasmBackendConfiguration`` converts them to seconds when it reads them).
    """
    coupling = [list(edge) for edge in defn.coupling_map] if defn.coupling_map else None
    dt_ns: float | None = None
    gate_qargs: dict[str, list[list[int]]] = {}
    # Which qubits are measured together: the device's, or none known (as AerSimulator).
    meas_map: list[list[int]] | None = None
    if defn.seed is not None:
        target = generic_backend(defn).target
        if target.dt is not None:
            dt_ns = float(target.dt) * 1e9
        if target.concurrent_measurements is not None:
            meas_map = [list(group) for group in target.concurrent_measurements]
        for name in defn.basis_gates:
            if name in target.operation_names:
                gate_qargs[name] = [list(q) for q in target[name] if q is not None]
    gates: list[dict[str, Any]] = []
    for name in defn.basis_gates:
        gate: dict[str, Any] = {"name": name, "parameters": _gate_parameters(name)}
        if name in gate_qargs:
            gate["coupling_map"] = gate_qargs[name]
        gates.append(gate)
    return {
        "backend_name": defn.name,
        "backend_version": BACKEND_VERSION,
        "n_qubits": defn.n_qubits,
        "basis_gates": list(defn.basis_gates),
        "gates": gates,
        "coupling_map": coupling,
        "local": False,
        "simulator": defn.simulator,
        "conditional": True,
        "open_pulse": False,
        "memory": True,
        "max_shots": defn.max_shots,
        "max_experiments": defn.max_experiments,
        "n_registers": 1,
        "meas_levels": [2],
        "multi_meas_enabled": True,
        "allow_q_object": True,
        "credits_required": False,
        "online_date": _ONLINE_DATE,
        "description": defn.description,
        "supported_instructions": [*defn.basis_gates, *DIRECTIVES, _CONDITION],
        "dt": dt_ns,
        "dtm": dt_ns,
        "meas_map": meas_map,
        "processor_type": None,
        "quantum_volume": None,
        "sample_name": defn.name,
        "url": None,
    }


def _nduv(date: str, name: str, unit: str, value: float) -> dict[str, Any]:
    # IBM's "Nduv" (name, date, unit, value) record; plain float so it JSON-serializes.
    return {"date": date, "name": name, "unit": unit, "value": float(value)}


def properties(defn: BackendDef, last_update_date: datetime) -> dict[str, Any] | None:
    """The backend's calibration data, shaped as IBM's ``BackendProperties`` JSON.

    ``None`` for an ideal simulator. For a fake device the values come from its
    ``GenericBackendV2`` target and every entry is dated ``last_update_date``.
    """
    if defn.seed is None:
        return None
    date = last_update_date.isoformat()
    target = generic_backend(defn).target
    qubit_props = target.qubit_properties or []
    measure = target["measure"] if "measure" in target.operation_names else {}
    qubits: list[list[dict[str, Any]]] = []
    for q in range(defn.n_qubits):
        entries: list[dict[str, Any]] = []
        qp = qubit_props[q] if q < len(qubit_props) else None
        if qp is not None:
            if qp.t1 is not None:
                entries.append(_nduv(date, "T1", "us", qp.t1 * 1e6))
            if qp.t2 is not None:
                entries.append(_nduv(date, "T2", "us", qp.t2 * 1e6))
            if qp.frequency is not None:
                entries.append(_nduv(date, "frequency", "GHz", qp.frequency / 1e9))
        readout = measure.get((q,))
        if readout is not None:
            if readout.error is not None:
                entries.append(_nduv(date, "readout_error", "", readout.error))
                # GenericBackendV2 has one symmetric readout error per qubit.
                entries.append(_nduv(date, "prob_meas0_prep1", "", readout.error))
                entries.append(_nduv(date, "prob_meas1_prep0", "", readout.error))
            if readout.duration is not None:
                entries.append(_nduv(date, "readout_length", "ns", readout.duration * 1e9))
        qubits.append(entries)
    gates: list[dict[str, Any]] = []
    for name in (*defn.basis_gates, "reset"):
        if name not in target.operation_names:
            continue
        for qargs, props in target[name].items():
            if qargs is None or props is None:
                continue
            params: list[dict[str, Any]] = []
            if props.error is not None:
                params.append(_nduv(date, "gate_error", "", props.error))
            if props.duration is not None:
                params.append(_nduv(date, "gate_length", "ns", props.duration * 1e9))
            gates.append(
                {
                    "gate": name,
                    "qubits": list(qargs),
                    "parameters": params,
                    "name": f"{name}{'_'.join(str(q) for q in qargs)}",
                }
            )
    return {
        "backend_name": defn.name,
        "backend_version": BACKEND_VERSION,
        "last_update_date": date,
        "qubits": qubits,
        "gates": gates,
        "general": [],
    }
