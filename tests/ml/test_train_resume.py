"""Preemption: SIGKILL a running `python -m kubeforge_trainer sft` after a checkpoint, start it again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.ml

STEPS = 60


def _spec(model: Path, fast_hparams: Any) -> dict[str, Any]:
    return {
        "method": "sft",
        "model": {"uri": str(model)},
        "dataset": {"name": "instr"},
        "precision": "fp32",
        "hyperparameters": fast_hparams(maxSteps=STEPS, batchSize=4, learningRate=1e-3, loggingSteps=10),
        "checkpointing": {"intervalSteps": 10, "keep": 2, "resume": True},
    }


def _start(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "kubeforge_trainer", "sft", "--config", str(config_path)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_sigkill_then_restart_resumes_from_checkpoint(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
) -> None:
    data = {"dataset": tiny_dataset_dir("instruction")}
    spec = _spec(tiny_llama_dir, fast_hparams)

    # the preempted run
    out = tmp_path / "killed"
    config = make_stage_config("TrainingJob", spec, out, data)
    cfg_path = tmp_path / "killed.yaml"
    cfg_path.write_text(config.dump())
    log = tmp_path / "killed.log"
    proc = _start(cfg_path, log)
    ckpt = out / "checkpoints" / "checkpoint-20" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not ckpt.exists():
        assert proc.poll() is None, f"stage ended before the kill:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "result.json").exists(), "the first run finished instead of being killed"
    killed_at = json.loads((out / "progress.json").read_text())["step"]
    assert 20 <= killed_at < STEPS

    # the restart: same command, same config
    proc = _start(cfg_path, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "kubeforge: resuming from checkpoint" in text and "checkpoint-" in text.split("resuming from")[1][:400]
    result = json.loads((out / "result.json").read_text())
    assert result["succeeded"], result
    assert result["metrics"]["global_step"] == STEPS
    assert result["progress"]["step"] == STEPS
    state = json.loads(sorted((out / "checkpoints").glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    assert state["global_step"] == STEPS

    # an uninterrupted run ends at the same step with the same weights
    ref_out = tmp_path / "reference"
    from kubeforge_trainer import train
    from kubeforge_trainer.runtime import ProgressReporter

    ref_config = make_stage_config("TrainingJob", spec, ref_out, data)
    ref = train.run(ref_config, ProgressReporter(ref_config))
    assert ref.metrics["global_step"] == STEPS
    a, b = _weights(out), _weights(ref_out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), f"{k} differs after resume"


def test_partial_newest_checkpoint_falls_back_to_the_previous_complete_one(
    tmp_path: Path,
    tiny_llama_dir: Path,
    tiny_dataset_dir: Callable[[str], Path],
    make_stage_config: Any,
    fast_hparams: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kubeforge_trainer import train
    from kubeforge_trainer.runtime import ProgressReporter
    from kubeforge_trainer.stagecommon import resume_point

    data = {"dataset": tiny_dataset_dir("instruction")}
    spec = _spec(tiny_llama_dir, fast_hparams)
    spec["hyperparameters"] |= {"maxSteps": 4, "loggingSteps": 1}
    spec["checkpointing"] = {"intervalSteps": 2, "keep": 3, "resume": True}
    out = tmp_path / "out"
    config = make_stage_config("TrainingJob", spec, out, data)
    first = train.run(config, ProgressReporter(config))
    assert first.succeeded, first.message
    ckpts = out / "checkpoints"
    assert (ckpts / "checkpoint-4" / "trainer_state.json").is_file()

    # killed while writing checkpoint-4: everything but trainer_state.json (the Trainer writes it last)
    (ckpts / "checkpoint-4" / "trainer_state.json").unlink()
    (ckpts / "checkpoint-6").mkdir()  # and an empty directory from a save that never started
    assert resume_point(ckpts, True) == str(ckpts / "checkpoint-2")
    assert "skipping partial checkpoint-6, checkpoint-4" in capsys.readouterr().err
    assert resume_point(ckpts, False) is None
    empty = tmp_path / "none"
    (empty / "checkpoint-3").mkdir(parents=True)
    assert resume_point(empty, True) is None

    # the restart resumes from step 2 and trains on to the (raised) max steps
    spec["hyperparameters"]["maxSteps"] = 6
    config = make_stage_config("TrainingJob", spec, out, data)
    result = train.run(config, ProgressReporter(config))
    assert result.succeeded, result.message
    assert "resuming from checkpoint" in capsys.readouterr().err
    assert result.metrics["global_step"] == 6
    state = json.loads((ckpts / "checkpoint-6" / "trainer_state.json").read_text())
    logged = [e["step"] for e in state["log_history"] if "loss" in e]
    assert logged[:2] == [1, 2] and logged[-1] == 6, logged  # steps 1-2 from the first run, then 3-6
