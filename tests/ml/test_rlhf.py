"""rlhf stage: GRPO (reward function / reward model), RLOO, online DPO and offline DPO on a tiny LLaMA."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from kubeforge_trainer import modelio, reward, rlhf
from kubeforge_trainer.runtime import ProgressReporter, StageError

pytestmark = pytest.mark.ml


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _changed(before: Path, after: Path) -> bool:
    a, b = _weights(before), _weights(after)
    return any(not torch.equal(a[k], b[k]) for k in a if k in b)


def _run(config: Any) -> Any:
    result = rlhf.run(config, ProgressReporter(config))
    assert result.succeeded, result.message
    m = result.metrics
    assert math.isfinite(m["train_loss"]) and m["reward"] is not None and math.isfinite(m["reward"]), m
    return result


def _online_spec(policy: Path, algorithm: str, reward_: dict[str, Any], hp: dict[str, Any]) -> dict[str, Any]:
    return {
        "algorithm": algorithm,
        "policy": {"uri": str(policy)},
        "reward": reward_,
        "dataset": {"name": "prompts"},
        "klCoefficient": 0.05,
        "generation": {"numGenerations": 4, "maxCompletionLength": 8, "temperature": 1.0},
        "precision": "fp32",
        "hyperparameters": hp,
    }


def test_grpo_with_reward_functions_changes_policy(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    spec = _online_spec(
        tiny_llama_dir,
        "grpo",
        {"functions": [{"name": "length", "targetLength": 12}, {"name": "keyword", "keywords": ["blue"]}]},
        fast_hparams(maxSteps=3, batchSize=8, learningRate=1e-2, loggingSteps=1),
    )
    out = tmp_path / "policy"
    result = _run(make_stage_config("RLHFJob", spec, out, {"dataset": tiny_dataset_dir("instruction")}))
    assert result.metrics["global_step"] == 3
    assert _changed(tiny_llama_dir, out)
    model, tok = modelio.load_for_inference(out)
    ids = tok("What color is the sky? Answer:", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]


def test_dpo_offline_changes_policy(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    spec = {
        "algorithm": "dpo",
        "policy": {"uri": str(tiny_llama_dir)},
        "dataset": {"name": "prefs"},
        "klCoefficient": 0.1,
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=10, learningRate=1e-2, loggingSteps=2),
    }
    out = tmp_path / "policy"
    result = _run(make_stage_config("RLHFJob", spec, out, {"dataset": tiny_dataset_dir("preference")}))
    m = result.metrics
    assert m["reward_final"] > 0 and m["reward_accuracy"] > 0.5, m  # chosen - rejected implicit reward margin
    assert _changed(tiny_llama_dir, out)


def test_grpo_and_online_dpo_with_reward_model(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    rm_spec = {
        "model": {"uri": str(tiny_llama_dir)},
        "dataset": {"name": "prefs"},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=4),
    }
    rm_dir = tmp_path / "rm"
    rm_config = make_stage_config("RewardModel", rm_spec, rm_dir, {"dataset": tiny_dataset_dir("preference")})
    assert reward.run(rm_config, ProgressReporter(rm_config)).succeeded

    hp = fast_hparams(maxSteps=2, batchSize=4, learningRate=1e-2, loggingSteps=1)
    for algorithm in ("grpo", "online-dpo"):
        spec = _online_spec(
            tiny_llama_dir, algorithm, {"uri": str(rm_dir), "functions": [{"name": "no-repetition", "weight": 0.5}]}, hp
        )
        out = tmp_path / algorithm
        inputs = {"dataset": tiny_dataset_dir("chat")}
        result = _run(make_stage_config("RLHFJob", spec, out, inputs))
        assert result.metrics["global_step"] == 2
        assert _changed(tiny_llama_dir, out), algorithm


def test_rloo_with_exact_match_and_lora(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    spec = _online_spec(
        tiny_llama_dir,
        "rloo",
        {"functions": [{"name": "exact-match"}, {"name": "format", "pattern": r"\.$", "weight": 0.5}]},
        fast_hparams(maxSteps=2, batchSize=4, learningRate=1e-2, loggingSteps=1),
    )
    spec["peft"] = {"method": "lora", "r": 4, "alpha": 8}
    out = tmp_path / "policy"
    _run(make_stage_config("RLHFJob", spec, out, {"dataset": tiny_dataset_dir("instruction")}))
    assert modelio.is_adapter_dir(out)


def test_group_size_mismatch_is_a_stage_error(
    tmp_path: Path, tiny_llama_dir: Path, tiny_dataset_dir: Callable[[str], Path], make_stage_config: Any
) -> None:
    spec = _online_spec(tiny_llama_dir, "grpo", {"functions": [{"name": "no-repetition"}]}, {"batchSize": 6})
    config = make_stage_config("RLHFJob", spec, tmp_path / "p", {"dataset": tiny_dataset_dir("instruction")})
    with pytest.raises(StageError, match="numGenerations 4 must divide"):
        rlhf.run(config, ProgressReporter(config))


def test_reward_function_missing_parameter_is_a_stage_error(
    tmp_path: Path, tiny_llama_dir: Path, tiny_dataset_dir: Callable[[str], Path], make_stage_config: Any
) -> None:
    spec = _online_spec(tiny_llama_dir, "grpo", {"functions": [{"name": "length"}]}, {"batchSize": 8})
    config = make_stage_config("RLHFJob", spec, tmp_path / "p", {"dataset": tiny_dataset_dir("instruction")})
    with pytest.raises(StageError, match=r"spec.reward.functions\[0\] \(length\) needs targetLength"):
        rlhf.run(config, ProgressReporter(config))
