"""What every controller shares: settings, conditions, events, the body cache and the pass machinery.

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
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import kopf
from pydantic import ValidationError

from .. import metrics
from ..api.v1alpha1 import KINDS, KubeResource, conditions
from ..api.v1alpha1.status import now_rfc3339
from ..builders.naming import LABEL_KIND, LABEL_OWNER
from ..manifests import explain
from ..settings import OperatorSettings
from ..stage import ResolvedInput
from . import kube
from .state import Key as Key
from .state import OperatorState, bind, current
from .workqueue import WorkQueue

RESULT_ANNOTATION = "kubeforge.io/result"
# The condition vocabulary lives in the API package (one for the operator, the runner and Argo CD).
SUCCEEDED, READY, DEPENDENCIES_READY = conditions.SUCCEEDED, conditions.READY, conditions.DEPENDENCIES_READY
JOB_CREATED, PASSED, MODEL_EXPORTED = conditions.JOB_CREATED, conditions.PASSED, conditions.MODEL_EXPORTED
MAIN_CONDITIONS = conditions.MAIN_CONDITIONS
RECOVERABLE = conditions.RECOVERABLE
WARNING_REASONS = conditions.WARNING_REASONS
# Who posts the operator's Events (Event.reportingComponent / source.component) instead of kopf's "kopf".
COMPONENT = "kubeforge-operator"

Reconciler = Callable[[dict[str, Any], kopf.Patch], Awaitable[None]]
_reconcilers: dict[str, Reconciler] = {}
log = logging.getLogger("kubeforge.controllers")


def resync_interval() -> float:
    """Seconds between safety-net passes of unfinished objects (events do the real work)."""
    return float(os.environ.get("KUBEFORGE_RESYNC_INTERVAL") or max(30.0, settings().poll_interval))


def settings() -> OperatorSettings:
    """This operator run's settings."""
    return current().settings


def configure(new: OperatorSettings | None = None, api: kube.Client | None = None) -> OperatorSettings:
    """Start a fresh operator state (settings from the environment unless given) and bind it to this context:
    what tests call in place of kopf's startup handler."""
    state = OperatorState.create(new, api)
    bind(state)
    return state.settings


def queue() -> WorkQueue[Key]:
    """This operator run's work queue."""
    return current().queue


def key_of(body: dict[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(body.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", ""))


def _rv(body: dict[str, Any] | None) -> int:
    try:
        return int((body or {}).get("metadata", {}).get("resourceVersion") or -1)
    except ValueError:
        return -1


def slim(body: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a body: no managedFields (often the largest part of metadata), and of a Job or
    Deployment only what a pass reads (metadata, status, a Deployment's replicas), not the pod template."""
    meta = body.get("metadata") or {}
    out = dict(body)
    if "managedFields" in meta:
        out["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    if body.get("kind") == "Job":
        out.pop("spec", None)
    elif body.get("kind") == "Deployment":
        out["spec"] = {"replicas": (body.get("spec") or {}).get("replicas", 1)}
    return out


def remember(body: dict[str, Any]) -> None:
    """Cache a body (slimmed) unless a newer one is already cached (etcd revisions only grow)."""
    key = key_of(body)
    bodies = current().bodies
    if _rv(body) >= _rv(bodies.get(key)):
        bodies[key] = slim(body)


def forget(kind: str, namespace: str, name: str) -> None:
    """Drop a deleted object from the cache."""
    current().bodies.pop((kind, namespace, name), None)


def cached(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The latest body seen for that object, if any."""
    return current().bodies.get((kind, namespace, name))


def reconcilable() -> list[tuple[Key, dict[str, Any]]]:
    """Every cached Kubeforge object of a registered kind with its latest body (the resync loop's view)."""
    return [(key, body) for key, body in list(current().bodies.items()) if key[0] in _reconcilers]


def freshest(body: dict[str, Any]) -> dict[str, Any]:
    """`body` or the cached one, whichever the API server wrote last."""
    other = current().bodies.get(key_of(body))
    return other if other is not None and _rv(other) > _rv(body) else body


def register(kind: str, reconciler: Reconciler) -> None:
    """Make `run_pass` (and so the wakers) able to reconcile this kind."""
    _reconcilers[kind] = reconciler


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


def plain(body: Any) -> dict[str, Any]:
    """A kopf body (or a dict) as a plain dict: a shallow copy. Bodies are never changed in place (kopf
    replaces, not mutates, what a watch event brought; StatusWriter copies the conditions it edits), so the
    nested parts are shared instead of deep-copied on every event."""
    return dict(body)


def find_condition(conditions: list[dict[str, Any]] | None, ctype: str) -> dict[str, Any] | None:
    """The condition of that type, if any."""
    for cond in conditions or []:
        if cond.get("type") == ctype:
            return cond
    return None


def parse_time(value: str | None) -> datetime | None:
    """RFC 3339 → aware datetime."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class StatusWriter:
    """Accumulates status changes for one pass; posts one Event for the pass's condition transitions.

    A new generation starts from the main conditions only: the other conditions of the previous generation
    (JobCreated, Passed, ModelExported, DependenciesReady) are set aside in `stale`; one set again with the
    same status keeps its lastTransitionTime and posts no Event, one not set again disappears.
    """

    body: dict[str, Any]
    generation: int
    conditions: list[dict[str, Any]] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    transitions: list[tuple[str, str, str, str]] = field(default_factory=list)
    stale: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def for_body(cls, body: dict[str, Any]) -> StatusWriter:
        status = body.get("status") or {}
        gen = int(body.get("metadata", {}).get("generation") or 1)
        w = cls(body=body, generation=gen)
        for cond in status.get("conditions") or []:
            if cond.get("type") in MAIN_CONDITIONS or cond.get("observedGeneration") == gen:
                w.conditions.append(dict(cond))
            else:
                w.stale[str(cond.get("type"))] = dict(cond)
        return w

    def condition(self, ctype: str) -> dict[str, Any] | None:
        return find_condition(self.conditions, ctype)

    def set(self, ctype: str, status: str, reason: str, message: str = "") -> None:
        """Set a condition; lastTransitionTime changes only when the status changes."""
        current = self.condition(ctype)
        before = current if current is not None else self.stale.pop(ctype, None)
        new = {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": self.generation,
            "lastTransitionTime": now_rfc3339(),
        }
        if before is not None and before.get("status") == status:
            new["lastTransitionTime"] = before.get("lastTransitionTime") or new["lastTransitionTime"]
        if before is None or (before.get("status"), before.get("reason")) != (status, reason):
            self.transitions.append((ctype, status, reason, message))
        if current is not None:
            current.clear()
            current.update(new)
        else:
            self.conditions.append(new)

    def remove(self, ctype: str) -> None:
        self.conditions = [c for c in self.conditions if c.get("type") != ctype]

    def flush(self, patch: kopf.Patch) -> None:
        """Write status into kopf's patch and post the pass's Event (`pass_event`)."""
        for key, value in self.fields.items():
            patch.status[key] = value
        patch.status["conditions"] = self.conditions
        patch.status["observedGeneration"] = self.generation
        event = pass_event(self.transitions)
        if event is not None:
            kopf.event(as_body(self.body), type=event[0], reason=event[1], message=event[2])


def _is_warning(transition: tuple[str, str, str, str]) -> bool:
    ctype, status, reason, _ = transition
    return status == "False" and (reason in WARNING_REASONS or ctype in (SUCCEEDED, READY, PASSED))


def pass_event(transitions: list[tuple[str, str, str, str]]) -> tuple[str, str, str] | None:
    """(type, reason, message) of the one Event a pass posts for its condition transitions, or None.

    One Event per pass, not one per condition: each is an API write on the critical path. The reason is
    the headline: the first warning, else a main condition turning True (Completed, Ready), else the
    last other transition (what the pass did: JobCreated, ModelExported); the message lists them all.
    """
    last = {t[0]: t for t in transitions}  # a condition set twice in one pass: its final state
    transitions = list(last.values())
    if not transitions:
        return None
    warnings = [t for t in transitions if _is_warning(t)]
    done = [t for t in transitions if t[0] in MAIN_CONDITIONS and t[1] == "True"]
    others = [t for t in transitions if t[0] not in MAIN_CONDITIONS]
    lead = (warnings or done or others[-1:] or transitions)[0]
    ordered = [lead] + [t for t in transitions if t is not lead]
    parts: list[str] = []
    for ctype, status, _, msg in ordered:  # a message already said (a cause repeated by Succeeded) once
        said = msg and any(msg in part for part in parts)
        parts.append(f"{ctype}={status}: {msg}" if msg and not said else f"{ctype}={status}")
    message = "; ".join(parts)
    return ("Warning" if warnings else "Normal"), lead[2] or lead[0], message[:1024]


def as_body(body: dict[str, Any]) -> kopf.Body:
    """A plain dict where kopf wants a Body (kopf only reads apiVersion/kind/metadata from it)."""
    return kopf.Body(cast(kopf.RawBody, body))


def _parse(body: dict[str, Any]) -> tuple[KubeResource | None, str]:
    data = {k: v for k, v in body.items() if k in ("apiVersion", "kind", "metadata", "spec")}
    try:
        return KINDS[body["kind"]].model_validate(data), ""
    except ValidationError as exc:
        return None, "; ".join(explain(exc))


def validate(body: dict[str, Any]) -> tuple[KubeResource | None, str]:
    """Parse the object with its kind's model; on failure a one-line message naming the fields.

    Once per generation (and labels/annotations, which the model keeps in metadata): every watch event and
    pass of an unchanged object reuses the parse (OperatorState.parsed) instead of validating again."""
    meta = body.get("metadata") or {}
    if not meta.get("uid"):
        return _parse(body)
    stamp = (meta.get("uid"), meta.get("generation"), meta.get("labels"), meta.get("annotations"),
             meta.get("deletionTimestamp"))
    parsed = current().parsed
    key = key_of(body)
    hit = parsed.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    out = _parse(body)
    parsed[key] = (stamp, out)
    return out


def settled(body: Any, main: str = SUCCEEDED) -> bool:
    """Finished for this generation: no more work unless the spec changes.

    Not settled while blocked by something another object can clear: a failed dependency (it may re-run) or
    a dependency cycle (DependenciesReady=False InvalidSpec; editing any member breaks it).
    """
    status = body.get("status") or {}
    gen = int(body.get("metadata", {}).get("generation") or 1)
    conds = status.get("conditions")
    cond = find_condition(conds, main)
    if not (cond and cond.get("observedGeneration") == gen and cond.get("status") in ("True", "False")):
        return False
    if cond.get("reason") in RECOVERABLE:
        return False
    deps = find_condition(conds, DEPENDENCIES_READY) or {}
    return not (
        cond.get("status") == "False" and deps.get("reason") == "InvalidSpec" and deps.get("observedGeneration") == gen
    )


# ---------------------------------------------------------------- jobs, metrics, lineage


def job_state(job: dict[str, Any]) -> tuple[str, str, str]:
    """('Complete'|'Failed'|'Running', reason, message) from the Job's conditions."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"]), str(cond.get("reason") or cond["type"]), str(cond.get("message") or "")
    return "Running", "Running", ""


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


def iter_lineage(inputs: dict[str, ResolvedInput]) -> Iterator[dict[str, Any]]:
    """Lineage entries for resolved inputs (sorted by key for stable status)."""
    for key in sorted(inputs):
        yield inputs[key].lineage().to_wire()



def unsettled(body: Any, **_: Any) -> bool:
    """kopf `when=` filter: poll only objects that still have work to do."""
    return not settled(body)
