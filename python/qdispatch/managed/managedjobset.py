"""``ManagedJobSet``: a set of managed jobs.

An instance is returned when you submit experiments using ``IBMQJobManager.run()``. It
provides methods that allow you to interact with the jobs as a single entity: for
example, ``results()`` for the results of all of the jobs, ``cancel()`` to cancel them.

``run`` splits the circuits into jobs of at most the backend's ``max_circuits`` (and of at
most the service's request size), serializes every chunk, and submits them all in one
native call; ``results`` fetches each job's result as soon as the job finishes.
"""

from __future__ import annotations

import bisect
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qiskit.circuit import QuantumCircuit
from qiskit.providers import JobStatus

from ..assembler import AssembleError, circuits_to_qobj_json
from ..constants import job_status
from ..exceptions import (
    IBMQBackendApiError,
    IBMQBackendValueError,
    IBMQJobManagerInvalidStateError,
    IBMQJobManagerJobNotFound,
    IBMQJobManagerTimeoutError,
    IBMQJobManagerUnknownJobSet,
)
from ..job import IBMQJob
from ..models import updated_tags
from .managedjob import ManagedJob
from .managedresults import ManagedResults
from .utils import INTERNAL_TAGS, JOB_TAG, SET_TAG, SIZE_TAG, progress_reporter

if TYPE_CHECKING:
    from ..backend import QDispatchBackend
    from ..qobj import QasmQobj
    from ..service import QDispatchService

__all__ = ["ManagedJobSet"]

# Serialized chunks stay this far under the service's request limit (headers, envelope).
_SIZE_MARGIN = 0.9


def _first_unsendable(
    circuits: Sequence[Any], start: int, count: int, backend: QDispatchBackend
) -> tuple[int | None, Exception | None]:
    """The first item of ``circuits[start : start + count]`` that is not a circuit, or is
    wider than the backend (its global index, and the error it fails with), else
    ``(None, None)``: the service would refuse the chunk holding it, chunk-mates and all."""
    width = backend.num_qubits
    for index in range(start, start + count):
        item = circuits[index]
        if not isinstance(item, QuantumCircuit):
            kind = f"{type(item).__module__}.{type(item).__name__}"
            return index, IBMQBackendValueError(
                f"circuit {index}: a {kind}, not a QuantumCircuit; only circuits can run"
            )
        if item.num_qubits > width:
            return index, IBMQBackendValueError(
                f"circuit {index}: circuit '{item.name}' has {item.num_qubits} qubits, but "
                f"backend '{backend.name}' has {width}"
            )
    return None, None


class ManagedJobSet:
    """A set of managed jobs, handled as one: run, statuses, results, cancel, retrieve."""

    def __init__(self, name: str | None = None, short_id: str | None = None) -> None:
        self._name = name or datetime.now().isoformat(timespec="seconds")
        self._id = short_id or uuid.uuid4().hex[:12]
        self._managed_jobs: list[ManagedJob] = []
        self._starts: list[int] = []
        self._backend: QDispatchBackend | None = None
        self._circuits: list[QuantumCircuit] | None = None
        self._tags: list[str] = []
        self._share_level: str | None = None
        self._run_config: dict[str, Any] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.n_experiments = 0

    def __repr__(self) -> str:
        return f"<ManagedJobSet {self._id} '{self._name}': {len(self._managed_jobs)} jobs>"

    # -- identity -------------------------------------------------------------------------

    def job_set_id(self) -> str:
        """Return the ID of this job set."""
        return self._id

    def name(self) -> str:
        """Return the name of this job set."""
        return self._name

    def tags(self) -> list[str]:
        """Return the tags assigned to this job set."""
        return list(self._tags)

    def _job_tags(self, index: int, start: int, count: int, n_jobs: int) -> list[str]:
        return [
            *self._tags,
            f"{SET_TAG}{self._id}",
            f"{JOB_TAG}{index}:{start}:{count}",
            f"{SIZE_TAG}{n_jobs}:{self.n_experiments}",
        ]

    def _job_name(self, index: int) -> str:
        return f"{self._name}_{index}_"

    # -- running --------------------------------------------------------------------------

    def run(
        self,
        experiment_list: QuantumCircuit | Sequence[QuantumCircuit],
        backend: QDispatchBackend,
        executor: ThreadPoolExecutor,
        job_share_level: str | None = None,
        job_tags: Sequence[str] | None = None,
        max_experiments_per_job: int | None = None,
        **run_config: Any,
    ) -> None:
        """Execute a list of circuits on a backend, split into jobs.

        Raises:
            IBMQJobManagerInvalidStateError: If the set was already run.
        """
        if self._managed_jobs:
            raise IBMQJobManagerInvalidStateError(
                f"job set {self._id} has already been submitted; use a new set"
            )
        circuits = (
            [experiment_list]
            if isinstance(experiment_list, QuantumCircuit)
            else list(experiment_list)
        )
        if not circuits:
            raise IBMQJobManagerInvalidStateError("no experiments to run")
        self._backend = backend
        self._circuits = circuits
        self._tags = list(job_tags or [])
        self._share_level = job_share_level
        self._run_config = dict(run_config)
        self._executor = executor
        self.n_experiments = len(circuits)
        size = min(backend.max_circuits, max_experiments_per_job or backend.max_circuits)
        limit = int(backend.service.info()["max_request_bytes"] * _SIZE_MARGIN)
        options = backend.run_options(**run_config)

        chunks: list[tuple[int, int, bytes | Exception]] = []

        def serialize(start: int, count: int) -> None:
            bad, error = _first_unsendable(circuits, start, count, backend)
            if bad is None:
                try:
                    qobj = circuits_to_qobj_json(
                        circuits[start : start + count], backend, **options
                    )
                except AssembleError as exc:
                    if exc.index is None:
                        chunks.append((start, count, exc))
                        return
                    bad = start + exc.index
                    error = AssembleError(f"circuit {bad}: {exc.detail}", bad, exc.detail)
                except Exception as exc:  # a bad chunk is recorded; the others go on
                    chunks.append((start, count, exc))
                    return
            if bad is not None:
                # The circuit that cannot be sent fails alone, a chunk of its own; the
                # circuits around it are sent as usual.
                if bad > start:
                    serialize(start, bad - start)
                chunks.append((bad, 1, error or IBMQBackendValueError(f"circuit {bad}")))
                if bad + 1 < start + count:
                    serialize(bad + 1, start + count - bad - 1)
                return
            if len(qobj) > limit and count > 1:  # too big for one request: halve it
                half = count // 2
                serialize(start, half)
                serialize(start + half, count - half)
                return
            chunks.append((start, count, qobj))

        for start in range(0, len(circuits), size):
            serialize(start, min(size, len(circuits) - start))
        envelopes: list[bytes] = []
        qobjs: list[bytes] = []
        waiting: list[ManagedJob] = []
        for index, (start, count, payload) in enumerate(chunks):
            mjob = ManagedJob(start, count)
            mjob.job_index = index
            self._managed_jobs.append(mjob)
            self._starts.append(start)
            if isinstance(payload, Exception):
                mjob.submit_error = payload
                continue
            tags = self._job_tags(index, start, count, len(chunks))
            envelopes.append(backend.envelope(self._job_name(index), job_share_level, tags))
            qobjs.append(payload)
            waiting.append(mjob)
        batch = executor.submit(self._submit_batch, backend, waiting, envelopes, qobjs)
        for mjob in waiting:
            mjob.future = batch

    @staticmethod
    def _submit_batch(
        backend: QDispatchBackend,
        mjobs: list[ManagedJob],
        envelopes: list[bytes],
        qobjs: list[bytes],
    ) -> None:
        """All chunks in one native call: concurrent POSTs, the GIL released, each chunk's
        outcome kept in its place; the active-job limit is waited out, never failed on."""
        service = backend.service
        outcomes = service.api.submit_jobs(envelopes, qobjs)
        for mjob, outcome in zip(mjobs, outcomes, strict=True):
            if isinstance(outcome, Exception):
                mjob.submit_error = outcome
            else:
                mjob.job = IBMQJob.from_info(backend, service, outcome)

    def _wait_submitted(self) -> None:
        for mjob in self._managed_jobs:
            if mjob.future is not None:
                mjob.future.result()

    def resubmit_failed(
        self, experiments: Sequence[QuantumCircuit] | None = None, **run_config: Any
    ) -> list[ManagedJob]:
        """Rerun the chunks that failed to submit, failed or were cancelled, as new jobs
        under the same set and job indices. ``experiments`` (the whole, corrected list) is
        used for their circuits if given; otherwise the circuits this set ran, or the Qobj
        the service stored for the failed job. Returns the managed jobs resubmitted."""
        self._wait_submitted()
        backend = self._require_backend()
        executor = self._executor or ThreadPoolExecutor(8, thread_name_prefix="qd-submit")
        self._executor = executor
        source = list(experiments) if experiments is not None else self._circuits
        if source is not None and len(source) != self.n_experiments:
            raise IBMQJobManagerInvalidStateError(
                f"experiments has {len(source)} circuits; this set has {self.n_experiments}"
            )
        if experiments is not None:
            self._circuits = source  # the corrected list is the set's from now on
        options = {**self._run_config, **run_config}
        redone: list[ManagedJob] = []
        for mjob in self._managed_jobs:
            status = mjob.status()
            if mjob.submit_error is None and status not in (JobStatus.ERROR, JobStatus.CANCELLED):
                continue
            tags = self._job_tags(
                mjob.job_index, mjob.start_index, mjob.experiments_count, len(self._managed_jobs)
            )
            name = self._job_name(mjob.job_index)
            mjob._raw_result = mjob._result = mjob._counts = None
            if source is not None:
                chunk = source[mjob.start_index : mjob.end_index + 1]
                try:
                    mjob.submit(
                        chunk,
                        name,
                        backend,
                        executor,
                        self._lock,
                        self._share_level,
                        tags,
                        **options,
                    )
                except Exception as exc:
                    mjob.submit_error = exc
                    continue
            elif mjob.job is not None:
                qobj = backend.service.api.job_qobj(mjob.job.job_id())
                mjob.submit_qobj(qobj, name, backend, executor, self._lock, self._share_level, tags)
            else:
                continue
            redone.append(mjob)
        for mjob in redone:
            if mjob.future is not None:
                mjob.future.result()
        return redone

    def _require_backend(self) -> QDispatchBackend:
        if self._backend is None:
            raise IBMQJobManagerInvalidStateError(
                f"job set {self._id} has not been run or retrieved yet"
            )
        return self._backend

    # -- the jobs -------------------------------------------------------------------------

    def managed_jobs(self) -> list[ManagedJob]:
        """Return the managed jobs in this set."""
        self._wait_submitted()
        return list(self._managed_jobs)

    def jobs(self) -> list[IBMQJob | None]:
        """Return jobs in this set (``None`` for a chunk that could not be submitted)."""
        return [mjob.job for mjob in self.managed_jobs()]

    def _locate(self, experiment: int) -> tuple[ManagedJob, int]:
        if not 0 <= experiment < self.n_experiments:
            raise IBMQJobManagerJobNotFound(
                f"experiment {experiment} is not in this set (0-{self.n_experiments - 1})"
            )
        position = bisect.bisect_right(self._starts, experiment) - 1
        mjob = self._managed_jobs[position]
        return mjob, experiment - mjob.start_index

    def job(self, experiment: QuantumCircuit | int | str) -> tuple[IBMQJob | None, int]:
        """Retrieve the job used to submit the specified experiment and its index in it.

        Args:
            experiment: the circuit, its name, or its index in the set.
        """
        self._wait_submitted()
        if isinstance(experiment, (QuantumCircuit, str)):
            name = experiment.name if isinstance(experiment, QuantumCircuit) else experiment
            names = self._experiment_names()
            if name not in names:
                raise IBMQJobManagerJobNotFound(f"no experiment named '{name}' in this set")
            experiment = names[name]
        mjob, index = self._locate(experiment)
        return mjob.job, index

    def _experiment_names(self) -> dict[str, int]:
        if self._circuits is not None:
            return {
                c.name: i
                for i, c in reversed(list(enumerate(self._circuits)))
                if isinstance(c, QuantumCircuit)
            }
        names: dict[str, int] = {}
        for mjob in self._managed_jobs:
            qobj = mjob.qobj()
            if qobj is None:
                continue
            for i, exp in enumerate(qobj.to_dict()["experiments"]):
                names.setdefault(exp.get("header", {}).get("name", ""), mjob.start_index + i)
        return names

    def statuses(self) -> list[JobStatus | None]:
        """Return the status of each job in this set (one bulk request); ``None`` for a
        chunk that was never submitted."""
        mjobs = self.managed_jobs()
        ids = [m.job.job_id() for m in mjobs if m.job is not None]
        if not ids:
            return [None] * len(mjobs)
        backend = self._require_backend()
        found = backend.service.api.job_statuses(ids)
        return [
            job_status(found[m.job.job_id()]["status"])
            if m.job and m.job.job_id() in found
            else None
            for m in mjobs
        ]

    def report(self, detailed: bool = True) -> str:
        """Return a report on current job statuses."""
        statuses = self.statuses()
        counts: dict[str, int] = {}
        for status in statuses:
            key = status.name if status is not None else "NOT SUBMITTED"
            counts[key] = counts.get(key, 0) + 1
        lines = [
            f"Job set name: {self._name}",
            f"          ID: {self._id}",
            f"        tags: {self._tags}",
            "Summary report:",
            f"       Total jobs: {len(statuses)}",
            f"  Successful jobs: {counts.get('DONE', 0)}",
            f"      Failed jobs: {counts.get('ERROR', 0) + counts.get('NOT SUBMITTED', 0)}",
            f"   Cancelled jobs: {counts.get('CANCELLED', 0)}",
            f"     Running jobs: {counts.get('RUNNING', 0)}",
            f"     Pending jobs: {counts.get('QUEUED', 0)}",
        ]
        if detailed:
            lines.append("\nDetail report:")
            for mjob, status in zip(self._managed_jobs, statuses, strict=True):
                lines.append(f"  experiments: {mjob.start_index}-{mjob.end_index}")
                lines.append(f"    job index: {mjob.job_index}")
                lines.append(f"    job ID: {mjob.job.job_id() if mjob.job else None}")
                lines.append(f"    name: {self._job_name(mjob.job_index)}")
                lines.append(f"    status: {status.name if status else 'NOT SUBMITTED'}")
                if status is JobStatus.QUEUED and mjob.job is not None:
                    lines.append(f"    queue position: {mjob.job.queue_position()}")
                error = mjob.error_message() if status in (None, JobStatus.ERROR) else None
                if error:
                    lines.append(f"    error: {error}")
        return "\n".join(lines)

    def error_messages(self) -> str | None:
        """Provide details about job failures: one line per failed, cancelled or
        unsubmitted chunk (experiments, job index, job ID, reason); ``None`` if none."""
        lines = []
        for mjob, status in zip(self.managed_jobs(), self.statuses(), strict=True):
            if mjob.submit_error is None and status not in (JobStatus.ERROR, JobStatus.CANCELLED):
                continue
            job_id = mjob.job.job_id() if mjob.job else None
            lines.append(
                f"experiments {mjob.start_index}-{mjob.end_index}, job index {mjob.job_index}, "
                f"job ID {job_id}: {mjob.error_message()}"
            )
        return "\n".join(lines) if lines else None

    def qobjs(self) -> list[QasmQobj | None]:
        """Return the Qobjs for the jobs in this set."""
        return [mjob.qobj() for mjob in self.managed_jobs()]

    def cancel(self) -> None:
        """Cancel all jobs in this job set."""
        for mjob in self.managed_jobs():
            mjob.cancel()

    # -- results --------------------------------------------------------------------------

    def results(
        self,
        timeout: float | None = None,
        partial: bool = False,
        refresh: bool = False,
        progress: bool | Callable[[dict[str, int]], Any] = False,
    ) -> ManagedResults:
        """Return the results of the jobs, fetching each as soon as its job finishes.

        Args:
            timeout: Seconds to wait for the whole set (one timeout, shared by all jobs).
            partial: If ``True``, use the partial results of failed jobs.
            refresh: If ``True``, fetch results again even if already fetched.
            progress: ``True`` for a progress bar; or a callable, called with
                ``{"jobs", "done", "experiments", "experiments_done"}`` as jobs finish.

        Raises:
            IBMQJobManagerTimeoutError: If the results are not all available in time.
        """
        mjobs = self.managed_jobs()
        backend = self._require_backend()
        api = backend.service.api
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = {
            m.job.job_id(): m
            for m in mjobs
            if m.job is not None and (refresh or m._raw_result is None)
        }
        done_exps = sum(
            m.experiments_count for m in mjobs if m.job is None or m.job.job_id() not in pending
        )
        report = progress_reporter(progress, len(mjobs), self.n_experiments)
        report(len(mjobs) - len(pending), done_exps)
        fetchers = ThreadPoolExecutor(4, thread_name_prefix="qd-fetch")
        fetching: list[Future[bytes | None]] = []
        try:
            while pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise IBMQJobManagerTimeoutError(
                        f"timed out after {timeout} s waiting for {len(pending)} of "
                        f"{len(mjobs)} jobs of job set {self._id}"
                    )
                for job_id in api.wait_any_final(sorted(pending), remaining):
                    mjob = pending.pop(job_id)
                    fetching.append(fetchers.submit(mjob._fetch, 0, partial, refresh))
                    done_exps += mjob.experiments_count
                    report(len(mjobs) - len(pending), done_exps)
            for future in fetching:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                future.result(timeout=remaining)
        except TimeoutError as exc:
            raise IBMQJobManagerTimeoutError(
                f"timed out after {timeout} s fetching results of job set {self._id}"
            ) from exc
        finally:
            fetchers.shutdown(wait=False, cancel_futures=True)
            report(-1, -1)
        success = all(m._raw_result is not None for m in mjobs) and all(
            m.job is not None and m.job.status() is JobStatus.DONE for m in mjobs
        )
        return ManagedResults(self, backend.name, success)

    def as_completed(
        self, timeout: float | None = None, partial: bool = False
    ) -> Iterator[ManagedJob]:
        """Yield each managed job of this set the moment its job finishes, in the order
        they finish, its result already fetched: ``mjob.result()`` answers at once
        (``None`` for a chunk that failed, was cancelled or was never submitted; with
        ``partial``, a failed job's partial result), and ``mjob.start_index`` to
        ``mjob.end_index`` say which of the set's experiments it holds. Chunks that
        could not be submitted and jobs already fetched come first. A sweep can be
        analysed as it runs; :meth:`results` afterwards fetches nothing again.

        Args:
            timeout: Seconds to wait for the whole set, from the first ``next()``.
            partial: If ``True``, fetch the partial results of failed jobs.

        Raises:
            IBMQJobManagerTimeoutError: If jobs are still unfinished after ``timeout``.
        """
        mjobs = self.managed_jobs()
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = {m.job.job_id(): m for m in mjobs if m.job is not None}
        for mjob in mjobs:
            if mjob.job is None:
                yield mjob
        api = self._require_backend().service.api if pending else None
        while pending and api is not None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise IBMQJobManagerTimeoutError(
                    f"timed out after {timeout} s with {len(pending)} of {len(mjobs)} jobs "
                    f"of job set {self._id} unfinished"
                )
            for job_id in api.wait_any_final(sorted(pending), remaining):
                mjob = pending.pop(job_id)
                mjob.result(partial=partial)  # final already: one fetch, no wait
                yield mjob

    # -- names and tags -------------------------------------------------------------------

    def update_name(self, name: str) -> str:
        """Update the name of this job set (and of its jobs)."""
        for mjob in self.managed_jobs():
            if mjob.job is not None:
                mjob.job.update_name(f"{name}_{mjob.job_index}_")
        self._name = name
        return self._name

    def update_tags(
        self,
        replacement_tags: Sequence[str] | None = None,
        additional_tags: Sequence[str] | None = None,
        removal_tags: Sequence[str] | None = None,
    ) -> list[str]:
        """Update the tags assigned to this job set (and its jobs). The set's own
        bookkeeping tags are kept whatever is asked."""
        if replacement_tags is None and additional_tags is None and removal_tags is None:
            raise IBMQJobManagerInvalidStateError(
                "none of replacement_tags, additional_tags or removal_tags was given"
            )
        tags = updated_tags(self._tags, replacement_tags, additional_tags, removal_tags)
        tags = [t for t in tags if not t.startswith(INTERNAL_TAGS)]
        for mjob in self.managed_jobs():
            if mjob.job is not None:
                internal = [t for t in mjob.job.tags() if t.startswith(INTERNAL_TAGS)]
                mjob.job.update_tags(replacement_tags=tags + internal)
        self._tags = tags
        return list(self._tags)

    # -- retrieval ------------------------------------------------------------------------

    def retrieve_jobs(self, provider: QDispatchService, refresh: bool = False) -> None:
        """Retrieve previously submitted jobs in this set from the service.

        Raises:
            IBMQJobManagerUnknownJobSet: If no job of this set is found.
        """
        if self._managed_jobs and not refresh:
            return
        tagged = provider.jobs(limit=None, job_tags=[f"{SET_TAG}{self._id}"], descending=False)
        jobs = [job for job in tagged if isinstance(job, IBMQJob)]
        if not jobs:
            raise IBMQJobManagerUnknownJobSet(f"job set {self._id} not found")
        newest: dict[int, tuple[IBMQJob, int, int]] = {}
        n_experiments = 0
        for job in jobs:  # oldest first: a resubmitted chunk's newest job wins
            for tag in job.tags():
                if tag.startswith(JOB_TAG):
                    index, start, count = (int(x) for x in tag[len(JOB_TAG) :].split(":"))
                    newest[index] = (job, start, count)
                elif tag.startswith(SIZE_TAG):
                    n_experiments = int(tag[len(SIZE_TAG) :].split(":")[1])
        first = jobs[0]
        match = re.fullmatch(r"(.*)_\d+_", first.name() or "")
        self._name = match.group(1) if match else self._name
        self._tags = [t for t in first.tags() if not t.startswith(INTERNAL_TAGS)]
        self._backend = first.backend()
        self._circuits = None
        self.n_experiments = n_experiments
        self._managed_jobs, self._starts = [], []
        # Chunks that were never submitted left no job: rebuild them from the gaps.
        known = sorted((start, count, index, job) for index, (job, start, count) in newest.items())
        position = 0
        slots: list[tuple[int, int, IBMQJob | None]] = []
        for start, count, _, job in known:
            if start > position:
                slots.append((position, start - position, None))
            slots.append((start, count, job))
            position = start + count
        if position < n_experiments:
            slots.append((position, n_experiments - position, None))
        for i, (start, count, slot_job) in enumerate(slots):
            mjob = ManagedJob(start, count, slot_job)
            mjob.job_index = i
            if slot_job is not None:
                for tag in slot_job.tags():
                    if tag.startswith(JOB_TAG):
                        mjob.job_index = int(tag[len(JOB_TAG) :].split(":")[0])
            else:
                mjob.submit_error = IBMQBackendApiError(
                    f"experiments {start}-{start + count - 1} were never submitted"
                )
            self._managed_jobs.append(mjob)
            self._starts.append(start)
