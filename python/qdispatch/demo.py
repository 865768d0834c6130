"""``qdispatch demo``: random circuits through the local service, end to end.

Connects to the local service (starting it if needed), splits the circuits into jobs of
the backend's ``max_circuits``, submits them with ``backend.run``, follows them on the
pushed status stream with a progress bar, and prints a summary of the results.
"""

from __future__ import annotations

import time
from typing import Any

from qiskit import QuantumCircuit, transpile
from qiskit.circuit.random import random_circuit
from qiskit.quantum_info import SparsePauliOp
from tqdm import tqdm

from .primitives import Estimator, Sampler
from .service import connect
from .sessions import Session


def run_demo(n_circuits: int, backend_name: str, shots: int) -> dict[str, Any]:
    """Run the demo and return its summary figures."""
    with connect() as service:
        backend = service.backend(backend_name)
        print(f"service {service.url}, backend {backend.name} ({backend.num_qubits} qubits)")
        circuits = [
            random_circuit(5, 8, max_operands=2, measure=True, seed=i) for i in range(n_circuits)
        ]
        if not backend.configuration()["simulator"]:
            circuits = transpile(circuits, backend, optimization_level=1, seed_transpiler=1)
        size = backend.max_circuits
        start = time.perf_counter()
        jobs = [
            backend.run(circuits[i : i + size], shots=shots, seed_simulator=i, job_tags=["demo"])
            for i in range(0, n_circuits, size)
        ]
        submitted = time.perf_counter() - start
        sizes = {job.job_id(): min(size, n_circuits - i * size) for i, job in enumerate(jobs)}
        pending = set(sizes)
        with tqdm(total=n_circuits, unit="circuit", desc="running") as bar:
            while pending:
                for job_id in service.api.wait_any_final(sorted(pending), 600):
                    pending.discard(job_id)
                    bar.update(sizes[job_id])
        finished = time.perf_counter() - start
        failed = [f"{j.job_id()}: {j.error_message()}" for j in jobs if j.status().name != "DONE"]
        counts = [c for j in jobs if j.done() for c in _all_counts(j.result())]
        primitives = _primitives_in_a_session(backend)
    summary = {
        "circuits": n_circuits,
        "jobs": len(jobs),
        "failed_jobs": failed,
        "submit_seconds": submitted,
        "total_seconds": finished,
        "circuits_per_second": n_circuits / finished,
        "sample_counts": counts[:3],
        **primitives,
    }
    print(
        f"{n_circuits} circuits in {len(jobs)} jobs: submitted in {submitted:.2f} s, "
        f"all done in {finished:.2f} s ({n_circuits / finished:.0f} circuits/s)"
    )
    for i, c in enumerate(counts[:3]):
        top = dict(sorted(c.items(), key=lambda kv: -kv[1])[:4])
        print(f"  circuit {i}: {top} …")
    print(
        f"in a session: Estimator <ZZ> = {primitives['bell_zz']:.3f} ± "
        f"{primitives['bell_zz_std']:.3f} and <XX> = {primitives['bell_xx']:.3f} of a Bell "
        f"state; Sampler counts {primitives['bell_counts']}"
    )
    if failed:
        print("failed jobs:", *failed, sep="\n  ")
    return summary


def _primitives_in_a_session(backend: Any) -> dict[str, Any]:
    """A Bell state measured by the Sampler and the Estimator, as two jobs of one session."""
    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    measured = bell.copy()
    measured.measure_all()
    with Session(backend) as session:
        sampled = Sampler(mode=session).run([measured], shots=1000)
        estimated = Estimator(mode=session).run(
            [(bell, [SparsePauliOp("ZZ"), SparsePauliOp("XX")])], precision=0.02
        )
        counts = sampled.result()[0].data.meas.get_counts()
        data = estimated.result()[0].data
    return {
        "bell_counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])[:4]),
        "bell_zz": float(data.evs[0]),
        "bell_zz_std": float(data.stds[0]),
        "bell_xx": float(data.evs[1]),
    }


def _all_counts(result: Any) -> list[dict[str, int]]:
    return [result.get_counts(i) for i in range(len(result.results))]
