"""`reward` stage (RewardModel): a pairwise (Bradley-Terry) reward model with TRL's RewardTrainer.

Starts from a causal LM (e.g. an SFT output; adapters are merged first) or an encoder (BERT-like;
its [SEP] stands in for the missing eos), adds a scalar head (`num_labels=1`), and reports the
validation pairwise accuracy before (`pairwise_accuracy_initial`) and after (`pairwise_accuracy`).
The artifact is always a full sequence-classification model (LoRA/IA3 adapters are merged, and
kept under `adapter/`), so RLHF loads it with one `from_pretrained`. spec.distributed runs it under
DDP or DeepSpeed ZeRO exactly as a TrainingJob.
"""

from __future__ import annotations

from typing import Any

from kubeforge.api.v1alpha1.rewardmodel import RewardModelSpec
from kubeforge.api.v1alpha1.training import PeftMethod
from kubeforge.stage import StageConfig, StageResult, local_path

from . import modelio
from .callbacks import ProgressCallback
from .rewards import end_token
from .runtime import ProgressReporter, StageError
from .stagecommon import (
    apply_peft,
    check_device,
    checkpoint_dir,
    finish,
    input_model_uri,
    is_main_process,
    quantization_config,
    quiet_other_ranks,
    read_split,
    require_columns,
    resume_point,
    setup_distributed,
    training_kwargs,
)
from .tensor_parallel import prepare_tensor_parallel

PREFERENCE_COLUMNS: list[tuple[str, ...]] = [("prompt", "chosen", "rejected"), ("chosen", "rejected")]


def exact_pairwise_accuracy(trainer: Any) -> float | None:
    """Share of validation pairs whose chosen answer scores above the rejected one, over all pairs.

    TRL's `eval_accuracy` is a mean of per-batch means kept across evaluate() calls (measured: 0.65 for
    a model that ranks 42 of 44 pairs right), so the stage counts the pairs itself.
    """
    import torch

    model = trainer.model
    was_training = model.training
    model.eval()
    hits = total = 0
    try:
        with torch.inference_mode():
            for batch in trainer.get_eval_dataloader():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                chosen, rejected = torch.chunk(logits[:, 0], chunks=2)
                ok = trainer.accelerator.gather_for_metrics((chosen > rejected).float())
                hits += int(ok.sum().item())
                total += int(ok.numel())
    finally:
        if was_training:
            model.train()
    return hits / total if total else None


def run(config: StageConfig, reporter: ProgressReporter) -> StageResult:
    """Train the reward model, measure pairwise accuracy, save a full model."""
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl.trainer.reward_config import RewardConfig
    from trl.trainer.reward_trainer import RewardTrainer

    spec: RewardModelSpec = config.typed().spec  # type: ignore[attr-defined]
    check_device(spec)
    quiet_other_ranks(reporter)
    if spec.peft.method in (PeftMethod.PREFIX, PeftMethod.PROMPT):
        raise StageError(
            f"spec.peft.method {spec.peft.method.value} is not supported for reward models: "
            "use lora, ia3, freeze or none"
        )
    merges = spec.peft.method in (PeftMethod.LORA, PeftMethod.QLORA, PeftMethod.IA3)
    if merges and spec.distributed.strategy == "deepspeed" and spec.distributed.zero_stage == 3:
        raise StageError(
            f"spec.peft.method {spec.peft.method.value} is merged into the reward model, which cannot merge ZeRO-3 "
            "partitioned weights: set spec.distributed.zeroStage <= 2 or spec.peft.method none"
        )
    ds_config = setup_distributed(spec)

    split = spec.dataset.split
    train_ds = read_split(config, split, required=True)
    assert train_ds is not None
    cols = require_columns(train_ds, PREFERENCE_COLUMNS, "a reward model", split)
    train_ds = train_ds.select_columns(list(cols))
    eval_ds = read_split(config, spec.dataset.eval_split, required=False) if spec.dataset.eval_split else None
    if eval_ds is not None:
        eval_ds = eval_ds.select_columns(list(cols)) if set(cols) <= set(eval_ds.column_names) else None

    ckpt = checkpoint_dir(config)
    base_uri = input_model_uri(config)
    base_dir = modelio.full_model_dir(modelio.model_location(base_uri), scratch=str(ckpt / "base-merged"))
    tok_loc = modelio.model_location(spec.tokenizer.uri) if spec.tokenizer.uri else base_dir
    tok = modelio.load_tokenizer(tok_loc, trust_remote_code=spec.model.trust_remote_code)
    eos = end_token(tok)  # the same end token the online trainers' scoring appends (rewards.ScoredAsTrained)
    if eos is None:
        raise StageError(f"the tokenizer at {tok_loc} has neither an eos nor a sep token: set spec.tokenizer.uri")

    args = RewardConfig(
        **training_kwargs(spec, config, ckpt, has_eval=eval_ds is not None, deepspeed=ds_config),
        max_length=spec.hyperparameters.max_length,
        eos_token=eos,
        center_rewards_coefficient=spec.center_rewards_coefficient,
    )
    set_seed(spec.hyperparameters.seed)  # the new scalar head is random: same on every rank and every run
    try:
        model: Any = AutoModelForSequenceClassification.from_pretrained(
            base_dir,
            num_labels=1,
            trust_remote_code=spec.model.trust_remote_code,
            quantization_config=quantization_config(spec.peft),
        )
    except (OSError, ValueError) as exc:
        raise StageError(
            f"cannot build a sequence-classification reward model from {base_uri}: {str(exc).splitlines()[0]}"
        ) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    prepare_tensor_parallel(spec, model)
    model = apply_peft(model, spec.peft, "SEQ_CLS")

    callback = ProgressCallback(reporter)
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tok,
        callbacks=[callback],
    )
    resume = resume_point(ckpt, spec.checkpointing.resume)
    initial: float | None = None
    initial_loss: float | None = None
    # DeepSpeed below ZeRO-3 cannot evaluate before training (the engine is built by train())
    zero_eval_ok = ds_config is None or spec.distributed.zero_stage == 3
    if eval_ds is not None and resume is None and zero_eval_ok:
        before = trainer.evaluate()
        initial = exact_pairwise_accuracy(trainer)
        initial_loss = before.get("eval_loss")
    output = trainer.train(resume_from_checkpoint=resume)
    metrics: dict[str, float | None] = {
        "train_loss": callback.last("loss") if callback.last("loss") is not None else output.training_loss,
        "train_loss_mean": output.training_loss,
        "global_step": float(trainer.state.global_step),
        "tokens_per_second": callback.tokens_per_second,
        "pairwise_accuracy_initial": initial,
        "eval_loss_initial": initial_loss,
    }
    if eval_ds is not None:
        ev = trainer.evaluate()
        metrics["eval_loss"] = ev.get("eval_loss")
        metrics["pairwise_accuracy"] = exact_pairwise_accuracy(trainer)
        metrics["reward_margin"] = ev.get("eval_margin", callback.last("eval_margin"))
    else:
        metrics["pairwise_accuracy"] = callback.last("accuracy")  # training batches: no validation split

    out = local_path(config.output_uri)
    if not merges:
        trainer.save_model(str(out))  # gathers ZeRO-3 shards; writes on the main process
    elif is_main_process():
        final = trainer.accelerator.unwrap_model(trainer.model)
        final.save_pretrained(out / modelio.ADAPTER_DIR)
        final.merge_and_unload().save_pretrained(out)
    if is_main_process():
        tok.save_pretrained(out)
        (out / "training_args.bin").unlink(missing_ok=True)  # a pickle; not part of the model
        modelio.write_manifest(
            out, layout="full", task="sequence-classification", peft=spec.peft.method.value, baseModel=base_uri
        )
    trainer.accelerator.wait_for_everyone()
    acc = metrics.get("pairwise_accuracy")
    return finish(
        config,
        reporter,
        callback,
        metrics,
        ckpt,
        f"reward model trained for {trainer.state.global_step} steps"
        + (f", pairwise accuracy {acc:.3f}" if acc is not None else ""),
    )
