"""``qdispatch jobs``, ``qdispatch job ID``, ``qdispatch cancel ID…`` and
``qdispatch delete ID…``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .common import add_connection, add_json, client, command, connect_from, since
from .output import Out as output

if TYPE_CHECKING:
    from ..service import QDispatchService

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the commands to ``qdispatch``'s sub-commands."""
    jobs = sub.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument(
        "--status", action="append", help="QUEUED, RUNNING, DONE, ERROR or CANCELLED (repeatable)"
    )
    jobs.add_argument("--backend", help="only this backend's")
    jobs.add_argument("--tag", action="append", help="with this tag (repeatable: any of them)")
    jobs.add_argument("--name", help="name matching this regular expression")
    jobs.add_argument("--since", type=since, help="created since: 90s, 45m, 12h, 30d or a date")
    jobs.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    add_connection(jobs)
    add_json(jobs)
    jobs.set_defaults(func=_jobs)

    job = sub.add_parser("job", help="one job: details, time per step, error, counts")
    job.add_argument("job_id", metavar="ID")
    shown = job.add_mutually_exclusive_group()
    shown.add_argument("--logs", action="store_true", help="print the job's log (program jobs)")
    shown.add_argument("--result", action="store_true", help="print the job's result (JSON)")
    job.add_argument(
        "--raw",
        action="store_true",
        help="with --logs: print the log as sent, control characters (escape sequences) too",
    )
    job.add_argument("--wait", action="store_true", help="wait for the job to finish first")
    job.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    add_connection(job)
    add_json(job)
    job.set_defaults(func=_job)

    cancel = sub.add_parser("cancel", help="cancel queued or running jobs")
    cancel.add_argument("job_ids", metavar="ID", nargs="+")
    add_connection(cancel)
    add_json(cancel)
    cancel.set_defaults(func=_cancel)
    delete = sub.add_parser(
        "delete", help="delete finished jobs with their results and logs (cannot be undone)"
    )
    delete.add_argument("job_ids", metavar="ID", nargs="+")
    add_connection(delete)
    add_json(delete)
    delete.set_defaults(func=_delete)


def _family() -> Any:
    return client().api.Family.IBMQ


def job_row(job: dict[str, Any]) -> list[Any]:
    """A job's line in a table of jobs (:data:`JOB_COLUMNS`)."""
    timing = client().monitor.timing(job)
    what = job.get("program_id") or f"{job.get('n_experiments', 0)} circuits"
    tags = client().monitor.user_tags(job.get("tags") or [])
    set_id = client().monitor.set_id_of(job)
    return [
        job["id"],
        output.status(job["status"]),
        job.get("backend") or "-",
        what,
        job.get("name") or "-",
        output.when(job.get("creation_date")),
        output.seconds(timing["queued_seconds"]),
        output.seconds(timing["run_seconds"]),
        ", ".join(tags + ([f"set {set_id}"] if set_id else [])) or "-",
    ]


JOB_COLUMNS = ("ID", "STATUS", "BACKEND", "WHAT", "NAME", "CREATED", "QUEUED", "RAN", "TAGS")


@command("jobs")
def _jobs(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ValueError("--limit must be at least 1")
    with connect_from(args) as service:
        found = service.api.jobs(
            limit=min(args.limit, 1000),
            statuses=[s.upper() for s in args.status or []],
            backend_name=args.backend,
            tags=args.tag or [],
            name=args.name,
            created_after=args.since,
        )
    if args.json:
        output.print_json(found)
    else:
        output.console().print(output.table(JOB_COLUMNS, (job_row(j) for j in found)))
    return 0


def _details(service: QDispatchService, job_id: str) -> dict[str, Any]:
    info = service.api.job(job_id, _family())
    details: dict[str, Any] = {**info, **client().monitor.timing(info)}
    details["steps"] = client().monitor.steps(info.get("time_per_step") or {})
    if info["status"] == "DONE" and info.get("kind") == "circuit":
        raw = service.api.job_results(job_id, _family())
        details["counts"] = client().monitor.counts_summary(raw)
    return details


def _wait(service: QDispatchService, job_id: str, timeout: float | None) -> None:
    """Wait for the job to be final, with a bar when someone watches."""
    label = f"job {job_id}"
    if client().progress.wait_final(service.api, job_id, timeout, _family(), label) is None:
        raise TimeoutError(f"job {job_id} did not finish within {timeout} s")


@command("job")
def _job(args: argparse.Namespace) -> int:
    with connect_from(args) as service:
        if args.wait:
            _wait(service, args.job_id, args.timeout)
        if args.result:
            raw = service.api.job_results(args.job_id, _family())
            sys.stdout.buffer.write(raw + b"\n")
            return 0
        if args.logs:
            text = service.api.job_logs(args.job_id)
            if args.json:
                output.print_json({"id": args.job_id, "logs": text})
            else:
                # A program writes its log: its escape sequences reach the terminal only
                # when asked for (--raw).
                shown = text if args.raw else output.clean_log(text)
                sys.stdout.write(shown if shown.endswith("\n") or not shown else shown + "\n")
            return 0
        details = _details(service, args.job_id)
    if args.json:
        output.print_json(details)
    else:
        _show(details)
    return 0


def _show(job: dict[str, Any]) -> None:
    out = output.console()
    what = job.get("program_id") or "circuits"
    pairs: list[tuple[str, Any]] = [
        ("id", job["id"]),
        ("status", output.status(job["status"])),
        ("backend", job.get("backend")),
        ("kind", f"{job.get('kind')} ({what})"),
        ("name", job.get("name") or "-"),
        ("owner", job.get("owner")),
        ("tags", ", ".join(job.get("tags") or []) or "-"),
        ("session", job.get("session_id") or "-"),
        ("experiments", job.get("n_experiments")),
        ("shots", job.get("shots")),
        ("queued for", output.seconds(job.get("queued_seconds"))),
        ("ran for", output.seconds(job.get("run_seconds"))),
    ]
    queue = job.get("queue_info") or {}
    if queue:
        pairs.append(("queue position", queue.get("position")))
        pairs.append(("estimated start", output.when(queue.get("estimated_start_time"))))
    error = job.get("error") or {}
    if error:
        pairs.append(("error", f"{error.get('code')}: {error.get('message')}"))
    out.print(output.fields(pairs, title=f"job {job['id']}"))
    out.print(
        output.table(
            ("STEP", "TIME", "AFTER"),
            (
                (s["step"], output.when(s["time"]), output.seconds(s["seconds"]))
                for s in job["steps"]
            ),
            title="time per step",
        )
    )
    attempts = job.get("attempts") or []
    if len(attempts) > 1 or any(a.get("reason") for a in attempts):
        out.print(
            output.table(
                ("START", "END", "OUTCOME", "REASON"),
                (
                    (
                        output.when(a.get("start")),
                        output.when(a.get("end")),
                        a.get("outcome"),
                        a.get("reason") or "-",
                    )
                    for a in attempts
                ),
                title="attempts",
            )
        )
    counts = job.get("counts")
    if counts:
        rows = [
            (
                c["index"],
                c["shots"],
                c["outcomes"],
                "  ".join(f"{outcome}: {n}" for outcome, n in c["top"]) or "-",
            )
            for c in counts["summary"]
        ]
        more = counts["experiments"] - len(rows)
        title = "counts" + (f" (first {len(rows)} of {counts['experiments']})" if more else "")
        out.print(output.table(("EXPERIMENT", "SHOTS", "OUTCOMES", "MOST FREQUENT"), rows, title))


@command("cancel")
def _cancel(args: argparse.Namespace) -> int:
    def cancel(service: QDispatchService, job_id: str) -> dict[str, Any]:
        info = service.api.cancel_job(job_id, _family())
        return {"cancelled": info["status"] == "CANCELLED", "status": info["status"]}

    return _each_job(args, "cancel", "cancelled", cancel)


@command("delete")
def _delete(args: argparse.Namespace) -> int:
    def delete(service: QDispatchService, job_id: str) -> dict[str, Any]:
        service.api.delete_job(job_id)
        return {"deleted": True}

    return _each_job(args, "delete", "deleted", delete)


def _each_job(
    args: argparse.Namespace,
    verb: str,
    done: str,
    act: Callable[[QDispatchService, str], dict[str, Any]],
) -> int:
    """Does ``act`` to each job named once, reporting each outcome (``{done: bool, …}``);
    one job's failure does not stop the others. Exit status 1 if any failed."""
    outcomes: dict[str, dict[str, Any]] = {}
    with connect_from(args) as service:
        for job_id in dict.fromkeys(args.job_ids):
            try:
                outcomes[job_id] = act(service, job_id)
            except Exception as exc:  # reported per job; the others still go on
                outcomes[job_id] = {done: False, "error": " ".join(str(exc).split())}
    failed = [job_id for job_id, o in outcomes.items() if not o[done]]
    if args.json:
        output.print_json(outcomes)
    else:
        for job_id, outcome in outcomes.items():
            if outcome[done]:
                print(f"{done} {output.clean(job_id)}")
            else:
                why = outcome.get("error") or f"it is {outcome.get('status')}"
                print(output.clean(f"qdispatch {verb}: {job_id}: {why}"), file=sys.stderr)
    return 1 if failed else 0
