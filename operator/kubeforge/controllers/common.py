"""What every controller shares: settings, conditions, events, dependency resolution, stage results.

Reconciles are level-triggered: each pass looks at the world (dependency statuses, the Job with the
deterministic name for this generation, its pods) and writes the status that follows from it. A pass
started again after an operator restart therefore neither re-runs finished work nor creates duplicates.

Passes are event-driven: kopf's create/update/resume handlers, a finished child Job (`wake_owner`) and a
dependency whose Succeeded/Passed condition moved (`wake_dependents`, via kopf indices) all call
`run_pass`, which serialises passes per object, starts from the freshest known body and writes status
itself inside the lock (so two passes never race on a stale body). A slow timer is only a safety net.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from pydantic import ValidationError

from .. import metrics
from ..api.v1alpha1 import KINDS, KubeResource
from ..api.v1alpha1.common import now_rfc3339
from ..builders.common import COMPLETION_INDEX_ANNOTATION, JOB_NAME_LABEL, LABEL_GENERATION, LABEL_KIND, LABEL_OWNER
from ..builders.common import STAGE_CONTAINER as STAGE_CONTAINER_NAME
from ..manifests import explain
from ..settings import OperatorSettings
from ..stage import Dependency, ResolvedInput, StageResult, dependencies
from . import kube

RESULT_ANNOTATION = "kubeforge.io/result"
SUCCEEDED = "Succeeded"
READY = "Ready"
DEPENDENCIES_READY = "DependenciesReady"
JOB_CREATED = "JobCreated"
PASSED = "Passed"
MODEL_EXPORTED = "ModelExported"
# Succeeded=False reasons that may clear by themselves (a dependency re-runs): keep polling.
RECOVERABLE = {"DependencyFailed"}
WARNING_REASONS = {
    "InvalidSpec", "DependencyFailed", "GateFailed", "BackoffLimitExceeded", "DeadlineExceeded", "Failed",
    "ConversionFailed", "ThresholdsFailed", "NoResult",
}

_settings: OperatorSettings = OperatorSettings.from_env()
_locks: dict[str, asyncio.Lock] = {}
# Latest body seen per (kind, namespace, name) for Kubeforge objects and managed Jobs: fed by the watch
# streams and by our own status writes, read instead of GETs. A stale entry is harmless: the watch event
# that makes it fresh also wakes whoever depends on it.
_bodies: dict[tuple[str, str, str], dict[str, Any]] = {}
# Objects with a pass queued but not yet started: further wakes coalesce into that pass.
_queued: set[tuple[str, str, str]] = set()
# Generation + Succeeded/Passed of each object as its last watch event showed them.
_watched: dict[tuple[str, str, str], tuple[Any, ...]] = {}
Reconciler = Callable[[dict[str, Any], kopf.Patch], Awaitable[None]]
_reconcilers: dict[str, Reconciler] = {}
log = logging.getLogger("kubeforge.controllers")


def resync_interval() -> float:
    """Seconds between safety-net passes of unfinished objects (events do the real work)."""
    return float(os.environ.get("KUBEFORGE_RESYNC_INTERVAL") or max(30.0, settings().poll_interval))


def settings() -> OperatorSettings:
    """The operator settings (read at import and again at startup)."""
    return _settings


def configure(new: OperatorSettings | None = None) -> OperatorSettings:
    """Re-read settings from the environment (kopf startup)."""
    global _settings
    _settings = new or OperatorSettings.from_env()
    kube.reset_client()
    _bodies.clear()  # an operator restarted inside one process (tests) must not trust old watch data
    _queued.clear()
    _watched.clear()
    return _settings


@asynccontextmanager
async def object_lock(uid: str) -> Any:
    """Serialise the change handler and the timer of one object inside this process."""
    lock = _locks.setdefault(uid, asyncio.Lock())
    async with lock:
        yield


def forget_lock(uid: str) -> None:
    """Drop the lock of a deleted object."""
    _locks.pop(uid, None)


def _key(body: dict[str, Any]) -> tuple[str, str, str]:
    meta = body.get("metadata") or {}
    return str(body.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", ""))


def _rv(body: dict[str, Any] | None) -> int:
    try:
        return int((body or {}).get("metadata", {}).get("resourceVersion") or -1)
    except ValueError:
        return -1


def remember(body: dict[str, Any]) -> None:
    """Cache a body unless a newer one is already cached (etcd revisions only grow)."""
    key = _key(body)
    if _rv(body) >= _rv(_bodies.get(key)):
        _bodies[key] = body


def forget(kind: str, namespace: str, name: str) -> None:
    """Drop a deleted object from the cache."""
    _bodies.pop((kind, namespace, name), None)


def cached(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The latest body seen for that object, if any."""
    return _bodies.get((kind, namespace, name))


def freshest(body: dict[str, Any]) -> dict[str, Any]:
    """`body` or the cached one, whichever the API server wrote last."""
    other = _bodies.get(_key(body))
    return other if other is not None and _rv(other) > _rv(body) else body


def register(kind: str, reconciler: Reconciler) -> None:
    """Make `run_pass` (and so the wakers) able to reconcile this kind."""
    _reconcilers[kind] = reconciler


def _status_changed(body: dict[str, Any], status_patch: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    return any(status.get(k) != v for k, v in status_patch.items())


async def run_pass(body_in: Any) -> None:
    """One serialised pass for an object: freshest body → reconcile → status write (only if changed)."""
    body = plain(body_in)
    key = _key(body)
    _queued.add(key)
    async with object_lock(str(body["metadata"].get("uid"))):
        _queued.discard(key)
        body = freshest(body)
        patch = kopf.Patch()
        await _reconcilers[key[0]](body, patch)
        status_patch = dict(patch.get("status") or {})
        if not status_patch or not _status_changed(body, status_patch):
            return
        try:
            written = await kube.patch_status(
                str(body["apiVersion"]), key[0], key[1], key[2], {"status": status_patch}
            )
        except kube.KubeError as exc:
            if exc.status == 404:  # deleted meanwhile
                return
            raise
        remember(written)


async def wake(kind: str, namespace: str, name: str) -> None:
    """Reconcile an object now (from the cache, else a GET); a pass already queued absorbs the wake."""
    if kind not in _reconcilers or (kind, namespace, name) in _queued:
        return
    body = cached(kind, namespace, name)
    if body is None:
        body = await kube.get_kubeforge(kind, namespace, name)
        if body is None:
            return
        remember(body)
    try:
        await run_pass(body)
    except Exception as exc:  # a woken pass must not kill the watcher; the safety-net timer retries
        log.warning(f"reconcile of {kind} {namespace}/{name} failed: {exc}")


async def wake_owner(job_in: Any, event_type: str | None) -> None:
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
        await wake(str(kind), ns, str(owner))


def _progress(body: dict[str, Any]) -> tuple[Any, ...]:
    """What dependents look at: the generation and the Succeeded/Passed conditions."""
    conds = (body.get("status") or {}).get("conditions")
    out: list[Any] = [body.get("metadata", {}).get("generation")]
    for ctype in (SUCCEEDED, PASSED):
        c = find_condition(conds, ctype) or {}
        out += [c.get("status"), c.get("reason"), c.get("observedGeneration")]
    return tuple(out)


def index_dependencies(body: kopf.Body, **_: Any) -> dict[tuple[str, str, str], tuple[str, str, str]]:
    """kopf index: (kind, ns, name) of each dependency → this object's (kind, ns, name)."""
    data = plain(body)
    resource, _err = validate(data)
    if resource is None:
        return {}
    me = _key(data)
    return {(d.kind, d.namespace, d.name): me for d in dependencies(resource)}


INDEX_SUFFIX = "_by_dependency"


async def on_object_event(body_in: Any, event_type: str | None, main: str, indices: dict[str, Any]) -> None:
    """Watch event of a Kubeforge object: metrics, cache, and wake dependents when its outcome moved."""
    body = plain(body_in)
    track(body, event_type, main)
    key = _key(body)
    kind, ns, name = key
    # Compared with what the watch last showed, not with the cache: our own status write is cached
    # before its watch event arrives, and that event is exactly the news dependents wait for.
    before = _watched.get(key)
    if event_type == "DELETED":
        forget(kind, ns, name)
        _watched.pop(key, None)
        changed = True
    else:
        remember(body)
        _watched[key] = _progress(body)
        changed = event_type == "ADDED" or (before is not None and before != _watched[key])
    if not changed:
        return
    dependents: set[tuple[str, str, str]] = set()
    for index_name, index in indices.items():
        if index_name.endswith(INDEX_SUFFIX):
            dependents.update(index.get((kind, ns, name), ()))
    await asyncio.gather(*(wake(*dep) for dep in sorted(dependents)))


def plain(body: Any) -> dict[str, Any]:
    """A kopf body as a plain, deep-copied dict."""
    return dict(json.loads(json.dumps(dict(body), default=str)))


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
    """Accumulates status changes for one pass; emits one Event per condition transition."""

    body: dict[str, Any]
    generation: int
    conditions: list[dict[str, Any]] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    transitions: list[tuple[str, str, str, str]] = field(default_factory=list)

    @classmethod
    def for_body(cls, body: dict[str, Any]) -> StatusWriter:
        status = body.get("status") or {}
        gen = int(body.get("metadata", {}).get("generation") or 1)
        return cls(body=body, generation=gen, conditions=[dict(c) for c in status.get("conditions") or []])

    def condition(self, ctype: str) -> dict[str, Any] | None:
        return find_condition(self.conditions, ctype)

    def set(self, ctype: str, status: str, reason: str, message: str = "") -> None:
        """Set a condition; lastTransitionTime changes only when the status changes."""
        current = self.condition(ctype)
        new = {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": self.generation,
            "lastTransitionTime": now_rfc3339(),
        }
        if current is not None:
            if current.get("status") == status:
                new["lastTransitionTime"] = current.get("lastTransitionTime") or new["lastTransitionTime"]
            if (current.get("status"), current.get("reason")) != (status, reason):
                self.transitions.append((ctype, status, reason, message))
            current.clear()
            current.update(new)
        else:
            self.transitions.append((ctype, status, reason, message))
            self.conditions.append(new)

    def remove(self, ctype: str) -> None:
        self.conditions = [c for c in self.conditions if c.get("type") != ctype]

    def flush(self, patch: kopf.Patch) -> None:
        """Write status into kopf's patch and post Events for the transitions."""
        for key, value in self.fields.items():
            patch.status[key] = value
        patch.status["conditions"] = self.conditions
        patch.status["observedGeneration"] = self.generation
        for ctype, status, reason, message in self.transitions:
            warning = status == "False" and (reason in WARNING_REASONS or ctype in (SUCCEEDED, READY, PASSED))
            kopf.event(
                as_body(self.body),
                type="Warning" if warning else "Normal",
                reason=reason or ctype,
                message=f"{ctype}={status}: {message}"[:1024],
            )


def as_body(body: dict[str, Any]) -> kopf.Body:
    """A plain dict where kopf wants a Body (kopf only reads apiVersion/kind/metadata from it)."""
    return kopf.Body(cast(kopf.RawBody, body))


def validate(body: dict[str, Any]) -> tuple[KubeResource | None, str]:
    """Parse the object with its kind's model; on failure a one-line message naming the fields."""
    data = {k: v for k, v in body.items() if k in ("apiVersion", "kind", "metadata", "spec")}
    try:
        return KINDS[body["kind"]].model_validate(data), ""
    except ValidationError as exc:
        return None, "; ".join(explain(exc))


def settled(body: Any, main: str = SUCCEEDED) -> bool:
    """Finished for this generation: no more work unless the spec changes."""
    status = body.get("status") or {}
    gen = int(body.get("metadata", {}).get("generation") or 1)
    cond = find_condition(status.get("conditions"), main)
    return bool(
        cond
        and cond.get("observedGeneration") == gen
        and cond.get("status") in ("True", "False")
        and cond.get("reason") not in RECOVERABLE
    )


# ---------------------------------------------------------------- dependencies


@dataclass
class DependencyReport:
    """Outcome of resolving every reference of an object."""

    inputs: dict[str, ResolvedInput] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    gate_pending: list[str] = field(default_factory=list)
    gate_failed: list[str] = field(default_factory=list)

    @property
    def inputs_ready(self) -> bool:
        return not (self.missing or self.pending or self.failed)

    def waiting_message(self) -> str:
        parts = [f"{r} not found" for r in self.missing] + self.pending
        return "waiting for " + "; ".join(parts)


def _artifact_of(dep: Dependency, obj: dict[str, Any], store_root: str) -> tuple[str, str | None]:
    status = obj.get("status") or {}
    artifact = status.get("artifact") or {}
    uri = artifact.get("uri") or status.get("artifactUri")
    digest = artifact.get("digest") or status.get("digest")
    if not uri:
        spec_out = ((obj.get("spec") or {}).get("output") or {}).get("uri")
        uri = spec_out or f"{store_root.rstrip('/')}/{dep.namespace}/{dep.kind.lower()}/{dep.name}"
    return str(uri), digest


def _same_model(md_spec: dict[str, Any], md_ns: str, ev: dict[str, Any]) -> bool:
    """Whether the Evaluation evaluated the model this deployment serves."""
    want = md_spec.get("model") or {}
    got = (ev.get("spec") or {}).get("model") or {}
    if want.get("uri") or got.get("uri"):
        return bool(want.get("uri") == got.get("uri"))
    a, b = want.get("ref") or {}, got.get("ref") or {}
    ev_ns = ev.get("metadata", {}).get("namespace")
    return (a.get("kind"), a.get("name"), a.get("namespace") or md_ns) == (
        b.get("kind"), b.get("name"), b.get("namespace") or ev_ns
    )


async def resolve_dependencies(resource: KubeResource, store_root: str) -> DependencyReport:
    """Look up every dependency (concurrently) and sort them into ready/missing/pending/failed."""
    deps = dependencies(resource)

    async def lookup(d: Dependency) -> dict[str, Any] | None:
        return cached(d.kind, d.namespace, d.name) or await kube.get_kubeforge(d.kind, d.namespace, d.name)

    objs = await asyncio.gather(*(lookup(d) for d in deps))
    report = DependencyReport()
    for dep, obj in zip(deps, objs, strict=True):
        gate = dep.key == "gate"
        if obj is None:
            (report.gate_pending if gate else report.missing).append(
                f"{dep.ref} not found" if gate else dep.ref
            )
            continue
        status = obj.get("status") or {}
        gen = int(obj.get("metadata", {}).get("generation") or 1)
        cond = find_condition(status.get("conditions"), SUCCEEDED)
        current = cond is not None and cond.get("observedGeneration") == gen
        state = cond.get("status") if cond and current else "Unknown"
        detail = f"{cond.get('reason')}: {cond.get('message')}" if cond and current else "not started"
        if state == "False":
            (report.gate_failed if gate else report.failed).append(f"{dep.ref} failed ({detail})")
            continue
        if state != "True":
            target = report.gate_pending if gate else report.pending
            target.append(f"{dep.ref} not yet succeeded ({detail})")
            continue
        if gate:
            passed = find_condition(status.get("conditions"), PASSED)
            spec: Any = resource.spec  # type: ignore[attr-defined]
            if spec.gate.require_same_model and not _same_model(
                spec.to_wire(), resource.namespace, obj
            ):
                report.gate_failed.append(f"{dep.ref} evaluated a different model than spec.model")
            elif passed is None or passed.get("status") != "True":
                why = f"{passed.get('reason')}: {passed.get('message')}" if passed else "no Passed condition"
                report.gate_failed.append(f"{dep.ref} did not pass ({why})")
            continue
        uri, digest = _artifact_of(dep, obj, store_root)
        report.inputs[dep.key] = ResolvedInput(kind=dep.kind, name=dep.name, uri=uri, digest=digest)
    return report


def apply_dependency_conditions(writer: StatusWriter, report: DependencyReport, kind: str, main: str) -> bool:
    """DependenciesReady (+ the main condition while blocked); True when the inputs are ready."""
    if report.failed:
        msg = "; ".join(report.failed)
        writer.set(DEPENDENCIES_READY, "False", "DependencyFailed", msg)
        writer.set(main, "False", "DependencyFailed", msg)
        return False
    if not report.inputs_ready:
        metrics.DEPENDENCY_WAIT.labels(kind).inc()
        msg = report.waiting_message()
        writer.set(DEPENDENCIES_READY, "False", "WaitingForDependencies", msg)
        if main == SUCCEEDED:
            writer.set(main, "Unknown", "WaitingForDependencies", msg)
        return False
    writer.set(DEPENDENCIES_READY, "True", "DependenciesSucceeded", "all inputs succeeded")
    return True


# ---------------------------------------------------------------- jobs and results


def job_state(job: dict[str, Any]) -> tuple[str, str, str]:
    """('Complete'|'Failed'|'Running', reason, message) from the Job's conditions."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"]), str(cond.get("reason") or cond["type"]), str(cond.get("message") or "")
    return "Running", "Running", ""


def _parse_result(text: str | None) -> StageResult | None:
    if not text:
        return None
    try:
        return StageResult.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return None


def _pod_order(pod: dict[str, Any]) -> tuple[int, str]:
    idx = (pod.get("metadata", {}).get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION, "0")
    return (int(idx) if str(idx).isdigit() else 0, str(pod.get("metadata", {}).get("creationTimestamp", "")))


async def read_result(job: dict[str, Any], test_hooks: bool) -> tuple[StageResult | None, str]:
    """The stage's StageResult and the last termination text.

    Order: the stage container's termination message (JSON StageResult, written by every stage); with
    `test_hooks` on, a `kubeforge.io/result` annotation on the Job, then on the pod (KWOK runs no
    containers, so tests inject results this way). Rank 0 (completion index 0) wins for Indexed Jobs.
    """
    meta = job["metadata"]
    pods = await kube.list_objects("v1", "Pod", meta["namespace"], f"{JOB_NAME_LABEL}={meta['name']}")
    pods.sort(key=_pod_order)
    text = ""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != STAGE_CONTAINER_NAME:
                continue
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            msg = (term or {}).get("message")
            if msg:
                result = _parse_result(msg)
                if result is not None:
                    return result, msg
                text = text or msg.strip().splitlines()[-1][:512]
    if test_hooks:
        for obj in [job, *pods]:
            result = _parse_result((obj.get("metadata", {}).get("annotations") or {}).get(RESULT_ANNOTATION))
            if result is not None:
                return result, text
    return None, text


def workload_seconds(job: dict[str, Any]) -> float | None:
    """Job start → completion (or now), for the workload duration histogram."""
    status = job.get("status") or {}
    start = parse_time(status.get("startTime"))
    if start is None:
        return None
    end = parse_time(status.get("completionTime")) or datetime.now(UTC)
    return max((end - start).total_seconds(), 0.0)


async def cleanup_old_generations(kind: str, namespace: str, name: str, generation: int) -> None:
    """Stop Jobs of superseded generations that are still running (a new spec replaces them)."""
    if generation <= 1:
        return  # no earlier generation can exist
    jobs = await kube.list_objects("batch/v1", "Job", namespace, f"{LABEL_KIND}={kind},{LABEL_OWNER}={name}")
    for job in jobs:
        gen = job["metadata"].get("labels", {}).get(LABEL_GENERATION)
        if gen != str(generation) and job_state(job)[0] == "Running":
            await kube.delete("batch/v1", "Job", namespace, job["metadata"]["name"])


async def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    """The Job from the watch cache, else from the API server (absent from the cache ≠ absent)."""
    job = cached("Job", namespace, name)
    if job is None:
        job = await kube.get("batch/v1", "Job", namespace, name)
        if job is not None:
            remember(job)
    return job


async def create_children(children: list[dict[str, Any]]) -> bool:
    """Create in order (ConfigMap before Job); True when the Job itself was new."""
    created_job = False
    for child in children:
        created = await kube.create(child)
        if child["kind"] == "Job":
            created_job = created
    return created_job


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
        forget_lock(str(meta.get("uid", "")))
        return
    cond = find_condition((body.get("status") or {}).get("conditions"), main)
    metrics.TRACKER.observe(kind, ns, name, main, str(cond.get("status")) if cond else "Unknown")


def iter_lineage(inputs: dict[str, ResolvedInput]) -> Iterator[dict[str, Any]]:
    """Lineage entries for resolved inputs (sorted by key for stable status)."""
    for key in sorted(inputs):
        yield inputs[key].lineage().to_wire()


Builder = Callable[[Any, dict[str, ResolvedInput], OperatorSettings], list[dict[str, Any]]]
Lifter = Callable[[StatusWriter, KubeResource, StageResult | None, str, dict[str, ResolvedInput]], None]


# ---------------------------------------------------------------- bounded kinds


def lift_workload(
    w: StatusWriter, resource: KubeResource, result: StageResult | None, out_uri: str,
    inputs: dict[str, ResolvedInput],
) -> None:
    """Artifact, lineage, metrics, progress, checkpoints and details into the status of a producing kind."""
    if result is not None and result.artifact is not None:
        w.fields["artifact"] = result.artifact.to_wire()
    else:
        # No result (e.g. KWOK runs no container): the artifact is where the stage was told to write.
        w.fields["artifact"] = {"uri": out_uri}
    if result is not None and result.lineage:
        w.fields["lineage"] = [entry.to_wire() for entry in result.lineage]
    else:
        w.fields["lineage"] = list(iter_lineage(inputs))
    if result is None:
        return
    if result.metrics:
        w.fields["metrics"] = result.metrics
    if result.progress is not None:
        w.fields["progress"] = result.progress.to_wire()
    if result.checkpoints:
        w.fields["checkpoints"] = result.checkpoints
    for key, value in (result.details or {}).items():
        if key != "passed":
            w.fields[key] = value


def unsettled(body: Any, **_: Any) -> bool:
    """kopf `when=` filter: poll only objects that still have work to do."""
    return not settled(body)


async def reconcile_stage(body_in: Any, patch: kopf.Patch, *, builder: Builder, lift: Lifter) -> None:
    """One level-triggered pass for a bounded kind (called under the object lock by `run_pass`)."""
    from ..builders.common import child_name
    from ..stage import output_uri, stage_name

    body = plain(body_in)
    kind = str(body["kind"])
    async with measured(kind) as box:
        if settled(body):
            box["outcome"] = "settled"
            return
        w = StatusWriter.for_body(body)
        resource, error = validate(body)
        if resource is None:
            w.set(SUCCEEDED, "False", "InvalidSpec", error)
            box["outcome"] = "invalid"
            w.flush(patch)
            return
        s = settings()
        report = await resolve_dependencies(resource, s.store_root)
        if not apply_dependency_conditions(w, report, kind, SUCCEEDED):
            box["outcome"] = "waiting"
            w.flush(patch)
            return
        ns = resource.namespace
        job_name = child_name(resource, stage_name(resource))
        job = cached("Job", ns, job_name)
        if job is None and (w.condition(JOB_CREATED) or {}).get("observedGeneration") == w.generation:
            job = await get_job(ns, job_name)
        if job is None:
            # Usually new: create straight away (saves a GET); 409 means it exists after all (restart).
            try:
                children = builder(resource, report.inputs, s)
            except ValueError as exc:
                w.set(SUCCEEDED, "False", "InvalidSpec", str(exc))
                box["outcome"] = "invalid"
                w.flush(patch)
                return
            await cleanup_old_generations(kind, ns, resource.name, w.generation)
            if not await create_children(children):
                job = await get_job(ns, job_name)
                if job is None:
                    raise kopf.TemporaryError(f"Job {job_name} existed and vanished; looking again", delay=1)
        if job is None:
            w.fields.update(
                jobName=job_name, startTime=now_rfc3339(), completionTime=None,
                lineage=list(iter_lineage(report.inputs)),
            )
            w.set(JOB_CREATED, "True", "JobCreated", f"Job {job_name} created")
            w.set(SUCCEEDED, "Unknown", "Running", f"Job {job_name} is running")
            box["outcome"] = "created"
            w.flush(patch)
            return
        w.fields["jobName"] = job_name
        if (w.condition(JOB_CREATED) or {}).get("observedGeneration") != w.generation:
            w.set(JOB_CREATED, "True", "JobCreated", f"Job {job_name} created")
        state, job_reason, job_message = job_state(job)
        if state == "Running":
            w.set(SUCCEEDED, "Unknown", "Running", f"Job {job_name} is running")
            box["outcome"] = "running"
            w.flush(patch)
            return
        result, text = await read_result(job, s.test_hooks)
        seconds = workload_seconds(job)
        w.fields["completionTime"] = (job.get("status") or {}).get("completionTime") or now_rfc3339()
        if state == "Complete" and (result is None or result.succeeded):
            lift(w, resource, result, output_uri(resource, s.store_root), report.inputs)
            reason = result.reason if result is not None else "Completed"
            message = (result.message if result is not None and result.message else f"Job {job_name} completed")
            w.set(SUCCEEDED, "True", reason or "Completed", message)
            outcome = "succeeded"
        else:
            stage_failed = result is not None and not result.succeeded
            reason = result.reason if stage_failed and result is not None else job_reason
            detail = (result.message if stage_failed and result is not None else "") or text or job_message
            w.set(SUCCEEDED, "False", reason or "Failed", f"Job {job_name} failed: {detail}")
            if kind == "Evaluation":
                w.set(PASSED, "False", "EvaluationFailed", "the evaluation did not complete")
            outcome = "failed"
        if seconds is not None:
            metrics.WORKLOAD_DURATION.labels(kind, outcome).observe(seconds)
        box["outcome"] = outcome
        w.flush(patch)
