"""What ``qdispatch serve`` can be told: :class:`ServiceConfig`, read by the CLI and by
:func:`~qdispatch.server.app.create_app`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cpus import usable_cpus
from .workermemory import MIN_WORKER_MEMORY_MB, default_worker_memory_mb, max_limit_mb

#: ``serve --dask-cluster`` kinds → the dask-jobqueue class that makes the cluster (module,
#: name). ``local-jobqueue`` runs its "batch jobs" as local processes (dask-jobqueue's own
#: test cluster): for trying the setup on one machine.
JOBQUEUE_CLUSTERS: dict[str, tuple[str, str]] = {
    "slurm": ("dask_jobqueue", "SLURMCluster"),
    "pbs": ("dask_jobqueue", "PBSCluster"),
    "sge": ("dask_jobqueue", "SGECluster"),
    "lsf": ("dask_jobqueue", "LSFCluster"),
    "htcondor": ("dask_jobqueue", "HTCondorCluster"),
    "oar": ("dask_jobqueue", "OARCluster"),
    "moab": ("dask_jobqueue", "MoabCluster"),
    "local-jobqueue": ("dask_jobqueue.local", "LocalCluster"),
}


@dataclass
class ServiceConfig:
    """Everything ``qdispatch serve`` can be told."""

    db: Path
    host: str = "127.0.0.1"
    port: int = 8000
    #: Local worker processes; by default the CPUs this process may use (``--workers
    #: auto``: its affinity mask and cgroup quota, as a Slurm allocation sets them).
    workers: int = field(default_factory=usable_cpus)
    executor: str = "local"
    scheduler_address: str | None = None
    #: ``--executor dask``: start this kind of dask-jobqueue cluster (a key of
    #: ``JOBQUEUE_CLUSTERS``) instead of connecting to ``scheduler_address``, and scale its
    #: workers from the queue between these bounds (in Dask workers)
    dask_cluster: str | None = None
    dask_min_workers: int = 0
    dask_max_workers: int = 4
    #: ``--dask-cluster`` without TLS (by default the cluster makes a temporary CA).
    dask_insecure: bool = False
    threads_per_worker: int = 1
    #: MB of data each local worker process may use (``RLIMIT_DATA``; a job needing more
    #: fails with ``memory_limit_exceeded`` and its worker is replaced); 0: no limit.
    #: ``None``: 80% of the machine's memory (or its cgroup's limit) shared among the
    #: workers, at least 1024 (docs/service.md, "Worker memory").
    worker_memory_mb: int | None = None
    #: Per-user QUEUED + RUNNING jobs; 0 (or ``None``) is unlimited.
    max_active_jobs: int | None = 1000
    #: Bytes one user's jobs may store (inputs, results, events; 0: no limit). A user at
    #: it can submit again once they delete jobs or the retention sweeps some: without it
    #: one user's finished jobs could fill the disk under everyone's.
    max_user_store_bytes: int = 16 * 1024**3
    max_request_bytes: int = 64 * 1024 * 1024
    #: A body larger than this (as sent or once inflated) is "big": it takes an upload
    #: slot while it is read and inflated, and its inflating and parsing run off the event
    #: loop. Smaller ones cost the loop at most this much work each.
    big_body_bytes: int = 1024 * 1024
    #: Big bodies being read or inflated at once, all users together (503 service_busy).
    max_uploads: int = 8
    #: Big bodies being read or inflated at once by one user (429 upload_limit).
    max_uploads_per_user: int = 2
    #: A request body must arrive at least this fast, after a grace period (408
    #: request_timeout): a stalled or trickling upload frees its connection and its slot.
    body_min_rate: int = 128 * 1024
    body_grace_seconds: float = 10.0
    #: No piece of a request body for this long is 408 too (0: no limit): the average
    #: rate alone lets a fast burst buy minutes of stalling while holding an upload slot.
    body_idle_seconds: float = 30.0
    #: A connection whose request headers are not in after this long is closed.
    header_timeout: float = 10.0
    #: Open connections and requests in progress at once; beyond them new requests are
    #: answered 503 (uvicorn's ``limit_concurrency``). The open files limit is raised to fit.
    max_connections: int = 4096
    #: Event streams (``WS /stream``, the dashboard's ``/ui/stream``) one user may hold
    #: open at once (429 stream_limit): streams are long-lived connections, so without a
    #: per-user bound one user could hold every one of ``max_connections``.
    max_streams_per_user: int = 256
    #: Requests per second one user may make, sustained (0: no limit), and how many at
    #: once beyond that (429 rate_limited).
    rate_limit: float = 100.0
    rate_burst: int = 1000
    #: Results larger than this are not inlined in the stream's result event (the client
    #: fetches them with ``GET /jobs/{id}/results``).
    stream_inline_result_bytes: int = 1024 * 1024
    #: Shots of one job summed over what it runs (circuits x parameter sets x shots).
    max_job_shots: int = 30_000_000
    #: A job's result, as it is encoded before it is stored (uncompressed).
    max_result_bytes: int = 128 * 1024 * 1024
    #: A job's interim results and log lines together, as stored; later ones are dropped
    #: (0: no limit).
    max_job_event_bytes: int = 64 * 1024 * 1024
    #: Memory a process checking a job's inputs (program params, a Qobj's QPY
    #: experiments) may take beyond what it holds once started; inputs that do not decode
    #: within it are refused (400). Decoded params are at most 256 MiB of payloads plus the
    #: objects built from them: 2 GiB is room for any honest job.
    check_memory_bytes: int = 2 * 1024**3
    #: Processes checking inputs at once (each a spawned interpreter with qiskit, ~150 MB).
    #: One user's checks hold at most half of them (at least one) at once.
    check_processes: int = 2
    #: Submissions of one user whose inputs are being checked or wait to be (429
    #: check_limit beyond; 0: no limit): one user's slow checks delay only that user. 16 is
    #: twice what one client sends at once (``submit_many``'s concurrency: 8).
    max_checks_per_user: int = 16
    #: The share of the workers whose free slots go to dedicated sessions' jobs first.
    dedicated_share: float = 0.5
    #: A session's ``max_time`` when it asks for none, and the most it may ask for.
    session_max_time: float = 3600.0
    session_max_time_ceiling: float = 8 * 3600.0
    #: An open session with no job queued or running for this long is closed.
    session_idle_timeout: float = 300.0
    heartbeat_seconds: float = 10.0
    max_attempts: int = 3
    #: Sharding (docs/service.md, "Sharding"): a sampler or estimator job runs as up to
    #: as many shards as there are free slots and pubs, each a run of whole pubs of at
    #: least this many of its estimated executions, balanced by executions; 0 never shards.
    shard_min_pubs: int = 64
    #: A sampler or estimator job of more pubs than this runs unsharded: its pubs'
    #: executions are neither kept nor read (``programs.sharding.SHARD_MAX_PUBS``, this
    #: default, says why; not imported: it would bring qiskit into the config).
    shard_max_pubs: int = 20_000
    #: On SIGTERM/SIGINT, seconds the running jobs get to finish before they are requeued.
    drain_timeout: float = 20.0
    #: seconds a job may run on a worker before it is stopped (``None``: no limit)
    job_time_limit: float | None = 3600.0
    #: Retention: finished jobs (with their events, inputs, results and tags) that ended
    #: longer ago than this many seconds are deleted by the service (``None``: kept).
    retention: float | None = None
    #: The store's size cap (SQLite's ``max_page_count``); past it new work is refused
    #: with 507 ``storage_full`` as on a full disk (``None``: the disk is the limit).
    max_store_bytes: int | None = None
    state_file: Path | None = None
    local_user: str | None = None
    idle_timeout: float | None = None
    programs_dir: Path | None = None
    #: TLS: the certificate chain and private key (PEM) the service serves HTTPS/WSS with
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    #: plain HTTP on a non-loopback address, for a TLS-terminating proxy in front
    plaintext: bool = False
    #: use a store on a network filesystem (NFS, Lustre, GPFS…) despite WAL's hazards there
    allow_network_fs: bool = False
    #: A bearer token that may read ``GET /metrics`` (besides operator tokens); for a
    #: Prometheus server that should hold no user's token. ``None``: operators only.
    metrics_token: str | None = None
    #: The dashboard (``/ui``): how long a browser's login lasts, and how many logins the
    #: service holds at once (a new one beyond ends the oldest).
    ui_login_seconds: float = 8 * 3600.0
    ui_max_logins: int = 10_000
    #: Failed dashboard logins per client address: refilled per minute, burst deep; past
    #: them a login is refused with 429 before its token is looked up.
    ui_login_failures_per_minute: float = 10.0
    ui_login_failure_burst: int = 20
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A limit that cannot hold is refused at start, not found out by the first user.
        if self.shard_min_pubs < 0:
            raise ValueError("shard_min_pubs must be 0 (never shard) or more")
        if self.shard_max_pubs < 0:
            raise ValueError("shard_max_pubs must be 0 (never shard) or more")
        if self.max_active_jobs is not None and self.max_active_jobs < 0:
            raise ValueError("max_active_jobs must be 0 (unlimited) or more")
        # Written as a range, so that NaN (no comparison holds) is refused too.
        if not 256 * 1024 * 1024 <= self.check_memory_bytes <= max_limit_mb() << 20:
            raise ValueError(
                "--check-memory-mb (check_memory_bytes) must be at least 256 MiB and at most "
                f"{max_limit_mb()} MB (1 TiB, or the machine's memory if more), "
                f"got {self.check_memory_bytes / 2**20:g} MB"
            )
        if not 1 <= self.check_processes <= 64:
            raise ValueError(f"check_processes must be 1 to 64, got {self.check_processes}")
        if self.max_checks_per_user < 0:
            raise ValueError("max_checks_per_user must be 0 (unlimited) or more")
        if self.max_job_shots < 1 or self.max_result_bytes < 1:
            raise ValueError("max_job_shots and max_result_bytes must be positive")
        if not 0.0 <= self.dedicated_share <= 1.0:
            raise ValueError(f"dedicated_share must be in [0, 1], got {self.dedicated_share}")
        if not 0 < self.session_max_time <= self.session_max_time_ceiling:
            raise ValueError("session_max_time must be positive and at most its ceiling")
        if self.session_idle_timeout <= 0:
            raise ValueError("session_idle_timeout must be positive")
        if self.retention is not None and self.retention <= 0:
            raise ValueError("retention must be positive (or None: keep every job)")
        if self.max_store_bytes is not None and self.max_store_bytes < 1024 * 1024:
            raise ValueError("max_store_bytes must be at least 1 MiB (or None: no cap)")
        if self.ui_login_seconds <= 0 or self.ui_max_logins < 1:
            raise ValueError("ui_login_seconds and ui_max_logins must be positive")
        if self.ui_login_failures_per_minute <= 0 or self.ui_login_failure_burst < 1:
            raise ValueError("ui_login_failures_per_minute and its burst must be positive")
        if self.worker_memory_mb is None:
            self.worker_memory_mb = default_worker_memory_mb(self.workers)
        if self.worker_memory_mb != 0 and not (
            MIN_WORKER_MEMORY_MB <= self.worker_memory_mb <= max_limit_mb()
        ):
            raise ValueError(
                "--worker-memory-mb (worker_memory_mb) must be 0 (no limit) or at least "
                f"{MIN_WORKER_MEMORY_MB} (a worker holds about 250 MB before any job) and at "
                f"most {max_limit_mb()} (1 TiB, or the machine's memory if more), "
                f"got {self.worker_memory_mb}"
            )
        self._check_dask()

    def _check_dask(self) -> None:
        if self.executor == "dask" and not (self.scheduler_address or self.dask_cluster):
            raise ValueError(
                "--executor dask needs --scheduler ADDRESS (a running Dask scheduler) or "
                "--dask-cluster KIND (a dask-jobqueue cluster started by the service)"
            )
        if self.dask_cluster is not None and self.dask_cluster not in JOBQUEUE_CLUSTERS:
            kinds = ", ".join(JOBQUEUE_CLUSTERS)
            raise ValueError(f"unknown --dask-cluster {self.dask_cluster!r} (one of {kinds})")
        if self.dask_cluster is not None and self.scheduler_address:
            raise ValueError("--dask-cluster starts its own scheduler: drop --scheduler")
        if self.dask_cluster is not None and self.executor != "dask":
            raise ValueError("--dask-cluster needs --executor dask")
        if not 0 <= self.dask_min_workers <= self.dask_max_workers or self.dask_max_workers < 1:
            raise ValueError(
                "--dask-min-workers and --dask-max-workers need 0 <= min <= max and max >= 1"
            )
        if not 0.0 <= self.drain_timeout < float("inf"):
            raise ValueError(f"drain_timeout must be 0 or more seconds, got {self.drain_timeout}")

    @property
    def active_job_limit(self) -> int | None:
        """``max_active_jobs``, with ``None`` for unlimited (0 or ``None``)."""
        return self.max_active_jobs or None

    @property
    def tls(self) -> bool:
        """Whether the service itself speaks TLS."""
        return self.ssl_certfile is not None

    @property
    def url(self) -> str:
        """The service's base URL (IPv6 addresses in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def plaintext_refusal(self) -> str | None:
        """Why the service must not start as configured: plain HTTP on a non-loopback
        address (tokens, circuits and results would cross the network in clear) unless
        the operator said ``--plaintext``; ``None`` when it may start."""
        if self.tls or self.loopback or self.plaintext:
            return None
        return (
            f"refusing to serve plain HTTP on {self.host}: tokens, circuits and results "
            "would cross the network in clear. Give --ssl-certfile CERT --ssl-keyfile KEY, "
            "or --plaintext if a TLS-terminating proxy is in front of this service"
        )

    @property
    def loopback(self) -> bool:
        """Whether the service listens on a loopback address only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
