"""The operator's and the local user's commands: ``token create|list|revoke`` for the
service's users, ``gc`` to delete old finished jobs, ``stop`` for the local service, and
``demo``, a run of random circuits through it."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from ..constants import utc_iso
from ..local import stop as stop_local_service
from .args import db_path, duration_arg, parse_expires

if TYPE_CHECKING:
    from ..server.store import Store

__all__ = ["register"]


def _open_store(args: argparse.Namespace) -> Store:
    # The service's store alone, for the commands that manage tokens.
    from ..server.store import Store  # noqa: PLC0415

    return Store(db_path(args))


def _gc(args: argparse.Namespace) -> int:
    cutoff = utc_iso(datetime.now(timezone.utc) - timedelta(seconds=args.older_than))
    store = _open_store(args)
    try:
        deleted = store.delete_finished_before(cutoff)
    finally:
        store.close()
    print(f"deleted {deleted} finished jobs that ended before {cutoff}")
    return 0


def _token_create(args: argparse.Namespace) -> int:
    try:
        expires = parse_expires(args.expires) if args.expires else None
    except ValueError as exc:
        print(f"qdispatch token create: {exc}", file=sys.stderr)
        return 2
    store = _open_store(args)
    try:
        token, token_id = store.create_token_with_id(
            args.user, args.project, label=args.name, expires=expires, operator=args.operator
        )
    except ValueError as exc:
        print(f"qdispatch token create: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    # The secret alone on stdout (scripts capture it); it is shown this once only.
    print(token)
    role = "operator " if args.operator else ""
    until = f", expires {expires}" if expires else ""
    print(f"{role}token {token_id} for {args.user}{until}", file=sys.stderr)
    return 0


def _token_list(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        tokens = store.tokens(args.user, include_revoked=args.all)
    finally:
        store.close()
    now = utc_iso(datetime.now(timezone.utc))
    rows = [("ID", "USER", "LABEL", "CREATED", "EXPIRES", "LAST USED", "STATE")]
    for t in tokens:
        state = (
            "revoked"
            if t.revoked
            else "expired"
            if t.expires and t.expires <= now
            else "operator"
            if t.operator
            else "active"
        )
        rows.append(
            (
                t.id,
                t.user,
                t.label or "-",
                t.created,
                t.expires or "never",
                t.last_used or "never",
                state,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        revoked = store.revoke_token(args.token)
    finally:
        store.close()
    if revoked is None:
        print("qdispatch token revoke: no such token (give its id or the token)", file=sys.stderr)
        return 1
    print(f"revoked token {revoked.id} of {revoked.user}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    try:
        pid = stop_local_service()
    except RuntimeError as exc:  # it did not exit in time: say so, no traceback
        print(f"qdispatch stop: {exc}", file=sys.stderr)
        return 1
    print(f"stopped the local service (pid {pid})" if pid else "no local service is running")
    return 0


def _demo(args: argparse.Namespace) -> int:
    # The demo is a client of the service: qiskit and the client load for it alone.
    from ..demo import run_demo  # noqa: PLC0415

    summary = run_demo(args.circuits, args.backend, args.shots)
    return 1 if summary["failed_jobs"] else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``token``, ``gc``, ``stop`` and ``demo`` to ``qdispatch``'s sub-commands."""
    token = sub.add_parser("token", help="manage access tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a user's token and print it once")
    create.add_argument("--user", required=True)
    create.add_argument("--project", help="project the user belongs to (for share_level=project)")
    create.add_argument(
        "--expires", help="a duration (30d, 12h, 45m) or an ISO date; default never"
    )
    create.add_argument("--name", help="a label, shown by `token list`")
    create.add_argument(
        "--operator",
        action="store_true",
        help="an operator token: sees and cancels every user's jobs, pauses backends",
    )
    create.add_argument("--db", help="SQLite store (default: the user data directory)")
    create.set_defaults(func=_token_create)
    listed = token_sub.add_parser("list", help="list tokens (never their secrets)")
    listed.add_argument("--user", help="only this user's")
    listed.add_argument("--all", action="store_true", help="revoked ones too")
    listed.add_argument("--db", help="SQLite store (default: the user data directory)")
    listed.set_defaults(func=_token_list)
    revoke = token_sub.add_parser("revoke", help="revoke a token at once (by id or secret)")
    revoke.add_argument("token", metavar="TOKEN_OR_ID")
    revoke.add_argument("--db", help="SQLite store (default: the user data directory)")
    revoke.set_defaults(func=_token_revoke)
    gc = sub.add_parser(
        "gc", help="delete finished jobs (with their results and events) older than a duration"
    )
    gc.add_argument(
        "--older-than",
        required=True,
        type=duration_arg,
        help="jobs that ended longer ago than this: 90s, 45m, 12h, 30d, 2w",
    )
    gc.add_argument("--db", help="SQLite store (default: the user data directory)")
    gc.set_defaults(func=_gc)
    stop = sub.add_parser("stop", help="stop the local service")
    stop.set_defaults(func=_stop)

    demo = sub.add_parser("demo", help="run random circuits through the local service")
    demo.add_argument("--circuits", type=int, default=3000)
    demo.add_argument("--backend", default="aer_simulator")
    demo.add_argument("--shots", type=int, default=1024)
    demo.set_defaults(func=_demo)
