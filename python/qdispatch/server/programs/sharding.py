"""Shards of a primitive job: slicing its pubs (worker side) and reassembling its result
(service side), as plain JSON, without qiskit (docs/service.md, "Sharding").

A job of the built-in ``sampler`` or ``estimator`` program with many pubs may run as
``count`` shards at once, on as many workers. Each shard runs a run of consecutive pubs
``[start, stop)`` (never none; the scheduler chooses them from each pub's executions,
which the submission's check wrote down as :func:`pub_runs`): its worker cuts them out
of the job's inputs itself, so that the service never decodes what a user sent (it only
says which pubs to run). A shard's reply is an envelope, ``{"start", "stop", "pubs",
"result"}``, around the encoded ``PrimitiveResult`` of its pubs; :func:`merge` puts the
pub results back in pub order, with the metadata of the unsharded result
(``{"version": 2}`` for both programs).

Seeds: a shard's ``options.seed_simulator`` is the job's plus the index of its first pub,
so that two shards never draw the same samples. A seeded sharded job is reproducible for
the same number of shards; it does not draw the samples the unsharded job would (qiskit-aer
seeds the experiments of one run together).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from qdispatch import _native

from . import BUILTIN, ProgramRef

#: The built-in programs that may run as shards: their inputs hold ``pubs`` and their
#: result is the ``PrimitiveResult`` of the pubs, each pub's result its own.
SHARDABLE = frozenset({"sampler", "estimator"})
_PUBS = "pubs"

#: The default of ``--shard-max-pubs``: the most pubs a job may have and still run as
#: shards. The pubs' executions are written down at submission and read back and cut at
#: each dispatch, on the event loop, in time linear in the runs of equal executions, which
#: a hostile job makes one per pub (sizes 1, 2, 1, 2…): at 1M pubs that stalled every
#: user for seconds. At this bound the worst case costs the loop some 20 ms at
#: submission and 30 ms at dispatch; 20,000 pubs (each a circuit of its own) is far
#: beyond the primitive jobs the service sees, and a job of more still runs, unsharded.
SHARD_MAX_PUBS = 20_000

#: The most bytes one run takes as :func:`pub_runs` writes it: ``[e,p],`` of two
#: integers of at most 20 digits.
_RUN_BYTES = 44
_QOBJ = "circuits"  # the sampler's circuits, a QasmQobj the pubs index: kept whole, raw


def shardable(ref: ProgramRef) -> bool:
    """Whether jobs of the program ``ref`` may run as shards."""
    return ref.source == BUILTIN and ref.id in SHARDABLE


def shard_key(job_id: str, index: int) -> str:
    """The id a shard runs under on the executor (its slot, its worker, its dask key)."""
    return f"{job_id}#{index}"


def pub_runs(executions: list[int]) -> bytes:
    """Each pub's executions, as stored with a shardable job: JSON
    ``[[executions, pubs], ...]``, consecutive pubs of equal executions written once (a
    job's pubs are mostly alike, so this is a few bytes whatever their number)."""
    runs: list[list[int]] = []
    for n in executions:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    return orjson.dumps(runs)


def read_pub_runs(data: bytes, max_pubs: int = SHARD_MAX_PUBS) -> list[tuple[int, int]] | None:
    """:func:`pub_runs`' ``(executions, pubs)`` pairs, checked; ``None`` for more than
    ``max_pubs`` pubs (the job runs unsharded), found out in time bounded by
    ``max_pubs`` whatever ``data`` holds (a job stored before the bound, or under a
    larger one). Raises ``ValueError`` for data that are not runs."""
    if len(data) > 2 + _RUN_BYTES * max_pubs:
        return None  # more runs than the bound allows pubs
    value = orjson.loads(data)
    if not isinstance(value, list):
        raise ValueError("pub runs are not a list")
    if len(value) > max_pubs:
        return None
    runs = []
    total = 0
    for item in value:
        if type(item) is not list or len(item) != 2:
            raise ValueError(f"a pub run is not [executions, pubs]: {item!r}")
        executions, pubs = item
        if type(executions) is not int or type(pubs) is not int or executions < 1 or pubs < 1:
            raise ValueError(f"a pub run is not [executions, pubs]: {item!r}")
        total += pubs
        runs.append((executions, pubs))
    return runs if total <= max_pubs else None


@dataclass(frozen=True)
class Span:
    """The pubs ``[start, stop)`` of a job of ``pubs`` pubs that one shard runs."""

    start: int
    stop: int
    pubs: int


def slice_inputs(inputs: bytes, start: int, stop: int) -> tuple[bytes, Span]:
    """A job's inputs (its params' JSON) cut down to the pubs ``[start, stop)``: the same
    inputs with only those pubs and the shard's seed. Raises ``ValueError`` for inputs
    without a list of pubs (the program would refuse them too) or without those pubs."""
    rest, qobj = _native.split_member(inputs, _QOBJ, "params")
    params = orjson.loads(rest)
    if not isinstance(params, dict) or not isinstance(params.get(_PUBS), list):
        raise ValueError("the job's inputs have no list of pubs to shard")
    pubs: list[Any] = params[_PUBS]
    n = len(pubs)
    if not 0 <= start < stop <= n:
        raise ValueError(f"a shard of pubs {start}-{stop} of a job of {n} pubs")
    span = Span(start, stop, n)
    params[_PUBS] = pubs[span.start : span.stop]
    options = params.get("options")
    if isinstance(options, dict) and span.start:
        seed = options.get("seed_simulator")
        if isinstance(seed, int) and not isinstance(seed, bool):
            options["seed_simulator"] = seed + span.start
    if qobj is not None:
        params[_QOBJ] = orjson.Fragment(qobj)
    return orjson.dumps(params), span


def envelope(span: Span, result: bytes) -> bytes:
    """What a shard's worker replies: its span and its ``PrimitiveResult``, encoded."""
    head = orjson.dumps({"start": span.start, "stop": span.stop, "pubs": span.pubs})
    return head[:-1] + b',"result":' + result + b"}"


@dataclass(frozen=True)
class Part:
    """One shard's reply, read: its span, its pub results (encoded) and metadata."""

    span: Span
    pub_results: list[Any]
    metadata: Any


def read_part(reply: bytes) -> Part:
    """A shard's reply, checked. Raises ``ValueError`` if it is not an envelope."""
    value = orjson.loads(reply)
    try:
        span = Span(int(value["start"]), int(value["stop"]), int(value["pubs"]))
        inner = value["result"]["__value__"]
        pub_results, metadata = list(inner["pub_results"]), inner.get("metadata")
    except (KeyError, TypeError) as exc:
        raise ValueError(f"a shard's reply is not a shard envelope ({exc!r})") from None
    if len(pub_results) != span.stop - span.start:
        raise ValueError(
            f"a shard of pubs {span.start}-{span.stop} returned {len(pub_results)} pub results"
        )
    return Part(span, pub_results, metadata)


def merge(parts: list[Part]) -> bytes:
    """The job's ``PrimitiveResult`` (encoded) from its shards' parts: every pub's
    result, in pub order, with the first shard's metadata. Raises ``ValueError`` if the
    parts do not cover the pubs exactly once."""
    ordered = sorted(parts, key=lambda p: p.span.start)
    pub_results: list[Any] = []
    metadata: Any = None
    total = ordered[0].span.pubs if ordered else 0
    for part in ordered:
        if part.span.start != len(pub_results) or part.span.pubs != total:
            raise ValueError("the shards' pubs do not cover the job's pubs exactly once")
        pub_results.extend(part.pub_results)
        if metadata is None:
            metadata = part.metadata
    if len(pub_results) != total or not total:
        raise ValueError("the shards' pubs do not cover the job's pubs exactly once")
    return orjson.dumps(
        {
            "__type__": "PrimitiveResult",
            "__value__": {"pub_results": pub_results, "metadata": metadata or {}},
        }
    )


def progress(done: list[Part], count: int) -> bytes:
    """The interim result sent as a shard finishes: how many of the job's shards and
    pubs are done (``{"shards_done", "shards", "pubs_done", "pubs"}``)."""
    return orjson.dumps(
        {
            "shards_done": len(done),
            "shards": count,
            "pubs_done": sum(p.span.stop - p.span.start for p in done),
            "pubs": done[0].span.pubs if done else 0,
        }
    )
