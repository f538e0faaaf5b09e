"""Report sections for classification and regression models (TrainingJob methods and Evaluation task types).

A classification/regression TrainingJob evaluates its head on the validation split and returns accuracy,
precision, recall and F1 (or MSE, RMSE, MAE) in `status.metrics`; an Evaluation of such a model writes a
confusion matrix (or an absolute-error histogram) as `plot.png` beside its report. The HTML report shows both.
Imported by `report.write_html` only.
"""

from __future__ import annotations

import base64
import html

from .report import bar_plots, output_dir, ref
from .state import ResourceState

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")
REGRESSION_METRICS = ("mse", "rmse", "mae")


def head_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The classification (accuracy, P, R, F1) or regression (MSE, RMSE, MAE) numbers among `metrics`, in order."""
    for names in (CLASSIFICATION_METRICS, REGRESSION_METRICS):
        found = {k: float(metrics[k]) for k in names if isinstance(metrics.get(k), int | float)}
        if found:
            return found
    return {}


def training_metrics_plot(states: list[ResourceState]) -> str | None:
    """Bars of the validation metrics of every classification/regression TrainingJob."""
    items = [(f"{ref(s)} validation", head_metrics(s.status.get("metrics") or {}))
             for s in states if s.kind == "TrainingJob"]
    return bar_plots([(n, m) for n, m in items if m], "metrics")


def evaluation_plots_html(states: list[ResourceState]) -> str | None:
    """The evaluate stage's own plot per Evaluation (confusion matrix, error histogram), when it is on this machine."""
    parts = []
    for s in states:
        out = output_dir(s) if s.kind == "Evaluation" else None
        plot = out / "plot.png" if out is not None and out.is_dir() else None
        if plot is None or not plot.is_file():
            continue
        data = base64.b64encode(plot.read_bytes()).decode()
        parts.append(f"<h3>{html.escape(ref(s))}</h3><img src='data:image/png;base64,{data}'/>")
    return "".join(parts) or None
