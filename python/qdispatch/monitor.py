"""What the ``qdispatch`` job commands show, as plain data: summaries computed from the
service's JSON views (``GET /jobs``, ``GET /jobs/{id}``, a result), with no I/O and no
formatting, so that any view of the service (the CLI's tables and ``--json``, a web page,
a notebook) shows the same figures.

Every function takes what the service answered and returns dicts and lists of JSON
values.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from . import _native
from .constants import DONE, FINAL_STATUSES, INTERNAL_TAGS, JOB_TAG, SET_TAG, SIZE_TAG

#: Outcomes of each experiment a counts summary lists, most frequent first.
TOP_OUTCOMES = 3
#: Experiments a counts summary covers (the first ones).
MAX_SUMMARISED_EXPERIMENTS = 20
#: The most jobs (chunks) a job set may declare, and experiments in all: the service
#: refuses job-set tags beyond them (400 ``invalid_request``).
MAX_SET_JOBS = 1_000_000
MAX_SET_EXPERIMENTS = 1_000_000_000
#: Chunks never submitted that a set's progress lists one by one; the rest are counted.
MAX_LISTED_MISSING = 10_000
#: The status of a chunk that left no job.
NOT_SUBMITTED = "NOT_SUBMITTED"

# The order a job's steps happen in (time_per_step is a JSON object: keep it readable).
_STEP_ORDER = ("CREATED", "VALIDATED", "QUEUED", "RUNNING", "REQUEUED", "COMPLETED")


def _when(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one wire timestamp to another (``None`` if either is missing)."""
    if not start or not end:
        return None
    return round((_when(end) - _when(start)).total_seconds(), 6)


def steps(time_per_step: dict[str, str]) -> list[dict[str, Any]]:
    """A job's steps in the order they happened: ``step``, ``time`` and ``seconds``
    since the step before (``None`` for the first)."""
    ordered = sorted(
        time_per_step.items(),
        key=lambda item: (
            item[1],
            _STEP_ORDER.index(item[0]) if item[0] in _STEP_ORDER else len(_STEP_ORDER),
        ),
    )
    out: list[dict[str, Any]] = []
    previous: str | None = None
    for step, when in ordered:
        out.append({"step": step, "time": when, "seconds": seconds_between(previous, when)})
        previous = when
    return out


def timing(job: dict[str, Any]) -> dict[str, float | None]:
    """How long a job waited in its queue (``queued_seconds``) and ran (``run_seconds``,
    the worker's own measure when the job has one)."""
    steps_ = job.get("time_per_step") or {}
    ended = next((steps_[s] for s in ("COMPLETED", "ERROR", "CANCELLED") if s in steps_), None)
    ran = job.get("run_seconds")
    if ran is None:
        ran = seconds_between(steps_.get("RUNNING"), ended)
    waited = seconds_between(steps_.get("QUEUED"), steps_.get("RUNNING"))
    return {"queued_seconds": waited, "run_seconds": ran}


def counts_summary(
    result: bytes, top: int = TOP_OUTCOMES, limit: int = MAX_SUMMARISED_EXPERIMENTS
) -> dict[str, Any]:
    """A circuit job's result (its JSON) in brief: per experiment (the first ``limit``),
    ``shots`` counted, ``outcomes`` seen and the ``top`` most frequent as
    ``[bitstring, count]``; ``experiments`` in all. Counts are parsed natively."""
    all_counts = _native.counts_from_result(result)
    summary = []
    for index, counts in enumerate(all_counts[:limit]):
        if counts is None:
            summary.append({"index": index, "shots": 0, "outcomes": 0, "top": []})
            continue
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        summary.append(
            {
                "index": index,
                "shots": sum(counts.values()),
                "outcomes": len(counts),
                "top": [[outcome, n] for outcome, n in ranked[:top]],
            }
        )
    return {"experiments": len(all_counts), "summary": summary}


def user_tags(tags: Iterable[str]) -> list[str]:
    """A job's tags without the job manager's bookkeeping ones."""
    return [t for t in tags if not t.startswith(INTERNAL_TAGS)]


def set_id_of(job: dict[str, Any]) -> str | None:
    """The id of the job set a job belongs to, if any."""
    for tag in job.get("tags") or ():
        if tag.startswith(SET_TAG):
            return str(tag[len(SET_TAG) :])
    return None


def _set_name(job: dict[str, Any]) -> str | None:
    found = re.fullmatch(r"(.*)_\d+_", job.get("name") or "")
    return found.group(1) if found else job.get("name")


def _numbers(tag: str, prefix: str, n: int) -> tuple[int, ...] | None:
    """The ``n`` non-negative integers after ``prefix`` in ``tag`` (``:``-separated),
    else ``None``: a tag is anyone's to write, so it is parsed, never trusted."""
    parts = tag[len(prefix) :].split(":")
    if len(parts) != n or not all(p.isascii() and p.isdigit() and len(p) <= 12 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def set_tags_problem(tags: Iterable[str]) -> str | None:
    """What is wrong with a job's job-set tags (the ``qdispatch_job…`` prefixes), else
    ``None``: each at most once, numbers in range (at most :data:`MAX_SET_JOBS` chunks,
    :data:`MAX_SET_EXPERIMENTS` experiments, a chunk's index below the set's size). The
    service refuses a job whose tags this faults, so that nothing it stores names a set
    readers would have to walk without bound."""
    seen: dict[str, str] = {}
    size: tuple[int, ...] | None = None
    chunk: tuple[int, ...] | None = None
    for tag in tags:
        prefix = next((p for p in INTERNAL_TAGS if tag.startswith(p)), None)
        if prefix is None:
            continue
        if prefix in seen:
            return f"tags '{seen[prefix]}' and '{tag}': a job belongs to at most one job set"
        seen[prefix] = tag
        if prefix == SET_TAG:
            if not tag[len(SET_TAG) :]:
                return f"tag '{tag}': a job set's id must not be empty"
        elif prefix == SIZE_TAG:
            size = _numbers(tag, SIZE_TAG, 2)
            if size is None or not (
                1 <= size[0] <= MAX_SET_JOBS and size[1] <= MAX_SET_EXPERIMENTS
            ):
                return (
                    f"tag '{tag}' must be '{SIZE_TAG}<jobs>:<experiments>' with 1 to "
                    f"{MAX_SET_JOBS} jobs and at most {MAX_SET_EXPERIMENTS} experiments"
                )
        else:
            chunk = _numbers(tag, JOB_TAG, 3)
            if chunk is None or not (
                chunk[0] < MAX_SET_JOBS
                and chunk[1] + chunk[2] <= MAX_SET_EXPERIMENTS
                and chunk[2] >= 1
            ):
                return (
                    f"tag '{tag}' must be '{JOB_TAG}<index>:<first experiment>:<experiments>' "
                    f"with an index below {MAX_SET_JOBS} and at least one experiment"
                )
    if size is not None and chunk is not None and chunk[0] >= size[0]:
        return f"tag '{seen[JOB_TAG]}': the chunk's index must be below the set's {size[0]} jobs"
    return None


def _chunk(job: dict[str, Any]) -> tuple[int, int, int] | None:
    for tag in job.get("tags") or ():
        if tag.startswith(JOB_TAG):
            found = _numbers(tag, JOB_TAG, 3)
            if found is not None:
                return found[0], found[1], found[2]
    return None


def _set_size(jobs: Iterable[dict[str, Any]]) -> tuple[int, int]:
    for job in jobs:
        for tag in job.get("tags") or ():
            if tag.startswith(SIZE_TAG):
                found = _numbers(tag, SIZE_TAG, 2)
                if found is not None:
                    return found[0], found[1]
    return 0, 0


def _gaps(found: Sequence[int], total: int, listed: int) -> tuple[list[int], int]:
    """The indexes below ``total`` missing from ``found`` (sorted): the first ``listed``
    of them, and how many there are in all. Walks the gaps, never ``range(total)``."""
    missing: list[int] = []
    count = 0
    previous = -1
    for index in [*found, total]:
        gap = index - previous - 1
        if gap > 0:
            count += gap
            take = min(gap, listed - len(missing))
            missing.extend(range(previous + 1, previous + 1 + max(0, take)))
        previous = index
    return missing, count


def job_sets(jobs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job sets (``IBMQJobManager``) the given jobs belong to, newest first: ``id``,
    ``name``, ``backend``, ``created`` (its first job's), ``jobs`` (chunks),
    ``experiments``, ``statuses`` (chunks by status; a resubmitted chunk counts once, by
    its newest job) and ``done`` (whether every chunk is final). Only the jobs given are
    looked at: a set whose jobs are partly older shows what was given."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        set_id = set_id_of(job)
        if set_id is not None:
            grouped.setdefault(set_id, []).append(job)
    sets = [job_set_progress(set_id, members, 0) for set_id, members in grouped.items()]
    for entry in sets:
        entry.pop("chunks")
    return sorted(sets, key=lambda s: s["created"] or "", reverse=True)


def job_set_progress(
    set_id: str, jobs: Sequence[dict[str, Any]], listed_missing: int = MAX_LISTED_MISSING
) -> dict[str, Any]:
    """A job set's progress from its jobs (``GET /jobs?tags=qdispatch_jobset:<id>``):
    the set's ``id``, ``name``, ``backend``, ``created``, ``tags``, ``jobs`` and
    ``experiments`` (as the set declared them), ``statuses`` (chunks by status),
    ``experiments_done`` (of chunks ``DONE``), ``done``, and ``chunks``: per chunk its
    ``index``, ``start``, ``count``, ``job_id``, ``status``, ``error``, ``attempts``
    (its jobs) and timing. A resubmitted chunk is represented by its newest job; a chunk
    that left no job (never submitted) has ``status`` ``NOT_SUBMITTED``. Such chunks are
    listed up to ``listed_missing`` of them; ``not_listed`` counts the rest (the set's
    size is a tag, so it is never walked: only chunks found are)."""
    ordered = sorted(jobs, key=lambda j: j.get("creation_date") or "")
    newest: dict[int, tuple[dict[str, Any], int, int]] = {}
    attempts: Counter[int] = Counter()
    for job in ordered:
        chunk = _chunk(job)
        if chunk is not None:
            newest[chunk[0]] = (job, chunk[1], chunk[2])
            attempts[chunk[0]] += 1
    n_jobs, n_experiments = _set_size(ordered)
    found = sorted(newest)
    total = max(n_jobs, found[-1] + 1 if found else 0)
    missing, n_missing = _gaps(found, total, listed_missing)
    chunks: list[dict[str, Any]] = [
        {
            "index": index,
            "start": None,
            "count": None,
            "job_id": None,
            "status": NOT_SUBMITTED,
            "error": None,
            "attempts": 0,
        }
        for index in missing
    ]
    for index in found:
        job, start, count = newest[index]
        chunks.append(
            {
                "index": index,
                "start": start,
                "count": count,
                "job_id": job["id"],
                "status": job["status"],
                "error": (job.get("error") or {}).get("message"),
                "attempts": attempts[index],
                **timing(job),
            }
        )
    chunks.sort(key=lambda c: c["index"])
    statuses = Counter(c["status"] for c in chunks if c["job_id"] is not None)
    if n_missing:
        statuses[NOT_SUBMITTED] = n_missing
    first = ordered[0] if ordered else {}
    return {
        "id": set_id,
        "name": _set_name(first) if first else None,
        "backend": first.get("backend"),
        "created": first.get("creation_date"),
        "tags": user_tags(first.get("tags") or ()),
        "jobs": total,
        "experiments": n_experiments or sum(newest[i][2] for i in found),
        "experiments_done": sum(c["count"] or 0 for c in chunks if c["status"] == DONE),
        "statuses": dict(sorted(statuses.items())),
        "done": n_missing == 0 and all(c["status"] in FINAL_STATUSES for c in chunks),
        "chunks": chunks,
        "not_listed": n_missing - len(missing),
    }
