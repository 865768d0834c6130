"""Results built from the outline of their JSON (``qdispatch.results``) against
``Result.from_dict`` of the same JSON, accessor by accessor: counts (hex, binary, wide and
empty keys, several registers), memory, statevectors, metadata, failed experiments, empty
results, names given twice, documents qiskit refuses; then ``IBMQJob.result()`` and
``combine_results()`` against a real service."""

from __future__ import annotations

import copy
import functools
import pickle
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.result import Counts, Result
from qiskit.result.models import ExperimentResult, ExperimentResultData

from qdispatch import IBMQJobManager
from qdispatch.api import Family
from qdispatch.results import LazyCounts, LazyResult, combine_result_json, result_from_json


def experiment(name: str | None = "e", **fields: Any) -> dict[str, Any]:
    """An experiment dict of the service's shape; ``fields`` override or add."""
    exp: dict[str, Any] = {
        "shots": 8,
        "success": True,
        "data": {"counts": {"0x0": 5, "0x3": 3}},
        "meas_level": 2,
        "header": {"name": name, "memory_slots": 2, "creg_sizes": [["c", 2]], "n_qubits": 2},
        "status": "DONE",
        "seed_simulator": 7,
        "metadata": {"method": "statevector", "fusion": {"applied": False}},
        "time_taken": 0.001,
    }
    if name is None:
        del exp["header"]["name"]
    exp.update(fields)
    return exp


def document(*experiments: dict[str, Any], **top: Any) -> bytes:
    doc: dict[str, Any] = {
        "backend_name": "aer_simulator",
        "backend_version": "0.1.0",
        "qobj_id": "q",
        "job_id": "j",
        "success": True,
        "status": "COMPLETED",
        "date": "2026-12-01T00:00:00+00:00",
        "header": {"backend": "x"},
        "metadata": {"parallel_experiments": 1},
        "time_taken": 0.5,
        "results": list(experiments),
    }
    doc.update(top)
    return orjson.dumps(doc)


VARIED = document(
    experiment("plain"),
    experiment(
        "registers",
        data={"counts": {"0x0": 1, "0x5": 2, "0x1f": 3}, "memory": ["0x5", "0x1f", "0x0"]},
        header={"name": "registers", "memory_slots": 5, "creg_sizes": [["a", 2], ["b", 3]]},
    ),
    experiment("binary keys", data={"counts": {"0b1": 2, "0b10": 6}}),
    experiment("spaced keys", data={"counts": {"01": 2, "10": 6}}, header={"name": "spaced keys"}),
    experiment(
        "wide",
        data={"counts": {"0x10000000000000000000": 1, "0x1": 1}},
        header={"name": "wide", "memory_slots": 81, "creg_sizes": [["c", 80], ["d", 1]]},
    ),
    experiment("empty counts", data={"counts": {}}),
    experiment(None, data={"counts": {"0x1": 4}}),
    experiment("no slots", header={"name": "no slots", "memory_slots": 0, "creg_sizes": []}),
    experiment("taken", header={"name": "taken", "memory_slots": 2, "time_taken": 0.25}),
    experiment("failed", success=False, status="ERROR: boom", data={}),
    experiment("statevector", data={"statevector": [[0.6, 0.0], [0.0, 0.8]]}),
    experiment("level 1", meas_level=1, meas_return="avg", data={"memory": [[0.1, 0.2]]}),
    experiment("plain", data={"counts": {"0x1": 8}}),  # a name given twice
    experiment("no header", header=None),
    experiment("null slots", header={"name": "null slots", "memory_slots": None}),
    experiment("twice", data={"counts": {"0x1": 1, "0x01": 2}}),
    experiment("uppercase", data={"counts": {"0xA": 1, "0XB": 2}}),
    experiment("float count", data={"counts": {"0x1": 1.5}}),
    experiment("custom data", data={"counts": {"0x2": 1}, "extra": [1, 2]}),
)
FAILED_JOB = document(experiment("ok"), experiment("bad", success=False), success=False)
EMPTY = document()
ODD_HEADER = document(experiment("x"), experiment("y", header=["not", "a", "dict"]))
REFUSED = [
    document(experiment("x"), results="not a list"),
    orjson.dumps({"backend_name": "b"}),
    orjson.dumps({"results": [{"success": True, "data": {}}]}),
    orjson.dumps({"results": [{"shots": 1, "success": True, "data": None}]}),
    document(experiment("bad", meas_return="sideways")),
    document(experiment("dunder", data={"__dict__": 1})),
    b"{not json",
]


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """What ``call`` gives or raises, comparable across the two builds."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = call()
        except Exception as exc:  # compared below, type and message
            return ("raised", type(exc), str(exc), [str(w.message) for w in caught])
    return ("gave", comparable(value), [str(w.message) for w in caught])


def comparable(value: Any) -> Any:
    """``value`` with the state of qiskit objects spelled out (they compare by identity)."""
    if isinstance(value, Counts):
        return ("Counts", dict(value), comparable(vars(value)))
    if isinstance(value, ExperimentResult | ExperimentResultData | Result):
        assert type(value) in (ExperimentResult, ExperimentResultData, Result, LazyResult)
        return (type(value).__name__, comparable(vars(value)))
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [comparable(v) for v in value]
    if isinstance(value, np.ndarray):
        return ("ndarray", value.tolist())
    return value


def state(result: Result) -> Any:
    """Every attribute of ``result``, its experiments and their data (an experiment is
    built when first read: reading ``success`` builds it before ``vars`` looks)."""
    _ = [e.success for e in result.results]
    return comparable(vars(result) | {"results": [vars(e) for e in result.results]})


@functools.cache
def named_circuit(name: str) -> QuantumCircuit:
    """One circuit per name (qiskit's error messages show the object)."""
    return QuantumCircuit(1, name=name)


def names_of(raw: bytes) -> list[Any]:
    headers = [e.get("header") for e in orjson.loads(raw)["results"]]
    return [h.get("name") if isinstance(h, dict) else None for h in headers]


def accessors(result: Result, raw: bytes) -> list[Callable[[], Any]]:
    """Every accessor of a Result, over every experiment, by index, name and circuit."""
    n = len(orjson.loads(raw)["results"])
    calls: list[Callable[[], Any]] = [result.get_counts, lambda: result.get_counts(None)]
    for i in range(-1, n + 1):
        calls += [
            lambda i=i: result.get_counts(i),
            lambda i=i: result.get_memory(i),
            lambda i=i: result.data(i),
            lambda i=i: result.get_statevector(i),
            lambda i=i: result.get_statevector(i, decimals=1),
        ]
    for name in [*names_of(raw), "", "missing"]:
        if isinstance(name, str):
            circuit = named_circuit(name) if name else None
            calls += [lambda k=name: result.get_counts(k), lambda k=name: result.data(k)]
            if circuit is not None:
                calls.append(lambda c=circuit: result.get_counts(c))
    calls += [lambda: result.get_counts(True), lambda: result.get_counts(np.int64(0))]
    for i in range(n):
        for attr in ("header", "metadata", "status", "success", "shots", "seed", "meas_return"):
            calls.append(lambda i=i, a=attr: getattr(result.results[i], a))
    for attr in ("backend_name", "job_id", "success", "status", "date", "header", "metadata"):
        calls.append(lambda a=attr: getattr(result, a))
    calls += [lambda: result.time_taken, lambda: result.qobj_id, lambda: result.nothing]
    calls += [lambda: len(result.results), result.to_dict, lambda: repr(result)]
    return calls


@pytest.mark.parametrize("raw", [VARIED, FAILED_JOB, EMPTY, ODD_HEADER], ids=range(4))
def test_every_accessor_equals_from_dict(raw: bytes) -> None:
    expected = Result.from_dict(orjson.loads(raw))
    assert isinstance(result_from_json(raw), Result)
    used = result_from_json(raw)  # read by every accessor in turn
    for k, (slow, again) in enumerate(
        zip(accessors(expected, raw), accessors(used, raw), strict=True)
    ):
        fresh = accessors(result_from_json(raw), raw)[k]  # nothing read before
        assert outcome(fresh) == outcome(slow), k
        assert outcome(again) == outcome(slow), k
    assert state(used) == state(expected)
    assert state(result_from_json(raw)) == state(expected)
    assert all(type(e) is ExperimentResult for e in used.results)


def test_counts_are_qiskits_counts() -> None:
    fast = result_from_json(VARIED)
    expected = Result.from_dict(orjson.loads(VARIED))
    counts = fast.get_counts(1)
    # A Counts whose raw dicts are made on first read (tests/test_counts_lazy.py).
    assert isinstance(counts, Counts)
    assert type(counts) is LazyCounts
    assert counts == {"000 00": 1, "001 01": 2, "111 11": 3}
    assert counts.int_outcomes() == expected.get_counts(1).int_outcomes()
    assert counts.hex_outcomes() == expected.get_counts(1).hex_outcomes()
    assert counts.most_frequent() == "111 11"
    # Each call gives a new object, as qiskit's does: changing one changes no other.
    counts["000 00"] = 99
    counts.hex_raw.clear()
    assert outcome(lambda: fast.get_counts(1)) == outcome(lambda: expected.get_counts(1))
    # Counts came from the outline: nothing was built.
    assert not any(type(e) is ExperimentResult for e in fast.results)


def test_experiments_are_built_on_access_into_plain_ones() -> None:
    fast = result_from_json(VARIED)
    exp = fast.results[1]
    assert isinstance(exp, ExperimentResult)
    assert type(exp) is not ExperimentResult
    assert exp.header["creg_sizes"] == [["a", 2], ["b", 3]]
    assert type(exp) is ExperimentResult
    assert type(exp.data) is ExperimentResultData
    # Writing first builds too, then writes.
    other = fast.results[2]
    other.extra = 1
    assert type(other) is ExperimentResult
    assert (other.extra, other.shots) == (1, 8)
    # The class attribute ``_metadata`` does not answer for an unbuilt experiment.
    assert (
        fast.results[3]._metadata
        == vars(Result.from_dict(orjson.loads(VARIED)).results[3])["_metadata"]
    )
    assert fast.results[3]._metadata["seed_simulator"] == 7
    assert "shots" in dir(fast.results[4])


def test_changes_to_built_experiments_are_seen_as_qiskit_sees_them() -> None:
    raw = VARIED
    expected = Result.from_dict(orjson.loads(raw))
    fast = result_from_json(raw)
    for result in (expected, fast):
        result.results[0].data.counts = {"0x1": 2}
        result.results[0].header["name"] = "renamed"
        result.results[12].header["name"] = "elsewhere"
        result.results[3] = result.results[5]  # a list the outline's order no longer holds
    for slow, now in zip(accessors(expected, raw), accessors(fast, raw), strict=True):
        assert outcome(now) == outcome(slow)
    assert state(fast) == state(expected)


def test_a_replaced_experiment_list_is_read_as_qiskit_reads_it() -> None:
    fast = result_from_json(VARIED)
    expected = Result.from_dict(orjson.loads(VARIED))
    assert fast.get_counts("registers") == expected.get_counts("registers")
    for result in (fast, expected):
        result.results = list(reversed(result.results))
    for name in ("plain", "registers", "wide", "missing"):
        assert outcome(lambda r=fast, k=name: r.get_counts(k)) == outcome(
            lambda r=expected, k=name: r.get_counts(k)
        )


def test_pickles_and_copies_as_plain_results() -> None:
    expected = Result.from_dict(orjson.loads(VARIED))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        fast = result_from_json(VARIED)
        fast.get_counts(0)
        fast.results[2].header  # noqa: B018 -- one experiment built, the others not
        back = pickle.loads(pickle.dumps(fast, protocol=protocol))
        assert type(back) is Result
        assert all(type(e) is ExperimentResult for e in back.results)
        assert state(back) == state(expected)
        assert state(fast) == state(expected)
    for copier in (copy.copy, copy.deepcopy):
        copied = copier(result_from_json(VARIED))
        assert type(copied) is Result
        assert state(copied) == state(expected)
    lone = pickle.loads(pickle.dumps(result_from_json(VARIED).results[4]))
    assert type(lone) is ExperimentResult
    assert comparable(vars(lone)) == comparable(vars(expected.results[4]))


def test_threads_build_each_experiment_once() -> None:
    fast = result_from_json(document(*[experiment(f"e{i}") for i in range(200)]))
    seen: list[Any] = []

    def read() -> None:
        seen.extend(id(e.data) for e in fast.results)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(seen) == 800
    assert len(set(seen)) == 200
    assert all(type(e) is ExperimentResult for e in fast.results)


@pytest.mark.parametrize("raw", REFUSED, ids=range(len(REFUSED)))
def test_what_from_dict_refuses_is_refused_alike(raw: bytes) -> None:
    def slow() -> Any:
        return Result.from_dict(orjson.loads(raw))

    expected = outcome(slow)
    assert expected[0] == "raised"
    assert outcome(lambda: result_from_json(raw)) == expected


def test_combine_equals_merged_dicts() -> None:
    parts = [VARIED, document(experiment("last"), success=None), FAILED_JOB, EMPTY]
    merged = orjson.loads(parts[0])
    for raw in parts:
        part = orjson.loads(raw)
        merged["success"] = merged.get("success", True) and part.get("success", True)
    merged["results"] = [e for raw in parts for e in orjson.loads(raw)["results"]]
    merged["job_id"] = "set-1"
    expected = Result.from_dict(merged)
    fast = combine_result_json(parts, "set-1")
    assert type(fast) is LazyResult
    assert fast.success is None
    raw = orjson.dumps(merged)
    for slow, now in zip(accessors(expected, raw), accessors(fast, raw), strict=True):
        assert outcome(now) == outcome(slow)
    # A part the outline refuses: all parts merged as dicts and built by qiskit, as before.
    odd = document(experiment("dunder", data={"__dict__": 1}))
    with pytest.raises(TypeError, match="__dict__"):
        combine_result_json([VARIED, odd], "set-2")
    with pytest.raises(ValueError, match="no results"):
        combine_result_json([], "set-3")


def registers_circuit(i: int) -> QuantumCircuit:
    qr = QuantumRegister(3)
    a, b = ClassicalRegister(1, "a"), ClassicalRegister(2, "b")
    qc = QuantumCircuit(qr, a, b, name=f"regs-{i}")
    qc.h(0)
    if i % 2:
        qc.x(1)
    qc.cx(0, 2)
    qc.measure(0, a[0])
    qc.measure([1, 2], [b[0], b[1]])
    qc.metadata = {"i": i}
    return qc


def test_job_result_from_the_service(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    circuits = [registers_circuit(i) for i in range(6)]
    job = backend.run(circuits, shots=50, memory=True, seed_simulator=3)
    fast = job.result(timeout=120)
    assert type(fast) is LazyResult
    raw = connected.api.job_results(job.job_id(), Family.IBMQ)
    expected = Result.from_dict(orjson.loads(raw))
    for slow, now in zip(accessors(expected, raw), accessors(fast, raw), strict=True):
        assert outcome(now) == outcome(slow)
    assert fast.get_counts(circuits[1]) == expected.get_counts("regs-1")
    assert len(fast.get_memory(2)) == 50
    assert state(fast) == state(expected)
    assert state(job.result(refresh=True)) == state(expected)


def test_combine_results_from_the_service(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    circuits = [registers_circuit(i) for i in range(25)]
    job_set = IBMQJobManager().run(
        circuits, backend, max_experiments_per_job=10, shots=20, seed_simulator=5
    )
    results = job_set.results(timeout=300)
    combined = results.combine_results()
    assert type(combined) is LazyResult
    parts = [connected.api.job_results(m.job.job_id(), Family.IBMQ) for m in job_set.managed_jobs()]
    assert len(parts) == 3
    merged = orjson.loads(parts[0])
    merged["results"] = [e for raw in parts for e in orjson.loads(raw)["results"]]
    merged["job_id"] = job_set.job_set_id()
    expected = Result.from_dict(merged)
    raw = orjson.dumps(merged)
    for slow, now in zip(accessors(expected, raw), accessors(combined, raw), strict=True):
        assert outcome(now) == outcome(slow)
    assert combined.get_counts() == [results.get_counts(i) for i in range(25)]
    assert state(combined) == state(expected)
