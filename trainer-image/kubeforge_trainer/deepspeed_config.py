"""The DeepSpeed config of a training stage, and the launcher environment it needs.

The operator and the trainer must agree on one config, so there is one generator:
`kubeforge.deepspeed.get_deepspeed_config(spec)`. The operator mounts its output as a file
(env KUBEFORGE_DEEPSPEED_CONFIG); local runs call the same function. Torch-free on import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kubeforge.deepspeed import DEEPSPEED_ENV, get_deepspeed_config


def deepspeed_config_for(spec: Any) -> dict[str, Any]:
    """The config the operator mounted (KUBEFORGE_DEEPSPEED_CONFIG), else the same generator's output."""
    mounted = os.environ.get(DEEPSPEED_ENV)
    if mounted and Path(mounted).is_file():
        return dict(json.loads(Path(mounted).read_text()))
    return get_deepspeed_config(spec)


def ensure_launcher_env() -> None:
    """Single-process runs get the env torchrun would set, so DeepSpeed does not try MPI discovery."""
    for key, value in (
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29511"),
    ):
        os.environ.setdefault(key, value)


def skip_cpu_shm_comm() -> None:
    """On CPU, skip DeepSpeed's JIT-compiled shared-memory op (~70 s): only inference all-reduce uses it."""
    import torch

    if torch.cuda.is_available():
        return
    import importlib

    # via sys.modules: the attribute `deepspeed.comm.torch` is shadowed by the torch package itself
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    setattr(ds_torch, "build_shm_op", lambda: None)  # noqa: B010
