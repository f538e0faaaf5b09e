"""The managed Jobs' watch, outside kopf: a lean list+watch per namespace that caches each Job and wakes its
owner when the Job finished or vanished.

Jobs bring three of every five watch events of a TrainingJob (created, started, finished), and the operator
only reads them. Through kopf each event also paid for kopf's per-object worker, handler invocation and
patch bookkeeping: more CPU than the pass that created the Job. Here an event costs its JSON decode and a
dict update. As client-go's reflector: a paged LIST (bounded memory at restart), then a WATCH from the
list's resourceVersion with bookmarks, resumed from the last revision seen when the stream ends, and a
fresh LIST when the API server answers 410 Gone (Jobs deleted meanwhile are noticed by their absence).

A namespace is watched from the first Kubeforge object seen in it (`ensure`), so the watch needs exactly
the RBAC the operator already has where it works, and no namespace list.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from ..builders.naming import MANAGED_BY
from . import kube
from .passes import wake_owner
from .state import current

SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
PAGE_SIZE = 250
# Seconds the API server keeps one watch open (client-go picks 5-10 min); no byte for longer than this
# plus a margin means the connection died silently.
WATCH_SECONDS = 300
RETRY_MAX_S = 30.0
log = logging.getLogger("kubeforge.controllers")


class Gone(Exception):
    """The revision to resume from is compacted away (410): list again."""


def ensure(namespace: str) -> None:
    """Watch this namespace's managed Jobs unless already watching (called for every Kubeforge object event)."""
    state = current()
    task = state.job_watches.get(namespace)
    if state.stopped or (task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()):
        return
    state.job_watches[namespace] = asyncio.get_running_loop().create_task(
        watch(namespace), name=f"kubeforge-jobs-{namespace}"
    )


def observe(job: dict[str, Any], event_type: str | None) -> None:
    """One Job as a watch event or a listing showed it: cache it, wake its owner when it finished or went."""
    wake_owner({"apiVersion": "batch/v1", "kind": "Job", **job}, event_type)


async def relist(namespace: str) -> str:
    """Every managed Job of the namespace, in pages; Jobs cached but no longer listed were deleted meanwhile.
    Returns the revision to watch from."""
    url = kube.path("batch/v1", "Job", namespace)
    query = {"labelSelector": SELECTOR, "limit": str(PAGE_SIZE)}
    listed: set[str] = set()
    while True:
        page = await kube.api().request("GET", url, query=query)
        for job in page.get("items") or []:
            listed.add(str(job["metadata"]["name"]))
            observe(job, None)
        meta = page.get("metadata") or {}
        if not meta.get("continue"):
            break
        query["continue"] = str(meta["continue"])
    gone = [body for (kind, ns, name), body in current().bodies.items()
            if kind == "Job" and ns == namespace and name not in listed]
    for body in gone:
        observe(body, "DELETED")
    return str(meta.get("resourceVersion") or "")


async def follow(namespace: str, revision: str) -> str:
    """Watch from `revision` until the API server ends the stream; returns the last revision seen."""
    query = {"watch": "1", "labelSelector": SELECTOR, "resourceVersion": revision,
             "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}
    url = kube.path("batch/v1", "Job", namespace)
    async for event in kube.api().watch(url, query, read_timeout=WATCH_SECONDS + 30):
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(obj.get("message", ""))
            raise kube.KubeError(int(obj.get("code") or 500), str(obj.get("message", "")))
        revision = str((obj.get("metadata") or {}).get("resourceVersion") or revision)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            observe(obj, kind)
    return revision


async def watch(namespace: str) -> None:
    """Forever: list, then watch and resume; failures wait out an exponential backoff (up to RETRY_MAX_S)."""
    revision, delay = "", 0.0
    while True:
        try:
            if not revision:
                revision = await relist(namespace)
            revision = await follow(namespace, revision)
            delay = 0.0
        except Gone:
            revision = ""
        except (kube.KubeError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            if isinstance(exc, kube.KubeError) and exc.status == 410:
                revision = ""
            delay = min(RETRY_MAX_S, max(0.5, delay * 2))
            log.warning(f"watch of Jobs in {namespace} failed ({type(exc).__name__}: {exc}); again in {delay:.3g}s")
            await asyncio.sleep(delay)
        except Exception:  # a defect must not end the watch for good: the next try starts from a fresh list
            revision, delay = "", RETRY_MAX_S
            log.exception(f"watch of Jobs in {namespace} failed; listing again in {delay:.3g}s")
            await asyncio.sleep(delay)
