"""Request bodies: size-limited and decompressed once, for every route, a few big ones at
a time and off the event loop.

An ASGI middleware, behind the front door (``front.py``: only an authenticated request
within its user's rate gets here), reads the whole body (refusing it past the limit,
whether it was declared or streamed), inflates ``Content-Encoding: gzip`` or ``deflate``
with the same limit on the inflated size (a small bomb never becomes gigabytes in
memory), and hands the application a plain body. Routes never see compression.

A body over ``big_body_bytes`` (as declared, as read, or once inflated) takes an upload
slot while it is read and inflated: at most ``max_uploads_per_user`` per user (else 429
``upload_limit``) and ``max_uploads`` in all (else 503 ``service_busy``), both answered at
once with a ``Retry-After``, never queued. Its inflating runs in a worker thread; a small
body's costs the loop at most ``big_body_bytes`` of output.

Every body must keep arriving: after ``grace`` seconds it must have come at ``min_rate``
bytes a second on average from the start (``grace + received / min_rate`` seconds in
all), else 408 ``request_timeout`` and the connection is closed. A client that stalls or
trickles frees its connection and, for a big body, its upload slot, in bounded time. And
no gap between two pieces may last ``idle`` seconds (408 too): the average alone would let
a fast burst buy minutes of stalling (64 MiB at once, then ~500 s of nothing).

The dashboard (``/ui``, the ``own`` prefixes) authenticates itself, after its body would
be read: its bodies are read here too, under the same deadlines and a limit of their own
(``own_limit``, a form's size), before the route runs and without a caller or an upload
slot. A public route's body is never read (``front.py`` closes the connection instead).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import codes as E
from .access import Access
from .deps import CALLER_KEY, Caller
from .errors import ServiceError
from .front import refuse
from .service import Service

# Seconds a client refused an upload slot is told to wait: uploads take about that long.
_UPLOAD_RETRY_AFTER = "1"


def too_large(limit: int, size: int) -> ServiceError:
    """The answer to a body over the limit."""
    return ServiceError(
        413,
        E.PAYLOAD_TOO_LARGE,
        f"request body of {size} bytes is over the service's limit of {limit} bytes; "
        "split the experiments over more jobs",
        limit=limit,
    )


def too_slow(received: int, seconds: float, min_rate: int) -> ServiceError:
    """The answer to a body that came slower than the minimum rate."""
    return ServiceError(
        408,
        E.REQUEST_TIMEOUT,
        f"request body too slow: {received} bytes in {seconds:.1f} s, under the service's "
        f"minimum of {min_rate / 1024:g} KiB/s; send the body at once",
        min_rate=min_rate,
    )


def stalled(received: int, idle: float) -> ServiceError:
    """The answer to a body that stopped coming for ``idle`` seconds."""
    return ServiceError(
        408,
        E.REQUEST_TIMEOUT,
        f"request body stalled: nothing for {idle:g} s after {received} bytes; send the "
        "body at once",
        idle_seconds=idle,
    )


def decompressor(encoding: str) -> Any:
    """A zlib decompressor for ``Content-Encoding: encoding``; ``None`` for identity."""
    if encoding in ("", "identity"):
        return None
    if encoding not in ("gzip", "deflate"):
        raise ServiceError(
            415,
            E.UNSUPPORTED_ENCODING,
            f"unsupported Content-Encoding '{encoding}' (gzip, deflate)",
        )
    return zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)


def inflate_step(inflater: Any, data: bytes, head: bytes, limit: int, encoding: str) -> bytes:
    """``head`` and what ``data`` inflates to, at most ``limit`` bytes in all (413 past it).
    zlib releases the GIL while it works: run in a thread, this costs the loop nothing."""
    if len(head) > limit:
        raise too_large(limit, len(head))
    out = _decompress(inflater, data, limit + 1 - len(head), encoding)
    size = len(head) + len(out)
    if size > limit or inflater.unconsumed_tail:
        raise too_large(limit, size)
    return head + out if head else out


def _decompress(inflater: Any, data: bytes, most: int, encoding: str) -> bytes:
    try:
        out: bytes = inflater.decompress(data, most)
    except zlib.error as exc:
        raise ServiceError(
            400, E.MALFORMED_JSON, f"body is not valid {encoding} data: {exc}"
        ) from exc
    return out


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decode ``body`` sent with ``Content-Encoding: encoding``, at most ``limit`` bytes."""
    inflater = decompressor(encoding)
    return body if inflater is None else inflate_step(inflater, body, b"", limit, encoding)


class _Slot:
    """One request's upload slot, taken when its body turns out big, given back once.
    ``access`` is ``None`` for a dashboard body, which is never big enough to need one."""

    def __init__(self, access: Access | None, user: str) -> None:
        self.access = access
        self.user = user
        self.held = False

    def take(self) -> None:
        if self.held or self.access is None:
            return
        full = self.access.take_upload(self.user)
        if full == "user":
            raise ServiceError(
                429,
                E.UPLOAD_LIMIT,
                f"user '{self.user}' is already sending {self.access.max_uploads_per_user} "
                "big request bodies, the most allowed at once; retry when one is done",
                headers={"Retry-After": _UPLOAD_RETRY_AFTER},
                limit=self.access.max_uploads_per_user,
            )
        if full == "service":
            raise ServiceError(
                503,
                E.SERVICE_BUSY,
                f"the service is reading {self.access.max_uploads} big request bodies, the "
                "most it reads at once; retry shortly",
                headers={"Retry-After": _UPLOAD_RETRY_AFTER},
                limit=self.access.max_uploads,
            )
        self.held = True

    def release(self) -> None:
        if self.held and self.access is not None:
            self.held = False
            self.access.release_upload(self.user)


class RequestBodies:
    """ASGI middleware applying the body limit, the upload slots and decompression to every
    authenticated HTTP request, and the deadlines and ``own_limit`` to the dashboard's."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        big: int,
        min_rate: int = 0,
        grace: float = 0.0,
        idle: float = 0.0,
        own: tuple[str, ...] = (),
        own_limit: int = 8 * 1024,
    ) -> None:
        self.app = app
        self.limit = limit
        self.big = big
        self.min_rate = min_rate
        self.grace = grace
        self.idle = idle
        self.own = own
        self.own_limit = own_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        who = scope.get(CALLER_KEY)
        path: str = scope["path"]
        if isinstance(who, Caller):
            svc: Service = scope["app"].state.service
            slot = _Slot(svc.access, who.user)
            limit, big = self.limit, self.big
        elif any(path == p or path.startswith(p + "/") for p in self.own):
            # The dashboard: no caller yet, a form at most; never an upload slot.
            slot = _Slot(None, "")
            limit = big = self.own_limit
        else:
            # A public route (the front door gave it an empty body).
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            body = await self._read(headers, receive, slot, limit, big)
            encoding = headers.get("content-encoding", "identity").strip().lower()
            body = await self._inflate(body, encoding, slot, limit, big)
        except ServiceError as exc:
            await refuse(exc, scope, receive, send)
            return
        finally:
            slot.release()
        raw = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")
        ]
        raw.append((b"content-length", str(len(body)).encode()))
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        await self.app({**scope, "headers": raw}, replay, send)

    async def _read(
        self, headers: Headers, receive: Receive, slot: _Slot, limit: int, big: int
    ) -> bytes:
        declared = headers.get("content-length")
        if declared and declared.isdigit():
            if int(declared) > limit:
                raise too_large(limit, int(declared))
            if int(declared) > big:
                slot.take()
        chunks: list[bytes] = []
        size = 0
        start = time.monotonic()
        while True:
            message: dict[str, Any] = dict(await self._next(receive, start, size))
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(limit, size)
            if size > big:
                slot.take()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _next(self, receive: Receive, start: float, size: int) -> Message:
        """The next message of the body, if it comes before the minimum rate's deadline
        and within ``idle`` seconds."""
        if not self.min_rate and not self.idle:
            return await receive()
        # Whichever comes first: the rate's deadline or the idle gap's.
        rate_left = (
            start + self.grace + size / self.min_rate - time.monotonic()
            if self.min_rate
            else float("inf")
        )
        idle_left = self.idle or float("inf")
        try:
            # Past the deadline, what has already arrived is still taken (the loop may
            # have been busy, not the client slow); nothing more is waited for.
            return await asyncio.wait_for(receive(), max(min(rate_left, idle_left), 0.05))
        except TimeoutError:
            if rate_left <= idle_left:
                raise too_slow(size, time.monotonic() - start, self.min_rate) from None
            raise stalled(size, self.idle) from None

    async def _inflate(
        self, body: bytes, encoding: str, slot: _Slot, limit: int, big: int
    ) -> bytes:
        inflater = decompressor(encoding)
        if inflater is None:
            return body
        head = b""
        data = body
        if not slot.held:
            # A small body: at most `big` bytes of output on the loop; a bomb stops there.
            head = _decompress(inflater, body, big + 1, encoding)
            if len(head) <= big:
                return head
            data = inflater.unconsumed_tail
            slot.take()
        if slot.access is None:  # the dashboard's: at most `big` (its limit) in all
            raise too_large(limit, len(head))
        return await asyncio.to_thread(inflate_step, inflater, data, head, limit, encoding)
