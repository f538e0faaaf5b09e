"""rlhf stage: the held-out reward of the policy is measured before and after online RL (greedy, same prompts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubeforge.api.v1alpha1.rlhfjob import RLHFJobSpec
from kubeforge_trainer import rlhf
from kubeforge_trainer.rlhf_heldout import heldout_split
from kubeforge_trainer.runtime import ProgressReporter

pytestmark = pytest.mark.ml


def test_grpo_reports_heldout_reward_before_and_after_and_improves_it(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    # a random policy repeats one short token; the reward wants 24 characters: GRPO must find longer tokens
    spec = {
        "algorithm": "grpo",
        "policy": {"uri": str(tiny_llama_dir)},
        "reward": {"functions": [{"name": "length", "targetLength": 24}]},
        "dataset": {"name": "prompts"},
        "klCoefficient": 0.0,
        "generation": {"numGenerations": 4, "maxCompletionLength": 8, "temperature": 1.0},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=8, batchSize=8, learningRate=2e-2, loggingSteps=1),
    }
    config = make_stage_config("RLHFJob", spec, tmp_path / "policy", {"dataset": tiny_dataset_dir("instruction")})
    result = rlhf.run(config, ProgressReporter(config))
    assert result.succeeded, result.message
    m = result.metrics
    assert m["heldout_prompts"] == 24  # the fixture's validation split, not the training prompts
    assert 0.0 <= m["reward_before"] <= 1.0 and 0.0 <= m["reward_after"] <= 1.0, m
    assert m["reward_gain"] == pytest.approx(m["reward_after"] - m["reward_before"])
    assert m["reward_after"] > m["reward_before"] + 0.05, m
    assert "reward_model_before" not in m  # only with a reward model plus functions
    assert "held-out reward" in result.message


def test_heldout_split_never_the_training_split() -> None:
    def spec(**dataset: Any) -> RLHFJobSpec:
        return RLHFJobSpec.model_validate(
            {
                "algorithm": "grpo",
                "policy": {"uri": "/m"},
                "reward": {"functions": [{"name": "length", "targetLength": 4}]},
                "dataset": {"name": "d", **dataset},
            }
        )

    assert heldout_split(spec()) == ["validation", "test"]
    assert heldout_split(spec(evalSplit="test")) == ["test", "validation"]
    assert heldout_split(spec(split="validation")) == ["test"]
    assert heldout_split(spec(evalSplit=None)) == ["validation", "test"]
