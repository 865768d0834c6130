"""Program jobs (docs/runtime.md) against a real service: the registry, interim results and
logs as they happen, failures, the built-in circuit-runner, sampler and estimator, input
checks, usage estimation and metrics, cancel, and the dask executor."""

from __future__ import annotations

import sqlite3
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Parameter
from qiskit.primitives import PrimitiveResult
from qiskit.quantum_info import SparsePauliOp, Statevector
from qiskit.result import Result

from qdispatch import encoding
from qdispatch.server import store as store_module
from qdispatch.server.programs import InvalidInputs, ProgramRef, Registry, load_module
from qdispatch.server.programs.worker import run_program
from qdispatch.server.store import Store
from qobjs import bell_qobj, experiment, qobj
from support import ServiceProcess, wait_final, wait_status
from test_service_stream import collect_until_results, next_message, open_stream, subscribe

# Programs the operator registers with --programs-dir: each DIR/<id>.py is program <id>.
PROGRAMS = {
    "chatty": '''
        """Publishes interim results and prints lines."""
        import sys

        VERSION = "2.5"

        def estimate(inputs):
            count = inputs.get("count", 100)
            if not isinstance(count, int) or count < 0:
                raise ValueError(f"count must be a non-negative integer, got {count!r}")
            return count, 0

        def main(backend, publisher, count=100, lines=3):
            print(f"backend {backend.name}")
            for i in range(count):
                publisher.publish({"step": i, "value": complex(i, -i)})
            for i in range(lines):
                print(f"line {i}")
            print("to stderr", file=sys.stderr)
            print("no newline at the end", end="")
            return {"published": count}
    ''',
    "gate": '''
        """Publishes, then waits for a file to appear."""
        import time
        from pathlib import Path

        def main(backend, publisher, flag):
            publisher.publish("waiting")
            deadline = time.monotonic() + 60
            while not Path(flag).exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("nobody opened the gate")
                time.sleep(0.02)
            return "released"
    ''',
    "broken": """
        def main(backend, publisher):
            print("about to fail")
            raise ValueError("bad things happened")
    """,
    "opaque": """
        def main(backend, publisher):
            return object()
    """,
}


def write_programs(directory: Path) -> Path:
    """The test programs as files of a programs directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for program_id, source in PROGRAMS.items():
        (directory / f"{program_id}.py").write_text(textwrap.dedent(source))
    return directory


@pytest.fixture(scope="module")
def programs_service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("programs")
    directory = write_programs(root / "programs")
    svc = ServiceProcess(root, "--workers", "2", "--programs-dir", str(directory)).start()
    yield svc
    svc.stop()


def post_program(
    client: httpx.Client, program_id: str, inputs: Any, **fields: Any
) -> httpx.Response:
    """``POST /jobs`` of a program job with ``inputs`` encoded as the runtime encoding."""
    body = {"program_id": program_id, "params": orjson.Fragment(encoding.dumps(inputs))}
    body.setdefault("backend", "aer_simulator")
    body.update(fields)
    return client.post("/jobs", content=orjson.dumps(body))


def run_job(client: httpx.Client, program_id: str, inputs: Any, **fields: Any) -> Any:
    """Submit a program job, wait for it, and return its decoded result."""
    answer = post_program(client, program_id, inputs, **fields)
    assert answer.status_code == 201, answer.text
    job = wait_final(client, answer.json()["id"])
    assert job["status"] == "DONE", (job, client.get(f"/jobs/{job['id']}/logs").text)
    return encoding.loads(client.get(f"/jobs/{job['id']}/results").content)


def bell(measure: bool = True) -> QuantumCircuit:
    qc = QuantumCircuit(2, 2 if measure else 0)
    qc.h(0)
    qc.cx(0, 1)
    if measure:
        qc.measure([0, 1], [0, 1])
    return qc


def within(value: float, expected: float, std: float, sigmas: float = 5.0) -> bool:
    # An ideal Bell state gives <ZZ> = 1 on every shot, and so a standard error of 0.
    return abs(value - expected) <= sigmas * std + 1e-9


# -- the registry ------------------------------------------------------------------------


def test_programs_are_listed_with_their_source_and_version(
    programs_service: ServiceProcess,
) -> None:
    listed = programs_service.client().get("/programs").json()["programs"]
    by_id = {p["id"]: p for p in listed}
    assert [p["id"] for p in listed] == sorted(by_id)
    for builtin in ("circuit-runner", "sampler", "estimator"):
        assert by_id[builtin]["source"] == "builtin"
        assert by_id[builtin]["version"] == "1"
        assert by_id[builtin]["description"]
    assert by_id["chatty"]["version"] == "2.5"
    assert by_id["chatty"]["description"] == "Publishes interim results and prints lines."
    assert by_id["chatty"]["source"].endswith("chatty.py")
    assert Path(by_id["chatty"]["source"]).is_absolute()
    assert by_id["broken"]["version"] == "1"


def test_registry_entry_points_and_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An installed distribution, as pip leaves one: its entry points name program modules.
    site = tmp_path / "site"
    info = site / "extra_programs-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-programs\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[qdispatch.programs]\n"
        "hello = extra_hello\n"
        "sampler = extra_hello\n"  # may not shadow the built-in
        "missing = no_such_module_here\n"  # a broken entry point is skipped
    )
    (site / "extra_hello.py").write_text(
        'VERSION = "3"\nDESCRIPTION = "Says hello."\n'
        "def main(backend, publisher, name):\n    return f'hello {name}'\n"
    )
    directory = write_programs(tmp_path / "programs")
    (directory / "hello.py").write_text("def main(backend, publisher):\n    return 1\n")
    (directory / "_helpers.py").write_text("raise RuntimeError('not a program')\n")
    monkeypatch.syspath_prepend(str(site))

    registry = Registry.discover(directory)
    views = {p.id: p.view() for p in registry}
    assert views["hello"] == {
        "id": "hello",
        "version": "3",
        "description": "Says hello.",
        "source": "entry-point",
    }
    assert views["sampler"]["source"] == "builtin"
    assert "missing" not in views
    assert "_helpers" not in views
    assert {"chatty", "gate", "broken", "opaque"} <= set(views)
    assert "id is taken" in caplog.text
    # What a worker does with the reference the task carries.
    ref = registry.ref("hello")
    assert ref is not None
    assert load_module(ref).main(None, None, name="x") == "hello x"
    hello = registry.get("hello")
    assert hello is not None
    assert hello.estimate({"name": "x"}) == (1, 0)
    with pytest.raises(
        InvalidInputs, match="does not take these inputs: missing a required argument: 'name'"
    ):
        hello.estimate({"nom": "x"})


def test_a_programs_dir_file_that_does_not_load_stops_the_service(
    service_factory: Any, tmp_path: Path
) -> None:
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "syntax.py").write_text("def main(backend, publisher:\n")
    with pytest.raises(RuntimeError, match=r"syntax\.py does not load"):
        service_factory("--programs-dir", str(directory))
    (directory / "syntax.py").write_text("def not_main():\n    pass\n")
    with pytest.raises(RuntimeError, match=r"has no main\(backend, publisher"):
        service_factory("--programs-dir", str(directory))


def test_output_is_captured_per_thread_line_by_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A dask worker runs programs in threads of one process: each gets its own output.
    directory = write_programs(tmp_path / "programs")
    ref = ProgramRef("chatty", str(directory / "chatty.py"), str(directory / "chatty.py"))
    events: dict[int, list[tuple[str, Any]]] = {2: [], 3: []}

    def emit_for(lines: int) -> Any:
        def emit(kind: str, data: Any) -> None:
            # What a transport that warns while it sends would do: no deadlock, no loop.
            print(f"sending {kind}", file=sys.stderr)
            events[lines].append((kind, data))

        return emit

    def run(lines: int) -> tuple[bytes, dict[str, float]]:
        inputs = encoding.dumps({"count": 2, "lines": lines})
        return run_program(ref, "aer_simulator", inputs, 1, emit_for(lines))

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(run, [2, 3]))
    print("the test's own line")
    for lines, (result, timings) in zip([2, 3], outcomes, strict=True):
        assert encoding.loads(result) == {"published": 2}
        assert set(timings) == {"decode_inputs", "execute", "encode_result"}
        logs = [data for kind, data in events[lines] if kind == "log"]
        assert logs == [
            "backend aer_simulator\n",
            *(f"line {i}\n" for i in range(lines)),
            "to stderr\n",
            "no newline at the end",
        ]
        assert [kind for kind, _ in events[lines]].count("interim") == 2
    captured = capsys.readouterr()
    assert captured.out == "the test's own line\n"
    assert captured.err.count("sending log") == 5 + 6  # what the emits printed, only
    assert captured.err.count("sending interim") == 4
    assert "to stderr" not in captured.err  # the programs' own output went to their logs
    assert type(sys.stdout).__name__ != "_ThreadRoutedStream"  # put back when done


# -- interim results and logs -------------------------------------------------------------


def test_interim_results_and_logs_stream_in_order(programs_service: ServiceProcess) -> None:
    client = programs_service.client()
    with open_stream(programs_service) as ws:
        answer = post_program(client, "chatty", {"count": 100, "lines": 3})
        assert answer.status_code == 201, answer.text
        job = answer.json()
        assert job["kind"] == "program"
        assert job["program_id"] == "chatty"
        assert (job["image"], job["program_version"]) == ("", "2.5")
        subscribe(ws, job_ids=[job["id"]])
        events = collect_until_results(ws, {job["id"]})
    assert wait_final(client, job["id"])["status"] == "DONE"

    # Every event once, in order; the 100 interim results back to back, as published.
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    interim = [e for e in events if e["type"] == "interim"]
    assert [encoding.loads(orjson.dumps(e["data"])) for e in interim] == [
        {"step": i, "value": complex(i, -i)} for i in range(100)
    ]
    seqs = [e["seq"] for e in interim]
    assert seqs == list(range(seqs[0], seqs[0] + 100))
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["QUEUED", "RUNNING", "DONE"]
    assert events[-1]["type"] == "result"
    assert events[-1]["data"] == {"published": 100}
    last_status = max(e["seq"] for e in events if e["type"] == "status")
    assert all(e["seq"] < last_status for e in events if e["type"] in ("interim", "log"))

    stored = client.get(f"/jobs/{job['id']}/interim_results").json()
    assert stored == [e["data"] for e in interim]
    logs = client.get(f"/jobs/{job['id']}/logs")
    assert logs.headers["content-type"].startswith("text/plain")
    assert logs.text.splitlines() == [
        "backend aer_simulator",
        "line 0",
        "line 1",
        "line 2",
        "to stderr",
        "no newline at the end",
    ]
    log_events = [e["data"]["text"] for e in events if e["type"] == "log"]
    assert log_events[1] == "line 0\n"  # one event a line


def test_interim_results_arrive_while_the_program_runs(
    programs_service: ServiceProcess, tmp_path: Path
) -> None:
    client = programs_service.client()
    flag = tmp_path / "open"
    with open_stream(programs_service) as ws:
        job = post_program(client, "gate", {"flag": str(flag)}).json()
        subscribe(ws, job_ids=[job["id"]])
        while (event := next_message(ws))["type"] != "interim":
            pass
        # The program is still waiting for the flag: it published before it finished.
        assert client.get(f"/jobs/{job['id']}").json()["status"] == "RUNNING"
        assert event["data"] == "waiting"
        assert client.get(f"/jobs/{job['id']}/interim_results").json() == ["waiting"]
        flag.touch()
        rest = collect_until_results(ws, {job["id"]})
    assert rest[-1]["data"] == "released"
    assert wait_final(client, job["id"])["status"] == "DONE"


def test_a_raising_program_fails_its_job_with_the_traceback_in_the_logs(
    programs_service: ServiceProcess,
) -> None:
    client = programs_service.client()
    job = post_program(client, "broken", {}).json()
    failed = wait_final(client, job["id"])
    assert failed["status"] == "ERROR"
    assert failed["error"] == {
        "code": "program_failed",
        "message": "ValueError: bad things happened",
    }
    logs = client.get(f"/jobs/{job['id']}/logs").text
    assert logs.startswith("about to fail\nTraceback (most recent call last):\n")
    assert 'raise ValueError("bad things happened")' in logs
    assert logs.rstrip().endswith("ValueError: bad things happened")
    assert "worker.py" not in logs  # the traceback starts at the program's main
    answer = client.get(f"/jobs/{job['id']}/results")
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "job_has_no_result"

    opaque = wait_final(client, post_program(client, "opaque", {}).json()["id"])
    assert opaque["error"]["code"] == "program_failed"
    assert (
        opaque["error"]["message"]
        == "TypeError: Object of type object is not runtime-JSON encodable"
    )
    assert "cannot be encoded" in client.get(f"/jobs/{opaque['id']}/logs").text


# -- built-in programs ---------------------------------------------------------------------


def test_circuit_runner_bell_counts(programs_service: ServiceProcess) -> None:
    client = programs_service.client()
    inputs = {"circuits": [bell()], "shots": 500, "seed_simulator": 3}
    result = Result.from_dict(run_job(client, "circuit-runner", inputs))
    counts = result.get_counts(0)
    assert set(counts) == {"00", "11"}
    assert sum(counts.values()) == 500
    assert min(counts.values()) > 150
    # A device: transpiled for its basis and coupling, and noisy.
    device = Result.from_dict(
        run_job(client, "circuit-runner", {**inputs, "circuits": bell()}, backend="fake_generic_5q")
    ).get_counts(0)
    assert device.get("00", 0) + device.get("11", 0) > 400
    assert sum(device.values()) == 500


def test_sampler_bell_from_qpy_and_from_the_qobj_fast_path(
    programs_service: ServiceProcess,
) -> None:
    client = programs_service.client()
    inputs = {
        "pubs": [[bell(), None, 800], [0, None, None]],
        "circuits": bell_qobj(),
        "shots": 600,
        "options": {"seed_simulator": 11},
        "version": 2,
    }
    result = run_job(client, "sampler", inputs)
    assert isinstance(result, PrimitiveResult)
    qpy_pub, qobj_pub = result
    for pub, shots in ((qpy_pub, 800), (qobj_pub, 600)):
        assert list(pub.data) == ["c"]  # one BitArray, named after the register
        counts = pub.data.c.get_counts()
        assert set(counts) == {"00", "11"}
        assert sum(counts.values()) == shots
        assert abs(counts["00"] / shots - 0.5) < 0.1
        assert pub.metadata["shots"] == shots
    assert qobj_pub.metadata["circuit_metadata"] == {"test": "bell"}

    # The same on a noisy device: the circuit is not ISA for it and is transpiled.
    noisy = run_job(client, "sampler", inputs, backend="fake_generic_5q")
    counts = noisy[0].data.c.get_counts()
    assert counts.get("00", 0) + counts.get("11", 0) > 700


def test_sampler_lowers_gates_aer_lacks_on_the_ideal_simulator(
    programs_service: ServiceProcess,
) -> None:
    circuit = QuantumCircuit(3, 3)
    circuit.x(0)
    circuit.ch(0, 1)  # Aer has no ch: decomposed, the circuit otherwise as sent
    circuit.iswap(0, 2)  # |1> on qubit 0 moves to qubit 2
    circuit.measure(range(3), range(3))
    (pub,) = run_job(programs_service.client(), "sampler", {"pubs": [[circuit, None, 400]]})
    counts = pub.data.c.get_counts()
    assert set(counts) == {"100", "110"}
    assert min(counts.values()) > 100


def test_sampler_registers_and_parameter_value_shapes(programs_service: ServiceProcess) -> None:
    qreg = QuantumRegister(2, "q")
    alpha, beta = ClassicalRegister(1, "alpha"), ClassicalRegister(1, "beta")
    circuit = QuantumCircuit(qreg, alpha, beta)
    theta = Parameter("theta")
    circuit.ry(theta, 0)
    circuit.cx(0, 1)
    circuit.measure(0, alpha[0])
    circuit.measure(1, beta[0])
    # theta = 0 always gives 0s, theta = pi always 1s; the shape (2, 3) is kept.
    values = np.array([[0.0, np.pi, 0.0], [np.pi, 0.0, np.pi]]).reshape(2, 3, 1)
    inputs = {"pubs": [[circuit, values, 50]], "options": {"seed_simulator": 5}}
    (pub,) = run_job(programs_service.client(), "sampler", inputs)
    assert list(pub.data) == ["alpha", "beta"]
    assert pub.data.shape == (2, 3)
    assert pub.data.alpha.shape == (2, 3)
    assert pub.data.alpha.num_shots == 50
    ones = pub.data.alpha.bitcount()  # per shot: 1 when alpha measured 1
    expected = np.array([[0, 1, 0], [1, 0, 1]])
    assert (ones.sum(axis=-1) == expected * 50).all()
    assert (pub.data.beta.bitcount().sum(axis=-1) == expected * 50).all()


def test_estimator_bell_and_a_parametrized_circuit(programs_service: ServiceProcess) -> None:
    client = programs_service.client()
    x = Parameter("x")
    ry = QuantumCircuit(1)
    ry.ry(x, 0)
    angles = np.array([0.2, 1.0, 2.5])
    inputs = {
        "pubs": [
            [
                bell(measure=False),
                ["ZZ", "XX", SparsePauliOp.from_list([("ZZ", 0.5), ("XX", 0.5)])],
            ],
            [ry, [["Z"], ["X"]], angles.reshape(3, 1), 0.02],
        ],
        "options": {"seed_simulator": 7},
    }
    bell_pub, ry_pub = run_job(client, "estimator", inputs)
    evs, stds = bell_pub.data.evs, bell_pub.data.stds
    assert evs.shape == (3,)
    for value, std in zip(evs, stds, strict=True):
        assert within(value, 1.0, std)
    assert bell_pub.metadata["shots"] == 4096  # ceil(1 / 0.015625**2), the default

    assert ry_pub.data.evs.shape == (2, 3)  # observables (2, 1) broadcast with values (3,)
    for row, pauli in enumerate(("Z", "X")):
        for col, angle in enumerate(angles):
            state = Statevector.from_label("0").evolve(ry.assign_parameters([angle]))
            exact = state.expectation_value(SparsePauliOp(pauli)).real
            std = ry_pub.data.stds[row, col]
            assert within(ry_pub.data.evs[row, col], exact, std)
            # Standard errors from 2,500 shots: at most the precision asked for.
            assert 0 < std <= 0.02 * 1.05
    assert ry_pub.metadata["shots"] == 2500

    noisy = run_job(
        client, "estimator", {"pubs": [[bell(measure=False), ["ZZ"]]]}, backend="fake_generic_5q"
    )
    assert 0.8 < noisy[0].data.evs[0] < 1.0  # transpiled, observable mapped, noisy


# -- submission checks ---------------------------------------------------------------------


def _parametrized() -> QuantumCircuit:
    qc = QuantumCircuit(1, 1)
    qc.ry(Parameter("a"), 0)
    qc.measure(0, 0)
    return qc


@pytest.mark.parametrize(
    ("program_id", "inputs", "message"),
    [
        (
            "sampler",
            {"pubs": [[bell()], [bell()], [bell()], [bell(), None, 0]]},
            "pubs[3]: shots must be a positive integer, got 0",
        ),
        (
            "sampler",
            {"pubs": [[_parametrized()]]},
            "pubs[0]: The number of values (0) does not match the number of parameters (1)",
        ),
        ("sampler", {"pubs": [[2]], "circuits": bell_qobj()}, "pubs[0]: circuit index 2"),
        (
            "sampler",
            {
                "pubs": [[0]],
                "circuits": qobj([experiment("x", 1, [{"name": "warp", "qubits": [0]}])]),
            },
            "warp",
        ),
        ("sampler", {"pubs": [[0]], "circuits": [1, 2]}, "circuits: "),
        ("sampler", {"pubs": []}, "pubs must be a non-empty list"),
        ("sampler", {"pubs": [[bell()]], "shots": -1}, "shots must be a positive integer"),
        ("sampler", {"pubs": [[bell()]], "options": {"fast": True}}, "options: unknown"),
        ("sampler", {"pubs": [[bell()]], "version": 1}, "version must be 2"),
        ("sampler", {"pubs": [["circuit"]]}, "pubs[0]: circuit must be a QuantumCircuit"),
        (
            "estimator",
            {"pubs": [[bell(measure=False), ["ZZ"], None, -0.1]]},
            "pubs[0]: precision must be a positive number",
        ),
        ("estimator", {"pubs": [[bell(measure=False), ["ZZZ"]]]}, "pubs[0]:"),
        ("circuit-runner", {"circuits": [bell()], "shots": 0}, "shots must be a positive"),
        ("circuit-runner", {"shots": 10}, "missing a required argument: 'circuits'"),
        ("circuit-runner", {"circuits": bell(), "speed": 3}, "unexpected keyword argument 'speed'"),
        ("chatty", {"count": -5}, "count must be a non-negative integer, got -5"),
        ("chatty", [1, 2], "params must be an object"),
    ],
)
def test_invalid_params_name_the_input(
    programs_service: ServiceProcess, program_id: str, inputs: Any, message: str
) -> None:
    answer = post_program(programs_service.client(), program_id, inputs)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_params"
    assert message in error["message"]


def test_unknown_program_image_and_undecodable_params(programs_service: ServiceProcess) -> None:
    client = programs_service.client()
    answer = post_program(client, "no-such-program", {})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "unknown_program"
    assert "unknown program 'no-such-program'" in answer.json()["error"]["message"]
    assert "sampler" in answer.json()["error"]["message"]  # the ones there are

    answer = post_program(client, "chatty", {"count": 1}, image="chatty:1")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "unknown_image"
    assert "'chatty:2.5'" in error["message"]
    answer = post_program(client, "chatty", {"count": 1}, image="chatty:2.5")
    assert answer.status_code == 201, answer.text
    assert answer.json()["image"] == "chatty:2.5"
    assert wait_final(client, answer.json()["id"])["status"] == "DONE"

    garbled = {
        "program_id": "sampler",
        "params": {"pubs": {"__type__": "QuantumCircuit", "__value__": "@@"}},
    }
    answer = client.post("/jobs", content=orjson.dumps(garbled))
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_params"
    assert "params do not decode" in answer.json()["error"]["message"]

    both = {"program_id": "sampler", "qobj": bell_qobj(), "backend": "aer_simulator"}
    answer = client.post("/jobs", content=orjson.dumps(both))
    assert answer.status_code == 400
    assert "not both" in answer.json()["error"]["message"]


def test_usage_estimation_inputs_and_metrics(programs_service: ServiceProcess) -> None:
    client = programs_service.client()
    inputs = {"pubs": [[bell(), None, 100], [_parametrized(), [[0.1], [0.2], [0.3]]]]}
    answer = post_program(client, "sampler", inputs, backend=None)  # the least busy one
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert job["backend"] in {b["name"] for b in client.get("/backends").json()["backends"]}
    assert job["n_experiments"] == 4  # 1 + 3 executions
    assert job["shots"] == 1024
    assert job["usage_estimation"]["quantum_seconds"] > 0
    assert job["program_version"] == "1"

    stored = client.get(f"/jobs/{job['id']}/inputs")
    assert stored.status_code == 200
    assert stored.json() == orjson.loads(encoding.dumps(inputs))

    done = wait_final(client, job["id"])
    assert done["status"] == "DONE"
    assert done["usage_estimation"] == job["usage_estimation"]
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    assert set(metrics["timestamps"]) == {"created", "queued", "running", "finished"}
    assert metrics["timestamps"]["finished"] == done["time_per_step"]["COMPLETED"]
    assert set(metrics["timings"]) == {"decode_inputs", "execute", "encode_result"}
    assert all(seconds > 0 for seconds in metrics["timings"].values())
    assert 0 < metrics["usage"]["quantum_seconds"] <= metrics["usage"]["seconds"]
    assert metrics["usage_estimation"] == job["usage_estimation"]
    assert (metrics["n_experiments"], metrics["shots"], metrics["attempts"]) == (4, 1024, 1)

    listed = client.get("/jobs", params={"program_id": "sampler", "kind": "program"}).json()
    assert job["id"] in {j["id"] for j in listed["jobs"]}


def test_cancel_a_running_program_job(programs_service: ServiceProcess, tmp_path: Path) -> None:
    client = programs_service.client()
    job = post_program(client, "gate", {"flag": str(tmp_path / "never")}).json()
    deadline = time.monotonic() + 60
    while not client.get(f"/jobs/{job['id']}/interim_results").json():
        assert time.monotonic() < deadline, "the program never started"
        time.sleep(0.05)
    cancelled = client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"
    # Its worker was killed and replaced: the next program job runs.
    assert run_job(client, "chatty", {"count": 2, "lines": 0}) == {"published": 2}
    final = client.get(f"/jobs/{job['id']}").json()
    assert final["status"] == "CANCELLED"
    assert client.get(f"/jobs/{job['id']}/interim_results").json() == ["waiting"]


# -- the store ------------------------------------------------------------------------------


def test_a_store_of_an_earlier_version_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(store_module._SCHEMA)  # the tables as the first release made them
    old.execute(
        "INSERT INTO jobs (id, owner, backend, kind, tags, status, time_per_step, created, "
        "share_level, n_experiments, shots, n_instructions) "
        "VALUES ('old', 'me', 'aer_simulator', 'circuit', '[]', 'DONE', '{}', 'then', 'none', "
        "1, 1, 1)"
    )
    old.commit()
    old.close()
    columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(jobs)")}
    assert "usage_estimation" not in columns

    store = Store(path)
    try:
        job = store.job("old")
        assert job is not None
        assert (job.image, job.program_version, job.usage_estimation, job.timings) == (
            None,
            None,
            None,
            None,
        )
    finally:
        store.close()
    Store(path).close()  # opening it again changes nothing


# -- dask ------------------------------------------------------------------------------------


def test_dask_executor_streams_a_programs_interim_results(
    dask_scheduler: str, service_factory: Any, tmp_path: Path
) -> None:
    # dask_scheduler first: torn down last, after the service that uses it.
    directory = write_programs(tmp_path / "programs")
    svc = service_factory(
        "--executor", "dask", "--scheduler", dask_scheduler, "--programs-dir", str(directory)
    )
    client = svc.client()
    with open_stream(svc) as ws:
        job = post_program(client, "gate", {"flag": str(tmp_path / "open")}).json()
        subscribe(ws, job_ids=[job["id"]])
        while (event := next_message(ws))["type"] != "interim":
            pass
        assert event["data"] == "waiting"  # from the dask worker, while the job runs
        assert client.get(f"/jobs/{job['id']}").json()["status"] == "RUNNING"
        (tmp_path / "open").touch()
        collect_until_results(ws, {job["id"]})

    chatty = post_program(client, "chatty", {"count": 30, "lines": 2}).json()
    assert wait_final(client, chatty["id"])["status"] == "DONE"
    interim = client.get(f"/jobs/{chatty['id']}/interim_results").json()
    assert [encoding.loads(orjson.dumps(i))["step"] for i in interim] == list(range(30))
    assert client.get(f"/jobs/{chatty['id']}/logs").text.splitlines()[1:3] == ["line 0", "line 1"]

    broken = post_program(client, "broken", {}).json()
    failed = wait_final(client, broken["id"])
    assert failed["error"]["code"] == "program_failed"
    assert "Traceback" in client.get(f"/jobs/{broken['id']}/logs").text

    gate = post_program(client, "gate", {"flag": str(tmp_path / "never")}).json()
    wait_status(client, gate["id"], "RUNNING")
    assert client.post(f"/jobs/{gate['id']}/cancel").json()["status"] == "CANCELLED"
    (tmp_path / "never").touch()  # a dask thread cannot be killed: let the program end
    assert client.get(f"/jobs/{gate['id']}").json()["status"] == "CANCELLED"
