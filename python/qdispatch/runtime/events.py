"""How a runtime job's events reach it: ``EventRouter`` and ``JobFeed``.

Every job is watched on the service's one multiplexed WebSocket; a program job's
``interim`` and ``result`` events carry per-job sequence numbers, and the native client
resumes a dropped connection from the last one it saw, so a callback gets every interim
result once, in order, even across reconnects.

Events reach Python through :class:`EventRouter`: one thread per service that drains the
native client's event queue and hands each event to the feed of its job. A feed keeps the
job's interim results from the first event on, so ``stream_results`` started while the
job runs still gets all of them.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from ..exceptions import RuntimeInvalidStateError
from .result_decoder import ResultDecoder

if TYPE_CHECKING:
    from ..api import ServiceApi

__all__ = ["EventRouter", "JobFeed"]

log = logging.getLogger(__name__)


class JobFeed:
    """The events of one job as they arrive: interim results kept in order, and the
    streaming callback (if any) called for each on the router's thread."""

    def __init__(self, job_id: str, pinned: set[JobFeed] | None = None) -> None:
        self.job_id = job_id
        # Feeds live as long as their jobs, except while streaming: a callback keeps
        # getting results even if the script dropped the job object.
        self._pinned = pinned if pinned is not None else set()
        self._lock = threading.Lock()
        self.interim: list[bytes] = []
        self.status: str | None = None
        self.has_result = False
        self.last_seq = 0
        self._callback: Callable[[str, Any], Any] | None = None
        self._fetch_events: Callable[[int], list[tuple[int, str, bytes | None]]] | None = None
        self._decoder: type[ResultDecoder] = ResultDecoder
        self._fetch_result: Callable[[], bytes] | None = None
        self._streamed = 0  # interim results handed to the callback so far
        self._delivering = False
        self.idle = threading.Event()  # no callback is running or pending
        self.idle.set()

    @property
    def streaming(self) -> bool:
        """Whether a callback receives this job's results."""
        return self._callback is not None

    def start_streaming(
        self,
        callback: Callable[[str, Any], Any],
        decoder: type[ResultDecoder],
        fetch_result: Callable[[], bytes],
        fetch_events: Callable[[int], list[tuple[int, str, bytes | None]]] | None = None,
    ) -> None:
        """Hand every interim result (those already here first) and then the final
        result to ``callback``."""
        with self._lock:
            if self._callback is not None:
                raise RuntimeInvalidStateError(
                    f"A callback function is already streaming results of job {self.job_id}."
                )
            self._callback, self._decoder, self._fetch_result = callback, decoder, fetch_result
            self._fetch_events = fetch_events
            self._streamed = 0
            self.idle.clear()
            self._pinned.add(self)
        self._drain()

    def stop_streaming(self) -> None:
        """No more callbacks (one running now completes)."""
        with self._lock:
            self._callback = None
            self._pinned.discard(self)
            self.idle.set()

    def on_event(self, seq: int, kind: str, data: bytes | None) -> None:
        """An event of this job, from the router or from :meth:`catch_up`; one already
        seen (by seq) is ignored, so the two sources never deliver anything twice."""
        with self._lock:
            if seq <= self.last_seq:
                return
            self.last_seq = seq
            if kind == "interim" and data is not None:
                self.interim.append(data)
            elif kind == "status" and data is not None:
                self.status = orjson.loads(data).get("status")
            elif kind == "result":
                self.has_result = True
        self._drain()

    def catch_up(self) -> None:
        """Fetch the events after the last one seen over HTTP (``GET /jobs/{id}/events``):
        what the router does for a streaming job while no WebSocket can be had."""
        fetch = self._fetch_events
        if fetch is None or self._callback is None:
            return
        for seq, kind, data in fetch(self.last_seq):
            self.on_event(seq, kind, data)

    def _drain(self) -> None:
        """Deliver what the callback has not had yet, the final result last. One thread
        delivers at a time (the router's, or the one that started streaming), so the
        callback sees the results in order."""
        with self._lock:
            if self._delivering:
                return  # the delivering thread picks up what was just added
            self._delivering = True
        while True:
            with self._lock:
                callback = self._callback
                final = False
                raw: bytes | None = None
                if callback is None:
                    self._delivering = False
                    return
                if self._streamed < len(self.interim):
                    raw = self.interim[self._streamed]
                    self._streamed += 1
                elif self.has_result or self.status in ("ERROR", "CANCELLED"):
                    final = True
                else:
                    self._delivering = False
                    return
                decoder, fetch = self._decoder, self._fetch_result
            try:
                if not final:
                    callback(self.job_id, decoder.decode(raw or b"null"))
                elif self.has_result and fetch is not None:
                    callback(self.job_id, decoder.decode(fetch()))
            except Exception:
                # A user callback that raises must not stop the router (or other jobs).
                log.exception("result callback of job %s raised", self.job_id)
            if final:
                with self._lock:
                    self._callback = None
                    self._delivering = False
                    self._pinned.discard(self)
                    self.idle.set()
                return


class EventRouter:
    """Drains a service's event queue on one daemon thread and routes each event to the
    feed of its job. Events of jobs without a live feed are dropped (their status is
    still tracked by the native client)."""

    def __init__(self, api: ServiceApi) -> None:
        self._api = weakref.ref(api)
        self._feeds: weakref.WeakValueDictionary[str, JobFeed] = weakref.WeakValueDictionary()
        self._pinned: set[JobFeed] = set()  # feeds with a callback streaming
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def feed(self, job_id: str) -> JobFeed:
        """The feed of ``job_id`` (one per job and service), created on first use; the
        router starts with the first feed."""
        with self._lock:
            found = self._feeds.get(job_id)
            if found is None:
                found = JobFeed(job_id, self._pinned)
                self._feeds[job_id] = found
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="qdispatch-events", daemon=True
                )
                self._thread.start()
            return found

    def on_router_thread(self) -> bool:
        """Whether the caller is the router's thread (a callback)."""
        return threading.current_thread() is self._thread

    def close(self) -> None:
        """Stop routing (the thread exits within half a second)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            api = self._api()
            if api is None:
                return
            try:
                events = api.next_events(0.5)
            except Exception:  # a closed client: the service is going away
                del api
                if self._stop.wait(0.5):
                    return
                continue
            for job_id, seq, kind, data in events:
                feed = self._feeds.get(job_id)
                if feed is not None:
                    feed.on_event(seq, kind, data)
            if self._pinned and not api.stream_connected():
                # No socket (a proxy that refuses WebSockets, a service restarting): poll
                # the streaming jobs' events over HTTP, resuming by seq all the same.
                for feed in list(self._pinned):
                    try:
                        feed.catch_up()
                    except Exception:
                        log.debug("catching up on job %s failed", feed.job_id, exc_info=True)
            del api  # the router must not keep the service's connection alive
