"""The ``Counts`` that ``get_counts`` gives from the outline (``qdispatch.results.LazyCounts``,
``hex_raw`` and ``int_raw`` made on first read) against the ``Counts`` qiskit builds from
``Result.from_dict`` of the same JSON: every method and attribute, the state, repr, dict
behaviour, pickles byte for byte, copies, changes made before the first read, threads;
then the counts of ``IBMQJob.result()`` and ``combine_results()`` from a real service."""

from __future__ import annotations

import copy
import json
import pickle
import threading
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.result import Counts, Result, marginal_counts

from qdispatch import IBMQJobManager, results
from qdispatch.api import Family
from qdispatch.results import LazyCounts, LazyResult, combine_result_json, result_from_json

#: The instance dict itself, read past ``LazyCounts.__dict__`` (which makes it whole).
OWN_STATE: Any = Counts.__dict__["__dict__"]


def experiment(counts: dict[str, Any], header: dict[str, Any] | None, **fields: Any) -> Any:
    exp: dict[str, Any] = {
        "shots": 100,
        "success": True,
        "data": {"counts": counts},
        "meas_level": 2,
        "header": header,
        "status": "DONE",
        "time_taken": 0.001,
    }
    exp.update(fields)
    return exp


def document(*experiments: Any) -> bytes:
    return orjson.dumps(
        {
            "backend_name": "aer_simulator",
            "backend_version": "0.1.0",
            "qobj_id": "q",
            "job_id": "j",
            "success": True,
            "status": "COMPLETED",
            "date": "2026-12-01T00:00:00+00:00",
            "header": {},
            "results": list(experiments),
        }
    )


def regs(name: str, slots: int | None, *sizes: tuple[str, int]) -> dict[str, Any]:
    header: dict[str, Any] = {"name": name}
    if slots is not None:
        header["memory_slots"] = slots
    if sizes:
        header["creg_sizes"] = [list(s) for s in sizes]
    return header


SHAPES = document(
    experiment({"0x0": 5, "0x3": 3}, regs("one register", 2, ("c", 2))),
    experiment({"0x0": 1, "0x5": 2, "0x1f": 3}, regs("two registers", 5, ("a", 2), ("b", 3))),
    experiment({"0x1": 7, "0x2": 7}, regs("a tie", 2, ("c", 2))),
    experiment({}, regs("empty", 2, ("c", 2))),
    experiment({"0x1": 4}, regs("slots only", 3)),
    experiment({"0x1": 4, "0x6": 1}, None),
    experiment({"0x1": 1, "0x01": 2}, regs("one key twice", 2, ("c", 2))),
    experiment({"0xA": 1, "0xb": 2}, regs("uppercase", 4, ("c", 4))),
    experiment({"0x10000000000000000000": 1, "0x1": 300}, regs("wide", 81, ("c", 80), ("d", 1))),
    experiment({"0x3": 1000, "0x0": 24}, regs("large counts", 2, ("x", 1), ("y", 1))),
)


def lazy_counts(raw: bytes = SHAPES) -> list[Any]:
    counts = result_from_json(raw).get_counts()
    assert all(type(c) is LazyCounts for c in counts)
    return list(counts)


def eager_counts(raw: bytes = SHAPES) -> list[Any]:
    counts = Result.from_dict(orjson.loads(raw)).get_counts()
    assert all(type(c) is Counts for c in counts)
    return list(counts)


N_SHAPES = len(orjson.loads(SHAPES)["results"])


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """What ``call`` gives (with dicts' order spelled out) or raises, comparable."""
    try:
        value = call()
    except Exception as exc:  # compared below, type and message
        return ("raised", type(exc), str(exc))
    return ("gave", ordered(value))


def ordered(value: Any) -> Any:
    if isinstance(value, dict):
        return (type(value).__name__, [(k, ordered(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return [ordered(v) for v in value]
    return value


def state(counts: Counts) -> Any:
    """The type as qiskit would see it, the keys in order, and the attributes in order."""
    assert isinstance(counts, Counts)
    return ordered(dict(counts)), ordered(vars(counts))


ACCESSORS: list[Callable[[Counts], Any]] = [
    lambda c: c.hex_raw,
    lambda c: c.int_raw,
    lambda c: c.creg_sizes,
    lambda c: c.memory_slots,
    lambda c: c.time_taken,
    vars,
    lambda c: c.__dict__,
    lambda c: c.most_frequent(),
    lambda c: c.hex_outcomes(),
    lambda c: c.int_outcomes(),
    lambda c: c.shots(),
    repr,
    str,
    lambda c: list(c.items()),
    len,
    lambda c: c.copy(),
    dict,
    lambda c: c == dict(c),
    lambda c: c | {"extra": 1},
    json.dumps,
    lambda c: c.get("00"),
    lambda c: c["nope"],
    lambda c: hasattr(c, "missing_attribute"),
    lambda c: sorted(k for k in dir(c) if not k.startswith("_")),
    lambda c: c.bitstring_regex.pattern,
    # qiskit's Python marginalisation reads the attributes and builds a Counts of its own.
    lambda c: vars(marginal_counts(c, [0])),
    lambda c: marginal_counts(c, [0]),
]


@pytest.mark.parametrize("index", range(N_SHAPES))
def test_every_accessor_equals_qiskits(index: int) -> None:
    eager = eager_counts()[index]
    used = lazy_counts()[index]  # read by every accessor in turn
    assert isinstance(used, Counts)
    assert used == eager
    for k, read in enumerate(ACCESSORS):
        fresh = lazy_counts()[index]  # nothing read before
        expected = outcome(lambda r=read: r(eager))
        assert outcome(lambda r=read, c=fresh: r(c)) == expected, k
        assert outcome(lambda r=read: r(used)) == expected, k
    assert state(used) == state(eager)
    assert state(lazy_counts()[index]) == state(eager)


def test_the_attributes_are_made_on_first_read() -> None:
    counts = lazy_counts()[1]
    # The bitstrings and what reads only them need none of the attributes.
    assert counts == {"000 00": 1, "001 01": 2, "111 11": 3}
    assert (counts.most_frequent(), counts.shots(), len(counts)) == ("111 11", 6, 3)
    assert OWN_STATE.__get__(counts) == {}
    # Reading one makes them all, in qiskit's order.
    assert counts.memory_slots == 5
    assert list(OWN_STATE.__get__(counts)) == [
        "hex_raw",
        "int_raw",
        "creg_sizes",
        "memory_slots",
        "time_taken",
    ]
    assert counts.int_outcomes() == {0: 1, 5: 2, 31: 3}
    # qiskit's ``int_outcomes`` gives the ``int_raw`` dict itself; so does this one.
    assert counts.int_outcomes() is counts.int_raw
    assert counts.hex_raw is counts.hex_raw
    assert counts.creg_sizes is counts.creg_sizes


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_are_qiskits_byte_for_byte(protocol: int) -> None:
    for fresh, eager in zip(lazy_counts(), eager_counts(), strict=True):
        assert pickle.dumps(fresh, protocol) == pickle.dumps(eager, protocol)
        back = pickle.loads(pickle.dumps(fresh, protocol))
        assert type(back) is Counts
        assert state(back) == state(eager)
    read = lazy_counts()[1]
    read.int_outcomes()
    assert pickle.dumps(read, protocol) == pickle.dumps(eager_counts()[1], protocol)


def test_getstate_and_reduce_are_qiskits() -> None:
    for fresh, eager in zip(lazy_counts(), eager_counts(), strict=True):
        # The plain state dict (not ``object.__getstate__``'s pair with the slots).
        assert ordered(fresh.__getstate__()) == ordered(eager.__getstate__())
        # Protocol 0's reduce (``object.__reduce__`` refuses a class with slots).
        func, args, made = fresh.__reduce__()
        eager_func, eager_args, eager_made = eager.__reduce__()
        assert func is eager_func
        assert ordered(list(args)) == ordered(list(eager_args))
        assert ordered(made) == ordered(eager_made)
        back = func(*args)
        back.__dict__.update(made)
        assert type(back) is Counts
        assert state(back) == state(eager)
        reduced = fresh.__reduce_ex__(2)
        eager_reduced = eager.__reduce_ex__(2)
        assert reduced[:2] == eager_reduced[:2]
        assert ordered(reduced[2]) == ordered(eager_reduced[2])
        assert list(reduced[4]) == list(eager_reduced[4])
    # Once made, ``__getstate__`` is the instance's own dict, as on qiskit's.
    read = lazy_counts()[0]
    assert read.__getstate__() is read.__dict__ is OWN_STATE.__get__(read)


def test_once_made_reads_do_not_take_the_build_lock() -> None:
    made, unmade = lazy_counts()[:2]
    made.hex_raw  # noqa: B018  # the first read makes the attributes
    # The outline is dropped with the first read (an unread one holds it).
    assert made._qdispatch_outline is None
    assert unmade._qdispatch_outline is not None
    seen: list[Any] = []
    reader = threading.Thread(target=lambda: seen.append((made.hex_raw, made.__getstate__())))
    with results._BUILD_LOCK:  # another thread building: a made one must not wait for it
        reader.start()
        reader.join(timeout=30)
        assert not reader.is_alive()
    assert seen == [(eager_counts()[0].hex_raw, OWN_STATE.__get__(made))]
    # An unmade one still makes its attributes under the lock.
    waiting = threading.Thread(target=lambda: seen.append(unmade.int_raw))
    with results._BUILD_LOCK:
        waiting.start()
        waiting.join(timeout=0.2)
        assert waiting.is_alive()
    waiting.join(timeout=30)
    assert seen[-1] == eager_counts()[1].int_raw


def test_copies_are_plain_counts_equal_to_qiskits() -> None:
    for copier in (copy.copy, copy.deepcopy):
        for fresh, eager in zip(lazy_counts(), eager_counts(), strict=True):
            copied = copier(fresh)
            assert type(copied) is Counts
            assert state(copied) == state(eager)
            assert state(fresh) == state(eager)


def changes(counts: Counts) -> list[Any]:
    """Changes made before anything read the raw dicts, and what is seen after each."""
    seen = []
    counts["000 00"] = 99
    seen.append(outcome(lambda: (counts.hex_outcomes(), state(counts))))
    counts.creg_sizes = [["c", 5]]
    counts.note = "mine"
    seen.append(outcome(lambda: (counts.int_raw, state(counts))))
    return seen


def test_changes_before_the_first_read_are_seen_as_qiskit_sees_them() -> None:
    assert changes(lazy_counts()[1]) == changes(eager_counts()[1])

    # Setting one raw dict before the other is read keeps both as qiskit keeps them.
    def set_then_read(counts: Counts) -> Any:
        counts.hex_raw = {"0x7": 1}
        return outcome(lambda: (counts.hex_outcomes(), counts.int_outcomes(), state(counts)))

    assert set_then_read(lazy_counts()[1]) == set_then_read(eager_counts()[1])

    def delete_then_read(counts: Counts) -> Any:
        del counts.int_raw
        return [
            outcome(lambda: counts.int_raw),
            outcome(counts.int_outcomes),
            outcome(lambda: state(counts)),
        ]

    lazy, eager = delete_then_read(lazy_counts()[1]), delete_then_read(eager_counts()[1])
    assert [o[0] for o in lazy] == [o[0] for o in eager] == ["raised", "raised", "gave"]
    assert lazy[2] == eager[2]
    assert lazy[0][1] is eager[0][1] is AttributeError


def test_each_get_counts_is_a_new_object() -> None:
    result = result_from_json(SHAPES)
    first = result.get_counts(1)
    first["000 00"] = 5
    first.hex_raw.clear()
    again = result.get_counts(1)
    assert again is not first
    assert state(again) == state(eager_counts()[1])


def test_made_directly_it_is_qiskits_counts() -> None:
    for data, kwargs in [
        ({"0x1": 2, "0x3": 1}, {"memory_slots": 2}),
        ({"0b10": 1}, {}),
        ({3: 4}, {"creg_sizes": [["c", 2]], "memory_slots": 2}),
        ({"01 1": 4}, {"creg_sizes": [["a", 1], ["b", 2]], "memory_slots": 3}),
        ({"012": 1}, {}),
        ({}, {}),
    ]:
        assert outcome(lambda d=data, k=kwargs: state(LazyCounts(d, **k))) == outcome(
            lambda d=data, k=kwargs: state(Counts(d, **k))
        )


def test_threads_reading_first_see_one_pair_of_raw_dicts() -> None:
    for _ in range(20):
        counts = lazy_counts()[8]
        seen: list[tuple[int, int]] = []
        barrier = threading.Barrier(6)

        def read(c: Any = counts, b: Any = barrier, out: Any = seen) -> None:
            b.wait(timeout=30)
            out.append((id(c.hex_raw), id(c.int_raw)))

        threads = [threading.Thread(target=read) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(seen) == 6
        assert len(set(seen)) == 1
        assert state(counts) == state(eager_counts()[8])


def test_combined_results_give_lazy_counts_equal_to_qiskits() -> None:
    parts = [SHAPES, document(experiment({"0x2": 9}, regs("last", 2, ("c", 2))))]
    merged = orjson.loads(parts[0])
    merged["results"] += orjson.loads(parts[1])["results"]
    expected = Result.from_dict(merged).get_counts()
    combined = combine_result_json(parts, "set").get_counts()
    assert [type(c) for c in combined] == [LazyCounts] * (N_SHAPES + 1)
    assert [state(c) for c in combined] == [state(c) for c in expected]


def registers_circuit(i: int) -> QuantumCircuit:
    a, b = ClassicalRegister(1, "a"), ClassicalRegister(2, "b")
    qc = QuantumCircuit(QuantumRegister(3), a, b, name=f"regs-{i}")
    qc.h(0)
    if i % 2:
        qc.x(1)
    qc.cx(0, 2)
    qc.measure(0, a[0])
    qc.measure([1, 2], [b[0], b[1]])
    return qc


def test_counts_from_the_service_equal_qiskits(connected: Any) -> None:
    backend = connected.backend("aer_simulator")
    circuits = [registers_circuit(i) for i in range(12)]
    job = backend.run(circuits[:4], shots=64, seed_simulator=3)
    result = job.result(timeout=120)
    assert type(result) is LazyResult
    raw = connected.api.job_results(job.job_id(), Family.IBMQ)
    expected = Result.from_dict(orjson.loads(raw))
    for i in range(4):
        fast, slow = result.get_counts(circuits[i]), expected.get_counts(i)
        assert type(fast) is LazyCounts
        for read in ACCESSORS:
            assert outcome(lambda r=read, c=fast: r(c)) == outcome(lambda r=read, c=slow: r(c))
        assert pickle.dumps(fast) == pickle.dumps(slow)

    job_set = IBMQJobManager().run(
        circuits, backend, max_experiments_per_job=5, shots=32, seed_simulator=5
    )
    combined = job_set.results(timeout=300).combine_results()
    parts = [connected.api.job_results(m.job.job_id(), Family.IBMQ) for m in job_set.managed_jobs()]
    merged = orjson.loads(parts[0])
    merged["results"] = [e for part in parts for e in orjson.loads(part)["results"]]
    slow_all = Result.from_dict(merged).get_counts()
    fast_all = combined.get_counts()
    assert [type(c) for c in fast_all] == [LazyCounts] * 12
    assert [state(c) for c in fast_all] == [state(c) for c in slow_all]
