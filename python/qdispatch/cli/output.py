"""How the job commands print: tables (rich) for people, JSON for scripts.

What the service sends is someone's input (job names, tags, errors, logs): it is printed
as plain text, never read as rich markup, and with its control characters dropped, since a
terminal acts on an escape sequence (OSC 8 links, OSC 52 clipboard writes) rather than
showing it. JSON output is escaped by the encoder."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..constants import CONTROL_CHARACTERS

# A log keeps its line breaks and tabs; every other control character is dropped.
_LOG_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")

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
    """The console tables go to: stdout, as wide as the terminal (or 160 columns). A
    string printed on it is not read as markup or emoji codes: the strings are the
    service's."""
    return Console(
        file=sys.stdout,
        width=None if sys.stdout.isatty() else 160,
        markup=False,
        emoji=False,
        highlight=False,
    )


def clean(value: Any) -> str:
    """``value`` as a string without control characters (escape sequences among them)."""
    return CONTROL_CHARACTERS.sub("", str(value))


def clean_log(text: str) -> str:
    """A job's log without control characters other than line breaks and tabs."""
    return _LOG_CONTROLS.sub("", text)


def text(value: Any, style: str = "") -> Text:
    """``value`` as plain rich text: no markup, no control characters."""
    return Text(clean(value), style=style)


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
    return text(name or "-", style=_STYLES.get(name or "", ""))


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
    shown = Table(title=_title(title), title_justify="left", header_style="bold", expand=False)
    for column in columns:
        shown.add_column(text(column), overflow="fold")
    for row in rows:
        shown.add_row(*(_cell(c) for c in row))
    return shown


def fields(pairs: Iterable[tuple[str, Any]], title: str | None = None) -> Table:
    """A two-column table of ``name: value`` lines."""
    shown = Table(title=_title(title), title_justify="left", show_header=False, box=None)
    shown.add_column(style="bold")
    shown.add_column(overflow="fold")
    for name, value in pairs:
        shown.add_row(text(name), _cell(value))
    return shown


def _title(title: str | None) -> Text | None:
    # A title is read as markup when it is a str: it often names a job.
    return None if title is None else text(title)


def _cell(value: Any) -> Text:
    if isinstance(value, Text):  # styled here (a status): kept unless it holds controls
        return text(value.plain, str(value.style)) if clean(value.plain) != value.plain else value
    return text(value)


class Out:
    """This module's functions, as one name the command modules import (``from . import
    output`` would make the package itself a dependency of each of them, a cycle)."""

    console = staticmethod(console)
    print_json = staticmethod(print_json)
    print_json_line = staticmethod(print_json_line)
    clean = staticmethod(clean)
    clean_log = staticmethod(clean_log)
    text = staticmethod(text)
    status = staticmethod(status)
    when = staticmethod(when)
    seconds = staticmethod(seconds)
    table = staticmethod(table)
    fields = staticmethod(fields)
