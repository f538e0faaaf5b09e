"""The kopf operator module (`kopf run -m kubeforge.controllers`): importing it registers every handler."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from typing import Any, cast

import kopf

from .. import metrics
from . import (
    bounded,
    cache,
    credentials,
    deps,
    jobwatch,
    kube,
    modeldeployment,
    passes,
    resync,
    stages,
    state,
    status,
    validation,
    workers,
)

__all__ = [
    "bounded", "cache", "credentials", "deps", "jobwatch", "kube", "modeldeployment", "passes", "resync", "stages",
    "state", "status", "validation", "workers",
]


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base, switched off: kopf deep-copies every body on every watch event to diff it for
    on.create/on.update handlers, which the operator does not have (watch events only feed the work queue),
    and that copy was about a tenth of the operator's CPU at 1,000 objects."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.login()
def login(logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> kopf.ConnectionInfo:
    """kopf's watches log in from the same source as the operator's own requests (credentials.py); kopf runs
    this sync handler in a thread, and again when the API server answers 401."""
    return credentials.load(logger)


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any
) -> None:
    """Put a fresh OperatorState into kopf's memo, start /metrics, set up Event posting (the work queue's
    consumers start with the first watch event)."""
    setattr(memo, state.MEMO_FIELD, state.OperatorState.create())
    s = state.bind_from(memo).settings
    # kopf would post every handler's log line as an Event; our transitions post their own.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = status.COMPONENT
    settings.posting.reporting_instance = os.environ.get("HOSTNAME") or socket.gethostname()
    settings.posting.event_name_prefix = "kubeforge-"
    # No finalizers: children carry owner references, nothing outside Kubernetes needs cleaning, and no
    # handler requires one (no on.delete, no timers or daemons: resync.py). kopf removes a finalizer of
    # this name from objects that have one but need none, which frees objects an older release marked.
    settings.persistence.finalizer = "kubeforge.io/unused"
    settings.persistence.diffbase_storage = NoDiffBase()
    # No queueing.worker_limit: idle kopf workers keep their slot for queueing.idle_timeout, which throttles
    # throughput to limit / idle_timeout objects per second (and with kopf indices, which the operator no
    # longer has, a limit below the object count froze a restarted operator: kopf's indexing deadlock).
    # Unlimited workers cost one idle asyncio task per object.
    settings.queueing.worker_limit = None
    try:
        if metrics.start_server(s.metrics_port):
            logger.info(f"metrics on :{s.metrics_port}/metrics")
    except OSError as exc:
        logger.warning(f"metrics port {s.metrics_port} unavailable ({exc}); set KUBEFORGE_METRICS_PORT")
    if s.test_hooks:
        logger.warning("KUBEFORGE_TEST_HOOKS is on: stage results are accepted from kubeforge.io/result annotations")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the consumers and the resync loop, close the HTTP session."""
    state.bind_from(memo)
    await workers.stop()

