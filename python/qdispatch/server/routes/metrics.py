"""``GET /metrics``: the service's metrics in the Prometheus text exposition format
(``server/metrics.py`` says what they are; docs/service.md, "Metrics", how to scrape them).

Only an operator token, or the ``--metrics-token`` the service was started with, may read
them: they describe every user's jobs. The route asks for no ``Who`` (the front door
would refuse a metrics token, which belongs to no user); it checks the token itself. A
scrape does not count as activity for the idle watchdog.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ... import codes as E
from ..deps import Svc, authenticate, bearer_token
from ..errors import ServiceError
from ..metrics import CONTENT_TYPE

router = APIRouter(tags=["service"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, svc: Svc) -> Response:
    """The service's metrics (Prometheus text format); for an operator token or the
    service's metrics token (``Authorization: Bearer …``)."""
    token = bearer_token(request.headers.get("authorization", ""))
    expected = svc.config.metrics_token
    # compare_digest: the time taken says nothing about how much of the token matched.
    if not (expected and token and hmac.compare_digest(token.encode(), expected.encode())):
        who = authenticate(svc, token)  # 401 for a missing or unknown token
        if not who.operator:
            raise ServiceError(
                403, E.OPERATOR_ONLY, "metrics need an operator token or the metrics token"
            )
    return Response(svc.metrics.exposition(), media_type=CONTENT_TYPE)
