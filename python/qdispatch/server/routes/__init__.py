"""The service's HTTP API, one ``APIRouter`` per resource (docs/protocol.md describes it):

* ``info``: ``GET /info``, the service's version and limits;
* ``programs``: ``GET /programs``;
* ``backends``: ``/backends`` and each backend's configuration, properties and status;
* ``jobs``: ``/jobs``: submission, listing, each job's data, cancel, tags and name;
* ``sessions``: ``/sessions`` (the rules they follow are ``server/sessions.py``);
* ``stream``: ``WS /stream``, the event stream (served by ``server/stream.py``);
* ``metrics``: ``GET /metrics``, Prometheus metrics (kept by ``server/metrics.py``).

:func:`~qdispatch.server.app.create_app` includes them. Each gets the service and its
caller through the dependencies of ``server/deps.py``.
"""
