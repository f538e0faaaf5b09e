"""The quantization-quality table of the HTML report: quantized vs fp32 ONNX per ModelDeployment.

Reads `status.quantization` (argmax agreement, top-5 overlap, max |Δlogit|, on held-out text or random
tokens) as the convert stage measured it. Imported by `report.write_html` only.
"""

from __future__ import annotations

import html
from typing import Any

from .report import ref
from .state import ResourceState

COLUMNS = ("deployment", "mode", "parity on", "positions", "argmax agreement", "top-5 overlap", "max |Δlogit|",
           "minAgreement")


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def quantization_html(states: list[ResourceState]) -> str | None:
    """One row per ModelDeployment with a measured status.quantization; None when there is none."""
    rows = []
    for s in states:
        q = s.status.get("quantization") if s.kind == "ModelDeployment" else None
        if not isinstance(q, dict) or q.get("agreement") is None:
            continue
        if q.get("source") == "held-out":
            where = f"held-out {q.get('dataset') or ''}"
        else:
            where = f"random tokens ({q.get('note') or 'no held-out text'})"
        gate, agreement = q.get("minAgreement"), q.get("agreement")
        below = isinstance(gate, int | float) and isinstance(agreement, int | float) and agreement < gate
        gate_cell = "-" if gate is None else f"<span class='{'bad' if below else 'ok'}'>{gate:g}</span>"
        cells = [
            html.escape(ref(s)), html.escape(str(q.get("mode", ""))), html.escape(where),
            _num(q.get("positions"), "d"), _num(agreement, ".4f"), _num(q.get("top5Overlap"), ".4f"),
            _num(q.get("maxAbsLogitDelta"), ".3g"), gate_cell,
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return None
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
