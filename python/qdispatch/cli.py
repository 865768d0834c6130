"""The ``qdispatch`` command: ``serve`` the job service, ``token create`` for a user,
``demo`` for a run of random circuits through the local service."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .local import default_data_dir
from .local import stop as stop_local_service

if TYPE_CHECKING:
    from .server.config import ServiceConfig


def _config(args: argparse.Namespace, db: Path, port: int) -> ServiceConfig:
    """The service's configuration from ``serve``'s arguments (``ValueError`` for a limit
    that cannot hold)."""
    from .server.config import ServiceConfig  # noqa: PLC0415 - loads for `serve` only

    return ServiceConfig(
        db=db,
        host=args.host,
        port=port,
        workers=args.workers,
        executor=args.executor,
        scheduler_address=args.scheduler,
        threads_per_worker=args.threads_per_worker,
        max_active_jobs=args.max_active_jobs,
        max_request_bytes=args.max_request_mb * 1024 * 1024,
        big_body_bytes=args.big_body_kb * 1024,
        max_uploads=args.max_uploads,
        max_uploads_per_user=args.max_uploads_per_user,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        stream_inline_result_bytes=args.stream_inline_result_kb * 1024,
        max_job_shots=args.max_job_shots,
        max_result_bytes=int(args.max_result_mb * 1024 * 1024),
        dedicated_share=args.dedicated_share,
        session_max_time=args.session_max_time,
        session_max_time_ceiling=args.session_max_time_ceiling,
        session_idle_timeout=args.session_idle_timeout,
        heartbeat_seconds=args.heartbeat,
        max_attempts=args.max_attempts,
        job_time_limit=args.job_time_limit or None,
        idle_timeout=args.idle_timeout,
        programs_dir=Path(args.programs_dir).expanduser() if args.programs_dir else None,
    )


def _serve(args: argparse.Namespace) -> int:
    # The web service (uvicorn, FastAPI, the backends) loads for `serve` only: the other
    # commands start without it.
    import uvicorn  # noqa: PLC0415

    from .server.app import create_app  # noqa: PLC0415

    db = Path(args.db).expanduser() if args.db else default_data_dir() / "jobs.db"
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
    if args.state_file:
        config.state_file = Path(args.state_file).expanduser()
    elif config.loopback:
        config.state_file = db.parent / "server.json"
    if args.executor == "dask" and not args.scheduler:
        print("qdispatch serve: --executor dask needs --scheduler ADDRESS", file=sys.stderr)
        return 2
    if config.programs_dir is not None and not config.programs_dir.is_dir():
        print(
            f"qdispatch serve: --programs-dir {config.programs_dir} is not a directory",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            log_level=args.log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"qdispatch service on http://{host}:{port} (store {db})", flush=True)
    server.run(sockets=[sock])
    return 0


def _token_create(args: argparse.Namespace) -> int:
    # The service's store alone, for the one command that writes to it.
    from .server.store import Store  # noqa: PLC0415

    db = Path(args.db).expanduser() if args.db else default_data_dir() / "jobs.db"
    store = Store(db)
    try:
        print(store.create_token(args.user, args.project))
    except ValueError as exc:
        print(f"qdispatch token create: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    return 0


def _stop(args: argparse.Namespace) -> int:
    pid = stop_local_service()
    print(f"stopped the local service (pid {pid})" if pid else "no local service is running")
    return 0


def _demo(args: argparse.Namespace) -> int:
    # The demo is a client of the service: qiskit and the client load for it alone.
    from .demo import run_demo  # noqa: PLC0415

    summary = run_demo(args.circuits, args.backend, args.shots)
    return 1 if summary["failed_jobs"] else 0


def parser() -> argparse.ArgumentParser:
    """The command line of ``qdispatch``."""
    top = argparse.ArgumentParser(prog="qdispatch", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the job service")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    serve.add_argument("--db", help="SQLite store (default: the user data directory)")
    serve.add_argument("--workers", type=int, default=2, help="local worker processes")
    serve.add_argument("--executor", choices=["local", "dask"], default="local")
    serve.add_argument("--scheduler", help="dask scheduler address, with --executor dask")
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
        help="times a job may be interrupted by a service crash before it is failed",
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
        "--state-file",
        help="where to write url/token/pid (loopback default: server.json beside the store)",
    )
    serve.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    serve.set_defaults(func=_serve)

    token = sub.add_parser("token", help="manage access tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a user's token and print it")
    create.add_argument("--user", required=True)
    create.add_argument("--project", help="project the user belongs to (for share_level=project)")
    create.add_argument("--db", help="SQLite store (default: the user data directory)")
    create.set_defaults(func=_token_create)
    stop = sub.add_parser("stop", help="stop the local service")
    stop.set_defaults(func=_stop)

    demo = sub.add_parser("demo", help="run random circuits through the local service")
    demo.add_argument("--circuits", type=int, default=3000)
    demo.add_argument("--backend", default="aer_simulator")
    demo.add_argument("--shots", type=int, default=1024)
    demo.set_defaults(func=_demo)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qdispatch`` command."""
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
