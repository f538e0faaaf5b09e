"""The bounded kinds' pass (Dataset, TrainingJob, RewardModel, RLHFJob, Evaluation): one Job per generation.

Children are created with deterministic names (409 = already there), so a pass is idempotent. The API
server refusing a child outright (400/403/422: invalid, forbidden) ends the generation with
Succeeded=False, reason ChildRejected and the server's message; retrying the same object cannot help.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from .. import kinds, metrics
from ..api.v1alpha1 import KubeResource
from ..api.v1alpha1.conditions import DEPENDENCIES_READY, INPUTS_CHANGED, INVALID_RESULT
from ..api.v1alpha1.status import now_rfc3339
from ..builders.naming import (
    COMPLETION_INDEX_ANNOTATION,
    JOB_NAME_LABEL,
    LABEL_GENERATION,
    LABEL_KIND,
    LABEL_OWNER,
    child_name,
)
from ..builders.workloads import STAGE_CONTAINER as STAGE_CONTAINER_NAME
from ..stage import ResolvedInput, StageResult, output_uri, run_name, stage_name
from . import kube, progress
from .cache import cached, forget, plain, remember
from .deps import DependencyReport, apply_dependency_conditions, moved_inputs, resolve_dependencies
from .passes import measured
from .state import settings
from .status import JOB_CREATED, SUCCEEDED, StatusWriter, iter_lineage, job_state, parse_time, settled
from .validation import validate

RESULT_ANNOTATION = "kubeforge.io/result"
MAX_REJECTION_MESSAGE = 1024


class ChildRejected(Exception):
    """The API server refused to create or apply a child; the message names it and quotes the server."""

    def __init__(self, child: dict[str, Any], exc: kube.KubeError) -> None:
        name = child.get("metadata", {}).get("name", "")
        text = f"{child.get('kind')} {name} rejected by the API server (HTTP {exc.status}): {exc.message}"
        super().__init__(text[:MAX_REJECTION_MESSAGE])


def rejected(child: dict[str, Any], exc: kube.KubeError) -> ChildRejected | None:
    """A ChildRejected when `exc` is permanent for this object (see kube.is_rejection), else None."""
    return ChildRejected(child, exc) if kube.is_rejection(exc) else None


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


class StaleChild(RuntimeError):
    """A child with the deterministic name belongs to an earlier object of the same name (deleted and
    re-created): it was deleted; the pass fails and the work queue retries after its backoff."""


def owner_uid(obj: dict[str, Any]) -> str | None:
    """UID of the controlling owner reference, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


async def drop_if_stale(found: dict[str, Any], uid: str) -> None:
    """Refuse to adopt a child whose owner UID is not `uid`: delete it and raise StaleChild."""
    theirs = owner_uid(found)
    if theirs is None or theirs == uid:
        return
    meta = found["metadata"]
    await kube.delete(str(found.get("apiVersion") or "v1"), str(found["kind"]), meta["namespace"], meta["name"])
    forget(str(found["kind"]), meta["namespace"], meta["name"])
    raise StaleChild(f"{found['kind']} {meta['name']} belonged to an earlier object of this name (owner UID "
                     f"{theirs}); deleted it, a fresh one follows")


async def create_children(children: list[dict[str, Any]]) -> bool:
    """Create in order (a distributed run's Service before its Job); True when the Job itself was new. Raises
    ChildRejected, or StaleChild when the Job of that name exists but belongs to an earlier object of the
    same name (the stage's config travels in the Job's pod template, so nothing else can be stale)."""
    created_job = False
    for child in children:
        try:
            created = await kube.create(child)
        except kube.KubeError as exc:
            if (refused := rejected(child, exc)) is not None:
                raise refused from exc
            raise
        if not created and child["kind"] == "Job" and (uid := owner_uid(child)) is not None:
            meta = child["metadata"]
            found = await kube.get(child["apiVersion"], child["kind"], meta["namespace"], meta["name"])
            if found is not None:
                found.setdefault("apiVersion", child["apiVersion"])
                found.setdefault("kind", child["kind"])
                await drop_if_stale(found, uid)
        if child["kind"] == "Job":
            created_job = created
    return created_job


# ---------------------------------------------------------------- bounded kinds


def lift_workload(
    w: StatusWriter, resource: KubeResource, result: StageResult | None, out_uri: str,
    inputs: dict[str, ResolvedInput],
) -> str:
    """The status a finished stage leads to, from the meaning shared with the local runner (kinds.py);
    returns why the result cannot be written as status (empty when it can)."""
    lifted = kinds.of(resource.kind).lift(result, out_uri, inputs)
    if lifted.problem:
        return lifted.problem
    w.fields.update(lifted.fields)
    for ctype, status, reason, message in lifted.conditions:
        w.set(ctype, status, reason, message)
    return ""


def current_revision(body: dict[str, Any]) -> int:
    """The input revision of this generation's latest run (0 until an input moved after it finished)."""
    status = body.get("status") or {}
    gen = int(body.get("metadata", {}).get("generation") or 1)
    if status.get("observedGeneration") != gen:
        return 0
    return int(status.get("inputRevision") or 0)


def may_rerun(body: dict[str, Any]) -> bool:
    """A finished object that recorded produced inputs: one of them may have moved since (cheap pre-check)."""
    lineage = (body.get("status") or {}).get("lineage") or []
    return any(isinstance(e, dict) and e.get("kind") not in (None, "External") for e in lineage)


async def rerun_for_moved_inputs(
    w: StatusWriter, resource: KubeResource, store_root: str
) -> tuple[str, DependencyReport] | None:
    """(why, dependencies) when a finished object must run again because an input moved; else None.

    With `spec.rerunOnInputChange: false` a moved input is only reported (DependenciesReady, InputsChanged).
    """
    report = await resolve_dependencies(resource, store_root)
    if not report.inputs_ready or report.failed or report.cycle or report.incompatible or report.not_granted:
        return None  # a producer is re-running (or broken): keep the result until it has a new one
    moved = moved_inputs((w.body.get("status") or {}).get("lineage"), report.inputs)
    if not moved:
        return None
    spec: Any = resource.spec  # type: ignore[attr-defined]
    why = "; ".join(moved)
    if not spec.rerun_on_input_change:
        w.set(DEPENDENCIES_READY, "True", INPUTS_CHANGED, f"{why}; kept (spec.rerunOnInputChange: false)")
        return None
    return why, report


async def reconcile_stage(body_in: Any, patch: kopf.Patch, *, meaning: kinds.Kind) -> None:
    """One level-triggered pass for a bounded kind (run by a work-queue consumer through `run_pass`)."""
    body = plain(body_in)
    kind = meaning.name
    async with measured(kind) as box:
        finished = settled(body)
        if finished and not may_rerun(body):
            box["outcome"] = "settled"
            return
        w = StatusWriter.for_body(body)
        resource, error = validate(body)
        if resource is None:
            if finished:
                return
            w.set(SUCCEEDED, "False", "InvalidSpec", error)
            box["outcome"] = "invalid"
            w.flush(patch)
            return
        s = settings()
        revision = current_revision(body)
        rerun_why = ""
        if finished:
            rerun = await rerun_for_moved_inputs(w, resource, s.store_root)
            if rerun is None:
                box["outcome"] = "settled"
                if w.transitions:
                    w.flush(patch)
                return
            rerun_why, report = rerun
            revision += 1
        else:
            report = await resolve_dependencies(resource, s.store_root)
        if not apply_dependency_conditions(w, report, kind, SUCCEEDED):
            box["outcome"] = "waiting"
            w.flush(patch)
            return
        if rerun_why:  # replaces the DependenciesSucceeded just set: one condition, one Event
            w.transitions = [t for t in w.transitions if t[0] != DEPENDENCIES_READY]
            w.set(DEPENDENCIES_READY, "True", INPUTS_CHANGED, f"{rerun_why}; running again as "
                  f"{run_name(w.generation, revision)}")
        ns = resource.namespace
        job_name = child_name(resource, stage_name(resource), revision=revision)
        job = cached("Job", ns, job_name)
        if job is None and (w.condition(JOB_CREATED) or {}).get("observedGeneration") == w.generation:
            job = await get_job(ns, job_name)
        if job is None:
            # Usually new: create straight away (saves a GET); 409 means it exists after all (restart).
            try:
                children = meaning.children(resource, report.inputs, s, revision)
            except ValueError as exc:
                w.set(SUCCEEDED, "False", "InvalidSpec", str(exc))
                box["outcome"] = "invalid"
                w.flush(patch)
                return
            await cleanup_old_generations(kind, ns, resource.name, w.generation)
            try:
                created = await create_children(children)
            except ChildRejected as exc:
                w.set(SUCCEEDED, "False", "ChildRejected", str(exc))
                box["outcome"] = "invalid"
                w.flush(patch)
                return
            if not created:
                job = await get_job(ns, job_name)
                if job is None:
                    raise kopf.TemporaryError(f"Job {job_name} existed and vanished; looking again", delay=1)
        if job is None:
            w.fields.update(
                jobName=job_name, startTime=now_rfc3339(), completionTime=None,
                lineage=list(iter_lineage(report.inputs)), inputRevision=revision,
            )
            w.set(JOB_CREATED, "True", "JobCreated", f"Job {job_name} created")
            w.set(SUCCEEDED, "Unknown", "Running", f"Job {job_name} is running")
            box["outcome"] = "created"
            w.flush(patch)
            return
        await drop_if_stale({"apiVersion": "batch/v1", "kind": "Job", **job}, str(body["metadata"].get("uid")))
        w.fields["jobName"] = job_name
        if rerun_why:  # the re-run's Job existed already (a pass that created it did not get to write status)
            w.fields.update(inputRevision=revision, lineage=list(iter_lineage(report.inputs)))
        if (w.condition(JOB_CREATED) or {}).get("observedGeneration") != w.generation:
            w.set(JOB_CREATED, "True", "JobCreated", f"Job {job_name} created")
        state, job_reason, job_message = job_state(job)
        if state == "Running":
            w.set(SUCCEEDED, "Unknown", "Running", f"Job {job_name} is running")
            if meaning.reports_progress and (live := await progress.read_progress(job)) is not None:
                w.fields["progress"] = live
            box["outcome"] = "running"
            w.flush(patch)
            return
        progress.forget(ns, job_name)
        result, text = await read_result(job, s.test_hooks)
        seconds = workload_seconds(job)
        w.fields["completionTime"] = (job.get("status") or {}).get("completionTime") or now_rfc3339()
        completed = state == "Complete" and (result is None or result.succeeded)
        problem = ""
        if completed:
            out = output_uri(resource, s.store_root, run_name(w.generation, revision))
            problem = lift_workload(w, resource, result, out, report.inputs)
        if completed and not problem:
            reason = result.reason if result is not None else "Completed"
            message = (result.message if result is not None and result.message else f"Job {job_name} completed")
            w.set(SUCCEEDED, "True", reason or "Completed", message)
            outcome = "succeeded"
        elif problem:
            w.set(SUCCEEDED, "False", INVALID_RESULT, f"Job {job_name}: {problem}")
            for ctype, status, why, message in meaning.failed_conditions():
                w.set(ctype, status, why, message)
            outcome = "failed"
        else:
            stage_failed = result is not None and not result.succeeded
            reason = result.reason if stage_failed and result is not None else job_reason
            detail = (result.message if stage_failed and result is not None else "") or text or job_message
            w.set(SUCCEEDED, "False", reason or "Failed", f"Job {job_name} failed: {detail}")
            for ctype, status, why, message in meaning.failed_conditions():
                w.set(ctype, status, why, message)
            outcome = "failed"
        if seconds is not None:
            metrics.WORKLOAD_DURATION.labels(kind, outcome).observe(seconds)
        box["outcome"] = outcome
        w.flush(patch)
