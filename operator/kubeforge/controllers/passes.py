"""The pass machinery: the registry of reconcilers, one pass of an object, the wakers and the pass metrics.

Reconciles are level-triggered: each pass looks at the world (dependency statuses, the Job with the
deterministic name for this generation, its pods) and writes the status that follows from it. A pass
started again after an operator restart therefore neither re-runs finished work nor creates duplicates.

Passes are event-driven through one work queue (workqueue.py): a watch event of the object itself (created,
spec/labels/annotations changed, or the operator's initial listing), a finished child Job (`wake_owner`, from
the Job watch in jobwatch.py) and a dependency whose Succeeded/Passed condition moved (`deps.on_object_event`,
via the dependency index) only `wake` the key; consumers (workers.py) run `process` → `run_pass`, which starts
from the freshest known body and writes status itself. The queue never runs one key twice at once, so two
passes never race on a stale body. A slow resync (resync.py) is only a safety net. Dependencies live in
deps.py, the bounded kinds' Job-driven pass in stages.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import kopf

from .. import metrics
from ..builders.naming import LABEL_KIND, LABEL_OWNER
from . import kube
from .cache import cached, forget, freshest, key_of, plain, remember
from .state import Key, current, queue
from .status import find_condition, job_state, settled

Reconciler = Callable[[dict[str, Any], kopf.Patch], Awaitable[None]]
_reconcilers: dict[str, Reconciler] = {}
log = logging.getLogger("kubeforge.controllers")


def register(kind: str, reconciler: Reconciler) -> None:
    """Make `run_pass` (and so the wakers) able to reconcile this kind."""
    _reconcilers[kind] = reconciler


def reconcilable() -> list[tuple[Key, dict[str, Any]]]:
    """Every cached Kubeforge object of a registered kind with its latest body (the resync loop's view)."""
    return [(key, body) for key, body in list(current().bodies.items()) if key[0] in _reconcilers]


def _status_changed(body: dict[str, Any], status_patch: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    return any(status.get(k) != v for k, v in status_patch.items())


async def run_pass(body_in: Any) -> None:
    """One pass for an object: freshest body → reconcile → status write (only if changed).

    Callers guarantee one pass per object at a time: the work queue's consumers, or a test."""
    body = plain(body_in)
    key = key_of(body)
    try:
        await _pass(freshest(body), key)
    finally:
        current().last_pass[key] = time.monotonic()


async def _pass(body: dict[str, Any], key: Key) -> None:
    patch = kopf.Patch()
    await _reconcilers[key[0]](body, patch)
    status_patch = dict(patch.get("status") or {})
    if not status_patch or not _status_changed(body, status_patch):
        return
    try:
        written = await kube.patch_status(str(body["apiVersion"]), key[0], key[1], key[2], {"status": status_patch})
    except kube.KubeError as exc:
        if exc.status == 404:  # deleted meanwhile
            return
        raise
    remember(written)


def wake(kind: str, namespace: str, name: str, low: bool = False) -> None:
    """Ask for a pass of an object (a pass already waiting absorbs the wake); `low`: behind every other
    waiting pass (the periodic resync)."""
    if kind in _reconcilers:
        queue().add((kind, namespace, name), low=low)


async def process(key: Key) -> None:
    """A consumer's pass of one key: the cached body (else a GET; gone → nothing), then `run_pass`.
    Errors propagate: the consumer re-adds the key with backoff."""
    kind, namespace, name = key
    if kind not in _reconcilers:
        return
    body = cached(kind, namespace, name)
    if body is None:
        body = await kube.get_kubeforge(kind, namespace, name)
        if body is None:
            return
        remember(body)
    await run_pass(body)


def wake_owner(job_in: Any, event_type: str | None) -> None:
    """A managed Job changed: cache it; once it finished (or vanished) reconcile its owner at once."""
    job = plain(job_in)
    meta = job.get("metadata") or {}
    ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    if event_type == "DELETED":
        forget("Job", ns, name)
    else:
        remember(job)
        if job_state(job)[0] == "Running":
            return
    labels = meta.get("labels") or {}
    kind, owner = labels.get(LABEL_KIND), labels.get(LABEL_OWNER)
    if kind and owner:
        wake(str(kind), ns, str(owner))


@asynccontextmanager
async def measured(kind: str) -> Any:
    """Time a reconcile and count its outcome (set `box['outcome']`)."""
    box: dict[str, str] = {"outcome": "success"}
    start = time.perf_counter()
    try:
        yield box
    except kopf.TemporaryError:
        box["outcome"] = "retry"
        raise
    except Exception:
        box["outcome"] = "error"
        raise
    finally:
        metrics.RECONCILE_DURATION.labels(kind).observe(time.perf_counter() - start)
        metrics.RECONCILE_TOTAL.labels(kind, box["outcome"]).inc()


def track(body: Any, event_type: str | None, main: str) -> None:
    """Feed `kubeforge_resources` from a watch event."""
    meta = body.get("metadata", {})
    kind, ns, name = body.get("kind", ""), meta.get("namespace", ""), meta.get("name", "")
    if event_type == "DELETED":
        metrics.TRACKER.forget(kind, ns, name)
        queue().drop((kind, ns, name))
        return
    cond = find_condition((body.get("status") or {}).get("conditions"), main)
    metrics.TRACKER.observe(kind, ns, name, main, str(cond.get("status")) if cond else "Unknown")


def unsettled(body: Any, **_: Any) -> bool:
    """kopf `when=` filter: poll only objects that still have work to do."""
    return not settled(body)
