"""The operator's readiness endpoint (kubeforge.health): not ready before kopf's startup handlers finished or
while the API server check fails, ready otherwise; distinct from kopf's liveness endpoint."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest
from kubeforge import health


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def test_readiness_follows_startup_and_the_api_check() -> None:
    started = threading.Event()
    failure: list[str] = []
    calls: list[int] = []

    def check() -> None:
        calls.append(1)
        if failure:
            raise RuntimeError(failure[0])

    readiness = health.Readiness(started, check, ttl=0)
    server = health.ReadinessServer("http://127.0.0.1:0/readyz", readiness).start()
    url = f"http://127.0.0.1:{server.port}/readyz"
    try:
        code, text = _get(url)
        assert code == 503 and "startup" in text
        assert not calls, "no API check before startup finished"
        started.set()
        assert _get(url) == (200, "ok\n")
        failure.append("HTTP 404: the server could not find the requested resource")
        code, text = _get(url)
        assert code == 503 and "API server check failed: HTTP 404" in text
        failure.clear()
        assert _get(url) == (200, "ok\n")
        assert _get(f"http://127.0.0.1:{server.port}/healthz")[0] == 404
    finally:
        server.stop()


def test_api_check_result_is_reused_within_the_ttl() -> None:
    started = threading.Event()
    started.set()
    calls: list[int] = []
    readiness = health.Readiness(started, lambda: calls.append(1), ttl=60)
    assert readiness.status() == (True, "ok")
    assert readiness.status() == (True, "ok")
    assert len(calls) == 1


def test_api_check_asks_for_the_kubeforge_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubeforge.controllers import kube

    paths: list[str] = []
    monkeypatch.setattr(kube, "get_path", paths.append)
    health.api_check()
    assert paths == ["/apis/kubeforge.io/v1alpha1"]


@pytest.mark.parametrize("url", ["https://0.0.0.0:8082/readyz", "tcp://0.0.0.0:8082"])
def test_bad_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="http://HOST:PORT/PATH"):
        health.ReadinessServer(url, health.Readiness(threading.Event()))
