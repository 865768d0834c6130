"""How the job commands print: tables (rich) for people, JSON for scripts."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

# Colours of statuses in tables (plain text when stdout is not a terminal).
_STYLES = {
    "QUEUED": "yellow",
    "RUNNING": "cyan",
    "DONE": "green",
    "ERROR": "red",
    "CANCELLED": "magenta",
    "NOT_SUBMITTED": "red",
}


def console() -> Console:
    """The console tables go to: stdout, as wide as the terminal (or 160 columns)."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout."""
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def print_json_line(data: Any) -> None:
    """``data`` as one line of JSON on stdout (a stream of snapshots)."""
    sys.stdout.write(orjson.dumps(data).decode() + "\n")
    sys.stdout.flush()


def status(name: str | None) -> Text:
    """A status, coloured."""
    return Text(name or "-", style=_STYLES.get(name or "", ""))


def when(iso: str | None) -> str:
    """A wire timestamp as local time, to the second."""
    if not iso:
        return "-"
    return (
        datetime.fromisoformat(iso.replace("Z", "+00:00"))
        .astimezone()
        .strftime("%Y-%m-%d %H:%M:%S")
    )


def seconds(value: float | None) -> str:
    """A duration for people: ``0.123 s``, ``42.0 s``, ``3m 20s``, ``2h 05m``."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.3f} s"
    if value < 120:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 120:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> Table:
    """A table of ``rows`` (cells: text, or rich renderables)."""
    shown = Table(title=title, title_justify="left", header_style="bold", expand=False)
    for column in columns:
        shown.add_column(column, overflow="fold")
    for row in rows:
        shown.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in row))
    return shown


def fields(pairs: Iterable[tuple[str, Any]], title: str | None = None) -> Table:
    """A two-column table of ``name: value`` lines."""
    shown = Table(title=title, title_justify="left", show_header=False, box=None)
    shown.add_column(style="bold")
    shown.add_column(overflow="fold")
    for name, value in pairs:
        shown.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    return shown


class Out:
    """This module's functions, as one name the command modules import (``from . import
    output`` would make the package itself a dependency of each of them, a cycle)."""

    console = staticmethod(console)
    print_json = staticmethod(print_json)
    print_json_line = staticmethod(print_json_line)
    status = staticmethod(status)
    when = staticmethod(when)
    seconds = staticmethod(seconds)
    table = staticmethod(table)
    fields = staticmethod(fields)
