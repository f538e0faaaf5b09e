"""Views of local runs: `kubeforge get` / `describe` tables and the HTML report with plots.

matplotlib is imported only when the HTML report is written, so `kubeforge get` stays instant. The serving
comparison (`report_serving`) and the classification/regression sections (`report_tasks`) live beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..stage import local_path
from .state import ResourceState, StateStore

STATUS_STYLE = {"True": "green", "False": "red", "Unknown": "yellow"}


def main_condition(state: ResourceState) -> tuple[str, str, str]:
    """(status, reason, message) of the condition `kubectl get` shows: Ready for deployments, else Succeeded."""
    cond = state.condition("Ready") if state.kind == "ModelDeployment" else None
    cond = cond or state.condition("Succeeded") or state.condition("DependenciesReady")
    if cond is None:
        return ("", "Pending", "")
    return (cond.status.value, cond.reason, cond.message)


def key_metric(state: ResourceState) -> str:
    """The one number worth a column: loss, pairwise accuracy, reward, pass + main metric, endpoint."""
    st = state.status
    metrics: dict[str, float] = st.get("metrics") or {}
    progress = st.get("progress") or {}
    if state.kind == "Dataset":
        c = st.get("counts") or {}
        return " ".join(f"{k}={c[k]}" for k in ("train", "validation", "test") if c.get(k) is not None)
    if state.kind == "TrainingJob":  # classification/regression heads add their validation accuracy, F1 or RMSE
        loss = metrics.get("train_loss", progress.get("loss"))
        shown = [f"loss={loss:.3f}"] if isinstance(loss, int | float) else []
        return " ".join(shown + [f"{k}={metrics[k]:.3f}" for k in ("accuracy", "f1", "rmse") if _num(metrics, k)])
    if state.kind == "RewardModel":
        acc = metrics.get("pairwise_accuracy", metrics.get("eval_accuracy"))
        return f"pairwise_accuracy={acc:.2f}" if isinstance(acc, int | float) else ""
    if state.kind == "RLHFJob":
        reward, before, after = metrics.get("reward"), metrics.get("reward_before"), metrics.get("reward_after")
        if isinstance(before, int | float) and isinstance(after, int | float):  # held-out, greedy
            return f"held-out reward {before:.3f}->{after:.3f}"
        if isinstance(reward, int | float):
            return f"reward={reward:.3f}"
        loss = progress.get("loss")
        return f"loss={loss:.3f}" if isinstance(loss, int | float) else ""
    if state.kind == "Evaluation":
        passed = state.condition("Passed")
        head = {"True": "passed", "False": "FAILED"}.get(passed.status.value, "") if passed else ""
        main = state.main_metric or ""
        if main.endswith("]") and "[" in main:  # `metric[variant]`: the gated variant's value
            metric, variant = main[:-1].split("[", 1)
            for v in st.get("variants") or []:
                value = (v.get("metrics") or {}).get(metric) if isinstance(v, dict) else None
                if v.get("name") == variant and isinstance(value, int | float):
                    return f"{head} {main}={value:.3f}".strip()
        name = main if main in metrics else next(iter(metrics), None)
        if name is None:
            return head
        pair = ("accuracy", "f1") if name in ("accuracy", "f1") else ()  # classification: both side by side
        shown = [name, *(k for k in pair if k != name and _num(metrics, k))]
        return f"{head} {' '.join(f'{k}={metrics[k]:.3f}' for k in shown)}".strip()
    if state.kind == "ModelDeployment":
        ep = (st.get("endpoints") or {}).get("http")
        if ep:
            return str(ep)
        conv = st.get("conversion") or {}
        size = conv.get("sizeBytes", next((v for k, v in conv.items() if "size" in k.lower()), None))
        return f"model {size / 1e6:.2f} MB" if isinstance(size, int | float) else ""
    return ""


def _num(values: dict[str, Any], key: str) -> bool:
    return isinstance(values.get(key), int | float)


def age(state: ResourceState) -> str:
    """`5m`, `2h`, `3d` since the object was first run here."""
    try:
        created = datetime.strptime(state.created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return ""
    s = int((datetime.now(UTC) - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def ref(state: ResourceState) -> str:
    """`Kind/name`."""
    from .graph import ref_of

    return ref_of(state.key)


def get_table(states: list[ResourceState]) -> Table:
    """`kubectl get`-style table of every object."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("KIND/NAME", "SUCCEEDED/READY", "REASON", "PROGRESS", "METRIC", "AGE"):
        table.add_column(col)
    for s in states:
        status, reason, _ = main_condition(s)
        pct = (s.status.get("progress") or {}).get("percent") or ""
        table.add_row(ref(s), Text(status, style=STATUS_STYLE.get(status, "")), reason, pct, key_metric(s), age(s))
    return table


def describe(state: ResourceState, log_path: Path | None = None) -> RenderableType:
    """Conditions, artifact, lineage, metrics and events of one object."""
    parts: list[RenderableType] = [Text(f"{ref(state)}  (generation {state.generation})", style="bold")]
    if state.source:
        parts.append(Text(f"Manifest:  {state.source}"))
    if state.run_digest:
        parts.append(Text(f"Run digest: {state.run_digest}"))
    conds = Table(title="Conditions", box=None, title_justify="left", header_style="bold")
    for col in ("TYPE", "STATUS", "REASON", "MESSAGE", "GEN", "LAST TRANSITION"):
        conds.add_column(col, overflow="fold")
    for c in state.status.get("conditions") or []:
        conds.add_row(
            c.get("type", ""), Text(c.get("status", ""), style=STATUS_STYLE.get(c.get("status", ""), "")),
            c.get("reason", ""), c.get("message", ""), str(c.get("observedGeneration", "")),
            c.get("lastTransitionTime", ""),
        )
    parts.append(conds)
    art = state.status.get("artifact") or (
        {"uri": state.status["artifactUri"], "digest": state.status.get("digest")}
        if state.status.get("artifactUri") else None
    )
    if art:
        parts.append(Text(f"Artifact:  {art.get('uri')}  {art.get('digest') or ''}"))
    lineage = state.status.get("lineage") or []
    if lineage:
        t = Table(title="Lineage", box=None, title_justify="left", header_style="bold")
        for col in ("KIND", "NAME", "URI", "DIGEST"):
            t.add_column(col, overflow="fold")
        for e in lineage:
            t.add_row(e.get("kind", ""), e.get("name", ""), e.get("uri", ""), (e.get("digest") or "")[:23])
        parts.append(t)
    extra = {
        k: v for k, v in state.status.items()
        if k in ("metrics", "variants", "counts", "removed", "failedThresholds", "sampleCount", "endpoints",
                 "conversion", "quantization", "modelRepository", "progress", "smoke")
    }
    if extra:
        t = Table(title="Status", box=None, title_justify="left", header_style="bold")
        t.add_column("FIELD")
        t.add_column("VALUE", overflow="fold")
        for k, v in extra.items():
            t.add_row(k, json.dumps(v, sort_keys=True) if not isinstance(v, str) else v)
        parts.append(t)
    ev = Table(title="Events", box=None, title_justify="left", header_style="bold")
    for col in ("TIME", "TYPE", "REASON", "MESSAGE"):
        ev.add_column(col, overflow="fold")
    for e in state.events[-30:]:
        ev.add_row(e.time, Text(e.type, style="yellow" if e.type == "Warning" else ""), e.reason, e.message)
    parts.append(ev)
    if log_path is not None:
        parts.append(Text(f"Log: {log_path}", style="dim"))
    return Group(*parts)


# ---- HTML report -------------------------------------------------------------------------------


def output_dir(state: ResourceState) -> Path | None:
    """Local directory of the object's artifact, when it has one on this machine."""
    st = state.status
    uri = (st.get("artifact") or {}).get("uri") or st.get("artifactUri") or st.get("modelRepository")
    report = st.get("reportUri")  # an Evaluation's output is its report and what lies beside it
    if not uri and not report:
        return None
    try:
        path = local_path(str(uri)) if uri else local_path(str(report)).parent
    except ValueError:
        return None
    return path if path.exists() else None


def log_history(state: ResourceState, store: StateStore) -> list[dict[str, Any]]:
    """HF Trainer `log_history` (output dir, else newest checkpoint), else the runner's progress samples."""
    out = output_dir(state)
    candidates: list[Path] = []
    if out is not None:
        candidates.append(out / "trainer_state.json")
        ckpts = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
                       if p.name.split("-")[-1].isdigit() else -1)
        candidates.extend(c / "trainer_state.json" for c in reversed(ckpts))
    for c in candidates:
        if c.exists():
            try:
                hist = json.loads(c.read_text()).get("log_history") or []
            except (OSError, json.JSONDecodeError):
                continue
            if any("loss" in h for h in hist):
                return list(hist)
    samples = []
    hp = store.history_path(state.key)
    if hp.exists():
        for line in hp.read_text().splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if d.get("loss") is not None and d.get("step") is not None:
                samples.append({"step": d["step"], "loss": d["loss"]})
    return samples


def png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "<img src='data:image/png;base64," + base64.b64encode(buf.getvalue()).decode() + "'/>"


def _loss_plot(states: list[ResourceState], store: StateStore) -> str | None:
    import matplotlib.pyplot as plt

    series = []
    for s in states:
        if s.kind not in ("TrainingJob", "RewardModel", "RLHFJob"):
            continue
        hist = log_history(s, store)
        pts = [(h["step"], h["loss"]) for h in hist if "loss" in h and "step" in h]
        evals = [(h["step"], h["eval_loss"]) for h in hist if "eval_loss" in h and "step" in h]
        if pts or evals:
            series.append((ref(s), pts, evals))
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (name, pts, evals) in zip(axes[0], series, strict=True):
        if pts:
            ax.plot(*zip(*pts, strict=True), label="train loss")
        if evals:
            ax.plot(*zip(*evals, strict=True), "o--", label="eval loss")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return png(fig)


def _reward_plot(states: list[ResourceState], store: StateStore) -> str | None:
    import matplotlib.pyplot as plt

    rows = []
    for s in states:
        if s.kind != "RewardModel":
            continue
        hist = log_history(s, store)
        pts = [(h["step"], h[k]) for h in hist for k in ("eval_accuracy", "accuracy") if k in h and "step" in h]
        final = (s.status.get("metrics") or {}).get("pairwise_accuracy")
        rows.append((ref(s), pts, final))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, pts, final in rows:
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=f"{name} accuracy")
        if isinstance(final, int | float):
            ax.axhline(final, linestyle=":", label=f"{name} final {final:.2f}")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("step")
    ax.set_ylabel("pairwise accuracy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return png(fig)


def bar_plots(items: list[tuple[str, dict[str, float]]], title: str) -> str | None:
    import matplotlib.pyplot as plt

    items = [(n, {k: v for k, v in d.items() if isinstance(v, int | float)}) for n, d in items]
    items = [(n, d) for n, d in items if d]
    if not items:
        return None
    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 3.2), squeeze=False)
    for ax, (name, d) in zip(axes[0], items, strict=True):
        ax.bar(list(d), list(d.values()), color="#4a7ab5")
        ax.set_title(f"{name} {title}", fontsize=9)
        ax.tick_params(axis="x", rotation=30, labelsize=7)
        for i, v in enumerate(d.values()):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=7)
    return png(fig)


def _lineage_plot(states: list[ResourceState]) -> str | None:
    """Objects as boxes in columns by depth, arrows from inputs to consumers."""
    import matplotlib.pyplot as plt

    by_name = {(s.kind, s.name): s for s in states}
    edges: list[tuple[tuple[str, str], tuple[str, str]]] = []
    for s in states:
        refs = {(e.get("kind", ""), e.get("name", "")) for e in s.status.get("lineage") or []}
        refs |= {(r.split("/")[0], r.split("/")[-1]) for r in s.depends_on}
        edges.extend((src, (s.kind, s.name)) for src in sorted(refs) if src in by_name)
    if not states:
        return None
    depth: dict[tuple[str, str], int] = {k: 0 for k in by_name}
    for _ in range(len(states)):
        for a, b in edges:
            depth[b] = max(depth[b], depth[a] + 1)
    cols: dict[int, list[tuple[str, str]]] = {}
    for k, d in depth.items():
        cols.setdefault(d, []).append(k)
    pos = {k: (d, -i) for d, ks in cols.items() for i, k in enumerate(ks)}
    fig, ax = plt.subplots(figsize=(2.6 * (max(cols) + 1), 0.9 * max(len(v) for v in cols.values()) + 1))
    for a, b in edges:
        ax.annotate("", xy=pos[b], xytext=pos[a],
                    arrowprops={"arrowstyle": "-|>", "color": "#888", "shrinkA": 28, "shrinkB": 28})
    for k, (x, y) in pos.items():
        status, _, _ = main_condition(by_name[k])
        color = {"True": "#cfe8cf", "False": "#f3c6c6"}.get(status, "#f3eac0")
        ax.text(x, y, f"{k[0]}\n{k[1]}", ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "facecolor": color, "edgecolor": "#666"})
    ax.set_xlim(-0.6, max(cols) + 0.6)
    ax.set_ylim(min(y for _, y in pos.values()) - 0.6, 0.6)
    ax.axis("off")
    return png(fig)


def _table_html(states: list[ResourceState]) -> str:
    rows = []
    for s in states:
        status, reason, message = main_condition(s)
        cls = {"True": "ok", "False": "bad"}.get(status, "unk")
        rows.append(
            f"<tr><td>{html.escape(ref(s))}</td><td class='{cls}'>{status}</td><td>{html.escape(reason)}</td>"
            f"<td>{html.escape(key_metric(s))}</td><td>{html.escape(message)}</td></tr>"
        )
    return (
        "<table><tr><th>Object</th><th>Succeeded/Ready</th><th>Reason</th><th>Metric</th><th>Message</th></tr>"
        + "".join(rows) + "</table>"
    )


def variant_table(state: ResourceState) -> tuple[list[str], list[tuple[str, dict[str, float]]]] | None:
    """(metric names, [(variant, metrics)]) of an Evaluation scored with prompt variants, else None."""
    variants = state.status.get("variants")
    if state.kind != "Evaluation" or not isinstance(variants, list) or not variants:
        return None
    rows = [(str(v.get("name", "")), dict(v.get("metrics") or {})) for v in variants if isinstance(v, dict)]
    names: list[str] = []
    for _, vals in rows:
        names += [k for k in vals if k not in names]
    return names, rows


def _variants_html(states: list[ResourceState]) -> str | None:
    """One table per Evaluation with prompt variants: a row per variant, a column per metric."""
    parts = []
    for s in states:
        table = variant_table(s)
        if table is None:
            continue
        names, rows = table
        gated = {str(t) for t in s.status.get("failedThresholds") or []}
        head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
        body = "".join(
            f"<tr><td>{html.escape(v)}{' (default)' if i == 0 else ''}</td>"
            + "".join(
                f"<td>{vals[n]:.4g}</td>" if isinstance(vals.get(n), int | float) else "<td>-</td>" for n in names
            )
            + "</tr>"
            for i, (v, vals) in enumerate(rows)
        )
        failed = f"<p class='bad'>failed: {html.escape('; '.join(sorted(gated)))}</p>" if gated else ""
        parts.append(
            f"<h3>{html.escape(ref(s))}</h3><table><tr><th>variant</th>{head}</tr>{body}</table>{failed}"
        )
    return "".join(parts) or None


def write_html(store: StateStore, states: list[ResourceState] | None = None, path: Path | None = None) -> Path:
    """`.kubeforge/report.html`: summary, loss curves, reward accuracy, evaluation, data, serving, lineage."""
    import matplotlib

    matplotlib.use("Agg")
    from .report_quality import quantization_html
    from .report_rlhf import rlhf_html
    from .report_serving import serving_plot  # sections kept in modules of their own (they import this one)
    from .report_tasks import evaluation_plots_html, training_metrics_plot

    states = states if states is not None else store.all()
    path = path or store.root / "report.html"
    sections: list[tuple[str, str | None]] = [("Summary", _table_html(states))]
    sections.append(("Training loss", _loss_plot(states, store)))
    sections.append(("Classification / regression validation metrics", training_metrics_plot(states)))
    sections.append(("Reward model accuracy", _reward_plot(states, store)))
    sections.append(("RLHF: held-out reward before / after", rlhf_html(states)))
    sections.append((
        "Evaluation metrics",
        bar_plots([(ref(s), s.status.get("metrics") or {}) for s in states if s.kind == "Evaluation"], "metrics"),
    ))
    sections.append(("Evaluation prompt variants (variant x metric)", _variants_html(states)))
    sections.append(("Evaluation plots (confusion matrix, regression errors)", evaluation_plots_html(states)))
    ds_counts = [(ref(s), s.status.get("counts") or {}) for s in states if s.kind == "Dataset"]
    ds_removed = [(ref(s), s.status.get("removed") or {}) for s in states if s.kind == "Dataset"]
    sections.append(("Dataset records per split", bar_plots(ds_counts, "records")))
    sections.append(("Dataset records removed per rule", bar_plots(ds_removed, "removed")))
    sections.append(("Serving: FP32 / FP16 / INT8 size and latency", serving_plot(states)))
    sections.append(("Serving: quantized vs FP32 quality (argmax agreement, top-5 overlap)", quantization_html(states)))
    sections.append(("Lineage", _lineage_plot(states)))
    body = "".join(f"<h2>{html.escape(t)}</h2>{c}" for t, c in sections if c)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Kubeforge run report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}"
        ".ok{color:#1a7f37}.bad{color:#cf222e}.unk{color:#9a6700}img{max-width:100%}</style></head><body>"
        f"<h1>Kubeforge run report</h1><p>{when} — workdir {html.escape(str(store.root))}</p>{body}</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
