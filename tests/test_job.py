"""``qdispatch.connect()``, backends and ``IBMQJob`` against a real service."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import Parameter
from qiskit.providers import JobStatus
from qiskit.providers.exceptions import QiskitBackendNotFoundError
from qiskit_aer import AerSimulator

import qdispatch
from circuits import slow_circuit
from qdispatch import (
    IBMQBackendApiError,
    IBMQBackendValueError,
    IBMQJob,
    IBMQJobApiError,
    IBMQJobFailureError,
    IBMQJobInvalidStateError,
    IBMQJobTimeoutError,
    QueueInfo,
)
from support import ServiceProcess


def bell() -> QuantumCircuit:
    qc = QuantumCircuit(2, 2, name="bell")
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    return qc


def ghz(n: int) -> QuantumCircuit:
    qc = QuantumCircuit(n, n, name=f"ghz{n}")
    qc.h(0)
    for i in range(n - 1):
        qc.cx(i, i + 1)
    qc.measure(range(n), range(n))
    return qc


def slow() -> QuantumCircuit:
    return slow_circuit()


def test_counts_match_physics_and_aer_with_the_same_seed(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    circuits = [bell(), ghz(3), ghz(5)]
    job = backend.run(circuits, shots=500, seed_simulator=42)
    assert isinstance(job, IBMQJob)
    result = job.result()
    assert result.success
    assert set(result.get_counts(0)) == {"00", "11"}
    assert set(result.get_counts("ghz3")) == {"000", "111"}
    assert set(result.get_counts(circuits[2])) == {"00000", "11111"}
    direct = AerSimulator().run(circuits, shots=500, seed_simulator=42).result()
    assert [result.get_counts(i) for i in range(3)] == [direct.get_counts(i) for i in range(3)]
    assert job.status() is JobStatus.DONE
    assert job.done()
    assert job.in_final_state()
    assert not job.running()
    assert not job.cancelled()


def test_noisy_device_through_its_target(connected: Any) -> None:
    backend = connected.backend("fake_generic_5q")
    assert backend.num_qubits == 5
    assert backend.max_circuits == 300
    circuit = transpile(ghz(3), backend, seed_transpiler=1)
    counts = backend.run(circuit, shots=2000, seed_simulator=3).result().get_counts()
    assert counts["000"] + counts["111"] > 1600
    assert len(counts) > 2  # noise
    props = backend.properties()
    assert props.t1(0) > 0
    assert backend.target["cx"][(0, 1)].error > 0


def test_the_job_record(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    job = backend.run(
        [bell()],
        job_name="record",
        job_tags=["x", "y"],
        experiment_id="exp-7",
        header={"note": "mine"},
        shots=64,
        memory=True,
    )
    job.wait_for_final_state(timeout=60)
    assert job.name() == "record"
    assert job.tags() == ["x", "y"]
    assert job.experiment_id == "exp-7"
    assert job.client_version["qdispatch"] == qdispatch.__version__
    assert job.share_level() == "none"
    assert job.scheduling_mode() == "fairshare"
    assert job.backend() is backend
    created = job.creation_date()
    assert created.tzinfo is not None
    assert abs(datetime.now().astimezone() - created) < timedelta(minutes=5)
    steps = job.time_per_step()
    assert list(steps) == ["CREATED", "VALIDATED", "QUEUED", "RUNNING", "COMPLETED"]
    assert steps["QUEUED"] <= steps["RUNNING"] <= steps["COMPLETED"]
    assert job.backend_options()["shots"] == 64
    assert job.backend_options()["memory"] is True
    assert job.header()["note"] == "mine"
    qobj = job.qobj()
    assert isinstance(qobj, qdispatch.QasmQobj)
    (rebuilt,) = job.circuits()
    assert rebuilt.name == "bell"
    assert [i.operation.name for i in rebuilt.data] == [i.operation.name for i in bell().data]
    assert job.properties() is None  # an ideal simulator has no calibration
    assert job.error_message() is None
    assert job.queue_info() is None
    assert job.queue_position() is None
    assert len(job.result().get_memory(0)) == 64
    with pytest.raises(NotImplementedError, match=r"backend\.run\(\)"):
        job.submit()

    assert job.update_name("renamed") == "renamed"
    assert job.update_tags(additional_tags=["z"]) == ["x", "y", "z"]
    assert job.update_tags(removal_tags=["x"]) == ["y", "z"]
    assert job.update_tags(replacement_tags=["only"], additional_tags=["also"]) == ["only", "also"]
    assert job.update_tags(replacement_tags=[]) == []
    with pytest.raises(IBMQJobInvalidStateError, match="none of replacement_tags"):
        job.update_tags()
    again = connected.job(job.job_id())
    assert again.name() == "renamed"
    assert again.tags() == []
    assert again.result().get_counts() == job.result().get_counts()


def test_device_job_properties_are_those_it_ran_with(connected: Any) -> None:
    backend = connected.backend("fake_generic_5q")
    job = backend.run(transpile(bell(), backend), shots=100)
    props = job.properties()
    assert props == backend.properties()
    assert props.gate_error("cx", [0, 1]) > 0


def test_cancel_and_the_states_around_it(service: ServiceProcess, connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    job = backend.run(slow(), shots=6000)
    with pytest.raises(IBMQJobTimeoutError, match="Timeout while waiting for job"):
        job.result(timeout=0.2)
    with pytest.raises(IBMQJobTimeoutError):
        job.wait_for_final_state(timeout=0.2)
    assert job.cancel() is True
    assert job.cancelled()
    assert job.status() is JobStatus.CANCELLED
    with pytest.raises(IBMQJobInvalidStateError, match="Job was cancelled"):
        job.result()
    with pytest.raises(IBMQJobInvalidStateError, match="already CANCELLED"):
        job.cancel()


def test_queue_position_and_info(tmp_path: Path) -> None:
    proc = ServiceProcess(tmp_path, "--workers", "1").start()
    try:
        with qdispatch.connect(proc.url, token=proc.token) as connected:
            backend = connected.backend("aer_simulator")
            blocker = backend.run(slow(), shots=3000)
            waiting = [backend.run(bell()) for _ in range(2)]
            while blocker.status() is not JobStatus.RUNNING:
                pass
            info = waiting[1].queue_info()
            assert isinstance(info, QueueInfo)
            assert info.position == 2
            assert info.estimated_start_time <= info.estimated_complete_time
            assert "queue position: 2" in info.format()
            assert waiting[0].queue_position(refresh=True) == 1
            blocker.cancel()
            for job in waiting:
                job.wait_for_final_state(timeout=60)
                assert job.queue_position() is None
    finally:
        proc.stop()


def test_partial_results_of_a_failed_job(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    # A 20-qubit density matrix is more memory than Aer allows: that experiment fails.
    job = backend.run([bell(), ghz(20)], shots=100, method="density_matrix")
    job.wait_for_final_state(timeout=60)
    assert job.status() is JobStatus.ERROR
    assert "experiment 1" in job.error_message()
    with pytest.raises(IBMQJobFailureError, match="Job has failed"):
        job.result()
    partial = job.result(partial=True)
    assert not partial.success
    assert set(partial.get_counts(0)) <= {"00", "11"}
    assert not partial.results[1].success


def test_wait_with_callback(connected: Any) -> None:
    seen: list[tuple[str, JobStatus]] = []

    def callback(job_id: str, status: JobStatus, job: IBMQJob, queue_info: Any) -> None:
        seen.append((job_id, status))
        assert queue_info is None or isinstance(queue_info, QueueInfo)

    job = connected.backend("aer_simulator").run(slow(), shots=400)
    job.wait_for_final_state(timeout=120, wait=0.2, callback=callback)
    assert seen[-1] == (job.job_id(), JobStatus.DONE)
    assert all(job_id == job.job_id() for job_id, _ in seen)


def test_a_job_is_found_again_from_another_process(service: ServiceProcess, connected: Any) -> None:
    job = connected.backend("aer_simulator").run(bell(), shots=200, seed_simulator=5)
    counts = job.result().get_counts()
    code = (
        "import qdispatch, sys\n"
        f"s = qdispatch.connect({service.url!r}, token={service.token!r})\n"
        f"print(s.job({job.job_id()!r}).result().get_counts())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == str(counts)


def test_jobs_listing_filters(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    made = [backend.run(bell(), job_name=f"list-{i}", job_tags=["listing"]) for i in range(4)]
    for job in made:
        job.wait_for_final_state(timeout=60)
    found = connected.jobs(limit=None, job_tags=["listing"])
    assert [j.job_id() for j in found] == [j.job_id() for j in reversed(made)]
    assert [j.job_id() for j in connected.jobs(limit=2, job_tags=["listing"])] == [
        made[3].job_id(),
        made[2].job_id(),
    ]
    oldest = connected.jobs(limit=1, job_tags=["listing"], descending=False)
    assert oldest[0].job_id() == made[0].job_id()
    assert len(connected.jobs(job_name="list-[12]$", job_tags=["listing"])) == 2
    assert len(connected.jobs(status=JobStatus.DONE, job_tags=["listing"])) == 4
    assert connected.jobs(status="RUNNING", job_tags=["listing"]) == []
    since = made[2].creation_date()
    assert len(connected.jobs(start_datetime=since, job_tags=["listing"])) == 2
    assert len(backend.jobs(job_tags=["listing"])) == 4


def test_bad_input_raises_the_documented_errors(connected: Any) -> None:
    with pytest.raises(IBMQJobApiError, match="job 'no-such-job' not found") as missing:
        connected.job("no-such-job")
    assert missing.value.status == 404
    with pytest.raises(IBMQBackendApiError, match="unknown backend 'nowhere'") as unknown:
        connected.backend("nowhere")
    # What qiskit-ibm-runtime's service.backend(name) raises, too.
    assert isinstance(unknown.value, QiskitBackendNotFoundError)
    assert unknown.value.status == 404
    device = connected.backend("fake_generic_5q")
    wide = QuantumCircuit(6)
    wide.x(5)
    with pytest.raises(IBMQBackendApiError, match="uses qubit 5, but backend 'fake_generic_5q'"):
        device.run(wide)
    with pytest.raises(IBMQBackendApiError, match="gate 'h' is not supported"):
        device.run(bell())
    unbound = QuantumCircuit(1)
    unbound.rx(Parameter("theta"), 0)
    with pytest.raises(IBMQBackendValueError, match="theta"):
        connected.backend("aer_simulator").run(unbound)

    class Schedule:  # what qiskit < 2 users may still pass
        pass

    with pytest.raises(IBMQBackendValueError, match="Pulse schedules are not supported"):
        connected.backend("aer_simulator").run(Schedule())
    with pytest.raises(IBMQBackendApiError, match="shots=200000 is more than"):
        device.run(transpile(bell(), device), shots=200_000)


def test_connect_without_url_starts_and_reuses_a_local_service(tmp_path: Path) -> None:
    env = {**os.environ, "QDISPATCH_DATA_DIR": str(tmp_path)}
    env.pop("QDISPATCH_URL", None)
    code = (
        "import qdispatch\n"
        "from qiskit import QuantumCircuit\n"
        "qc = QuantumCircuit(1, 1); qc.x(0); qc.measure(0, 0)\n"
        "s = qdispatch.connect()\n"
        "job = s.backend('aer_simulator').run(qc, shots=10)\n"
        "print(s.url, job.job_id())\n"
    )
    first = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    url, job_id = first.stdout.split()
    # The script has exited; the detached service kept the job and is found again.
    find = (
        "import qdispatch\n"
        "s = qdispatch.connect()\n"
        f"print(s.url, s.job({job_id!r}).result().get_counts())\n"
    )
    second = subprocess.run(
        [sys.executable, "-c", find], env=env, check=True, capture_output=True, text=True
    )
    assert second.stdout.split(" ", 1) == [url, "{'1': 10}\n"]
    stopped = subprocess.run(
        [sys.executable, "-m", "qdispatch", "stop"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "stopped the local service" in stopped.stdout
    assert not (tmp_path / "server.json").exists()
