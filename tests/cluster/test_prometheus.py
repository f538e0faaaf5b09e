"""Dashboards and alert rules against the real Prometheus (Debian package; hack/install-prometheus.sh).

Offline, promtool parses every PromQL expression of the chart (alert rules as rendered by helm, every
Grafana panel and variable query with Grafana's variables substituted) and unit-tests the alerts.
Live, a real prometheus scrapes a running operator that reconciles real objects in the test cluster; every
expression must be accepted by the query API, the operator-health ones must return data, and the alert
rules must evaluate without error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubeforge"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
TOOLS_BIN = Path(
    os.environ.get("KUBEFORGE_TOOLS_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubeforge" / "tools"
) / "bin"
RELEASE = "kf"
JOB = f"{RELEASE}-kubeforge-metrics"  # the metrics Service name: prometheus-operator's `job` label
Cluster = Any  # tests/conftest.py:Cluster

# What Grafana puts in place of its built-in variables at query time (values typical of a 6h dashboard).
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "__range_s": "300",
                    "__interval_ms": "15000"}


def require(tool: str, hint: str) -> str:
    """Path of a tool; missing fails in CI and skips locally with how to get it."""
    found = shutil.which(tool) or (str(TOOLS_BIN / tool) if (TOOLS_BIN / tool).exists() else None)
    if found:
        return found
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{tool} not found: {hint}", pytrace=False)
    pytest.skip(f"{tool} not found: {hint}")


def substitute(expr: str) -> str:
    """Grafana template variables → concrete PromQL. User variables are multi-value regexes: `.*` is All."""
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return GRAFANA_BUILTINS.get(name, ".*")
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def variable_query(query: str) -> str | None:
    """Grafana's `label_values(selector, label)` as the PromQL that yields the same label values."""
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    return f"count by ({m.group(2)}) ({substitute(m.group(1))})" if m else None


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) for every panel target and variable query, substituted."""
    out: list[tuple[str, str, str]] = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((path.stem, panel["title"], substitute(target["expr"])))
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                q = variable_query(var["query"]["query"])
                assert q, f"{path.name}: variable {var['name']} query not understood: {var['query']['query']}"
                out.append((path.stem, f"variable {var['name']}", q))
    return out


def rendered_rule_groups(values: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """spec.groups of the chart's PrometheusRule, rendered by helm."""
    helm = require("helm", "run hack/build-tools.sh")
    proc = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--kube-version", "1.36.3", "--set", "prometheusRule.enabled=true",
         "--show-only", "templates/prometheusrule.yaml", *values],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    groups: list[dict[str, Any]] = yaml.safe_load(proc.stdout)["spec"]["groups"]
    return groups


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool = require("promtool", "run hack/install-prometheus.sh")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=120)


# ---------------------------------------------------------------- offline: promtool


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    groups = rendered_rule_groups()
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    proc = promtool("check", "rules", str(rules))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in groups)} rules found" in proc.stdout, proc.stdout


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel and variable query as a recording rule: promtool parses each with Prometheus' own parser."""
    queries = dashboard_queries()
    rules = [{"record": f"kubeforge_dashboard_query_{i}", "expr": q} for i, (_, _, q) in enumerate(queries)]
    path = tmp_path / "dashboards.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


ALERT_TESTS = {
    "evaluation_interval": "1m",
    "tests": [
        {
            "name": "reconcile errors above the ratio fire per kind",
            "interval": "1m",
            "input_series": [
                {"series": 'kubeforge_reconcile_total{kind="TrainingJob", outcome="error"}', "values": "0+6x40"},
                {"series": 'kubeforge_reconcile_total{kind="TrainingJob", outcome="success"}', "values": "0+6x40"},
                {"series": 'kubeforge_reconcile_total{kind="Dataset", outcome="success"}', "values": "0+6x40"},
                {"series": 'kubeforge_reconcile_total{kind="Dataset", outcome="error"}', "values": "0x40"},
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "KubeforgeReconcileErrors", "exp_alerts": []},
                {"eval_time": "30m", "alertname": "KubeforgeReconcileErrors",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "kind": "TrainingJob"},
                                 "exp_annotations": {
                                     "summary": "TrainingJob reconciles are failing",
                                     "description": "50% of TrainingJob reconciles ended in an error over the "
                                                    "last 10 minutes; see the operator log and `kubectl describe` "
                                                    "events."}}]},
            ],
        },
        {
            "name": "a failed workload fires at once and clears after the window",
            "interval": "1m",
            "input_series": [
                {"series": 'kubeforge_workload_duration_seconds_count{kind="Evaluation", outcome="failed"}',
                 "values": "0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"},
                {"series": 'kubeforge_workload_duration_seconds_count{kind="Evaluation", outcome="succeeded"}',
                 "values": "0+1x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "KubeforgeWorkloadFailed", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "KubeforgeWorkloadFailed",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "kind": "Evaluation"},
                                 "exp_annotations": {
                                     "summary": "Evaluation workload failed",
                                     "description": "1 Evaluation Job(s) failed in the last 15 minutes: "
                                                    "`kubectl get evaluation -A` shows which (Succeeded=False)."}}]},
                {"eval_time": "25m", "alertname": "KubeforgeWorkloadFailed", "exp_alerts": []},
            ],
        },
        {
            "name": "training whose step stops moving is stalled; finished training is not",
            "interval": "1m",
            "input_series": [
                {"series": 'kubeforge_train_step{kind="TrainingJob", name="sft", namespace="ml"}',
                 "values": "0 10 20 30 40x60"},
                {"series": 'kubeforge_train_total_steps{kind="TrainingJob", name="sft", namespace="ml"}',
                 "values": "100x64"},
                {"series": 'kubeforge_train_step{kind="TrainingJob", name="done", namespace="ml"}',
                 "values": "0 50 100x62"},
                {"series": 'kubeforge_train_total_steps{kind="TrainingJob", name="done", namespace="ml"}',
                 "values": "100x64"},
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "KubeforgeTrainingStalled", "exp_alerts": []},
                {"eval_time": "45m", "alertname": "KubeforgeTrainingStalled",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "kind": "TrainingJob", "name": "sft",
                                                "namespace": "ml"},
                                 "exp_annotations": {
                                     "summary": "TrainingJob ml/sft made no progress for 30m",
                                     "description": "Step stuck at 40: the trainer is hung, starved of data, "
                                                    "or waiting on a collective."}}]},
            ],
        },
        {
            "name": "an object unfinished for stuckAfter is stuck",
            "interval": "1m",
            "input_series": [
                {"series": 'kubeforge_resources{kind="RLHFJob", condition="Succeeded", status="Unknown"}',
                 "values": "1x480"},
                {"series": 'kubeforge_resources{kind="Dataset", condition="Succeeded", status="Unknown"}',
                 "values": "1x200 0 1x279"},
            ],
            "alert_rule_test": [
                {"eval_time": "5h", "alertname": "KubeforgeResourceStuck", "exp_alerts": []},
                {"eval_time": "7h", "alertname": "KubeforgeResourceStuck",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "kind": "RLHFJob"},
                                 "exp_annotations": {
                                     "summary": "RLHFJob objects have not finished for 6h",
                                     "description": "1 RLHFJob object(s) have had Succeeded=Unknown (waiting or "
                                                    "running) without interruption; check DependenciesReady and "
                                                    "the stage Job."}}]},
            ],
        },
    ],
}


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rendered_rule_groups()}))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], **ALERT_TESTS}))
    proc = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- live: prometheus scraping the operator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A real prometheus process on 127.0.0.1."""

    def __init__(self, base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.base, self.proc, self.log = base, proc, log

    def api(self, endpoint: str, **params: str) -> dict[str, Any]:
        url = f"{self.base}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body: dict[str, Any] = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400 carries the parse error as JSON
            body = json.load(exc)
        return body

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)


@pytest.fixture
def metrics_port(monkeypatch: pytest.MonkeyPatch) -> int:
    """KUBEFORGE_METRICS_PORT for the operator started after this fixture."""
    port = _free_port()
    monkeypatch.setenv("KUBEFORGE_METRICS_PORT", str(port))
    return port


@pytest.fixture
def prometheus(tmp_path: Path, metrics_port: int, operator: Any) -> Iterator[Prometheus]:
    """Prometheus scraping the operator every second, with the chart's alert rules loaded."""
    binary = require("prometheus", "run hack/install-prometheus.sh")
    from kubeforge import metrics

    # The metrics server starts once per process: if an earlier test started it, scrape that port.
    target_port = metrics._server_port or metrics_port
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rendered_rule_groups()}))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
    }))
    port = _free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{prom.base}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"prometheus exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"prometheus not ready in 60s:\n{log.read_text()[-3000:]}"
            time.sleep(0.3)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _objects(ns: str) -> list[dict[str, Any]]:
    """A small pipeline: a Dataset that runs, a TrainingJob on it, and an Evaluation waiting for a model."""
    def obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "kubeforge.io/v1alpha1", "kind": kind,
                "metadata": {"name": name, "namespace": ns}, "spec": spec}
    return [
        obj("Dataset", "corpus", {"source": {"uris": ["file:///data/train.jsonl"]}, "task": "text"}),
        obj("TrainingJob", "sft", {"method": "sft", "model": {"uri": "org/base"}, "dataset": {"name": "corpus"}}),
        obj("Evaluation", "eval", {"model": {"ref": {"kind": "TrainingJob", "name": "missing"}},
                                   "dataset": {"name": "corpus", "split": "test"},
                                   "taskType": "language-modeling", "metrics": ["perplexity"]}),
    ]


def _wait_for(prom: Prometheus, expr: str, timeout_s: float = 90) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = prom.query(expr)
        if body["status"] == "success" and body["data"]["result"]:
            return list(body["data"]["result"])
        if time.monotonic() > deadline:
            targets = prom.api("targets")
            raise AssertionError(f"no data for {expr} in {timeout_s}s; targets: {json.dumps(targets)[:1500]}\n"
                                 f"prometheus log: {prom.log.read_text()[-1500:]}")
        time.sleep(1)


@pytest.mark.cluster
def test_prometheus_scrapes_the_operator_and_every_query_works(
    cluster: Cluster, namespace: str, prometheus: Prometheus
) -> None:
    for o in _objects(namespace):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(o))

    up = _wait_for(prometheus, f'up{{job="{JOB}"}} == 1', 60)
    assert up, "operator target is not up"
    _wait_for(prometheus, 'kubeforge_reconcile_total{kind="TrainingJob"}')
    _wait_for(prometheus, 'kubeforge_dependency_wait_total{kind="Evaluation"}')
    _wait_for(prometheus, 'kubeforge_resources{kind="Dataset"}')
    time.sleep(4)  # rate() needs two samples inside the window after the counters appear

    problems = []
    empty_operator_queries = []
    for board, title, expr in dashboard_queries():
        body = prometheus.query(expr)
        if body["status"] != "success":
            problems.append(f"{board}/{title}: {body.get('error')} in {expr}")
        elif board == "operator" and 'outcome="error"' not in expr and not body["data"]["result"]:
            empty_operator_queries.append(f"{title}: {expr}")
    for group in rendered_rule_groups():
        for rule in group["rules"]:
            body = prometheus.query(rule["expr"])
            if body["status"] != "success":
                problems.append(f"alert {rule['alert']}: {body.get('error')}")
    assert not problems, "\n".join(problems)
    assert not empty_operator_queries, "operator-health queries returned no data:\n" + "\n".join(
        empty_operator_queries)

    # The operator is up, so the absent() alert expression is empty; the rules evaluate without error.
    assert prometheus.query(f'absent(up{{job="{JOB}"}} == 1)')["data"]["result"] == []
    deadline = time.monotonic() + 30
    while True:
        groups = prometheus.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("2") and
                         not r["lastEvaluation"].startswith("0001") for r in rules):
            break
        assert time.monotonic() < deadline, f"rules never evaluated: {rules}"
        time.sleep(1)
    assert len(rules) == sum(len(g["rules"]) for g in rendered_rule_groups())
    bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not bad, bad
    assert not [r["name"] for r in rules if r["state"] == "firing"], "no alert should fire on a healthy run"
