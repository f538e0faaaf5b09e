"""Grafana dashboards shipped by the chart: valid JSON models that query only metrics that exist.

The PromQL itself is parsed by Prometheus in tests/cluster/test_prometheus.py; here the structure
and the metric-name contract with the operator, trainer, Triton and DCGM exporter are checked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "charts" / "kubeforge" / "dashboards"

OPERATOR_METRICS = {
    "kubeforge_reconcile_total", "kubeforge_reconcile_duration_seconds_bucket",
    "kubeforge_reconcile_duration_seconds_sum", "kubeforge_reconcile_duration_seconds_count",
    "kubeforge_resources", "kubeforge_workload_duration_seconds_bucket", "kubeforge_workload_duration_seconds_sum",
    "kubeforge_workload_duration_seconds_count", "kubeforge_dependency_wait_total",
}
TRAINER_METRICS = {
    "kubeforge_train_loss", "kubeforge_train_step", "kubeforge_train_total_steps",
    "kubeforge_train_tokens_per_second", "kubeforge_train_learning_rate",
}
TRITON_METRICS = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_request_duration_us", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
}
DCGM_METRICS = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"}
KNOWN_METRICS = OPERATOR_METRICS | TRAINER_METRICS | TRITON_METRICS | DCGM_METRICS | {"up"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}
PROMQL_WORDS = {
    "sum", "avg", "max", "min", "count", "by", "without", "rate", "increase", "irate", "deriv", "changes",
    "histogram_quantile", "clamp_min", "clamp_max", "and", "or", "unless", "on", "ignoring", "group_left",
    "group_right", "offset", "absent", "le", "bool", "topk", "bottomk", "time", "vector", "scalar",
    "label_values", "max_over_time", "min_over_time", "avg_over_time",
}

# What each dashboard must show (brief: operator health, pipeline, training, serving).
REQUIRED = {
    "operator.json": {"kubeforge_reconcile_total", "kubeforge_reconcile_duration_seconds_bucket"},
    "pipeline.json": {"kubeforge_resources", "kubeforge_workload_duration_seconds_bucket"},
    "training.json": TRAINER_METRICS - {"kubeforge_train_learning_rate"} | DCGM_METRICS,
    "serving.json": {"nv_inference_request_success", "nv_inference_request_duration_us",
                     "nv_inference_queue_duration_us"},
}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in board["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are metric names (not functions, labels or keywords)."""
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    no_labels = re.sub(r"\{[^}]*\}", "{}", no_strings)
    no_by = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", no_labels)
    no_ranges = re.sub(r"\[[^\]]*\]", "[]", no_by)
    names = set(re.findall(r"(?<![\w$])([A-Za-z_:][A-Za-z0-9_:]*)", no_ranges))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d+e\d+|e\d+", n)}


ALL = sorted(DASHBOARDS.glob("*.json"))


def test_the_four_dashboards_exist() -> None:
    assert sorted(p.name for p in ALL) == sorted(REQUIRED)


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_dashboard_structure(path: Path) -> None:
    board = load(path)
    assert board["uid"].startswith("kubeforge-") and len(board["uid"]) <= 40
    assert "kubeforge" in board["tags"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    for p in panels(board):
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{path.name}: panel {p['title']!r} overflows the grid"
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{path.name}: panel {p['title']!r} has no query"
        for t in p["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", t["expr"]))
            unknown = used - variables - GRAFANA_BUILTINS
            assert not unknown, f"{path.name}: {p['title']!r} uses undefined variables {unknown}"
            # Multi-value variables expand to regex alternations: they must be matched with =~.
            for var in used - GRAFANA_BUILTINS:
                assert re.search(rf'=~\s*"[^"]*\${var}', t["expr"]), f"{p['title']!r}: use =~ with ${var}"
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}"
            assert v["query"]["query"].startswith("label_values(")


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_dashboard_metrics_follow_the_contract(path: Path) -> None:
    board = load(path)
    used: set[str] = set()
    for e in exprs(board):
        names = metric_names(e)
        assert names, f"{path.name}: no metric in {e!r}"
        unknown = names - KNOWN_METRICS
        assert not unknown, f"{path.name}: unknown metrics {unknown} in {e!r}"
        used |= names
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            used |= metric_names(v["query"]["query"].removeprefix("label_values"))
    missing = REQUIRED[path.name] - used
    assert not missing, f"{path.name} does not chart {missing}"


def gauges() -> set[str]:
    """Metrics that go up and down: the operator's prometheus_client Gauges, every trainer metric (set per
    step by kubeforge_trainer.runtime), DCGM's readings."""
    from kubeforge import metrics
    from prometheus_client import Gauge

    operator = {m._name for m in vars(metrics).values() if isinstance(m, Gauge)}
    assert "kubeforge_resources" in operator
    return operator | TRAINER_METRICS | DCGM_METRICS


COUNTER_FUNCTIONS = re.compile(r"\b(rate|irate|increase)\(\s*([A-Za-z_:][A-Za-z0-9_:]*)")


def test_no_counter_function_over_a_gauge() -> None:
    """rate()/irate()/increase() read every decrease as a counter reset: over a gauge (a training step that
    restarts from a checkpoint) they spike. A gauge's change per second is deriv()."""
    sources = [(p.name, e) for p in ALL for e in exprs(load(p))]
    rules = (ROOT / "charts" / "kubeforge" / "templates" / "prometheusrule.yaml").read_text()
    sources.append(("prometheusrule.yaml", rules))
    misused = [(name, fn, metric) for name, e in sources for fn, metric in COUNTER_FUNCTIONS.findall(e)
               if metric in gauges()]
    assert not misused, f"use deriv() on gauges: {misused}"
    assert COUNTER_FUNCTIONS.findall("max(rate(kubeforge_train_step[5m]))") == [("rate", "kubeforge_train_step")]


def test_metric_name_extraction() -> None:
    """The extractor is what makes the contract test meaningful: check it on a hard expression."""
    e = ('histogram_quantile(0.95, sum by (kind, le) (rate(kubeforge_reconcile_duration_seconds_bucket'
         '{job=~"$job", kind=~"$kind"}[$__rate_interval]))) / clamp_min(sum(up{job="x"}), 1e-9)')
    assert metric_names(e) == {"kubeforge_reconcile_duration_seconds_bucket", "up"}


def test_dashboards_match_their_generator() -> None:
    """The JSON is generated by hack/gen-dashboards.py: hand edits would be lost on the next run."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "hack" / "gen-dashboards.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# Label values the operator writes (kubeforge/controllers/passes.py: measured(), track(); stages.py: reconcile_stage()).
OUTCOMES = {"success", "retry", "error", "settled", "invalid", "waiting", "created", "running", "succeeded",
            "failed"}
MAIN_CONDITIONS = {"Succeeded", "Ready"}  # kubeforge_resources tracks each kind's main condition only


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_label_values_exist(path: Path) -> None:
    """A panel filtering on a label value the operator never writes would be silently empty."""
    for e in exprs(load(path)):
        for value in re.findall(r'outcome="(\w+)"', e):
            assert value in OUTCOMES, f"{path.name}: outcome={value!r} is never written: {e}"
        for value in re.findall(r'condition="(\w+)"', e):
            assert value in MAIN_CONDITIONS, f"{path.name}: condition={value!r} is not tracked: {e}"
        for value in re.findall(r'status="(\w+)"', e):
            assert value in {"True", "False", "Unknown"}, e
