"""Evaluation and benchmark Dataset API: prompt variants, thresholds, metric options, cross-object checks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge import crdgen
from kubeforge.api.v1alpha1 import KINDS
from kubeforge.api.v1alpha1.dataset import DatasetTask
from kubeforge.api.v1alpha1.evaluation import DATASET_TASKS, TASK_METRICS, EvalTask, Evaluation
from kubeforge.cli import app
from kubeforge.manifests import ManifestError, parse
from kubeforge.runner.graph import compatibility_problems, load_pipeline
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]

MC_EVAL: dict[str, Any] = {
    "model": {"uri": "org/model"},
    "dataset": {"name": "mmlu", "split": "test"},
    "taskType": "multiple-choice",
    "metrics": ["accuracy", "acc_norm"],
}


def body(kind: str, spec: dict[str, Any], name: str = "x") -> dict[str, Any]:
    return {"apiVersion": "kubeforge.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def evaluation(**updates: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MC_EVAL)
    spec.update(updates)
    return body("Evaluation", {k: v for k, v in spec.items() if v is not None})


# (spec updates, message in the error; also the message of a CEL rule in the CRD)
INVALID: list[tuple[dict[str, Any], str]] = [
    ({"thresholds": [{"metric": "accuracy", "min": 0.9, "max": 0.5}]}, "threshold min must be <= max"),
    ({"prompts": [{"name": "a"}, {"name": "a"}]}, "prompts[].name must be unique"),
    ({"prompts": [{"name": "a", "format": "cloze", "chainOfThought": {}}]}, "chainOfThought needs format lettered"),
    ({"thresholds": [{"metric": "accuracy", "min": 0.5, "variant": "nope"}], "prompts": [{"name": "a"}]},
     "thresholds[].variant must name one of prompts[].name"),
    ({"thresholds": [{"metric": "accuracy", "min": 0.5, "variant": "a"}]},
     "thresholds[].variant must name one of prompts[].name"),
    ({"taskType": "classification", "metrics": ["accuracy"], "prompts": [{"name": "a"}]},
     "prompts need taskType generation, multiple-choice or numeric-answer"),
    ({"taskType": "numeric-answer", "metrics": ["accuracy"], "prompts": [{"name": "a", "format": "lettered"}]},
     "prompts[].format needs taskType multiple-choice"),
    ({"taskType": "generation", "metrics": ["rougeL"], "prompts": [{"name": "a", "chainOfThought": {}}]},
     "prompts[].chainOfThought needs taskType multiple-choice or numeric-answer"),
    ({"metrics": ["exact_match_strict"]}, "metrics must suit taskType"),
]


@pytest.mark.parametrize(("updates", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_evaluations_are_rejected_with_a_cel_twin(updates: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse(evaluation(**updates), "e.yaml#0")
    assert message in str(err.value)
    assert message in _cel_messages(Evaluation), f"{message!r} has no CEL twin"


def _cel_messages(model: Any) -> str:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.extend(r["message"] for r in node.get("x-kubernetes-validations", []))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(crdgen.crd(model))
    return "\n".join(found)


def test_threshold_bounds_equal_and_open_are_fine() -> None:
    ev = parse(evaluation(thresholds=[{"metric": "accuracy", "min": 0.5, "max": 0.5}, {"metric": "acc_norm",
                                                                                      "max": 1}]))
    assert isinstance(ev, Evaluation) and ev.spec.thresholds is not None
    assert ev.spec.thresholds[0].passes(0.5) and not ev.spec.thresholds[0].passes(0.51)


def test_full_prompt_spec_round_trips_and_keeps_defaults() -> None:
    spec = {
        "prompts": [
            {"name": "five-shot", "format": "lettered", "fewShot": {"shots": 5, "split": "train"}},
            {"name": "cot", "system": "Think.", "chat": True, "stop": ["Q:"],
             "chainOfThought": {"trigger": "Let's think step by step.", "answerTrigger": "So the answer is"}},
        ],
        "thresholds": [{"metric": "accuracy", "min": 0.3, "variant": "five-shot"}],
        "metricOptions": {"bleu": {"effectiveOrder": True, "tokenize": "zh"}, "rouge": {"tokenizer": "unicode"},
                          "exactMatch": {"ignoreCase": True, "ignorePunctuation": True, "ignoreArticles": True,
                                         "regexesToIgnore": [","]},
                          "perplexity": {"maxLength": 512, "stride": 256}},
    }
    ev = parse(evaluation(**spec))
    assert isinstance(ev, Evaluation)
    again = parse({**ev.to_wire(), "metadata": {"name": "x"}})
    assert again.to_wire() == ev.to_wire()
    assert ev.spec.variant_names() == ["five-shot", "cot"]
    fs = ev.spec.prompts[1].few_shot  # type: ignore[index]
    assert (fs.shots, fs.split, fs.sampler, fs.seed, fs.same_subject) == (0, "train", "first", 1234, True)
    assert parse(evaluation()).spec.variant_names() == ["default"]  # type: ignore[attr-defined]


def test_metric_and_dataset_tables_cover_every_task() -> None:
    assert set(DATASET_TASKS) == set(EvalTask) == set(TASK_METRICS)
    assert DATASET_TASKS[EvalTask.MULTIPLE_CHOICE] == (DatasetTask.MULTIPLE_CHOICE,)
    assert DATASET_TASKS[EvalTask.NUMERIC_ANSWER] == (DatasetTask.QUESTION_ANSWER,)


@pytest.mark.parametrize(("spec", "message"), [
    ({"task": "question-answer", "columns": {"choiceColumns": ["A", "B"]}},
     "columns.choiceColumns needs task multiple-choice"),
    ({"task": "multiple-choice", "columns": {"choices": "opts", "choiceColumns": ["A", "B"]}},
     "set columns.choices or columns.choiceColumns, not both"),
    ({"task": "question-answer", "split": {"stratify": True}}, "split.stratify needs task classification or"),
])
def test_benchmark_dataset_rules(spec: dict[str, Any], message: str) -> None:
    full = {"source": {"uris": ["file:///x.jsonl"]}, **spec}
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(body("Dataset", full))
    assert message in _cel_messages(KINDS["Dataset"])


def test_benchmark_datasets_validate() -> None:
    ds = parse(body("Dataset", {"task": "multiple-choice", "source": {"uris": ["hf://cais/mmlu"]},
                                "columns": {"choiceColumns": ["A", "B", "C", "D"], "subject": "topic"},
                                "split": {"stratify": True}}))
    assert ds.spec.task == DatasetTask.MULTIPLE_CHOICE  # type: ignore[attr-defined]
    parse(body("Dataset", {"task": "question-answer", "source": {"uris": ["x.jsonl"]},
                           "columns": {"question": "q", "answer": "a", "rationale": "why"}}))


# --------------------------------------------------------------------------------- cross-object checks


def _dataset(name: str, task: str, **split: float) -> dict[str, Any]:
    return body("Dataset", {"task": task, "source": {"uris": ["file:///x.jsonl"]},
                            "split": {"train": 0.8, "validation": 0.1, "test": 0.1, **split}}, name)


def _problems(*docs: dict[str, Any]) -> list[str]:
    return compatibility_problems([(parse(d, f"m.yaml#{i}"), f"m.yaml#{i}") for i, d in enumerate(docs)])


def test_evaluation_dataset_task_must_feed_the_task_type() -> None:
    assert _problems(_dataset("mmlu", "multiple-choice"), evaluation()) == []
    (line,) = _problems(_dataset("mmlu", "instruction"), evaluation())
    assert line == (
        "m.yaml#1: spec.dataset.name: Dataset/mmlu has task instruction, which cannot feed taskType "
        "multiple-choice; it needs a Dataset with task multiple-choice"
    )
    gsm = evaluation(taskType="numeric-answer", metrics=["exact_match_strict"])
    assert _problems(_dataset("mmlu", "question-answer"), gsm) == []
    assert "needs a Dataset with task question-answer" in _problems(_dataset("mmlu", "text"), gsm)[0]
    # a Dataset of the same name in another namespace is not the one read
    other = _dataset("mmlu", "instruction")
    other["metadata"]["namespace"] = "elsewhere"
    assert _problems(other, evaluation()) == []


def test_empty_evaluated_and_few_shot_splits_are_reported() -> None:
    ev = evaluation(prompts=[{"name": "a", "fewShot": {"shots": 5, "split": "validation"}}])
    problems = _problems(_dataset("mmlu", "multiple-choice", train=0.9, validation=0.0, test=0.1), ev)
    assert problems == [
        "m.yaml#1: spec.prompts[0].fewShot.split: Dataset/mmlu puts no records in split validation (its "
        "split.validation is 0); draw exemplars from a split it fills"
    ]
    problems = _problems(_dataset("mmlu", "multiple-choice", train=1.0, validation=0.0, test=0.0), evaluation())
    assert problems[0].startswith("m.yaml#1: spec.dataset.split: Dataset/mmlu puts no records in split test")


def test_validate_cli_and_run_reject_an_unfeedable_evaluation(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all([_dataset("mmlu", "instruction"), evaluation()]))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "Dataset/mmlu has task instruction, which cannot feed taskType multiple-choice" in result.output
    with pytest.raises(ManifestError, match="cannot feed taskType multiple-choice"):
        load_pipeline([path])
    good = CliRunner().invoke(app, ["validate", str(ROOT / "examples" / "benchmarks")])
    assert good.exit_code == 0, good.output
    assert "ok Evaluation/mc-eval" in good.output and "ok Evaluation/gsm-eval" in good.output


def test_benchmark_example_is_a_runnable_pipeline() -> None:
    pipeline = load_pipeline([ROOT / "examples" / "benchmarks"])
    order = [n.ref for n in pipeline]
    assert order.index("Dataset/qa-sample") < order.index("Dataset/bench-corpus") < order.index("TrainingJob/bench-lm")
    assert order[-2:] == ["Evaluation/mc-eval", "Evaluation/gsm-eval"]
    mc = pipeline.find("Evaluation/mc-eval").resource
    assert [p.name for p in mc.spec.prompts] == [  # type: ignore[attr-defined]
        "zero-shot-cloze", "zero-shot-lettered", "five-shot-lettered", "few-shot-cot"]
    data = ROOT / "examples" / "benchmarks" / "data"
    assert len((data / "mc-sample.jsonl").read_text().splitlines()) == 41
    assert len((data / "qa-sample.jsonl").read_text().splitlines()) == 40
    # the kinds example's Dataset exists now and feeds its Evaluation
    kinds = load_pipeline([ROOT / "examples" / "kinds" / "evaluation-mmlu.yaml"])
    assert kinds.find("Dataset/mmlu").resource.spec.task == DatasetTask.MULTIPLE_CHOICE  # type: ignore[attr-defined]


def test_runner_lifts_variants_and_the_report_shows_the_table(tmp_path: Path) -> None:
    from kubeforge import kinds
    from kubeforge.runner.report import variant_table, write_html
    from kubeforge.runner.state import ResourceState, StateStore
    from kubeforge.stage import StageResult

    table = [{"name": "zero-shot", "metrics": {"accuracy": 0.25, "acc_norm": 0.3}},
             {"name": "five-shot", "metrics": {"accuracy": 0.5, "acc_norm": 0.45}}]
    result = StageResult(
        succeeded=True, metrics=table[0]["metrics"],
        details={"passed": False, "failedThresholds": ["accuracy[five-shot] 0.5 (want >= 0.6)"], "sampleCount": 20,
                 "reportUri": "file:///r/report.json", "variants": table},
    )
    status = kinds.of("Evaluation").lift(result, "", {}).fields
    assert status["variants"] == table and status["metrics"] == table[0]["metrics"] and "details" not in status
    store = StateStore(tmp_path / "wd")
    state = ResourceState(kind="Evaluation", name="mc-eval", status=status)
    assert variant_table(state) == (["accuracy", "acc_norm"], [(v["name"], v["metrics"]) for v in table])
    store.save(state)
    from kubeforge.runner.report import key_metric

    state.main_metric = "accuracy[five-shot]"
    state.set_condition("Passed", "False", "ThresholdsFailed", "x")
    assert key_metric(state) == "FAILED accuracy[five-shot]=0.500"
    page = write_html(store).read_text()
    assert "Evaluation prompt variants (variant x metric)" in page
    # the state file sorts map keys: metric columns come back sorted, the variant rows keep their order
    assert "<tr><th>variant</th><th>acc_norm</th><th>accuracy</th></tr>" in page
    assert "<tr><td>zero-shot (default)</td><td>0.3</td><td>0.25</td></tr>" in page
    assert "<tr><td>five-shot</td><td>0.45</td><td>0.5</td></tr>" in page
    assert "accuracy[five-shot] 0.5 (want &gt;= 0.6)" in page
