"""Dependencies between Kubeforge objects: resolving them, reporting them, cycles, and waking dependents.

A dependency's own condition message is never copied whole into a dependent's message: only its reason,
plus its message when that message cannot itself be a copy (not a waiting/failed-dependency message), so
messages stay bounded along chains and cycles. Cycles (`fromDataset` naming itself, A -> B -> A) are found
by walking spec references and reported as DependenciesReady=False, reason InvalidSpec.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .. import metrics
from ..api.v1alpha1 import KubeResource, conditions
from ..stage import Dependency, ResolvedInput, dependencies
from . import jobwatch, kube, workers
from .cache import cached, forget, key_of, plain, remember
from .passes import track, wake
from .state import Key, bind_from, current
from .status import DEPENDENCIES_READY, PASSED, SUCCEEDED, StatusWriter, find_condition
from .validation import validate

GRANT_ANNOTATION = "kubeforge.io/allow-references-from"
# Reasons whose messages are built from other objects' conditions: never copied into another message.
DERIVED_REASONS = {"WaitingForDependencies", "DependencyFailed", "GatePending", "GateFailed"}
MAX_DETAIL = 300
MAX_CYCLE_WALK = 1000  # objects visited at most when looking for a cycle


@dataclass
class DependencyReport:
    """Outcome of resolving every reference of an object."""

    inputs: dict[str, ResolvedInput] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # "Kind/name not found (spec field)"
    pending: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    gate_pending: list[str] = field(default_factory=list)
    gate_failed: list[str] = field(default_factory=list)
    cycle: list[str] = field(default_factory=list)
    incompatible: list[str] = field(default_factory=list)  # e.g. a TrainingJob method that does not fit its Dataset
    not_granted: list[str] = field(default_factory=list)  # references into namespaces that do not allow them

    @property
    def inputs_ready(self) -> bool:
        return not (self.missing or self.pending or self.failed or self.cycle or self.incompatible
                    or self.not_granted)

    def waiting_message(self) -> str:
        parts = self.missing + self.pending
        return "waiting for " + "; ".join(parts)

    def cycle_message(self) -> str:
        return "dependency cycle: " + " -> ".join(self.cycle)


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


def _evaluated_other_artifact(evaluation: dict[str, Any], model: ResolvedInput | None) -> str | None:
    """Why a passed Evaluation does not vouch for the model artifact about to be served, or None.

    The same object is not enough: its producer may have re-run since (a new run folder and digest), and
    the gate waits for the Evaluation to evaluate that artifact too (it re-runs when its input moves)."""
    if model is None or model.kind == "External":
        return None
    for entry in (evaluation.get("status") or {}).get("lineage") or []:
        if (entry.get("kind"), entry.get("name")) != (model.kind, model.name):
            continue
        if recorded_as(entry, model):
            return None
        seen, serve = str(entry.get("digest") or entry.get("uri"))[:72], (model.digest or model.uri)[:72]
        return (f"evaluated {model.kind} {model.name} at {seen}, not the artifact to serve ({serve}); waiting for "
                "it to evaluate that one")
    return None


def detail(cond: dict[str, Any]) -> str:
    """`Reason: message` of a dependency's condition, without text it may have copied from elsewhere."""
    reason = str(cond.get("reason") or "")
    message = str(cond.get("message") or "")
    if reason in DERIVED_REASONS or not message:
        return reason or "no reason"
    if len(message) > MAX_DETAIL:
        message = message[: MAX_DETAIL - 3] + "..."
    return f"{reason}: {message}"


async def _lookup(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    return cached(kind, namespace, name) or await kube.get_kubeforge(kind, namespace, name)


async def find_cycle(resource: KubeResource) -> list[str]:
    """The shortest chain of references from `resource` back to itself as `Kind/name` (empty: none).

    Breadth-first over spec references, bodies from the watch cache (a GET on a miss); an object that does
    not exist or does not parse ends its path. Names from other namespaces are written `Kind/ns/name`.
    """
    start: Key = (resource.kind, resource.namespace, resource.name)
    parent: dict[Key, Key] = {}
    frontier: list[Key] = [start]
    seen = {start}
    while frontier and len(seen) <= MAX_CYCLE_WALK:
        nxt: list[Key] = []
        for node in frontier:
            res: KubeResource | None = resource
            if node != start:
                body = await _lookup(*node)
                res = validate(body)[0] if body is not None else None
            for dep in dependencies(res) if res is not None else []:
                target: Key = (dep.kind, dep.namespace, dep.name)
                if target == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(parent[chain[-1]])
                    path = [*reversed(chain), start]
                    return [_ref(k, resource.namespace) for k in path]
                if target not in seen:
                    seen.add(target)
                    parent[target] = node
                    nxt.append(target)
        frontier = nxt
    return []


def _ref(key: Key, namespace: str) -> str:
    kind, ns, name = key
    return f"{kind}/{name}" if ns == namespace else f"{kind}/{ns}/{name}"


def dataset_mismatch(resource: KubeResource, dep: Dependency, obj: dict[str, Any]) -> str | None:
    """Why a TrainingJob's method cannot train on the Dataset `obj` (whose spec names its task), or None."""
    if resource.kind != "TrainingJob" or dep.key != "dataset":
        return None
    from ..api.v1alpha1.trainingjob import dataset_task_problem

    ds_spec = obj.get("spec") or {}
    if not ds_spec.get("task"):
        return None
    template = bool((ds_spec.get("processing") or {}).get("chatTemplate"))
    method = str(resource.spec.method)  # type: ignore[attr-defined]
    return dataset_task_problem(method, dep.name, str(ds_spec["task"]), template)


async def grants(target_ns: str, from_ns: str) -> bool:
    """Whether namespace `target_ns` lets objects of `from_ns` reference its Kubeforge objects: its
    `kubeforge.io/allow-references-from` annotation lists `from_ns` (comma-separated) or is `*`.

    The grant sits on the Namespace, which tenants normally cannot edit, so a tenant cannot make the
    operator read (and train on, or serve) another tenant's artifacts on its behalf."""
    try:
        ns = await kube.get("v1", "Namespace", None, target_ns)
    except kube.KubeError as exc:
        if exc.status == 403:  # namespaced install: the operator may not read Namespaces, so no grants
            return False
        raise
    allowed = str(((ns or {}).get("metadata") or {}).get("annotations", {}).get(GRANT_ANNOTATION, ""))
    names = {n.strip() for n in allowed.split(",") if n.strip()}
    return "*" in names or from_ns in names


async def resolve_dependencies(resource: KubeResource, store_root: str) -> DependencyReport:
    """Look up every dependency (concurrently) and sort them into ready/missing/pending/failed/cycle."""
    report = DependencyReport()
    deps = []
    for dep in dependencies(resource):
        if dep.namespace != resource.namespace and not await grants(dep.namespace, resource.namespace):
            report.not_granted.append(
                f"{dep.ref} is in namespace {dep.namespace}, which does not allow references from "
                f"{resource.namespace}: annotate namespace {dep.namespace} with "
                f"{GRANT_ANNOTATION}={resource.namespace} (a cluster admin), or copy the object here"
            )
        else:
            deps.append(dep)
    objs = await asyncio.gather(*(_lookup(d.kind, d.namespace, d.name) for d in deps))
    passed_gates: list[tuple[Dependency, dict[str, Any]]] = []
    for dep, obj in zip(deps, objs, strict=True):
        gate = dep.key == "gate"
        if obj is None:
            where = f" ({dep.field})" if dep.field else ""
            (report.gate_pending if gate else report.missing).append(f"{dep.ref} not found{where}")
            continue
        mismatch = dataset_mismatch(resource, dep, obj)
        if mismatch:
            report.incompatible.append(mismatch)
            continue
        status = obj.get("status") or {}
        gen = int(obj.get("metadata", {}).get("generation") or 1)
        cond = find_condition(status.get("conditions"), SUCCEEDED)
        current = cond is not None and cond.get("observedGeneration") == gen
        state = cond.get("status") if cond and current else "Unknown"
        why = detail(cond) if cond and current else "not started"
        if state == "False":
            (report.gate_failed if gate else report.failed).append(f"{dep.ref} failed ({why})")
            continue
        if state != "True":
            target = report.gate_pending if gate else report.pending
            target.append(f"{dep.ref} not yet succeeded ({why})")
            continue
        if gate:
            passed = find_condition(status.get("conditions"), PASSED)
            spec: Any = resource.spec  # type: ignore[attr-defined]
            if spec.gate.require_same_model and not _same_model(
                spec.to_wire(), resource.namespace, obj
            ):
                report.gate_failed.append(f"{dep.ref} evaluated a different model than spec.model")
            elif passed is None or passed.get("status") != "True":
                report.gate_failed.append(
                    f"{dep.ref} did not pass ({detail(passed) if passed else 'no Passed condition'})"
                )
            else:
                passed_gates.append((dep, obj))
            continue
        uri, digest = _artifact_of(dep, obj, store_root)
        report.inputs[dep.key] = ResolvedInput(kind=dep.kind, name=dep.name, uri=uri, digest=digest)
    for dep, obj in passed_gates:
        stale = _evaluated_other_artifact(obj, report.inputs.get("model"))
        if stale and resource.spec.gate.require_same_model:  # type: ignore[attr-defined]
            report.gate_pending.append(f"{dep.ref} {stale}")
    if report.pending or report.failed:  # only then can a cycle be what blocks
        report.cycle = await find_cycle(resource)
    return report


def apply_dependency_conditions(writer: StatusWriter, report: DependencyReport, kind: str, main: str) -> bool:
    """DependenciesReady (+ the main condition while blocked); True when the inputs are ready."""
    if report.not_granted:
        msg = "; ".join(report.not_granted)
        writer.set(DEPENDENCIES_READY, "False", conditions.REFERENCE_NOT_GRANTED, msg)
        writer.set(main, "False", conditions.REFERENCE_NOT_GRANTED, msg)
        return False
    if report.incompatible:
        msg = "; ".join(report.incompatible)
        writer.set(DEPENDENCIES_READY, "False", "IncompatibleDataset", msg)
        writer.set(main, "False", "IncompatibleDataset", msg)
        return False
    if report.cycle:
        msg = report.cycle_message()
        writer.set(DEPENDENCIES_READY, "False", "InvalidSpec", msg)
        writer.set(main, "False", "InvalidSpec", msg)
        return False
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


def recorded_as(entry: dict[str, Any], now: ResolvedInput) -> bool:
    """Whether a lineage entry names the artifact `now` resolves to.

    By digest when both sides have one, else by URI (every run writes its own folder, so a re-run
    producer's URI moves even when it reports no digest)."""
    if now.digest and entry.get("digest"):
        return bool(entry["digest"] == now.digest)
    return bool(entry.get("uri") == now.uri)


def moved_inputs(lineage: list[dict[str, Any]] | None, inputs: dict[str, ResolvedInput]) -> list[str]:
    """Inputs whose producer now offers another artifact than the one `lineage` recorded, one line each.
    Plain-URI inputs have no producer to move."""
    recorded = {(e.get("kind"), e.get("name")): e for e in lineage or [] if isinstance(e, dict)}
    moved: list[str] = []
    for key in sorted(inputs):
        now = inputs[key]
        old = recorded.get((now.kind, now.name))
        if now.kind == "External" or old is None or recorded_as(old, now):
            continue
        if now.digest and old.get("digest"):
            moved.append(f"{now.kind} {now.name} now has {now.digest[:19]} (this result used {old['digest'][:19]})")
        else:
            moved.append(f"{now.kind} {now.name} now at {now.uri} (this result used {old.get('uri')})")
    return moved


# ---------------------------------------------------------------- waking dependents


def _progress(body: dict[str, Any]) -> tuple[Any, ...]:
    """What dependents look at: the generation and the Succeeded/Passed conditions."""
    conds = (body.get("status") or {}).get("conditions")
    out: list[Any] = [body.get("metadata", {}).get("generation")]
    for ctype in (SUCCEEDED, PASSED):
        c = find_condition(conds, ctype) or {}
        out += [c.get("status"), c.get("reason"), c.get("observedGeneration")]
    return tuple(out)


def index_object(key: Key, body: dict[str, Any] | None) -> None:
    """Keep the dependency index (OperatorState.depends_on/dependents) for one object's watch event (`body`
    None: deleted).

    The operator's own index instead of a kopf index: kopf holds every handler of every kind until all its
    indices are filled from the initial lists, waking each waiting object on each change (quadratic in the
    objects present at a restart), and with a worker limit that wait deadlocks. Nothing is lost by filling
    it as events arrive: every object gets a pass when first seen, which reads its producers as they are."""
    state = current()
    old = state.depends_on.pop(key, frozenset())
    new: frozenset[Key] = frozenset()
    if body is not None:
        resource, _err = validate(body)
        if resource is not None:
            new = frozenset((d.kind, d.namespace, d.name) for d in dependencies(resource))
    for gone in old - new:
        users = state.dependents.get(gone)
        if users is not None:
            users.discard(key)
            if not users:
                del state.dependents[gone]
    for dep in new - old:
        state.dependents.setdefault(dep, set()).add(key)
    if new:
        state.depends_on[key] = new


def _spec_view(body: dict[str, Any]) -> tuple[Any, ...]:
    """What a pass of the object itself depends on besides status: generation, labels, annotations."""
    meta = body.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith("kopf.zalando.org/")}
    return meta.get("generation"), meta.get("labels") or {}, annotations


async def on_object_event(body_in: Any, event_type: str | None, main: str, memo: Any = None) -> None:
    """Watch event of a Kubeforge object: metrics, cache and dependency index; queue a pass of the object
    when it is new to this operator or its spec/labels/annotations moved (not for its own status writes),
    and queue its dependents when its outcome moved."""
    if memo is not None:
        bind_from(memo)
    workers.ensure_started()
    body = plain(body_in)
    track(body, event_type, main)
    key = key_of(body)
    kind, ns, name = key
    jobwatch.ensure(ns)
    # Compared with what the watch last showed, not with the cache: our own status write is cached
    # before its watch event arrives, and that event is exactly the news dependents wait for.
    state = current()
    watched, seen_spec = state.watched, state.seen_spec
    before = watched.get(key)
    index_object(key, None if event_type == "DELETED" else body)
    if event_type == "DELETED":
        forget(kind, ns, name)
        watched.pop(key, None)
        seen_spec.pop(key, None)
        state.last_pass.pop(key, None)
        state.parsed.pop(key, None)
        changed = True
    else:
        remember(body)
        watched[key] = _progress(body)
        changed = event_type == "ADDED" or (before is not None and before != watched[key])
        spec = _spec_view(body)
        if seen_spec.get(key) != spec:
            seen_spec[key] = spec
            wake(kind, ns, name)
    if not changed:
        return
    for dep in sorted(state.dependents.get(key, ())):
        wake(*dep)
