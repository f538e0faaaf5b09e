"""The DeepSpeed JSON for a training spec: part of the stage contract, because the operator mounts it into
the stage's pod and the stage (the trainer image, or `kubeforge run`) builds the same one when nothing is
mounted. Pure, torch-free: imported by the builders and by the trainer, never by the other way round.
"""

from __future__ import annotations

from typing import Any

from .api.v1alpha1.training import Distributed

DEEPSPEED_FILE = "deepspeed.json"
DEEPSPEED_ENV = "KUBEFORGE_DEEPSPEED_CONFIG"


def get_deepspeed_config(spec: Any) -> dict[str, Any]:
    """DeepSpeed JSON for a spec with `distributed`, `precision` and `hyperparameters`.

    Batch sizes, gradient accumulation and clipping are `auto` so the Hugging Face Trainer fills them from
    the same hyperparameters (it rejects mismatching explicit values); ZeRO stage, offload and mixed
    precision come from the spec. `zero_force_ds_cpu_optimizer: false` lets offload use the client AdamW
    (DeepSpeed's CPUAdam needs a slow JIT build). `tensorParallel > 1` turns on DeepSpeed AutoTP training
    (`tensor_parallel.autotp_size`: the Trainer calls `deepspeed.tp_model_init` and splits the data over
    world/tp replicas). ZeRO-3 and AutoTP gather 16-bit weights on save (accelerate reads the flag for both)
    so saving writes full safetensors rather than shards.
    """
    dist: Distributed = spec.distributed
    precision = str(getattr(spec.precision, "value", spec.precision))
    zero: dict[str, Any] = {
        "stage": dist.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if dist.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = "auto"
        zero["stage3_param_persistence_threshold"] = "auto"
    if dist.zero_stage == 3 or dist.tensor_parallel > 1:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if dist.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if dist.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    tensor_parallel: dict[str, Any] = {}
    if dist.tensor_parallel > 1:
        # vocab_parallel_lm_head false: TRL scores tokens with a fused head that reads lm_head.weight itself,
        # so a vocabulary-sharded head would compute each rank's softmax over its own slice of the vocabulary
        tensor_parallel["tensor_parallel"] = {"autotp_size": dist.tensor_parallel, "vocab_parallel_lm_head": False}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "steps_per_print": spec.hyperparameters.logging_steps,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "wall_clock_breakdown": False,
        **tensor_parallel,
    }
