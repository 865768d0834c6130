"""Qobj payloads for the service tests, written out by hand (the wire format of
docs/protocol.md), so that the service is tested independently of any client."""

from __future__ import annotations

from typing import Any


def experiment(
    name: str, n_qubits: int, instructions: list[dict[str, Any]], n_clbits: int | None = None
) -> dict[str, Any]:
    """One experiment with a register ``q`` of ``n_qubits`` and ``c`` of ``n_clbits``."""
    n_clbits = n_qubits if n_clbits is None else n_clbits
    return {
        "header": {
            "name": name,
            "n_qubits": n_qubits,
            "memory_slots": n_clbits,
            "qreg_sizes": [["q", n_qubits]],
            "creg_sizes": [["c", n_clbits]],
            "qubit_labels": [["q", i] for i in range(n_qubits)],
            "clbit_labels": [["c", i] for i in range(n_clbits)],
            "metadata": {"test": name},
        },
        "config": {"n_qubits": n_qubits, "memory_slots": n_clbits},
        "instructions": instructions,
    }


def qobj(experiments: list[dict[str, Any]], shots: int = 256, **config: Any) -> dict[str, Any]:
    """A QasmQobj around ``experiments``."""
    memory_slots = max(e["header"]["memory_slots"] for e in experiments)
    return {
        "qobj_id": "test-qobj",
        "type": "QASM",
        "schema_version": "1.3.0",
        "header": {},
        "config": {"shots": shots, "memory_slots": memory_slots, **config},
        "experiments": experiments,
    }


def measure_all(n: int) -> dict[str, Any]:
    """Measure qubit i into memory slot i."""
    return {"name": "measure", "qubits": list(range(n)), "memory": list(range(n))}


def ghz(n: int, name: str | None = None) -> dict[str, Any]:
    """An n-qubit GHZ experiment (n=2 is a Bell pair)."""
    insts = [{"name": "h", "qubits": [0]}]
    insts += [{"name": "cx", "qubits": [i, i + 1]} for i in range(n - 1)]
    return experiment(name or f"ghz{n}", n, [*insts, measure_all(n)])


def bell_qobj(shots: int = 256, **config: Any) -> dict[str, Any]:
    """A one-experiment Bell job."""
    return qobj([ghz(2, "bell")], shots=shots, **config)


def device_bell(shots: int = 512) -> dict[str, Any]:
    """|11> prepared in a device's basis (x, cx on coupled qubits 0 and 1)."""
    insts = [{"name": "x", "qubits": [0]}, {"name": "cx", "qubits": [0, 1]}, measure_all(2)]
    return qobj([experiment("x-cx", 2, insts)], shots=shots, seed_simulator=11)


def slow_qobj(n_experiments: int = 1, shots: int = 600) -> dict[str, Any]:
    """A job that takes seconds (about 4 ms a shot here): measuring and resetting qubits
    mid-circuit makes Aer simulate a 12-qubit statevector shot by shot."""
    n = 12
    insts: list[dict[str, Any]] = []
    for layer in range(10):
        insts += [{"name": "h", "qubits": [q]} for q in range(n)]
        insts += [{"name": "rz", "qubits": [q], "params": [0.3]} for q in range(n)]
        insts += [{"name": "cx", "qubits": [q, q + 1]} for q in range(n - 1)]
        insts.append({"name": "measure", "qubits": [layer], "memory": [layer]})
        insts.append({"name": "reset", "qubits": [layer]})
    insts.append(measure_all(n))
    return qobj([experiment(f"slow{i}", n, insts) for i in range(n_experiments)], shots=shots)
