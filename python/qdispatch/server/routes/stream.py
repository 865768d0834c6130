"""``WS /stream``: the event stream's endpoint. It authenticates the connection (a bearer
header, or a first message ``{"op": "auth", "token": …}`` for clients that cannot set
headers; never the query string, which logs and proxies keep), counts it against the
user's open streams, and hands it to a :class:`~qdispatch.server.stream.StreamSession`,
which serves the protocol and re-checks the token every second, so a revoked or expired
token closes the stream at once. :func:`serve_stream` is shared with the dashboard's
``/ui/stream``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from ... import codes as E
from ..access import retry_after
from ..deps import Caller, authenticate, bearer_token
from ..errors import ServiceError
from ..service import Service
from ..stream import CLOSE_STREAM_LIMIT, CLOSE_UNAUTHORIZED, StreamSession, close_reason

router = APIRouter()

# How long a connection without a bearer header may take to send its auth message.
_AUTH_WAIT = 10.0
# What a refused stream is told to wait: streams are long-lived, so one frees up slowly.
_STREAM_RETRY_SECONDS = 5.0


async def _first_message_token(ws: WebSocket) -> str | None:
    """The token of a first ``{"op": "auth", "token": …}`` message, else ``None``."""
    try:
        raw = await asyncio.wait_for(ws.receive_text(), _AUTH_WAIT)
        msg = orjson.loads(raw)
    except (TimeoutError, asyncio.TimeoutError, WebSocketDisconnect, orjson.JSONDecodeError):
        return None
    if isinstance(msg, dict) and msg.get("op") == "auth" and isinstance(msg.get("token"), str):
        token: str = msg["token"]
        return token
    return None


async def _refuse(ws: WebSocket, exc: ServiceError, code: int = CLOSE_UNAUTHORIZED) -> None:
    await ws.send_text(orjson.dumps({"type": "error", **exc.body()["error"]}).decode())
    await ws.close(code, close_reason(exc.message))


def _stream_limit(svc: Service, user: str) -> ServiceError:
    limit = svc.access.max_streams_per_user
    return ServiceError(
        429,
        E.STREAM_LIMIT,
        f"user '{user}' already holds {limit} open event streams, the service's limit "
        "(--max-streams-per-user); close one, or follow jobs by polling",
        limit=limit,
        retry_after=_STREAM_RETRY_SECONDS,
    )


async def _deny_upgrade(ws: WebSocket, exc: ServiceError) -> None:
    """Answers the upgrade request itself with ``exc`` (a plain HTTP answer, which clients
    count as a failed connect: qdispatch's client polls after a few), or, where the
    server cannot answer a WebSocket request with HTTP, closes it unopened (the server
    then answers HTTP 403)."""
    response = JSONResponse(
        exc.body(),
        status_code=exc.status,
        headers={"Retry-After": retry_after(_STREAM_RETRY_SECONDS)},
    )
    try:
        await ws.send_denial_response(response)
    except RuntimeError:
        await ws.close(1008, close_reason(exc.message))


async def serve_stream(
    ws: WebSocket,
    svc: Service,
    who: Caller,
    recheck: Callable[[], ServiceError | None],
    inline_result_bytes: int,
) -> None:
    """Serves an accepted, authenticated stream of ``who`` while it counts against their
    open streams; refused with close code 4429 when they hold as many as allowed."""
    if not svc.access.take_stream(who.user):
        await _refuse(ws, _stream_limit(svc, who.user), CLOSE_STREAM_LIMIT)
        return
    try:
        visible: Callable[..., bool] = (lambda *_: True) if who.operator else svc.visible
        session = StreamSession(
            ws,
            svc.store,
            svc.hub,
            visible,
            who.user,
            who.project,
            svc.config.heartbeat_seconds,
            inline_result_bytes,
            recheck=recheck,
            operator=who.operator,
        )
        await session.run()
    finally:
        svc.access.release_stream(who.user)


@router.websocket("/stream")
async def stream(ws: WebSocket) -> None:
    """Status, result, interim and log events of subscribed jobs (see stream.py)."""
    svc: Service = ws.app.state.service
    token = bearer_token(ws.headers.get("authorization", ""))
    if token is not None:
        # A user at their limit is refused before the upgrade, where it costs nothing and
        # a client sees a failed connect; a bad token is refused after it, with 4401.
        try:
            caller = authenticate(svc, token)
        except ServiceError:
            caller = None
        if caller is not None and svc.access.streams_full(caller.user):
            await _deny_upgrade(ws, _stream_limit(svc, caller.user))
            return
    await ws.accept()
    if token is None:
        token = await _first_message_token(ws)
    try:
        who = authenticate(svc, token)
    except ServiceError as exc:
        await _refuse(ws, exc)
        return

    def recheck() -> ServiceError | None:
        # The same one check as every request: a revoked or expired token fails it.
        try:
            authenticate(svc, token)
        except ServiceError as exc:
            return exc
        return None

    await serve_stream(ws, svc, who, recheck, svc.config.stream_inline_result_bytes)
