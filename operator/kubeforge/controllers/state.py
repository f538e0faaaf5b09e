"""Everything one operator run holds, in one object kept in kopf's memo (no module globals).

kopf gives each handler the operator's `memo`; the startup handler puts an `OperatorState` there and
every handler binds it to its task's context (`bind_from`) before it touches the cache or the queue. The
work queue's consumers and the resync loop are started from a bound handler, so they inherit it. An
operator started again in the same process (tests, `kopf.testing.KopfRunner`) therefore starts from a
fresh cache, queue and HTTP session instead of trusting what an earlier run left in module variables.
`settings()` and `queue()` read the bound state; `configure()` binds a fresh one (tests).
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from ..api.v1alpha1 import KubeResource
from ..settings import OperatorSettings
from .kube import Client
from .workqueue import WorkQueue

Key = tuple[str, str, str]  # (kind, namespace, name)
MEMO_FIELD = "kubeforge"


@dataclass(eq=False)
class OperatorState:
    """One operator run: settings, API client, watch cache, work queue and the bookkeeping of passes."""

    settings: OperatorSettings
    api: Client
    # Latest body seen per (kind, namespace, name) for Kubeforge objects and managed Jobs/Deployments: fed
    # by the watch streams and by our own status writes, read instead of GETs. A stale entry is harmless:
    # the watch event that makes it fresh also wakes whoever depends on it.
    bodies: dict[Key, dict[str, Any]] = field(default_factory=dict)
    queue: WorkQueue[Key] = field(default_factory=WorkQueue)
    # Each object's parse (validation.validate) with the generation, labels and annotations it was made from.
    parsed: dict[Key, tuple[tuple[Any, ...], tuple[KubeResource | None, str]]] = field(default_factory=dict)
    # Generation + Succeeded/Passed of each object as its last watch event showed them.
    watched: dict[Key, tuple[Any, ...]] = field(default_factory=dict)
    # Generation, labels and annotations each object had at its last watch event: a change queues a pass.
    seen_spec: dict[Key, tuple[Any, ...]] = field(default_factory=dict)
    # When each object's last pass ended (time.monotonic()): the resync loop passes objects nobody woke lately.
    last_pass: dict[Key, float] = field(default_factory=dict)
    # Serving children: (kind, namespace, name) -> (hash of what was last applied, when).
    applied: dict[Key, tuple[str, float]] = field(default_factory=dict)
    # ModelDeployment UID -> the generation whose optional serving children were last pruned.
    pruned: dict[str, int] = field(default_factory=dict)
    # The dependency index, both ways, kept from watch events (deps.index_object): object -> what its spec
    # references, and object -> the objects whose spec references it (woken when its outcome moves).
    depends_on: dict[Key, frozenset[Key]] = field(default_factory=dict)
    dependents: dict[Key, set[Key]] = field(default_factory=dict)
    # Running Job (namespace, name) -> (its rank-0 pod's IP once known, when to read progress next).
    scrapes: dict[tuple[str, str], tuple[str | None, float]] = field(default_factory=dict)
    # The consumers and the resync loop (workers.py).
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Namespace -> the task watching its managed Jobs (jobwatch.py).
    job_watches: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    stopped: bool = False

    @classmethod
    def create(cls, settings: OperatorSettings | None = None, api: Client | None = None) -> OperatorState:
        """A fresh state from the environment's settings and credentials (unless given)."""
        return cls(settings=settings or OperatorSettings.from_env(), api=api or Client.from_environment())

    async def close(self) -> None:
        """Release what outlives a run: the queue's timers and the HTTP session."""
        self.queue.close()
        await self.api.close()


_CURRENT: ContextVar[OperatorState] = ContextVar("kubeforge_operator_state")


def current() -> OperatorState:
    """The state bound to this task's context."""
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError(
            "no operator state bound: kopf handlers call state.bind_from(memo); tests call state.configure()"
        ) from None


def bind(state: OperatorState) -> Token[OperatorState]:
    """Make `state` current for this context and the tasks it starts."""
    return _CURRENT.set(state)


def bind_from(memo: Any) -> OperatorState:
    """Bind the state the startup handler put into kopf's memo (a handler's first step)."""
    state: OperatorState = getattr(memo, MEMO_FIELD)
    if _CURRENT.get(None) is not state:
        _CURRENT.set(state)
    return state


def configure(new: OperatorSettings | None = None, api: Client | None = None) -> OperatorSettings:
    """Start a fresh operator state (settings from the environment unless given) and bind it to this context:
    what tests call in place of kopf's startup handler."""
    state = OperatorState.create(new, api)
    bind(state)
    return state.settings


def settings() -> OperatorSettings:
    """This operator run's settings."""
    return current().settings


def queue() -> WorkQueue[Key]:
    """This operator run's work queue."""
    return current().queue
