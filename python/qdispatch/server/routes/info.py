"""``GET /info``: the service's version and the limits clients pace and split their work
by (no authentication)."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import Response

from ... import __version__
from ..deps import Svc, json_response

router = APIRouter(tags=["service"])


@router.get("/info")
async def info(svc: Svc) -> Response:
    """Service version, the limits clients pace and split their work by, how busy it is
    (jobs queued and running, workers idle, busy and starting, outcomes held for the
    store), and its store (full or not, size) and retention."""
    config = svc.config
    return json_response(
        {
            "version": __version__,
            "max_request_bytes": config.max_request_bytes,
            "max_active_jobs": config.active_job_limit,
            "max_job_shots": config.max_job_shots,
            "max_result_bytes": config.max_result_bytes,
            "dedicated_share": config.dedicated_share,
            "session_max_time": config.session_max_time,
            "session_max_time_ceiling": config.session_max_time_ceiling,
            "session_idle_timeout": config.session_idle_timeout,
            "executor": config.executor,
            "capacity": svc.scheduler.executor.capacity,
            "heartbeat_seconds": config.heartbeat_seconds,
            "job_time_limit": config.job_time_limit,
            **svc.scheduler.health(),
            "rate_limit": config.rate_limit,
            "rate_burst": config.rate_burst,
            "big_body_bytes": config.big_body_bytes,
            "max_uploads": config.max_uploads,
            "max_uploads_per_user": config.max_uploads_per_user,
            "body_min_rate": config.body_min_rate,
            "body_grace_seconds": config.body_grace_seconds,
            "body_idle_seconds": config.body_idle_seconds,
            "stream_inline_result_bytes": config.stream_inline_result_bytes,
            # docs/service.md, "Durability": a full store, and what retention deletes.
            "storage": svc.store.storage(),
            "retention": svc.retention.state() if svc.retention is not None else None,
            # How it is doing (docs/service.md, "Metrics"): per backend, the queue and an
            # estimate of how long it takes to drain; jobs and circuits finished per second.
            "queues": svc.metrics.queues(svc.catalog, svc.scheduler.executor.capacity),
            **svc.metrics.throughput(),
            "uptime_seconds": round(time.monotonic() - svc.metrics.started, 1),
        }
    )
