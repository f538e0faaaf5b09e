"""Thin async access to the API server for children and dependencies.

The sync `kubernetes` client runs in worker threads (`asyncio.to_thread`), so the kopf event loop never
blocks. Requests are built generically from apiVersion/kind, which keeps one code path for every child
kind: create (409 = already there), server-side apply, get, list, delete.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any
from urllib.parse import urlencode

from kubernetes import client, config

from ..api.v1alpha1 import GROUP, KINDS, VERSION

FIELD_MANAGER = "kubeforge-operator"
PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Pod": "pods",
    "Event": "events",
    "Job": "jobs",
    "Namespace": "namespaces",
    "Deployment": "deployments",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
    **{kind: model.PLURAL for kind, model in KINDS.items()},
}

# Threads that run blocking API calls (the event loop's default executor, set at startup) and the size of
# the shared connection pool: more connections than threads, so a thread never waits for (or discards) one.
API_THREADS = 32
CONNECTION_POOL_SIZE = 2 * API_THREADS
# Seconds one request may take (connect + read); a hung API server fails the pass, which is retried.
REQUEST_TIMEOUT = 10.0

_lock = threading.Lock()
_client: client.ApiClient | None = None


class KubeError(RuntimeError):
    """A request failed; `status` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def is_rejection(exc: KubeError) -> bool:
    """The API server refused the object itself (400 bad request, 403 forbidden, 422 invalid): resending the
    same object cannot succeed. A 403 for an exceeded ResourceQuota is not one: it clears as quota frees up."""
    return exc.status in (400, 403, 422) and "exceeded quota" not in exc.message


def api_client() -> client.ApiClient:
    """One shared client: in-cluster config when inside a pod, else KUBECONFIG / ~/.kube/config.

    urllib3 sizes the pool when the ApiClient is built, so the size goes into the Configuration first.
    """
    global _client
    with _lock:
        if _client is None:
            cfg = type.__call__(client.Configuration)  # a fresh one, not a copy of the process default
            try:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            cfg.connection_pool_maxsize = CONNECTION_POOL_SIZE
            cfg.retries = False  # no hidden retries inside a pass: a failed request fails the pass, the queue retries
            _client = client.ApiClient(configuration=cfg)
        return _client


def reset_client() -> None:
    """Forget the client (tests point the operator at another cluster)."""
    global _client
    with _lock:
        _client = None


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """REST path of a collection or object."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{PLURALS[kind]}"
    return f"{base}/{name}" if name else base


def _request(
    method: str,
    url_path: str,
    body: Any = None,
    query: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> Any:
    api = api_client()
    url = api.configuration.host + url_path + (f"?{urlencode(query)}" if query else "")
    headers = {"Accept": "application/json", "Content-Type": content_type}
    api.update_params_for_auth(headers, None, ["BearerToken"], url_path, method, body)
    resp = api.call_api(method, url, header_params=headers, body=body, _request_timeout=REQUEST_TIMEOUT)
    data = resp.read()  # type: ignore[no-untyped-call]
    if resp.status >= 300:
        try:
            message = json.loads(data).get("message", data)
        except (ValueError, AttributeError):
            message = data
        raise KubeError(resp.status, str(message))
    return json.loads(data) if data else None


def _get(api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    try:
        return dict(_request("GET", path(api_version, kind, namespace, name)))
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise


async def get(api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    return await asyncio.to_thread(_get, api_version, kind, namespace, name)


def get_path(url_path: str) -> Any:
    """GET of a raw API path (discovery, /version), blocking: for threads outside the event loop (readiness)."""
    return _request("GET", url_path)


async def get_kubeforge(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """A Kubeforge object by kind."""
    return await get(f"{GROUP}/{VERSION}", kind, namespace, name)


def _create(manifest: dict[str, Any]) -> bool:
    meta = manifest["metadata"]
    try:
        _request("POST", path(manifest["apiVersion"], manifest["kind"], meta.get("namespace")), manifest)
        return True
    except KubeError as exc:
        if exc.status == 409:
            return False
        raise


async def create(manifest: dict[str, Any]) -> bool:
    """Create; False when it already existed (deterministic names make this idempotent)."""
    return await asyncio.to_thread(_create, manifest)


def _apply(manifest: dict[str, Any]) -> dict[str, Any]:
    meta = manifest["metadata"]
    url = path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
    out = _request(
        "PATCH",
        url,
        json.dumps(manifest),
        {"fieldManager": FIELD_MANAGER, "force": "true"},
        "application/apply-patch+yaml",
    )
    return dict(out)


async def apply(manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply (create or converge), owning exactly the fields the builder rendered."""
    return await asyncio.to_thread(_apply, manifest)


def _patch_status(api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    url = path(api_version, kind, namespace, name) + "/status"
    return dict(_request("PATCH", url, patch, content_type="application/merge-patch+json"))


async def patch_status(
    api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
) -> dict[str, Any]:
    """JSON merge patch of the status subresource; returns the object as stored."""
    return await asyncio.to_thread(_patch_status, api_version, kind, namespace, name, patch)


def _delete(api_version: str, kind: str, namespace: str, name: str) -> bool:
    try:
        _request(
            "DELETE", path(api_version, kind, namespace, name), {"propagationPolicy": "Background"}
        )
        return True
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise


async def delete(api_version: str, kind: str, namespace: str, name: str) -> bool:
    """Delete with background propagation; False when already gone."""
    return await asyncio.to_thread(_delete, api_version, kind, namespace, name)


def _list(api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = _request("GET", path(api_version, kind, namespace), query={"labelSelector": selector})
    return list(out.get("items") or [])


async def list_objects(api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    """Objects matching a label selector."""
    return await asyncio.to_thread(_list, api_version, kind, namespace, selector)
