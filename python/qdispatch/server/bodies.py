"""Request bodies: size-limited and decompressed once, for every route.

An ASGI middleware reads the whole body (refusing it past the limit, whether it was
declared or streamed), inflates ``Content-Encoding: gzip`` or ``deflate`` with the same
limit on the inflated size (a small bomb never becomes gigabytes in memory), and hands
the application a plain body. Routes never see compression.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import codes as E
from .errors import ServiceError


def too_large(limit: int, size: int) -> ServiceError:
    """The answer to a body over the limit."""
    return ServiceError(
        413,
        E.PAYLOAD_TOO_LARGE,
        f"request body of {size} bytes is over the service's limit of {limit} bytes; "
        "split the experiments over more jobs",
        limit=limit,
    )


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decode ``body`` sent with ``Content-Encoding: encoding``, at most ``limit`` bytes."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ServiceError(
            415,
            E.UNSUPPORTED_ENCODING,
            f"unsupported Content-Encoding '{encoding}' (gzip, deflate)",
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ServiceError(
            400, E.MALFORMED_JSON, f"body is not valid {encoding} data: {exc}"
        ) from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise too_large(limit, len(out))
    return out


class RequestBodies:
    """ASGI middleware applying the body limit and decompression to every HTTP request."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            body = await self._read(headers, receive)
            encoding = headers.get("content-encoding", "identity").strip().lower()
            body = inflate(body, encoding, self.limit)
        except ServiceError as exc:
            await Response(orjson.dumps(exc.body()), exc.status, media_type="application/json")(
                scope, receive, send
            )
            return
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

    async def _read(self, headers: Headers, receive: Receive) -> bytes:
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limit:
            raise too_large(self.limit, int(declared))
        chunks: list[bytes] = []
        size = 0
        while True:
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise too_large(self.limit, size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)
