"""``qdispatch sessions``: sessions and batches, with their jobs by status."""

from __future__ import annotations

import argparse

from .common import add_connection, add_json, command, connect_from
from .output import Out as output

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the command to ``qdispatch``'s sub-commands."""
    sessions = sub.add_parser("sessions", help="list sessions and batches, newest first")
    sessions.add_argument("--state", choices=["open", "closed", "cancelled", "expired"])
    sessions.add_argument("--backend", help="only this backend's")
    sessions.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    add_connection(sessions)
    add_json(sessions)
    sessions.set_defaults(func=_sessions)


@command("sessions")
def _sessions(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise ValueError("--limit must be 1 to 1000")
    with connect_from(args) as service:
        found = service.api.sessions(state=args.state, backend_name=args.backend, limit=args.limit)
    if args.json:
        output.print_json(found)
        return 0
    rows = [
        (
            s["id"],
            s["backend"],
            s["mode"],
            output.status(s["state"].upper()) if s["state"] != "open" else s["state"],
            "yes" if s["accepting_jobs"] else "no",
            "  ".join(f"{k}: {v}" for k, v in (s.get("jobs") or {}).items() if v) or "-",
            output.seconds(s.get("usage_seconds")),
            output.when(s.get("created")),
        )
        for s in found
    ]
    columns = ("ID", "BACKEND", "MODE", "STATE", "ACCEPTING", "JOBS", "USAGE", "CREATED")
    output.console().print(output.table(columns, rows))
    return 0
