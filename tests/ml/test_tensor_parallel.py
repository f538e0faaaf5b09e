"""DeepSpeed AutoTP (tensorParallel 2) under `torchrun --nproc_per_node=2` on CPU (gloo) matches one process;
ZeRO-3 with and without CPU offload trains and saves full weights."""

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

pytestmark = [pytest.mark.ml, pytest.mark.slow]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(tmp_path: Path, name: str, config: Any, nproc: int) -> dict[str, Any]:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(config.dump_yaml())
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


def _first_losses(out: Path) -> list[float]:
    (state,) = (out / "checkpoints").glob("checkpoint-*/trainer_state.json")
    return [float(e["loss"]) for e in json.loads(state.read_text())["log_history"] if "loss" in e]


def test_autotp_two_ranks_matches_one_process(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    """TP=2 is one data-parallel replica split over two ranks: same batches, same losses as one process."""
    data = {"dataset": tiny_dataset_dir("text")}
    hparams = fast_hparams(maxSteps=6, batchSize=4, learningRate=1e-2, loggingSteps=1)
    runs = {
        "single": ({"strategy": "none"}, 1),
        "tp2": ({"strategy": "deepspeed", "processesPerNode": 2, "tensorParallel": 2, "zeroStage": 1}, 2),
    }
    results = {}
    for name, (dist, nproc) in runs.items():
        spec = {
            "method": "pretrain",
            "model": {"uri": str(tiny_llama_dir)},
            "dataset": {"name": "text"},
            "precision": "fp32",
            "distributed": dist,
            "hyperparameters": hparams,
            "checkpointing": {"intervalSteps": 6},
        }
        config = make_stage_config("TrainingJob", spec, tmp_path / name, data)
        results[name] = _run(tmp_path, name, config, nproc)
    single, tp = results["single"]["metrics"], results["tp2"]["metrics"]
    print(f"losses single={_first_losses(tmp_path / 'single')} tp2={_first_losses(tmp_path / 'tp2')}")
    print(f"train_loss_mean single={single['train_loss_mean']} tp2={tp['train_loss_mean']}")
    assert tp["global_step"] == single["global_step"] == 6
    assert _first_losses(tmp_path / "tp2") == pytest.approx(_first_losses(tmp_path / "single"), rel=1e-3)
    assert tp["train_loss_mean"] == pytest.approx(single["train_loss_mean"], rel=1e-3)

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    a = load_file(str(tmp_path / "single" / "model.safetensors"))
    b = load_file(str(tmp_path / "tp2" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # full (gathered) weights, not one rank's shard
        assert a[k].shape == b[k].shape, k
        assert torch.allclose(a[k], b[k], atol=1e-3), k
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tp2")
    assert model.config.hidden_size == 32
