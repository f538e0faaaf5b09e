"""examples/benchmarks end to end through `kubeforge run`: benchmark Datasets, a tiny model, prompt variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubeforge.cli import app
from typer.testing import CliRunner

pytestmark = [pytest.mark.ml, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_example_runs_and_reports_the_variant_table(tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    result = CliRunner().invoke(app, ["run", "-f", str(ROOT / "examples" / "benchmarks"), "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    states = {p.parent.name: json.loads(p.read_text()) for p in workdir.glob("resources/default/*/*/state.json")}
    mc = states["mc-eval"]["status"]
    assert [v["name"] for v in mc["variants"]] == [
        "zero-shot-cloze", "zero-shot-lettered", "five-shot-lettered", "few-shot-cot"]
    assert set(mc["variants"][0]["metrics"]) == {"accuracy", "acc_norm"}
    assert set(mc["variants"][3]["metrics"]) == {"accuracy"}  # chain of thought: the letter read, no acc_norm
    assert mc["metrics"] == mc["variants"][0]["metrics"] and mc["sampleCount"] == 20
    gsm = states["gsm-eval"]["status"]
    assert [v["name"] for v in gsm["variants"]] == ["zero-shot", "three-shot", "zero-shot-cot", "three-shot-cot"]
    assert all(set(v["metrics"]) == {"accuracy", "exact_match_strict", "exact_match_flexible"}
               for v in gsm["variants"])
    assert states["mc-sample"]["status"]["counts"] == {"input": 41, "train": 20, "validation": 0, "test": 20}
    page = (workdir / "report.html").read_text()
    assert "Evaluation prompt variants (variant x metric)" in page and "five-shot-lettered" in page
