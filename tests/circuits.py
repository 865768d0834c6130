"""Circuits the client tests share."""

from __future__ import annotations

import io
import struct

from qiskit import QuantumCircuit, qpy


def bell() -> QuantumCircuit:
    """A Bell pair, measured into ``c``."""
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit


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


def nested_body_declaring(n_qubits: int) -> bytes:
    """QPY of an if_else whose body's own header declares ``n_qubits`` qubits (the top
    header says 1, and no check before loading reads a nested one): qiskit's (Rust) reader
    makes them one by one before it reads on, about 1 kB each."""
    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    body = QuantumCircuit(1, 1)
    for _ in range(3):
        body.x(0)
    circuit.if_else((circuit.clbits[0], 1), body, None, [0], [0])
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    raw = bytearray(buffer.getvalue())
    header = struct.Struct("!H1cHIIQIQI")  # a circuit header: name size … instructions
    offset = next(
        offset
        for offset in range(1, len(raw) - header.size)
        if (fields := header.unpack_from(raw, offset))[3:5] == (1, 1) and fields[7] == 3
    )
    fields = list(header.unpack_from(raw, offset))
    fields[3] = n_qubits
    header.pack_into(raw, offset, *fields)
    return bytes(raw)
