"""``GET /info``: the service's version and the limits clients pace and split their work
by, for anyone; how busy it is, for a caller with a valid token.

The route is public (the front door lets it through unauthenticated, so that a client can
find a service and learn its limits before it has a token). What the service is doing
(queues, workers, throughput, its store, retention, uptime) says who is using it and how
much, so it is added only when the request carries a bearer token that passes the one
token check (:func:`~qdispatch.server.deps.authenticate`); a missing or bad token gets the
public part, not an error.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ... import __version__
from ..deps import Svc, authenticate, bearer_token, json_response
from ..errors import ServiceError
from ..service import Service

router = APIRouter(tags=["service"])


def _limits(svc: Service) -> dict[str, Any]:
    """The version and the limits a client paces and splits its work by (public)."""
    config = svc.config
    return {
        "version": __version__,
        "max_request_bytes": config.max_request_bytes,
        "max_active_jobs": config.active_job_limit,
        "max_job_shots": config.max_job_shots,
        "max_result_bytes": config.max_result_bytes,
        "dedicated_share": config.dedicated_share,
        "session_max_time": config.session_max_time,
        "session_max_time_ceiling": config.session_max_time_ceiling,
        "session_idle_timeout": config.session_idle_timeout,
        # jobs run at once: how many a client may usefully keep in flight
        "capacity": svc.scheduler.executor.capacity,
        "heartbeat_seconds": config.heartbeat_seconds,
        "job_time_limit": config.job_time_limit,
        "rate_limit": config.rate_limit,
        "rate_burst": config.rate_burst,
        "big_body_bytes": config.big_body_bytes,
        "max_uploads": config.max_uploads,
        "max_uploads_per_user": config.max_uploads_per_user,
        "body_min_rate": config.body_min_rate,
        "body_grace_seconds": config.body_grace_seconds,
        "body_idle_seconds": config.body_idle_seconds,
        "header_timeout": config.header_timeout,
        "max_connections": config.max_connections,
        "max_user_store_bytes": config.max_user_store_bytes,
        "max_streams_per_user": config.max_streams_per_user,
        "max_checks_per_user": config.max_checks_per_user,
        "max_job_event_bytes": config.max_job_event_bytes,
        "stream_inline_result_bytes": config.stream_inline_result_bytes,
    }


def _activity(svc: Service) -> dict[str, Any]:
    """How busy the service is (for callers with a valid token only)."""
    return {
        "executor": svc.config.executor,
        **svc.scheduler.health(),
        # docs/service.md, "Durability": a full store, and what retention deletes.
        "storage": svc.store.storage(),
        "retention": svc.retention.state() if svc.retention is not None else None,
        # How it is doing (docs/service.md, "Metrics"): per backend, the queue and an
        # estimate of how long it takes to drain; jobs and circuits finished per second.
        "queues": svc.metrics.queues(svc.catalog, svc.scheduler.executor.capacity),
        **svc.metrics.throughput(),
        "uptime_seconds": round(time.monotonic() - svc.metrics.started, 1),
    }


@router.get("/info")
async def info(request: Request, svc: Svc) -> Response:
    """Service version and the limits clients pace and split their work by; with a valid
    bearer token also how busy it is (jobs queued and running, workers idle, busy and
    starting, outcomes held for the store, queues and throughput), its store (full or
    not, size), retention, and what the caller's jobs store (``stored_bytes``)."""
    answer = _limits(svc)
    token = bearer_token(request.headers.get("authorization", ""))
    if token:
        try:
            who = authenticate(svc, token)
        except ServiceError:
            return json_response(answer)  # a bad token is a visitor: the public part
        answer.update(_activity(svc))
        # The caller's own storage, counted as the quota counts it (max_user_store_bytes).
        answer["stored_bytes"] = svc.store.stored_bytes(who.user)
    return json_response(answer)
