"""What the job commands share: how they connect (as ``qdispatch.connect()`` does), their
``--json`` switch, and how a failure ends them (one line on stderr, exit status 1).

Exit statuses: 0 done, 1 the operation failed (the service refused or could not be
reached; the line says why), 2 a usage error (argparse's), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..constants import CONTROL_CHARACTERS

if TYPE_CHECKING:
    from ..service import QDispatchService

Command = Callable[[argparse.Namespace], int]


def add_connection(parser: argparse.ArgumentParser) -> None:
    """``--url``, ``--token`` and the TLS options, defaulting as ``connect()`` does."""
    group = parser.add_argument_group(
        "connection",
        "default: $QDISPATCH_URL and $QDISPATCH_TOKEN, else the local service",
    )
    group.add_argument("--url", help="the service's URL (https://host:port)")
    group.add_argument("--token", help="an access token (default: $QDISPATCH_TOKEN)")
    tls = group.add_mutually_exclusive_group()
    tls.add_argument(
        "--ca-bundle", help="trust this PEM bundle alone for the service's certificate"
    )
    tls.add_argument(
        "--insecure", action="store_true", help="do not check the certificate (testing only)"
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    """``--json``: the data, as JSON on stdout, instead of tables."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def client() -> Any:
    """The client's modules the job commands use (``api``, ``constants``, ``monitor``,
    ``progress``, ``service``, ``managed``): they (and qiskit, ~1 s) load when a job
    command runs, never for ``serve``, ``token`` or ``gc``."""
    from .. import (  # noqa: PLC0415 - see the docstring
        api,
        constants,
        managed,
        monitor,
        progress,
        service,
    )

    return SimpleNamespace(
        api=api,
        constants=constants,
        managed=managed,
        monitor=monitor,
        progress=progress,
        service=service,
    )


def connect_from(args: argparse.Namespace) -> QDispatchService:
    """A connection as the arguments (or the environment, or the local service) say."""
    verify: bool | str = args.ca_bundle or not args.insecure
    service: QDispatchService = client().service.connect(args.url, token=args.token, verify=verify)
    return service


def command(name: str) -> Callable[[Command], Command]:
    """A job command's function, made to end as the module's docstring says."""

    def wrap(func: Command) -> Command:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            try:
                return func(args)
            except KeyboardInterrupt:
                return 130
            except Exception as exc:  # a failed operation: one line, no traceback
                # The message may quote the service, and so a user's input: one line,
                # without control characters.
                message = " ".join(CONTROL_CHARACTERS.sub(" ", str(exc)).split())
                message = message or type(exc).__name__
                print(f"qdispatch {name}: {message}", file=sys.stderr)
                return 1

        return run

    return wrap


def since(text: str) -> datetime:
    """``--since``: a duration back from now (``90s``, ``45m``, ``12h``, ``30d``, ``2w``)
    or an ISO date/time (naive = local time)."""
    # The package imports this module: its parser of durations is imported late.
    from . import parse_duration  # noqa: PLC0415

    with contextlib.suppress(ValueError):  # not a duration: an ISO date, below
        return datetime.now(timezone.utc) - timedelta(seconds=parse_duration(text))
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a duration (90s, 45m, 12h, 30d, 2w) or an ISO date"
        ) from None
    return when if when.tzinfo else when.astimezone()
