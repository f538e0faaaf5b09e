"""The local run report for RLHF: held-out reward before/after GRPO in `kubeforge get` and report.html."""

from __future__ import annotations

from pathlib import Path

from kubeforge import kinds
from kubeforge.runner.report import key_metric, write_html
from kubeforge.runner.report_rlhf import rlhf_html
from kubeforge.runner.state import ResourceState, StateStore
from kubeforge.stage import StageResult

GRPO = {"train_loss": 0.01, "reward": 0.45, "heldout_prompts": 22.0, "reward_before": 0.31, "reward_after": 0.62,
        "reward_gain": 0.31, "reward_model_before": 0.12, "reward_model_after": 0.5}


def _state(name: str, metrics: dict[str, float]) -> ResourceState:
    result = StageResult(succeeded=True, metrics=metrics)
    state = ResourceState(kind="RLHFJob", name=name, status=kinds.of("RLHFJob").lift(result, "", {}).fields)
    state.set_condition("Succeeded", "True", "Completed")
    return state


def test_rlhf_before_after_in_get_and_report(tmp_path: Path) -> None:
    states = [_state("chat-grpo", GRPO), _state("dpo", {"train_loss": 0.5, "reward": 0.2})]
    assert states[0].status["metrics"]["reward_gain"] == 0.31  # status.metrics carries them as the stage wrote them
    assert [key_metric(s) for s in states] == ["held-out reward 0.310->0.620", "reward=0.200"]
    table = rlhf_html(states)
    assert table is not None and table.count("<tr>") == 2  # header + the one job that measured it
    assert "0.3100" in table and "0.6200" in table and "+0.3100" in table and "dpo" not in table
    assert rlhf_html(states[1:]) is None
    page = write_html(StateStore(tmp_path / "wd"), states).read_text()
    assert "RLHF: held-out reward before / after" in page and "+0.3100" in page
