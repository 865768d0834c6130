"""The event stream: ``WS /stream``, one multiplexed connection per client.

A client subscribes to job ids and/or tags and receives every event of those jobs:
``{"job_id", "seq", "type": "status"|"result"|"interim"|"log", "data"}``. ``seq`` counts
each job's events from 1; events are stored before they are published, so a client that
reconnects and says the last ``seq`` it saw per job gets exactly the events it missed, in
order, and never one twice — across reconnects and across service restarts.

Client → service messages::

    {"op": "subscribe", "job_ids": [...], "tags": [...], "since": {job_id: seq},
     "inline_results": true}
    {"op": "unsubscribe", "job_ids": [...], "tags": [...]}
    {"op": "ping"}

Service → client control messages carry ``type`` but no ``job_id``: ``subscribed`` (with
the ids found and the ``missing`` ones), ``heartbeat`` (every few seconds when idle),
``pong`` and ``error``. A client too slow to keep up is disconnected with close code
4008 and resumes from its last ``seq``; a bad token closes with 4401, and so does a token
revoked or expired while the stream is open (it is re-checked every second). A user who
already holds ``max_streams_per_user`` streams is refused: with ``429 stream_limit`` before
the upgrade when the token came in a header, else with close code 4429. When the
service stops, every stream is closed with 1001 (going away) before the service stops
listening: the client resumes by ``seq`` from the next service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..constants import utcnow
from .errors import ServiceError
from .store import Event, Job, Store

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4008
CLOSE_STREAM_LIMIT = 4429  # the user holds as many streams as allowed; try again later
CLOSE_GOING_AWAY = 1001  # RFC 6455: the service is going away
CLOSE_REASON_BYTES = 123  # RFC 6455: what a close frame's reason may hold
_BACKLOG = 20_000
# How often an open stream re-checks its token: revocation and expiry reach open streams
# within this many seconds (one indexed SELECT per stream per period).
RECHECK_SECONDS = 1.0

Visible = Callable[[str, str | None, Job], bool]

# Re-checks a stream's token: why it no longer passes, or ``None``.
Recheck = Callable[[], ServiceError | None]

# Told of every publication: the job and its events (stored already).
Observer = Callable[[Job, list[Event]], None]


def close_reason(message: str) -> str:
    """``message`` cut to what a close frame holds (RFC 6455: 123 bytes of UTF-8); the
    whole message went before it in the ``error`` event. A longer reason would make the
    server drop the connection without a close frame, and the client would not see why."""
    cut = message.encode()[:CLOSE_REASON_BYTES]
    return cut.decode(errors="ignore")


class Subscription:
    """One connection's interest: job ids and tags, and its queue of live events."""

    def __init__(self, user: str, project: str | None, operator: bool = False) -> None:
        self.user = user
        self.project = project
        self.operator = operator  # sees every job's events
        self.job_ids: set[str] = set()
        self.tags: set[str] = set()
        self.queue: asyncio.Queue[Event] = asyncio.Queue(_BACKLOG)
        self.overflowed = asyncio.Event()
        self.leaving = asyncio.Event()  # the service is stopping: close with 1001

    def push(self, event: Event) -> None:
        """Queue a live event; a full backlog marks the subscription for disconnection."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed.set()


class Hub:
    """Fans stored events out to the subscriptions that want them."""

    def __init__(self, visible: Visible) -> None:
        self._visible = visible
        self._subs: set[Subscription] = set()
        self._observers: list[Observer] = []
        self._leaving = False  # set once by going_away(); never cleared

    def observe(self, observer: Observer) -> None:
        """Call ``observer(job, events)`` for every publication, subscribed or not (the
        service's metrics see each job finish this way)."""
        self._observers.append(observer)

    def subscriptions(self) -> int:
        """How many stream connections are open."""
        return len(self._subs)

    def add(self, sub: Subscription) -> None:
        """Start delivering to ``sub``."""
        self._subs.add(sub)
        if self._leaving:
            sub.leaving.set()

    def going_away(self) -> None:
        """The service is stopping: every stream (and any that opens still) closes with
        1001, so that its client knows to resume elsewhere rather than seeing a cut."""
        self._leaving = True
        for sub in self._subs:
            sub.leaving.set()

    def remove(self, sub: Subscription) -> None:
        """Stop delivering to ``sub``."""
        self._subs.discard(sub)

    def publish(self, job: Job, events: Iterable[Event]) -> None:
        """Deliver ``events`` (already stored) of ``job`` to every interested subscription."""
        events = list(events)
        for observer in self._observers:
            try:
                observer(job, events)
            except Exception:  # an observer's bug must not stop delivery
                log.exception("an observer of job %s's events failed", job.id)
        if not self._subs:
            return
        for sub in self._subs:
            if job.id in sub.job_ids or (
                sub.tags.intersection(job.tags)
                and (sub.operator or self._visible(sub.user, sub.project, job))
            ):
                for event in events:
                    sub.push(event)


def encode_event(store: Store, event: Event, inline_limit: int) -> bytes:
    """The wire form of a stored event. A result event carries the stored result if it is
    at most ``inline_limit`` bytes (0: never); a larger one has ``data: null`` and
    ``"too_large": true`` and the client fetches it with ``GET /jobs/{id}/results``. At
    most ``inline_limit`` bytes are ever inflated here, on the event loop, per subscriber."""
    fields: dict[str, Any] = {"job_id": event.job_id, "seq": event.seq, "type": event.type}
    data: Any = None
    if event.type == "result":
        blob = store.data(event.job_id, "result") if inline_limit > 0 else None
        if blob:
            inflater = zlib.decompressobj()
            result = inflater.decompress(blob, inline_limit + 1)
            if len(result) > inline_limit or inflater.unconsumed_tail:
                fields["too_large"] = True
            else:
                data = orjson.Fragment(result)
    elif event.data is not None:
        data = orjson.Fragment(event.data)
    fields["data"] = data
    return orjson.dumps(fields)


class StreamSession:
    """Serves one WebSocket connection."""

    def __init__(
        self,
        ws: WebSocket,
        store: Store,
        hub: Hub,
        visible: Visible,
        user: str,
        project: str | None,
        heartbeat: float,
        inline_limit: int,
        *,
        recheck: Recheck | None = None,
        operator: bool = False,
    ) -> None:
        self.ws = ws
        self.store = store
        self.hub = hub
        self.visible = visible
        self.sub = Subscription(user, project, operator)
        self.heartbeat = heartbeat
        self.inline_limit = inline_limit
        self.recheck = recheck
        self.inline_results = True
        self.delivered: dict[str, int] = {}
        self.lock = asyncio.Lock()

    async def run(self) -> None:
        """Receive requests and send events until the client goes away (or its token
        stops passing the re-check)."""
        self.hub.add(self.sub)
        sender = asyncio.create_task(self._send_live())
        watched = [asyncio.create_task(self._receive()), asyncio.create_task(self._leave())]
        if self.recheck is not None:
            watched.append(asyncio.create_task(self._guard(self.recheck)))
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # an error of the receive loop is the endpoint's, as before
        finally:
            self.hub.remove(self.sub)
            for task in (sender, *watched):
                task.cancel()
            for task in (sender, *watched):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _receive(self) -> None:
        with contextlib.suppress(WebSocketDisconnect):  # the client went away
            while True:
                await self._handle(await self.ws.receive_text())

    async def _leave(self) -> None:
        """Close the stream (1001) when the service stops."""
        await self.sub.leaving.wait()
        with contextlib.suppress(Exception):  # the client may be gone already
            async with self.lock:  # not in the middle of an event
                await self.ws.close(CLOSE_GOING_AWAY, "the service is stopping; resume by seq")

    async def _guard(self, recheck: Recheck) -> None:
        """Close the stream (4401) as soon as its token is revoked or expires."""
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            refusal = recheck()
            if refusal is not None:
                with contextlib.suppress(Exception):  # the client may be gone already
                    await self._control("error", **refusal.body()["error"])
                    await self.ws.close(CLOSE_UNAUTHORIZED, close_reason(refusal.message))
                return

    async def _send(self, payload: bytes) -> None:
        await self.ws.send_text(payload.decode())

    async def _control(self, kind: str, **fields: Any) -> None:
        await self._send(orjson.dumps({"type": kind, **fields}))

    async def _handle(self, raw: str) -> None:
        try:
            msg = orjson.loads(raw)
            if not isinstance(msg, dict):
                raise TypeError("a message must be a JSON object")
        except (orjson.JSONDecodeError, TypeError) as exc:
            await self._control("error", code="malformed_json", message=f"malformed message: {exc}")
            return
        op = msg.get("op")
        try:
            if op == "ping":
                await self._control("pong", time=utcnow())
            elif op == "subscribe":
                await self._subscribe(msg)
            elif op == "unsubscribe":
                self.sub.job_ids.difference_update(_strings(msg.get("job_ids")))
                self.sub.tags.difference_update(_strings(msg.get("tags")))
            else:
                raise ValueError(f"unknown op {op!r} (subscribe, unsubscribe, ping)")
        except (TypeError, ValueError) as exc:
            await self._control("error", code="invalid_request", message=str(exc))

    async def _subscribe(self, msg: dict[str, Any]) -> None:
        since = msg.get("since") or {}
        if not isinstance(since, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in since.values()
        ):
            raise ValueError("'since' must map job ids to integer sequence numbers")
        if "inline_results" in msg:
            self.inline_results = bool(msg["inline_results"])
        job_ids = _strings(msg.get("job_ids"))
        tags = _strings(msg.get("tags"))
        async with self.lock:
            # Register before reading the log: anything published from here on is queued,
            # and the sender drops what the replay below already delivered.
            jobs = self.store.jobs_by_ids(job_ids)
            found = [
                j
                for j in job_ids
                if j in jobs and self.visible(self.sub.user, self.sub.project, jobs[j])
            ]
            missing = [j for j in job_ids if j not in found]
            self.sub.job_ids.update(found)
            self.sub.tags.update(tags)
            replay = list(found)
            for tag in tags:
                tagged = self.store.jobs_by_ids(self.store.job_ids_with_tag(tag))
                replay.extend(
                    j.id
                    for j in tagged.values()
                    if self.visible(self.sub.user, self.sub.project, j)
                )
            await self._control("subscribed", job_ids=found, tags=tags, missing=missing)
            for job_id in dict.fromkeys(replay):
                after = max(since.get(job_id, 0), self.delivered.get(job_id, 0))
                for event in self.store.events_since(job_id, after):
                    await self._deliver(event)

    async def _deliver(self, event: Event) -> None:
        if event.seq <= self.delivered.get(event.job_id, 0):
            return
        limit = self.inline_limit if self.inline_results else 0
        await self._send(encode_event(self.store, event, limit))
        self.delivered[event.job_id] = event.seq

    async def _send_live(self) -> None:
        overflow = asyncio.create_task(self.sub.overflowed.wait())
        try:
            while True:
                get = asyncio.create_task(self.sub.queue.get())
                done, _ = await asyncio.wait(
                    {get, overflow}, timeout=self.heartbeat, return_when=asyncio.FIRST_COMPLETED
                )
                if overflow in done:
                    get.cancel()
                    await self.ws.close(CLOSE_TOO_SLOW, "event backlog too large; resume by seq")
                    return
                if not done:
                    get.cancel()
                    await self._control("heartbeat", time=utcnow())
                    continue
                event = get.result()
                async with self.lock:
                    await self._deliver(event)
        finally:
            overflow.cancel()


def _strings(value: Any) -> list[str]:
    """A list of ids or tags as sent: a list of strings, one string, or nothing."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise TypeError(f"expected a list of strings, got {value!r}")
