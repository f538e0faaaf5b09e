"""What a pass writes into status and how status is read back: the condition vocabulary, `StatusWriter`
(conditions, fields, the one Event per pass), whether an object is `settled`, a Job's state and the
lineage entries of resolved inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import kopf

from ..api.v1alpha1 import conditions
from ..api.v1alpha1.status import now_rfc3339
from ..stage import ResolvedInput

# The condition vocabulary lives in the API package (one for the operator, the runner and Argo CD).
SUCCEEDED, READY, DEPENDENCIES_READY = conditions.SUCCEEDED, conditions.READY, conditions.DEPENDENCIES_READY
JOB_CREATED, PASSED, MODEL_EXPORTED = conditions.JOB_CREATED, conditions.PASSED, conditions.MODEL_EXPORTED
MAIN_CONDITIONS = conditions.MAIN_CONDITIONS
RECOVERABLE = conditions.RECOVERABLE
WARNING_REASONS = conditions.WARNING_REASONS
# Who posts the operator's Events (Event.reportingComponent / source.component) instead of kopf's "kopf".
COMPONENT = "kubeforge-operator"


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


def job_state(job: dict[str, Any]) -> tuple[str, str, str]:
    """('Complete'|'Failed'|'Running', reason, message) from the Job's conditions."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"]), str(cond.get("reason") or cond["type"]), str(cond.get("message") or "")
    return "Running", "Running", ""


def iter_lineage(inputs: dict[str, ResolvedInput]) -> Iterator[dict[str, Any]]:
    """Lineage entries for resolved inputs (sorted by key for stable status)."""
    for key in sorted(inputs):
        yield inputs[key].lineage().to_wire()
