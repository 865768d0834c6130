"""``GET /programs``: the runtime programs a job may run (docs/runtime.md)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ..deps import Svc, Who, json_response

router = APIRouter(tags=["programs"])


@router.get("/programs")
async def list_programs(svc: Svc, who: Who) -> Response:
    """The programs this service runs (``program_id`` of ``POST /jobs``)."""
    return json_response({"programs": [p.view() for p in svc.programs]})
