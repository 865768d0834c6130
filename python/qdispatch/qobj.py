"""The Qobj data model: ``QasmQobj`` (the wire format jobs are submitted in) and ``PulseQobj``.

qiskit >= 2 removed ``qiskit.qobj``; these classes keep the shapes qiskit 0.x users know:
keyword constructors, ``to_dict()`` / ``from_dict()`` round trips, equality by content, and
extra fields kept as attributes (as qiskit's did). ``QasmQobj.to_json()`` gives the wire
bytes. Pulse schedules cannot be built or run with qiskit >= 2; ``PulseQobj`` is a data
model only, for reading and writing existing payloads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import orjson

__all__ = [
    "PulseLibraryItem",
    "PulseQobj",
    "PulseQobjConfig",
    "PulseQobjExperiment",
    "PulseQobjExperimentConfig",
    "PulseQobjInstruction",
    "QasmQobj",
    "QasmQobjConfig",
    "QasmQobjExperiment",
    "QasmQobjExperimentConfig",
    "QasmQobjExperimentHeader",
    "QasmQobjInstruction",
    "QobjExperimentHeader",
    "QobjHeader",
]

_T = TypeVar("_T", bound="_Fields")


def _json_default(value: Any) -> Any:
    if isinstance(value, complex):
        return [value.real, value.imag]
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _Fields:
    """A bag of fields: set as keyword arguments, kept in order, compared by content."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (a shallow copy)."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls: type[_T], data: dict[str, Any]) -> _T:
        """Builds the object from a dict as :meth:`to_dict` returns it."""
        obj = cls.__new__(cls)
        obj.__dict__.update(data)
        return obj

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({fields})"


def _set(obj: Any, **fields: Any) -> None:
    # qiskit's Qobj classes omitted optional fields that were not given.
    for key, value in fields.items():
        if value is not None:
            setattr(obj, key, value)


# ---------------------------------------------------------------------------------------------
# Shared
# ---------------------------------------------------------------------------------------------


class QobjHeader(_Fields):
    """The Qobj header: free-form fields returned in the result header (``backend_name``…)."""


class QobjExperimentHeader(_Fields):
    """An experiment header: free-form fields returned with that experiment's result."""


# ---------------------------------------------------------------------------------------------
# QASM
# ---------------------------------------------------------------------------------------------


class QasmQobjExperimentHeader(QobjExperimentHeader):
    """A QASM experiment header: ``name``, ``n_qubits``, ``memory_slots``, ``qreg_sizes``,
    ``creg_sizes``, ``qubit_labels``, ``clbit_labels``, ``global_phase``, ``metadata``."""


class QasmQobjExperimentConfig(_Fields):
    """Per-experiment configuration (``n_qubits``, ``memory_slots``, any run option)."""


class QasmQobjConfig(_Fields):
    """The Qobj configuration: ``shots``, ``memory``, ``memory_slots``, ``n_qubits``,
    ``seed_simulator`` and any other run option."""

    def __init__(
        self,
        shots: int | None = None,
        seed_simulator: int | None = None,
        memory: bool | None = None,
        memory_slots: int | None = None,
        n_qubits: int | None = None,
        **kwargs: Any,
    ) -> None:
        _set(
            self,
            shots=shots,
            seed_simulator=seed_simulator,
            memory=memory,
            memory_slots=memory_slots,
            n_qubits=n_qubits,
        )
        self.__dict__.update(kwargs)


class QasmQobjInstruction(_Fields):
    """One QASM instruction: ``name``, ``qubits``, ``params``, ``memory``; ``bfunc``s carry
    ``register``, ``mask``, ``relation`` and ``val``, and the instructions they gate carry
    ``conditional``."""

    def __init__(
        self,
        name: str,
        params: list[Any] | None = None,
        qubits: list[int] | None = None,
        register: int | list[int] | None = None,
        memory: list[int] | None = None,
        condition: Any = None,
        conditional: int | None = None,
        label: str | None = None,
        mask: str | None = None,
        relation: str | None = None,
        val: str | None = None,
        snapshot_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.name = name
        _set(
            self,
            qubits=qubits,
            params=params,
            memory=memory,
            register=register,
            condition=condition,
            conditional=conditional,
            label=label,
            mask=mask,
            relation=relation,
            val=val,
            snapshot_type=snapshot_type,
        )
        self.__dict__.update(kwargs)


class _ByValue(ABC):
    """Equality by wire form: two objects are equal when their ``to_dict()`` are."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The wire form."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _ByValue)
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


class _Qobj(_ByValue):
    """What QASM and Pulse Qobjs share: the top-level layout and the wire bytes."""

    type: ClassVar[str]
    qobj_id: str | None
    schema_version: str
    header: QobjHeader
    config: Any
    experiments: list[Any]

    def to_dict(self) -> dict[str, Any]:
        """The Qobj as a dict, in the wire layout."""
        out = self._head()
        out["experiments"] = [exp.to_dict() for exp in self.experiments]
        return out

    def _head(self) -> dict[str, Any]:
        """Everything but the experiments, in the wire layout (experiments come last)."""
        return {
            "qobj_id": self.qobj_id,
            "type": self.type,
            "schema_version": self.schema_version,
            "header": self.header.to_dict(),
            "config": self.config.to_dict(),
        }

    def to_json(self) -> bytes:
        """The wire bytes: compact JSON, complex numbers as ``[re, im]`` pairs."""
        return _dumps(self.to_dict())


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)


# What joins a Qobj's head to its experiments in the wire bytes both writers produce.
_EXPERIMENTS_KEY = b',"experiments":'
_HEAD_KEYS = ["qobj_id", "type", "schema_version", "header", "config"]


@dataclass(frozen=True)
class _Wire:
    """The bytes a lazy :class:`QasmQobj` was read from; its experiments start at ``start``."""

    data: bytes
    start: int
    count: int

    def experiments(self) -> list[QasmQobjExperiment]:
        # data[start:-1] drops the top-level object's closing brace: the array remains.
        return [QasmQobjExperiment.from_dict(e) for e in orjson.loads(self.data[self.start : -1])]


def _split_wire(wire: bytes) -> tuple[dict[str, Any], int] | None:
    """The head of wire bytes (as a dict) and where the experiments array starts, or
    ``None`` when the bytes are not laid out as the writers lay them out.

    The key ``"experiments"`` may also occur inside the header or config (a user's key);
    only at the top level does the text before it plus ``}`` parse as one object, since an
    occurrence inside a nested object leaves that object open. Inside a JSON string the
    quotes would be escaped, so the pattern cannot match there.
    """
    if not wire.endswith(b"]}"):
        return None
    pattern = _EXPERIMENTS_KEY + b"["
    at = wire.find(pattern)
    while at != -1:
        try:
            head = orjson.loads(wire[:at] + b"}")
        except orjson.JSONDecodeError:
            at = wire.find(pattern, at + 1)
            continue
        if isinstance(head, dict) and list(head) == _HEAD_KEYS and head["type"] == "QASM":
            return head, at + len(_EXPERIMENTS_KEY)
        return None
    return None


class QasmQobjExperiment(_ByValue):
    """One experiment (one circuit): header, config and instructions; or, for a circuit
    the instructions cannot express, no instructions and its base64 QPY in ``qpy``
    (docs/protocol.md, 3.6)."""

    def __init__(
        self,
        config: QasmQobjExperimentConfig | None = None,
        header: QasmQobjExperimentHeader | None = None,
        instructions: Sequence[QasmQobjInstruction] | None = None,
        qpy: str | None = None,
    ) -> None:
        self.config = config or QasmQobjExperimentConfig()
        self.header = header or QasmQobjExperimentHeader()
        self.instructions = list(instructions or [])
        self.qpy = qpy

    def to_dict(self) -> dict[str, Any]:
        """The experiment as a dict, in the wire layout."""
        out = {
            "header": self.header.to_dict(),
            "config": self.config.to_dict(),
            "instructions": [inst.to_dict() for inst in self.instructions],
        }
        if self.qpy is not None:
            out["qpy"] = self.qpy
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QasmQobjExperiment:
        """Builds an experiment from a dict as :meth:`to_dict` returns it."""
        return cls(
            config=QasmQobjExperimentConfig.from_dict(data.get("config") or {}),
            header=QasmQobjExperimentHeader.from_dict(data.get("header") or {}),
            instructions=[QasmQobjInstruction.from_dict(i) for i in data.get("instructions", [])],
            qpy=data.get("qpy"),
        )

    def __repr__(self) -> str:
        name = getattr(self.header, "name", None)
        return f"QasmQobjExperiment(name={name!r}, instructions={len(self.instructions)})"


class QasmQobj(_Qobj):
    """A QASM Qobj: the circuits of one job and how to run them (``type == "QASM"``)."""

    type: ClassVar[str] = "QASM"

    def __init__(
        self,
        qobj_id: str | None = None,
        config: QasmQobjConfig | None = None,
        experiments: Sequence[QasmQobjExperiment] | None = None,
        header: QobjHeader | None = None,
    ) -> None:
        self.qobj_id = qobj_id
        self.config = config or QasmQobjConfig()
        self.experiments = list(experiments or [])
        self.header = header or QobjHeader()
        self.schema_version = "1.3.0"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QasmQobj:
        """Builds a Qobj from a dict as :meth:`to_dict` returns it."""
        kind = data.get("type", "QASM")
        if kind != "QASM":
            raise ValueError(f"not a QASM Qobj: type is {kind!r}")
        qobj = cls(
            qobj_id=data.get("qobj_id"),
            config=QasmQobjConfig.from_dict(data.get("config") or {}),
            experiments=[QasmQobjExperiment.from_dict(e) for e in data.get("experiments", [])],
            header=QobjHeader.from_dict(data.get("header") or {}),
        )
        qobj.schema_version = str(data.get("schema_version", qobj.schema_version))
        return qobj

    # -- the lazy form ------------------------------------------------------------------------
    #
    # ``assemble`` gets wire bytes from the native writer; parsing every experiment into
    # objects costs ~100x what writing them did, and most callers only send them. A lazy
    # Qobj reads its small head (qobj_id, header, config) at once and keeps the experiments
    # as bytes in ``_wire`` until ``experiments`` is first read (which is also how
    # ``to_dict``, ``==`` and ``copy.copy`` reach them). Then they become objects for good
    # and the Qobj is an eager one. Until then ``to_json`` writes the head again (a user
    # may have changed it: it is plain objects) and joins the experiments' bytes to it: the
    # original bytes when the head is unchanged.

    @classmethod
    def _from_wire(cls, wire: bytes, count: int) -> QasmQobj:
        """A Qobj over ``wire``, the bytes of ``count`` experiments as this package's
        writers lay them out (:func:`~qdispatch.assembler.circuits_to_qobj_json`)."""
        split = _split_wire(wire)
        if split is None:  # not the writers' layout: read it all now
            return cls.from_dict(orjson.loads(wire))
        head, start = split
        qobj = cls.__new__(cls)
        qobj.qobj_id = head["qobj_id"]
        qobj.config = QasmQobjConfig.from_dict(head["config"] or {})
        qobj.header = QobjHeader.from_dict(head["header"] or {})
        qobj.schema_version = str(head["schema_version"])
        qobj.__dict__["_wire"] = _Wire(wire, start, count)
        return qobj

    if not TYPE_CHECKING:  # for mypy, attributes stay checked as declared

        def __getattr__(self, name: str) -> Any:
            # Only reached for a missing attribute: "experiments" of a lazy Qobj (or of
            # one another thread has just made eager).
            if name == "experiments":
                experiments = self._materialise()
                if experiments is not None:
                    return experiments
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), "experiments"} - {"_wire"})

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "experiments":  # replaced: the bytes are no longer its experiments
            self.__dict__.pop("_wire", None)
        super().__setattr__(name, value)

    def _materialise(self) -> list[QasmQobjExperiment] | None:
        """The experiments, built from the bytes if they are still bytes."""
        wire: _Wire | None = self.__dict__.get("_wire")
        if wire is not None:
            # Stored before the bytes are dropped, so a concurrent reader finds one of them;
            # when two threads build the list, the first one stored is everyone's.
            self.__dict__.setdefault("experiments", wire.experiments())
            self.__dict__.pop("_wire", None)
        experiments: list[QasmQobjExperiment] | None = self.__dict__.get("experiments")
        return experiments

    def to_json(self) -> bytes:
        """The wire bytes: compact JSON, complex numbers as ``[re, im]`` pairs. For a Qobj
        from :func:`~qdispatch.assemble` whose experiments were never read, the bytes the
        writer gave (with the current head, if it was changed)."""
        wire: _Wire | None = self.__dict__.get("_wire")
        if wire is None or "experiments" in self.__dict__:
            return super().to_json()
        prefix = _dumps(self._head())[:-1] + _EXPERIMENTS_KEY
        if len(prefix) == wire.start and wire.data.startswith(prefix):
            return wire.data
        return prefix + wire.data[wire.start :]

    def __eq__(self, other: object) -> bool:
        # Same bytes read the same way: equal without building either's experiments.
        if type(other) is type(self) and "_wire" in self.__dict__:
            assert isinstance(other, QasmQobj)
            if "_wire" in other.__dict__ and self.to_json() == other.to_json():
                return True
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __copy__(self) -> QasmQobj:
        # A shallow copy shares the experiments list with the original, as an eager one
        # does; a list not built yet cannot be shared, so it is built first.
        self._materialise()
        copied = type(self).__new__(type(self))
        copied.__dict__.update(self.__dict__)
        return copied

    def __repr__(self) -> str:
        wire: _Wire | None = self.__dict__.get("_wire")
        count = wire.count if wire is not None else len(self.experiments)
        return f"QasmQobj(qobj_id={self.qobj_id!r}, experiments={count})"


# ---------------------------------------------------------------------------------------------
# Pulse (data model only)
# ---------------------------------------------------------------------------------------------


def _complex(sample: Any) -> complex:
    if isinstance(sample, (list, tuple)):
        return complex(sample[0], sample[1])
    return complex(sample)


class PulseLibraryItem:
    """A named sampled pulse (``samples`` are complex amplitudes)."""

    def __init__(self, name: str, samples: Sequence[Any]) -> None:
        self.name = name
        self.samples = [_complex(s) for s in samples]

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "samples"}``; samples stay complex (``to_json`` writes ``[re, im]``)."""
        return {"name": self.name, "samples": list(self.samples)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PulseLibraryItem:
        """Builds an item from a dict; samples may be complex or ``[re, im]`` pairs."""
        return cls(data["name"], data["samples"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PulseLibraryItem):
            return NotImplemented
        return self.name == other.name and self.samples == other.samples

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PulseLibraryItem(name={self.name!r}, samples=<{len(self.samples)}>)"


class PulseQobjInstruction(_Fields):
    """One pulse instruction: ``name`` and start time ``t0``, plus the fields of its kind
    (``ch``, ``phase``, ``frequency``, ``duration``, ``qubits``, ``memory_slot``, ``kernels``,
    ``discriminators``, ``pulse_shape``, ``parameters``…)."""

    def __init__(
        self,
        name: str,
        t0: int,
        ch: str | None = None,
        conditional: int | None = None,
        val: Any = None,
        phase: float | None = None,
        duration: int | None = None,
        qubits: list[int] | None = None,
        memory_slot: list[int] | None = None,
        register_slot: list[int] | None = None,
        kernels: list[Any] | None = None,
        discriminators: list[Any] | None = None,
        label: str | None = None,
        type: str | None = None,
        pulse_shape: str | None = None,
        parameters: dict[str, Any] | None = None,
        frequency: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.name = name
        self.t0 = t0
        _set(
            self,
            ch=ch,
            conditional=conditional,
            val=val,
            phase=phase,
            frequency=frequency,
            duration=duration,
            qubits=qubits,
            memory_slot=memory_slot,
            register_slot=register_slot,
            kernels=kernels,
            discriminators=discriminators,
            label=label,
            type=type,
            pulse_shape=pulse_shape,
            parameters=parameters,
        )
        self.__dict__.update(kwargs)


class PulseQobjExperimentConfig(_Fields):
    """Per-experiment pulse configuration (``qubit_lo_freq``, ``meas_lo_freq``…)."""


class PulseQobjConfig(_Fields):
    """The pulse Qobj configuration: ``meas_level``, ``meas_return``, ``pulse_library``,
    ``qubit_lo_freq``, ``meas_lo_freq`` and optional run settings."""

    def __init__(
        self,
        meas_level: int,
        meas_return: str,
        pulse_library: Sequence[PulseLibraryItem],
        qubit_lo_freq: list[float],
        meas_lo_freq: list[float],
        memory_slot_size: int | None = None,
        rep_time: int | None = None,
        rep_delay: float | None = None,
        shots: int | None = None,
        max_credits: int | None = None,
        seed_simulator: int | None = None,
        memory_slots: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.meas_level = meas_level
        self.meas_return = meas_return
        self.pulse_library = list(pulse_library)
        self.qubit_lo_freq = qubit_lo_freq
        self.meas_lo_freq = meas_lo_freq
        _set(
            self,
            memory_slot_size=memory_slot_size,
            rep_time=rep_time,
            rep_delay=rep_delay,
            shots=shots,
            max_credits=max_credits,
            seed_simulator=seed_simulator,
            memory_slots=memory_slots,
        )
        self.__dict__.update(kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The config as a dict; the pulse library as a list of dicts."""
        out = dict(self.__dict__)
        out["pulse_library"] = [item.to_dict() for item in self.pulse_library]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PulseQobjConfig:
        """Builds a config from a dict as :meth:`to_dict` returns it."""
        obj = cls.__new__(cls)
        obj.__dict__.update(data)
        obj.pulse_library = [
            item if isinstance(item, PulseLibraryItem) else PulseLibraryItem.from_dict(item)
            for item in data.get("pulse_library", [])
        ]
        return obj


class PulseQobjExperiment(_ByValue):
    """One pulse experiment (one schedule): instructions, optional config and header."""

    def __init__(
        self,
        instructions: Sequence[PulseQobjInstruction],
        config: PulseQobjExperimentConfig | None = None,
        header: QobjExperimentHeader | None = None,
    ) -> None:
        self.instructions = list(instructions)
        self.config = config
        self.header = header

    def to_dict(self) -> dict[str, Any]:
        """The experiment as a dict (``config``/``header`` only when set)."""
        out: dict[str, Any] = {"instructions": [i.to_dict() for i in self.instructions]}
        if self.config is not None:
            out["config"] = self.config.to_dict()
        if self.header is not None:
            out["header"] = self.header.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PulseQobjExperiment:
        """Builds an experiment from a dict as :meth:`to_dict` returns it."""
        config = data.get("config")
        header = data.get("header")
        return cls(
            instructions=[PulseQobjInstruction.from_dict(i) for i in data["instructions"]],
            config=PulseQobjExperimentConfig.from_dict(config) if config is not None else None,
            header=QobjExperimentHeader.from_dict(header) if header is not None else None,
        )


class PulseQobj(_Qobj):
    """A Pulse Qobj (``type == "PULSE"``): a data model only; the service runs QASM Qobjs."""

    type: ClassVar[str] = "PULSE"

    def __init__(
        self,
        qobj_id: str,
        config: PulseQobjConfig,
        experiments: Sequence[PulseQobjExperiment],
        header: QobjHeader | None = None,
    ) -> None:
        self.qobj_id = qobj_id
        self.config = config
        self.experiments = list(experiments)
        self.header = header or QobjHeader()
        self.schema_version = "1.2.0"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PulseQobj:
        """Builds a Qobj from a dict as :meth:`to_dict` returns it."""
        kind = data.get("type", "PULSE")
        if kind != "PULSE":
            raise ValueError(f"not a Pulse Qobj: type is {kind!r}")
        qobj = cls(
            qobj_id=data["qobj_id"],
            config=PulseQobjConfig.from_dict(data["config"]),
            experiments=[PulseQobjExperiment.from_dict(e) for e in data["experiments"]],
            header=QobjHeader.from_dict(data.get("header") or {}),
        )
        qobj.schema_version = str(data.get("schema_version", qobj.schema_version))
        return qobj
