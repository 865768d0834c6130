"""One primitive job on every worker: the state of a job that runs as shards
(docs/service.md, "Sharding"). The scheduler owns the queues and the slots; this module
says when a job is sharded, and keeps, per sharded job, what its shards have returned,
what each has cost and how much of the job's time limit is left.

The rules:

- **When.** A job of the built-in ``sampler`` or ``estimator`` is split when it is
  dispatched, into ``min(free slots, n_experiments // shard_min_pubs)`` shards, if that
  is 2 or more (``n_experiments`` is the job's estimated executions: its pubs when they
  have no parameters). Its first shard takes the slot the job was given; the others wait
  at the head of the owner's queue, so fair share ranks each like a job of the owner's
  (another user with fewer jobs running goes first).
- **Faults.** A shard whose worker died (or that its executor lost) is queued again, up
  to ``max_attempts`` runs of that shard; a shard that fails otherwise fails the job, and
  its other shards are cancelled. A cancel of the job cancels every shard.
- **Time limit.** The job's time limit bounds the sum of its shards' run times (what
  the job would have run on one worker), whatever ran in parallel.
- **The result** is the pubs' results in pub order (:func:`~.programs.sharding.merge`),
  stored once, when the last shard is in; nothing of a partial run is stored, so a
  service that dies mid-job requeues the job and reruns its shards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .programs import ProgramRef
from .programs.sharding import Part, shardable

#: The default of ``--shard-min-pubs``: a job with fewer estimated executions per shard
#: than this is not split further (0: never shard).
SHARD_MIN_PUBS = 64


def shard_count(
    program: ProgramRef | None, n_experiments: int, free_slots: int, min_pubs: int
) -> int:
    """How many shards a job should run as when it is dispatched with ``free_slots``
    free (counting the one it takes): 1 means not sharded."""
    if program is None or min_pubs <= 0 or not shardable(program):
        return 1
    count = min(free_slots, n_experiments // min_pubs)
    return count if count >= 2 else 1


@dataclass
class ShardedJob:
    """A job running as ``count`` shards. ``parent`` is the scheduler's record of the
    job itself (it holds no slot: the shards do)."""

    job_id: str
    owner: str
    program: ProgramRef
    inputs: bytes
    count: int
    parent: Any  # the scheduler's _Running of the job, holding no slot
    tier: int
    parts: dict[int, Part] = field(default_factory=dict)
    tries: dict[int, int] = field(default_factory=dict)  # runs started, per shard
    running: dict[int, Any] = field(default_factory=dict)  # shard → its _Running
    seconds: float = 0.0  # run time of the shards that finished
    result_bytes: int = 0  # the shards' replies so far, as the workers sent them
    timings: dict[str, float] = field(default_factory=dict)
    ended: bool = False
    _timer: asyncio.TimerHandle | None = None

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
