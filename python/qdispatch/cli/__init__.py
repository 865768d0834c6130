"""The ``qdispatch`` command: ``serve`` the job service, ``token create|list|revoke``
for its users, ``gc`` to delete old finished jobs, ``demo`` for a run of random circuits
through the local service; and to see and steer jobs: ``jobs``, ``job``, ``cancel``,
``delete``, ``sets``, ``set``, ``sessions``, ``status`` and ``top`` (tables, or
``--json``). One module per command group: ``serve.py``, ``admin.py`` (token, gc, stop,
demo), ``jobs.py``, ``sets.py``, ``sessions.py``, ``status.py``."""

from __future__ import annotations

import argparse
import sys

from . import admin, jobs, serve, sessions, sets, status
from .args import parse_duration, parse_expires

__all__ = ["main", "parse_duration", "parse_expires", "parser"]


def parser() -> argparse.ArgumentParser:
    """The command line of ``qdispatch``."""
    top = argparse.ArgumentParser(prog="qdispatch", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    # The job commands connect as connect() does; serve and admin work on a store.
    for group in (serve, admin, jobs, sets, sessions, status):
        group.register(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qdispatch`` command."""
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
