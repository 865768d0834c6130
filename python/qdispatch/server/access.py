"""Who may come in, and how fast: the token cache, the per-user request rate, the
per-user and total upload slots, and each user's open event streams.

The front door (:mod:`~qdispatch.server.front`) and the body reader
(:mod:`~qdispatch.server.bodies`) ask :class:`Access` before a request costs the service
anything: an unknown token is refused before its body is read, a user over their rate is
refused before their body is read, and big bodies are read and inflated a few at a time
so that one user's uploads never hold every slot (docs/service.md, "Limits").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import TokenOwner

Lookup = Callable[[str], "TokenOwner | None"]


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class Access:
    """The state of the front door: tokens seen recently, each user's request bucket,
    upload slots and open streams. Used from the event loop only."""

    def __init__(
        self,
        lookup: Lookup,
        *,
        rate: float,
        burst: int,
        max_uploads: int,
        max_uploads_per_user: int,
        max_streams_per_user: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._clock = clock
        self.rate = rate
        self.burst = max(1, burst)
        self.max_uploads = max(1, max_uploads)
        self.max_uploads_per_user = max(1, max_uploads_per_user)
        self._buckets: dict[str, _Bucket] = {}
        self._uploads: dict[str, int] = {}
        self._uploading = 0
        self.max_streams_per_user = max_streams_per_user  # 0: no limit
        self._streams: dict[str, int] = {}

    # -- tokens --------------------------------------------------------------------------

    def user_for_token(self, token: str) -> TokenOwner | None:
        """``(user, project, operator)`` for a valid token, else ``None``. Asked of the store
        on every request (one indexed lookup of the token's hash): a revoked or expired
        token stops working at once, as ``qdispatch token revoke`` promises."""
        return self._lookup(token)

    # -- request rate ----------------------------------------------------------------------

    def admit(self, user: str) -> float | None:
        """Count one request of ``user``: ``None`` if it is within their rate, else the
        seconds until it would be (a token bucket: ``rate`` per second, ``burst`` deep)."""
        if self.rate <= 0:
            return None
        now = self._clock()
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = self._buckets[user] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate

    # -- upload slots ------------------------------------------------------------------------

    def take_upload(self, user: str) -> str | None:
        """Take an upload slot for ``user``: ``None`` when taken, else which limit is full
        (``"user"`` or ``"service"``). Never waits: a refused upload is answered at once."""
        if self._uploads.get(user, 0) >= self.max_uploads_per_user:
            return "user"
        if self._uploading >= self.max_uploads:
            return "service"
        self._uploads[user] = self._uploads.get(user, 0) + 1
        self._uploading += 1
        return None

    def release_upload(self, user: str) -> None:
        """Give back a slot taken by :meth:`take_upload`."""
        left = self._uploads.get(user, 0) - 1
        if left > 0:
            self._uploads[user] = left
        else:
            self._uploads.pop(user, None)
        self._uploading = max(0, self._uploading - 1)

    def uploading(self) -> int:
        """Big bodies being read or inflated now."""
        return self._uploading

    # -- event streams ---------------------------------------------------------------------

    def streams_full(self, user: str) -> bool:
        """Whether ``user`` holds as many open event streams as allowed."""
        limit = self.max_streams_per_user
        return limit > 0 and self._streams.get(user, 0) >= limit

    def take_stream(self, user: str) -> bool:
        """Count one more open stream of ``user``; ``False`` (nothing counted) when full."""
        if self.streams_full(user):
            return False
        self._streams[user] = self._streams.get(user, 0) + 1
        return True

    def release_stream(self, user: str) -> None:
        """Forget a stream counted by :meth:`take_stream`."""
        left = self._streams.get(user, 0) - 1
        if left > 0:
            self._streams[user] = left
        else:
            self._streams.pop(user, None)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1 (clients wait at least that)."""
    return str(max(1, math.ceil(seconds)))
