"""Argument types the commands share: durations (``90s``, ``45m``, ``12h``, ``30d``,
``2w``), ``--expires``, and the store a ``--db`` names."""

from __future__ import annotations

import argparse
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..constants import utc_iso
from ..local import default_data_dir

__all__ = ["db_path", "duration_arg", "megabytes_arg", "parse_duration", "parse_expires"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")


def parse_duration(text: str) -> float:
    """A duration such as ``90s``, ``45m``, ``12h``, ``30d`` or ``2w``, in seconds (positive);
    ``ValueError`` otherwise."""
    found = _DURATION.fullmatch(text.lower())
    if not found or float(found[1]) <= 0:
        raise ValueError(f"{text!r}: give a positive duration (90s, 45m, 12h, 30d, 2w)")
    return float(found[1]) * _UNITS[found[2]]


def parse_expires(text: str, now: datetime | None = None) -> str:
    """``--expires``: a duration (``90s``, ``45m``, ``12h``, ``30d``, ``2w``) from now, or an
    ISO 8601 date/time (naive = UTC); answers the UTC ISO timestamp the store keeps."""
    now = now or datetime.now(timezone.utc)
    found = _DURATION.fullmatch(text.lower())
    if found:
        when = now + timedelta(seconds=float(found[1]) * _UNITS[found[2]])
    else:
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"--expires {text!r}: give a duration (30d, 12h, 45m, 90s, 2w) or an ISO date"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    if when <= now:
        raise ValueError(f"--expires {text!r} is in the past")
    return utc_iso(when)


def duration_arg(text: str) -> float:
    """An argparse type for a duration: argparse reports a type's ValueError as
    "invalid value"; this says what is expected."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def megabytes_arg(text: str) -> float:
    """An argparse type for an amount of memory in MB: a finite number, not negative
    (argparse names the flag in its error; ``inf`` or ``nan`` would otherwise reach the
    service's arithmetic as a traceback)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of MB")
    return value


def db_path(args: argparse.Namespace) -> Path:
    """The store ``--db`` names, else the local service's in the user data directory."""
    return Path(args.db).expanduser() if args.db else default_data_dir() / "jobs.db"
