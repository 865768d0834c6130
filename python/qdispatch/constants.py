"""The job vocabulary, defined once: statuses, final states, share levels, session states,
and the time helpers every timestamp on the wire goes through.

Client and service both import from here (the service's store, the Rust stream keeps its
own copy of the final set in ``rust/client``), so a status name or a timestamp format
cannot drift between the two sides.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from qiskit.providers import JobStatus

# Job statuses as stored and sent. A FINAL status never changes again.
QUEUED = "QUEUED"
RUNNING = "RUNNING"
DONE = "DONE"
ERROR = "ERROR"
CANCELLED = "CANCELLED"
FINAL_STATUSES = frozenset({DONE, ERROR, CANCELLED})
ACTIVE_STATUSES = (QUEUED, RUNNING)

# The service's status names as qiskit's JobStatus; a status the client does not know
# (an older client, a newer service) reads as INITIALIZING.
JOB_STATUS: dict[str, JobStatus] = {
    QUEUED: JobStatus.QUEUED,
    RUNNING: JobStatus.RUNNING,
    DONE: JobStatus.DONE,
    ERROR: JobStatus.ERROR,
    CANCELLED: JobStatus.CANCELLED,
    "VALIDATING": JobStatus.VALIDATING,
    "INITIALIZING": JobStatus.INITIALIZING,
}
FINAL_JOB_STATUSES = frozenset(JOB_STATUS[s] for s in FINAL_STATUSES)

# Who besides its owner may see a job.
SHARE_LEVELS = ("none", "project", "global")

# Sessions: ``open`` takes jobs; ``closed`` takes no more but runs what it has queued;
# ``cancelled`` and ``expired`` have ended (their queued jobs were cancelled or failed).
SESSION_MODES = ("dedicated", "batch")
SESSION_OPEN = "open"
SESSION_CLOSED = "closed"
SESSION_CANCELLED = "cancelled"
SESSION_EXPIRED = "expired"
SESSION_STATES = (SESSION_OPEN, SESSION_CLOSED, SESSION_CANCELLED, SESSION_EXPIRED)


# The tags every job of a managed job set carries (``managed/``'s docstring has their
# form); the service's dashboard reads a set's chunks from them.
SET_TAG = "qdispatch_jobset:"
JOB_TAG = "qdispatch_job:"
SIZE_TAG = "qdispatch_jobset_size:"
INTERNAL_TAGS = (SET_TAG, JOB_TAG, SIZE_TAG)

# What one request may name; the service refuses more with 400 ``invalid_request``
# (docs/service.md, "Limits"). They bound what every listing, filter and event carries.
MAX_NAME_LENGTH = 1024  # a job's name, experiment id; also a name filter's pattern
MAX_TAGS = 100  # tags of one job
MAX_TAG_LENGTH = 256  # characters of one tag
MAX_CLIENT_INFO_ITEMS = 32
MAX_CLIENT_INFO_LENGTH = 1024  # characters of one client_info key or value
MAX_BULK_IDS = 1000  # job ids of one ``POST /jobs:status`` (the client pages longer lists)

#: C0 and C1 control characters and DEL. The service refuses them in every string a user
#: names and others are shown (job names, tags, experiment ids, client_info); the CLI
#: drops them from whatever it prints: a terminal acts on ESC sequences (OSC 8 links,
#: OSC 52 writes to the clipboard), not just shows them.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def job_status(name: str | None) -> JobStatus:
    """The service's status name as a :class:`~qiskit.providers.JobStatus`."""
    return JOB_STATUS.get(name or "", JobStatus.INITIALIZING)


def status_name(status: Any) -> str:
    """A ``JobStatus`` or a status name as the service's name (``"DONE"``)."""
    return str(getattr(status, "name", status)).upper()


def utcnow() -> str:
    """The current time as the ISO 8601 UTC string every timestamp on the wire uses."""
    return utc_iso(datetime.now(timezone.utc))


def utc_iso(when: datetime) -> str:
    """``when`` as the wire's ISO 8601 UTC string; a naive datetime is taken as local time,
    as users expect of ``datetime.now()``."""
    if when.tzinfo is None:
        when = when.astimezone()
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def local_time(value: str | datetime | None) -> datetime | None:
    """A wire timestamp (UTC ISO 8601) as an aware datetime in local time."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.astimezone()


# Aer options the service sets itself (threads, memory, placement, noise): a job's Qobj
# cannot set them (the worker drops them), so a backend's ``set_options`` refuses them.
SERVICE_RUN_OPTIONS = frozenset(
    {
        "max_parallel_threads",
        "max_parallel_experiments",
        "max_parallel_shots",
        "max_memory_mb",
        "max_job_size",
        "max_shot_size",
        "executor",
        "device",
        "noise_model",
        "accept_distributed_results",
        "num_threads_per_device",
        "mps_omp_threads",
        "cuStateVec_enable",
        "batched_shots_gpu",
        "blocking_enable",
        "blocking_qubits",
        "chunk_swap_buffer_qubits",
        "fusion_verbose",
    }
)
