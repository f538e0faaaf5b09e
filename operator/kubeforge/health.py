"""The operator's readiness endpoint, apart from kopf's liveness endpoint.

* Liveness (`--liveness`, served by kopf, `/healthz`): the operator's event loop answers. Failing it
  restarts the pod.
* Readiness (`--readiness`, served here, `/readyz`): kopf has finished its startup handlers (its
  `ready_flag`, after which the watches start) and the API server answers the operator's credentials with
  the Kubeforge API group: reachable, token valid, CRDs installed. Failing it marks the pod NotReady (out of
  the metrics Service, visible in `kubectl rollout status`) without a restart, which would not bring the API
  server or the CRDs back.

The server runs in its own threads, so a probe never waits for the event loop (that is liveness's job).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

DEFAULT_URL = "http://0.0.0.0:8082/readyz"
# A probe reuses the last API check for this long (probes of several kubelets and people share it).
CHECK_TTL_S = 5.0

Check = Callable[[], None]


def api_check() -> None:
    """Raise unless the API server serves the Kubeforge API group to the operator's credentials."""
    from .api.v1alpha1 import GROUP, VERSION
    from .controllers import kube

    kube.get_path(f"/apis/{GROUP}/{VERSION}")


class Readiness:
    """Ready: `started` is set and the last API check, at most `ttl` seconds old, passed."""

    def __init__(self, started: threading.Event, check: Check = api_check, ttl: float = CHECK_TTL_S) -> None:
        self.started = started
        self._check = check
        self._ttl = ttl
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._error: str | None = None

    def status(self) -> tuple[bool, str]:
        """(ready, reason)."""
        if not self.started.is_set():
            return False, "starting: the startup handlers have not finished"
        with self._lock:
            now = time.monotonic()
            if self._checked_at is None or now - self._checked_at >= self._ttl:
                try:
                    self._check()
                    self._error = None
                except Exception as exc:  # any failure means "not ready"; the message says which
                    self._error = f"API server check failed: {exc}"
                self._checked_at = time.monotonic()
            return self._error is None, self._error or "ok"


class ReadinessServer:
    """HTTP GET `path` → 200 `ok` when ready, else 503 with the reason; anything else → 404."""

    def __init__(self, url: str, readiness: Readiness) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.path:
            raise ValueError(f"readiness endpoint must be http://HOST:PORT/PATH, got {url!r}")
        path = parts.path

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != path:
                    code, text = 404, "not found"
                else:
                    ready, text = readiness.status()
                    code = 200 if ready else 503
                body = (text + "\n").encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Probes every few seconds would flood the operator's log."""

        self._server = ThreadingHTTPServer((parts.hostname or "0.0.0.0", parts.port or 80), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="readiness", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> ReadinessServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(url: str, started: threading.Event, check: Check = api_check) -> ReadinessServer:
    """Start the readiness endpoint at `url`; ready once `started` is set (kopf.run's `ready_flag`)."""
    return ReadinessServer(url, Readiness(started, check)).start()
