"""What the job manager's modules share: the tags that find a set again, and progress."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import progress as _progress
from ..constants import INTERNAL_TAGS, JOB_TAG, SET_TAG, SIZE_TAG

# The tags every job of a set carries (the package's docstring has their form) are
# vocabulary the service's dashboard reads too: defined in constants.py.
__all__ = ["INTERNAL_TAGS", "JOB_TAG", "SET_TAG", "SIZE_TAG", "progress_reporter"]


def progress_reporter(
    progress: bool | Callable[[dict[str, int]], Any], jobs: int, experiments: int
) -> Callable[[int, int], None]:
    """What ``ManagedJobSet.results(progress=...)`` reports to, as ``(jobs done,
    experiments done)``, ``(-1, -1)`` at the end: nothing, the user's callable, or a
    tqdm progress bar."""
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
    bar = _progress.bar(experiments, "job set", unit="experiment")

    def update(done: int, exps: int) -> None:
        if done < 0:
            bar.close()
            return
        bar.n = exps
        bar.set_postfix(jobs=f"{done}/{jobs}")
        bar.refresh()

    return update
