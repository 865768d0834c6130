"""What the service measures of itself: :class:`Metrics` (served as ``GET /metrics`` in
the Prometheus exposition format, and summarised in ``GET /info``) and the
:class:`RequestTimer` middleware that times every HTTP request.

Two kinds of figure, kept apart so that a scrape stays cheap:

* **state**, read when scraped: jobs by status and backend (one ``GROUP BY`` over the
  store's ``(status, backend)`` index), queue depth per backend and workers idle, busy
  and starting (what the scheduler and the executor already keep);
* **events**, counted as they happen: each job that reaches a final status is observed
  once, from the events the hub publishes (job duration and queue-wait histograms,
  jobs finished and circuits completed counters), and each HTTP request's latency,
  labelled by its route's template (``/jobs/{job_id}``), never the raw path, so that the
  number of series stays bounded.

Each application has its own :class:`~prometheus_client.CollectorRegistry` (tests start
many services in one process; the global registry would mix them). Counters start at zero
when the service starts, as Prometheus expects of a process's counters.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..constants import DONE, FINAL_STATUSES
from ..monitor import seconds_between

if TYPE_CHECKING:
    from .scheduler import Scheduler
    from .store import Event, Job, Store

#: The content type of the exposition format ``generate_latest`` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds a job runs / waits: from a tiny simulation to the default one-hour time limit.
_JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: The window jobs/s and circuits/s are averaged over.
THROUGHPUT_WINDOW = 60.0
# Run times kept per backend for the mean that estimates a queue's wait.
_RECENT_RUNS = 50
# The route label of a request no route matched (404s): one series for all of them.
UNMATCHED = "<unmatched>"


def _final_status(events: Iterable[Event]) -> str | None:
    """The final status among ``events``, if one of them is a final status event."""
    for event in events:
        if event.type == "status" and event.data:
            status = orjson.loads(event.data).get("status")
            if status in FINAL_STATUSES:
                return str(status)
    return None


class Metrics:
    """The service's metrics: a registry of its own, fed by :meth:`observe` (jobs that
    finish) and :meth:`observe_request` (HTTP requests), and read at scrape time from
    the store, the scheduler and the executor."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        backends: Callable[[], Iterable[str]],
        executor_name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.started = clock()
        self.registry = CollectorRegistry(auto_describe=True)
        self.job_duration = Histogram(
            "qdispatch_job_duration_seconds",
            "Seconds a finished job ran on a worker.",
            ["backend", "kind", "status"],
            buckets=_JOB_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "qdispatch_job_queue_wait_seconds",
            "Seconds a finished job waited in its queue before a worker took it.",
            ["backend", "kind"],
            buckets=_JOB_BUCKETS,
            registry=self.registry,
        )
        self.finished = Counter(
            "qdispatch_jobs_finished",
            "Jobs that reached a final status since the service started.",
            ["backend", "status"],
            registry=self.registry,
        )
        self.circuits = Counter(
            "qdispatch_circuits_completed",
            "Circuits (experiments) of jobs that finished DONE since the service started.",
            ["backend"],
            registry=self.registry,
        )
        self.requests = Histogram(
            "qdispatch_http_request_duration_seconds",
            "Seconds the service took to answer an HTTP request, by route template.",
            ["method", "route", "status"],
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(store, scheduler, backends, executor_name))
        self._scheduler = scheduler
        # (when it finished, circuits it completed), for jobs/s and circuits/s
        self._recent: deque[tuple[float, int]] = deque()
        self._runs: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=_RECENT_RUNS))

    # -- events ---------------------------------------------------------------------------

    def observe(self, job: Job, events: Iterable[Event]) -> None:
        """A hub observer: ``events`` (stored) of ``job`` were published. A job is
        observed once, when its final status event goes by."""
        status = _final_status(events)
        if status is None:
            return
        steps = job.time_per_step
        started = steps.get("RUNNING")
        ended = steps.get("COMPLETED" if status == DONE else status)
        self.finished.labels(job.backend, status).inc()
        if started is not None:  # a job cancelled while queued never ran nor waited through
            ran = job.run_seconds if job.run_seconds is not None else None
            ran = ran if ran is not None else seconds_between(started, ended)
            if ran is not None:
                ran = max(0.0, ran)  # clocks may step back; a histogram takes no negatives
                self.job_duration.labels(job.backend, job.kind, status).observe(ran)
                if job.kind == "circuit":
                    self._runs[job.backend].append(ran)
            waited = seconds_between(steps.get("QUEUED"), started)
            if waited is not None:
                self.queue_wait.labels(job.backend, job.kind).observe(max(0.0, waited))
        circuits = job.n_experiments if status == DONE else 0
        if circuits:
            self.circuits.labels(job.backend).inc(circuits)
        self._recent.append((self._clock(), circuits))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered in ``seconds``."""
        self.requests.labels(method, route, str(status)).observe(seconds)

    # -- summaries (GET /info) --------------------------------------------------------------

    def throughput(self) -> dict[str, float]:
        """Jobs and circuits finished per second, over the last ``THROUGHPUT_WINDOW``
        seconds (or since the start, if sooner)."""
        now = self._clock()
        while self._recent and now - self._recent[0][0] > THROUGHPUT_WINDOW:
            self._recent.popleft()
        span = max(1.0, min(THROUGHPUT_WINDOW, now - self.started))
        return {
            "jobs_per_second": round(len(self._recent) / span, 4),
            "circuits_per_second": round(sum(c for _, c in self._recent) / span, 4),
        }

    def queues(self, backends: Iterable[str], workers: int) -> dict[str, dict[str, Any]]:
        """Per backend: jobs ``queued``, the ``mean_run_seconds`` of its recent circuit jobs
        (``None`` before one has finished since the start) and ``eta_seconds``, how long
        its queue takes to drain: queued x mean run time / workers (the workers are shared
        by every backend, so it is a lower bound when others are busy too)."""
        out: dict[str, dict[str, Any]] = {}
        for backend in sorted(backends):
            queued = self._scheduler.pending_jobs(backend)
            runs = self._runs.get(backend)
            mean = sum(runs) / len(runs) if runs else None
            eta = None if mean is None else queued * mean / max(1, workers)
            out[backend] = {
                "queued": queued,
                "paused": backend in self._scheduler.paused,
                "mean_run_seconds": None if mean is None else round(mean, 4),
                "eta_seconds": None if eta is None else round(eta, 3),
            }
        return out

    def exposition(self) -> bytes:
        """Every metric, in the Prometheus text exposition format."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """The figures read when scraped: what the store, the scheduler and the executor know
    now."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        backends: Callable[[], Iterable[str]],
        executor_name: str,
    ) -> None:
        self._store = store
        self._scheduler = scheduler
        self._backends = backends
        self._executor_name = executor_name

    def describe(self) -> list[Metric]:
        # Nothing to describe ahead: the registry must not call collect() at register.
        return []

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "qdispatch_service_info",
            "The service's version and executor.",
            labels=["version", "executor"],
        )
        info.add_metric([__version__, self._executor_name], 1.0)
        yield info
        jobs = GaugeMetricFamily(
            "qdispatch_jobs",
            "Jobs in the store, by status and backend.",
            labels=["status", "backend"],
        )
        for (status, backend), count in sorted(self._store.job_counts().items()):
            jobs.add_metric([status, backend], float(count))
        yield jobs
        depth = GaugeMetricFamily(
            "qdispatch_queue_depth", "Jobs waiting in each backend's queue.", labels=["backend"]
        )
        for backend in sorted(self._backends()):
            depth.add_metric([backend], float(self._scheduler.pending_jobs(backend)))
        yield depth
        executor = self._scheduler.executor
        states = executor.workers()
        workers = GaugeMetricFamily(
            "qdispatch_workers", "Workers by state: idle, busy, starting.", labels=["state"]
        )
        for state, count in sorted(states.items()):
            workers.add_metric([state], float(count))
        yield workers
        yield GaugeMetricFamily(
            "qdispatch_worker_capacity", "Jobs the executor runs at once.", value=executor.capacity
        )
        yield GaugeMetricFamily(
            "qdispatch_worker_utilisation",
            "Share of the executor's capacity busy with a job (0-1).",
            value=states.get("busy", 0) / max(1, executor.capacity),
        )


class RequestTimer:
    """ASGI middleware: the latency of every HTTP request, labelled by method, route
    template and status. Installed innermost (just outside the router), where the router
    leaves the matched route in the scope; a request refused by the front door before
    routing is not timed."""

    def __init__(self, app: ASGIApp, metrics: Callable[[Scope], Metrics | None]) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # an exception that escapes becomes the server error handler's 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics = self._metrics(scope)
            if metrics is not None:
                route = scope.get("route")
                template = getattr(route, "path", None) or UNMATCHED
                metrics.observe_request(
                    scope["method"], template, status, time.perf_counter() - began
                )
