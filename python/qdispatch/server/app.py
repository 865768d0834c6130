"""The service's REST + WebSocket API (FastAPI on uvicorn); docs/protocol.md describes it.

``create_app(config)`` assembles the application: the routers of ``routes/`` (one per
resource, and the dashboard's with its static files), the front door (a token and the
user's request rate checked before any body is read), the body limit, upload slots and
decompression of every request, the error answers (every 4xx/5xx is
``{"error": {"code", "message"}}``), and a lifespan that builds the
:class:`~qdispatch.server.service.Service` and starts and stops it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from .. import __version__
from .. import codes as E
from .bodies import RequestBodies
from .config import ServiceConfig
from .deps import json_response
from .errors import ServiceError
from .front import FrontDoor, public_paths
from .metrics import Metrics, RequestTimer
from .routes import backends, info, jobs, metrics, programs, sessions, stream, ui
from .service import Service
from .ui import STATIC
from .ui.counts import CountsCache
from .ui.logins import Logins, LoginThrottle

log = logging.getLogger(__name__)


def create_app(config: ServiceConfig) -> FastAPI:
    """Build the service application for ``config``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service(config)
        app.state.service = service
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="qdispatch job service",
        version=__version__,
        description="Jobs of quantum circuits, queued per backend and run on qiskit-aer.",
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    routers = [
        module.router for module in (info, programs, backends, jobs, sessions, stream, metrics, ui)
    ]
    for router in routers:
        app.include_router(router)
    # The dashboard: its stylesheet and scripts, and who is logged in (routes/ui.py).
    app.mount(f"{ui.PREFIX}/static", StaticFiles(directory=STATIC), name="ui-static")
    app.state.ui_logins = Logins(config.ui_login_seconds, config.ui_max_logins)
    app.state.ui_counts = CountsCache()
    app.state.ui_login_throttle = LoginThrottle(
        config.ui_login_failures_per_minute, config.ui_login_failure_burst
    )
    # The last added is the outermost: the front door (token, rate) before the bodies.
    # The request timer is innermost, where the router leaves the matched route.
    app.add_middleware(RequestTimer, metrics=_metrics_of)
    app.add_middleware(
        RequestBodies,
        limit=config.max_request_bytes,
        big=config.big_body_bytes,
        min_rate=config.body_min_rate,
        grace=config.body_grace_seconds,
        idle=config.body_idle_seconds,
        own=(ui.PREFIX,),
        own_limit=ui.MAX_FORM_BYTES,
    )
    public = public_paths([*app.routes, *(route for r in routers for route in r.routes)])
    app.add_middleware(FrontDoor, public=public, self_authenticating=(ui.PREFIX,))
    # POST /jobs reads its body itself (the Qobj is split off natively): its model is
    # listed here, where the route's openapi_extra refers to it.
    app.openapi = _openapi_listing(app, jobs.JobCreate)  # type: ignore[method-assign]
    return app


def _metrics_of(scope: Scope) -> Metrics | None:
    service = getattr(scope["app"].state, "service", None)
    return service.metrics if service is not None else None


def _install_error_handlers(app: FastAPI) -> None:
    """Every error the service answers has the body ``{"error": {"code", "message"}}``."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        return json_response(exc.body(), exc.status, exc.headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return json_response(body, exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        message = f"internal error: {type(exc).__name__}: {exc}"
        return json_response({"error": {"code": "internal_error", "message": message}}, 500)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return json_response({"error": {"code": E.INVALID_REQUEST, "message": problems}}, 400)


def _openapi_listing(app: FastAPI, *models: type[BaseModel]) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with ``models`` added to the spec's components (schemas)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schemas[model.__name__] = model.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
            app.openapi_schema = spec
        return app.openapi_schema

    return openapi
