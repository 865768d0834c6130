"""The bound on the pubs a sharded job may have (``--shard-max-pubs``, docs/service.md,
"Sharding"): each pub's executions are written down at submission and read back and cut
at each dispatch on the service's event loop, so a job of more pubs than the bound keeps
none and runs unsharded, with the right results; at the bound, what is kept, read and cut
is at most one run per pub; a job kept before the bound with more pubs is read no
further. And a sharded job started at its submission uses the inputs it came with."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import qdispatch
from qdispatch import Sampler
from qdispatch.constants import DONE
from qdispatch.server.programs import BUILTIN, ProgramRef
from qdispatch.server.programs.sharding import SHARD_MAX_PUBS, pub_runs, read_pub_runs
from qdispatch.server.scheduler import Scheduler
from qdispatch.server.shards import plan
from qdispatch.server.store import Job, NewJob, Store
from qdispatch.server.stream import Hub
from support import ServiceProcess, wait_final
from test_sharding import HeldExecutor, deterministic, expected_counts

SAMPLER = ProgramRef("sampler", BUILTIN, "qdispatch.server.programs.sampler")


def test_a_job_of_more_pubs_than_the_bound_runs_unsharded(tmp_path: Path) -> None:
    svc = ServiceProcess(
        tmp_path, "--workers", "2", "--shard-min-pubs", "4", "--shard-max-pubs", "10"
    ).start()
    try:
        client = svc.client()
        big = [deterministic(i) for i in range(11)]
        at_bound = [deterministic(i) for i in range(10)]
        with qdispatch.connect(svc.url, token=svc.token) as service:
            sampler = Sampler(mode=service.backend("aer_simulator"))
            over = sampler.run(big, shots=20)
            over_counts = [pub.data.meas.get_counts() for pub in over.result()]
            assert over_counts == expected_counts(big, 20)
            # Unsharded: a sharded job sends one interim result per shard, this none.
            assert over.interim_results() == []
            within = sampler.run(at_bound, shots=20)
            within_counts = [pub.data.meas.get_counts() for pub in within.result()]
            assert within_counts == expected_counts(at_bound, 20)
            assert [p["shards_done"] for p in within.interim_results()] == [1, 2]
            ids = over.job_id(), within.job_id()
        assert all(wait_final(client, job_id)["status"] == DONE for job_id in ids)
    finally:
        svc.stop()
    store = Store(svc.db)
    try:
        # Nothing per pub was kept for the job over the bound.
        assert store.pub_runs(ids[0]) is None
        assert store.pub_runs(ids[1]) == pub_runs([1] * 10)
    finally:
        store.close()


def test_what_is_kept_read_and_cut_at_the_bound_is_at_most_a_run_per_pub() -> None:
    # The worst case: no two neighbouring pubs alike, so a run per pub.
    alternating = [1 + i % 2 for i in range(SHARD_MAX_PUBS)]
    stored = pub_runs(alternating)
    runs = read_pub_runs(stored)
    assert runs is not None
    assert len(runs) == SHARD_MAX_PUBS
    assert sum(pubs for _, pubs in runs) == SHARD_MAX_PUBS
    spans = plan(SAMPLER, runs, 16, 64)
    assert len(spans) == 16
    assert spans[0].start == 0
    assert spans[-1].stop == SHARD_MAX_PUBS
    # One pub more (kept before the bound, or under a larger one): not sharded.
    assert read_pub_runs(pub_runs([*alternating, 1])) is None
    assert read_pub_runs(pub_runs([3] * (SHARD_MAX_PUBS + 1))) is None  # a single run
    assert read_pub_runs(pub_runs([1, 2] * 3), max_pubs=5) is None
    assert read_pub_runs(pub_runs([1, 2] * 3), max_pubs=6) == [(1, 1), (2, 1)] * 3
    # A million runs are refused by their size alone, before they are parsed.
    hostile = b"[" + b"[1,1],[2,1]," * 500_000 + b"not even JSON"
    assert read_pub_runs(hostile) is None


class CountingStore(Store):
    """A store that records which jobs' inputs were read from it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.inputs_read: list[str] = []

    def inputs(self, job_id: str) -> bytes:
        self.inputs_read.append(job_id)
        return super().inputs(job_id)


def _job(store: Store, pubs: int) -> tuple[Job, bytes]:
    inputs = b'{"pubs": []}'
    new = NewJob(
        owner="ann",
        backend="aer_simulator",
        kind="program",
        inputs=inputs,
        n_experiments=pubs,
        shots=1,
        n_instructions=0,
        program_id="sampler",
        pub_runs=pub_runs([1] * pubs),
    )
    job, _ = store.create_job(new)
    return job, inputs


def test_the_scheduler_reads_no_more_pubs_than_its_bound(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        store = CountingStore(tmp_path / "jobs.db")
        executor = HeldExecutor(capacity=3, time_limit=3600.0)
        sched = Scheduler(
            store,
            Hub(lambda *_: True),
            executor,
            programs=lambda _: SAMPLER,
            shard_min_pubs=4,
            shard_max_pubs=50,
        )
        await sched.start()
        try:
            # Kept with 100 pubs' executions (before the bound): it runs whole.
            whole, _ = _job(store, 100)
            sched.submit(whole)
            # 40 pubs: two shards (two slots left), from the inputs given at submission.
            sharded, inputs = _job(store, 40)
            sched.submit(sharded, inputs)
            for _ in range(200):
                if len(executor.held) == 3:
                    break
                await asyncio.sleep(0.05)
            return {"held": sorted(executor.held), "read": list(store.inputs_read)}
        finally:
            await sched.stop()
            store.close()

    seen = asyncio.run(scenario())
    jobs = sorted(seen["held"])
    assert len(jobs) == 3, jobs
    assert sum("#" not in key for key in jobs) == 1  # the 100-pub job, whole
    assert sum("#" in key for key in jobs) == 2  # the 40-pub job's two shards
    # The sharded job's inputs came with its submission; only the whole one read them.
    shard_owner = next(key for key in jobs if "#" in key).split("#")[0]
    assert shard_owner not in seen["read"]
