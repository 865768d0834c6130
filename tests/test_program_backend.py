"""The backend a program job runs on, in the worker (``programs.worker.program_backend``).

The built-in programs share one simulator per backend, thread count and thread, its target
read once (``programs.common.fix_target``): copying an ``AerSimulator`` and rebuilding its
target cost about 3 ms a small job. A program from ``--programs-dir`` may reconfigure its
backend, so it gets a fresh copy each run, and nothing it changes reaches the next run.
These run in this process: no service is needed to show them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit.library import iSwapGate

from circuits import bell
from qdispatch import encoding
from qdispatch.server.programs import BUILTIN, ProgramRef
from qdispatch.server.programs.common import fix_target, for_backend
from qdispatch.server.programs.worker import program_backend, run_program

ESTIMATOR = ProgramRef("estimator", BUILTIN, "qdispatch.server.programs.estimator")
SAMPLER = ProgramRef("sampler", BUILTIN, "qdispatch.server.programs.sampler")


def _no_events(kind: str, data: Any) -> None:
    raise AssertionError(f"unexpected {kind} event: {data!r}")


def test_a_shared_backend_is_one_per_backend_threads_and_thread() -> None:
    first = program_backend("aer_simulator", 1, shared=True)
    assert program_backend("aer_simulator", 1, shared=True) is first
    assert program_backend("aer_simulator", 2, shared=True) is not first
    assert program_backend("fake_generic_5q", 1, shared=True) is not first
    assert first.options.max_parallel_threads == 1

    elsewhere: list[Any] = []
    thread = threading.Thread(
        target=lambda: elsewhere.append(program_backend("aer_simulator", 1, shared=True))
    )
    thread.start()
    thread.join()
    assert elsewhere[0] is not first  # a dask worker's other threads run jobs of their own


def test_an_unshared_backend_is_a_fresh_copy_each_time() -> None:
    first = program_backend("aer_simulator", 1)
    first.set_options(shots=7, method="stabilizer")
    second = program_backend("aer_simulator", 1)
    assert second is not first
    assert second.options.shots != 7
    assert second.options.method == "automatic"
    assert program_backend("aer_simulator", 1, shared=True).options.method == "automatic"


@pytest.mark.parametrize("name", ["aer_simulator", "fake_generic_5q"])
def test_a_fixed_target_fits_circuits_as_a_fresh_one_does(name: str) -> None:
    # ISA circuits stay the very objects; a gate Aer lacks is lowered on the ideal
    # simulator; a device's circuits are transpiled to its coupling map: the same
    # circuits whether the target is read once or at each call.
    iswap = QuantumCircuit(3, 3)
    iswap.append(iSwapGate(), [0, 2])
    iswap.measure(range(3), range(3))
    circuits = [bell(), iswap]
    fixed = program_backend(name, 1)
    fix_target(fixed)
    fresh = program_backend(name, 1)
    got, expected = for_backend(circuits, fixed), for_backend(circuits, fresh)
    assert got == expected
    if name == "aer_simulator":
        assert got[0] is circuits[0]
        assert "iswap" not in got[1].count_ops()


def _estimator_inputs() -> bytes:
    state = QuantumCircuit(2)
    state.h(0)
    state.cx(0, 1)
    pubs = [[state, [{"ZZ": 1.0}, {"XI": 1.0}], None, None]]
    return encoding.dumps({"pubs": pubs, "precision": 1 / 64, "options": {"seed_simulator": 3}})


def test_built_in_programs_on_the_shared_backend_give_the_same_results() -> None:
    # Seeded: the same inputs give the same values on a fresh copy and on the shared one,
    # run after run (nothing of a run stays on the shared backend).
    inputs = _estimator_inputs()
    runs = [run_program(ESTIMATOR, "aer_simulator", inputs, 1, _no_events)[0] for _ in range(3)]
    values = [encoding.loads(run)[0].data.evs.tolist() for run in runs]
    assert values[0] == values[1] == values[2]
    assert values[0][0] == pytest.approx(1.0)
    assert abs(values[0][1]) < 0.1


def test_a_programs_dir_program_reconfigures_only_its_own_copy(tmp_path: Path) -> None:
    path = tmp_path / "reconfigure.py"
    path.write_text(
        "def main(backend, publisher, shots):\n"
        "    before = backend.options.shots\n"
        "    backend.set_options(shots=shots)\n"
        "    return {'before': before, 'after': backend.options.shots}\n"
    )
    ref = ProgramRef("reconfigure", str(path), str(path))
    first, _ = run_program(ref, "aer_simulator", orjson.dumps({"shots": 11}), 1, _no_events)
    second, _ = run_program(ref, "aer_simulator", orjson.dumps({"shots": 22}), 1, _no_events)
    assert encoding.loads(first) == {"before": 1024, "after": 11}
    assert encoding.loads(second) == {"before": 1024, "after": 22}
    # ... and the built-ins' shared backend never saw either.
    assert program_backend("aer_simulator", 1, shared=True).options.shots == 1024
    sampled = run_program(
        SAMPLER,
        "aer_simulator",
        encoding.dumps({"pubs": [[bell(), None, 64]], "options": {"seed_simulator": 1}}),
        1,
        _no_events,
    )[0]
    counts = encoding.loads(sampled)[0].data.c.get_counts()
    assert sum(counts.values()) == 64
