"""Thin async access to the API server for children and dependencies.

One `aiohttp` session per operator run (its keep-alive pool shared by every pass; kopf itself talks to the
API server through aiohttp too), so no request occupies a thread and the pool is sized where it is made.
The credentials come from credentials.py (the pod's service account or a kubeconfig, re-read every minute),
the source kopf's watches log in with too. Requests are built generically from apiVersion/kind, which
keeps one code path for every child kind: create (409 = already there), server-side apply, get, list, delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import kopf

from ..api.v1alpha1 import GROUP, KINDS, VERSION
from . import credentials

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


class Client:
    """The API server's address, the operator's credentials and one keep-alive connection pool.

    The session is opened by the first request, in the event loop that uses it (aiohttp binds a session to
    its loop), and closed by `close` (kopf cleanup). No hidden retries: a failed request fails the pass and
    the work queue retries it with backoff.
    """

    def __init__(self, info: kopf.ConnectionInfo | None = None) -> None:
        self._info = info
        self._fixed = info is not None  # given (tests): never re-read
        self._loaded = 0.0
        self._ssl: ssl.SSLContext | bool = False
        self._session: aiohttp.ClientSession | None = None
        self._streams: aiohttp.ClientSession | None = None  # watch streams (watch)
        self._lock: asyncio.Lock | None = None

    def _stale(self) -> bool:
        age = time.monotonic() - self._loaded
        return not self._loaded or (not self._fixed and age >= credentials.CREDENTIALS_TTL_S)

    async def login(self) -> kopf.ConnectionInfo:
        """The credentials (and their SSL context), loaded on first use (so a state can exist where no cluster
        is configured) and again after CREDENTIALS_TTL_S (a rotated service-account token), in a thread: a
        kubeconfig's login plugin is a subprocess."""
        if self._stale():
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._stale():
                    info = self._info if self._fixed and self._info else await asyncio.to_thread(credentials.load)
                    https = str(info.server).startswith("https")
                    self._ssl = await asyncio.to_thread(info.as_ssl_context) if https else False
                    self._info, self._loaded = info, time.monotonic()
        assert self._info is not None
        return self._info

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
        info = await self.login()
        headers = {"Accept": "application/json", "Content-Type": content_type, **info.as_http_headers()}
        async with self.session().request(
            method, str(info.server).rstrip("/") + url_path + (f"?{urlencode(query)}" if query else ""),
            data=data, headers=headers, ssl=self._ssl,
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

    async def watch(self, url_path: str, query: dict[str, str], read_timeout: float) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request, decoded line by line, until the API server ends the stream.

        Streams use a session of their own without a connection limit: each holds its connection for minutes,
        and one per namespace must not starve the requests of passes. Lines are split here rather than by
        aiohttp's readline, whose 64 KiB line limit is below a Job's (its pod template carries the config)."""
        info = await self.login()
        headers = {"Accept": "application/json", **info.as_http_headers()}
        if self._streams is None or self._streams.closed:
            self._streams = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT, sock_read=read_timeout)
        url = str(info.server).rstrip("/") + url_path + f"?{urlencode(query)}"
        async with self._streams.get(url, headers=headers, ssl=self._ssl, timeout=timeout) as resp:
            if resp.status >= 300:
                text = await resp.text()
                with contextlib.suppress(ValueError, AttributeError):
                    text = str(json.loads(text).get("message", text))
                raise KubeError(resp.status, text)
            buf = bytearray()
            async for chunk in resp.content.iter_any():
                start = len(buf)
                buf += chunk
                end = buf.find(b"\n", start)
                while end >= 0:
                    line = bytes(buf[:end])
                    del buf[:end + 1]
                    if line.strip():
                        yield json.loads(line)
                    end = buf.find(b"\n")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._streams is not None:
            await self._streams.close()
            self._streams = None
        self._lock = None  # bound to this loop once contended; a run in a new loop makes its own


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
