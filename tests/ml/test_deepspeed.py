"""DeepSpeed under `torchrun --nproc_per_node=2` on CPU (gloo): ZeRO-2 matches plain DDP; ZeRO-3 trains with and
without CPU offload and saves full weights. Tensor parallelism: tests/ml/test_tensor_parallel.py."""

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
from kubeforge.api.v1alpha1.trainingjob import TrainingJobSpec
from kubeforge_trainer.deepspeed_config import deepspeed_config_for

pytestmark = [pytest.mark.ml, pytest.mark.slow]


def test_config_comes_from_the_shared_generator() -> None:
    from kubeforge.deepspeed import get_deepspeed_config

    spec = TrainingJobSpec.model_validate(
        {
            "method": "sft",
            "model": {"uri": "/m"},
            "dataset": {"name": "d"},
            "precision": "bf16",
            "distributed": {"strategy": "deepspeed", "zeroStage": 3, "offloadParams": True},
        }
    )
    cfg = deepspeed_config_for(spec)
    assert cfg == get_deepspeed_config(spec)
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["bf16"]["enabled"]
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def _free_port() -> int:
    import socket

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


def test_zero2_two_processes_matches_ddp(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    data = {"dataset": tiny_dataset_dir("text")}
    results = {}
    for strategy in ("ddp", "deepspeed"):
        spec = {
            "method": "pretrain",
            "model": {"uri": str(tiny_llama_dir)},
            "dataset": {"name": "text"},
            "precision": "fp32",
            "distributed": {"strategy": strategy, "processesPerNode": 2, "zeroStage": 2},
            "hyperparameters": fast_hparams(maxSteps=6, batchSize=4, learningRate=1e-2, loggingSteps=1),
        }
        config = make_stage_config("TrainingJob", spec, tmp_path / strategy, data)
        results[strategy] = _torchrun(tmp_path, strategy, config)
    ddp, ds = results["ddp"]["metrics"], results["deepspeed"]["metrics"]
    assert ds["global_step"] == ddp["global_step"] == 6
    assert ds["train_loss_mean"] == pytest.approx(ddp["train_loss_mean"], rel=1e-4)
    assert ds["train_loss"] == pytest.approx(ddp["train_loss"], rel=1e-4)

    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "deepspeed" / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k


def test_zero3_with_and_without_cpu_offload_two_processes(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    """ZeRO-3 partitions every parameter over the two ranks; offload moves parameters and optimiser state to
    CPU. Both train (same losses: offload changes where the numbers live, not the arithmetic) and save the full
    weights, gathered from the partitions, as loadable safetensors."""
    data = {"dataset": tiny_dataset_dir("text")}
    runs = {
        "zero3": {"strategy": "deepspeed", "processesPerNode": 2, "zeroStage": 3},
        "zero3-offload": {
            "strategy": "deepspeed", "processesPerNode": 2, "zeroStage": 3,
            "offloadParams": True, "offloadOptimizer": True,
        },
    }  # fmt: skip
    results = {}
    for name, dist in runs.items():
        spec = {
            "method": "pretrain",
            "model": {"uri": str(tiny_llama_dir)},
            "dataset": {"name": "text"},
            "precision": "fp32",
            "distributed": dist,
            "hyperparameters": fast_hparams(maxSteps=4, batchSize=4, learningRate=1e-2, loggingSteps=1),
        }
        config = make_stage_config("TrainingJob", spec, tmp_path / name, data)
        results[name] = _torchrun(tmp_path, name, config)
    z3, off = results["zero3"]["metrics"], results["zero3-offload"]["metrics"]
    assert z3["global_step"] == off["global_step"] == 4
    assert off["train_loss_mean"] == pytest.approx(z3["train_loss_mean"], rel=1e-4)
    assert z3["train_loss"] < z3["train_loss_initial"]

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    init = load_file(str(tiny_llama_dir / "model.safetensors"))
    for name in runs:
        saved = load_file(str(tmp_path / name / "model.safetensors"))
        assert saved.keys() == init.keys()
        assert all(saved[k].shape == init[k].shape for k in init), "ZeRO-3 shards saved instead of full weights"
        assert any(not torch.allclose(saved[k], init[k]) for k in init)
        AutoModelForCausalLM.from_pretrained(tmp_path / name)
