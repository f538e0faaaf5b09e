"""The kopf operator module (`kopf run -m kubeforge.controllers`): importing it registers every handler."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from .. import metrics
from ..builders.common import MANAGED_BY
from . import (
    bounded,
    common,
    deps,
    kube,
    modeldeployment,
    resync,
    stages,
    workers,
)

__all__ = [
    "bounded", "common", "deps", "kube", "modeldeployment", "resync", "stages", "workers",
]


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    """Read settings, size the API thread pool, start /metrics, set up Event posting (the work queue's
    consumers start with the first watch event)."""
    s = common.configure()
    # kopf would post every handler's log line as an Event; our transitions post their own.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = common.COMPONENT
    settings.posting.reporting_instance = os.environ.get("HOSTNAME") or socket.gethostname()
    settings.posting.event_name_prefix = "kubeforge-"
    # No finalizers: children carry owner references, nothing outside Kubernetes needs cleaning, and no
    # handler requires one (no on.delete, no timers or daemons: resync.py). kopf removes a finalizer of
    # this name from objects that have one but need none, which frees objects an older release marked.
    settings.persistence.finalizer = "kubeforge.io/unused"
    # No queueing.worker_limit: kopf indices on every kind need a worker per object until all indices are
    # filled, so a limit below the object count freezes a restarted operator (kopf's indexing deadlock),
    # and idle workers keep their slot for queueing.idle_timeout, which throttles throughput to
    # limit / idle_timeout objects per second. Unlimited workers cost one idle asyncio task per object.
    settings.queueing.worker_limit = None
    executor = ThreadPoolExecutor(max_workers=kube.API_THREADS, thread_name_prefix="kube")
    asyncio.get_running_loop().set_default_executor(executor)
    modeldeployment.reset()
    workers.reset()  # consumers and resync start with the first watch event (workers.ensure_started)
    try:
        if metrics.start_server(s.metrics_port):
            logger.info(f"metrics on :{s.metrics_port}/metrics")
    except OSError as exc:
        logger.warning(f"metrics port {s.metrics_port} unavailable ({exc}); set KUBEFORGE_METRICS_PORT")
    if s.test_hooks:
        logger.warning("KUBEFORGE_TEST_HOOKS is on: stage results are accepted from kubeforge.io/result annotations")


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    """Stop the consumers and the resync loop."""
    await workers.stop()


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": MANAGED_BY}, id="wake-owner")
async def job_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A managed Job finished or vanished: reconcile its owner now instead of at the next timer tick."""
    await common.wake_owner(body, type)
