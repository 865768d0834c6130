"""Dynamic circuits: every construct AerSimulator runs, through backend.run, the job
manager and the sampler, with AerSimulator's results; and hostile QPY experiments
(docs/protocol.md, 3.6)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from qiskit import qpy, transpile
from qiskit.circuit import ClassicalRegister, Parameter, QuantumCircuit, QuantumRegister
from qiskit.circuit.classical import expr, types
from qiskit.circuit.library import UnitaryGate
from qiskit_aer import AerSimulator

from circuits import nested_body_declaring
from qdispatch import IBMQJobManager, Sampler
from qdispatch.codes import TIME_LIMIT_EXCEEDED
from qdispatch.constants import DONE, ERROR
from qdispatch.exceptions import IBMQBackendValueError, IBMQManagedResultDataNotAvailable
from qdispatch.qpyguard import guarded_load
from qobjs import bell_qobj
from support import ServiceProcess, submit, wait_final

# --- circuits -----------------------------------------------------------------------------


def if_else_expr() -> QuantumCircuit:
    """``if_test`` on an ``expr`` condition, with an ``else`` branch."""
    qc = QuantumCircuit(2, 2, name="if_else_expr")
    qc.h(0)
    qc.measure(0, 0)
    with qc.if_test(expr.logic_not(qc.clbits[0])) as else_:
        qc.x(1)
    with else_:
        qc.h(1)
    qc.measure(1, 1)
    return qc


def if_register_else() -> QuantumCircuit:
    """A register compared with a value (the bfunc form) but with an else and two gates."""
    qr, data, flag = (
        QuantumRegister(3, "q"),
        ClassicalRegister(2, "data"),
        ClassicalRegister(1, "f"),
    )
    qc = QuantumCircuit(qr, data, flag, name="if_register_else")
    qc.h([0, 1])
    qc.measure([0, 1], data)
    with qc.if_test((data, 3)) as else_:
        qc.x(2)
        qc.z(2)
    with else_:
        qc.h(2)
    qc.measure(2, flag[0])
    return qc


def while_loop() -> QuantumCircuit:
    """Repeat until success: ends with probability 1."""
    qc = QuantumCircuit(QuantumRegister(2, "q"), ClassicalRegister(1, "done"), name="while")
    qc.h(0)
    qc.measure(0, 0)
    with qc.while_loop((qc.clbits[0], 0)):
        qc.reset(0)
        qc.h(0)
        qc.measure(0, 0)
    qc.x(1)
    return qc


def for_loop() -> QuantumCircuit:
    qc = QuantumCircuit(1, 1, name="for")
    with qc.for_loop(range(3)) as i:
        qc.rx(0.4 * i + 0.1, 0)
    qc.measure(0, 0)
    return qc


def switch() -> QuantumCircuit:
    creg = ClassicalRegister(2, "sel")
    qc = QuantumCircuit(QuantumRegister(3, "q"), creg, ClassicalRegister(1, "out"), name="switch")
    qc.h([0, 1])
    qc.measure([0, 1], creg)
    with qc.switch(creg) as case:
        with case(0):
            qc.x(2)
        with case(1, 2):
            qc.h(2)
        with case(case.DEFAULT):
            qc.id(2)
    qc.measure(2, 2)
    return qc


def register_expr() -> QuantumCircuit:
    """A condition over registers and bits: ``(a & 1) == 1 and not b[0]``."""
    a, b = ClassicalRegister(2, "a"), ClassicalRegister(1, "b")
    qc = QuantumCircuit(QuantumRegister(3, "q"), a, b, name="register_expr")
    qc.h([0, 1, 2])
    qc.measure([0, 1], a)
    qc.measure(2, b[0])
    condition = expr.logic_and(expr.equal(expr.bit_and(a, 1), 1), expr.logic_not(b[0]))
    with qc.if_test(condition):
        qc.x(2)
    qc.measure(2, b[0])
    return qc


def with_var() -> QuantumCircuit:
    """A classical ``Var``, declared and stored to (qiskit-aer 0.18 runs stores; a
    condition reading a var aborts it, see test_a_condition_reading_a_var_is_refused)."""
    qc = QuantumCircuit(QuantumRegister(2, "q"), ClassicalRegister(2, "c"), name="var")
    counter = qc.add_var("counter", expr.lift(0, types.Uint(2)))
    qc.h(0)
    qc.measure(0, 0)
    qc.store(counter, 2)
    with qc.if_test(expr.lift(qc.clbits[0])):
        qc.store(counter, 1)
        qc.x(1)
    qc.measure(1, 1)
    return qc


def ghz_dynamic(n: int = 4) -> QuantumCircuit:
    """A GHZ state from two Bell pairs fused by a mid-circuit measurement and feed-forward
    on an ``expr`` condition (the shape of MQT Bench's ``ghz_dynamic``)."""
    qr, mid, out = QuantumRegister(n, "q"), ClassicalRegister(1, "mid"), ClassicalRegister(n, "c")
    qc = QuantumCircuit(qr, mid, out, name="ghz_dynamic")
    half = n // 2
    qc.h(0)
    for i in range(half - 1):
        qc.cx(i, i + 1)
    qc.h(half)
    for i in range(half, n - 1):
        qc.cx(i, i + 1)
    qc.cx(half - 1, half)
    qc.measure(half, mid[0])
    with qc.if_test(expr.equal(mid[0], True)):
        for i in range(half, n):
            qc.x(i)
    qc.cx(half - 1, half)
    qc.measure(qr, out)
    return qc


def single_gate_if() -> QuantumCircuit:
    """What the Qobj's bfunc expresses: stays instructions, no QPY."""
    qc = QuantumCircuit(2, 2, name="single_if")
    qc.h(0)
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)):
        qc.x(1)
    qc.measure(1, 1)
    return qc


def plain(i: int) -> QuantumCircuit:
    qc = QuantumCircuit(1, 1, name=f"plain-{i}")
    qc.rx(0.2 * i, 0)
    qc.measure(0, 0)
    return qc


CONSTRUCTS: list[Callable[[], QuantumCircuit]] = [
    if_else_expr,
    if_register_else,
    while_loop,
    for_loop,
    switch,
    register_expr,
    with_var,
    ghz_dynamic,
    single_gate_if,
]

_HEADER_FIELDS = ("name", "n_qubits", "memory_slots", "qreg_sizes", "creg_sizes", "metadata")


def _qobj_experiments(backend: Any, circuits: list[QuantumCircuit]) -> list[dict[str, Any]]:
    from qdispatch.assembler import circuits_to_qobj_json  # noqa: PLC0415 - test helper

    experiments: list[dict[str, Any]] = orjson.loads(circuits_to_qobj_json(circuits, backend))[
        "experiments"
    ]
    return experiments


# --- backend.run --------------------------------------------------------------------------


def test_every_construct_runs_as_on_aer(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    circuits = [make() for make in CONSTRUCTS]
    circuits[0].metadata = {"kind": "dynamic", "n": 1}
    experiments = _qobj_experiments(backend, circuits)
    kinds = ["qpy" in e for e in experiments]
    assert kinds == [True] * (len(CONSTRUCTS) - 1) + [False]  # bfunc stays instructions
    assert all(e["instructions"] == [] for e in experiments if "qpy" in e)

    options = {"shots": 400, "seed_simulator": 1234, "memory": True}
    job = backend.run(circuits, **options)
    ours = job.result(timeout=300)
    reference = AerSimulator().run(circuits, **options).result()
    assert ours.success
    for i, circuit in enumerate(circuits):
        assert ours.get_counts(i) == reference.get_counts(i), circuit.name
        assert ours.get_memory(i) == reference.get_memory(i), circuit.name
        header, expected = ours.results[i].header, reference.results[i].header
        for field in _HEADER_FIELDS:
            assert header.get(field) == expected.get(field), (circuit.name, field)
    # Named access and the shapes of the registers, as on Aer.
    assert set(ours.get_counts("ghz_dynamic")) == {"0000 0", "0000 1", "1111 0", "1111 1"}
    assert all(" " in key for key in ours.get_counts("switch"))
    assert ours.results[0].header["metadata"] == {"kind": "dynamic", "n": 1}
    # The job's circuits read back with their control flow.
    rebuilt = job.circuits()
    assert rebuilt[2].count_ops()["while_loop"] == 1
    assert rebuilt[6].num_vars == 1


def test_custom_and_composite_gates_run_as_on_aer(connected: Any) -> None:
    """A gate a Qobj cannot name (a custom gate, a custom gate holding another,
    a controlled unitary: what MQT Bench's adders and amplitude estimation are made of)
    is written as its definition. AerSimulator.run refuses them ("unknown instruction")
    until they are transpiled: the reference is the transpiled circuit on Aer."""
    inner = QuantumCircuit(2, name="Carry")
    inner.cx(0, 1)
    inner.h(0)
    outer = QuantumCircuit(3, name="Adder")
    outer.append(inner.to_gate(), [0, 1])
    outer.ccx(0, 1, 2)
    with_custom = QuantumCircuit(3, name="custom")
    with_custom.x(0)
    with_custom.append(outer.to_gate(), [0, 1, 2])
    with_custom.measure_all()
    controlled = QuantumCircuit(2, name="c-unitary")
    controlled.x(0)
    controlled.append(UnitaryGate([[0, 1], [1, 0]]).control(1), [0, 1])
    controlled.measure_all()
    circuits = [with_custom, controlled]
    experiments = _qobj_experiments(connected.backend("aer_simulator"), circuits)
    names = {i["name"] for e in experiments for i in e["instructions"]}
    assert not names & {"Carry", "Adder", "c-unitary"}, names
    options = {"shots": 2000, "seed_simulator": 99}
    ours = connected.backend("aer_simulator").run(circuits, **options).result(timeout=300)
    aer = AerSimulator()
    reference = aer.run(transpile(circuits, aer), **options).result()
    for i in range(len(circuits)):
        counts, expected = ours.get_counts(i), reference.get_counts(i)
        assert set(counts) == set(expected), circuits[i].name
        # Each outcome within 5 binomial sigmas of the reference's frequency.
        for key, n in expected.items():
            p = n / 2000
            assert abs(counts[key] - n) <= 5 * (2000 * p * (1 - p)) ** 0.5 + 1, (key, counts)
    assert ours.get_counts(1) == {"11": 2000}


def test_a_device_runs_dynamic_circuits_with_its_noise(connected: Any) -> None:
    backend = connected.backend("fake_generic_5q")
    circuit = QuantumCircuit(QuantumRegister(2, "q"), ClassicalRegister(2, "c"), name="dev")
    circuit.sx(0)
    circuit.measure(0, 0)
    with circuit.if_test(expr.logic_not(circuit.clbits[0])) as else_:
        circuit.x(1)
    with else_:
        circuit.rz(0.5, 1)
    circuit.measure(1, 1)
    options = {"shots": 300, "seed_simulator": 99}
    ours = backend.run([circuit], **options).result(timeout=300)
    reference = AerSimulator.from_backend(backend).run([circuit], **options).result()
    assert ours.get_counts(0) == reference.get_counts(0)

    # The device's gates and coupling hold inside branches as everywhere.
    bad = QuantumCircuit(5, 1, name="uncoupled")
    bad.measure(0, 0)
    with bad.if_test(expr.lift(bad.clbits[0])):
        bad.cx(0, 4)
    job = backend.run([bad], shots=10)
    job.wait_for_final_state(timeout=120)
    assert job.status().name == "ERROR"
    assert "experiment 0 ('uncoupled'): 'cx' on qubits [0, 4]" in (job.error_message() or "")


def test_a_bad_circuit_in_a_list_is_named_by_its_index(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    unbound = if_else_expr()
    unbound.rz(Parameter("theta"), 0)
    with pytest.raises(IBMQBackendValueError, match=r"circuit 2: circuit .+if_else_expr.+theta"):
        backend.run([plain(0), while_loop(), unbound, plain(1)])


def test_a_condition_reading_a_var_is_refused(connected: Any) -> None:
    qc = QuantumCircuit(1, 1, name="reads_var")
    flag = qc.add_var("flag", expr.lift(1, types.Uint(2)))
    with qc.if_test(expr.equal(flag, 1)):
        qc.x(0)
    qc.measure(0, 0)
    job = connected.backend("aer_simulator").run([plain(0), qc], shots=10)
    job.wait_for_final_state(timeout=120)
    assert job.status().name == "ERROR"
    message = job.error_message() or ""
    assert "experiment 1 ('reads_var'): 'if_else' reads the classical variable 'flag'" in message


# --- the job manager and the sampler ------------------------------------------------------


def test_job_manager_mixes_dynamic_plain_and_one_bad_circuit(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    unbound = plain(99)
    unbound.rz(Parameter("phi"), 0)
    circuits: list[Any] = [
        plain(0), ghz_dynamic(), for_loop(),          # chunk 0
        switch(), unbound, plain(5),                  # chunk 1: its bad circuit fails alone
        while_loop(), "not a circuit", plain(8),      # chunk 2: so does a non-circuit
        register_expr(),
    ]  # fmt: skip
    job_set = IBMQJobManager().run(
        circuits, backend, max_experiments_per_job=3, shots=200, seed_simulator=3
    )
    results = job_set.results(timeout=300)
    assert not results.success
    good = [i for i in range(len(circuits)) if i not in (4, 7)]
    for i in good:
        assert sum(results.get_counts(i).values()) == 200, i
    assert set(results.get_counts(1)) <= {"0000 0", "0000 1", "1111 0", "1111 1"}
    assert results.get_counts("plain-5") == results.get_counts(5)
    with pytest.raises(IBMQManagedResultDataNotAvailable, match=r"circuit 4: .*phi"):
        results.get_counts(4)
    with pytest.raises(IBMQManagedResultDataNotAvailable, match=r"circuit 7: a builtins\.str"):
        results.get_counts(7)
    messages = job_set.error_messages() or ""
    assert "circuit 4: circuit 'plain-99'" in messages
    assert "circuit 7: a builtins.str, not a QuantumCircuit" in messages
    starts = [(m.start_index, m.end_index) for m in job_set.managed_jobs()]
    assert (4, 4) in starts
    assert (7, 7) in starts


def test_sampler_runs_a_dynamic_circuit(connected: Any) -> None:
    sampler = Sampler(mode=connected.backend("aer_simulator"), options={"seed_simulator": 5})
    circuit = ghz_dynamic()
    result = sampler.run([circuit], shots=500).result(timeout=300)
    counts = result[0].data.c.get_counts()
    assert set(counts) <= {"0000", "1111"}
    assert sum(counts.values()) == 500
    assert result[0].data.mid.num_shots == 500


# --- hostile QPY through HTTP -------------------------------------------------------------


def _qpy_experiment(payload: str, name: str = "hostile", n_qubits: int = 1) -> dict[str, Any]:
    header = {"name": name, "n_qubits": n_qubits, "memory_slots": 1}
    return {"header": header, "config": {}, "instructions": [], "qpy": payload}


def _qpy_of(circuit: QuantumCircuit) -> bytes:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return buffer.getvalue()


def _class_renamed(old: bytes, new: bytes) -> bytes:
    """A QPY payload whose instruction class name ``old`` reads ``new`` (same length)."""
    qc = QuantumCircuit(1, 1)
    qc.append(UnitaryGate([[0, 1], [1, 0]]), [0])
    qc.h(0)
    qc.measure(0, 0)
    raw = _qpy_of(qc)
    assert old in raw
    assert len(old) == len(new)
    return raw.replace(old, new)


def test_qiskits_reader_calls_what_a_payload_names_and_the_guard_refuses_it() -> None:
    from qiskit.circuit import library  # noqa: PLC0415 - the module under attack

    hostile = _class_renamed(b"UnitaryGate", b"__setattr__")
    # Unguarded, qiskit resolves the name on the module and calls it with the payload's
    # parameters (here one too few for __setattr__ to succeed).
    with pytest.raises(TypeError, match="expected 2 arguments"):
        qpy.load(io.BytesIO(hostile))
    with pytest.raises(Exception, match='Gate class not found: "__setattr__"'):
        guarded_load(hostile)
    with pytest.raises(Exception, match='Gate class not found: "Qubit"'):
        guarded_load(_class_renamed(b"HGate", b"Qubit"))
    assert library.UnitaryGate.__name__ == "UnitaryGate"
    assert guarded_load(_class_renamed(b"UnitaryGate", b"UnitaryGate"))[0].num_qubits == 1


def test_hostile_qpy_fails_its_job_alone(service_factory: Callable[..., ServiceProcess]) -> None:
    # The nested header's qubits fill the checking process to its limit: a small limit
    # refuses it sooner.
    service = service_factory("--workers", "1", "--check-memory-mb", "512")
    client = service.client()

    def post(*experiments: dict[str, Any]) -> Any:
        qobj = {"qobj_id": "q", "config": {"shots": 10}, "experiments": list(experiments)}
        # A payload that grows to the checking process's memory limit takes a while.
        body = orjson.dumps({"backend": "aer_simulator", "qobj": qobj})
        return client.post("/jobs", content=body, timeout=240)

    # Refused at submission: the service checks size and alphabet, and decodes nothing.
    refused = post(_qpy_experiment("not base64!"))
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_qobj"
    assert "experiment 0 ('hostile'): qpy is not base64" in refused.json()["error"]["message"]
    huge = post(_qpy_experiment("A" * ((8 << 20) + 4)))
    assert huge.status_code == 400
    message = huge.json()["error"]["message"]
    assert "at most 8388608 are allowed per experiment (max_qpy_bytes)" in message
    wide = post(_qpy_experiment("QUJD", n_qubits=31))
    assert wide.status_code == 400
    assert "header.n_qubits" in wide.json()["error"]["message"]

    # Well-formed base64, decoded in a checking process (with a memory limit) before the
    # job is stored, as a worker would: each is refused, naming its experiment.
    good = base64.b64encode(_qpy_of(plain(0))).decode()
    cases = {
        "garbage": (base64.b64encode(b"\x00garbage" * 10).decode(), "data: no QISKIT preface"),
        "truncated": (good[: len(good) // 2 // 4 * 4], "invalid QPY data"),
        "setattr": (
            base64.b64encode(_class_renamed(b"UnitaryGate", b"__setattr__")).decode(),
            'Gate class not found: "__setattr__"',
        ),
        "wrong_width": (base64.b64encode(_qpy_of(QuantumCircuit(1, 2))).decode(), "memory_slots"),
    }
    cases["nested_width"] = (
        base64.b64encode(nested_body_declaring(20_000_000)).decode(),
        "do not decode within the service's memory limit for checking inputs (512 MiB",
    )
    for name, (payload, expected) in cases.items():
        answer = post(_qpy_experiment(good, "fine"), _qpy_experiment(payload, name))
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_qobj"
        message = answer.json()["error"]["message"]
        if name != "nested_width":  # a process at its memory limit says no more
            assert f"experiment 1 ('{name}')" in message, message
        assert expected in message, message
        assert "not base64" not in message, message
    # The service and its worker are fine: a good job runs.
    done = wait_final(client, post(_qpy_experiment(good, "fine")).json()["id"], timeout=120)
    assert done["status"] == DONE
    assert service.proc is not None
    assert service.proc.poll() is None


def test_an_endless_while_loop_ends_at_the_time_limit(
    service_factory: Callable[..., ServiceProcess],
) -> None:
    service = service_factory("--workers", "1", "--job-time-limit", "3")
    client = service.client()
    forever = QuantumCircuit(1, 1, name="forever")
    # (qiskit-aer 0.18 refuses a while loop with no measurement before it: "Invalid jump
    # destination".)
    forever.measure(0, 0)
    with forever.while_loop((forever.clbits[0], 0)):
        forever.measure(0, 0)  # always 0: the loop never ends
    forever.x(0)
    payload = base64.b64encode(_qpy_of(forever)).decode()
    answer = client.post(
        "/jobs",
        content=orjson.dumps(
            {
                "backend": "aer_simulator",
                "qobj": {"experiments": [_qpy_experiment(payload, "forever")]},
            }
        ),
    )
    assert answer.status_code == 201, answer.text
    failed = wait_final(client, answer.json()["id"], timeout=120)
    assert failed["status"] == ERROR
    assert failed["error"]["code"] == TIME_LIMIT_EXCEEDED
    # The worker was replaced; the next job runs.
    assert wait_final(client, submit(client, "aer_simulator", bell_qobj())["id"])["status"] == DONE
