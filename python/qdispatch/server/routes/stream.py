"""``WS /stream``: the event stream's endpoint. It authenticates the connection (a bearer
header, or ``?token=`` for clients that cannot set headers) and hands it to a
:class:`~qdispatch.server.stream.StreamSession`, which serves the protocol."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, WebSocket

from ..deps import authenticate, bearer_token
from ..errors import ServiceError
from ..service import Service
from ..stream import CLOSE_UNAUTHORIZED, StreamSession

router = APIRouter()


@router.websocket("/stream")
async def stream(ws: WebSocket) -> None:
    """Status, result, interim and log events of subscribed jobs (see stream.py)."""
    svc: Service = ws.app.state.service
    await ws.accept()
    token = bearer_token(ws.headers.get("authorization", "")) or ws.query_params.get("token")
    try:
        who = authenticate(svc, token)
    except ServiceError as exc:
        await ws.send_text(orjson.dumps({"type": "error", **exc.body()["error"]}).decode())
        await ws.close(CLOSE_UNAUTHORIZED, exc.message)
        return
    config = svc.config
    session = StreamSession(
        ws,
        svc.store,
        svc.hub,
        svc.visible,
        who.user,
        who.project,
        config.heartbeat_seconds,
        config.stream_inline_result_bytes,
    )
    await session.run()
