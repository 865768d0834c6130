"""``qdispatch serve``: the job service, its options, and what it checks before it binds
(the TLS files, the store's lock and filesystem, the open files limit). The web service
itself (uvicorn, FastAPI, the backends) loads only when ``serve`` runs."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..storelock import StoreBusyError, StoreLock
from .args import db_path, duration_arg, megabytes_arg

if TYPE_CHECKING:
    from ..server.config import ServiceConfig

__all__ = ["register"]


# A token in a query string (``?token=…``) is not accepted any more, but an old client may
# still send one: it must not reach a log (uvicorn logs WebSocket paths with their query).
_TOKEN_IN_QUERY = re.compile(r"(?i)([?&](?:access_)?token=)[^&\s\"]*")


class _RedactTokens(logging.Filter):
    """Replaces the value of ``token=`` query parameters in log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "token=" in text.lower():
            record.msg, record.args = _TOKEN_IN_QUERY.sub(r"\1[redacted]", text), None
        return True


def _tls_problem(certfile: str | None, keyfile: str | None) -> str | None:
    """Why ``--ssl-certfile``/``--ssl-keyfile`` cannot be used, checked before binding so
    the operator reads one line rather than a traceback from inside uvicorn."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        return "--ssl-certfile and --ssl-keyfile go together"
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot use --ssl-certfile {certfile} --ssl-keyfile {keyfile}: {exc}"
    return None


def _config(args: argparse.Namespace, db: Path, port: int) -> ServiceConfig:
    """The service's configuration from ``serve``'s arguments (``ValueError`` for a limit
    that cannot hold)."""
    from ..server.config import ServiceConfig  # noqa: PLC0415 - loads for `serve` only

    return ServiceConfig(
        db=db,
        host=args.host,
        port=port,
        workers=args.workers or _auto_workers(args.threads_per_worker),
        executor=args.executor,
        scheduler_address=args.scheduler,
        dask_cluster=args.dask_cluster,
        dask_min_workers=args.dask_min_workers,
        dask_max_workers=args.dask_max_workers,
        dask_insecure=args.dask_insecure,
        threads_per_worker=args.threads_per_worker,
        worker_memory_mb=args.worker_memory_mb,
        max_active_jobs=args.max_active_jobs,
        max_request_bytes=args.max_request_mb * 1024 * 1024,
        big_body_bytes=args.big_body_kb * 1024,
        max_uploads=args.max_uploads,
        max_uploads_per_user=args.max_uploads_per_user,
        body_min_rate=int(args.body_min_rate_kb * 1024),
        body_grace_seconds=args.body_grace,
        body_idle_seconds=args.body_idle_timeout,
        header_timeout=args.header_timeout,
        max_connections=args.max_connections,
        max_streams_per_user=args.max_streams_per_user,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        stream_inline_result_bytes=args.stream_inline_result_kb * 1024,
        max_job_shots=args.max_job_shots,
        max_result_bytes=int(args.max_result_mb * 1024 * 1024),
        max_job_event_bytes=int(args.max_job_events_mb * 1024 * 1024),
        check_memory_bytes=int(args.check_memory_mb * 1024 * 1024),
        check_processes=args.check_processes,
        max_checks_per_user=args.max_checks_per_user,
        dedicated_share=args.dedicated_share,
        session_max_time=args.session_max_time,
        session_max_time_ceiling=args.session_max_time_ceiling,
        session_idle_timeout=args.session_idle_timeout,
        heartbeat_seconds=args.heartbeat,
        max_attempts=args.max_attempts,
        shard_min_pubs=args.shard_min_pubs,
        shard_max_pubs=args.shard_max_pubs,
        drain_timeout=args.drain_timeout,
        job_time_limit=args.job_time_limit or None,
        retention=args.retention,
        max_store_bytes=int(args.max_store_mb * 1024 * 1024) if args.max_store_mb else None,
        max_user_store_bytes=int(args.max_user_store_mb * 1024 * 1024),
        idle_timeout=args.idle_timeout,
        programs_dir=Path(args.programs_dir).expanduser() if args.programs_dir else None,
        ssl_certfile=Path(args.ssl_certfile).expanduser() if args.ssl_certfile else None,
        ssl_keyfile=Path(args.ssl_keyfile).expanduser() if args.ssl_keyfile else None,
        plaintext=args.plaintext,
        allow_network_fs=args.allow_network_fs,
        metrics_token=args.metrics_token or None,
        ui_login_seconds=args.ui_login_hours * 3600.0,
        ui_max_logins=args.ui_max_logins,
        ui_login_failures_per_minute=args.ui_login_failures_per_minute,
        ui_login_failure_burst=args.ui_login_failure_burst,
    )


# Open files the service needs besides its connections: the store (and its WAL), the
# workers' pipes, the checker processes, the libraries it loads.
_FILES_BESIDES_CONNECTIONS = 256


def _auto_workers(threads_per_worker: int) -> int:
    """``--workers auto``: one worker per ``threads_per_worker`` CPUs this process may use."""
    from ..server.cpus import usable_cpus  # noqa: PLC0415 - loads for `serve` only

    return max(1, usable_cpus() // max(1, threads_per_worker))


def _workers_arg(text: str) -> int | None:
    # None is "auto", resolved by _config once --threads-per-worker is known.
    if text.strip().lower() == "auto":
        return None
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of workers, or auto")
    return workers


def _claim_store(db: Path, allow_network_fs: bool) -> StoreLock | str:
    """The store's lock, held until this process exits (one service per store), or why
    the service must not start: the store is on a network filesystem, or served already."""
    from ..server.filesystems import network_fs_refusal  # noqa: PLC0415 - `serve` only

    refusal = network_fs_refusal(db, allow_network_fs)
    if refusal:
        return refusal
    try:
        lock = StoreLock.acquire(db)
    except (StoreBusyError, OSError) as exc:
        return str(exc)
    lock.record()
    return lock


def _serve(args: argparse.Namespace) -> int:
    # The web service (uvicorn, FastAPI, the backends) loads for `serve` only: the other
    # commands start without it.
    import uvicorn  # noqa: PLC0415

    from ..server.app import create_app  # noqa: PLC0415
    from ..server.connections import (  # noqa: PLC0415
        header_deadline_protocol,
        raise_open_files_limit,
    )
    from ..server.shutdown import GracefulServer  # noqa: PLC0415

    db = db_path(args)
    problem = _tls_problem(args.ssl_certfile, args.ssl_keyfile)
    if problem:
        print(f"qdispatch serve: {problem}", file=sys.stderr)
        return 2
    try:
        refusal = _config(args, db, 0).plaintext_refusal()
    except ValueError as exc:
        refusal = str(exc)
    if refusal:
        print(f"qdispatch serve: {refusal}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        # Listening now, before the app starts: the state file announces the URL during
        # start-up, and a client that connects then waits in the backlog, not refused.
        sock.listen(2048)
    except OSError as exc:
        print(f"qdispatch serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    try:
        config = _config(args, db, port)
    except ValueError as exc:
        sock.close()
        print(f"qdispatch serve: {exc}", file=sys.stderr)
        return 2
    # Held (referenced here) while the server runs; the kernel drops it when we exit.
    store_lock = _claim_store(db, config.allow_network_fs)
    if isinstance(store_lock, str):
        sock.close()
        print(f"qdispatch serve: {store_lock}", file=sys.stderr)
        return 2
    if args.state_file:
        config.state_file = Path(args.state_file).expanduser()
    elif config.loopback:
        config.state_file = db.parent / "server.json"
    if config.programs_dir is not None and not config.programs_dir.is_dir():
        print(
            f"qdispatch serve: --programs-dir {config.programs_dir} is not a directory",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    # Room for every connection, plus the store, the workers' pipes and the libraries.
    open_files = raise_open_files_limit(config.max_connections + _FILES_BESIDES_CONNECTIONS)
    connections = min(config.max_connections, open_files - _FILES_BESIDES_CONNECTIONS)
    if connections < config.max_connections:
        print(
            f"qdispatch serve: the open files limit ({open_files}) allows "
            f"{max(connections, 0)} connections, not --max-connections {config.max_connections}",
            file=sys.stderr,
        )
        if connections < 16:
            return 2
    app = create_app(config)
    uvicorn_config = uvicorn.Config(
        app,
        http=header_deadline_protocol(config.header_timeout),
        limit_concurrency=connections,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        # uvicorn wraps the sockets it is handed (`run(sockets=...)`) with this context too.
        ssl_certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
        ssl_keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
    )
    # On SIGTERM/SIGINT: drain, requeue, spool (docs/service.md, "Faults").
    server = GracefulServer(uvicorn_config, app)
    # After uvicorn.Config, which installs uvicorn's logging configuration.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_RedactTokens())
    if config.plaintext and not config.loopback:
        print("qdispatch serve: plain HTTP (--plaintext): a TLS proxy must front it", flush=True)
    print(f"qdispatch service on {config.url} (store {db})", flush=True)
    server.run(sockets=[sock])
    store_lock.close()
    # 0 once every job is stored, requeued or spooled; 1 if an outcome was lost (or the
    # service never started).
    return 0 if server.clean else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` to ``qdispatch``'s sub-commands."""
    serve = sub.add_parser("serve", help="run the job service")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    serve.add_argument("--db", help="SQLite store (default: the user data directory)")
    serve.add_argument(
        "--workers",
        type=_workers_arg,
        default=None,
        help="local worker processes, or auto (default): the CPUs this process may use "
        "(affinity and cgroup quota, as a Slurm allocation sets them) / --threads-per-worker",
    )
    serve.add_argument(
        "--worker-memory-mb",
        type=int,
        default=None,
        help="MB of data each local worker may use; a job needing more fails with "
        "memory_limit_exceeded (default: 80%% of the machine's memory / --workers, at least "
        "1024; 0: no limit)",
    )
    serve.add_argument("--executor", choices=["local", "dask"], default="local")
    serve.add_argument("--scheduler", help="dask scheduler address, with --executor dask")
    serve.add_argument(
        "--dask-cluster",
        metavar="KIND",
        help="with --executor dask: start a dask-jobqueue cluster (slurm, pbs, sge, lsf, "
        "htcondor, oar, moab, local-jobqueue) configured by jobqueue.<kind>.* of the Dask "
        "config, its workers scaled from the queue",
    )
    serve.add_argument(
        "--dask-min-workers", type=int, default=0, help="--dask-cluster: workers kept when idle"
    )
    serve.add_argument(
        "--dask-max-workers", type=int, default=4, help="--dask-cluster: most workers at once"
    )
    serve.add_argument(
        "--dask-insecure",
        action="store_true",
        help="--dask-cluster: plain TCP instead of TLS (anyone who reaches the scheduler can "
        "run code in the service: only on a network no one else uses)",
    )
    serve.add_argument("--threads-per-worker", type=int, default=1, help="Aer threads per job")
    serve.add_argument(
        "--max-active-jobs",
        type=int,
        default=1000,
        help="per-user limit on queued + running jobs (0: unlimited)",
    )
    serve.add_argument("--max-request-mb", type=int, default=64, help="request size limit")
    serve.add_argument(
        "--big-body-kb",
        type=int,
        default=1024,
        help="bodies larger than this take an upload slot and are inflated off the loop",
    )
    serve.add_argument(
        "--max-uploads", type=int, default=8, help="big bodies read at once, in all (503)"
    )
    serve.add_argument(
        "--max-uploads-per-user", type=int, default=2, help="big bodies read at once, per user"
    )
    serve.add_argument(
        "--body-min-rate-kb",
        type=float,
        default=128,
        help="a request body must arrive at least this fast (KiB/s) after the grace (408)",
    )
    serve.add_argument(
        "--body-grace",
        type=float,
        default=10.0,
        help="seconds a request body may take before --body-min-rate-kb applies",
    )
    serve.add_argument(
        "--body-idle-timeout",
        type=float,
        default=30.0,
        help="seconds a request body may send nothing before it is cut (408; 0: no limit)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection may take to send its request headers before it is closed",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=4096,
        help="open connections and requests at once; beyond them requests get 503",
    )
    serve.add_argument(
        "--max-streams-per-user",
        type=int,
        default=256,
        help="event streams one user may hold open at once; beyond them 429 stream_limit "
        "(0: no limit)",
    )
    serve.add_argument(
        "--rate-limit", type=float, default=100.0, help="requests/s per user, sustained (0: off)"
    )
    serve.add_argument(
        "--rate-burst", type=int, default=1000, help="requests per user at once beyond the rate"
    )
    serve.add_argument(
        "--stream-inline-result-kb",
        type=int,
        default=1024,
        help="results larger than this are fetched over HTTP, not sent on the stream",
    )
    serve.add_argument(
        "--max-job-shots",
        type=int,
        default=30_000_000,
        help="shots of one job, summed over its circuits and parameter sets",
    )
    serve.add_argument("--max-result-mb", type=float, default=128, help="a job's result size limit")
    serve.add_argument(
        "--max-job-events-mb",
        type=float,
        default=64,
        help="a job's interim results and log lines, in all; later ones are dropped (0: none)",
    )
    serve.add_argument(
        "--check-memory-mb",
        type=megabytes_arg,
        default=2048,
        help="memory a process checking a job's inputs may take; inputs that do not decode "
        "within it are refused (at least 256)",
    )
    serve.add_argument(
        "--check-processes",
        type=int,
        default=2,
        help="processes checking job inputs at once; one user's checks hold at most half",
    )
    serve.add_argument(
        "--max-checks-per-user",
        type=int,
        default=16,
        help="submissions of one user being checked or waiting to be; beyond them 429 "
        "check_limit (0: no limit)",
    )
    serve.add_argument(
        "--shard-min-pubs",
        type=int,
        default=64,
        help="run a sampler/estimator job as shards on the free workers, each a run of whole "
        "pubs of at least this many estimated executions; 0: never shard",
    )
    serve.add_argument(
        "--shard-max-pubs",
        type=int,
        default=20_000,
        help="a sampler/estimator job of more pubs than this runs unsharded (the work of "
        "cutting it is linear in its pubs, on the service's event loop); 0: never shard",
    )
    serve.add_argument(
        "--dedicated-share",
        type=float,
        default=0.5,
        help="share of the workers dedicated sessions' jobs take ahead of others (0-1)",
    )
    serve.add_argument(
        "--session-max-time",
        type=float,
        default=3600.0,
        help="a session's max_time (seconds) when it asks for none",
    )
    serve.add_argument(
        "--session-max-time-ceiling",
        type=float,
        default=8 * 3600.0,
        help="the most max_time (seconds) a session may ask for",
    )
    serve.add_argument(
        "--session-idle-timeout",
        type=float,
        default=300.0,
        help="close an open session after this many seconds with no job queued or running",
    )
    serve.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help=(
            "runs a job gets when its run is lost through no fault of its own (a service "
            "crash, a dead worker, the Dask cluster losing it) before it is failed"
        ),
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=20.0,
        help="on SIGTERM/SIGINT, seconds running jobs get to finish before they are requeued",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="stop after this many seconds without jobs, streams or requests",
    )
    serve.add_argument("--heartbeat", type=float, default=10.0, help="stream heartbeat seconds")
    serve.add_argument(
        "--programs-dir",
        help="directory of runtime programs: each DIR/<id>.py is program <id>",
    )
    serve.add_argument(
        "--job-time-limit",
        type=float,
        default=3600.0,
        help="seconds a job may run before it is stopped with time_limit_exceeded (0: none)",
    )
    serve.add_argument(
        "--retention",
        type=duration_arg,
        default=None,
        help="delete finished jobs that ended longer ago than this: 90s, 45m, 12h, 30d, 2w "
        "(default: keep them)",
    )
    serve.add_argument(
        "--max-store-mb",
        type=float,
        default=0,
        help="cap the store's size; past it new work gets 507 storage_full (0: the disk)",
    )
    serve.add_argument(
        "--max-user-store-mb",
        type=float,
        default=16 * 1024,
        help="what one user's jobs may store (inputs, results, events); at it their new jobs "
        "get 403 storage_quota until they delete some (0: no limit)",
    )
    serve.add_argument(
        "--state-file",
        help="where to write url/token/pid (loopback default: server.json beside the store)",
    )
    serve.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    serve.add_argument(
        "--ui-login-hours", type=float, default=8.0, help="how long a dashboard login lasts"
    )
    serve.add_argument(
        "--ui-max-logins",
        type=int,
        default=10_000,
        help="dashboard logins held at once (a new one beyond ends the oldest)",
    )
    serve.add_argument(
        "--ui-login-failures-per-minute",
        type=float,
        default=10.0,
        help="failed dashboard logins allowed per client address and minute (then 429)",
    )
    serve.add_argument(
        "--ui-login-failure-burst",
        type=int,
        default=20,
        help="failed dashboard logins one client address may make at once",
    )
    serve.add_argument("--ssl-certfile", help="serve HTTPS/WSS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    serve.add_argument(
        "--plaintext",
        action="store_true",
        help="allow plain HTTP on a non-loopback address (a TLS-terminating proxy in front)",
    )
    serve.add_argument(
        "--allow-network-fs",
        action="store_true",
        help="use a store on a network filesystem (NFS, Lustre, GPFS…) though WAL is unsafe "
        "there (also QDISPATCH_ALLOW_NETWORK_FS=1): only if one host ever opens it",
    )
    serve.add_argument(
        "--metrics-token",
        default=os.environ.get("QDISPATCH_METRICS_TOKEN"),
        help="a token that may read GET /metrics besides operator tokens "
        "(default: $QDISPATCH_METRICS_TOKEN, which keeps it out of the process list)",
    )
    serve.set_defaults(func=_serve)
