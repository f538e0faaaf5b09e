"""Per-object state of local runs, in the same status model the operator writes on the cluster.

Layout under the workdir (default `./.kubeforge/`):

    artifacts/<namespace>/<kind>/<name>/       stage output (result.json, progress.json, checkpoints/)
    resources/<namespace>/<kind>/<name>/state.json   status, run digest, events
    resources/<namespace>/<kind>/<name>/config.yaml  the StageConfig the stage ran with
    resources/<namespace>/<kind>/<name>/stage.log    the stage's stdout and stderr
    resources/<namespace>/<kind>/<name>/progress.jsonl  progress samples (for loss curves)
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, Field

from ..api.v1alpha1 import KINDS
from ..api.v1alpha1.base import KubeModel
from ..api.v1alpha1.status import Condition, ConditionStatus, now_rfc3339
from ..manifests import WORKDIR_MARKER
from .graph import Key

DEFAULT_WORKDIR = ".kubeforge"
MAX_EVENTS = 200


class Event(KubeModel):
    """A Kubernetes-style event: what happened to an object, and when."""

    time: str = Field(description="RFC 3339 timestamp.")
    type: str = Field(default="Normal", description="Normal or Warning.")
    reason: str = Field(description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")


class ResourceState(KubeModel):
    """What the local runner knows about one object."""

    kind: str
    name: str
    namespace: str = "default"
    source: str | None = Field(default=None, description="Manifest file the object came from.")
    depends_on: list[str] = Field(default_factory=list, description="`Kind/name` of referenced objects.")
    main_metric: str | None = Field(default=None, description="Metric `kubeforge get` shows (Evaluations).")
    generation: int = Field(default=1, description="Bumped whenever the run digest changes.")
    run_digest: str | None = Field(default=None, description="Digest the last run was for (skip key).")
    spec_digest: str | None = Field(
        default=None, description="The same without the inputs: tells a moved input from a changed spec."
    )
    created: str = Field(default_factory=now_rfc3339)
    pid: int | None = Field(default=None, description="Stage process while running.")
    status: dict[str, Any] = Field(default_factory=dict, description="Status, camelCase, as on the cluster.")
    events: list[Event] = Field(default_factory=list)

    @property
    def key(self) -> Key:
        """Identity of the object."""
        return (self.kind, self.namespace, self.name)

    def condition(self, type_: str) -> Condition | None:
        """The condition of this type, if set."""
        for c in self.status.get("conditions") or []:
            if c.get("type") == type_:
                return Condition.model_validate(c)
        return None

    def is_true(self, type_: str) -> bool:
        """Whether condition `type_` has status True."""
        c = self.condition(type_)
        return c is not None and c.status == ConditionStatus.TRUE

    def set_condition(self, type_: str, status: str | ConditionStatus, reason: str, message: str = "") -> None:
        """Set a condition; lastTransitionTime only moves when the status changes (API convention)."""
        status = ConditionStatus(status)
        conds: list[dict[str, Any]] = list(self.status.get("conditions") or [])
        old = next((c for c in conds if c.get("type") == type_), None)
        when = now_rfc3339()
        if old is not None and old.get("status") == status.value:
            when = old.get("lastTransitionTime") or when
        new = Condition(
            type=type_, status=status, reason=reason, message=message,
            observed_generation=self.generation, last_transition_time=when,
        ).to_wire()
        conds = [c for c in conds if c.get("type") != type_] + [new]
        self.status["conditions"] = conds
        self.status["observedGeneration"] = self.generation

    def event(self, reason: str, message: str = "", warning: bool = False) -> None:
        """Record an event (kept to the newest MAX_EVENTS)."""
        self.events.append(
            Event(time=precise_now(), type="Warning" if warning else "Normal", reason=reason, message=message)
        )
        self.events = self.events[-MAX_EVENTS:]

    def events_with(self, reason: str) -> list[Event]:
        """Events of one reason, oldest first."""
        return [e for e in self.events if e.reason == reason]


def precise_now() -> str:
    """RFC 3339 with milliseconds: events of a fast run stay ordered."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def status_model(kind: str) -> type[BaseModel]:
    """The kind's status model (e.g. DatasetStatus), taken from the API classes."""
    annotation = KINDS[kind].model_fields["status"].annotation
    for arg in get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    raise TypeError(f"{kind}: no status model")


class StateStore:
    """Reads and writes the runner's files under one workdir."""

    def __init__(self, workdir: str | Path = DEFAULT_WORKDIR) -> None:
        self.root = Path(workdir).resolve()

    @property
    def store_root(self) -> str:
        """Artifact store root handed to build_stage_config."""
        return f"file://{self.root / 'artifacts'}"

    def dir(self, key: Key) -> Path:
        """Directory of one object's state files."""
        kind, ns, name = key
        return self.root / "resources" / ns / kind.lower() / name

    def state_path(self, key: Key) -> Path:
        """state.json of one object."""
        return self.dir(key) / "state.json"

    def config_path(self, key: Key) -> Path:
        """config.yaml the stage runs with."""
        return self.dir(key) / "config.yaml"

    def log_path(self, key: Key) -> Path:
        """stage.log of one object."""
        return self.dir(key) / "stage.log"

    def history_path(self, key: Key) -> Path:
        """Progress samples taken while the stage ran."""
        return self.dir(key) / "progress.jsonl"

    def load(self, key: Key) -> ResourceState | None:
        """Saved state, or None when the object never ran here."""
        path = self.state_path(key)
        if not path.exists():
            return None
        return ResourceState.model_validate_json(path.read_text())

    def load_or_new(self, key: Key, source: str | None = None) -> ResourceState:
        """Saved state, or a fresh one."""
        state = self.load(key)
        if state is None:
            kind, ns, name = key
            state = ResourceState(kind=kind, name=name, namespace=ns, source=source)
        if source:
            state.source = source
        return state

    def save(self, state: ResourceState) -> None:
        """Validate the status against the kind's model, then write atomically."""
        status_model(state.kind).model_validate(state.status)
        path = self.state_path(state.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        (self.root / WORKDIR_MARKER).touch()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state.to_wire(), indent=2, sort_keys=True))
        os.replace(tmp, path)

    def all(self) -> list[ResourceState]:
        """Every saved state (for `kubeforge get`)."""
        base = self.root / "resources"
        if not base.exists():
            return []
        out = [ResourceState.model_validate_json(p.read_text()) for p in sorted(base.glob("*/*/*/state.json"))]
        kind_rank = {k: i for i, k in enumerate(KINDS)}
        return sorted(out, key=lambda s: (kind_rank.get(s.kind, 99), s.created, s.name))

    def find(self, ref: str) -> ResourceState:
        """State of `Kind/name` (or `Kind/namespace/name`)."""
        from .graph import parse_ref

        kind, ns, name = parse_ref(ref)
        hits = [s for s in self.all() if s.kind == kind and s.name == name and (not ns or s.namespace == ns)]
        if not hits:
            raise KeyError(f"{ref}: not found in {self.root} (run `kubeforge run -f ...` first, or pass --workdir)")
        return hits[0]


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id still runs (a SIGKILLed runner leaves `pid` behind)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its new parent) is not running
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
