"""The kopf operator module (`kopf run -m kubeforge.controllers`): importing it registers every handler."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from .. import metrics
from ..builders.common import MANAGED_BY
from . import common, dataset, evaluation, modeldeployment, rewardmodel, rlhfjob, trainingjob

__all__ = ["common", "dataset", "evaluation", "modeldeployment", "rewardmodel", "rlhfjob", "trainingjob"]


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    """Read settings, size the API thread pool, start /metrics, quiet kopf's own Event posting."""
    s = common.configure()
    # kopf would post every "Timer 'poll' succeeded" log line as an Event; our transitions post their own.
    settings.posting.level = logging.WARNING
    # No finalizers: children carry owner references and nothing outside Kubernetes needs cleaning.
    settings.persistence.finalizer = "kubeforge.io/unused"
    settings.queueing.worker_limit = 64
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="kube"))
    try:
        if metrics.start_server(s.metrics_port):
            logger.info(f"metrics on :{s.metrics_port}/metrics")
    except OSError as exc:
        logger.warning(f"metrics port {s.metrics_port} unavailable ({exc}); set KUBEFORGE_METRICS_PORT")
    if s.test_hooks:
        logger.warning("KUBEFORGE_TEST_HOOKS is on: stage results are accepted from kubeforge.io/result annotations")


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": MANAGED_BY}, id="wake-owner")
async def job_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A managed Job finished or vanished: reconcile its owner now instead of at the next timer tick."""
    await common.wake_owner(body, type)
