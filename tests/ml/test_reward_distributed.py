"""RewardModel under `torchrun --nproc_per_node=2` on CPU (gloo): DDP and DeepSpeed ZeRO-2 agree."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [pytest.mark.ml, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _torchrun(tmp_path: Path, name: str, config: Any) -> dict[str, Any]:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(config.dump())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
        "-m", "kubeforge_trainer", config.stage, "--config", str(cfg),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return dict(json.loads((Path(config.output_uri) / "result.json").read_text()))


def test_reward_model_ddp_and_zero2_two_processes(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    data = {"dataset": tiny_dataset_dir("preference")}
    results = {}
    for strategy in ("ddp", "deepspeed"):
        spec = {
            "model": {"uri": str(tiny_llama_dir)},
            "dataset": {"name": "prefs", "evalSplit": None},  # ZeRO-2 cannot evaluate before training
            "precision": "fp32",
            "distributed": {"strategy": strategy, "processesPerNode": 2, "zeroStage": 2},
            "hyperparameters": fast_hparams(maxSteps=4, batchSize=4, learningRate=5e-3, loggingSteps=1),
        }
        config = make_stage_config("RewardModel", spec, tmp_path / strategy, data)
        results[strategy] = _torchrun(tmp_path, strategy, config)
    ddp, ds = results["ddp"], results["deepspeed"]
    assert ddp["succeeded"] and ds["succeeded"]
    assert ddp["metrics"]["global_step"] == ds["metrics"]["global_step"] == 4
    # Same seeded head and data: the first step is identical. Later steps drift a little: the gradients are
    # clipped (norm > 1) and DeepSpeed computes the norm over its partitions in another order.
    first = {}
    for out in ("ddp", "deepspeed"):
        (state,) = (tmp_path / out / "checkpoints").glob("checkpoint-*/trainer_state.json")
        first[out] = next(e["loss"] for e in json.loads(state.read_text())["log_history"] if "loss" in e)
        manifest = json.loads((tmp_path / out / "kubeforge-model.json").read_text())
        assert manifest["task"] == "sequence-classification" and not (tmp_path / out / "training_args.bin").exists()
    assert first["deepspeed"] == pytest.approx(first["ddp"], rel=1e-5)
    assert ds["metrics"]["train_loss_mean"] == pytest.approx(ddp["metrics"]["train_loss_mean"], rel=5e-2)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "deepspeed" / "model.safetensors"))
    assert a.keys() == b.keys() and any("score" in k for k in a)
    assert all(a[k].shape == b[k].shape and torch.isfinite(b[k]).all() for k in a)
