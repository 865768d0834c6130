"""One service per store: an exclusive lock on the file beside it (``jobs.db.lock``).

Two services on one store would dispatch the same queued jobs twice and overwrite each
other's state, and each new local service revokes the previous one's token. The serving
process therefore holds an exclusive ``flock`` on ``<store>.lock`` for its lifetime and
writes its host and pid into it, so that a second ``qdispatch serve`` can say who holds
the store. A client that starts the local service takes the same lock first and hands
its descriptor to the service it starts (``pass_fds`` and :data:`HANDOFF_ENV`): between
"no service answers" and "the new service serves" the lock is never free, so clients
starting at the same moment start one service.

The lock is on a file of its own, never on the SQLite file: closing any descriptor of a
database file drops every POSIX lock the process holds on it, which lets SQLite corrupt
the store. ``flock`` locks belong to the open file description, so threads of one process
exclude each other too, and a process that dies (``kill -9``) releases its lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import orjson

from .constants import utcnow

#: The environment variable that tells ``qdispatch serve`` which inherited descriptor
#: holds its store's lock already (set by :func:`qdispatch.local.find_or_start`).
HANDOFF_ENV = "QDISPATCH_STORE_LOCK_FD"

# The holder's record is written in one pwrite of this many bytes at offset 0 (padded), so
# a reader never sees a half-truncated file.
_RECORD_BYTES = 512


def lock_path(db: Path) -> Path:
    """The lock file of the store ``db``: ``<db>.lock`` beside it."""
    return Path(f"{db}.lock")


def this_host() -> str:
    """This machine's name, as state and lock files record it."""
    return socket.gethostname()


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a store's lock, as its lock file says."""

    host: str
    pid: int
    since: str | None = None

    @property
    def here(self) -> bool:
        """Whether the holder runs on this machine."""
        return self.host == this_host()

    def __str__(self) -> str:
        since = f", since {self.since}" if self.since else ""
        return f"pid {self.pid} on host {self.host}{since}"


def holder(db: Path) -> Holder | None:
    """The process the lock file of ``db`` names (the holder, if the lock is held); ``None``
    when there is no readable record."""
    try:
        record = orjson.loads(lock_path(db).read_bytes().rstrip(b" \0\n"))
        return Holder(str(record["host"]), int(record["pid"]), record.get("since"))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class StoreBusyError(RuntimeError):
    """The store is served by another process (``holder``)."""

    def __init__(self, db: Path, holder: Holder | None) -> None:
        who = str(holder) if holder is not None else "another process"
        super().__init__(
            f"the store {db} is already served by {who} (it holds {lock_path(db)}): "
            "connect to that service, stop it first, or give this one another --db"
        )
        self.db = db
        self.holder = holder


class StoreLock:
    """An exclusive ``flock`` on a store's lock file, held while this object is open."""

    def __init__(self, db: Path, fd: int) -> None:
        self.db = db
        self.fd = fd

    @classmethod
    def try_acquire(cls, db: Path) -> StoreLock | None:
        """The lock of ``db`` if nobody holds it, else ``None`` (never waits)."""
        path = lock_path(db)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise OSError(
                exc.errno, f"cannot lock {path} (does this filesystem support locks?): {exc}"
            ) from exc
        return cls(db, fd)

    @classmethod
    def acquire(cls, db: Path) -> StoreLock:
        """The lock of ``db``; :class:`StoreBusyError` naming the holder if it is held."""
        lock = cls.adopt(db) or cls.try_acquire(db)
        if lock is None:
            raise StoreBusyError(db, holder(db))
        return lock

    @classmethod
    def adopt(cls, db: Path) -> StoreLock | None:
        """The lock of ``db`` handed down by the process that started this one (the
        descriptor :data:`HANDOFF_ENV` names), or ``None`` if there is none for ``db``."""
        named = os.environ.pop(HANDOFF_ENV, None)
        if not named or not named.isdigit():
            return None
        fd = int(named)
        try:
            held, ours = os.fstat(fd), os.stat(lock_path(db))
        except OSError:
            return None
        if (held.st_dev, held.st_ino) != (ours.st_dev, ours.st_ino):
            return None  # a descriptor for another store's lock: not ours to use
        try:
            # The open file description holds the lock already: this only confirms it.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None
        # Worker processes must not inherit it: one that outlived us would hold the store.
        os.set_inheritable(fd, False)
        return cls(db, fd)

    def record(self, pid: int | None = None) -> None:
        """Write the holder (this host, ``pid`` or ours, now) into the lock file."""
        data = orjson.dumps(
            {"host": this_host(), "pid": pid or os.getpid(), "since": utcnow(), "db": str(self.db)}
        )
        padded = data.ljust(_RECORD_BYTES)
        os.pwrite(self.fd, padded, 0)
        os.ftruncate(self.fd, len(padded))  # a longer earlier record leaves no tail

    def close(self) -> None:
        """Close our descriptor: the lock is released unless a process we started holds a
        copy of it (a handed-down lock stays with the service)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
