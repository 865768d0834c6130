"""``qdispatch status`` (the service now: version, executor, workers, queues with their
ETA, throughput) and ``qdispatch top`` (the same, live, with the jobs running and queued,
until Ctrl-C). The figures are ``GET /info``'s (docs/service.md, "Metrics and
monitoring")."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.live import Live

from .common import add_connection, add_json, command, connect_from
from .jobs import JOB_COLUMNS, job_row
from .output import Out as output

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..service import QDispatchService

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the commands to ``qdispatch``'s sub-commands."""
    status = sub.add_parser("status", help="the service: workers, queues and their ETA, jobs/s")
    add_connection(status)
    add_json(status)
    status.set_defaults(func=_status)

    top = sub.add_parser("top", help="a live view of the service and its jobs (Ctrl-C ends it)")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    top.add_argument(
        "--iterations", type=int, default=0, help="stop after this many refreshes (0: never)"
    )
    top.add_argument("--once", action="store_true", help="one refresh, then stop")
    top.add_argument("--jobs", type=int, default=15, help="running and queued jobs shown")
    add_connection(top)
    add_json(top)
    top.set_defaults(func=_top)


def snapshot(service: QDispatchService, jobs: int = 0) -> dict[str, Any]:
    """The service's ``info`` and, with ``jobs``, up to that many ``running`` and
    ``queued`` jobs the caller may see (an operator: everyone's)."""
    state: dict[str, Any] = {"info": service.api.info(), "url": service.url}
    if jobs:
        state["running"] = service.api.jobs(limit=jobs, statuses=["RUNNING"])
        state["queued"] = service.api.jobs(limit=jobs, statuses=["QUEUED"], descending=False)
    return state


def _summary(state: dict[str, Any]) -> RenderableType:
    info = state["info"]
    workers = info.get("workers") or {}
    pairs = [
        ("service", f"{state['url']}  version {info.get('version')}"),
        ("executor", f"{info.get('executor')}, capacity {info.get('capacity')}"),
        (
            "workers",
            f"{workers.get('busy', 0)} busy, {workers.get('idle', 0)} idle, "
            f"{workers.get('starting', 0)} starting",
        ),
        ("jobs", f"{info.get('running_jobs', 0)} running, {info.get('queued_jobs', 0)} queued"),
        (
            "throughput",
            f"{info.get('jobs_per_second', 0):g} jobs/s, "
            f"{info.get('circuits_per_second', 0):g} circuits/s (last minute)",
        ),
        ("up", output.seconds(info.get("uptime_seconds"))),
    ]
    rows = [
        (
            backend,
            queue["queued"],
            "paused" if queue.get("paused") else "-",
            output.seconds(queue.get("mean_run_seconds")),
            output.seconds(queue.get("eta_seconds")),
        )
        for backend, queue in sorted((info.get("queues") or {}).items())
    ]
    columns = ("BACKEND", "QUEUED", "PAUSED", "MEAN RUN", "ETA")
    return Group(output.fields(pairs), output.table(columns, rows, title="queues"))


@command("status")
def _status(args: argparse.Namespace) -> int:
    with connect_from(args) as service:
        state = snapshot(service)
    if args.json:
        output.print_json({**state["info"], "url": state["url"]})
    else:
        output.console().print(_summary(state))
    return 0


def _view(state: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [_summary(state)]
    for key, title in (("running", "running"), ("queued", "queued (next first)")):
        jobs = state.get(key) or []
        parts.append(output.table(JOB_COLUMNS, (job_row(j) for j in jobs), title=title))
    parts.append(output.text(f"{time.strftime('%H:%M:%S')}  Ctrl-C to quit", style="dim"))
    return Group(*parts)


@command("top")
def _top(args: argparse.Namespace) -> int:
    if args.interval <= 0 or args.iterations < 0:
        raise ValueError("--interval must be positive and --iterations at least 0")
    iterations = 1 if args.once else args.iterations
    done = 0
    with connect_from(args) as service:
        if args.json:  # one JSON line per refresh, for scripts
            while True:
                output.print_json_line(snapshot(service, args.jobs))
                done += 1
                if iterations and done >= iterations:
                    return 0
                time.sleep(args.interval)
        console = output.console()
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                live.update(_view(snapshot(service, args.jobs)), refresh=True)
                done += 1
                if iterations and done >= iterations:
                    return 0
                time.sleep(args.interval)
