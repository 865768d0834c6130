"""Data models of the job API: ``QueueInfo``, ``BackendStatus`` and ``BackendProperties``.

Qiskit >= 2 removed ``qiskit.providers.models``; these keep the shapes and accessors
users of the IBMQ provider know, built from the service's JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .constants import local_time
from .exceptions import IBMQError


def updated_tags(
    current: Sequence[str],
    replacement: Sequence[str] | None,
    additional: Sequence[str] | None,
    removal: Sequence[str] | None,
) -> list[str]:
    """Tags after an ``update_tags`` call: ``replacement`` (if given) replaces ``current``,
    then ``additional`` are added and ``removal`` removed; order kept, no duplicates."""
    tags = list(replacement) if replacement is not None else list(current)
    tags += [t for t in additional or [] if t not in tags]
    removed = set(removal or [])
    return [t for t in dict.fromkeys(tags) if t not in removed]


class QueueInfo:
    """Queue information for a job."""

    def __init__(
        self,
        position: int | None = None,
        status: str | None = None,
        estimated_start_time: str | datetime | None = None,
        estimated_complete_time: str | datetime | None = None,
        hub_priority: float | None = None,
        group_priority: float | None = None,
        project_priority: float | None = None,
        job_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.position = position
        self._status = status
        self.estimated_start_time = local_time(estimated_start_time)
        self.estimated_complete_time = local_time(estimated_complete_time)
        self.hub_priority = hub_priority
        self.group_priority = group_priority
        self.project_priority = project_priority
        self.job_id = job_id
        self._data = kwargs

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_data"][name]
        except KeyError:
            raise AttributeError(f"'QueueInfo' object has no attribute '{name}'") from None

    def __repr__(self) -> str:
        return (
            f"QueueInfo(job_id={self.job_id!r}, position={self.position!r}, "
            f"status={self._status!r}, estimated_start_time={self.estimated_start_time!r}, "
            f"estimated_complete_time={self.estimated_complete_time!r})"
        )

    def format(self) -> str:
        """Build a user-friendly report for the job queue information."""
        when = "unknown"
        if self.estimated_start_time is not None:
            when = self.estimated_start_time.strftime("%Y-%m-%d %H:%M:%S %Z")
        done = "unknown"
        if self.estimated_complete_time is not None:
            done = self.estimated_complete_time.strftime("%Y-%m-%d %H:%M:%S %Z")
        return "\n".join(
            [
                f"Job {self.job_id} queue information:",
                f"    queue position: {self.position}",
                f"    status: {self._status}",
                f"    estimated start time: {when}",
                f"    estimated completion time: {done}",
            ]
        )


class BackendStatus(dict[str, Any]):
    """A backend's status: the service's JSON (a dict, as before), whose fields also read
    as attributes, as qiskit-ibm-runtime's ``BackendStatus``: ``backend_name``,
    ``backend_version``, ``operational``, ``pending_jobs``, ``status_msg``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"'BackendStatus' object has no attribute '{name}'") from None

    def __repr__(self) -> str:
        return f"BackendStatus({dict.__repr__(self)})"


class BackendConfiguration(dict[str, Any]):
    """A backend's configuration: the service's JSON (a dict, as before), whose fields also
    read as attributes, as qiskit-ibm-runtime's ``QasmBackendConfiguration`` (``n_qubits``,
    ``max_shots``, ``simulator``, ...; ``num_qubits`` is ``n_qubits``; the attributes
    ``dt`` and ``dtm`` are in seconds where the JSON has nanoseconds, as there). Libraries
    written for IBM backends read it that way (mthree: ``configuration().num_qubits``)."""

    def __getattr__(self, name: str) -> Any:
        if name == "num_qubits" and "n_qubits" in self:
            return self["n_qubits"]
        if name in ("dt", "dtm") and self.get(name) is not None:
            return float(self[name]) * 1e-9
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"'BackendConfiguration' object has no attribute '{name}'"
            ) from None

    def __repr__(self) -> str:
        return f"BackendConfiguration({dict.__repr__(self)})"


_HERTZ_PER = {"GHz": 1e9, "MHz": 1e6, "kHz": 1e3}


class BackendProperties:
    """Calibration data of a backend (qubits, gates), each value dated.

    ``to_dict()`` gives back the JSON the service sent; the accessors follow the IBMQ
    provider's ``BackendProperties``: ``t1``, ``t2``, ``frequency``, ``readout_error``,
    ``readout_length``, ``gate_error``, ``gate_length``, ``qubit_property``,
    ``gate_property``.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        self.backend_name: str = data.get("backend_name", "")
        self.backend_version: str = data.get("backend_version", "")
        self.last_update_date = local_time(data.get("last_update_date"))
        self.qubits: list[list[dict[str, Any]]] = data.get("qubits", [])
        self.gates: list[dict[str, Any]] = data.get("gates", [])
        self.general: list[dict[str, Any]] = data.get("general", [])
        self._qubit_props = [{p["name"]: p for p in q} for q in self.qubits]
        self._gate_props = {
            (g["gate"], tuple(g["qubits"])): {p["name"]: p for p in g.get("parameters", [])}
            for g in self.gates
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackendProperties:
        """Build from the service's JSON (``GET /backends/{name}/properties``)."""
        return cls(data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return self._data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BackendProperties) and other._data == self._data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"BackendProperties(backend_name={self.backend_name!r}, "
            f"last_update_date={self.last_update_date!r})"
        )

    def qubit_property(self, qubit: int, name: str | None = None) -> Any:
        """A qubit's properties as ``{name: (value, date)}``, or one of them."""
        try:
            props = self._qubit_props[qubit]
        except IndexError:
            raise IBMQError(f"couldn't find the properties of qubit {qubit}") from None
        pairs = {n: (p["value"], local_time(p.get("date"))) for n, p in props.items()}
        if name is None:
            return pairs
        if name not in pairs:
            raise IBMQError(f"couldn't find the property '{name}' of qubit {qubit}")
        return pairs[name]

    def gate_property(
        self, gate: str, qubits: int | list[int] | None = None, name: str | None = None
    ) -> Any:
        """A gate's properties as ``{name: (value, date)}`` (on ``qubits``), or one of them."""
        key_qubits = (qubits,) if isinstance(qubits, int) else tuple(qubits or ())
        props = self._gate_props.get((gate, key_qubits))
        if props is None:
            raise IBMQError(f"couldn't find the properties of gate {gate} on qubits {key_qubits}")
        pairs = {n: (p["value"], local_time(p.get("date"))) for n, p in props.items()}
        if name is None:
            return pairs
        if name not in pairs:
            raise IBMQError(f"couldn't find the property '{name}' of gate {gate}")
        return pairs[name]

    def _qubit_value(self, qubit: int, name: str, per: dict[str, float]) -> float:
        # Divided by how many of the unit make one second, and frequencies multiplied by
        # hertz per unit: exact powers of ten, never their inexact reciprocals, so a value
        # the service stored as ``seconds * 1e9`` or ``hertz / 1e9`` comes back as the
        # same float and the Target (and its noise model) matches the device's exactly.
        prop = self._qubit_props[qubit].get(name) if qubit < len(self._qubit_props) else None
        if prop is None:
            raise IBMQError(f"couldn't find the property '{name}' of qubit {qubit}")
        unit = prop.get("unit", "")
        if unit in _HERTZ_PER:
            return float(prop["value"]) * _HERTZ_PER[unit]
        return float(prop["value"]) / per.get(unit, 1.0)

    def t1(self, qubit: int) -> float:
        """T1 of ``qubit``, in seconds."""
        return self._qubit_value(qubit, "T1", {"us": 1e6, "ns": 1e9, "ms": 1e3})

    def t2(self, qubit: int) -> float:
        """T2 of ``qubit``, in seconds."""
        return self._qubit_value(qubit, "T2", {"us": 1e6, "ns": 1e9, "ms": 1e3})

    def frequency(self, qubit: int) -> float:
        """Frequency of ``qubit``, in Hz."""
        return self._qubit_value(qubit, "frequency", {})

    def readout_error(self, qubit: int) -> float:
        """Readout error of ``qubit``."""
        return self._qubit_value(qubit, "readout_error", {})

    def readout_length(self, qubit: int) -> float:
        """Readout length of ``qubit``, in seconds."""
        return self._qubit_value(qubit, "readout_length", {"ns": 1e9, "us": 1e6})

    def gate_error(self, gate: str, qubits: int | list[int]) -> float:
        """Error of ``gate`` on ``qubits``."""
        value, _ = self.gate_property(gate, qubits, "gate_error")
        return float(value)

    def gate_length(self, gate: str, qubits: int | list[int]) -> float:
        """Duration of ``gate`` on ``qubits``, in seconds."""
        key = (qubits,) if isinstance(qubits, int) else tuple(qubits)
        prop = self._gate_props.get((gate, key), {}).get("gate_length")
        if prop is None:
            raise IBMQError(f"couldn't find the length of gate {gate} on qubits {key}")
        per_second = {"ns": 1e9, "us": 1e6, "s": 1.0}.get(prop.get("unit", "s"), 1.0)
        return float(prop["value"]) / per_second
