"""ModelDeployment controller: conversion Job, then (only once every gate Evaluation passed) Triton serving.

Conditions: DependenciesReady (inputs and gate), ModelExported (conversion Job), Ready (serving). Ready is
False with reason GatePending/GateFailed naming the Evaluation that blocks; no Deployment exists before the
gate is open. Canary: the new version runs as `<name>-canary` beside the stable one and is promoted after
`rollout.promoteAfterSeconds` of being Ready.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kopf

from .. import heldout, kinds
from ..api.v1alpha1 import GROUP, VERSION, ModelDeployment
from ..api.v1alpha1.conditions import INPUTS_CHANGED, INVALID_RESULT
from ..api.v1alpha1.status import now_rfc3339
from ..builders import modeldeployment as builders
from ..builders.naming import LABEL_KIND, LABEL_OWNER, MANAGED_BY, child_name
from ..stage import ResolvedInput, output_uri, run_name
from . import deps, kube, stages
from .cache import cached, forget, plain, remember
from .passes import measured, register, wake
from .state import bind_from, current, settings
from .status import (
    DEPENDENCIES_READY,
    JOB_CREATED,
    MODEL_EXPORTED,
    READY,
    StatusWriter,
    as_body,
    iter_lineage,
    job_state,
    parse_time,
)
from .validation import validate

PLURAL = "modeldeployments"


class _Refused(Exception):
    """The builders refused the spec (a ValueError, e.g. a podOverrides mount on the artifact store's path)."""


def _render(build: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Builder output, rendered before anything is created or applied; a refusal is reported as InvalidSpec."""
    try:
        return build()
    except ValueError as exc:
        raise _Refused(str(exc)) from exc


# A pass applies a serving child only when its rendered manifest changed (OperatorState.applied), or
# REAPPLY_S after the last apply (to undo edits of fields the operator owns). Deployments are watched
# (`deployment_event`), so their status comes from the cache.
REAPPLY_S = 600.0


def _digest(child: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(child, sort_keys=True, default=str).encode()).hexdigest()


async def _apply(child: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply of one serving child unless nothing changed; a permanent refusal is ChildRejected."""
    meta = child["metadata"]
    key = (str(child["kind"]), str(meta["namespace"]), str(meta["name"]))
    applied = current().applied
    digest, last = _digest(child), applied.get(key)
    known = cached(*key) if key[0] == "Deployment" else {}
    if last is not None and last[0] == digest and known is not None and time.monotonic() - last[1] < REAPPLY_S:
        return known
    try:
        out = await kube.apply(child)
    except kube.KubeError as exc:
        if (refused := stages.rejected(child, exc)) is not None:
            raise refused from exc
        raise
    applied[key] = (digest, time.monotonic())
    if key[0] == "Deployment":
        remember({"apiVersion": "apps/v1", "kind": "Deployment", **out})
    return out


async def _delete_deployment(namespace: str, name: str) -> None:
    """Delete a Deployment the watch cache knows (no DELETE request per pass for one that is not there)."""
    if cached("Deployment", namespace, name) is not None:
        await kube.delete("apps/v1", "Deployment", namespace, name)
        forget("Deployment", namespace, name)
    current().applied.pop(("Deployment", namespace, name), None)


async def _get(key: heldout.Key) -> dict[str, Any] | None:
    return cached(*key) or await kube.get_kubeforge(*key)


async def _with_held_out(md: ModelDeployment, inputs: dict[str, ResolvedInput]) -> dict[str, ResolvedInput]:
    """`inputs` plus `heldOut`, the Dataset split the quantization parity check reads (best effort, never waited
    for: without it the stage measures on random tokens and says so)."""
    if not heldout.wanted(md) or heldout.HELD_OUT in inputs:
        return inputs
    keys = heldout.source_keys(md)
    bodies = dict(zip(keys, await asyncio.gather(*(_get(k) for k in keys)), strict=True))
    sources = heldout.held_out_sources(md, bodies)
    ds_keys = list(dict.fromkeys(src.key for src in sources))
    datasets = dict(zip(ds_keys, await asyncio.gather(*(_get(k) for k in ds_keys)), strict=True))
    found = heldout.held_out_input(sources, datasets)
    return {**inputs, heldout.HELD_OUT: found} if found is not None else inputs


async def _conversion(
    w: StatusWriter, md: ModelDeployment, report: deps.DependencyReport, revision: int, rerun: bool
) -> str | None:
    """Drive the conversion Job of this run; returns the model repository URI once exported."""
    s = settings()
    job_name = child_name(md, "convert", revision=revision)
    job = await stages.get_job(md.namespace, job_name)
    if job is None or rerun:
        inputs = await _with_held_out(md, report.inputs)
        w.fields.update(jobName=job_name, inputRevision=revision, lineage=list(iter_lineage(inputs)))
    if job is None:
        children = _render(lambda: builders.get_conversion_children(md, inputs, s, revision))
        await stages.cleanup_old_generations(md.kind, md.namespace, md.name, w.generation)
        await stages.create_children(children)
        w.set(JOB_CREATED, "True", "JobCreated", f"Job {job_name} created")
        w.set(MODEL_EXPORTED, "Unknown", "Converting", f"Job {job_name} is exporting the model")
        return None
    if (w.condition(JOB_CREATED) or {}).get("observedGeneration") != w.generation:
        w.set(JOB_CREATED, "True", "JobCreated", f"Job {job_name} created")
    exported = w.condition(MODEL_EXPORTED)
    if not rerun and exported and exported.get("observedGeneration") == w.generation and exported.get(
        "status"
    ) == "True":
        repo = (w.body.get("status") or {}).get("modelRepository")
        if repo:
            return str(repo)
    state, reason, message = job_state(job)
    if state == "Running":
        w.set(MODEL_EXPORTED, "Unknown", "Converting", f"Job {job_name} is exporting the model")
        return None
    result, text = await stages.read_result(job, s.test_hooks)
    if state == "Failed" or (result is not None and not result.succeeded):
        quality = ((result.details if result is not None else None) or {}).get("quantization")
        if isinstance(quality, dict):  # measured even when the quality gate failed the conversion
            w.fields["quantization"] = quality
        why = (result.message if result is not None else "") or text or message
        w.set(MODEL_EXPORTED, "False", (result.reason if result and not result.succeeded else reason),
              f"Job {job_name} failed: {why}")
        return None
    # The meaning shared with `kubeforge run` (kinds.py): repository, digest, conversion report, ModelExported.
    lifted = kinds.of(md.kind).lift(result, output_uri(md, s.store_root, run_name(w.generation, revision)),
                                    report.inputs)
    if lifted.problem:
        w.set(MODEL_EXPORTED, "False", INVALID_RESULT, lifted.problem)
        return None
    w.fields.update(lifted.fields)
    for ctype, status, reason, message in lifted.conditions:
        w.set(ctype, status, reason, message)
    return str(lifted.fields["modelRepository"])


async def _prune(w: StatusWriter, md: ModelDeployment) -> None:
    """Delete the HPA and PDB the spec no longer asks for (spec.autoscaling removed, replicas down to 1).

    Once per generation and operator process: the spec changes only with the generation, a restarted operator
    checks again, and a steady serving pass costs no extra request. A failed delete fails the pass, which is
    retried, and the generation is recorded only after both deletes went through.
    """
    uid = str((w.body.get("metadata") or {}).get("uid") or "")
    pruned = current().pruned
    if pruned.get(uid) == w.generation:
        return
    name = builders.deployment_name(md, builders.STABLE)
    if builders.get_hpa(md) is None:
        await kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", md.namespace, name)
    if builders.get_pdb(md) is None:
        await kube.delete("policy/v1", "PodDisruptionBudget", md.namespace, name)
    pruned[uid] = w.generation


async def _serve(w: StatusWriter, md: ModelDeployment, repo: str, revision: int) -> None:
    """Apply Service/Deployments/HPA/PDB for the current version, prune unwanted ones; run the canary."""
    s = settings()
    status = w.body.get("status") or {}
    version = run_name(w.generation, revision)
    served = status.get("servedVersion")
    served_repo = status.get("servedModelRepository") or repo
    canary = md.spec.rollout.strategy == "canary" and served is not None and served != version
    if canary:
        children = _render(lambda: builders.get_serving_children(
            md, s, stable_version=str(served), stable_repository=str(served_repo), canary_version=version,
            canary_repository=repo,
        ))
    else:
        children = _render(lambda: builders.get_serving_children(
            md, s, stable_version=version, stable_repository=repo
        ))
    applied: dict[str, dict[str, Any]] = {}
    for child in children:
        applied[child["metadata"]["name"] + "/" + child["kind"]] = await _apply(child)
    await _prune(w, md)
    if not canary:
        await _delete_deployment(md.namespace, builders.deployment_name(md, builders.CANARY))
        if served != version:
            msg = f"serving {version} from {repo}"
            kopf.event(as_body(w.body), type="Normal", reason="Deployed", message=msg)
        w.fields.update(servedVersion=version, servedModelRepository=repo, canaryVersion=None,
                        canaryReadySince=None)
    else:
        w.fields["canaryVersion"] = version
        canary_obj = applied[f"{builders.deployment_name(md, builders.CANARY)}/Deployment"]
        want = canary_obj.get("spec", {}).get("replicas", 1)
        ready = (canary_obj.get("status") or {}).get("readyReplicas", 0) or 0
        if ready >= want:
            since = status.get("canaryReadySince") or now_rfc3339()
            w.fields["canaryReadySince"] = since
            started = parse_time(since) or datetime.now(UTC)
            if (datetime.now(UTC) - started).total_seconds() >= md.spec.rollout.promote_after_seconds:
                for child in builders.get_serving_children(md, s, stable_version=version, stable_repository=repo):
                    applied[child["metadata"]["name"] + "/" + child["kind"]] = await _apply(child)
                await _delete_deployment(md.namespace, builders.deployment_name(md, builders.CANARY))
                msg = f"canary {version} promoted to stable"
                kopf.event(as_body(w.body), type="Normal", reason="Promoted", message=msg)
                w.fields.update(servedVersion=version, servedModelRepository=repo, canaryVersion=None,
                                canaryReadySince=None)
                canary = False
        else:
            w.fields["canaryReadySince"] = None
    stable = applied[f"{builders.deployment_name(md, builders.STABLE)}/Deployment"]
    ready_replicas = int((stable.get("status") or {}).get("readyReplicas") or 0)
    w.fields["readyReplicas"] = ready_replicas
    w.fields["endpoints"] = builders.endpoints(md)
    served_now = w.fields.get("servedVersion", served)
    if ready_replicas >= 1:
        reason = "CanaryInProgress" if canary else "Serving"
        extra = f"; canary {version} beside it" if canary else ""
        w.set(READY, "True", reason, f"serving {served_now} ({ready_replicas} ready replicas){extra}")
    else:
        w.set(READY, "False", "Progressing", f"waiting for Triton pods of {served_now} to become Ready")


def _model_moved(w: StatusWriter, md: ModelDeployment, report: deps.DependencyReport) -> tuple[bool, str]:
    """(re-convert, note): whether the exported model's producer now offers another artifact and this object
    converts it again (`spec.rerunOnInputChange`; the tracks then roll to the new run as to a new
    generation), else a note for DependenciesReady when it keeps serving what it has."""
    exported = w.condition(MODEL_EXPORTED) or {}
    if exported.get("status") != "True" or exported.get("observedGeneration") != w.generation:
        return False, ""
    moved = deps.moved_inputs((w.body.get("status") or {}).get("lineage"), report.inputs)
    if not moved:
        return False, ""
    why = "; ".join(moved)
    if not md.spec.rerun_on_input_change:
        return False, f"{why}; kept (spec.rerunOnInputChange: false)"
    kopf.event(as_body(w.body), type="Normal", reason=INPUTS_CHANGED, message=f"{why}; converting again")
    return True, ""


def _converting(w: StatusWriter) -> None:
    """Ready while a conversion Job runs: still True when a served run keeps answering (a new generation or
    a moved model is being converted; the Triton pods of the served run are left alone until it is done,
    as KServe keeps an InferenceService Ready while its next revision rolls out), else False."""
    served = (w.body.get("status") or {}).get("servedVersion")
    was = w.condition(READY) or {}
    if served and was.get("status") == "True":
        w.set(READY, "True", str(was.get("reason") or "Serving"),
              f"serving {served} while the conversion Job exports the next model")
    else:
        w.set(READY, "False", "Converting", "waiting for the conversion Job")


async def reconcile_md(body_in: Any, patch: kopf.Patch) -> None:
    """One pass: validate → inputs → conversion → gate → serving."""
    body = plain(body_in)
    async with measured("ModelDeployment") as box:
        w = StatusWriter.for_body(body)
        resource, error = validate(body)
        if resource is None:
            w.set(READY, "False", "InvalidSpec", error)
            box["outcome"] = "invalid"
            w.flush(patch)
            return
        assert isinstance(resource, ModelDeployment)
        report = await deps.resolve_dependencies(resource, settings().store_root)
        if not deps.apply_dependency_conditions(w, report, resource.kind, READY):
            if not (report.failed or report.cycle):
                w.set(READY, "False", "WaitingForDependencies", report.waiting_message())
            box["outcome"] = "waiting"
            w.flush(patch)
            return
        revision = stages.current_revision(body)
        rerun, kept = _model_moved(w, resource, report)
        if rerun:
            revision += 1
        try:
            repo = await _conversion(w, resource, report, revision, rerun)
        except _Refused as exc:
            w.set(READY, "False", "InvalidSpec", str(exc))
            box["outcome"] = "invalid"
            w.flush(patch)
            return
        except stages.ChildRejected as exc:
            w.set(READY, "False", "ChildRejected", str(exc))
            box["outcome"] = "invalid"
            w.flush(patch)
            return
        if report.gate_failed:
            msg = "; ".join(report.gate_failed)
            w.set(DEPENDENCIES_READY, "False", "GateFailed", msg)
            w.set(READY, "False", "GateFailed", f"blocked by gate: {msg}")
            box["outcome"] = "blocked"
        elif report.gate_pending:
            msg = "; ".join(report.gate_pending)
            w.set(DEPENDENCIES_READY, "False", "GatePending", f"waiting for gate: {msg}")
            w.set(READY, "False", "GatePending", f"waiting for gate: {msg}")
            box["outcome"] = "waiting"
        else:
            if kept:
                w.set(DEPENDENCIES_READY, "True", INPUTS_CHANGED, kept)
            else:
                w.set(DEPENDENCIES_READY, "True", "DependenciesSucceeded", "inputs succeeded and gate passed")
            exported = w.condition(MODEL_EXPORTED) or {}
            if repo is not None:
                try:
                    await _serve(w, resource, repo, revision)
                except _Refused as exc:
                    w.set(READY, "False", "InvalidSpec", str(exc))
                    box["outcome"] = "invalid"
                except stages.ChildRejected as exc:
                    w.set(READY, "False", "ChildRejected", str(exc))
                    box["outcome"] = "invalid"
            elif exported.get("status") == "False":
                w.set(READY, "False", "ConversionFailed", str(exported.get("message", "")))
                box["outcome"] = "failed"
            else:
                _converting(w)
                box["outcome"] = "running"
        w.flush(patch)


register("ModelDeployment", reconcile_md)


@kopf.on.event(GROUP, VERSION, PLURAL, id="track")
async def track(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Metrics gauge, cache and dependency index; queue a pass when the object is new or changed."""
    await deps.on_object_event(body, type, READY, memo)


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY},
               id="wake-model-deployment")
async def deployment_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A Triton Deployment changed (replicas became ready, it vanished): cache it and queue its owner."""
    bind_from(memo)
    data = plain(body)
    meta = data.get("metadata") or {}
    ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    if type == "DELETED":
        forget("Deployment", ns, name)
        current().applied.pop(("Deployment", ns, name), None)
    else:
        remember({"apiVersion": "apps/v1", "kind": "Deployment", **data})
    owner = (meta.get("labels") or {}).get(LABEL_OWNER)
    if (meta.get("labels") or {}).get(LABEL_KIND) == "ModelDeployment" and owner:
        wake("ModelDeployment", ns, str(owner))
