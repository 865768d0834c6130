"""The QPY guard narrows qiskit's class lookups for the loading thread only: a hostile
payload is refused, while other threads (Dask thread workers run jobs side by side in
one process) see qiskit's modules as they are, and nothing stays changed after a load."""

from __future__ import annotations

import io
import threading
import types
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import qiskit.circuit
import qiskit.circuit.controlflow
import qiskit.circuit.library
from qiskit import qpy
from qiskit.circuit import Gate, QuantumCircuit
from qiskit.circuit.library import HalfAdderGate, MultiplierGate, PermutationGate, UnitaryGate

from qdispatch.qpyguard import guarded_load, refused_names

LOOKUP_MODULES = (qiskit.circuit.library, qiskit.circuit, qiskit.circuit.controlflow)
WAIT = 60.0  # seconds; generous, for a loaded machine


def qpy_of(circuit: QuantumCircuit) -> bytes:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return buffer.getvalue()


def renamed(gate: Gate, old: bytes, new: bytes) -> bytes:
    """QPY of a circuit holding ``gate`` and an H, where the class name ``old`` reads
    ``new`` (same length)."""
    circuit = QuantumCircuit(gate.num_qubits)
    circuit.append(gate, range(gate.num_qubits))
    circuit.h(0)
    raw = qpy_of(circuit)
    assert old in raw
    assert len(old) == len(new)
    return raw.replace(old, new)


def unitary_named(name: bytes) -> bytes:
    return renamed(UnitaryGate([[0, 1], [1, 0]]), b"UnitaryGate", name)


def module_state() -> list[tuple[type, dict[str, Any]]]:
    return [(type(module), dict(vars(module))) for module in LOOKUP_MODULES]


class PausingGate(Gate):
    """A test-only instruction class the reader finds by name (an 11-letter name, like
    the ``UnitaryGate`` it replaces in the payload): its constructor holds the loading
    thread inside ``guarded_load`` until the test lets it go."""

    entered: ClassVar[threading.Event] = threading.Event()
    release: ClassVar[threading.Event] = threading.Event()
    seen_in_load: ClassVar[dict[str, bool]] = {}
    fail: ClassVar[bool] = False

    def __init__(self, *params: Any, **kwargs: Any) -> None:
        cls = type(self)
        # What the loading thread itself sees, mid-load: the narrowed modules.
        cls.seen_in_load = {
            "quantum_volume": hasattr(qiskit.circuit.library, "quantum_volume"),
            "QuantumVolume": hasattr(qiskit.circuit.library, "QuantumVolume"),
            "HGate": hasattr(qiskit.circuit.library, "HGate"),
        }
        cls.entered.set()
        if not cls.release.wait(WAIT):
            raise AssertionError("the test never released the load")
        if cls.fail:
            raise RuntimeError("a constructor failing mid-load")
        super().__init__("pausing", 1, [])


@pytest.fixture
def pausing(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[PausingGate]]:
    PausingGate.entered = threading.Event()
    PausingGate.release = threading.Event()
    PausingGate.seen_in_load = {}
    PausingGate.fail = False
    monkeypatch.setattr(qiskit.circuit.library, "PausingGate", PausingGate, raising=False)
    yield PausingGate
    PausingGate.release.set()  # never leave a thread waiting, whatever the test did


def test_hostile_payloads_are_refused_and_change_nothing() -> None:
    before = module_state()
    refused = {
        b"__setattr__": unitary_named(b"__setattr__"),
        b"QuantumVolume": renamed(HalfAdderGate(1), b"HalfAdderGate", b"QuantumVolume"),
        b"quantum_volume": renamed(MultiplierGate(1), b"MultiplierGate", b"quantum_volume"),
        b"__annotations__": renamed(
            PermutationGate([1, 0]), b"PermutationGate", b"__annotations__"
        ),
        b"Qubit": unitary_named(b"UnitaryGate").replace(b"HGate", b"Qubit"),
    }
    for name, payload in refused.items():
        with pytest.raises(Exception, match=f'Gate class not found: "{name.decode()}"'):
            guarded_load(payload)
    assert {name.decode() for name in refused} <= refused_names()
    assert module_state() == before
    # The thread that was refused sees the real modules again.
    assert qiskit.circuit.library.quantum_volume.__name__ == "quantum_volume"
    circuit = guarded_load(unitary_named(b"UnitaryGate"))[0]
    assert [inst.operation.name for inst in circuit.data] == ["unitary", "h"]
    assert module_state() == before


def test_other_threads_see_the_real_modules_during_a_load(pausing: type[PausingGate]) -> None:
    before = module_state()
    results: dict[str, Any] = {}

    def load() -> None:
        try:
            results["loaded"] = guarded_load(unitary_named(b"PausingGate"))
        except BaseException as exc:  # handed to the test's thread
            results["error"] = exc

    loader = threading.Thread(target=load)
    loader.start()
    try:
        assert pausing.entered.wait(WAIT), "the load never reached the pausing gate"
        # The load is held open; the loading thread itself is refused the builders...
        assert pausing.seen_in_load == {
            "quantum_volume": False,
            "QuantumVolume": False,
            "HGate": True,
        }
        # ...while this thread, and a fresh one, see qiskit's modules as they are.
        from qiskit.circuit import QuantumCircuit as Imported  # noqa: PLC0415 - the import under test

        assert Imported is QuantumCircuit
        assert issubclass(qiskit.circuit.library.QuantumVolume, QuantumCircuit)
        assert qiskit.circuit.library.quantum_volume(3, seed=1).num_qubits == 3
        other: dict[str, Any] = {}

        def read() -> None:
            from qiskit.circuit import QuantumCircuit as Again  # noqa: PLC0415 - the import under test

            other["circuit"] = Again is QuantumCircuit
            other["volume"] = qiskit.circuit.library.quantum_volume(2, seed=2).num_qubits
            other["Volume"] = qiskit.circuit.library.QuantumVolume.__name__
            other["setattr"] = callable(qiskit.circuit.__setattr__)
            # A second load may run beside the held one, guarded in its own thread.
            try:
                guarded_load(unitary_named(b"__setattr__"))
            except Exception as exc:  # the expected refusal, checked below
                other["refused"] = str(exc)
            other["good"] = len(guarded_load(unitary_named(b"UnitaryGate"))[0].data)

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(WAIT)
        assert other["circuit"] is True
        assert other["volume"] == 2
        assert other["Volume"] == "QuantumVolume"
        assert other["setattr"] is True
        assert 'Gate class not found: "__setattr__"' in other["refused"]
        assert other["good"] == 2
        assert loader.is_alive()  # still held: the reads above overlapped the load
    finally:
        pausing.release.set()
        loader.join(WAIT)
    assert "error" not in results, results.get("error")
    assert [inst.operation.name for inst in results["loaded"][0].data] == ["pausing", "h"]
    assert module_state() == before
    assert all(type(module) is types.ModuleType for module in LOOKUP_MODULES)


def test_a_load_that_raises_leaves_nothing_changed(pausing: type[PausingGate]) -> None:
    before = module_state()
    pausing.fail = True
    pausing.release.set()
    with pytest.raises(RuntimeError, match="a constructor failing mid-load"):
        guarded_load(unitary_named(b"PausingGate"))
    assert pausing.seen_in_load["quantum_volume"] is False  # it was guarded while it ran
    assert module_state() == before
    # The same thread is no longer narrowed.
    assert hasattr(qiskit.circuit.library, "quantum_volume")
    from qiskit.circuit import QuantumCircuit as Imported  # noqa: PLC0415 - the import under test

    assert Imported is QuantumCircuit
