"""RuntimeJob against a real service: every documented member, streaming through dropped
connections, and the documented exceptions."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from qiskit import QuantumCircuit
from qiskit.providers import JobStatus
from qiskit.result import Result

import qdispatch
from qdispatch import (
    IBMInputValueError,
    IBMRuntimeError,
    ResultDecoder,
    RuntimeInvalidStateError,
    RuntimeJob,
    RuntimeJobFailureError,
    RuntimeJobMaxTimeoutError,
    RuntimeJobTimeoutError,
    RuntimeProgramNotFound,
)
from support import CuttableProxy, ServiceProcess

PROGRAMS = {
    "stream": '''
"""Publishes `count` interim results, `delay` seconds apart."""
import time

VERSION = "2.1"
DESCRIPTION = "publishes numbered interim results"


def estimate(inputs):
    return 1, 1


def main(backend, publisher, count=3, delay=0.0):
    print(f"streaming {count} results on {backend.name}")
    for i in range(count):
        publisher.publish({"i": i})
        time.sleep(delay)
    print("all published")
    return {"count": count, "backend": backend.name}
''',
    "fails": """
def main(backend, publisher, reason="no reason"):
    print("about to fail")
    raise ValueError(f"failed on purpose: {reason}")
""",
}


@pytest.fixture(scope="module")
def programs_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("runtime")
    programs = root / "programs"
    programs.mkdir()
    for name, source in PROGRAMS.items():
        (programs / f"{name}.py").write_text(source)
    svc = ServiceProcess(root, "--workers", "2", "--programs-dir", str(programs)).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def service(programs_service: ServiceProcess) -> Iterator[Any]:
    with qdispatch.connect(programs_service.url, token=programs_service.token) as handle:
        yield handle


def _collector() -> tuple[list[tuple[str, Any]], Any]:
    got: list[tuple[str, Any]] = []

    def callback(job_id: str, result: Any) -> None:
        got.append((job_id, result))

    return got, callback


# The reference's members of RuntimeJob and their parameters (../shared/seeds/RuntimeJob.md).
REFERENCE_METHODS = {
    "backend": ["timeout"],
    "cancel": [],
    "cancel_result_streaming": [],
    "cancelled": [],
    "done": [],
    "error_message": [],
    "in_final_state": [],
    "interim_results": ["decoder"],
    "job_id": [],
    "logs": [],
    "metrics": [],
    "result": ["timeout", "decoder"],
    "running": [],
    "status": [],
    "stream_results": ["callback", "decoder"],
    "submit": [],
    "update_tags": ["new_tags"],
    "wait_for_final_state": ["timeout"],
}
REFERENCE_ATTRIBUTES = [
    "creation_date",
    "image",
    "inputs",
    "program_id",
    "session_id",
    "tags",
    "usage_estimation",
]


@pytest.mark.parametrize(("name", "parameters"), sorted(REFERENCE_METHODS.items()))
def test_methods_take_the_documented_parameters(name: str, parameters: list[str]) -> None:
    signature = inspect.signature(getattr(RuntimeJob, name))
    assert list(signature.parameters)[1:] == parameters


def test_constructor_and_attributes_are_the_documented_ones() -> None:
    names = list(inspect.signature(RuntimeJob.__init__).parameters)[1:14]
    assert names == [
        "backend",
        "api_client",
        "client_params",
        "job_id",
        "program_id",
        "service",
        "params",
        "creation_date",
        "user_callback",
        "result_decoder",
        "image",
        "session_id",
        "tags",
    ]
    for attribute in REFERENCE_ATTRIBUTES:
        assert isinstance(getattr(RuntimeJob, attribute), property), attribute
    assert RuntimeJob.version == 1


def test_run_returns_a_runtime_job_with_every_attribute(service: Any) -> None:
    job = service.run(
        "stream",
        {"count": 3},
        options={"backend": "aer_simulator"},
        job_tags=["alpha", "beta"],
        image="stream:2.1",
    )
    assert isinstance(job, RuntimeJob)
    assert RuntimeJob.version == 1
    assert job.program_id == "stream"
    assert job.inputs == {"count": 3}
    assert job.tags == ["alpha", "beta"]
    assert job.image == "stream:2.1"
    assert job.session_id is None
    assert isinstance(job.creation_date, datetime)
    assert job.creation_date.tzinfo is not None
    assert job.usage_estimation["quantum_seconds"] > 0
    assert job.result(timeout=60) == {"count": 3, "backend": "aer_simulator"}
    assert job.status() is JobStatus.DONE
    assert job.done()
    assert job.in_final_state()
    assert not job.running()
    assert not job.cancelled()
    assert job.error_message() is None
    assert job.backend().name == "aer_simulator"
    assert job.interim_results() == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert "streaming 3 results on aer_simulator" in job.logs()
    assert "all published" in job.logs()
    metrics = job.metrics()
    assert set(metrics["timestamps"]) >= {"created", "queued", "running", "finished"}
    assert metrics["timestamps"]["finished"] >= metrics["timestamps"]["running"]
    assert job.update_tags(["gamma"]) == ["gamma"]
    assert job.tags == ["gamma"]
    with pytest.raises(NotImplementedError):
        job.submit()

    again = service.job(job.job_id())
    assert isinstance(again, RuntimeJob)
    assert again.program_id == "stream"
    assert again.tags == ["gamma"]
    assert again.inputs == {"count": 3}  # read back from the service
    assert again.image == "stream:2.1"
    assert again.result() == {"count": 3, "backend": "aer_simulator"}
    found = service.jobs(program_id="stream", job_tags=["gamma"])
    assert [j.job_id() for j in found] == [job.job_id()]


def test_default_image_is_empty_and_a_wrong_image_is_refused(service: Any) -> None:
    job = service.run("stream", {"count": 0})
    assert job.image == ""
    job.wait_for_final_state(60)
    with pytest.raises(IBMInputValueError, match="image"):
        service.run("stream", {}, image="stream:9.9")


def test_unknown_program_and_bad_inputs_raise_typed_errors(service: Any) -> None:
    with pytest.raises(RuntimeProgramNotFound, match="no-such-program"):
        service.run("no-such-program", {})
    with pytest.raises(IBMInputValueError):
        service.run("stream", {"count": object()})
    with pytest.raises(IBMInputValueError, match="backend"):
        service.run("stream", {}, options={"backend": "no_such_backend"})


def test_callback_gets_every_interim_result_then_the_final_one(service: Any) -> None:
    got, callback = _collector()
    job = service.run("stream", {"count": 20}, callback=callback)
    assert job.result(timeout=60) == {"count": 20, "backend": job.backend().name}
    assert [r for _, r in got[:-1]] == [{"i": i} for i in range(20)]
    assert got[-1][1] == {"count": 20, "backend": job.backend().name}
    assert {job_id for job_id, _ in got} == {job.job_id()}


def test_stream_results_started_late_still_gets_everything_once(service: Any) -> None:
    job = service.run("stream", {"count": 30, "delay": 0.02})
    time.sleep(0.2)  # some results are published before streaming starts
    got, callback = _collector()
    job.stream_results(callback)
    with pytest.raises(RuntimeInvalidStateError, match="already streaming"):
        job.stream_results(callback)
    job.wait_for_final_state(60)
    assert [r for _, r in got[:-1]] == [{"i": i} for i in range(30)]
    with pytest.raises(RuntimeInvalidStateError, match="finished"):
        job.stream_results(callback)


def test_cancel_result_streaming_stops_the_callback(service: Any) -> None:
    got, callback = _collector()
    job = service.run("stream", {"count": 40, "delay": 0.05}, callback=callback)
    deadline = time.monotonic() + 60
    while len(got) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    job.cancel_result_streaming()
    seen = len(got)
    job.wait_for_final_state(60)
    assert len(got) <= seen + 1  # at most the one being delivered when cancelled
    assert len(job.interim_results()) == 40


class Doubled(ResultDecoder):
    """A decoder of its own: the default decoding, then every count doubled."""

    @classmethod
    def decode(cls, raw_result: str | bytes) -> Any:
        value = super().decode(raw_result)
        return {k: v * 2 if isinstance(v, int) else v for k, v in value.items()}


def test_result_decoder_is_used_for_results_and_interim_results(service: Any) -> None:
    got, callback = _collector()
    job = service.run("stream", {"count": 2}, callback=callback, result_decoder=Doubled)
    assert job.result(timeout=60)["count"] == 4
    assert job.result(decoder=ResultDecoder)["count"] == 2
    assert job.interim_results() == [{"i": 0}, {"i": 2}]
    assert [r for _, r in got] == [{"i": 0}, {"i": 2}, job.result()]


def test_failed_program(service: Any) -> None:
    job = service.run("fails", {"reason": "testing"})
    job.wait_for_final_state(60)
    assert job.status() is JobStatus.ERROR
    assert not job.done()
    message = job.error_message()
    assert message is not None
    assert "ValueError: failed on purpose: testing" in message
    with pytest.raises(RuntimeJobFailureError, match="failed on purpose"):
        job.result()
    with pytest.raises(RuntimeJobFailureError):
        job.interim_results()
    logs = job.logs()
    assert "about to fail" in logs
    assert "Traceback" in logs


def test_timeouts_and_cancel(service: Any) -> None:
    job = service.run("stream", {"count": 1000, "delay": 0.05})
    with pytest.raises(RuntimeJobTimeoutError):
        job.wait_for_final_state(timeout=0.2)
    with pytest.raises(RuntimeJobMaxTimeoutError):
        job.result(timeout=0.2)
    job.cancel()
    assert job.status() is JobStatus.CANCELLED
    assert job.cancelled()
    assert job.in_final_state()
    with pytest.raises(RuntimeInvalidStateError, match="cancelled"):
        job.result()
    with pytest.raises(RuntimeInvalidStateError):
        job.cancel()


def test_errors_talking_to_the_service_are_ibm_runtime_errors(service: Any) -> None:
    job = service.run("stream", {"count": 1})
    job.wait_for_final_state(60)
    # The job's calls go through the service's adapter: one the service refuses (a job
    # it does not know) is an IBMRuntimeError naming the job.
    gone = RuntimeJob(
        job.backend(), service, service.url, "no-such-job", job.program_id, info={"status": "DONE"}
    )
    with pytest.raises(IBMRuntimeError, match="no-such-job"):
        gone.metrics()
    with pytest.raises(IBMRuntimeError):
        gone.logs()


def test_streaming_survives_the_connection_cut_twice(programs_service: ServiceProcess) -> None:
    """100 interim results, the network cut twice while they stream: every one arrives,
    in order, once."""
    proxy = CuttableProxy(programs_service.url)
    got: list[Any] = []
    cut_at = {25, 60}

    def callback(job_id: str, result: Any) -> None:
        got.append(result)

    try:
        with qdispatch.connect(proxy.url, token=programs_service.token) as service:
            job = service.run("stream", {"count": 100, "delay": 0.03}, callback=callback)
            deadline = time.monotonic() + 120
            while cut_at:
                assert time.monotonic() < deadline, f"stream stalled at {len(got)}"
                if len(got) >= min(cut_at):
                    cut_at.discard(min(cut_at))
                    proxy.cut()
                time.sleep(0.005)
            final = job.result(timeout=120)
        assert proxy.cuts == 2
        assert got[:-1] == [{"i": i} for i in range(100)]
        assert got[-1] == final == {"count": 100, "backend": final["backend"]}
    finally:
        proxy.close()


def test_streaming_without_a_websocket_polls_events_by_seq(
    programs_service: ServiceProcess,
) -> None:
    """Behind a proxy that refuses WebSockets, a callback still gets every interim result
    once, in order, and the final one (polled over HTTP by seq)."""
    proxy = CuttableProxy(programs_service.url, refuse_websockets=True)
    got: list[Any] = []
    try:
        with qdispatch.connect(proxy.url, token=programs_service.token) as service:
            job = service.run(
                "stream", {"count": 30, "delay": 0.02}, callback=lambda _, r: got.append(r)
            )
            final = job.result(timeout=120)
            assert not service.client.stream_connected()
        assert proxy.refused > 0
        assert got[:-1] == [{"i": i} for i in range(30)]
        assert got[-1] == final
    finally:
        proxy.close()


def test_circuit_runner_returns_a_qiskit_result(service: Any) -> None:
    bell = QuantumCircuit(2, 2)
    bell.h(0)
    bell.cx(0, 1)
    bell.measure([0, 1], [0, 1])
    job = service.run(
        "circuit-runner",
        {"circuits": [bell], "shots": 400, "seed_simulator": 7},
        options={"backend": "aer_simulator"},
    )
    result = job.result(timeout=120)
    assert isinstance(result, Result)
    counts = result.get_counts(0)
    assert set(counts) == {"00", "11"}
    assert sum(counts.values()) == 400


def test_programs_are_listed(service: Any) -> None:
    listed = {p["id"]: p for p in service.programs()}
    assert {"circuit-runner", "sampler", "estimator", "stream", "fails"} <= set(listed)
    assert listed["stream"]["version"] == "2.1"


def test_a_job_submitted_from_another_client_is_found(programs_service: ServiceProcess) -> None:
    with qdispatch.connect(programs_service.url, token=programs_service.token) as one:
        job_id = one.run("stream", {"count": 2}).job_id()
    with qdispatch.connect(programs_service.url, token=programs_service.token) as two:
        job = two.job(job_id)
        assert isinstance(job, RuntimeJob)
        assert job.result(timeout=60)["count"] == 2
        assert job.interim_results() == [{"i": 0}, {"i": 1}]
