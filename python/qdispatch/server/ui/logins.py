"""Who is logged in to the dashboard: :class:`Logins`, a table in the service's memory.

A browser logs in by posting its token once. The cookie it gets back holds a random
login id, never the token; this table keeps only the token's hash (the store's own
SHA-256, :func:`~qdispatch.server.store.hash_token`), which is what the store looks tokens
up by: it is checked on every request exactly as a bearer token is, so a revoked or
expired token ends its logins at once, and a dump of this process's memory holds no
token to replay. The token is never written to a page, a script or a log.

:class:`LoginThrottle` bounds guessing: failed logins per client address go through a
token bucket. A login also has
its own CSRF token (sent back in a header or a form field with every POST) and an
expiry; logins end with the process.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Logins one user may hold at once (a new one ends their oldest).
MAX_LOGINS_PER_USER = 32
#: Client addresses whose failed logins are remembered at once.
MAX_THROTTLED_ADDRESSES = 100_000


@dataclass
class Login:
    """One browser's login: its id (the cookie's value), the hash of the token it
    logged in with, its CSRF token, whose it is and when it ends (the clock's seconds)."""

    id: str
    token_hash: str
    csrf: str
    user: str
    expires: float


class Logins:
    """The dashboard's logins, at most ``limit`` in all (a new one ends the oldest),
    each valid for ``lifetime`` seconds. Used from the event loop only."""

    def __init__(
        self, lifetime: float, limit: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if lifetime <= 0 or limit < 1:
            raise ValueError("a login's lifetime and the number of logins must be positive")
        self.lifetime = lifetime
        self.limit = limit
        self._clock = clock
        self._logins: dict[str, Login] = {}  # insertion order: oldest first

    def __len__(self) -> int:
        return len(self._logins)

    def create(self, token_hash: str, user: str) -> Login:
        """A new login of ``user``, who gave the token of ``token_hash`` (already
        checked)."""
        now = self._clock()
        for login in [v for v in self._logins.values() if v.expires <= now]:
            del self._logins[login.id]
        mine = [v.id for v in self._logins.values() if v.user == user]
        for old in mine[: max(0, len(mine) - MAX_LOGINS_PER_USER + 1)]:
            del self._logins[old]
        while len(self._logins) >= self.limit:
            del self._logins[next(iter(self._logins))]
        login = Login(
            secrets.token_urlsafe(32),
            token_hash,
            secrets.token_urlsafe(32),
            user,
            now + self.lifetime,
        )
        self._logins[login.id] = login
        return login

    def get(self, login_id: str | None) -> Login | None:
        """The login with this id, if it has not ended."""
        login = self._logins.get(login_id or "")
        if login is None:
            return None
        if login.expires <= self._clock():
            del self._logins[login.id]
            return None
        return login

    def end(self, login_id: str) -> None:
        """End a login (logout, or its token no longer passes)."""
        self._logins.pop(login_id, None)


class LoginThrottle:
    """Failed logins per client address: a token bucket each, ``per_minute`` refilled and
    ``burst`` deep. A login is only tried while its address's bucket holds a token; each
    failure takes one. At most ``limit`` addresses are remembered (the oldest is
    forgotten first, as one refilled would be). Used from the event loop only."""

    def __init__(
        self,
        per_minute: float,
        burst: int,
        limit: int = MAX_THROTTLED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("failed logins per minute and their burst must be positive")
        self.rate = per_minute / 60.0
        self.burst = burst
        self.limit = limit
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, as of)

    def _tokens(self, address: str) -> float:
        tokens, stamp = self._buckets.get(address, (float(self.burst), self._clock()))
        return min(float(self.burst), tokens + (self._clock() - stamp) * self.rate)

    def wait(self, address: str) -> float | None:
        """``None`` if a login from ``address`` may be tried now, else the seconds until
        one may."""
        tokens = self._tokens(address)
        return None if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def failed(self, address: str) -> None:
        """A login from ``address`` failed: it takes a token."""
        tokens = self._tokens(address)
        self._buckets.pop(address, None)  # re-inserted last: the newest
        self._buckets[address] = (max(0.0, tokens - 1.0), self._clock())
        while len(self._buckets) > self.limit:
            del self._buckets[next(iter(self._buckets))]
