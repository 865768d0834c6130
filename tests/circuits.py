"""Circuits the client tests share."""

from __future__ import annotations

from qiskit import QuantumCircuit


def slow_circuit(name: str = "slow") -> QuantumCircuit:
    """Seconds of work at a few thousand shots: measuring and resetting qubits
    mid-circuit makes Aer simulate a 12-qubit statevector shot by shot."""
    qc = QuantumCircuit(12, 12, name=name)
    for layer in range(10):
        qc.h(range(12))
        qc.rz(0.3, range(12))
        for q in range(11):
            qc.cx(q, q + 1)
        qc.measure(layer, layer)
        qc.reset(layer)
    qc.measure(range(12), range(12))
    return qc
