"""Dask clusters the service starts itself (``serve --executor dask --dask-cluster KIND``):
batch-system workers through dask-jobqueue, scaled from the service's own queue.

The cluster (``SLURMCluster``, ``PBSCluster``, …) is configured the way dask-jobqueue
documents: the keys ``jobqueue.<name>.*`` of the Dask configuration (cores, memory,
processes, queue, account, walltime, interface, scheduler-options, …), usually from
``~/.config/dask/jobqueue.yaml``. Its scheduler runs inside the service's process.

Why the service drives the scaling rather than ``cluster.adapt()``'s default: Dask's
adaptive target comes from the tasks the scheduler holds, and the service submits a job
to Dask only when a worker thread is free for it. With no workers there is no capacity,
so nothing is submitted, so Dask sees no work and never asks for a worker; with some, it
sees exactly as many tasks as threads and never asks for more. The jobs waiting are in the
service's queue, not Dask's: :class:`QueueAdaptive` keeps Dask's machinery (bounds,
``wait_count`` before releasing a worker, asking the scheduler which workers to close,
cancelling batch jobs still pending) and replaces only the target, computed from the jobs
queued and running in the service.

The cluster speaks TLS with mutual authentication. Its scheduler runs inside the
service's process and listens on the cluster's network, where any other user of the
cluster can reach it: over plain TCP anyone could run code in the service
(``Client.run_on_scheduler``) or join as a worker and be sent other users' circuits. With
no TLS in the Dask configuration (``distributed.comm.tls.*``, used as it is), the service
makes a temporary CA and certificates for this run (``Security.temporary()``); the
workers' copies are written, private (0600), to ``jobqueue.<name>.shared-temp-directory``
(default: the home directory, which batch jobs see) and removed when the cluster closes.
The scheduler's dashboard listens on loopback unless ``scheduler-options`` says otherwise.
``--dask-insecure`` turns TLS off, for a network only the operator's jobs can reach.

This module imports dask.distributed: the executor imports it only for ``--dask-cluster``.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import dask.config
from distributed.deploy import Adaptive
from distributed.security import Security

from .config import JOBQUEUE_CLUSTERS

log = logging.getLogger(__name__)


class ClusterConfigError(RuntimeError):
    """The cluster could not be made from the Dask configuration (a missing key, a
    package not installed): the message says what to set."""


def cluster_security(insecure: bool = False) -> Security | None:
    """The TLS the cluster's scheduler, workers and the service's client use: the Dask
    configuration's if it sets a CA, else a temporary CA made for this run; ``None`` only
    when ``insecure``."""
    if insecure:
        return None
    configured = Security()
    if getattr(configured, "tls_ca_file", None):  # set from distributed.comm.tls.ca-file
        return configured
    return Security.temporary()


async def start_cluster(kind: str, insecure: bool = False) -> Any:
    """Start a dask-jobqueue cluster of ``kind`` with no workers, configured from the Dask
    configuration (``jobqueue.<name>.*``), speaking TLS unless ``insecure``."""
    try:
        module_name, class_name = JOBQUEUE_CLUSTERS[kind]
    except KeyError:
        raise ClusterConfigError(
            f"unknown --dask-cluster {kind!r} (one of {', '.join(JOBQUEUE_CLUSTERS)})"
        ) from None
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ClusterConfigError(
            f"--dask-cluster {kind} needs dask-jobqueue: pip install 'qdispatch[dask]'"
        ) from exc
    # A worker that dies under a task (its batch job's allocation ended, it was
    # preempted, OOM) fails the task at once rather than Dask running it again
    # unseen: the service requeues the job, counting the attempt in its record and
    # against --max-attempts, as it does for a local worker that died.
    section = cls.job_cls.default_config_name()
    security = cluster_security(insecure)
    extra: dict[str, Any] = {}
    if security is not None:
        extra["security"] = security
        extra["protocol"] = "tls://"
        shared = dask.config.get(f"jobqueue.{section}.shared-temp-directory", None)
        # Absolute: the worker's command line gets the path as written, unexpanded.
        extra["shared_temp_directory"] = os.path.expanduser(os.path.expandvars(shared or "~"))
    # The dashboard shows every task: on loopback, unless the operator chose an address.
    options = dict(dask.config.get(f"jobqueue.{section}.scheduler-options", None) or {})
    options.setdefault("dashboard_address", "127.0.0.1:0")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        try:
            # Everything else comes from jobqueue.<name>.* of the Dask config, as
            # dask-jobqueue reads it when no keyword is given.
            cluster = cls(n_workers=0, asynchronous=True, scheduler_options=options, **extra)
        except ValueError as exc:
            raise ClusterConfigError(
                f"cannot make a {class_name} from the Dask configuration: {exc}\n"
                f"Set at least 'cores' and 'memory' under jobqueue: {section}: in "
                "~/.config/dask/jobqueue.yaml (or a file of $DASK_CONFIG)"
            ) from exc
        await cluster  # the scheduler reads its configuration as it starts
    log.info(
        "started a %s (scheduler %s); its workers are batch jobs of this script:\n%s",
        class_name,
        cluster.scheduler_address,
        cluster.job_script(),
    )
    return cluster


class QueueAdaptive(Adaptive):
    """Dask's adaptive scaling with the target taken from the service's queue: enough
    workers for every job queued or running (``demand()``, in job slots, one per worker
    thread), never fewer than the workers busy now (so none is closed under a job), within
    ``minimum`` and ``maximum`` workers."""

    def __init__(self, cluster: Any, demand: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(cluster, **kwargs)
        self._demand = demand

    async def target(self) -> int:
        """How many workers the queue asks for now."""
        processing = await self.scheduler.processing()
        busy = sum(1 for keys in processing.values() if keys)
        wanted = math.ceil(max(0, self._demand()) / await self._threads_per_worker())
        return max(busy, wanted)

    async def _threads_per_worker(self) -> int:
        identity = await self.scheduler.identity()
        threads = [int(w.get("nthreads", 1)) for w in identity.get("workers", {}).values()]
        if threads:
            return max(1, *threads)
        # None connected yet: what the batch job will start, as dask-jobqueue computes it.
        job = getattr(self.cluster, "_dummy_job", None)
        return max(1, int(getattr(job, "worker_process_threads", 1)))


def adapt(cluster: Any, demand: Callable[[], int], minimum: int, maximum: int) -> Any:
    """Scale ``cluster`` from the service's queue between ``minimum`` and ``maximum``
    workers; the check interval and how many checks a worker stays idle before it is
    released are Dask's ``distributed.adaptive.interval`` and ``wait-count``."""
    return cluster.adapt(Adaptive=QueueAdaptive, demand=demand, minimum=minimum, maximum=maximum)
