"""``IBMQJobManager``: the Job Manager.

It splits a long list of experiments into jobs that fit the backend, submits them, and
presents them as one :class:`~qdispatch.managed.ManagedJobSet`; ``retrieve_job_set``
finds a set again from the service alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from qiskit.circuit import QuantumCircuit

from ..exceptions import IBMQJobManagerInvalidStateError
from .managedjobset import ManagedJobSet

if TYPE_CHECKING:
    from ..backend import QDispatchBackend
    from ..service import QDispatchService

__all__ = ["IBMQJobManager"]


class IBMQJobManager:
    """Job Manager: runs many circuits as sets of jobs, and finds the sets again."""

    def __init__(self, max_workers: int = 8) -> None:
        self._job_sets: list[ManagedJobSet] = []
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="qd-submit")

    def run(
        self,
        experiments: QuantumCircuit | Sequence[QuantumCircuit],
        backend: QDispatchBackend,
        name: str | None = None,
        max_experiments_per_job: int | None = None,
        job_share_level: str | None = None,
        job_tags: Sequence[str] | None = None,
        **run_config: Any,
    ) -> ManagedJobSet:
        """Execute a set of circuits on a backend, split into jobs submitted in parallel.

        Args:
            experiments: Circuits to run.
            backend: Backend to run them on.
            name: Name of the job set (default: the current date and time).
            max_experiments_per_job: At most this many experiments per job (the backend's
                ``max_circuits`` is the default and the upper bound).
            job_share_level: Share level of the jobs (``none``, ``project``, ``global``).
            job_tags: Tags for every job of the set.
            **run_config: Run options (``shots``, ``memory``, ``seed_simulator``…).

        Returns:
            The job set; ``results()`` waits for and merges the results.
        """
        if job_tags is not None and (
            isinstance(job_tags, str) or not all(isinstance(t, str) for t in job_tags)
        ):
            raise IBMQJobManagerInvalidStateError(
                f"job_tags must be a list of strings, got {job_tags!r}"
            )
        if max_experiments_per_job is not None and max_experiments_per_job < 1:
            raise IBMQJobManagerInvalidStateError("max_experiments_per_job must be at least 1")
        job_set = ManagedJobSet(name=name)
        job_set.run(
            experiments,
            backend,
            self._executor,
            job_share_level=job_share_level,
            job_tags=job_tags,
            max_experiments_per_job=max_experiments_per_job,
            **run_config,
        )
        self._job_sets.append(job_set)
        return job_set

    def job_sets(self, name: str | None = None) -> list[ManagedJobSet]:
        """Return the job sets of this manager, optionally only those called ``name``."""
        return [s for s in self._job_sets if name is None or s.name() == name]

    def report(self, detailed: bool = True) -> str:
        """Return a report on the statuses of all jobs managed by this manager."""
        parts = [f"Job sets: {len(self._job_sets)}"]
        parts += [s.report(detailed) for s in self._job_sets]
        return "\n\n".join(parts)

    def retrieve_job_set(
        self, job_set_id: str, provider: QDispatchService, refresh: bool = False
    ) -> ManagedJobSet:
        """Retrieve a previously submitted job set, from the service alone.

        Raises:
            IBMQJobManagerUnknownJobSet: If the job set cannot be found.
        """
        for job_set in self._job_sets:
            if job_set.job_set_id() == job_set_id:
                if refresh:
                    job_set.retrieve_jobs(provider, refresh=True)
                return job_set
        job_set = ManagedJobSet(short_id=job_set_id)
        job_set.retrieve_jobs(provider, refresh=refresh)
        self._job_sets.append(job_set)
        return job_set
