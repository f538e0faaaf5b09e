"""DeepSpeed AutoTP (spec.distributed.tensorParallel 2) under `torchrun --nproc_per_node=2` on CPU (gloo).

Two ranks of one tensor-parallel group are one data-parallel replica: they see the batches a single process
sees, so the losses must match a plain single-process run, and the saved model must be the full (gathered)
weights. Measured on the tiny models here: identical losses to the last printed digit (see -s output).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [pytest.mark.ml]

TP2 = {"strategy": "deepspeed", "processesPerNode": 2, "tensorParallel": 2, "zeroStage": 1}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(tmp_path: Path, name: str, config: Any, nproc: int) -> dict[str, Any]:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(config.dump())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launch = [sys.executable]
    if nproc > 1:
        launch += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}"]
    cmd = [*launch, "-m", "kubeforge_trainer", config.stage, "--config", str(cfg)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return dict(json.loads((Path(config.output_uri) / "result.json").read_text()))


def _losses(out: Path) -> list[float]:
    (state,) = (out / "checkpoints").glob("checkpoint-*/trainer_state.json")
    return [float(e["loss"]) for e in json.loads(state.read_text())["log_history"] if "loss" in e]


def _single_vs_tp2(tmp_path: Path, kind: str, spec: dict[str, Any], data: dict[str, Path], make: Any) -> None:
    for name, dist, nproc in (("single", {"strategy": "none"}, 1), ("tp2", TP2, 2)):
        config = make(kind, {**spec, "distributed": dist}, tmp_path / name, data)
        result = _run(tmp_path, name, config, nproc)
        assert result["succeeded"], result
    single, tp = _losses(tmp_path / "single"), _losses(tmp_path / "tp2")
    print(f"\n{kind} losses per step: single {single}\n{kind} losses per step: tp=2   {tp}")
    assert len(tp) == len(single) >= 4
    assert tp == pytest.approx(single, rel=1e-4)

    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "single" / "model.safetensors"))
    b = load_file(str(tmp_path / "tp2" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # the full (gathered) weights, not one rank's shard
        assert a[k].shape == b[k].shape, k
        assert torch.allclose(a[k], b[k], atol=1e-4), k


@pytest.fixture(scope="module")
def untied_gqa_llama_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path, tiny_llama_factory: Callable[..., Path]
) -> Path:
    """A tiny LLaMA with its own lm_head (not tied to the embeddings) and 2 key-value heads for 4 heads."""
    return tiny_llama_factory(tmp_path_factory.mktemp("tiny-llama-untied"), tiny_tokenizer_dir, kv_heads=2, tied=False)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tied", "untied-gqa"])
def test_autotp_two_ranks_match_one_process(
    tmp_path: Path,
    model: str,
    tiny_llama_dir: Path,
    untied_gqa_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    """Causal LM (TRL SFTTrainer). Untied: the lm_head must stay whole (TRL's fused head reads its weight)."""
    base = tiny_llama_dir if model == "tied" else untied_gqa_llama_dir
    spec = {
        "method": "pretrain",
        "model": {"uri": str(base)},
        "dataset": {"name": "text"},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=6, batchSize=4, learningRate=1e-2, loggingSteps=1),
        "checkpointing": {"intervalSteps": 6},
    }
    _single_vs_tp2(tmp_path, "TrainingJob", spec, {"dataset": tiny_dataset_dir("text")}, make_stage_config)

    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "tp2")
    assert loaded.config.num_key_value_heads == (4 if model == "tied" else 2)


@pytest.mark.slow
def test_autotp_reward_model_matches_one_process(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    """Sequence-classification head (TRL RewardTrainer): the `score` head is in no TP plan and stays whole."""
    spec = {
        "model": {"uri": str(tiny_llama_dir)},
        "dataset": {"name": "prefs", "evalSplit": None},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=4, batchSize=4, learningRate=5e-3, loggingSteps=1),
        "checkpointing": {"intervalSteps": 4},
    }
    _single_vs_tp2(tmp_path, "RewardModel", spec, {"dataset": tiny_dataset_dir("preference")}, make_stage_config)


def _spec(tp: int) -> Any:
    from kubeforge.api.v1alpha1.trainingjob import TrainingJobSpec

    dist = {"strategy": "deepspeed", "processesPerNode": tp, "tensorParallel": tp}
    return TrainingJobSpec.model_validate(
        {"method": "pretrain", "model": {"uri": "/m"}, "dataset": {"name": "d"}, "distributed": dist}
    )


def test_tensor_parallel_above_key_value_heads_is_refused(untied_gqa_llama_dir: Path) -> None:
    from kubeforge_trainer.runtime import StageError
    from kubeforge_trainer.tensor_parallel import prepare_tensor_parallel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(untied_gqa_llama_dir)
    prepare_tensor_parallel(_spec(2), model)  # 2 key-value heads: fine
    assert model._tp_plan["lm_head"] == "embedding_rowwise"  # DeepSpeed's plain SKIP: the head stays whole
    with pytest.raises(StageError, match=r"tensorParallel 4 exceeds the model's 2 key-value heads.*<= 2"):
        prepare_tensor_parallel(_spec(4), model)


def test_model_without_a_tensor_parallel_plan_is_refused() -> None:
    from kubeforge_trainer.runtime import StageError
    from kubeforge_trainer.tensor_parallel import check_tensor_parallel
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    with pytest.raises(StageError, match=r"model type gpt2 has no tensor-parallel plan.*zeroStage 3"):
        check_tensor_parallel(_spec(2), model)
