"""A small job's round trip, peers side by side in the same run (issue 11, item 2):

p50 of ``ROUNDS`` sequential round trips (submit, then the result in hand) of
- ``backend.run`` of a Bell circuit (1,024 shots), then ``get_counts()``;
- ``Sampler.run`` of the same circuit, then the pub's ``get_counts()``;
- ``Estimator.run`` of one ⟨ZZ⟩ on a Bell state (default precision), then ``evs``;

through the service (2 workers; as plain jobs and inside a ``Session``) and in-process
(``AerSimulator.run``, ``qiskit_aer.primitives.SamplerV2``, and for the estimator two
peers), each built once. The ratio qdispatch / in-process of each row is in the qdispatch
benchmark's ``extra_info["ratio_p50"]`` (the in-process rows run first in each group).

The estimator has two in-process peers because they compute different things:
- ``BackendEstimatorV2`` on ``AerSimulator()`` at the same precision measures ⟨ZZ⟩ with
  ``1/precision²`` = 4,096 shots, as the service's estimator does (and as
  qiskit-ibm-runtime's local mode runs the same ``EstimatorV2.run`` call on an Aer
  backend): the equivalent computation, ``ratio_p50``;
- qiskit-aer's own ``EstimatorV2`` computes ⟨ZZ⟩ exactly from the state vector (no shots),
  which sampling 4,096 shots alone costs several times over: ``ratio_p50_exact``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from qiskit import QuantumCircuit
from qiskit.primitives import BackendEstimatorV2
from qiskit.quantum_info import SparsePauliOp
from qiskit_aer import AerSimulator
from qiskit_aer.primitives import EstimatorV2 as AerEstimator
from qiskit_aer.primitives import SamplerV2 as AerSampler

import qdispatch
from cpu import cpu_seconds, psutil_module
from qdispatch import Estimator, QDispatchService, Sampler, Session
from support import ServiceProcess

ROUNDS = 60
SHOTS = 1024
ROWS = ("backend.run", "Sampler", "Estimator")
# The in-process rows: each row's equivalent, and qiskit-aer's exact estimator.
EXACT = "Estimator (exact)"
IN_PROCESS_ROWS = (*ROWS, EXACT)
# p50 of the in-process rows, for the ratios of the qdispatch rows after them.
_in_process: dict[str, float] = {}


def _bell(measure: bool) -> QuantumCircuit:
    circuit = QuantumCircuit(2, 2 if measure else 0)
    circuit.h(0)
    circuit.cx(0, 1)
    if measure:
        circuit.measure([0, 1], [0, 1])
    return circuit


BELL = _bell(measure=True)
BELL_STATE = _bell(measure=False)
ZZ = SparsePauliOp("ZZ")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(tmp_path_factory.mktemp("bench-latency"), "--workers", "2").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def service(svc: ServiceProcess) -> Iterator[QDispatchService]:
    with qdispatch.connect(svc.url, token=svc.token) as connected:
        yield connected


def _in_process_call(row: str) -> Callable[[], Any]:
    if row == "backend.run":
        sim = AerSimulator()
        return lambda: sim.run(BELL, shots=SHOTS).result().get_counts()
    if row == "Sampler":
        aer_sampler = AerSampler()

        def sample() -> Any:  # a new job each call
            return aer_sampler.run([BELL], shots=SHOTS).result()[0].data.c.get_counts()

        return sample
    if row == "Estimator":
        # What the service runs, at its default precision (1/64: 4,096 shots).
        measured = BackendEstimatorV2(backend=AerSimulator(), options={"default_precision": 1 / 64})
        return lambda: measured.run([(BELL_STATE, ZZ)]).result()[0].data.evs
    aer_estimator = AerEstimator()
    return lambda: aer_estimator.run([(BELL_STATE, ZZ)]).result()[0].data.evs


def _qdispatch_call(row: str, mode: Any) -> Callable[[], Any]:
    if row == "backend.run":
        backend = mode
        return lambda: backend.run(BELL, shots=SHOTS).result().get_counts()
    if row == "Sampler":
        sampler = Sampler(mode=mode)

        def sample() -> Any:  # a new job each call
            return sampler.run([BELL], shots=SHOTS).result()[0].data.c.get_counts()

        return sample
    estimator = Estimator(mode=mode)
    return lambda: estimator.run([(BELL_STATE, ZZ)]).result()[0].data.evs


def _p50(benchmark: Any, call: Callable[[], Any]) -> float:
    benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=3)
    p50 = float(benchmark.stats.stats.median)
    benchmark.extra_info["p50_ms"] = round(p50 * 1e3, 3)
    return p50


@pytest.mark.parametrize("row", IN_PROCESS_ROWS)
def test_round_trip_in_process(benchmark: Any, row: str) -> None:
    benchmark.group = f"round trip: {row.removesuffix(' (exact)')}"
    _in_process[row] = _p50(benchmark, _in_process_call(row))


def _ratios(benchmark: Any, row: str, p50: float) -> None:
    if row in _in_process:
        benchmark.extra_info["ratio_p50"] = round(p50 / _in_process[row], 2)
    if row == "Estimator" and EXACT in _in_process:
        benchmark.extra_info["ratio_p50_exact"] = round(p50 / _in_process[EXACT], 2)


@pytest.mark.parametrize("row", ROWS)
def test_round_trip_qdispatch(
    benchmark: Any, svc: ServiceProcess, service: QDispatchService, row: str
) -> None:
    benchmark.group = f"round trip: {row}"
    call = _qdispatch_call(row, service.backend("aer_simulator"))
    for _ in range(10):  # every worker and checking process warm: their start is not counted
        call()
    before = _cpu_by_role(svc)
    p50 = _p50(benchmark, call)
    after = _cpu_by_role(svc)
    _ratios(benchmark, row, p50)
    # CPU milliseconds a round trip takes in each process (the mean over the warm-up and
    # the rounds): on a machine of few cores, what the round trip cannot go below.
    runs = ROUNDS + 3
    benchmark.extra_info["cpu_ms_per_round_trip"] = {
        role: round((after[role] - before[role]) / runs * 1e3, 2) for role in after
    }


def _cpu_by_role(svc: ServiceProcess) -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process (the client), the service
    process, and its workers and checking processes (its children)."""
    psutil = psutil_module()
    assert svc.proc is not None
    service = psutil.Process(svc.proc.pid)
    return {
        "client": cpu_seconds(psutil.Process()),
        "service": cpu_seconds(service),
        "workers_and_checkers": cpu_seconds(*service.children(recursive=True)),
    }


@pytest.mark.parametrize("row", ROWS[1:])
def test_round_trip_qdispatch_session(benchmark: Any, service: QDispatchService, row: str) -> None:
    benchmark.group = f"round trip: {row}"
    with Session(service.backend("aer_simulator")) as session:
        p50 = _p50(benchmark, _qdispatch_call(row, session))
    _ratios(benchmark, row, p50)
