"""The front door: every HTTP request is authenticated and counted against its user's
rate before anything reads its body.

:class:`FrontDoor` is the outermost ASGI middleware. A request for a route that needs a
token and has no valid one is answered 401 ``unauthorized`` at once, its body never
read; a user over their request rate is answered 429 ``rate_limited`` with a
``Retry-After``. Only then does :class:`~qdispatch.server.bodies.RequestBodies` read the
body. The routes that need no token (``/info``, the OpenAPI spec and its pages) are found
from the routes themselves: those without the ``Who`` dependency. They never get a body:
one that comes with a body is answered without reading it and its connection closed
(``Connection: close``), so that a trickled body holds no connection without a token.
WebSockets authenticate themselves (``routes/stream.py``), and so does the dashboard
(the paths under ``self_authenticating`` prefixes, ``/ui``: a login cookie, not a bearer
token; ``routes/ui.py`` applies the same token check and the rate itself, and
``bodies.py`` reads its bodies under the same deadlines as any, with a form's limit).
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import codes as E
from .access import retry_after
from .deps import CALLER_KEY, authenticate, bearer_token, caller_of, operator_of
from .errors import ServiceError
from .service import Service


def public_paths(routes: Iterable[BaseRoute]) -> frozenset[str]:
    """The HTTP paths that need no token: routes that do not ask for the caller (FastAPI's
    own pages among them). Only fixed paths: a route with parameters always needs one."""
    paths = set()
    for route in routes:
        if isinstance(route, APIRoute):
            if not _asks_caller(route.dependant):
                paths.add(route.path_format)
        elif isinstance(route, Route):
            paths.add(route.path)
    return frozenset(p for p in paths if "{" not in p)


def _asks_caller(dependant: Dependant) -> bool:
    return any(
        d.call in (caller_of, operator_of) or _asks_caller(d) for d in dependant.dependencies
    )


def has_body(headers: Headers) -> bool:
    """Whether the request says a body follows."""
    return headers.get("content-length", "0").strip() not in ("", "0") or (
        "transfer-encoding" in headers
    )


async def refuse(exc: ServiceError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``exc`` without reading the request's body; if one is still coming, the
    connection is closed after the answer rather than made to swallow it."""
    headers = dict(exc.headers)
    if has_body(Headers(scope=scope)):
        headers["Connection"] = "close"
    response = Response(orjson.dumps(exc.body()), exc.status, headers, "application/json")
    await response(scope, receive, send)


def rate_limited(user: str, wait: float, rate: float, burst: int) -> ServiceError:
    """The answer to a request over its user's rate."""
    return ServiceError(
        429,
        E.RATE_LIMITED,
        f"user '{user}' is over the service's rate of {rate:g} requests/s (burst {burst}); "
        f"retry after {wait:.2f} s",
        headers={"Retry-After": retry_after(wait)},
        retry_after=round(wait, 3),
    )


class FrontDoor:
    """ASGI middleware: authentication and the request rate, before the body is read."""

    def __init__(
        self, app: ASGIApp, public: frozenset[str], self_authenticating: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.public = public
        self.own = self_authenticating

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if any(path == p or path.startswith(p + "/") for p in self.own):
            await self.app(scope, receive, send)
            return
        if path in self.public:
            closing = has_body(Headers(scope=scope))
            await self.app(scope, _no_body(receive), _closing(send) if closing else send)
            return
        svc: Service = scope["app"].state.service
        headers = Headers(scope=scope)
        try:
            who = authenticate(svc, bearer_token(headers.get("authorization", "")))
            wait = svc.access.admit(who.user)
            if wait is not None:
                access = svc.access
                raise rate_limited(who.user, wait, access.rate, access.burst)
        except ServiceError as exc:
            if exc.status == 401:
                exc.headers.setdefault("WWW-Authenticate", "Bearer")
            await refuse(exc, scope, receive, send)
            return
        await self.app({**scope, CALLER_KEY: who}, receive, send)


def _closing(send: Send) -> Send:
    """``send`` with ``Connection: close`` on the answer: the body the client is sending is
    never read, and the server closes the connection once it has answered instead of
    keeping it (and waiting on the body) for the next request."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing


def _no_body(receive: Receive) -> Receive:
    """A public route's ``receive``: an empty body, whatever was sent (nothing reads it)."""
    delivered = False

    async def empty() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        while True:  # after the body: wait for the disconnect, dropping what was sent
            message = await receive()
            if message["type"] == "http.disconnect":
                return message

    return empty
