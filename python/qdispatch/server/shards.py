"""One primitive job on every worker: the state of a job that runs as shards
(docs/service.md, "Sharding"). The scheduler owns the queues and the slots; this module
says when a job is sharded, and keeps, per sharded job, what its shards have returned,
what each has cost and how much of the job's time limit is left.

The rules:

- **When.** A job of the built-in ``sampler`` or ``estimator`` is split when it is
  dispatched, by :func:`plan`: into at most as many shards as there are free slots and
  as it has pubs, each a run of consecutive pubs (a pub is never split, no shard is
  empty) holding about the same share of the job's executions (each pub's, written down
  by the submission's check: its parameter sets, times its measurement settings for the
  estimator), and each at least ``shard_min_pubs`` executions; fewer shards when the
  pubs cannot be cut so (one pub holding most of the work), none when fewer than two.
  Its first shard takes the slot the job was given; the others wait at the head of the
  owner's queue, so fair share ranks each like a job of the owner's (another user with
  fewer jobs running goes first).
- **Faults.** A shard that comes back lost (its worker died, its executor lost it, or it
  was stopped by anything but the job's own end) is queued again, the job's shards
  sharing one budget of reruns: ``max_attempts`` less the job's attempts so far (what an
  unsharded job gets). With the budget spent, the next lost shard fails the job. A shard
  that comes back stopped because the job was cancelled ends nothing more: the job is
  CANCELLED already. A shard that fails otherwise fails the job, and its other shards
  are cancelled. A cancel of the job cancels every shard.
- **Bound.** The job's attempts are at most ``max_attempts`` (a restart requeues the
  whole job, counting one), and the ``k``-th may rerun at most ``max_attempts - k``
  shards, each at most the job's executions: a job causes at most ``max_attempts *
  (max_attempts + 1) / 2`` times its executions (6x for the default 3), and without a
  restart ``max_attempts`` times, as an unsharded job.
- **Time limit.** The job's time limit bounds the sum of its shards' run times (what
  the job would have run on one worker), whatever ran in parallel.
- **The result** is the pubs' results in pub order (:func:`~.programs.sharding.merge`),
  stored once, when the last shard is in; nothing of a partial run is stored, so a
  service that dies mid-job requeues the job and reruns its shards.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .programs import ProgramRef
from .programs.sharding import Part, shardable

#: The default of ``--shard-min-pubs``: no shard gets fewer estimated executions than
#: this (0: never shard).
SHARD_MIN_PUBS = 64


@dataclass(frozen=True)
class ShardSpan:
    """One shard's pubs ``[start, stop)`` and their estimated executions."""

    start: int
    stop: int
    executions: int


class _Prefix:
    """Executions of the first ``j`` pubs, for pubs given as ``(executions, pubs)`` runs."""

    def __init__(self, runs: list[tuple[int, int]]) -> None:
        self.weights = [w for w, _ in runs]
        self.pubs = [0, *itertools.accumulate(c for _, c in runs)]
        self.executions = [0, *itertools.accumulate(w * c for w, c in runs)]

    def __call__(self, j: int) -> int:
        r = min(bisect.bisect_right(self.pubs, j) - 1, len(self.weights) - 1)
        return self.executions[r] + (j - self.pubs[r]) * self.weights[r]

    def nearest(self, target: float) -> int:
        """The ``j`` whose executions are nearest ``target`` (the lower on a tie)."""
        r = min(bisect.bisect_right(self.executions, target) - 1, len(self.weights) - 1)
        j = self.pubs[r] + int((target - self.executions[r]) // self.weights[r])
        j = min(j, self.pubs[-1])
        if j < self.pubs[-1] and self(j + 1) - target < target - self(j):
            j += 1
        return j


def plan(
    program: ProgramRef | None,
    pub_runs: list[tuple[int, int]] | None,
    free_slots: int,
    min_pubs: int,
) -> list[ShardSpan]:
    """The shards a job should run as when it is dispatched with ``free_slots`` free
    (counting the one it takes), its pubs' executions given as ``(executions, pubs)``
    runs: consecutive, non-empty runs of pubs in pub order, each of at least
    ``min_pubs`` executions, with executions as even as the pubs allow. An empty list
    means not sharded (fewer than two shards would do, or nothing says the pubs)."""
    if program is None or min_pubs <= 0 or not pub_runs or not shardable(program):
        return []
    prefix = _Prefix(pub_runs)
    n, total = prefix.pubs[-1], prefix.executions[-1]
    best: list[ShardSpan] = []
    for count in range(min(free_slots, n, total // min_pubs), 1, -1):
        spans = _split(prefix, count)
        if any(s.executions < min_pubs for s in spans):
            continue
        # The longest shard is the job's time: fewer shards only if no slower.
        if not best or max(s.executions for s in spans) <= max(s.executions for s in best):
            best = spans
    return best


def _split(prefix: _Prefix, count: int) -> list[ShardSpan]:
    """``count`` consecutive non-empty shards, each cut nearest an even share of the
    executions its predecessors left (so one heavy pub does not skew the others)."""
    n, total = prefix.pubs[-1], prefix.executions[-1]
    cuts = [0]
    for i in range(1, count):
        done = prefix(cuts[-1])
        cut = prefix.nearest(done + (total - done) / (count - i + 1))
        cuts.append(min(max(cut, cuts[-1] + 1), n - (count - i)))
    cuts.append(n)
    return [ShardSpan(a, b, prefix(b) - prefix(a)) for a, b in itertools.pairwise(cuts)]


@dataclass
class ShardedJob:
    """A job running as ``count`` shards. ``parent`` is the scheduler's record of the
    job itself (it holds no slot: the shards do)."""

    job_id: str
    owner: str
    program: ProgramRef
    inputs: bytes
    spans: list[ShardSpan]
    parent: Any  # the scheduler's _Running of the job, holding no slot
    tier: int
    attempt: int  # which of the job's attempts this run is (1 for its first)
    parts: dict[int, Part] = field(default_factory=dict)
    reruns: int = 0  # shards queued again after a lost run, each counting an attempt
    running: dict[int, Any] = field(default_factory=dict)  # shard → its _Running
    seconds: float = 0.0  # run time of the shards that finished
    result_bytes: int = 0  # the shards' replies so far, as the workers sent them
    timings: dict[str, float] = field(default_factory=dict)
    ended: bool = False
    _timer: asyncio.TimerHandle | None = None

    @property
    def count(self) -> int:
        """How many shards the job runs as."""
        return len(self.spans)

    def may_rerun(self, max_attempts: int) -> bool:
        """Whether a lost shard may run again: the job's attempts, counting each shard
        rerun as one, stay within ``max_attempts``."""
        return self.attempt + self.reruns < max_attempts

    @property
    def done(self) -> bool:
        """Whether every shard has returned its part."""
        return len(self.parts) == self.count

    def finished(
        self, index: int, part: Part, seconds: float, timings: dict[str, float] | None
    ) -> None:
        """Shard ``index`` returned ``part`` after ``seconds`` on its worker."""
        self.parts[index] = part
        self.seconds += seconds
        for step, value in (timings or {}).items():
            self.timings[step] = self.timings.get(step, 0.0) + value

    def used(self, now: float) -> float:
        """Run time so far: the finished shards' and that of the shards on workers."""
        return self.seconds + sum(now - r.started for r in self.running.values() if r.on_worker)

    def arm(self, limit: float | None, expire: Callable[[ShardedJob], None]) -> None:
        """(Re)schedule the time limit's check for when the shards on workers now would
        use the rest of the job's ``limit``; call again whenever a shard starts or ends."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if limit is None or self.ended:
            return
        on_workers = sum(1 for r in self.running.values() if r.on_worker)
        if not on_workers:
            return
        left = limit - self.used(time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, left / on_workers), expire, self
        )

    def over(self, limit: float | None) -> bool:
        """Whether the job has used its whole ``limit`` (a small tolerance for timers)."""
        return limit is not None and self.used(time.monotonic()) >= limit - 1e-3

    def end(self) -> None:
        """The job is over (done, failed, cancelled): no more shards start."""
        self.ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
