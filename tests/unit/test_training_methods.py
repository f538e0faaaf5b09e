"""TrainingJob methods classification/regression, method/Dataset-task checks (API, `kubeforge validate`,
the runner's graph, the operator's DependenciesReady), derived-Dataset column checks, RewardModel
distributed options."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from kubeforge.api.v1alpha1 import RewardModel, TrainingJob
from kubeforge.api.v1alpha1.trainingjob import dataset_task_problem
from kubeforge.builders import rewardmodel as rm_builder
from kubeforge.builders.workloads import stage_file
from kubeforge.cli import app
from kubeforge.deepspeed import DEEPSPEED_FILE
from kubeforge.manifests import ManifestError
from kubeforge.runner.graph import load_pipeline
from kubeforge.settings import OperatorSettings
from kubeforge.stage import build_stage_config, stage_name
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
KINDS_DIR = ROOT / "examples" / "kinds"


def _tj(method: str, **over: Any) -> TrainingJob:
    spec = {"method": method, "model": {"uri": "org/model"}, "dataset": {"name": "d"}, **over}
    return TrainingJob.model_validate({"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
                                       "metadata": {"name": "t"}, "spec": spec})


def test_classification_and_regression_methods_are_stages_with_checkpoints() -> None:
    for method in ("classification", "regression"):
        tj = _tj(method, peft={"method": "lora"})
        assert stage_name(tj) == method
        cfg = build_stage_config(tj, {}, "file:///store")
        assert cfg.stage == method and cfg.checkpoint_uri == "file:///store/default/trainingjob/t/checkpoints"
    with pytest.raises(ValueError, match=r"model\.architecture \(from scratch\) needs method pretrain"):
        _tj("classification", model={"architecture": {"family": "llama"}})
    with pytest.raises(ValueError, match=r"tokenizer\.trainVocabSize \(a new tokenizer\) needs method pretrain or sft"):
        _tj("regression", tokenizer={"trainVocabSize": 500})


def test_trainer_entrypoint_knows_the_new_stages() -> None:
    from kubeforge_trainer.__main__ import STAGES

    assert STAGES["classification"] == STAGES["regression"] == "kubeforge_trainer.classify"


@pytest.mark.parametrize(
    ("method", "task", "template", "needle"),
    [
        ("sft", "classification", False,
         "method sft needs a text/instruction/chat Dataset; Dataset reviews has task classification: "
         "use method: classification"),
        ("classification", "regression", False, "use method: regression"),
        ("regression", "text", False, "method regression needs a regression Dataset"),
        ("classification", "preference", False, "use a RewardModel or RLHFJob"),
        ("pretrain", "chat", False, "set the Dataset's processing.chatTemplate"),
        ("pretrain", "chat", True, None),
        ("pretrain", "classification", False, None),
        ("sft", "chat", False, None),
        ("classification", "classification", False, None),
        ("regression", "regression", False, None),
    ],
)
def test_method_dataset_task_pairs(method: str, task: str, template: bool, needle: str | None) -> None:
    why = dataset_task_problem(method, "reviews", task, template)
    if needle is None:
        assert why is None
    else:
        assert why is not None and needle in why and "\n" not in why


MISMATCH = """
apiVersion: kubeforge.io/v1alpha1
kind: Dataset
metadata: {name: reviews}
spec:
  task: classification
  source: {uris: ["s3://raw/reviews.jsonl"]}
  columns: {text: review, label: stars}
---
apiVersion: kubeforge.io/v1alpha1
kind: Dataset
metadata: {name: ratings}
spec:
  task: regression
  source: {fromDataset: {name: reviews}}
  columns: {value: score}
---
apiVersion: kubeforge.io/v1alpha1
kind: TrainingJob
metadata: {name: tj}
spec:
  method: sft
  model: {uri: "org/model"}
  dataset: {name: reviews}
---
apiVersion: kubeforge.io/v1alpha1
kind: Evaluation
metadata: {name: ev}
spec:
  model: {ref: {kind: TrainingJob, name: tj}}
  dataset: {name: reviews, split: test}
  taskType: classification
  metrics: [accuracy]
"""


def test_validate_and_runner_reject_cross_object_mismatches(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MISMATCH)
    with pytest.raises(ManifestError) as err:
        load_pipeline([path])
    problems = err.value.problems
    assert any("(TrainingJob/tj): spec.method: method sft needs a text/instruction/chat Dataset; Dataset reviews "
               "has task classification: use method: classification" in p for p in problems), problems
    assert any("(Dataset/ratings): spec.columns.value: column 'score' is not in the output of Dataset/reviews "
               "(task classification: columns label, text)" in p for p in problems), problems
    assert any("(Evaluation/ev): spec.taskType: classification cannot evaluate TrainingJob/tj, which trains "
               "method sft; use a language-model taskType" in p for p in problems), problems
    out = CliRunner().invoke(app, ["validate", str(path)])
    assert out.exit_code == 1 and "use method: classification" in out.output and "'score'" in out.output


def test_the_old_regression_example_is_caught_and_the_new_examples_validate(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(textwrap.dedent("""
        apiVersion: kubeforge.io/v1alpha1
        kind: Dataset
        metadata: {name: sentiment}
        spec:
          task: classification
          source: {uris: ["hf://acme/product-reviews"]}
          columns: {text: review, label: stars}
        ---
        apiVersion: kubeforge.io/v1alpha1
        kind: Dataset
        metadata: {name: ratings}
        spec:
          task: regression
          source: {fromDataset: {name: sentiment, split: all}}
          columns: {value: score}
        """))
    with pytest.raises(ManifestError, match="column 'score' is not in the output of Dataset/sentiment"):
        load_pipeline([old])
    for pair in (("dataset-classification.yaml", "trainingjob-classification.yaml"),
                 ("dataset-regression.yaml", "trainingjob-regression.yaml")):
        pipeline = load_pipeline([KINDS_DIR / f for f in pair])
        assert [k[0] for k in pipeline.order] == ["Dataset", "TrainingJob", "Evaluation"]
    out = CliRunner().invoke(app, ["validate", str(KINDS_DIR)])
    assert out.exit_code == 0, out.output


def test_derived_dataset_may_map_parent_columns(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(textwrap.dedent("""
        apiVersion: kubeforge.io/v1alpha1
        kind: Dataset
        metadata: {name: stars}
        spec:
          task: classification
          source: {uris: ["s3://raw/reviews.jsonl"]}
        ---
        apiVersion: kubeforge.io/v1alpha1
        kind: Dataset
        metadata: {name: stars-as-number}
        spec:
          task: regression
          source: {fromDataset: {name: stars}}
          columns: {value: label}
        ---
        apiVersion: kubeforge.io/v1alpha1
        kind: TrainingJob
        metadata: {name: lm}
        spec:
          method: pretrain
          model: {uri: "org/model"}
          dataset: {name: stars}
        """))
    assert len(load_pipeline([path]).order) == 3


def test_operator_sets_dependencies_ready_false_for_a_method_task_mismatch() -> None:
    from kubeforge.controllers import cache, deps, state, status

    state.configure()
    try:
        ds = {"apiVersion": "kubeforge.io/v1alpha1", "kind": "Dataset",
              "metadata": {"name": "reviews", "namespace": "ml", "generation": 1, "resourceVersion": "1"},
              "spec": {"task": "classification", "source": {"uris": ["s3://raw/x.jsonl"]}}, "status": {}}
        cache.remember(ds)
        body = {"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
                "metadata": {"name": "tj", "namespace": "ml", "generation": 1},
                "spec": {"method": "sft", "model": {"uri": "org/m"}, "dataset": {"name": "reviews"}}}
        resource = TrainingJob.model_validate(body)
        report = asyncio.run(deps.resolve_dependencies(resource, "file:///store"))
        assert not report.inputs_ready
        writer = status.StatusWriter.for_body(body)
        assert deps.apply_dependency_conditions(writer, report, "TrainingJob", status.SUCCEEDED) is False
        cond = writer.condition(status.DEPENDENCIES_READY)
        assert cond is not None and (cond["status"], cond["reason"]) == ("False", "IncompatibleDataset")
        assert cond["message"] == ("method sft needs a text/instruction/chat Dataset; Dataset reviews has task "
                                   "classification: use method: classification")
        main = writer.condition(status.SUCCEEDED)
        assert main is not None and (main["status"], main["reason"]) == ("False", "IncompatibleDataset")
        # A Dataset re-created with a fitting task clears it: not settled, keeps being looked at.
        assert "IncompatibleDataset" in status.RECOVERABLE

        ok = TrainingJob.model_validate({**body, "spec": {**body["spec"], "method": "classification"}})
        report = asyncio.run(deps.resolve_dependencies(ok, "file:///store"))
        assert not report.incompatible and report.pending  # only waiting for the Dataset to succeed
    finally:
        state.configure()


def _rm(distributed: dict[str, Any]) -> RewardModel:
    return RewardModel.model_validate({
        "apiVersion": "kubeforge.io/v1alpha1", "kind": "RewardModel",
        "metadata": {"name": "rm", "namespace": "ml", "uid": "u", "generation": 1},
        "spec": {"model": {"uri": "org/m"}, "dataset": {"name": "prefs"}, "resources": {"gpu": 2},
                 "distributed": distributed},
    })


def test_reward_model_takes_the_training_distributed_options() -> None:
    settings = OperatorSettings()
    children = rm_builder.get_children(_rm({"strategy": "ddp", "nodes": 2, "processesPerNode": 2}), {}, settings)
    kinds = [c["kind"] for c in children]
    assert kinds == ["Service", "Job"], kinds
    job = children[-1]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[0] == "torchrun" and "reward" in cmd

    children = rm_builder.get_children(_rm({"strategy": "deepspeed", "zeroStage": 3}), {}, settings)
    ds = json.loads(stage_file(children[-1], DEEPSPEED_FILE))
    assert ds["zero_optimization"]["stage"] == 3
    with pytest.raises(ValueError, match="offloadParams needs zeroStage 3"):
        _rm({"strategy": "deepspeed", "zeroStage": 2, "offloadParams": True})
