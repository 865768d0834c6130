"""``qdispatch sets`` and ``qdispatch set ID``: the job sets of ``IBMQJobManager``, found
by the tags their jobs carry (``qdispatch.managed``'s docstring)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from .common import add_connection, add_json, client, command, connect_from, since
from .output import Out as output

if TYPE_CHECKING:
    from ..service import QDispatchService

__all__ = ["register"]

# Jobs of one set asked for per request (the service's page limit).
_PAGE = 1000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the commands to ``qdispatch``'s sub-commands."""
    sets = sub.add_parser("sets", help="list job sets (IBMQJobManager), newest first")
    sets.add_argument(
        "--scan",
        type=int,
        default=1000,
        help="look for sets among this many most recent jobs (default 1000)",
    )
    sets.add_argument("--since", type=since, help="jobs created since: 12h, 30d or a date")
    sets.add_argument("--backend", help="only this backend's")
    add_connection(sets)
    add_json(sets)
    sets.set_defaults(func=_sets)

    one = sub.add_parser("set", help="a job set's progress per chunk and its failures")
    one.add_argument("set_id", metavar="ID")
    one.add_argument(
        "--resubmit-failed",
        action="store_true",
        help="run again the chunks that failed, were cancelled or were never submitted",
    )
    one.add_argument("--wait", action="store_true", help="wait for every chunk to finish first")
    one.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    add_connection(one)
    add_json(one)
    one.set_defaults(func=_set)


def _scan(service: QDispatchService, args: argparse.Namespace) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while len(found) < args.scan:
        page = service.api.jobs(
            limit=min(_PAGE, args.scan - len(found)),
            skip=len(found),
            backend_name=args.backend,
            created_after=args.since,
        )
        found += page
        if len(page) < _PAGE:
            break
    return found


@command("sets")
def _sets(args: argparse.Namespace) -> int:
    if args.scan < 1:
        raise ValueError("--scan must be at least 1")
    with connect_from(args) as service:
        sets = client().monitor.job_sets(_scan(service, args))
    if args.json:
        output.print_json(sets)
        return 0
    rows = [
        (
            s["id"],
            s["name"] or "-",
            s["backend"] or "-",
            output.when(s["created"]),
            s["jobs"],
            f"{s['experiments_done']}/{s['experiments']}",
            "  ".join(f"{k}: {v}" for k, v in s["statuses"].items()),
        )
        for s in sets
    ]
    columns = ("ID", "NAME", "BACKEND", "CREATED", "JOBS", "EXPERIMENTS DONE", "CHUNKS")
    output.console().print(output.table(columns, rows))
    return 0


def set_jobs(service: QDispatchService, set_id: str) -> list[dict[str, Any]]:
    """Every job of the set ``set_id`` (the service's JSON views), oldest first."""
    tag = f"{client().managed.SET_TAG}{set_id}"
    found: list[dict[str, Any]] = []
    while True:
        page = service.api.jobs(limit=_PAGE, skip=len(found), tags=[tag], descending=False)
        found += page
        if len(page) < _PAGE:
            return found


def _wait(service: QDispatchService, set_id: str, timeout: float | None) -> None:
    """Wait until every chunk of the set is final, on the event stream; a bar of the
    experiments done when someone watches."""
    monitor, progress = client().monitor, client().progress
    state = monitor.job_set_progress(set_id, set_jobs(service, set_id))
    pending = {
        c["job_id"]: c
        for c in state["chunks"]
        if c["job_id"] and c["status"] in ("QUEUED", "RUNNING")
    }
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = (
        progress.bar(state["experiments"], f"set {set_id}", unit="experiment")
        if progress.interactive()
        else None
    )
    done = state["experiments"] - sum(c.get("count", 0) for c in pending.values())
    try:
        while pending:
            if bar is not None:
                bar.n = done
                bar.refresh()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(
                    f"{len(pending)} jobs of set {set_id} unfinished after {timeout} s"
                )
            for job_id in service.api.wait_any_final(list(pending), remaining):
                done += pending.pop(job_id).get("count", 0)
    finally:
        if bar is not None:
            bar.n = done
            bar.close()


@command("set")
def _set(args: argparse.Namespace) -> int:
    with connect_from(args) as service:
        resubmitted: list[dict[str, Any]] = []
        if args.resubmit_failed:
            manager = client().managed.IBMQJobManager()
            job_set = manager.retrieve_job_set(args.set_id, service)
            for mjob in job_set.resubmit_failed():
                resubmitted.append(
                    {
                        "index": mjob.job_index,
                        "job_id": mjob.job.job_id() if mjob.job else None,
                        "error": str(mjob.submit_error) if mjob.submit_error else None,
                    }
                )
        if args.wait:
            _wait(service, args.set_id, args.timeout)
        jobs = set_jobs(service, args.set_id)
    if not jobs:
        raise LookupError(f"job set {args.set_id} not found")
    state = client().monitor.job_set_progress(args.set_id, jobs)
    if args.resubmit_failed:
        state["resubmitted"] = resubmitted
    if args.json:
        output.print_json(state)
    else:
        _show(state)
    failed = any(r["error"] for r in state.get("resubmitted", []))
    return 1 if failed else 0


def _show(state: dict[str, Any]) -> None:
    out = output.console()
    pairs = [
        ("id", state["id"]),
        ("name", state["name"] or "-"),
        ("backend", state["backend"] or "-"),
        ("created", output.when(state["created"])),
        ("tags", ", ".join(state["tags"]) or "-"),
        ("experiments done", f"{state['experiments_done']} of {state['experiments']}"),
        ("chunks", "  ".join(f"{k}: {v}" for k, v in state["statuses"].items())),
    ]
    out.print(output.fields(pairs, title=f"job set {state['id']}"))
    rows = [
        (
            c["index"],
            f"{c['start']}-{c['start'] + c['count'] - 1}" if c.get("start") is not None else "-",
            c["job_id"] or "-",
            output.status(c["status"]),
            output.seconds(c.get("queued_seconds")),
            output.seconds(c.get("run_seconds")),
            c["error"] or "-",
        )
        for c in state["chunks"]
    ]
    columns = ("CHUNK", "EXPERIMENTS", "JOB", "STATUS", "QUEUED", "RAN", "ERROR")
    out.print(output.table(columns, rows, title="chunks"))
    if state.get("not_listed"):
        out.print(f"and {state['not_listed']} more chunks never submitted (not listed)")
    for redo in state.get("resubmitted", []):
        if redo["error"]:
            out.print(output.text(f"chunk {redo['index']}: resubmission failed: {redo['error']}"))
        else:
            out.print(output.text(f"chunk {redo['index']}: resubmitted as job {redo['job_id']}"))
