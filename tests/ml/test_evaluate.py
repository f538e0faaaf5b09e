"""The evaluate stage on tiny local models: every task type, reports, thresholds, independent checks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubeforge.api.v1alpha1.evaluation import EvaluationStatus
from kubeforge_trainer import dataio, evaluate, metrics
from kubeforge_trainer.runtime import ProgressReporter, StageError

pytestmark = pytest.mark.ml

COLORS = {"sky": "blue", "grass": "green", "sun": "yellow", "snow": "white", "coal": "black", "blood": "red"}
LEGS = {"cat": 4, "bird": 2, "spider": 8, "fish": 0, "ant": 6, "cow": 4}
EOS = "<|eos|>"


def mc_records() -> list[dict[str, Any]]:
    """MMLU-style: 4 options, the answer as an index or a letter."""
    palette = sorted(set(COLORS.values()))
    out = []
    for i, (thing, color) in enumerate(sorted(COLORS.items())):
        wrong = [c for c in palette if c != color][i % 3 : i % 3 + 3]
        choices = sorted([color, *wrong])
        gold = choices.index(color)
        out.append(
            {
                "question": f"What color is the {thing}?",
                "choices": choices,
                "answer": "ABCD"[gold] if i % 2 else str(gold),
            }
        )
    return out


def numeric_records() -> list[dict[str, Any]]:
    """GSM8K-style: reasoning text, then `#### n`."""
    return [
        {"question": f"How many legs does a {a} have?", "answer": f"A {a} walks on legs.\n#### {n}"}
        for a, n in sorted(LEGS.items())
    ]


def generation_records() -> list[dict[str, Any]]:
    """The same facts in the multiple-choice prompt format, so one memorised set serves three tasks."""
    return [
        {"prompt": evaluate.MC_PROMPT.format(question=f"What color is the {t}?"), "completion": f" {c}"}
        for t, c in sorted(COLORS.items())
    ]


def training_pairs() -> list[tuple[str, str]]:
    """(prompt, answer) pairs the tiny LM memorises: colours (generation, multiple-choice) and legs (numeric)."""
    pairs = [(r["prompt"], r["completion"]) for r in generation_records()]
    pairs += [(evaluate.NUMERIC_PROMPT.format(question=q["question"]), " " + q["answer"].split("#### ")[1])
              for q in numeric_records()]
    return pairs


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One torch thread: on 2 shared cores, two threads run tiny models ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(model: Any, batches: Callable[[], dict[str, Any]], steps: int, lr: float = 3e-3) -> None:
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batches()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.fixture(scope="module")
def trained_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer LLaMA trained (plain torch, answer-only loss, ~3 s) until it reproduces `training_pairs()`."""
    import torch
    from kubeforge_trainer.modelio import train_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    pairs = training_pairs()
    tok = train_tokenizer([p + a for p, a in pairs] * 3 + ["the cat sat on the mat."], vocab_size=400)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    enc = tok([p + a + EOS for p, a in pairs], padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    for i, (prompt, _) in enumerate(pairs):  # learn the answers, not the questions
        labels[i, : len(tok(prompt)["input_ids"])] = -100
    _train(model, lambda: {**enc, "labels": labels}, steps=100, lr=3e-3)
    out = tmp_path_factory.mktemp("trained-lm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


CLS_TEXTS = [(f"this {w} is good and fine", "positive") for w in ("cat", "dog", "owl", "cow", "fox", "bee")] + [
    (f"that {w} is bad and awful", "negative") for w in ("cat", "dog", "owl", "cow", "fox", "bee")
]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A tiny LLaMA sequence classifier with named labels, trained to separate CLS_TEXTS."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id, num_labels=2,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
    )
    model = LlamaForSequenceClassification(cfg)
    enc = tok([t for t, _ in CLS_TEXTS], padding=True, return_tensors="pt")
    labels = torch.tensor([cfg.label2id[lab] for _, lab in CLS_TEXTS])
    _train(model, lambda: {**enc, "labels": labels}, steps=60)
    out = tmp_path_factory.mktemp("classifier")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def regressor(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A random single-output LLaMA regression head."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(1)
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id, num_labels=1,
    )
    out = tmp_path_factory.mktemp("regressor")
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def dataset(root: Path, records: list[dict[str, Any]], split: str = "test") -> Path:
    """A prepared-Dataset directory holding `records` as one split (others empty)."""
    schema = dataio.schema_for(records, list(records[0]))
    for s in dataio.SPLITS:
        dataio.write_split(root, s, records if s == split else [], schema)
    return root


def run_eval(
    make_stage_config: Callable[..., Any], tmp_path: Path, model: Path, data: Path, spec: dict[str, Any]
) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    full = {"model": {"uri": str(model)}, "dataset": {"name": "d", "split": "test"}, **spec}
    cfg = make_stage_config("Evaluation", full, tmp_path / "out", inputs={"model": model, "dataset": data})
    result = evaluate.run(cfg, ProgressReporter(cfg))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert result.succeeded and result.details is not None
    n_variants = len({s.get("variant") for s in samples})  # one sample per record and prompt variant
    assert result.details["sampleCount"] == report["sampleCount"] == len(samples) // n_variants
    assert result.details["reportUri"].endswith("/report.json")
    assert result.metrics == report["metrics"]
    assert result.artifact is not None and result.artifact.digest
    status = EvaluationStatus.model_validate({**result.details, "metrics": result.metrics})
    assert status.sample_count == len(samples) // n_variants
    assert status.failed_thresholds == report["failedThresholds"]
    return result, report, samples


# ------------------------------------------------------------------------------------ tests


def test_classification_thresholds_and_independent_argmax(
    make_stage_config: Callable[..., Any], tmp_path: Path, classifier: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = dataset(tmp_path / "data", [{"text": t, "label": lab} for t, lab in CLS_TEXTS])
    spec = {
        "taskType": "classification",
        "metrics": ["accuracy", "f1", "precision", "recall"],
        "thresholds": [{"metric": "accuracy", "min": 0.9}, {"metric": "f1", "max": 0.5}],
    }
    result, report, samples = run_eval(make_stage_config, tmp_path, classifier, data, spec)
    # independent: one unpadded forward pass per text
    model = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    tok = AutoTokenizer.from_pretrained(classifier)
    with torch.no_grad():
        ids = [int(model(**tok(t, return_tensors="pt")).logits.argmax()) for t, _ in CLS_TEXTS]
    expected = [model.config.id2label[i] for i in ids]
    assert [s["prediction"] for s in samples] == expected
    assert [s["reference"] for s in samples] == [lab for _, lab in CLS_TEXTS]
    assert result.metrics["accuracy"] == pytest.approx(
        sum(e == lab for e, (_, lab) in zip(expected, CLS_TEXTS, strict=True)) / 12
    )
    assert result.metrics["accuracy"] >= 0.9  # the trained classifier separates the two classes
    assert result.details["passed"] is False
    assert result.details["failedThresholds"] == [f"f1 {result.metrics['f1']:.6g} (want <= 0.5)"]
    assert [t["passed"] for t in report["thresholds"]] == [True, False]
    assert (tmp_path / "out" / "plot.png").stat().st_size > 1000


def test_classification_passes_and_max_samples(
    make_stage_config: Callable[..., Any], tmp_path: Path, classifier: Path
) -> None:
    data = dataset(tmp_path / "data", [{"text": t, "label": int(lab == "positive")} for t, lab in CLS_TEXTS])
    spec = {"taskType": "classification", "metrics": ["accuracy"], "maxSamples": 5,
            "thresholds": [{"metric": "accuracy", "min": 0.5}]}
    result, report, samples = run_eval(make_stage_config, tmp_path, classifier, data, spec)
    assert len(samples) == 5 and report["sampleCount"] == 5
    assert result.details["passed"] is True and result.details["failedThresholds"] == []
    assert set(result.metrics) == {"accuracy"}


def test_unknown_label_is_one_line_error(
    make_stage_config: Callable[..., Any], tmp_path: Path, classifier: Path
) -> None:
    data = dataset(tmp_path / "data", [{"text": "x", "label": "neutral"}])
    with pytest.raises(StageError, match=r"label 'neutral' is not one of the model's labels \['negative', 'posi"):
        run_eval(make_stage_config, tmp_path, classifier, data, {"taskType": "classification", "metrics": ["f1"]})


def test_regression_matches_unpadded_forward(
    make_stage_config: Callable[..., Any], tmp_path: Path, regressor: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    recs = [{"text": t, "value": float(i) / 3} for i, (t, _) in enumerate(CLS_TEXTS)]
    data = dataset(tmp_path / "data", recs)
    spec = {"taskType": "regression", "metrics": ["mse", "rmse", "mae"], "thresholds": [{"metric": "mse", "max": 1e6}]}
    result, _, samples = run_eval(make_stage_config, tmp_path, regressor, data, spec)
    model = AutoModelForSequenceClassification.from_pretrained(regressor).eval()
    tok = AutoTokenizer.from_pretrained(regressor)
    with torch.no_grad():
        preds = [float(model(**tok(r["text"], return_tensors="pt")).logits[0, 0]) for r in recs]
    assert [s["prediction"] for s in samples] == pytest.approx(preds, abs=1e-5)
    expected = metrics.regression([r["value"] for r in recs], preds)
    assert result.metrics == pytest.approx(expected, abs=1e-5)
    assert result.details["passed"] is True


def test_generation_trained_model_scores_high(
    make_stage_config: Callable[..., Any], tmp_path: Path, trained_lm: Path
) -> None:
    data = dataset(tmp_path / "data", generation_records())
    spec = {
        "taskType": "generation",
        "metrics": ["bleu", "nist", "rouge1", "rouge2", "rougeL", "exact_match"],
        "generation": {"maxNewTokens": 8},
        "thresholds": [{"metric": "exact_match", "min": 0.99}, {"metric": "bleu", "min": 101}],
    }
    result, _, samples = run_eval(make_stage_config, tmp_path, trained_lm, data, spec)
    assert [s["prediction"] for s in samples] == [r["completion"].strip() for r in generation_records()]
    assert result.metrics["exact_match"] == 1.0 and result.metrics["rougeL"] == pytest.approx(1.0)
    assert result.metrics["bleu"] == pytest.approx(metrics.bleu([s["prediction"] for s in samples],
                                                                [s["reference"] for s in samples]))
    assert result.details["failedThresholds"] == [f"bleu {result.metrics['bleu']:.6g} (want >= 101)"]


def test_generation_chat_records_sampling_is_seeded(
    make_stage_config: Callable[..., Any], tmp_path: Path, trained_lm: Path
) -> None:
    """Chat records: the prompt is the chat template up to the last turn, the reference that turn."""
    recs = [
        {"messages": [{"role": "user", "content": f"color of {t}?"}, {"role": "assistant", "content": c}]}
        for t, c in sorted(COLORS.items())
    ]
    data = dataset(tmp_path / "data", recs)
    spec = {"taskType": "generation", "metrics": ["rougeL"], "generation": {"maxNewTokens": 4, "temperature": 0.8}}
    _, _, first = run_eval(make_stage_config, tmp_path, trained_lm, data, spec)
    _, _, second = run_eval(make_stage_config, tmp_path, trained_lm, data, spec)
    assert [s["reference"] for s in first] == [c for _, c in sorted(COLORS.items())]
    assert first[0]["input"].endswith("<|assistant|>\n") and "color of blood?" in first[0]["input"]
    assert [s["prediction"] for s in first] == [s["prediction"] for s in second]


def test_language_modeling_perplexity_matches_hf_loss(
    make_stage_config: Callable[..., Any], tmp_path: Path, trained_lm: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["the cat sat on the mat.", generation_records()[0]["prompt"] + generation_records()[0]["completion"], "ok"]
    data = dataset(tmp_path / "data", [{"text": t} for t in texts])
    spec = {
        "taskType": "language-modeling",
        "metrics": ["perplexity"],
        "thresholds": [{"metric": "perplexity", "max": 1e9}],
    }
    result, report, samples = run_eval(make_stage_config, tmp_path, trained_lm, data, spec)
    model = AutoModelForCausalLM.from_pretrained(trained_lm).eval()
    tok = AutoTokenizer.from_pretrained(trained_lm)
    nll, n, per_text = 0.0, 0, []
    with torch.no_grad():
        for t in texts:  # token-weighted mean of HF's own per-text loss
            ids = tok(t, return_tensors="pt")["input_ids"]
            if ids.shape[1] > 1:
                loss = float(model(input_ids=ids, labels=ids).loss)
                nll += loss * (ids.shape[1] - 1)
                n += ids.shape[1] - 1
                per_text.append(math.exp(loss))
            else:
                per_text.append(None)
    assert report["tokens"] == n
    assert result.metrics["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert [s["score"] for s in samples] == pytest.approx(per_text, rel=1e-5)
    assert result.metrics["perplexity"] > 1.0


def test_multiple_choice_picks_most_likely_option(
    make_stage_config: Callable[..., Any], tmp_path: Path, trained_lm: Path, tiny_llama_dir: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recs = mc_records()
    data = dataset(tmp_path / "data", recs)
    spec = {"taskType": "multiple-choice", "metrics": ["accuracy"], "thresholds": [{"metric": "accuracy", "min": 0.9}]}
    result, report, samples = run_eval(make_stage_config, tmp_path, trained_lm, data, spec)
    assert report["chanceAccuracy"] == pytest.approx(0.25)
    assert result.metrics["accuracy"] == 1.0 and result.details["passed"] is True  # far above chance
    # deterministic check: the summed option log-likelihood, recomputed one sequence at a time
    model = AutoModelForCausalLM.from_pretrained(trained_lm).eval()
    tok = AutoTokenizer.from_pretrained(trained_lm)
    for r, s in zip(recs, samples, strict=True):
        ctx_len = len(tok(evaluate.MC_PROMPT.format(question=r["question"]))["input_ids"])
        lls = []
        for c in r["choices"]:
            ids = tok(evaluate.MC_PROMPT.format(question=r["question"]) + " " + c, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
            lls.append(float(logp[torch.arange(ctx_len - 1, ids.shape[1] - 1), ids[0, ctx_len:]].sum()))
        assert s["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        assert s["prediction"] == max(range(len(lls)), key=lls.__getitem__)
    # an untrained model is not better than guessing on this set
    out = tmp_path / "random"
    out.mkdir()
    random_result, _, _ = run_eval(make_stage_config, out, tiny_llama_dir, data, spec)
    assert random_result.metrics["accuracy"] < result.metrics["accuracy"]


def test_numeric_answer(make_stage_config: Callable[..., Any], tmp_path: Path, trained_lm: Path) -> None:
    data = dataset(tmp_path / "data", numeric_records())
    spec = {
        "taskType": "numeric-answer",
        "metrics": ["accuracy", "exact_match"],
        "generation": {"maxNewTokens": 6},
        "thresholds": [{"metric": "accuracy", "min": 0.8}],
    }
    result, _, samples = run_eval(make_stage_config, tmp_path, trained_lm, data, spec)
    assert [s["reference"] for s in samples] == [str(n) for _, n in sorted(LEGS.items())]
    assert result.metrics["accuracy"] == pytest.approx(sum(s["score"] for s in samples) / len(samples))
    assert result.metrics["accuracy"] >= 0.8 and result.details["passed"] is True
    assert result.metrics["exact_match"] == pytest.approx(
        sum(s["generated"] == s["reference"] for s in samples) / len(samples)
    )


def test_missing_column_via_cli(make_stage_config: Callable[..., Any], tmp_path: Path, trained_lm: Path) -> None:
    """`python -m kubeforge_trainer evaluate`: exit 1 and a one-line result naming the missing column."""
    data = dataset(tmp_path / "data", [{"text": "no question here"}])
    spec = {"model": {"uri": str(trained_lm)}, "dataset": {"name": "d", "split": "test"},
            "taskType": "multiple-choice", "metrics": ["accuracy"]}
    cfg = make_stage_config("Evaluation", spec, tmp_path / "out", inputs={"model": trained_lm, "dataset": data})
    (tmp_path / "config.yaml").write_text(cfg.dump())
    proc = subprocess.run(
        [sys.executable, "-m", "kubeforge_trainer", "evaluate", "--config", str(tmp_path / "config.yaml")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 1, proc.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["succeeded"] is False and result["reason"] == "MissingColumn"
    assert "'question'" in result["message"] and "['text']" in result["message"]


# ------------------------------------------------------------------------- prompt variants (spec.prompts)


def variants_of(result: Any) -> dict[str, dict[str, float]]:
    """status.variants (a list, ordered as spec.prompts) as {variant: {metric: value}}."""
    return {v["name"]: v["metrics"] for v in result.details["variants"]}


def mc_subject_records() -> list[dict[str, Any]]:
    """mc_records() with a subject and indices as answers (what a multiple-choice Dataset writes)."""
    out = []
    for r in mc_records():
        gold = evaluate.answer_index(r["answer"], r["choices"], 0)
        out.append({**r, "answer": gold, "subject": "colour_facts"})
    return out


def _manual_lls(model_dir: Path, context: str, continuations: list[str]) -> list[float]:
    """Sum of log p(continuation | context), one unbatched forward pass per option; sequences longer than
    the model's context + 1 lose their beginning (the harness's left truncation)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    limit = model.config.max_position_embeddings
    n_ctx = len(tok(context)["input_ids"])
    out = []
    for cont in continuations:
        ids = tok(context + cont, return_tensors="pt")["input_ids"]
        n_cont = ids.shape[1] - n_ctx
        ids = ids[:, -(limit + 1):]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids[:, :-1]).logits[0], -1)
        n = ids.shape[1]
        out.append(float(logp[torch.arange(n - 1 - n_cont, n - 1), ids[0, n - n_cont:]].sum()))
    return out


def test_multiple_choice_variants_table_thresholds_and_rendering(
    make_stage_config: Callable[..., Any], tmp_path: Path, trained_lm: Path
) -> None:
    recs = mc_subject_records()
    data = dataset(tmp_path / "data", recs)
    spec = {
        "taskType": "multiple-choice",
        "metrics": ["accuracy", "acc_norm"],
        "prompts": [
            {"name": "cloze", "format": "cloze", "header": ""},
            {"name": "lettered"},
            {"name": "lettered-2shot", "format": "lettered", "fewShot": {"shots": 2, "split": "test"}},
        ],
        "thresholds": [
            {"metric": "accuracy", "min": 0.9},
            {"metric": "acc_norm", "min": 1.01, "variant": "lettered-2shot"},
        ],
    }
    result, report, samples = run_eval(make_stage_config, tmp_path, trained_lm, data, spec)
    table = variants_of(result)
    assert list(table) == ["cloze", "lettered", "lettered-2shot"]
    assert report["variants"] == result.details["variants"] == [{"name": k, "metrics": v} for k, v in table.items()]
    assert all(set(v) == {"accuracy", "acc_norm"} for v in table.values())
    assert result.metrics == table["cloze"]  # status.metrics: the first variant
    assert table["cloze"]["accuracy"] == 1.0  # the model memorised the cloze answers
    assert result.details["failedThresholds"] == [
        f"acc_norm[lettered-2shot] {table['lettered-2shot']['acc_norm']:.6g} (want >= 1.01)"
    ]
    assert [t["variant"] for t in report["thresholds"]] == ["cloze", "lettered-2shot"]
    status = EvaluationStatus.model_validate({**result.details, "metrics": result.metrics})
    assert status.variants is not None and [v.name for v in status.variants] == list(table)
    assert len(samples) == 3 * len(recs) and [s["variant"] for s in samples[:: len(recs)]] == list(table)

    # cloze (no header) scores exactly what the legacy prompt scores
    legacy_dir = tmp_path / "legacy"
    legacy_dir.mkdir()
    legacy, _, legacy_samples = run_eval(make_stage_config, legacy_dir, trained_lm, data,
                                         {"taskType": "multiple-choice", "metrics": ["accuracy"]})
    assert legacy.metrics["accuracy"] == table["cloze"]["accuracy"]
    assert [s["loglikelihoods"] for s in legacy_samples] == [s["loglikelihoods"] for s in samples[: len(recs)]]

    # lettered 2-shot: the harness's MMLU string (subject header, the first two other records, letters)
    r0, r1, r2 = recs[0], recs[1], recs[2]

    def block(r: dict[str, Any]) -> str:
        return r["question"] + "\n" + "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(r["choices"])) + "\nAnswer:"

    expected = (
        "The following are multiple choice questions (with answers) about colour facts.\n\n"
        + block(r1) + " " + "ABCD"[r1["answer"]] + "\n\n"
        + block(r2) + " " + "ABCD"[r2["answer"]] + "\n\n"
        + block(r0)
    )
    two_shot = [s for s in samples if s["variant"] == "lettered-2shot"]
    assert two_shot[0]["input"] == expected[-500:]
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(trained_lm)(expected)["input_ids"]) > 128  # left-truncated
    lls = _manual_lls(trained_lm, expected, [" A", " B", " C", " D"])
    assert two_shot[0]["loglikelihoods"] == pytest.approx(lls, abs=1e-5)
    lettered = [s for s in samples if s["variant"] == "lettered"]
    assert all(s["prediction"] == s["predictionNorm"] for s in lettered)  # one-letter options: acc == acc_norm
    assert table["lettered"]["accuracy"] == table["lettered"]["acc_norm"]


def test_numeric_answer_variants_strict_flexible_and_cot(
    make_stage_config: Callable[..., Any], tmp_path: Path, trained_lm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Harness GSM8K extraction on real outputs, then CoT extraction and the two-stage trigger on canned ones."""
    recs = numeric_records()
    data = dataset(tmp_path / "data", recs)
    spec = {
        "taskType": "numeric-answer",
        "metrics": ["accuracy", "exact_match", "exact_match_strict", "exact_match_flexible"],
        "prompts": [{"name": "zero-shot"}],
        "generation": {"maxNewTokens": 6},
    }
    result, _, samples = run_eval(make_stage_config, tmp_path, trained_lm, data, spec)
    # the model answers " 4" (no `#### 4`): strict-match finds nothing, flexible-extract the number
    assert result.metrics["accuracy"] >= 0.8
    assert result.metrics["exact_match_strict"] == 0.0 and {s["strict"] for s in samples} == {"[invalid]"}
    assert result.metrics["exact_match_flexible"] == pytest.approx(
        sum(s["flexible"] == s["reference"] for s in samples) / len(samples)
    )
    assert result.metrics["exact_match_flexible"] == result.metrics["accuracy"]

    canned = {
        "Let's think step by step.": "A cat has four legs, so 4 legs. The answer is 4. Then 9",
        "Therefore": " 4 legs.",
    }
    calls: list[list[str]] = []

    def fake_generate(ctx: Any, model: Any, tok: Any, prompts: list[str], *args: Any, **kwargs: Any) -> list[str]:
        calls.append(prompts)
        key = "Therefore" if prompts[0].endswith("Therefore, the answer (arabic numerals) is") else \
            "Let's think step by step."
        return [canned[key] for _ in prompts]

    monkeypatch.setattr(evaluate, "generate", fake_generate)
    out = tmp_path / "cot"
    out.mkdir()
    spec = {
        "taskType": "numeric-answer",
        "metrics": ["accuracy", "exact_match_strict", "exact_match_flexible"],
        "prompts": [
            {"name": "zs-cot", "user": "Q: {question}\nA:", "chainOfThought": {}},
            {"name": "two-stage", "user": "Q: {question}\nA:",
             "chainOfThought": {"answerTrigger": "Therefore, the answer (arabic numerals) is"}},
        ],
    }
    result, _, samples = run_eval(make_stage_config, out, trained_lm, data, spec)
    assert calls[0][0] == "Q: How many legs does a ant have?\nA: Let's think step by step."
    table = variants_of(result)
    cat = [s for s in samples if s["variant"] == "zs-cot" and s["reference"] == "4"]
    # strict is gsm8k_cot's `The answer is (\-?[0-9\.\,]+).` verbatim: it captures "4." (the dot is
    # ignored when compared); flexible-extract takes the last number
    assert cat and all(s["strict"] == "4." and s["flexible"] == "9" for s in cat)
    n4 = sum(r["answer"].endswith("#### 4") for r in recs) / len(recs)
    assert table["zs-cot"] == {"accuracy": n4, "exact_match_strict": n4, "exact_match_flexible": 0.0}
    # two-stage: the second prompt is the reasoning plus the trigger; the answer comes from its output
    trigger = " Therefore, the answer (arabic numerals) is"
    assert calls[2][0] == calls[1][0] + canned["Let's think step by step."] + trigger
    assert table["two-stage"] == {"accuracy": n4, "exact_match_strict": n4, "exact_match_flexible": n4}


def test_perplexity_sliding_window_scores_every_token_once(
    make_stage_config: Callable[..., Any], tmp_path: Path, trained_lm: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    long_text = " ".join(r["prompt"] + r["completion"] for r in generation_records())
    texts = [long_text, "the cat sat on the mat."]
    data = dataset(tmp_path / "data", [{"text": t} for t in texts])
    window, stride = 16, 6
    spec = {"taskType": "language-modeling", "metrics": ["perplexity"],
            "metricOptions": {"perplexity": {"maxLength": window, "stride": stride}}}
    result, report, samples = run_eval(make_stage_config, tmp_path, trained_lm, data, spec)
    model = AutoModelForCausalLM.from_pretrained(trained_lm).eval()
    tok = AutoTokenizer.from_pretrained(trained_lm)
    total, count, per_text = 0.0, 0, []
    for t in texts:  # independent: HF's labels=-100 recipe; each window predicts `stride` new tokens
        ids = tok(t, return_tensors="pt")["input_ids"]
        n = ids.shape[1]
        nll, scored, prev_end = 0.0, 0, 1
        while prev_end < n:
            end = min(n, window if prev_end == 1 else prev_end + stride)
            begin = max(0, end - window)
            trg = end - prev_end
            chunk = ids[:, begin:end]
            labels = chunk.clone()
            labels[:, : chunk.shape[1] - trg] = -100
            with torch.no_grad():
                loss = float(model(input_ids=chunk, labels=labels).loss)
            nll += loss * trg
            scored += trg
            prev_end = end
        assert scored == n - 1
        total += nll
        count += scored
        per_text.append(math.exp(nll / scored))
    assert len(tok(long_text)["input_ids"]) > 3 * window
    assert report["tokens"] == count and report["windows"] > len(texts)
    assert result.metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert [s["score"] for s in samples] == pytest.approx(per_text, rel=1e-5)
    # the short text fits one window: the same number as without the options
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    _, _, plain = run_eval(make_stage_config, plain_dir, trained_lm, data,
                           {"taskType": "language-modeling", "metrics": ["perplexity"]})
    assert plain[1]["score"] == pytest.approx(samples[1]["score"], rel=1e-6)


def test_generation_variants_on_question_answer_records_and_chat(
    make_stage_config: Callable[..., Any], tmp_path: Path, trained_lm: Path
) -> None:
    recs = [{"question": f"What color is the {t}?", "answer": c} for t, c in sorted(COLORS.items())]
    data = dataset(tmp_path / "data", recs)
    spec = {
        "taskType": "generation",
        "metrics": ["exact_match", "rougeL", "bleu"],
        "generation": {"maxNewTokens": 4},
        "metricOptions": {"exactMatch": {"ignoreCase": True, "ignorePunctuation": True},
                          "bleu": {"effectiveOrder": True}},
        "prompts": [
            {"name": "qa"},
            {"name": "chat", "system": "Answer with one word.", "chat": True},
        ],
    }
    result, _, samples = run_eval(make_stage_config, tmp_path, trained_lm, data, spec)
    qa = [s for s in samples if s["variant"] == "qa"]
    assert qa[0]["input"] == "Question: What color is the blood?\nAnswer:"
    assert [s["prediction"].rstrip(".") for s in qa] == [r["answer"] for r in recs]
    assert variants_of(result)["qa"]["exact_match"] == 1.0  # "blue." == "blue" ignoring punctuation
    assert variants_of(result)["qa"]["bleu"] > 0  # one-word answers: effective order keeps BLEU defined
    chat = [s for s in samples if s["variant"] == "chat"]
    assert chat[0]["input"].startswith(
        "<|system|>\nAnswer with one word.\n<|user|>\nQuestion: What color is the blood?"
    )
    assert chat[0]["input"].endswith("<|assistant|>\n")


def test_variant_errors_before_the_model_loads(
    make_stage_config: Callable[..., Any], tmp_path: Path, trained_lm: Path
) -> None:
    data = dataset(tmp_path / "data", mc_subject_records())
    spec = {"taskType": "multiple-choice", "metrics": ["accuracy"],
            "prompts": [{"name": "five", "fewShot": {"shots": 5, "split": "train"}}]}
    with pytest.raises(StageError, match=r"draws exemplars from split 'train', which is empty"):
        run_eval(make_stage_config, tmp_path, trained_lm, data, spec)
    spec["prompts"] = [{"name": "many", "fewShot": {"shots": 6, "split": "test"}}]
    with pytest.raises(StageError, match=r"asks for 6 exemplars but split 'test' has 5 of subject 'colour_facts'"):
        run_eval(make_stage_config, tmp_path, trained_lm, data, spec)
    spec["prompts"] = [{"name": "odd", "user": "{prompt} {question}"}]
    with pytest.raises(StageError, match=r"user template names \['prompt'\]"):
        run_eval(make_stage_config, tmp_path, trained_lm, data, spec)


def test_perplexity_of_single_token_texts_is_a_clear_error(
    make_stage_config: Callable[..., Any], tmp_path: Path, trained_lm: Path
) -> None:
    data = dataset(tmp_path / "data", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(StageError, match="no text with at least two tokens"):
        run_eval(make_stage_config, tmp_path, trained_lm, data, {"taskType": "language-modeling",
                                                                  "metrics": ["perplexity"]})
