"""Outcomes the store refused at shutdown, kept on disk until the next start: :class:`Spool`.

When the service stops (SIGTERM) while the store refuses to take a job's outcome (a lock
held past the busy timeout, an I/O error), the outcome is not dropped with the process:
it is written here, one file per job, in a directory beside the store (``jobs.db.spool/``,
mode 0700). Each file is written to a temporary name, synced and renamed into place, so a
file that exists is whole; it is private (0600: results are the users' data). The next
start reads every file and stores its outcome before any job is dispatched.

A file is one header line of JSON (what the scheduler needs to store the outcome), a
newline, then the result as the store keeps it (compressed), if there is one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

_SUFFIX = ".outcome"
# Job ids are the store's own (hex); anything else is no file of ours.
_JOB_ID = re.compile(r"[0-9a-f]{1,64}")


class Spool:
    """A directory of outcomes to store at the next start, one file per job."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _file(self, job_id: str) -> Path:
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.path / f"{job_id}{_SUFFIX}"

    def put(self, job_id: str, header: dict[str, Any], blob: bytes | None) -> Path:
        """Write ``job_id``'s outcome (``header`` and the stored form of its result) durably
        and atomically, replacing an earlier one; returns the file's path."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = self._file(job_id)
        tmp = self.path / f".{job_id}.tmp"
        tmp.unlink(missing_ok=True)  # O_CREAT keeps the mode of a file already there
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps({**header, "blob": blob is not None}) + b"\n")
                if blob is not None:
                    f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _sync_directory(self.path)
        return final

    def entries(self) -> Iterator[tuple[str, dict[str, Any], bytes | None]]:
        """Every spooled outcome: (job id, header, stored result or ``None``). A file that
        cannot be read is logged and left where it is, for an operator to look at."""
        if not self.path.is_dir():
            return
        for file in sorted(self.path.glob(f"*{_SUFFIX}")):
            job_id = file.name.removesuffix(_SUFFIX)
            if not _JOB_ID.fullmatch(job_id):
                continue
            try:
                raw = file.read_bytes()
                line, _, rest = raw.partition(b"\n")
                header = orjson.loads(line)
                if not isinstance(header, dict):
                    raise ValueError("the header is not a JSON object")
            except (OSError, ValueError) as exc:
                log.error("cannot read the spooled outcome %s (%s); left in place", file, exc)
                continue
            yield job_id, header, (rest if header.get("blob") else None)

    def remove(self, job_id: str) -> None:
        """Forget ``job_id``'s spooled outcome (stored, or overtaken by the job's end)."""
        self._file(job_id).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            _sync_directory(self.path)

    def __len__(self) -> int:
        if not self.path.is_dir():
            return 0
        return sum(1 for _ in self.path.glob(f"*{_SUFFIX}"))


def _sync_directory(path: Path) -> None:
    # The rename (or unlink) is durable only once the directory itself is synced.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
