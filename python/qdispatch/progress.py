"""Progress where people wait: one rule for when a bar is shown, and the waits that show one.

A bar (tqdm, on stderr) is shown when someone is watching: stderr is a terminal, or the
code runs in a Jupyter kernel (``ipykernel`` is loaded). Scripts whose output goes to a
file or a pipe, services and tests stay silent. ``QDISPATCH_PROGRESS=1`` (or ``0``)
forces bars on (or off) whatever the rule says.

The waits follow the statuses the service pushes on its event stream: a bar's status
changes the moment the job's does, and waiting for it costs no request. A job that ends
within :data:`BAR_DELAY` seconds never shows a bar at all.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

if TYPE_CHECKING:
    from .api import Family, ServiceApi

#: Seconds of waiting before a bar appears (a short wait shows nothing).
BAR_DELAY = 1.0
# How often a bar's elapsed time is redrawn while the job's status does not change.
_REDRAW = 0.5
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def interactive() -> bool:
    """Whether waits show a progress bar: ``QDISPATCH_PROGRESS`` if set, else whether
    stderr is a terminal or the code runs in a Jupyter kernel."""
    forced = os.environ.get("QDISPATCH_PROGRESS", "").strip().lower()
    if forced in _ON:
        return True
    if forced in _OFF:
        return False
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def bar(total: int | None, desc: str, unit: str = "it", **options: Any) -> tqdm[Any]:
    """A progress bar on stderr, as every wait of the client draws it."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, **options)


def wait_final(
    api: ServiceApi,
    job_id: str,
    timeout: float | None,
    family: Family,
    label: str,
    show: bool | None = None,
) -> str | None:
    """Wait until ``job_id`` is final, as ``api.wait_final``: its final status, ``None``
    on timeout. While it waits longer than :data:`BAR_DELAY`, and :func:`interactive`
    says someone is watching (or ``show``), a bar shows ``label``, the job's status as
    the service pushes it, and the time waited."""
    if not (interactive() if show is None else show):
        return api.wait_final(job_id, timeout, family)
    deadline = None if timeout is None else time.monotonic() + timeout
    first = BAR_DELAY if timeout is None else min(BAR_DELAY, timeout)
    final = api.wait_final(job_id, first, family)
    if final is not None or (deadline is not None and time.monotonic() >= deadline):
        return final
    shown = api.last_status(job_id) or "QUEUED"
    status_bar = bar(None, label, bar_format="{desc}: {postfix} [{elapsed}]")
    status_bar.set_postfix_str(shown)
    try:
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            step = _REDRAW if remaining is None else min(_REDRAW, remaining)
            final = api.wait_final(job_id, step, family)
            status = final or api.last_status(job_id) or shown
            if status != shown:
                shown = status
                status_bar.set_postfix_str(status, refresh=False)
            status_bar.refresh()
            if final is not None:
                return final
    finally:
        status_bar.close()
