"""The RLHF table of the HTML report: held-out reward of each online RLHFJob's policy before and after.

Reads status.metrics as the rlhf stage measured them (`reward_before`, `reward_after`, `reward_gain`,
`heldout_prompts`, and with a reward model plus functions `reward_model_before` / `reward_model_after`;
greedy completions of the same held-out prompts). Imported by `report.write_html` only.
"""

from __future__ import annotations

import html
from typing import Any

from .report import ref
from .state import ResourceState

COLUMNS = ("RLHFJob", "held-out prompts", "reward before", "reward after", "gain", "reward model before",
           "reward model after", "training reward (sampled)")


def _num(value: Any, fmt: str = ".4f") -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def rlhf_html(states: list[ResourceState]) -> str | None:
    """One row per RLHFJob with a measured before/after reward; None when there is none."""
    rows = []
    for s in states:
        m: dict[str, Any] = (s.status.get("metrics") or {}) if s.kind == "RLHFJob" else {}
        if not isinstance(m.get("reward_before"), int | float):
            continue
        gain = m.get("reward_gain")
        cls = "ok" if isinstance(gain, int | float) and gain > 0 else "bad"
        cells = [
            html.escape(ref(s)), _num(m.get("heldout_prompts"), ".0f"), _num(m.get("reward_before")),
            _num(m.get("reward_after")), f"<span class='{cls}'>{_num(gain, '+.4f')}</span>",
            _num(m.get("reward_model_before")), _num(m.get("reward_model_after")), _num(m.get("reward")),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return None
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    note = "<p>Greedy completions of the same held-out prompts, scored with the job's reward (training weights).</p>"
    return f"{note}<table><tr>{head}</tr>{''.join(rows)}</table>"
