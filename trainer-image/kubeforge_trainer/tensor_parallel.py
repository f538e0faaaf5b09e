"""DeepSpeed AutoTP training (spec.distributed.tensorParallel > 1): run-time checks on the model, and the one
adjustment the Trainer stack needs before `deepspeed.initialize` shards it.

DeepSpeed splits the model by the Hugging Face tensor-parallel plan (`config.base_model_tp_plan`: q/k/v and
the MLP up projections by column, o/down by row). The output head is kept whole on every rank: TRL's
SFTTrainer scores tokens with a fused head that reads `lm_head.weight` directly, so a column- or
vocabulary-sharded head would give each rank a softmax over its own slice of the vocabulary (a silently
wrong loss; measured 5.26 vs 5.99 at step 0 on the test model). The generated DeepSpeed config sets
`vocab_parallel_lm_head: false` for tied heads; `keep_output_head_whole` does it for untied ones.
"""

from __future__ import annotations

from typing import Any

from .runtime import StageError

# DeepSpeed's TPPlanConverter turns this HF plan style into a plain SKIP spec (no sharding, no gradient
# all-reduce): the only plan style that leaves a module exactly as it is.
_KEEP_WHOLE = "embedding_rowwise"


def _text_config(model: Any) -> Any:
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def check_tensor_parallel(spec: Any, model: Any) -> None:
    """Refuse a tensorParallel degree this model cannot be split by, naming the limit and the fix."""
    dist = getattr(spec, "distributed", None)
    if dist is None or dist.tensor_parallel <= 1:
        return
    tp = dist.tensor_parallel
    cfg = _text_config(model)
    if not getattr(cfg, "base_model_tp_plan", None):
        raise StageError(
            f"spec.distributed.tensorParallel {tp}: model type {getattr(cfg, 'model_type', '?')} has no "
            "tensor-parallel plan in transformers (config.base_model_tp_plan), so DeepSpeed AutoTP cannot split "
            "it: set tensorParallel 1 and shard it with zeroStage 3 instead",
            reason="Unsupported",
        )
    # AutoTP splits attention by key-value head; DeepSpeed only warns past that (the extra ranks hold no
    # attention shard and sit idle in attention), which is refused here instead.
    heads = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", None)
    if heads is not None and tp > int(heads):
        raise StageError(
            f"spec.distributed.tensorParallel {tp} exceeds the model's {heads} key-value heads "
            f"(AutoTP splits attention by head): set tensorParallel <= {heads}",
            reason="Unsupported",
        )


def keep_output_head_whole(spec: Any, model: Any) -> None:
    """Mark the LM head (if any) as not to be split, in the instance plan DeepSpeed merges over the class plan."""
    dist = getattr(spec, "distributed", None)
    if dist is None or dist.tensor_parallel <= 1:
        return
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return  # a sequence-classification head (`score`) is in no plan: AutoTP leaves it whole
    name = next(n for n, m in model.named_modules() if m is head)
    plan = dict(model.__dict__.get("_tp_plan") or {})
    plan[name] = _KEEP_WHOLE
    model._tp_plan = plan


def prepare_tensor_parallel(spec: Any, model: Any) -> None:
    """Both of the above, on the plain model (before PEFT wrapping or the Trainer)."""
    check_tensor_parallel(spec, model)
    keep_output_head_whole(spec, model)
