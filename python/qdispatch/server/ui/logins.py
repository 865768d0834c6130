"""Who is logged in to the dashboard: :class:`Logins`, a table in the service's memory.

A browser logs in by posting its token once. The cookie it gets back holds a random
login id, never the token: the token stays in this process (it is checked against the
store on every request, exactly as a bearer token is, so a revoked or expired token ends
its logins at once) and is never written to a page, a script or a log. A login also has
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


@dataclass
class Login:
    """One browser's login: its id (the cookie's value), the token it logged in with,
    its CSRF token, whose it is and when it ends (the clock's seconds)."""

    id: str
    token: str
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

    def create(self, token: str, user: str) -> Login:
        """A new login of ``user``, who gave ``token`` (already checked)."""
        now = self._clock()
        for login in [v for v in self._logins.values() if v.expires <= now]:
            del self._logins[login.id]
        mine = [v.id for v in self._logins.values() if v.user == user]
        for old in mine[: max(0, len(mine) - MAX_LOGINS_PER_USER + 1)]:
            del self._logins[old]
        while len(self._logins) >= self.limit:
            del self._logins[next(iter(self._logins))]
        login = Login(
            secrets.token_urlsafe(32), token, secrets.token_urlsafe(32), user, now + self.lifetime
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
