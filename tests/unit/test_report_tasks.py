"""The local run report for classification and regression: TrainingJob heads and Evaluations of them."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from kubeforge import kinds
from kubeforge.api.v1alpha1.status import Artifact
from kubeforge.runner.report import get_table, key_metric, write_html
from kubeforge.runner.report_tasks import head_metrics
from kubeforge.runner.state import ResourceState, StateStore
from kubeforge.stage import StageResult
from rich.console import Console

CLASSIFIER = {"train_loss": 0.5, "eval_loss": 0.41, "global_step": 12.0, "num_labels": 3.0,
              "accuracy": 0.875, "precision": 0.8, "recall": 0.85, "f1": 0.82}
REGRESSOR = {"train_loss": 0.25, "eval_loss": 0.05, "global_step": 12.0, "mse": 0.04, "rmse": 0.2, "mae": 0.15}


def _state(kind: str, name: str, result: StageResult, main_metric: str | None = None) -> ResourceState:
    """A finished object whose status is lifted from its stage result, as the runner does it."""
    fields = kinds.of(kind).lift(result, "", {}).fields
    state = ResourceState(kind=kind, name=name, status=fields, main_metric=main_metric)
    state.set_condition("Succeeded", "True", "Completed")
    return state


def test_classification_and_regression_metrics_in_get_and_report(tmp_path: Path) -> None:
    eval_out = tmp_path / "store" / "evaluation" / "clf-eval"
    eval_out.mkdir(parents=True)
    plot = b"\x89PNG\r\n\x1a\n-confusion-matrix-"  # the evaluate stage's plot.png; embedded as it is
    (eval_out / "plot.png").write_bytes(plot)
    states = [
        _state("TrainingJob", "clf", StageResult(succeeded=True, metrics=CLASSIFIER)),
        _state("TrainingJob", "reg", StageResult(succeeded=True, metrics=REGRESSOR)),
        _state("TrainingJob", "lm", StageResult(succeeded=True, metrics={"train_loss": 1.25})),
        _state("Evaluation", "clf-eval", StageResult(
            succeeded=True, metrics={"accuracy": 0.9, "precision": 0.91, "recall": 0.89, "f1": 0.88},
            artifact=Artifact(uri=f"file://{eval_out}", digest="sha256:0", size_bytes=len(plot)),
            details={"passed": True, "sampleCount": 40, "reportUri": f"file://{eval_out}/report.json"}),
            main_metric="accuracy"),
        _state("Evaluation", "reg-eval", StageResult(
            succeeded=True, metrics={"mae": 0.3, "mse": 0.16, "rmse": 0.4}), main_metric="rmse"),
    ]
    states[3].set_condition("Passed", "True", "ThresholdsMet")

    assert [key_metric(s) for s in states] == [
        "loss=0.500 accuracy=0.875 f1=0.820",
        "loss=0.250 rmse=0.200",
        "loss=1.250",
        "passed accuracy=0.900 f1=0.880",
        "rmse=0.400",
    ]
    buf = io.StringIO()
    Console(file=buf, width=200).print(get_table(states))
    assert "accuracy=0.875 f1=0.820" in buf.getvalue()

    assert head_metrics(states[0].status["metrics"]) == {"accuracy": 0.875, "precision": 0.8, "recall": 0.85,
                                                         "f1": 0.82}
    assert head_metrics(states[1].status["metrics"]) == {"mse": 0.04, "rmse": 0.2, "mae": 0.15}
    assert head_metrics(states[2].status["metrics"]) == {}

    store = StateStore(tmp_path / "wd")
    page = write_html(store, states).read_text()
    sections = [line.split("</h2>")[0] for line in page.split("<h2>")[1:]]
    assert sections[:2] == ["Summary", "Classification / regression validation metrics"]
    assert {"Evaluation metrics", "Evaluation plots (confusion matrix, regression errors)"} <= set(sections)
    assert "<td>TrainingJob/clf</td><td class='ok'>True</td><td>Completed</td>" \
           "<td>loss=0.500 accuracy=0.875 f1=0.820</td>" in page
    assert "passed accuracy=0.900 f1=0.880" in page
    # the confusion matrix the evaluate stage drew, under its Evaluation; the regression one drew none here
    assert f"<h3>Evaluation/clf-eval</h3><img src='data:image/png;base64,{base64.b64encode(plot).decode()}'/>" in page
    assert "<h3>Evaluation/reg-eval</h3>" not in page
    # one figure each: validation bars (clf and reg), evaluation bars, the evaluation's plot, lineage
    assert page.count("<img src='data:image/png;base64,") == 4


def test_report_without_classifiers_leaves_the_sections_out(tmp_path: Path) -> None:
    lm = _state("TrainingJob", "lm", StageResult(succeeded=True, metrics={"train_loss": 1.0}))
    page = write_html(StateStore(tmp_path / "wd"), [lm]).read_text()
    assert "validation metrics" not in page and "Evaluation plots" not in page
