"""``WS /stream``: the event stream's endpoint. It authenticates the connection (a bearer
header, or a first message ``{"op": "auth", "token": …}`` for clients that cannot set
headers; never the query string, which logs and proxies keep) and hands it to a
:class:`~qdispatch.server.stream.StreamSession`, which serves the protocol and re-checks
the token every second, so a revoked or expired token closes the stream at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from ..deps import authenticate, bearer_token
from ..errors import ServiceError
from ..service import Service
from ..stream import CLOSE_UNAUTHORIZED, StreamSession

router = APIRouter()

# How long a connection without a bearer header may take to send its auth message.
_AUTH_WAIT = 10.0


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


async def _refuse(ws: WebSocket, exc: ServiceError) -> None:
    await ws.send_text(orjson.dumps({"type": "error", **exc.body()["error"]}).decode())
    await ws.close(CLOSE_UNAUTHORIZED, exc.message)


@router.websocket("/stream")
async def stream(ws: WebSocket) -> None:
    """Status, result, interim and log events of subscribed jobs (see stream.py)."""
    svc: Service = ws.app.state.service
    await ws.accept()
    token = bearer_token(ws.headers.get("authorization", ""))
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

    visible: Callable[..., bool] = (lambda *_: True) if who.operator else svc.visible
    session = StreamSession(
        ws,
        svc.store,
        svc.hub,
        visible,
        who.user,
        who.project,
        svc.config.heartbeat_seconds,
        svc.config.stream_inline_result_bytes,
        recheck=recheck,
        operator=who.operator,
    )
    await session.run()
