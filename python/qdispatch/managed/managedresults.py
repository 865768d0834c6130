"""``ManagedResults``: results managed by the Job Manager.

Returned by ``ManagedJobSet.results()``: the results of every job of the set, addressed as
one job's would be (by experiment index, name or circuit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qiskit.circuit import QuantumCircuit
from qiskit.result import Result

from ..exceptions import IBMQJobManagerJobNotFound, IBMQManagedResultDataNotAvailable
from ..results import combine_result_json, result_from_json

if TYPE_CHECKING:
    from .managedjob import ManagedJob
    from .managedjobset import ManagedJobSet

__all__ = ["ManagedResults"]


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
            mjob._result = result_from_json(mjob._raw_result)
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
        parts: list[bytes] = []
        for mjob in self._job_set.managed_jobs():
            if mjob._raw_result is None:
                why = mjob.error_message() or "its job has no result"
                raise IBMQManagedResultDataNotAvailable(
                    f"cannot combine: job index {mjob.job_index} (experiments "
                    f"{mjob.start_index}-{mjob.end_index}) has no result: {why}"
                )
            parts.append(mjob._raw_result)
        if not parts:
            raise IBMQManagedResultDataNotAvailable("this job set has no jobs")
        return combine_result_json(parts, self._job_set.job_set_id())
