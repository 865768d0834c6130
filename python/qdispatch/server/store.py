"""The durable job store: SQLite in WAL mode.

Everything the service knows lives here, so that a crash and restart loses nothing: users
and hashed tokens, jobs with a timestamp per status step, their inputs and results
(zlib-compressed, in a side table so that listing jobs never reads a blob), and the event
log that WebSocket clients resume from. The store is used from the service's event-loop
thread only; each public method is one transaction.

WAL with ``synchronous=NORMAL`` survives a crash of the process (``kill -9``) with every
committed transaction intact; only a power loss can lose the last few.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
import shutil
import sqlite3
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .. import _native
from ..codes import INVALID_REQUEST
from ..constants import (
    ACTIVE_STATUSES,
    DONE,
    ERROR,
    FINAL_STATUSES,
    QUEUED,
    RUNNING,
    SESSION_CANCELLED,
    SESSION_CLOSED,
    SESSION_EXPIRED,
    SESSION_OPEN,
    utcnow,
)
from .errors import ServiceError, StorageFull

# 2: tokens gained id, label, expires, last_used, revoked and operator.
SCHEMA_VERSION = 2


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    project TEXT,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    created TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT 'cli'
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    backend TEXT NOT NULL,
    kind TEXT NOT NULL,
    program_id TEXT,
    name TEXT,
    tags TEXT NOT NULL,
    status TEXT NOT NULL,
    time_per_step TEXT NOT NULL,
    created TEXT NOT NULL,
    share_level TEXT NOT NULL,
    session_id TEXT,
    idempotency_key TEXT,
    client_info TEXT,
    experiment_id TEXT,
    n_experiments INTEGER NOT NULL,
    shots INTEGER NOT NULL,
    n_instructions INTEGER NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    properties_id INTEGER,
    run_seconds REAL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    UNIQUE (owner, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, backend);
CREATE TABLE IF NOT EXISTS job_tags (
    tag TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    PRIMARY KEY (tag, job_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_data (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    kind TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data BLOB,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_by_session ON jobs (session_id) WHERE session_id IS NOT NULL;
-- A job's status events alone (its attempts, GET /jobs/{id}), not every interim result and
-- log line it published (up to ~262k).
CREATE INDEX IF NOT EXISTS events_status ON events (job_id, seq) WHERE type = 'status';
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    backend TEXT NOT NULL,
    mode TEXT NOT NULL,
    max_time REAL,
    state TEXT NOT NULL,
    accepting_jobs INTEGER NOT NULL,
    created TEXT NOT NULL,
    started TEXT,
    closed TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_owner ON sessions (owner, created);
CREATE INDEX IF NOT EXISTS sessions_by_state ON sessions (state);
CREATE TABLE IF NOT EXISTS properties (
    id INTEGER PRIMARY KEY,
    backend TEXT NOT NULL,
    digest TEXT NOT NULL,
    last_update_date TEXT NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (backend, digest)
);
"""


# What each user stores: the bytes of their jobs' Qobjs or inputs and results (as stored,
# compressed) and events (payload plus a fixed cost a row, as the per-job event budget
# counts them), kept by triggers in the transactions that write and delete them, so the
# per-user quota is one primary-key read at submission. Made, and filled from what a store
# holds, by `_migrate` when a store lacks it.
# Event rows one deleting transaction removes at most (about: a job's other rows go with
# its last slice): what a retention sweep or a DELETE makes other writers wait for.
DELETE_ROWS_PER_STEP = 5_000
USAGE_ROW_BYTES = 256  # an event's cost besides its payload: a row, an index entry
_USAGE_TABLE = (
    "CREATE TABLE user_bytes (user TEXT PRIMARY KEY, bytes INTEGER NOT NULL) WITHOUT ROWID"
)
_USAGE_FILL = f"""
INSERT INTO user_bytes
SELECT owner, SUM(bytes) FROM (
    SELECT j.owner AS owner, length(d.data) AS bytes FROM job_data d JOIN jobs j ON j.id = d.job_id
    UNION ALL
    SELECT j.owner, COALESCE(length(e.data), 0) + {USAGE_ROW_BYTES}
    FROM events e JOIN jobs j ON j.id = e.job_id
) GROUP BY owner
"""


def _usage_trigger(name: str, when: str, delta: str, row: str) -> str:
    """A trigger adding ``delta`` bytes to the owner of the job of ``row`` (NEW or OLD)."""
    return f"""
CREATE TRIGGER IF NOT EXISTS {name} AFTER {when} BEGIN
    INSERT INTO user_bytes (user, bytes)
    SELECT owner, {delta} FROM jobs WHERE id = {row}.job_id
    ON CONFLICT (user) DO UPDATE SET bytes = bytes + excluded.bytes;
END"""


_USAGE_TRIGGERS = (
    _usage_trigger("job_data_added", "INSERT ON job_data", "length(NEW.data)", "NEW"),
    _usage_trigger(
        "job_data_changed",
        "UPDATE OF data ON job_data",
        "length(NEW.data) - length(OLD.data)",
        "NEW",
    ),
    _usage_trigger("job_data_removed", "DELETE ON job_data", "-length(OLD.data)", "OLD"),
    _usage_trigger(
        "events_added",
        "INSERT ON events",
        f"COALESCE(length(NEW.data), 0) + {USAGE_ROW_BYTES}",
        "NEW",
    ),
    _usage_trigger(
        "events_removed",
        "DELETE ON events",
        f"-(COALESCE(length(OLD.data), 0) + {USAGE_ROW_BYTES})",
        "OLD",
    ),
)

# Columns added after the first release, by `ALTER TABLE ... ADD COLUMN` when a store
# lacks them (older stores; new ones too, so that there is one path): name, declaration.
_ADDED_JOB_COLUMNS = (
    ("image", "TEXT"),  # program jobs: the "<program_id>:<version>" asked for, "" if none
    ("program_version", "TEXT"),
    ("usage_estimation", "TEXT"),  # JSON {"quantum_seconds": s}
    ("timings", "TEXT"),  # JSON: a program's decode_inputs/execute/encode_result seconds
)
_ADDED_SESSION_COLUMNS = (
    ("closed_reason", "TEXT"),  # why the service closed it (idle); null if its owner did
)
# Schema 2: what `qdispatch token list/revoke` and the operator role need.
_ADDED_TOKEN_COLUMNS = (
    ("id", "TEXT"),  # short public id: listed and revocable without the secret
    ("label", "TEXT"),
    ("expires", "TEXT"),  # UTC ISO like every timestamp; NULL: never
    ("last_used", "TEXT"),  # updated at most once per LAST_USED_EVERY seconds
    ("revoked", "TEXT"),  # when; a revoked token stays listed for the record
    ("operator", "INTEGER NOT NULL DEFAULT 0"),
)
# `last_used` is a hint for the operator, not an audit log: one write per token per minute
# at most, never one per request.
LAST_USED_EVERY = 60.0
# SQLite's primary result code for "database or disk is full" (sqlite3.SQLITE_FULL from
# Python 3.11 on).
_SQLITE_FULL = 13


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite refusing a write for lack of space (``SQLITE_FULL``: the
    disk is full, or the store has reached its ``max_page_count``)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == _SQLITE_FULL)
    return "database or disk is full" in str(exc)


def hash_token(token: str) -> str:
    """Tokens are random 256-bit strings, so a plain SHA-256 is a sufficient one-way hash."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token_id() -> str:
    """A token's public id: 12 random hex characters (not the secret, nor derived from it)."""
    return secrets.token_hex(6)


#: What every token starts with: never "-" (a token as a command-line argument, `--token
#: -x…`, read as an option), and a secret scanner can recognise one left in a file.
TOKEN_PREFIX = "qd_"


def new_token() -> str:
    """A new secret token: the prefix and 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenOwner(NamedTuple):
    """Who a valid token belongs to."""

    user: str
    project: str | None
    operator: bool = False


@dataclass(frozen=True)
class TokenInfo:
    """One token as ``qdispatch token list`` shows it: never the secret nor its hash."""

    id: str
    user: str
    label: str | None
    created: str
    expires: str | None
    last_used: str | None
    revoked: str | None
    operator: bool
    origin: str


def compress(data: bytes) -> bytes:
    """zlib format, which is exactly HTTP's ``Content-Encoding: deflate``."""
    return zlib.compress(data, 3)


@dataclass
class Job:
    """One row of ``jobs``, decoded."""

    id: str
    owner: str
    backend: str
    kind: str
    program_id: str | None
    name: str | None
    tags: list[str]
    status: str
    time_per_step: dict[str, str]
    created: str
    share_level: str
    session_id: str | None
    idempotency_key: str | None
    client_info: dict[str, str] | None
    experiment_id: str | None
    n_experiments: int
    shots: int
    n_instructions: int
    error: dict[str, Any] | None
    attempts: int
    properties_id: int | None
    run_seconds: float | None
    last_seq: int
    image: str | None = None
    program_version: str | None = None
    usage_estimation: dict[str, Any] | None = None
    timings: dict[str, float] | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        """Decode a row selected with ``SELECT *``."""
        values = dict(row)
        for key in ("tags", "time_per_step", "client_info", "error", "usage_estimation", "timings"):
            if values[key] is not None:
                values[key] = orjson.loads(values[key])
        return cls(**values)

    @property
    def final(self) -> bool:
        """Whether the job's status can no longer change."""
        return self.status in FINAL_STATUSES


@dataclass
class NewJob:
    """What the service knows of a job before it is stored."""

    owner: str
    backend: str
    kind: str
    inputs: bytes
    n_experiments: int
    shots: int
    n_instructions: int
    program_id: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    share_level: str = "none"
    session_id: str | None = None
    idempotency_key: str | None = None
    client_info: dict[str, str] | None = None
    experiment_id: str | None = None
    properties_id: int | None = None
    image: str | None = None
    program_version: str | None = None
    usage_estimation: dict[str, Any] | None = None
    #: ``inputs`` compressed already (off the event loop, for big ones), else ``None``
    inputs_blob: bytes | None = None
    #: a shardable program job's pubs' executions (``programs.sharding.pub_runs``),
    #: stored as its ``pubs`` data
    pub_runs: bytes | None = None


@dataclass(frozen=True)
class Event:
    """One entry of a job's event log. ``data`` is JSON bytes; for ``result`` events it is
    ``None`` in the log (the result itself is stored once, in ``job_data``)."""

    job_id: str
    seq: int
    type: str
    data: bytes | None


@dataclass(frozen=True)
class JobFilter:
    """The filters of ``GET /jobs``."""

    backend: str | None = None
    statuses: Sequence[str] = ()
    name_regex: str | None = None
    tags: Sequence[str] = ()
    tags_operator: str = "OR"
    session_id: str | None = None
    program_id: str | None = None
    kind: str | None = None
    created_after: str | None = None
    created_before: str | None = None
    owner: str | None = None


@dataclass
class Session:
    """One row of ``sessions``, decoded."""

    id: str
    owner: str
    backend: str
    mode: str
    max_time: float | None
    state: str
    accepting_jobs: bool
    created: str
    started: str | None
    closed: str | None
    closed_reason: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Session:
        """Decode a row selected with ``SELECT *``."""
        values = dict(row)
        values["accepting_jobs"] = bool(values["accepting_jobs"])
        return cls(**values)

    @property
    def ended(self) -> bool:
        """Whether the session was cancelled or expired (nothing of it will run any more,
        apart from jobs already running)."""
        return self.state in (SESSION_CANCELLED, SESSION_EXPIRED)

    @property
    def deadline(self) -> float | None:
        """When ``max_time`` runs out, as a POSIX timestamp; ``None`` until a job of the
        session has started, or without ``max_time``."""
        if self.max_time is None or self.started is None:
            return None
        started = datetime.fromisoformat(self.started.replace("Z", "+00:00"))
        return started.timestamp() + self.max_time


def new_id() -> str:
    """A fresh id for a job or a session: 24 random hex characters."""
    return uuid.uuid4().hex[:24]


# A few patterns, compiled once each: SQLite calls regexp() per row with the pattern
# string, and a compiled pattern holds up to 2 MiB (program and lazy-DFA cache), so the
# cache is small.
@functools.lru_cache(maxsize=16)
def name_pattern(pattern: str) -> _native.NamePattern:
    """The compiled job-name filter ``pattern`` (Rust ``regex`` syntax, searched in linear
    time); ``400 invalid_request`` naming the problem when it is invalid or too long."""
    try:
        return _native.NamePattern(pattern)
    except _native.InvalidNamePatternError as exc:
        raise ServiceError(400, INVALID_REQUEST, str(exc)) from exc


def _regexp(pattern: str, value: str | None) -> bool:
    return value is not None and name_pattern(pattern).search(value)


class Store:
    """The job store. One instance per service process; not thread-safe by design."""

    def __init__(self, path: str | Path, max_bytes: int | None = None) -> None:
        """Open (or create) the store at ``path``. ``max_bytes`` caps the database's size
        (SQLite's ``max_page_count``): past it every write that needs more room is
        refused as if the disk were full (:class:`~qdispatch.server.errors.StorageFull`),
        until deletions free pages."""
        self.path = Path(path)
        self.max_bytes = max_bytes
        _private_file(self.path)
        self._last_used: dict[str, float] = {}  # token hash -> when last_used was written
        #: writes refused for lack of space since the store was opened
        self.refused_writes = 0
        #: when the first of the writes refused since the last one that succeeded was
        #: refused (UTC ISO); ``None`` while writes succeed
        self.full_since: str | None = None
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.create_function("regexp", 2, _regexp, deterministic=True)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)  # idempotent; executescript commits on its own
        self._migrate()
        if max_bytes is not None:
            # Per connection, not stored in the file. A store already larger keeps its
            # size (SQLite never sets it below the current page count) and takes nothing
            # new until pages are freed.
            pages = max(1, max_bytes // self._pragma("page_size"))
            self._db.execute(f"PRAGMA max_page_count = {pages}")

    def _pragma(self, name: str) -> int:
        return int(self._db.execute(f"PRAGMA {name}").fetchone()[0])

    def storage(self) -> dict[str, Any]:
        """How full the store is, for ``GET /info``: ``full`` while writes are refused for
        lack of space (since ``full_since``; a write that succeeds clears it), the
        writes refused since start, the database's size and its cap, and the free space
        of the store's file system."""
        try:
            disk_free: int | None = shutil.disk_usage(self.path.parent).free
        except OSError:
            disk_free = None
        return {
            "full": self.full_since is not None,
            "full_since": self.full_since,
            "refused_writes": self.refused_writes,
            "size_bytes": self._pragma("page_count") * self._pragma("page_size"),
            "max_bytes": self.max_bytes,
            "disk_free_bytes": disk_free,
        }

    def _migrate(self) -> None:
        """Add the columns a store made by an earlier version lacks, give its tokens ids,
        and record the schema version it now has."""
        with self.transaction() as db:
            for table, added in (
                ("jobs", _ADDED_JOB_COLUMNS),
                ("sessions", _ADDED_SESSION_COLUMNS),
                ("tokens", _ADDED_TOKEN_COLUMNS),
            ):
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, declaration in added:
                    if name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
            for (rowid,) in db.execute("SELECT rowid FROM tokens WHERE id IS NULL").fetchall():
                db.execute("UPDATE tokens SET id = ? WHERE rowid = ?", (new_token_id(), rowid))
            db.execute("CREATE UNIQUE INDEX IF NOT EXISTS tokens_by_id ON tokens (id)")
            if not db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'user_bytes'"
            ).fetchone():
                db.execute(_USAGE_TABLE)
                db.execute(_USAGE_FILL)
            for trigger in _USAGE_TRIGGERS:
                db.execute(trigger)
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    def close(self) -> None:
        """Close the connection; the WAL is checkpointed by SQLite."""
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back if the block (or the commit) raises. A
        write refused for lack of space raises
        :class:`~qdispatch.server.errors.StorageFull` (``507 storage_full``)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as exc:
            # SQLite may have rolled the transaction back itself (it does on SQLITE_FULL);
            # a ROLLBACK then would fail and hide the error that matters.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if is_full(exc):
                self.refused_writes += 1
                self.full_since = self.full_since or utcnow()
                raise StorageFull() from exc
            raise
        self.full_since = None

    # -- meta ---------------------------------------------------------------------------

    def meta(self, key: str, default: str | None = None) -> str | None:
        """A value of the ``meta`` table."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the ``meta`` table."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- users and tokens ---------------------------------------------------------------

    def create_token(
        self,
        user: str,
        project: str | None = None,
        origin: str = "cli",
        *,
        label: str | None = None,
        expires: str | None = None,
        operator: bool = False,
    ) -> str:
        """Create ``user`` if needed and return a new bearer token for it (stored hashed).

        ``origin`` says who made it: ``cli`` (``qdispatch token create``) or
        ``state-file`` (a loopback service, for its local user; see :meth:`revoke_tokens`).
        ``expires`` is a UTC ISO timestamp (``None``: never); an ``operator`` token sees
        and cancels every user's jobs and pauses backends.
        """
        return self.create_token_with_id(
            user, project, origin, label=label, expires=expires, operator=operator
        )[0]

    def create_token_with_id(
        self,
        user: str,
        project: str | None = None,
        origin: str = "cli",
        *,
        label: str | None = None,
        expires: str | None = None,
        operator: bool = False,
    ) -> tuple[str, str]:
        """As :meth:`create_token`, answering ``(token, id)``."""
        if not user or not user.strip():
            raise ValueError("user name must not be empty")
        token = new_token()
        token_id = new_token_id()
        now = utcnow()
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO users VALUES (?, ?, ?)", (user, project, now))
            if project is not None:
                db.execute("UPDATE users SET project = ? WHERE name = ?", (project, user))
            db.execute(
                "INSERT INTO tokens (hash, user, created, origin, id, label, expires, operator) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (hash_token(token), user, now, origin, token_id, label, expires, int(operator)),
            )
        return token, token_id

    def revoke_tokens(self, user: str, origin: str) -> int:
        """Revoke ``user``'s tokens of ``origin``; returns how many there were."""
        with self.transaction() as db:
            cur = db.execute("DELETE FROM tokens WHERE user = ? AND origin = ?", (user, origin))
        return cur.rowcount

    def revoke_token(self, token_or_id: str) -> TokenInfo | None:
        """Revoke one token, named by its id or by the secret itself; answers it, or
        ``None`` if there is no such token. It stops working at once, on every request
        and on open streams (which re-check their token every second)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT rowid FROM tokens WHERE id = ? OR hash = ?",
                (token_or_id, hash_token(token_or_id)),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE tokens SET revoked = coalesce(revoked, ?) WHERE rowid = ?",
                (utcnow(), row[0]),
            )
            return self._token_info(db, "t.rowid = ?", [row[0]])[0]

    def tokens(self, user: str | None = None, include_revoked: bool = False) -> list[TokenInfo]:
        """The tokens (of ``user``), oldest first; revoked ones only if asked."""
        where, args = ["1"], []
        if user is not None:
            where.append("t.user = ?")
            args.append(user)
        if not include_revoked:
            where.append("t.revoked IS NULL")
        return self._token_info(self._db, " AND ".join(where), args)

    @staticmethod
    def _token_info(db: sqlite3.Connection, where: str, args: list[Any]) -> list[TokenInfo]:
        rows = db.execute(
            "SELECT t.id, t.user, t.label, t.created, t.expires, t.last_used, t.revoked, "
            f"t.operator, t.origin FROM tokens t WHERE {where} ORDER BY t.created, t.rowid",
            args,
        )
        return [
            TokenInfo(
                id=row[0],
                user=row[1],
                label=row[2],
                created=row[3],
                expires=row[4],
                last_used=row[5],
                revoked=row[6],
                operator=bool(row[7]),
                origin=row[8],
            )
            for row in rows
        ]

    def user_for_token(self, token: str) -> TokenOwner | None:
        """``(user, project, operator)`` for a valid token (not revoked, not expired), else
        ``None``. Notes when it was used, at most once a minute per token."""
        return self.user_for_token_hash(hash_token(token))

    def user_for_token_hash(self, digest: str) -> TokenOwner | None:
        """:meth:`user_for_token` for a token known by its hash (:func:`hash_token`): the
        dashboard's logins keep only that."""
        now = utcnow()
        row = self._db.execute(
            "SELECT u.name, u.project, t.operator FROM tokens t JOIN users u ON u.name = t.user "
            "WHERE t.hash = ? AND t.revoked IS NULL AND (t.expires IS NULL OR t.expires > ?)",
            (digest, now),
        ).fetchone()
        if row is None:
            return None
        tick = time.monotonic()
        if tick - self._last_used.get(digest, -LAST_USED_EVERY) >= LAST_USED_EVERY:
            self._last_used[digest] = tick
            # A hint, not a record: a full disk or a held lock must not refuse a read.
            with (
                contextlib.suppress(StorageFull, sqlite3.OperationalError),
                self.transaction() as db,
            ):
                db.execute("UPDATE tokens SET last_used = ? WHERE hash = ?", (now, digest))
        return TokenOwner(row[0], row[1], bool(row[2]))

    def project_of(self, user: str) -> str | None:
        """The project a user belongs to, if any."""
        row = self._db.execute("SELECT project FROM users WHERE name = ?", (user,)).fetchone()
        return row[0] if row else None

    # -- properties snapshots -----------------------------------------------------------

    def properties_snapshot(self, backend: str, data: bytes, last_update_date: str) -> int:
        """Store a backend-properties snapshot once; return its id for jobs to refer to."""
        digest = hashlib.sha256(data).hexdigest()
        row = self._db.execute(
            "SELECT id FROM properties WHERE backend = ? AND digest = ?", (backend, digest)
        ).fetchone()
        if row:
            return int(row[0])
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO properties (backend, digest, last_update_date, data) "
                "VALUES (?, ?, ?, ?)",
                (backend, digest, last_update_date, compress(data)),
            )
        return int(cur.lastrowid or 0)

    def properties(self, properties_id: int) -> bytes | None:
        """A stored properties snapshot (JSON bytes)."""
        row = self._db.execute(
            "SELECT data FROM properties WHERE id = ?", (properties_id,)
        ).fetchone()
        return zlib.decompress(row[0]) if row else None

    def properties_at(self, backend: str, when: str) -> bytes | None:
        """The newest snapshot of ``backend`` dated at or before ``when``."""
        row = self._db.execute(
            "SELECT data FROM properties WHERE backend = ? AND last_update_date <= ? "
            "ORDER BY last_update_date DESC LIMIT 1",
            (backend, when),
        ).fetchone()
        return zlib.decompress(row[0]) if row else None

    # -- jobs ---------------------------------------------------------------------------

    def job_by_idempotency_key(self, owner: str, key: str) -> Job | None:
        """The job ``owner`` created earlier with the same idempotency key."""
        row = self._db.execute(
            "SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, key)
        ).fetchone()
        return Job.from_row(row) if row else None

    def create_job(self, new: NewJob) -> tuple[Job, Event]:
        """Store a new job as QUEUED, with its inputs and its first event."""
        job_id = new_id()
        now = utcnow()
        steps = {"CREATED": now, "VALIDATED": now, QUEUED: now}
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, owner, backend, kind, program_id, name, tags, status, "
                "time_per_step, created, share_level, session_id, idempotency_key, "
                "client_info, experiment_id, n_experiments, shots, n_instructions, "
                "properties_id, image, program_version, usage_estimation, last_seq) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,1)",
                (
                    job_id,
                    new.owner,
                    new.backend,
                    new.kind,
                    new.program_id,
                    new.name,
                    orjson.dumps(new.tags).decode(),
                    QUEUED,
                    orjson.dumps(steps).decode(),
                    now,
                    new.share_level,
                    new.session_id,
                    new.idempotency_key,
                    orjson.dumps(new.client_info).decode() if new.client_info else None,
                    new.experiment_id,
                    new.n_experiments,
                    new.shots,
                    new.n_instructions,
                    new.properties_id,
                    new.image,
                    new.program_version,
                    orjson.dumps(new.usage_estimation).decode() if new.usage_estimation else None,
                ),
            )
            db.executemany(
                "INSERT OR IGNORE INTO job_tags VALUES (?, ?)", [(t, job_id) for t in new.tags]
            )
            db.execute(
                "INSERT INTO job_data VALUES (?, 'inputs', ?)",
                (job_id, new.inputs_blob or compress(new.inputs)),
            )
            if new.pub_runs is not None:
                db.execute(
                    "INSERT INTO job_data VALUES (?, 'pubs', ?)", (job_id, compress(new.pub_runs))
                )
            event = Event(job_id, 1, "status", orjson.dumps({"status": QUEUED, "time": now}))
            db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (job_id, 1, "status", event.data))
        job = self.job(job_id)
        assert job is not None
        return job, event

    def job(self, job_id: str) -> Job | None:
        """One job by id, or ``None``."""
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def jobs_by_ids(self, job_ids: Iterable[str]) -> dict[str, Job]:
        """Many jobs by id in one query (ids that do not exist are absent)."""
        ids = list(dict.fromkeys(job_ids))
        found: dict[str, Job] = {}
        for start in range(0, len(ids), 500):  # stay under SQLite's variable limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(f"SELECT * FROM jobs WHERE id IN ({marks})", chunk):
                job = Job.from_row(row)
                found[job.id] = job
        return found

    def jobs_with_status(self, *statuses: str) -> list[Job]:
        """Jobs in any of ``statuses``, oldest first."""
        marks = ",".join("?" * len(statuses))
        rows = self._db.execute(
            f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY created, rowid", statuses
        )
        return [Job.from_row(row) for row in rows]

    def count_active(self, owner: str) -> int:
        """How many of ``owner``'s jobs are queued or running."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN (?, ?)",
            (owner, *ACTIVE_STATUSES),
        ).fetchone()
        return int(row[0])

    def job_counts(self) -> dict[tuple[str, str], int]:
        """How many jobs there are per ``(status, backend)``: one pass over the
        ``jobs_by_status`` index (what ``GET /metrics`` shows)."""
        rows = self._db.execute(
            "SELECT status, backend, COUNT(*) FROM jobs GROUP BY status, backend"
        )
        return {(row[0], row[1]): int(row[2]) for row in rows}

    def list_jobs(
        self,
        visible_to: tuple[str, str | None] | None,
        filters: JobFilter,
        limit: int,
        skip: int,
        descending: bool,
    ) -> tuple[list[Job], int]:
        """A page of the jobs ``visible_to`` (user, project) may see (``None``: every job,
        for an operator), and the total count."""
        where = ["1"]
        args: list[Any] = []
        if visible_to is not None:
            user, project = visible_to
            where = [
                "(owner = ? OR share_level = 'global' OR (share_level = 'project' AND "
                "? IS NOT NULL AND owner IN (SELECT name FROM users WHERE project = ?)))"
            ]
            args = [user, project, project]
        if filters.owner:
            where.append("owner = ?")
            args.append(filters.owner)
        if filters.backend:
            where.append("backend = ?")
            args.append(filters.backend)
        if filters.statuses:
            where.append(f"status IN ({','.join('?' * len(filters.statuses))})")
            args.extend(filters.statuses)
        if filters.name_regex:
            name_pattern(filters.name_regex)  # a bad pattern is a 400 before any row is read
            where.append("regexp(?, name)")
            args.append(filters.name_regex)
        if filters.session_id:
            where.append("session_id = ?")
            args.append(filters.session_id)
        if filters.program_id:
            where.append("program_id = ?")
            args.append(filters.program_id)
        if filters.kind:
            where.append("kind = ?")
            args.append(filters.kind)
        if filters.created_after:
            where.append("created >= ?")
            args.append(filters.created_after)
        if filters.created_before:
            where.append("created <= ?")
            args.append(filters.created_before)
        if filters.tags:
            marks = ",".join("?" * len(filters.tags))
            if filters.tags_operator == "AND":
                where.append(
                    f"(SELECT COUNT(*) FROM job_tags t WHERE t.job_id = jobs.id "
                    f"AND t.tag IN ({marks})) = ?"
                )
                args.extend(filters.tags)
                args.append(len(set(filters.tags)))
            else:
                where.append(f"id IN (SELECT job_id FROM job_tags WHERE tag IN ({marks}))")
                args.extend(filters.tags)
        clause = " AND ".join(where)
        total = int(
            self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE {clause}", args).fetchone()[0]
        )
        order = "DESC" if descending else "ASC"
        rows = self._db.execute(
            f"SELECT * FROM jobs WHERE {clause} ORDER BY created {order}, rowid {order} "
            "LIMIT ? OFFSET ?",
            [*args, limit, skip],
        )
        return [Job.from_row(row) for row in rows], total

    def job_ids_with_tag(self, tag: str) -> list[str]:
        """Ids of every job carrying ``tag``."""
        return [r[0] for r in self._db.execute("SELECT job_id FROM job_tags WHERE tag = ?", (tag,))]

    def inputs(self, job_id: str) -> bytes:
        """The job's inputs (its Qobj, or a program's parameters) as JSON bytes."""
        blob = self.data(job_id, "inputs")
        if blob is None:
            raise KeyError(f"job '{job_id}' has no stored inputs")
        return zlib.decompress(blob)

    def pub_runs(self, job_id: str) -> bytes | None:
        """A shardable program job's pubs' executions (``programs.sharding.pub_runs``);
        ``None`` for other jobs, and for jobs stored before the service kept them."""
        blob = self.data(job_id, "pubs")
        return zlib.decompress(blob) if blob is not None else None

    def data(self, job_id: str, kind: str) -> bytes | None:
        """A stored blob of the job, still compressed (zlib)."""
        row = self._db.execute(
            "SELECT data FROM job_data WHERE job_id = ? AND kind = ?", (job_id, kind)
        ).fetchone()
        return bytes(row[0]) if row else None

    def _append_event(
        self, db: sqlite3.Connection, job_id: str, kind: str, data: bytes | None
    ) -> Event:
        seq = db.execute(
            "UPDATE jobs SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq", (job_id,)
        ).fetchone()[0]
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (job_id, seq, kind, data))
        return Event(job_id, seq, kind, data)

    def set_status(
        self,
        job_id: str,
        status: str,
        *,
        error: dict[str, Any] | None = None,
        result: bytes | None = None,
        result_blob: bytes | None = None,
        run_seconds: float | None = None,
        attempts_delta: int = 0,
        step: str | None = None,
        note: str | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[Event]:
        """Move a job to ``status`` (with its result or error) and log the events.

        ``step`` names the time-per-step entry (defaults to the status); ``note`` goes into
        the status event, e.g. why a job was requeued; ``timings`` are a program's steps.
        ``result_blob`` is the result compressed already (off the event loop).
        """
        if result is not None and result_blob is None:
            result_blob = compress(result)
        now = utcnow()
        events: list[Event] = []
        with self.transaction() as db:
            row = db.execute("SELECT time_per_step FROM jobs WHERE id = ?", (job_id,)).fetchone()
            steps = orjson.loads(row[0])
            steps[step or ("COMPLETED" if status == DONE else status)] = now
            db.execute(
                "UPDATE jobs SET status = ?, time_per_step = ?, error = ?, "
                "run_seconds = COALESCE(?, run_seconds), attempts = attempts + ?, "
                "timings = COALESCE(?, timings) WHERE id = ?",
                (
                    status,
                    orjson.dumps(steps).decode(),
                    orjson.dumps(error).decode() if error else None,
                    run_seconds,
                    attempts_delta,
                    orjson.dumps(timings).decode() if timings else None,
                    job_id,
                ),
            )
            if result_blob is not None:
                # An upsert, not INSERT OR REPLACE: a replaced row fires no delete trigger,
                # and the owner's stored bytes would count both results.
                db.execute(
                    "INSERT INTO job_data VALUES (?, 'result', ?) ON CONFLICT (job_id, kind) "
                    "DO UPDATE SET data = excluded.data",
                    (job_id, result_blob),
                )
            payload: dict[str, Any] = {"status": status, "time": now}
            if error:
                payload["error"] = error
            if note:
                payload["note"] = note
            if result_blob is not None:
                # A ``result`` event follows: a client waits for it rather than fetching.
                payload["has_result"] = True
            events.append(self._append_event(db, job_id, "status", orjson.dumps(payload)))
            if result_blob is not None:
                events.append(self._append_event(db, job_id, "result", None))
        return events

    def append_event(self, job_id: str, kind: str, data: bytes) -> Event:
        """Log one event (interim result, log line) for a job."""
        with self.transaction() as db:
            return self._append_event(db, job_id, kind, data)

    def events_since(self, job_id: str, after_seq: int, limit: int = -1) -> list[Event]:
        """The job's events with ``seq > after_seq``, in order (at most ``limit``; -1: all)."""
        rows = self._db.execute(
            "SELECT job_id, seq, type, data FROM events WHERE job_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (job_id, after_seq, limit),
        )
        return [Event(r[0], r[1], r[2], r[3]) for r in rows]

    def newest_events(self, job_id: str, types: Sequence[str], limit: int) -> list[Event]:
        """The job's newest ``limit`` events of these ``types``, oldest first (read
        backwards along the job's seq index: as cheap for a job of millions of events)."""
        marks = ",".join("?" * len(types))
        rows = self._db.execute(
            f"SELECT job_id, seq, type, data FROM events WHERE job_id = ? AND type IN ({marks}) "
            "ORDER BY seq DESC LIMIT ?",
            (job_id, *types, limit),
        ).fetchall()
        return [Event(r[0], r[1], r[2], r[3]) for r in reversed(rows)]

    def last_seq(self, job_id: str) -> int:
        """The seq of the job's newest event (``0`` with none)."""
        row = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (job_id,)
        ).fetchone()
        return int(row[0])

    def count_events_before(self, job_id: str, types: Sequence[str], seq: int, cap: int) -> int:
        """How many of the job's events of these ``types`` come before ``seq``, counted up
        to ``cap`` (a bounded read: a caller says "more than ``cap``" at ``cap``)."""
        marks = ",".join("?" * len(types))
        row = self._db.execute(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE job_id = ? AND seq < ? "
            f"AND type IN ({marks}) LIMIT ?)",
            (job_id, seq, *types, cap),
        ).fetchone()
        return int(row[0])

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        """Each run of the job on a worker, from its status events: ``start`` and ``end``
        times, ``outcome`` (``done``, ``error``, ``cancelled``, ``requeued``, or
        ``running`` while it runs) and ``reason`` (the error's message or the requeue
        note; ``None`` for ``done``)."""
        rows = self._db.execute(
            # The partial index: the primary key would read every event of the job.
            "SELECT data FROM events INDEXED BY events_status "
            "WHERE job_id = ? AND type = 'status' ORDER BY seq",
            (job_id,),
        )
        attempts: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for (data,) in rows:
            status = orjson.loads(data)
            if status["status"] == RUNNING:
                current = {"start": status["time"], "end": None, "outcome": "running"}
                current["reason"] = None
                attempts.append(current)
            elif current is not None:
                error = status.get("error") or {}
                current["end"] = status["time"]
                current["outcome"] = (
                    "requeued" if status["status"] == QUEUED else status["status"].lower()
                )
                current["reason"] = status.get("note") or error.get("message")
                if error.get("code"):
                    current["code"] = error["code"]
                current = None
        return attempts

    def delete_job(self, job_id: str) -> bool:
        """:meth:`delete_job_steps` run to the end: ``True`` if the job was deleted."""
        return sum(self.delete_job_steps(job_id)) > 0

    def delete_job_steps(self, job_id: str) -> Iterator[int]:
        """Deletes a finished job with its Qobj or inputs, result, events and tags, in
        transactions of at most about ``DELETE_ROWS_PER_STEP`` rows (a job may hold
        ~262,000 events); yields after each step, the last one yielding 1 if the job was
        deleted. Yields only 0 when the job is not there or not finished: deleting a live
        job would lose it (a final status never changes, and is read again under the
        write lock before the job's row goes)."""
        job = self.job(job_id)
        if job is None or job.status not in FINAL_STATUSES:
            yield 0
            return
        yield from self._delete_final_jobs([job_id])

    def _delete_final_jobs(self, job_ids: list[str]) -> Iterator[int]:
        """Deletes the final jobs among ``job_ids`` with everything stored for them,
        yielding how many each step deleted. A step's transaction deletes at most about
        ``DELETE_ROWS_PER_STEP`` event rows, so that other writers (every request that
        writes, dispatch) wait no longer than that for the write lock: a job with more
        events has them deleted newest first, a slice a step, before its turn comes."""
        final = sorted(FINAL_STATUSES)
        marks = ",".join("?" * len(final))
        pending: list[str] = []
        rows = 0
        for job_id in job_ids:
            (top,) = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (job_id,)
            ).fetchone()
            while top > DELETE_ROWS_PER_STEP:
                top -= DELETE_ROWS_PER_STEP
                with self.transaction() as db:
                    # Only a final job's events: its status is read under the write lock.
                    db.execute(
                        f"DELETE FROM events WHERE job_id = ? AND seq > ? AND EXISTS "
                        f"(SELECT 1 FROM jobs WHERE id = ? AND status IN ({marks}))",
                        (job_id, top, job_id, *final),
                    )
                yield 0
            if pending and rows + top > DELETE_ROWS_PER_STEP:
                yield self._delete_jobs_now(pending)
                pending, rows = [], 0
            pending.append(job_id)
            rows += top
        if pending:
            yield self._delete_jobs_now(pending)

    def _delete_jobs_now(self, job_ids: list[str]) -> int:
        """Deletes, in one transaction, the jobs of ``job_ids`` that are final (read under
        the write lock) with their rows in every table; returns how many."""
        final = sorted(FINAL_STATUSES)
        with self.transaction() as db:
            ids = ",".join("?" * len(job_ids))
            marks = ",".join("?" * len(final))
            gone = [
                row[0]
                for row in db.execute(
                    f"SELECT id FROM jobs WHERE id IN ({ids}) AND status IN ({marks})",
                    (*job_ids, *final),
                )
            ]
            if gone:
                in_gone = ",".join("?" * len(gone))
                for table in ("events", "job_data", "job_tags"):
                    db.execute(f"DELETE FROM {table} WHERE job_id IN ({in_gone})", gone)
                db.execute(f"DELETE FROM jobs WHERE id IN ({in_gone})", gone)
        return len(gone)

    def event_bytes(self, job_id: str, overhead: int) -> int:
        """The interim results and log lines ``job_id`` has published, in bytes, each
        counted as its payload plus ``overhead``: what its event budget has spent."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(COALESCE(length(data), 0) + ?), 0) FROM events "
            "WHERE job_id = ? AND type IN ('interim', 'log')",
            (overhead, job_id),
        ).fetchone()
        return int(row[0])

    def stored_bytes(self, user: str) -> int:
        """What ``user``'s jobs store: Qobjs or inputs, results and events (their payloads
        plus ``USAGE_ROW_BYTES`` each), as the per-user storage quota counts them."""
        row = self._db.execute("SELECT bytes FROM user_bytes WHERE user = ?", (user,)).fetchone()
        return int(row[0]) if row else 0

    def update_name(self, job_id: str, name: str | None) -> None:
        """Rename a job."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET name = ? WHERE id = ?", (name, job_id))

    def update_tags(self, job_id: str, tags: list[str]) -> None:
        """Replace a job's tags."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET tags = ? WHERE id = ?", (orjson.dumps(tags).decode(), job_id)
            )
            db.execute("DELETE FROM job_tags WHERE job_id = ?", (job_id,))
            db.executemany(
                "INSERT OR IGNORE INTO job_tags VALUES (?, ?)", [(t, job_id) for t in tags]
            )

    # -- sessions -----------------------------------------------------------------------

    def create_session(
        self, owner: str, backend: str, mode: str, max_time: float | None
    ) -> Session:
        """Store a new open session."""
        session_id = new_id()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sessions (id, owner, backend, mode, max_time, state, "
                "accepting_jobs, created) VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
                (session_id, owner, backend, mode, max_time, SESSION_OPEN, utcnow()),
            )
        found = self.session(session_id)
        assert found is not None
        return found

    def session(self, session_id: str) -> Session | None:
        """One session by id, or ``None``."""
        row = self._db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return Session.from_row(row) if row else None

    def session_mode(self, session_id: str) -> str | None:
        """A session's mode, or ``None`` if there is no such session."""
        row = self._db.execute("SELECT mode FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return row[0] if row else None

    def list_sessions(
        self,
        owner: str | None,
        state: str | None,
        backend: str | None,
        limit: int,
        skip: int,
    ) -> tuple[list[Session], int]:
        """A page of ``owner``'s sessions (``None``: everyone's), newest first, and the
        total count."""
        where = ["1"]
        args: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if state:
            where.append("state = ?")
            args.append(state)
        if backend:
            where.append("backend = ?")
            args.append(backend)
        clause = " AND ".join(where)
        total = int(
            self._db.execute(f"SELECT COUNT(*) FROM sessions WHERE {clause}", args).fetchone()[0]
        )
        rows = self._db.execute(
            f"SELECT * FROM sessions WHERE {clause} ORDER BY created DESC, rowid DESC "
            "LIMIT ? OFFSET ?",
            [*args, limit, skip],
        )
        return [Session.from_row(row) for row in rows], total

    def end_session(self, session_id: str, state: str, reason: str | None = None) -> None:
        """Stop a session taking jobs: ``closed``, ``cancelled`` or ``expired``. ``closed``
        keeps the time it first stopped taking jobs; ``reason`` says why the service
        ended it (kept from the first time it was given)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE sessions SET state = ?, accepting_jobs = 0, closed = COALESCE(closed, ?), "
                "closed_reason = COALESCE(closed_reason, ?) WHERE id = ?",
                (state, utcnow(), reason, session_id),
            )

    def idle_sessions(self) -> list[str]:
        """The ids of open sessions with no job queued or running."""
        rows = self._db.execute(
            "SELECT id FROM sessions s WHERE state = ? AND NOT EXISTS (SELECT 1 FROM jobs j "
            "WHERE j.session_id = s.id AND j.status IN (?, ?))",
            (SESSION_OPEN, *ACTIVE_STATUSES),
        )
        return [row[0] for row in rows]

    def session_started(self, session_id: str) -> None:
        """Record that a job of the session is running, if none had before: ``max_time``
        counts from then."""
        with self.transaction() as db:
            db.execute(
                "UPDATE sessions SET started = ? WHERE id = ? AND started IS NULL",
                (utcnow(), session_id),
            )

    def session_job_counts(self, session_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Per session: job status → how many of its jobs have it."""
        counts: dict[str, dict[str, int]] = {s: {} for s in session_ids}
        for start in range(0, len(session_ids), 500):  # stay under SQLite's variable limit
            chunk = session_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT session_id, status, COUNT(*) FROM jobs WHERE session_id IN ({marks}) "
                "GROUP BY session_id, status",
                chunk,
            )
            for session_id, status, n in rows:
                counts[session_id][status] = int(n)
        return counts

    def session_usage(self, session_id: str) -> float:
        """Execution seconds of the session's jobs so far (their ``run_seconds``)."""
        row = self._db.execute(
            "SELECT SUM(COALESCE(run_seconds, 0)) FROM jobs WHERE session_id = ?", (session_id,)
        ).fetchone()
        return float(row[0] or 0.0)

    def session_jobs(self, session_id: str, status: str) -> list[Job]:
        """The session's jobs in ``status``, oldest first."""
        rows = self._db.execute(
            "SELECT * FROM jobs WHERE session_id = ? AND status = ? ORDER BY created, rowid",
            (session_id, status),
        )
        return [Job.from_row(row) for row in rows]

    def sessions_with_deadline(self) -> list[Session]:
        """Sessions that can still expire: started, with a ``max_time``, and open or
        closed with jobs still queued."""
        rows = self._db.execute(
            "SELECT * FROM sessions s WHERE started IS NOT NULL AND max_time IS NOT NULL AND "
            "(state = ? OR (state = ? AND EXISTS (SELECT 1 FROM jobs j "
            "WHERE j.session_id = s.id AND j.status = ?)))",
            (SESSION_OPEN, SESSION_CLOSED, QUEUED),
        )
        return [Session.from_row(row) for row in rows]

    def delete_finished_before(self, cutoff_iso: str, batch: int = 500) -> int:
        """Retention: delete the final jobs (DONE, ERROR, CANCELLED) whose last status change
        is older than ``cutoff_iso`` (a UTC ISO timestamp), with their tags, inputs, results
        and events, then the ended sessions left with no job. Queued and running jobs are
        never touched. Returns how many jobs were deleted.

        Each ``batch`` of jobs is its own short transaction (see :meth:`sweep_finished`,
        which this runs to the end), so that other writers wait at most one batch.
        """
        return sum(self.sweep_finished(cutoff_iso, batch))

    def sweep_finished(self, cutoff_iso: str, batch: int = 500) -> Iterator[int]:
        """:meth:`delete_finished_before` one step at a time: each step looks at the next
        ``batch`` jobs in rowid order and deletes those of them that ended before
        ``cutoff_iso``, in transactions of at most about ``DELETE_ROWS_PER_STEP`` event
        rows, yielding how many each deleted; the ended sessions left without jobs go in a
        last step. No statement or transaction stays open between steps, so the service
        runs a sweep on its own connection, letting requests and dispatch use it between
        any two steps."""
        if batch < 1:
            raise ValueError("batch must be positive")
        final = sorted(FINAL_STATUSES)
        marks = ",".join("?" * len(final))
        # A job's end is its newest time-per-step entry: the final step's name varies
        # (COMPLETED, ERROR, CANCELLED...), and every entry is the same ISO format, so the
        # strings order as the times do.
        ended = "(SELECT MAX(value) FROM json_each(time_per_step))"
        # Jobs created after the sweep began ended after the cutoff: the scan stops there.
        top = self._db.execute("SELECT MAX(rowid) FROM jobs").fetchone()[0] or 0
        after = 0
        while after < top:
            # The window: the next `batch` rows (a walk of the rowid b-tree, no sort).
            row = self._db.execute(
                "SELECT rowid FROM jobs WHERE rowid > ? ORDER BY rowid LIMIT 1 OFFSET ?",
                (after, batch - 1),
            ).fetchone()
            last = min(row[0], top) if row else top
            gone = [
                r[0]
                for r in self._db.execute(
                    # NOT INDEXED: the rowid range bounds the work; the status index would
                    # visit every final job of the store at each step.
                    f"SELECT id FROM jobs NOT INDEXED WHERE rowid > ? AND rowid <= ? "
                    f"AND status IN ({marks}) AND {ended} < ?",
                    (after, last, *final, cutoff_iso),
                )
            ]
            after = last
            if not gone:
                yield 0
            # A final status never changes; each deletion reads it again under the write
            # lock anyway, since deleting a live job would lose it.
            yield from self._delete_final_jobs(gone)
        with self.transaction() as db:
            db.execute(
                "DELETE FROM sessions WHERE state != ? AND closed IS NOT NULL AND closed < ? "
                "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.session_id = sessions.id)",
                (SESSION_OPEN, cutoff_iso),
            )
        yield 0

    def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """After a restart: requeue jobs that were RUNNING, or fail those that have been
        dispatched ``max_attempts`` times already. Returns (requeued ids, failed ids)."""
        requeued: list[str] = []
        failed: list[str] = []
        for job in self.jobs_with_status(RUNNING):
            if job.attempts >= max_attempts:
                self.set_status(
                    job.id,
                    ERROR,
                    error={
                        "code": "service_restarted",
                        "message": (
                            f"the service stopped while this job was running, "
                            f"{job.attempts} times; not trying again"
                        ),
                    },
                )
                failed.append(job.id)
            else:
                self.set_status(
                    job.id, QUEUED, step="REQUEUED", note="requeued after a service restart"
                )
                requeued.append(job.id)
        return requeued, failed


def _private_file(path: Path) -> None:
    """Create the store's directory (0700) and file (0600) before SQLite opens it: the
    store holds token hashes, circuits and results. SQLite gives the -wal and -shm files
    the database file's mode. A world-readable store made by an earlier version is
    tightened; a directory that already existed is left as it is (it may be shared)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Only a new file is opened here. Closing any descriptor of a database file drops
    # every POSIX lock this process holds on it, so opening an existing store (which
    # another connection of this process may hold) could let SQLite corrupt it.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(OSError):  # gone, or not ours to change: leave it
            if name.stat().st_mode & 0o077:
                name.chmod(0o600)
