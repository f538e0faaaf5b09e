"""Generate the chart's Grafana dashboards (charts/kubeforge/dashboards/*.json).

Written as code so the four dashboards share layout, datasource and variable conventions (every user
variable is a multi-value regex matched with =~, which tests/cluster/test_prometheus.py relies on when it
substitutes `.*`). Run `python hack/gen-dashboards.py` after editing; `--check` exits 1 when the JSON files
are stale (tests/unit/test_chart_dashboards.py runs it).
"""

# PromQL and panel titles read best on one line each.
# ruff: noqa: E501
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "charts" / "kubeforge" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RENDERED: dict[str, str] = {}


def ds_var() -> dict[str, Any]:
    """The data source picker every panel points at."""
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def q_var(name: str, label: str, query: str, multi: bool = True) -> dict[str, Any]:
    """A label_values() variable; multi-value with All = `.*`."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2,
        "sort": 1,
        "includeAll": multi,
        "multi": multi,
        "allValue": ".*" if multi else None,
        "current": {},
        "hide": 0,
        "options": [],
        "regex": "",
    }


class Board:
    """A dashboard laid out left to right, top to bottom on Grafana's 24-column grid."""

    def __init__(
        self, uid: str, title: str, description: str, tags: list[str], variables: list[dict[str, Any]]
    ) -> None:
        self.uid, self.title, self.description, self.tags = uid, title, description, tags
        self.variables = [ds_var(), *variables]
        self.panels: list[dict[str, Any]] = []
        self.x, self.y, self.rowh, self.next_id = 0, 0, 0, 1

    def row(self, title: str) -> None:
        """Start a new titled row."""
        if self.x:
            self.x, self.y = 0, self.y + self.rowh
        self.panels.append(
            {
                "id": self.next_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.next_id += 1
        self.y += 1
        self.rowh = 0

    def panel(
        self,
        title: str,
        targets: list[tuple[str, str]],
        *,
        kind: str = "timeseries",
        unit: str = "short",
        w: int = 12,
        h: int = 8,
        description: str = "",
        options: dict[str, Any] | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        """Add a panel; targets are (PromQL, legend) pairs."""
        if self.x + w > 24:
            self.x, self.y, self.rowh = 0, self.y + self.rowh, 0
        fd = {"unit": unit, **(defaults or {})}
        if options is None:
            if kind == "timeseries":
                options = {
                    "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"},
                }
            elif kind == "stat":
                options = {
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value",
                    "graphMode": "area",
                    "textMode": "auto",
                }
            else:
                options = {}
        instant = {"instant": True, "range": False, "format": "table"} if kind == "table" else {}
        self.panels.append(
            {
                "id": self.next_id,
                "type": kind,
                "title": title,
                "description": description,
                "datasource": DS,
                "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
                "targets": [
                    {"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": lf, **instant}
                    for i, (e, lf) in enumerate(targets)
                ],
                "fieldConfig": {"defaults": fd, "overrides": []},
                "options": options,
            }
        )
        self.next_id += 1
        self.x += w
        self.rowh = max(self.rowh, h)

    def dump(self, fname: str) -> None:
        """Render into RENDERED[fname]."""
        d = {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["kubeforge", *self.tags],
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"},
            "timezone": "browser",
            "fiscalYearStartMonth": 0,
            "links": [{"title": "Kubeforge", "type": "dashboards", "tags": ["kubeforge"], "asDropdown": True}],
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    }
                ]
            },
            "templating": {"list": self.variables},
            "panels": self.panels,
        }
        RENDERED[fname] = json.dumps(d, indent=2) + "\n"


def build() -> dict[str, str]:
    """Every dashboard file name and its JSON text."""
    RENDERED.clear()
    J = 'job=~"$job"'
    RI = "$__rate_interval"

    # ---------------------------------------------------------------- operator health
    b = Board(
        "kubeforge-operator",
        "Kubeforge / Operator",
        "Health of the Kubeforge operator: reconcile rate, errors, latency.",
        ["operator"],
        [
            q_var("job", "Job", "label_values(kubeforge_reconcile_total, job)"),
            q_var("kind", "Kind", "label_values(kubeforge_reconcile_total, kind)"),
        ],
    )
    K = f'{J}, kind=~"$kind"'
    b.row("Overview")
    b.panel(
        "Operator up",
        [(f"sum(up{{{J}}})", "targets up")],
        kind="stat",
        w=6,
        h=4,
        description="Scrape targets of the operator that answer (should be 1: single replica).",
    )
    b.panel(
        "Reconciles / s",
        [(f"sum(rate(kubeforge_reconcile_total{{{K}}}[{RI}]))", "reconciles/s")],
        kind="stat",
        unit="reqps",
        w=6,
        h=4,
    )
    b.panel(
        "Error ratio",
        [
            (
                f'sum(rate(kubeforge_reconcile_total{{{K}, outcome="error"}}[{RI}])) / clamp_min(sum(rate(kubeforge_reconcile_total{{{K}}}[{RI}])), 1e-9)',
                "errors",
            )
        ],
        kind="stat",
        unit="percentunit",
        w=6,
        h=4,
        defaults={
            "thresholds": {
                "mode": "absolute",
                "steps": [
                    {"color": "green", "value": None},
                    {"color": "orange", "value": 0.01},
                    {"color": "red", "value": 0.1},
                ],
            }
        },
    )
    b.panel(
        "Reconcile p95",
        [
            (
                f"histogram_quantile(0.95, sum by (le) (rate(kubeforge_reconcile_duration_seconds_bucket{{{K}}}[{RI}])))",
                "p95",
            )
        ],
        kind="stat",
        unit="s",
        w=6,
        h=4,
    )
    b.row("Reconciles")
    b.panel(
        "Reconcile rate by kind and outcome",
        [(f"sum by (kind, outcome) (rate(kubeforge_reconcile_total{{{K}}}[{RI}]))", "{{kind}} {{outcome}}")],
        unit="reqps",
    )
    b.panel(
        "Reconcile errors by kind",
        [(f'sum by (kind) (rate(kubeforge_reconcile_total{{{K}, outcome="error"}}[{RI}]))', "{{kind}}")],
        unit="reqps",
        description="Handlers that raised (kopf retries them). Persistent errors also raise the KubeforgeReconcileErrors alert.",
    )
    b.panel(
        "Reconcile latency p50 by kind",
        [
            (
                f"histogram_quantile(0.5, sum by (kind, le) (rate(kubeforge_reconcile_duration_seconds_bucket{{{K}}}[{RI}])))",
                "{{kind}} p50",
            )
        ],
        unit="s",
    )
    b.panel(
        "Reconcile latency p95 by kind",
        [
            (
                f"histogram_quantile(0.95, sum by (kind, le) (rate(kubeforge_reconcile_duration_seconds_bucket{{{K}}}[{RI}])))",
                "{{kind}} p95",
            )
        ],
        unit="s",
    )
    b.panel(
        "Average reconcile duration",
        [
            (
                f"sum by (kind) (rate(kubeforge_reconcile_duration_seconds_sum{{{K}}}[{RI}])) / clamp_min(sum by (kind) (rate(kubeforge_reconcile_duration_seconds_count{{{K}}}[{RI}])), 1e-9)",
                "{{kind}}",
            )
        ],
        unit="s",
    )
    b.panel(
        "Dependency waits",
        [(f"sum by (kind) (rate(kubeforge_dependency_wait_total{{{K}}}[{RI}]))", "{{kind}}")],
        unit="reqps",
        description="Reconciles that found an upstream object (Dataset, TrainingJob, Evaluation gate...) not ready yet.",
    )
    b.dump("operator.json")

    # ---------------------------------------------------------------- pipeline
    b = Board(
        "kubeforge-pipeline",
        "Kubeforge / Pipeline",
        "Kubeforge objects by condition, and how long their workloads take.",
        ["pipeline"],
        [
            q_var("job", "Job", "label_values(kubeforge_resources, job)"),
            q_var("kind", "Kind", "label_values(kubeforge_resources, kind)"),
        ],
    )
    K = f'{J}, kind=~"$kind"'
    b.row("Objects")
    b.panel(
        "Succeeded",
        [(f'sum(kubeforge_resources{{{K}, condition="Succeeded", status="True"}})', "succeeded")],
        kind="stat",
        w=6,
        h=4,
        defaults={"color": {"mode": "fixed", "fixedColor": "green"}},
    )
    b.panel(
        "Running or waiting",
        [(f'sum(kubeforge_resources{{{K}, condition="Succeeded", status="Unknown"}})', "running")],
        kind="stat",
        w=6,
        h=4,
        defaults={"color": {"mode": "fixed", "fixedColor": "blue"}},
    )
    b.panel(
        "Failed",
        [(f'sum(kubeforge_resources{{{K}, condition="Succeeded", status="False"}})', "failed")],
        kind="stat",
        w=6,
        h=4,
        defaults={"color": {"mode": "fixed", "fixedColor": "red"}},
    )
    b.panel(
        "Deployments ready",
        [(f'sum(kubeforge_resources{{{J}, kind="ModelDeployment", condition="Ready", status="True"}})', "ready")],
        kind="stat",
        w=6,
        h=4,
    )
    b.panel(
        "Objects by kind, condition and status",
        [(f"sum by (kind, condition, status) (kubeforge_resources{{{K}}})", "")],
        kind="table",
        w=12,
        h=9,
        options={"showHeader": True, "footer": {"show": False}},
    )
    b.panel(
        "Succeeded condition over time",
        [(f'sum by (kind, status) (kubeforge_resources{{{K}, condition="Succeeded"}})', "{{kind}} {{status}}")],
        w=12,
        h=9,
        defaults={"custom": {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30}},
    )
    b.panel(
        "Dependency waits by kind",
        [(f"sum by (kind) (rate(kubeforge_dependency_wait_total{{{K}}}[{RI}]))", "{{kind}}")],
        unit="reqps",
        w=12,
        h=8,
        description="Reconciles that found an input (Dataset, model, Evaluation gate) not ready yet.",
    )
    b.panel(
        "Evaluations by outcome",
        [
            (
                f'sum by (status) (kubeforge_resources{{{J}, kind="Evaluation", condition="Succeeded"}})',
                "Succeeded={{status}}",
            )
        ],
        w=12,
        h=8,
        description="Whether thresholds held is on each Evaluation's Passed condition (kubectl get kfev).",
    )
    b.row("Workloads")
    b.panel(
        "Workload duration p50 by kind",
        [
            (
                f"histogram_quantile(0.5, sum by (kind, le) (rate(kubeforge_workload_duration_seconds_bucket{{{K}}}[$__range])))",
                "{{kind}} p50",
            )
        ],
        unit="s",
        description="Job start to Succeeded/Failed, over the dashboard's time range.",
    )
    b.panel(
        "Workload duration p95 by kind",
        [
            (
                f"histogram_quantile(0.95, sum by (kind, le) (rate(kubeforge_workload_duration_seconds_bucket{{{K}}}[$__range])))",
                "{{kind}} p95",
            )
        ],
        unit="s",
    )
    b.panel(
        "Finished workloads by outcome",
        [
            (
                f"sum by (kind, outcome) (increase(kubeforge_workload_duration_seconds_count{{{K}}}[$__rate_interval]))",
                "{{kind}} {{outcome}}",
            )
        ],
        kind="timeseries",
        defaults={"custom": {"drawStyle": "bars", "stacking": {"mode": "normal", "group": "A"}}},
    )
    b.panel(
        "Mean workload duration by kind",
        [
            (
                f"sum by (kind) (increase(kubeforge_workload_duration_seconds_sum{{{K}}}[$__range])) / clamp_min(sum by (kind) (increase(kubeforge_workload_duration_seconds_count{{{K}}}[$__range])), 1e-9)",
                "{{kind}}",
            )
        ],
        kind="bargauge",
        unit="s",
        options={
            "orientation": "horizontal",
            "displayMode": "gradient",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    )
    b.dump("pipeline.json")

    # ---------------------------------------------------------------- training
    b = Board(
        "kubeforge-training",
        "Kubeforge / Training",
        "Live training: loss, throughput, progress and GPU utilisation (DCGM exporter).",
        ["training"],
        [
            q_var("namespace", "Namespace", "label_values(kubeforge_train_step, namespace)"),
            q_var("kind", "Kind", 'label_values(kubeforge_train_step{namespace=~"$namespace"}, kind)'),
            q_var("name", "Object", 'label_values(kubeforge_train_step{namespace=~"$namespace", kind=~"$kind"}, name)'),
        ],
    )
    T = 'namespace=~"$namespace", kind=~"$kind", name=~"$name"'
    BY = "kind, namespace, name"
    L = "{{kind}} {{namespace}}/{{name}}"
    b.row("Progress")
    b.panel(
        "Progress",
        [
            (
                f"max by ({BY}) (kubeforge_train_step{{{T}}}) / clamp_min(max by ({BY}) (kubeforge_train_total_steps{{{T}}}), 1)",
                L,
            )
        ],
        kind="bargauge",
        unit="percentunit",
        w=12,
        h=8,
        defaults={"min": 0, "max": 1},
        options={
            "orientation": "horizontal",
            "displayMode": "gradient",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    )
    b.panel(
        "Step",
        [
            (f"max by ({BY}) (kubeforge_train_step{{{T}}})", L + " step"),
            (f"max by ({BY}) (kubeforge_train_total_steps{{{T}}})", L + " total"),
        ],
        w=12,
        h=8,
    )
    b.panel(
        "ETA",
        [
            (
                f"(max by ({BY}) (kubeforge_train_total_steps{{{T}}}) - max by ({BY}) (kubeforge_train_step{{{T}}})) / clamp_min(max by ({BY}) (deriv(kubeforge_train_step{{{T}}}[10m])), 1e-9)",
                L,
            )
        ],
        kind="stat",
        unit="s",
        w=24,
        h=4,
        description="Steps left divided by the recent step rate.",
    )
    b.row("Optimisation")
    b.panel("Training loss", [(f"max by ({BY}) (kubeforge_train_loss{{{T}}})", L)], unit="none")
    b.panel("Learning rate", [(f"max by ({BY}) (kubeforge_train_learning_rate{{{T}}})", L)], unit="sci")
    b.panel(
        "Throughput (tokens/s)",
        [(f"sum by ({BY}) (kubeforge_train_tokens_per_second{{{T}}})", L)],
        unit="short",
        description="Summed over the workers of a distributed job.",
    )
    # kubeforge_train_step is a gauge (a resumed job restarts from its checkpoint's step): deriv, not rate,
    # which would read every decrease as a counter reset and spike.
    b.panel("Steps per minute", [(f"max by ({BY}) (deriv(kubeforge_train_step{{{T}}}[{RI}])) * 60", L)], unit="short")
    b.row("GPUs (DCGM exporter)")
    G = 'namespace=~"$namespace", pod=~"$name-.*"'
    b.panel(
        "GPU utilisation",
        [(f"avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{{{G}}})", "{{namespace}}/{{pod}}")],
        unit="percent",
        defaults={"min": 0, "max": 100},
        description="Per stage pod, averaged over its GPUs. Needs dcgm-exporter with pod mapping.",
    )
    b.panel(
        "GPU memory used",
        [(f"sum by (namespace, pod) (DCGM_FI_DEV_FB_USED{{{G}}})", "{{namespace}}/{{pod}}")],
        unit="decmbytes",
    )
    b.dump("training.json")

    # ---------------------------------------------------------------- serving
    b = Board(
        "kubeforge-serving",
        "Kubeforge / Serving",
        "Triton Inference Server behind ModelDeployments: requests, latency, queueing, batching.",
        ["serving", "triton"],
        [
            q_var("namespace", "Namespace", "label_values(nv_inference_request_success, namespace)"),
            q_var("model", "Model", 'label_values(nv_inference_request_success{namespace=~"$namespace"}, model)'),
            q_var(
                "version",
                "Version",
                'label_values(nv_inference_request_success{namespace=~"$namespace", model=~"$model"}, version)',
            ),
        ],
    )
    M = 'namespace=~"$namespace", model=~"$model", version=~"$version"'
    MV = "model, version"
    ML = "{{model}} v{{version}}"

    def per_req(counter: str) -> str:
        return f"sum by ({MV}) (rate({counter}{{{M}}}[{RI}])) / clamp_min(sum by ({MV}) (rate(nv_inference_request_success{{{M}}}[{RI}])), 1e-9)"

    b.row("Traffic")
    b.panel(
        "Requests / s",
        [(f"sum(rate(nv_inference_request_success{{{M}}}[{RI}]))", "ok/s")],
        kind="stat",
        unit="reqps",
        w=8,
        h=4,
    )
    b.panel(
        "Failures / s",
        [(f"sum(rate(nv_inference_request_failure{{{M}}}[{RI}]))", "failed/s")],
        kind="stat",
        unit="reqps",
        w=8,
        h=4,
    )
    b.panel(
        "Error ratio",
        [
            (
                f"sum(rate(nv_inference_request_failure{{{M}}}[{RI}])) / clamp_min(sum(rate(nv_inference_request_success{{{M}}}[{RI}])) + sum(rate(nv_inference_request_failure{{{M}}}[{RI}])), 1e-9)",
                "errors",
            )
        ],
        kind="stat",
        unit="percentunit",
        w=8,
        h=4,
    )
    b.panel(
        "Request rate by model/version",
        [
            (f"sum by ({MV}) (rate(nv_inference_request_success{{{M}}}[{RI}]))", ML + " ok"),
            (f"sum by ({MV}) (rate(nv_inference_request_failure{{{M}}}[{RI}]))", ML + " failed"),
        ],
        unit="reqps",
        description="Canary rollouts show the new version beside the stable one.",
    )
    b.panel(
        "Inferences and executions / s",
        [
            (f"sum by ({MV}) (rate(nv_inference_count{{{M}}}[{RI}]))", ML + " inferences"),
            (f"sum by ({MV}) (rate(nv_inference_exec_count{{{M}}}[{RI}]))", ML + " executions"),
        ],
        unit="short",
    )
    b.row("Latency")
    b.panel(
        "Average request latency",
        [(per_req("nv_inference_request_duration_us"), ML)],
        unit="µs",
        description="End-to-end time inside Triton per successful request (cumulative counters / request count).",
    )
    b.panel(
        "Average queue time",
        [(per_req("nv_inference_queue_duration_us"), ML)],
        unit="µs",
        description="Time waiting in the scheduler queue: grows with dynamic batching delay and overload.",
    )
    b.panel("Average compute time", [(per_req("nv_inference_compute_infer_duration_us"), ML)], unit="µs")
    b.panel(
        "Average batch size",
        [
            (
                f"sum by ({MV}) (rate(nv_inference_count{{{M}}}[{RI}])) / clamp_min(sum by ({MV}) (rate(nv_inference_exec_count{{{M}}}[{RI}])), 1e-9)",
                ML,
            )
        ],
        unit="short",
        description="Inferences per model execution: how well dynamic batching combines requests.",
    )
    b.row("GPUs (DCGM exporter)")
    SERVING = f"on (namespace, pod) max by (namespace, pod) (nv_inference_count{{{M}}})"
    b.panel(
        "GPU utilisation of Triton pods",
        [
            (
                f'avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{{namespace=~"$namespace"}}) and {SERVING}',
                "{{namespace}}/{{pod}}",
            )
        ],
        unit="percent",
        defaults={"min": 0, "max": 100},
        description="GPUs of the pods that serve the selected models (joined on namespace/pod with Triton's own metrics).",
    )
    b.panel(
        "GPU memory of Triton pods",
        [
            (
                f'sum by (namespace, pod) (DCGM_FI_DEV_FB_USED{{namespace=~"$namespace"}}) and {SERVING}',
                "{{namespace}}/{{pod}}",
            )
        ],
        unit="decmbytes",
    )
    b.dump("serving.json")
    return dict(RENDERED)


def main(argv: list[str]) -> int:
    """Write the dashboards, or with --check report stale ones."""
    files = build()
    if "--check" in argv:
        stale = [n for n, text in files.items() if not (OUT / n).exists() or (OUT / n).read_text() != text]
        extra = [p.name for p in OUT.glob("*.json") if p.name not in files]
        for name in stale + extra:
            print(f"stale: charts/kubeforge/dashboards/{name} — run `python hack/gen-dashboards.py`", file=sys.stderr)
        return 1 if stale or extra else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
        print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
