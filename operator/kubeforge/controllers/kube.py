"""Thin async access to the API server for children and dependencies.

One `aiohttp` session per operator run (its keep-alive pool shared by every pass; kopf itself talks to the
API server through aiohttp too), so no request occupies a thread and the pool is sized where it is made.
The `kubernetes` package only loads the credentials (in-cluster service account or kubeconfig, including
its token refresh). Requests are built generically from apiVersion/kind, which keeps one code path for every
child kind: create (409 = already there), server-side apply, get, list, delete.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any, cast
from urllib.parse import urlencode

import aiohttp
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

# Connections the session keeps open to the API server at most (requests beyond wait for one).
CONNECTION_LIMIT = 64
# Seconds one request may take (connect + read); a hung API server fails the pass, which is retried.
REQUEST_TIMEOUT = 10.0


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


def load_configuration() -> client.Configuration:
    """The operator's credentials: in-cluster config when inside a pod, else KUBECONFIG / ~/.kube/config."""
    cfg = type.__call__(client.Configuration)  # a fresh one, not a copy of the process default
    try:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    loaded: client.Configuration = cfg
    return loaded


def _ssl_context(cfg: client.Configuration) -> ssl.SSLContext | bool:
    if not cfg.verify_ssl:
        return False
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


class Client:
    """The API server's address, the operator's credentials and one keep-alive connection pool.

    The session is opened by the first request, in the event loop that uses it (aiohttp binds a session to
    its loop), and closed by `close` (kopf cleanup). No hidden retries: a failed request fails the pass and
    the work queue retries it with backoff.
    """

    def __init__(self, cfg: client.Configuration | None = None) -> None:
        self._cfg = cfg
        self._ssl: ssl.SSLContext | bool | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def configuration(self) -> client.Configuration:
        """The credentials, loaded on first use (so a state can exist where no cluster is configured)."""
        if self._cfg is None:
            self._cfg = load_configuration()
        return self._cfg

    @property
    def host(self) -> str:
        return str(self.configuration.host).rstrip("/")

    @classmethod
    def from_environment(cls) -> Client:
        return cls()

    def session(self) -> aiohttp.ClientSession:
        """The run's session (also for plain-HTTP reads of pods' metrics: progress.py)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=CONNECTION_LIMIT)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
            )
        return self._session

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        for auth in self.configuration.auth_settings().values():  # refreshes an expiring token first
            setting = cast(dict[str, Any], auth)
            if setting.get("in") == "header" and setting.get("value"):
                headers[str(setting["key"])] = str(setting["value"])
        return headers

    async def request(
        self,
        method: str,
        url_path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        answer: bool = True,
    ) -> Any:
        """One request; the decoded JSON answer (None when `answer` is False: a create's echo of the object is
        not read), or KubeError with the API server's message."""
        data = body if body is None or isinstance(body, str) else json.dumps(body)
        if self._ssl is None:  # the API server's CA and the client certificate, read once
            self._ssl = _ssl_context(self.configuration) if self.host.startswith("https") else False
        server_name = getattr(self.configuration, "tls_server_name", None)
        kwargs: dict[str, Any] = {"ssl": self._ssl}
        if server_name:
            kwargs["server_hostname"] = server_name
        async with self.session().request(
            method, self.host + url_path + (f"?{urlencode(query)}" if query else ""),
            data=data, headers=self._headers(content_type), **kwargs,
        ) as resp:
            text = await resp.read()
            if resp.status >= 300:
                try:
                    message = json.loads(text).get("message", text)
                except (ValueError, AttributeError):
                    message = text
                raise KubeError(resp.status, message.decode(errors="replace") if isinstance(message, bytes)
                                else str(message))
            return json.loads(text) if text and answer else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def api() -> Client:
    """This operator run's client (kept in its OperatorState)."""
    from .state import current  # state holds a Client: imported here to keep the modules acyclic at import

    return current().api


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """REST path of a collection or object."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{PLURALS[kind]}"
    return f"{base}/{name}" if name else base


async def get(api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        return dict(await api().request("GET", path(api_version, kind, namespace, name)))
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise


def get_path(url_path: str) -> Any:
    """GET of a raw API path (discovery, /version), blocking, with a short-lived session of its own: for
    threads outside the event loop (readiness), which must not depend on the loop they check."""

    async def once() -> Any:
        probe = Client.from_environment()
        try:
            return await probe.request("GET", url_path)
        finally:
            await probe.close()

    return asyncio.run(once())


async def get_kubeforge(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """A Kubeforge object by kind."""
    return await get(f"{GROUP}/{VERSION}", kind, namespace, name)


async def create(manifest: dict[str, Any]) -> bool:
    """Create; False when it already existed (deterministic names make this idempotent)."""
    meta = manifest["metadata"]
    try:
        url = path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        await api().request("POST", url, manifest, answer=False)
        return True
    except KubeError as exc:
        if exc.status == 409:
            return False
        raise


async def apply(manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply (create or converge), owning exactly the fields the builder rendered."""
    meta = manifest["metadata"]
    url = path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
    out = await api().request(
        "PATCH", url, json.dumps(manifest), {"fieldManager": FIELD_MANAGER, "force": "true"},
        "application/apply-patch+yaml",
    )
    return dict(out)


async def patch_status(
    api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
) -> dict[str, Any]:
    """JSON merge patch of the status subresource; returns the object as stored."""
    url = path(api_version, kind, namespace, name) + "/status"
    return dict(await api().request("PATCH", url, patch, content_type="application/merge-patch+json"))


async def delete(api_version: str, kind: str, namespace: str, name: str) -> bool:
    """Delete with background propagation; False when already gone."""
    try:
        await api().request("DELETE", path(api_version, kind, namespace, name), {"propagationPolicy": "Background"})
        return True
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise


async def list_objects(api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    """Objects matching a label selector."""
    out = await api().request("GET", path(api_version, kind, namespace), query={"labelSelector": selector})
    return list(out.get("items") or [])
