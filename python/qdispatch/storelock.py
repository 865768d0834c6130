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

The lock also tells a client whether a state file (``server.json``) is current: after a
crash it names a port that anyone on the machine may bind next, so the client trusts it
only while the store's lock is held by the pid and host it names (:func:`current_holder`).
Whoever could write the lock file or the directory it is in could defeat all this: the
lock file is never followed through a symlink, and a directory others can write to (or
that belongs to someone else) is refused (:func:`check_private_dir`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import warnings
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
        fd = _open_lock_file(lock_path(db), os.O_RDONLY)
    except OSError:
        return None
    try:
        return _record_of(fd)
    finally:
        os.close(fd)


def current_holder(db: Path) -> Holder | None:
    """The holder of ``db``'s lock if somebody holds it right now, as its record says;
    ``None`` if nobody does (a service that crashed let it go) or there is no record.

    A shared ``flock`` that can be taken means no exclusive holder: it is let go at once.
    (It can make a ``qdispatch serve`` starting at that very instant find the store busy;
    a client starting the local service just tries again.)"""
    try:
        fd = _open_lock_file(lock_path(db), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _record_of(fd)  # held: read through the descriptor that found it so
            return None
        return None  # we could take it: nobody serves the store
    finally:
        os.close(fd)  # drops our shared lock, if we took it


def _record_of(fd: int) -> Holder | None:
    try:
        record = orjson.loads(os.pread(fd, _RECORD_BYTES, 0).rstrip(b" \0\n"))
        return Holder(str(record["host"]), int(record["pid"]), record.get("since"))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class UnsafeStoreError(OSError):
    """The store's directory or lock file could be tampered with by another user."""


def _open_lock_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` of a lock file that is never followed through a symlink (whoever planted
    one would have us lock, and write our pid into, a file of their choosing)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeStoreError(
                exc.errno,
                f"refusing the lock file {path}: it is a symbolic link; remove it (a service "
                "creates its own)",
            ) from exc
        raise


def check_private_dir(directory: Path) -> None:
    """Refuse a store directory another user could write to: one that is not ours, or that
    anyone may write (:class:`UnsafeStoreError`); warn about one our group may write.
    Whoever can write it can replace the lock file, the state file or the store."""
    info = directory.stat()
    writable_by = "anyone" if info.st_mode & stat.S_IWOTH else None
    if info.st_uid != os.geteuid() or writable_by:
        why = f"writable by {writable_by}" if writable_by else f"owned by uid {info.st_uid}"
        raise UnsafeStoreError(
            errno.EPERM,
            f"refusing the store directory {directory}: it is {why}, so another user could "
            "replace its lock, state file or store; use a directory of your own "
            f"(chmod 700 {directory}, or QDISPATCH_DATA_DIR / --db elsewhere)",
        )
    if info.st_mode & stat.S_IWGRP:
        warnings.warn(
            f"the store directory {directory} is writable by its group: its members could "
            f"replace its lock, state file or store (chmod g-w {directory})",
            stacklevel=3,
        )


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
        check_private_dir(path.parent)
        fd = _open_lock_file(path, os.O_RDWR | os.O_CREAT)
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
