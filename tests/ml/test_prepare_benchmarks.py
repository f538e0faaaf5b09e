"""The prepare stage for benchmark-format Datasets: multiple-choice (MMLU) and question-answer (GSM8K)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from kubeforge.api.v1alpha1.dataset import Dataset, DatasetStatus
from kubeforge.stage import StageConfig, StageResult, build_stage_config
from kubeforge_trainer import dataio, prepare
from kubeforge_trainer.runtime import ProgressReporter, StageError

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "examples" / "benchmarks" / "data"


def make_config(tmp_path: Path, spec: dict[str, Any], name: str = "ds") -> StageConfig:
    ds = Dataset.model_validate({"metadata": {"name": name, "namespace": "t"}, "spec": spec})
    return build_stage_config(ds, {}, f"file://{tmp_path}/store", metrics_port=None)


def run(config: StageConfig) -> StageResult:
    return prepare.run(config, ProgressReporter(config))


def splits_of(config: StageConfig) -> dict[str, list[dict[str, Any]]]:
    out = Path(config.output_uri.removeprefix("file://"))
    return {s: pq.read_table(out / f"{s}.parquet").to_pylist() for s in dataio.SPLITS}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_multiple_choice_sample_answers_become_indices_and_subjects_stratify(tmp_path: Path) -> None:
    spec = {
        "task": "multiple-choice",
        "source": {"uris": [str(SAMPLES / "mc-sample.jsonl")]},
        "split": {"train": 0.5, "validation": 0.0, "test": 0.5, "seed": 7, "stratify": True},
    }
    cfg = make_config(tmp_path, spec)
    result = run(cfg)
    assert result.succeeded and result.details is not None
    raw = [json.loads(line) for line in (SAMPLES / "mc-sample.jsonl").read_text().splitlines()]
    assert result.details["removed"]["exactDuplicate"] == 1  # the sample carries one duplicate on purpose
    splits = splits_of(cfg)
    records = [r for s in splits.values() for r in s]
    assert len(records) == len(raw) - 1
    for r in records:
        assert set(r) == {"question", "choices", "answer", "subject", "rationale"}
        assert isinstance(r["answer"], int) and 0 <= r["answer"] < len(r["choices"])
        src = next(x for x in raw if x["question"] == r["question"])
        letter = src["answer"] if isinstance(src["answer"], str) else "ABCD"[src["answer"]]
        assert "ABCD"[r["answer"]] == letter  # letters and indices both map to the index
    # stratified by subject: each of the 4 subjects has the same share in train and test
    for name in ("train", "test"):
        subjects = {r["subject"] for r in splits[name]}
        assert len(subjects) == 4
    assert {len([r for r in splits["train"] if r["subject"] == s]) for s in {r["subject"] for r in records}} <= {4, 5}
    stats = result.details["statistics"]
    assert stats["subjects"] == 4 and stats["choices.mean"] == 4 and stats["rationale.share"] == 1.0
    assert sum(v for k, v in stats.items() if k.startswith("answer.")) == pytest.approx(1.0)
    DatasetStatus.model_validate(result.details)


def test_multiple_choice_choice_columns_csv_and_mapping(tmp_path: Path) -> None:
    """MMLU's CSV layout: question, A, B, C, D, answer letter; a missing option is dropped."""
    csv = tmp_path / "mmlu.csv"
    csv.write_text(
        "prompt,A,B,C,D,gold,topic\n"
        "What is 2 + 2?,3,4,5,6,B,math_basics\n"
        "Pick the vowel.,b,c,e,,C,letters\n"
        "Largest?,1,9,3,2,1,math_basics\n"
    )
    spec = {
        "task": "multiple-choice",
        "source": {"uris": [str(csv)]},
        "columns": {"question": "prompt", "choiceColumns": ["A", "B", "C", "D"], "answer": "gold", "subject": "topic"},
        "split": {"train": 0.34, "validation": 0.0, "test": 0.66, "seed": 1},
    }
    cfg = make_config(tmp_path, spec)
    run(cfg)
    records = sorted((r for s in splits_of(cfg).values() for r in s), key=lambda r: r["question"])
    assert [(r["question"], r["choices"], r["answer"], r["subject"]) for r in records] == [
        ("Largest?", ["1", "9", "3", "2"], 1, "math_basics"),
        ("Pick the vowel.", ["b", "c", "e"], 2, "letters"),
        ("What is 2 + 2?", ["3", "4", "5", "6"], 1, "math_basics"),
    ]


def test_multiple_choice_bad_answer_and_choices_are_one_line_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": "E"}])
    with pytest.raises(StageError, match=r"record 0: answer 'E' is neither an index 0..1, a letter A..B"):
        run(make_config(tmp_path, {"task": "multiple-choice", "source": {"uris": [str(path)]}}))
    path = write_jsonl(tmp_path / "y.jsonl", [{"question": "q", "choices": "a or b", "answer": 0}])
    with pytest.raises(StageError, match=r"record 0: choices is a string but not a JSON list"):
        run(make_config(tmp_path, {"task": "multiple-choice", "source": {"uris": [str(path)]}}))
    path = write_jsonl(tmp_path / "z.jsonl", [{"question": "q", "options": ["a", "b"], "answer": 0}])
    with pytest.raises(StageError, match=r"column 'choices' .* set spec.columns.choices"):
        run(make_config(tmp_path, {"task": "multiple-choice", "source": {"uris": [str(path)]}}))


def test_question_answer_sample_keeps_reasoning_and_dedups(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (SAMPLES / "qa-sample.jsonl").read_text().splitlines()]
    rows.append(dict(rows[0]))  # exact duplicate
    rows.append({"question": "  Mia has 3 red pens  and 4 blue pens. How many pens does she have? ",
                 "answer": rows[0]["answer"]})  # same after whitespace normalisation
    rows.append({"q": "no answer here", "question": None, "answer": "x"})  # null question: dropped
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    spec = {
        "task": "question-answer",
        "source": {"uris": [str(path)]},
        "columns": {"rationale": "why"},
        "split": {"train": 0.5, "validation": 0.0, "test": 0.5, "seed": 7},
    }
    with pytest.raises(StageError, match=r"column 'why' \(task question-answer field 'rationale'\) not found"):
        run(make_config(tmp_path, spec))
    spec["columns"] = {}
    cfg = make_config(tmp_path, spec)
    result = run(cfg)
    assert result.details is not None
    assert result.details["removed"]["exactDuplicate"] == 2 and result.details["removed"]["missingValues"] == 1
    records = [r for s in splits_of(cfg).values() for r in s]
    assert len(records) == 40
    assert all(set(r) == {"question", "answer"} for r in records)
    # collapseWhitespace (the default) joins the reasoning and `#### n` onto one line; the number survives
    assert all(" #### " in r["answer"] and "\n" not in r["answer"] for r in records)


def test_question_answer_rationale_column_and_kept_newlines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [
        {"q": f"What is {i} + {i}?", "a": str(2 * i), "why": f"{i} + {i} = {2 * i}.\nSo {2 * i}."} for i in range(10)
    ])
    spec = {
        "task": "question-answer",
        "source": {"uris": [str(path)]},
        "columns": {"question": "q", "answer": "a", "rationale": "why"},
        "processing": {"normalize": {"collapseWhitespace": False}},
    }
    cfg = make_config(tmp_path, spec)
    run(cfg)
    records = [r for s in splits_of(cfg).values() for r in s]
    assert all(set(r) == {"question", "answer", "rationale"} and "\n" in r["rationale"] for r in records)
