"""The dashboard's histograms: :class:`CountsCache`, what ``GET /ui/api/jobs/{id}/counts``
answered, kept so that a page reloaded (or opened by many) does not parse the same
result again.

Working out the counts of one experiment inflates and parses the job's whole result (up
to 32 MiB) in a worker thread of the shared default pool: a user who asked for it in a
loop would hold the pool. So the answer for a ``DONE`` job (whose result never changes
again) is cached, in a least-recently-used table bounded in bytes, and each user may
have at most ``per_user`` computations in flight (``429 rate_limited`` beyond).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from ... import codes as E
from ..errors import ServiceError

#: Bytes of answers (their JSON) the cache holds, all jobs together.
CACHE_BYTES = 8 * 1024 * 1024
#: Counts computations one user may have in flight at once.
PER_USER = 2

Key = tuple[str, int, int]  # job id, experiment, top
Answer = dict[str, Any] | ServiceError  # an answer, or the refusal (too large, out of range)


class CountsCache:
    """Answers of the counts endpoint for finished jobs, least recently used dropped
    first past ``max_bytes``; and who is computing one now. Used from the event loop."""

    def __init__(self, max_bytes: int = CACHE_BYTES, per_user: int = PER_USER) -> None:
        self.max_bytes = max_bytes
        self.per_user = per_user
        self._answers: OrderedDict[Key, tuple[Answer, int]] = OrderedDict()
        self._bytes = 0
        self._computing: dict[str, int] = {}

    @property
    def size_bytes(self) -> int:
        """Bytes of answers held."""
        return self._bytes

    def get(self, key: Key) -> Answer | None:
        """A cached answer (now the most recently used), if any."""
        found = self._answers.get(key)
        if found is None:
            return None
        self._answers.move_to_end(key)
        return found[0]

    def put(self, key: Key, answer: Answer) -> None:
        """Keep ``answer``; the least recently used go while over the byte bound (one
        answer larger than the bound is not kept)."""
        body = answer.body() if isinstance(answer, ServiceError) else answer
        size = len(orjson.dumps(body)) + 64 + len(key[0])
        if size > self.max_bytes:
            return
        old = self._answers.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._answers[key] = (answer, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, dropped) = self._answers.popitem(last=False)
            self._bytes -= dropped

    @contextmanager
    def computing(self, user: str) -> Iterator[None]:
        """Hold one of ``user``'s computation slots for the block; 429 ``rate_limited``
        (``Retry-After: 1``) when they hold ``per_user`` already."""
        held = self._computing.get(user, 0)
        if held >= self.per_user:
            raise ServiceError(
                429,
                E.RATE_LIMITED,
                f"user '{user}' is already having {held} histograms worked out (at most "
                f"{self.per_user} at once); retry after 1 s",
                headers={"Retry-After": "1"},
                retry_after=1.0,
            )
        self._computing[user] = held + 1
        try:
            yield
        finally:
            left = self._computing[user] - 1
            if left:
                self._computing[user] = left
            else:
                del self._computing[user]
