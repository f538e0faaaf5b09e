"""Operator Prometheus metrics (names are a contract: the Grafana dashboards and alerts use them)."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILE_TOTAL = Counter(
    "kubeforge_reconcile_total", "Reconcile passes by kind and outcome.", ["kind", "outcome"]
)
RECONCILE_DURATION = Histogram(
    "kubeforge_reconcile_duration_seconds",
    "Wall time of one reconcile pass.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RESOURCES = Gauge(
    "kubeforge_resources", "Kubeforge objects by kind and main condition status.", ["kind", "condition", "status"]
)
WORKLOAD_DURATION = Histogram(
    "kubeforge_workload_duration_seconds",
    "Seconds from Job start to completion, by kind and outcome (succeeded/failed).",
    ["kind", "outcome"],
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200),
)
DEPENDENCY_WAIT = Counter(
    "kubeforge_dependency_wait_total", "Reconciles that found dependencies not ready yet.", ["kind"]
)
QUEUE_DEPTH = Gauge("kubeforge_workqueue_depth", "Keys waiting in the work queue for a consumer.")
QUEUE_RETRIES = Counter(
    "kubeforge_workqueue_retries_total", "Failed passes re-added to the work queue with backoff.", ["kind"]
)

_server_lock = threading.Lock()
_server_port: int | None = None


def start_server(port: int) -> bool:
    """Serve /metrics on `port` once per process (0 disables); False when it was already serving."""
    global _server_port
    with _server_lock:
        if port == 0 or _server_port is not None:
            return False
        start_http_server(port)
        _server_port = port
        return True


class ResourceTracker:
    """Keeps `kubeforge_resources` equal to the current count of objects per (kind, condition, status)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[tuple[str, str, str], tuple[str, str]] = {}

    def observe(self, kind: str, namespace: str, name: str, condition: str, status: str) -> None:
        """Record the object's current main condition."""
        key = (kind, namespace, name)
        with self._lock:
            old = self._state.get(key)
            if old == (condition, status):
                return
            if old is not None:
                RESOURCES.labels(kind, *old).dec()
            self._state[key] = (condition, status)
            RESOURCES.labels(kind, condition, status).inc()

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """The object was deleted."""
        with self._lock:
            old = self._state.pop((kind, namespace, name), None)
            if old is not None:
                RESOURCES.labels(kind, *old).dec()


TRACKER = ResourceTracker()
