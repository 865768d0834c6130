"""The job manager: ``IBMQJobManager``, ``ManagedJobSet``, ``ManagedJob``, ``ManagedResults``.

Hand it 100,000 circuits: it splits them into jobs of at most the backend's
``max_circuits`` (and of at most the service's request size), serializes every chunk,
submits the chunks concurrently (the native client releases the GIL; a chunk refused for
the user's active-job limit waits for a job to finish and goes on), follows all jobs on the
one pushed status stream, fetches each result as soon as its job finishes, and presents
them as one result.

**How a set is found again.** Every job of a set carries the tags

- ``qdispatch_jobset:<set id>``,
- ``qdispatch_job:<job index>:<first experiment>:<number of experiments>``,
- ``qdispatch_jobset_size:<number of jobs>:<number of experiments>``,

and is named ``<set name>_<job index>_``. ``retrieve_job_set(set_id, service)`` rebuilds
the set from the service alone, in any process, including chunks that failed or were
cancelled (a chunk that was resubmitted is represented by its newest job).
"""

from __future__ import annotations

import bisect
import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from qiskit.circuit import QuantumCircuit
from qiskit.providers import JobStatus
from qiskit.result import Result

from .. import _native
from ..constants import job_status
from ..exceptions import (
    IBMQBackendApiError,
    IBMQBackendJobLimitError,
    IBMQJobApiError,
    IBMQJobManagerInvalidStateError,
    IBMQJobManagerJobNotFound,
    IBMQJobManagerTimeoutError,
    IBMQJobManagerUnknownJobSet,
    IBMQManagedResultDataNotAvailable,
)
from ..models import updated_tags

if TYPE_CHECKING:
    from ..backend import QDispatchBackend
    from ..job import IBMQJob
    from ..qobj import QasmQobj
    from ..service import QDispatchService

SET_TAG = "qdispatch_jobset:"
JOB_TAG = "qdispatch_job:"
SIZE_TAG = "qdispatch_jobset_size:"
_INTERNAL = (SET_TAG, JOB_TAG, SIZE_TAG)
# Serialized chunks stay this far under the service's request limit (headers, envelope).
_SIZE_MARGIN = 0.9


class ManagedJob:
    """Job managed by the Job Manager: one chunk of a set's experiments."""

    def __init__(self, start_index: int, experiments_count: int, job: IBMQJob | None = None):
        self.start_index = start_index
        self.experiments_count = experiments_count
        self.end_index = start_index + experiments_count - 1
        self.job = job
        self.submit_error: Exception | None = None
        self.future: Future[None] | None = None
        self.job_index = 0
        self._raw_result: bytes | None = None
        self._result: Result | None = None
        self._counts: list[dict[str, int] | None] | None = None

    def __repr__(self) -> str:
        job = self.job.job_id() if self.job else None
        return (
            f"<ManagedJob {self.job_index}: experiments {self.start_index}-{self.end_index}, "
            f"job {job}, submit_error={self.submit_error!r}>"
        )

    def submit(
        self,
        circuits: QuantumCircuit | Sequence[QuantumCircuit],
        job_name: str,
        backend: QDispatchBackend,
        executor: ThreadPoolExecutor,
        submit_lock: Any,
        job_share_level: str | None = None,
        job_tags: Sequence[str] | None = None,
        **run_config: Any,
    ) -> None:
        """Submit the job (on ``executor``; ``future`` says when it is submitted).

        ``submit_lock`` serializes waiting for a free slot when the service answers that
        the user's active-job limit is reached.
        """
        from ..assembler import circuits_to_qobj_json

        qobj = circuits_to_qobj_json(circuits, backend, **backend.run_options(**run_config))
        self.submit_qobj(qobj, job_name, backend, executor, submit_lock, job_share_level, job_tags)

    def submit_qobj(
        self,
        qobj: bytes,
        job_name: str,
        backend: QDispatchBackend,
        executor: ThreadPoolExecutor,
        submit_lock: Any,
        job_share_level: str | None = None,
        job_tags: Sequence[str] | None = None,
    ) -> None:
        """Like :meth:`submit`, for a chunk already serialized."""
        self.future = executor.submit(
            self._submit, qobj, job_name, backend, submit_lock, job_share_level, job_tags
        )

    def _submit(
        self,
        qobj: bytes,
        job_name: str,
        backend: QDispatchBackend,
        submit_lock: Any,
        job_share_level: str | None,
        job_tags: Sequence[str] | None,
    ) -> None:
        self.submit_error = None
        while True:
            try:
                self.job = backend.submit_qobj(qobj, job_name, job_share_level, job_tags)
                return
            except IBMQBackendJobLimitError:
                # Never fail a set for the limit: wait for some active job, then go on.
                with submit_lock:
                    _wait_for_a_free_slot(backend.service)
            except Exception as exc:  # recorded; the other chunks go on
                self.submit_error = exc
                return

    def status(self) -> JobStatus | None:
        """Query the server for job status; ``None`` if the job was never submitted or the
        query failed."""
        if self.job is None:
            return None
        try:
            return self.job.status()
        except IBMQJobApiError:
            return None

    def result(
        self, timeout: float | None = None, partial: bool = False, refresh: bool = False
    ) -> Result | None:
        """Return the result of the job, or ``None`` if it could not be retrieved.

        Raises:
            IBMQJobTimeoutError: If the job does not return results before ``timeout``.
        """
        if self.job is None:
            return None
        if self._result is not None and not refresh:
            return self._result
        raw = self._fetch(timeout, partial, refresh)
        if raw is None:
            return None
        self._result = Result.from_dict(orjson.loads(raw))
        return self._result

    def _fetch(self, timeout: float | None, partial: bool, refresh: bool = False) -> bytes | None:
        """The job's result JSON, waiting for the job; ``None`` if it has none to give."""
        from ..exceptions import IBMQJobTimeoutError

        if self.job is None:
            return None
        if self._raw_result is not None and not refresh:
            return self._raw_result
        try:
            self.job.wait_for_final_state(timeout=timeout)
        except IBMQJobTimeoutError:
            raise
        status = self.job.status()
        if status is JobStatus.CANCELLED or (status is JobStatus.ERROR and not partial):
            return None
        try:
            self._raw_result = self.job._api.raw_call(
                "GET", f"/jobs/{self.job.job_id()}/results", error=IBMQJobApiError
            )
        except IBMQJobApiError:
            return None
        self._counts = None
        return self._raw_result

    def counts(self, index: int) -> dict[str, int]:
        """Counts of experiment ``index`` of this job, parsed natively on first use."""
        if self._counts is None:
            if self._raw_result is None:
                raise IBMQManagedResultDataNotAvailable(
                    f"no result for experiments {self.start_index}-{self.end_index}"
                )
            self._counts = _native.counts_from_result(self._raw_result)
        counts = self._counts[index]
        if counts is None:
            raise IBMQManagedResultDataNotAvailable(
                f"experiment {self.start_index + index} has no counts"
            )
        return counts

    def cancel(self) -> None:
        """Attempt to cancel the job (a finished job is left as it is)."""
        from ..exceptions import IBMQJobInvalidStateError

        if self.job is None:
            return
        with contextlib.suppress(IBMQJobInvalidStateError):
            self.job.cancel()

    def error_message(self) -> str | None:
        """Provide details about the reason of failure: an error report if the job failed
        (or could not be submitted), ``None`` otherwise."""
        if self.submit_error is not None:
            return f"submission failed: {self.submit_error}"
        if self.job is None:
            return None
        status = self.status()
        if status is JobStatus.CANCELLED:
            return f"Job {self.job.job_id()} was cancelled."
        return self.job.error_message()

    def qobj(self) -> QasmQobj | None:
        """Return the Qobj for this job, or ``None`` if it could not be retrieved."""
        if self.job is None:
            return None
        try:
            qobj = self.job.qobj()
        except IBMQJobApiError:
            return None
        from ..qobj import QasmQobj

        return qobj if isinstance(qobj, QasmQobj) else None


def _wait_for_a_free_slot(service: QDispatchService) -> None:
    """Block until one of the user's active jobs finishes (or a few seconds pass)."""
    try:
        active = service.call(
            "GET", "/jobs", query=[("status", "QUEUED"), ("status", "RUNNING"), ("limit", "1000")]
        )
    except Exception:
        time.sleep(1.0)
        return
    ids = [j["id"] for j in active.get("jobs", [])]
    if ids:
        service.client.wait_any_final(ids, 5.0)
    else:
        time.sleep(0.2)


class ManagedResults:
    """The results of a :class:`ManagedJobSet`, addressed by global experiment index,
    experiment name or circuit. Counts stay in the jobs' result bytes and are parsed
    natively, job by job, when first asked for."""

    def __init__(self, job_set: ManagedJobSet, backend_name: str, success: bool) -> None:
        self._job_set = job_set
        self.backend_name = backend_name
        self.success = success
        self._names: dict[str, int] | None = None

    def __repr__(self) -> str:
        return (
            f"<ManagedResults of job set {self._job_set.job_set_id()}: "
            f"{self._job_set.n_experiments} experiments, success={self.success}>"
        )

    def _locate(self, experiment: int | str | QuantumCircuit) -> tuple[ManagedJob, int]:
        if isinstance(experiment, QuantumCircuit):
            experiment = experiment.name
        if isinstance(experiment, str):
            if self._names is None:
                self._names = self._job_set._experiment_names()
            if experiment not in self._names:
                raise IBMQJobManagerJobNotFound(f"no experiment named '{experiment}' in this set")
            experiment = self._names[experiment]
        mjob, index = self._job_set._locate(int(experiment))
        if mjob._raw_result is None:
            why = mjob.error_message() or "its job has no result"
            raise IBMQManagedResultDataNotAvailable(
                f"no result for experiment {experiment} (job index {mjob.job_index}, "
                f"experiments {mjob.start_index}-{mjob.end_index}): {why}"
            )
        return mjob, index

    def _result(self, mjob: ManagedJob) -> Result:
        if mjob._result is None:
            assert mjob._raw_result is not None
            mjob._result = Result.from_dict(orjson.loads(mjob._raw_result))
        return mjob._result

    def data(self, experiment: int | str | QuantumCircuit) -> dict[str, Any]:
        """Get the raw data for an experiment."""
        mjob, index = self._locate(experiment)
        data: dict[str, Any] = self._result(mjob).data(index)
        return data

    def get_counts(
        self, experiment: int | str | QuantumCircuit | None = None
    ) -> dict[str, int] | list[dict[str, int]]:
        """Get the histogram data of an experiment; all experiments' if ``None``."""
        if experiment is None:
            return [self.get_counts(i) for i in range(self._job_set.n_experiments)]  # type: ignore[misc]
        mjob, index = self._locate(experiment)
        return mjob.counts(index)

    def get_memory(self, experiment: int | str | QuantumCircuit) -> list[str] | Any:
        """Get the sequence of memory states (readouts) for each shot."""
        mjob, index = self._locate(experiment)
        return self._result(mjob).get_memory(index)

    def get_statevector(
        self, experiment: int | str | QuantumCircuit, decimals: int | None = None
    ) -> Any:
        """Get the final statevector of an experiment."""
        mjob, index = self._locate(experiment)
        return self._result(mjob).get_statevector(index, decimals=decimals)

    def get_unitary(
        self, experiment: int | str | QuantumCircuit, decimals: int | None = None
    ) -> Any:
        """Get the final unitary of an experiment."""
        mjob, index = self._locate(experiment)
        return self._result(mjob).get_unitary(index, decimals=decimals)

    def combine_results(self) -> Result:
        """Combine the results of every job into one ``qiskit.result.Result``.

        Raises:
            IBMQManagedResultDataNotAvailable: If a job's result is not available.
        """
        merged: dict[str, Any] | None = None
        experiments: list[Any] = []
        for mjob in self._job_set.managed_jobs():
            if mjob._raw_result is None:
                why = mjob.error_message() or "its job has no result"
                raise IBMQManagedResultDataNotAvailable(
                    f"cannot combine: job index {mjob.job_index} (experiments "
                    f"{mjob.start_index}-{mjob.end_index}) has no result: {why}"
                )
            part = orjson.loads(mjob._raw_result)
            experiments.extend(part.get("results", []))
            if merged is None:
                merged = part
            merged["success"] = merged.get("success", True) and part.get("success", True)
        if merged is None:
            raise IBMQManagedResultDataNotAvailable("this job set has no jobs")
        merged["results"] = experiments
        merged["job_id"] = self._job_set.job_set_id()
        return Result.from_dict(merged)


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
        from ..assembler import circuits_to_qobj_json

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
            try:
                qobj = circuits_to_qobj_json(circuits[start : start + count], backend, **options)
            except Exception as exc:  # a bad chunk is recorded; the others go on
                chunks.append((start, count, exc))
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
        from ..job import IBMQJob

        service = backend.service
        outcomes = service.client.submit_many(envelopes, qobjs)
        for mjob, outcome in zip(mjobs, outcomes, strict=True):
            if isinstance(outcome, bytes):
                mjob.job = IBMQJob.from_info(backend, service, orjson.loads(outcome))
            else:
                mjob.submit_error = IBMQBackendApiError(
                    str(outcome.message), int(outcome.status), str(outcome.code)
                )

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
                qobj = mjob.job._api.raw_call("GET", f"/jobs/{mjob.job.job_id()}/qobj")
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
            return {c.name: i for i, c in reversed(list(enumerate(self._circuits)))}
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
        answer = backend.service.call("POST", "/jobs:status", orjson.dumps({"ids": ids}))
        found = answer["statuses"]
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
        client = backend.service.client
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = {
            m.job.job_id(): m
            for m in mjobs
            if m.job is not None and (refresh or m._raw_result is None)
        }
        done_exps = sum(
            m.experiments_count for m in mjobs if m.job is None or m.job.job_id() not in pending
        )
        report = _progress(progress, len(mjobs), self.n_experiments)
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
                for job_id in client.wait_any_final(sorted(pending), remaining):
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
        tags = [t for t in tags if not t.startswith(_INTERNAL)]
        for mjob in self.managed_jobs():
            if mjob.job is not None:
                internal = [t for t in mjob.job.tags() if t.startswith(_INTERNAL)]
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
        from ..job import IBMQJob

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
        self._tags = [t for t in first.tags() if not t.startswith(_INTERNAL)]
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


def _progress(
    progress: bool | Callable[[dict[str, int]], Any], jobs: int, experiments: int
) -> Callable[[int, int], None]:
    if not progress:
        return lambda done, exps: None
    if callable(progress):
        callback = progress

        def call(done: int, exps: int) -> None:
            if done >= 0:
                callback(
                    {
                        "jobs": jobs,
                        "done": done,
                        "experiments": experiments,
                        "experiments_done": exps,
                    }
                )

        return call
    from tqdm import tqdm

    bar = tqdm(total=experiments, unit="experiment", desc="job set")

    def update(done: int, exps: int) -> None:
        if done < 0:
            bar.close()
            return
        bar.n = exps
        bar.set_postfix(jobs=f"{done}/{jobs}")
        bar.refresh()

    return update


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
