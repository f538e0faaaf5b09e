"""`pretrain` and `sft` stages (TrainingJob): causal-LM training through TRL's SFTTrainer.

pretrain: `text` records, from an HF model or from spec.model.architecture (with a byte-level BPE
tokenizer trained on the training split when spec.tokenizer.trainVocabSize is set or no tokenizer
is given). sft: `prompt`/`completion` (completion-only loss) or `messages` (chat template; loss on the
assistant turns only when the template marks them with `{% generation %}` or TRL knows how to patch it,
else on the whole conversation with a warning) records.
Full fine-tuning, freeze-N, LoRA/QLoRA, prefix, prompt tuning and IA3 through peft. The artifact
layout is described in modelio.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubeforge.api.v1alpha1.training import PeftMethod
from kubeforge.api.v1alpha1.trainingjob import TrainingJobSpec
from kubeforge.stage import StageConfig, StageResult, local_path

from . import modelio
from .callbacks import ProgressCallback
from .runtime import ProgressReporter, StageError
from .stagecommon import (
    apply_peft,
    check_device,
    check_merge,
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

DEFAULT_VOCAB = 8192
PRETRAIN_COLUMNS: list[tuple[str, ...]] = [("text",)]
SFT_COLUMNS: list[tuple[str, ...]] = [("prompt", "completion"), ("messages",), ("text",)]


def _texts(ds: Any) -> Iterator[str]:
    """Every string of a split, for tokenizer training."""
    for row in ds:
        for value in row.values():
            if isinstance(value, str):
                yield value
            elif isinstance(value, list):
                for m in value:
                    if isinstance(m, dict) and isinstance(m.get("content"), str):
                        yield m["content"]


def count_trainable(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def assistant_only_loss(tok: Any) -> bool:
    """Whether TRL can mask chat data to the assistant turns with this tokenizer's chat template.

    True when the template has `{% generation %}` markers (Kubeforge's default template does) or is one
    TRL ships a training variant of; otherwise the whole conversation is trained on (printed as a warning).
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tok.chat_template
    if isinstance(template, dict):
        template = template.get("default", "")
    if has_generation_markers(template or ""):
        return True
    try:
        get_training_chat_template(tok)
    except (ValueError, TypeError) as exc:
        print(
            f"kubeforge: warning: the chat template cannot mark assistant turns ({str(exc).splitlines()[0][:200]}); "
            "training on whole conversations. Add {% generation %}...{% endgeneration %} around the assistant "
            "content (spec.tokenizer.uri) to train on assistant turns only",
            file=sys.stderr,
            flush=True,
        )
        return False
    return True


def _tokenizer(spec: TrainingJobSpec, train_ds: Any, base_loc: str | None, scratch: Path) -> tuple[Any, str]:
    """(tokenizer, a directory holding it) per spec.tokenizer."""
    arch = spec.model.architecture
    if spec.tokenizer.train_vocab_size or (arch is not None and spec.tokenizer.uri is None):
        vocab = spec.tokenizer.train_vocab_size or (arch.vocab_size if arch else None) or DEFAULT_VOCAB
        tok = modelio.train_tokenizer(_texts(train_ds), vocab)
        where = scratch / "tokenizer"
        tok.save_pretrained(where)
        return tok, str(where)
    loc = modelio.model_location(spec.tokenizer.uri) if spec.tokenizer.uri else base_loc
    assert loc is not None
    return modelio.load_tokenizer(loc, trust_remote_code=spec.model.trust_remote_code), loc


def run(config: StageConfig, reporter: ProgressReporter) -> StageResult:
    """Train, save the model (layout in modelio), report metrics."""
    from transformers import set_seed
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    spec: TrainingJobSpec = config.typed().spec  # type: ignore[attr-defined]
    hp = spec.hyperparameters
    check_device(spec)
    quiet_other_ranks(reporter)
    check_merge(spec.peft)
    if spec.peft.merge and spec.distributed.strategy == "deepspeed" and spec.distributed.zero_stage == 3:
        raise StageError("spec.peft.merge cannot merge ZeRO-3 partitioned weights: set merge false or zeroStage <= 2")
    ds_config = setup_distributed(spec)
    what = f"method {spec.method}"

    train_split = spec.dataset.split
    train_ds = read_split(config, train_split, required=True)
    assert train_ds is not None
    cols = require_columns(train_ds, PRETRAIN_COLUMNS if spec.method == "pretrain" else SFT_COLUMNS, what, train_split)
    train_ds = train_ds.select_columns(list(cols))
    eval_ds = read_split(config, spec.dataset.eval_split, required=False) if spec.dataset.eval_split else None
    if eval_ds is not None:
        eval_ds = eval_ds.select_columns(list(cols)) if set(cols) <= set(eval_ds.column_names) else None

    base_uri = None if spec.model.architecture is not None else input_model_uri(config)
    base_loc = modelio.model_location(base_uri) if base_uri else None
    ckpt = checkpoint_dir(config)
    tok, tok_loc = _tokenizer(spec, train_ds, base_loc, ckpt)
    assistant_only = False
    if "messages" in cols:
        modelio.ensure_chat_template(tok)
        assistant_only = assistant_only_loss(tok)

    args = SFTConfig(
        **training_kwargs(spec, config, ckpt, has_eval=eval_ds is not None, deepspeed=ds_config),
        max_length=hp.max_length,
        dataset_text_field="text",
        packing=False,
        assistant_only_loss=assistant_only,
    )

    # Seeded before any weight is made: a model from an architecture and new adapter weights (LoRA's A, a
    # prompt encoder) are random, and the Trainer seeds only after they exist. Same spec, same weights.
    set_seed(hp.seed)
    if spec.model.architecture is not None:
        model = modelio.build_from_architecture(spec.model.architecture, tok)
    else:
        assert base_loc is not None
        model = modelio.load_causal_lm(
            base_loc,
            merge=True,
            trust_remote_code=spec.model.trust_remote_code,
            quantization_config=quantization_config(spec.peft),
        )
        if modelio.is_prompt_learning(model):
            raise StageError(
                f"spec.model {base_uri} is a prefix/prompt-tuning adapter and cannot be trained further as a base: "
                "start from its base model"
            )
        if len(tok) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tok))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    prepare_tensor_parallel(spec, model)
    model = apply_peft(model, spec.peft, "CAUSAL_LM", tok_loc)
    trainable, total = count_trainable(model)

    callback = ProgressCallback(reporter)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tok,
        callbacks=[callback],
    )
    resume = resume_point(ckpt, spec.checkpointing.resume)
    output = trainer.train(resume_from_checkpoint=resume)

    metrics: dict[str, float | None] = {
        "train_loss": callback.last("loss") if callback.last("loss") is not None else output.training_loss,
        "train_loss_mean": output.training_loss,
        "train_loss_initial": next((e["loss"] for e in callback.history if "loss" in e), None),
        "global_step": float(trainer.state.global_step),
        "trainable_params": float(trainable),
        "total_params": float(total),
        "tokens_per_second": callback.tokens_per_second,
    }
    if "messages" in cols:
        metrics["assistant_only_loss"] = float(assistant_only)
    if eval_ds is not None:
        ev = trainer.evaluate()
        metrics["eval_loss"] = ev.get("eval_loss")
        if metrics["eval_loss"] is not None:
            metrics["perplexity"] = math.exp(min(float(ev["eval_loss"]), 50.0))

    save_causal_lm(trainer, tok, spec, base_uri, local_path(config.output_uri))
    trainer.accelerator.wait_for_everyone()
    steps = trainer.state.global_step
    return finish(config, reporter, callback, metrics, ckpt, f"{spec.method} finished after {steps} steps")


def save_causal_lm(trainer: Any, tok: Any, spec: Any, base_uri: str | None, out: Path) -> None:
    """Write the artifact: full model, merged model + adapter/, or adapter (see modelio)."""
    peft_used = spec.peft.method not in (PeftMethod.NONE, PeftMethod.FREEZE)
    manifest: dict[str, Any] = {"task": "causal-lm", "peft": spec.peft.method.value, "baseModel": base_uri}
    if not peft_used:
        trainer.save_model(str(out))  # gathers ZeRO-3 shards; writes on the main process
        manifest |= {"layout": "full", "baseModel": base_uri}
    elif spec.peft.merge:
        if is_main_process():
            model = trainer.accelerator.unwrap_model(trainer.model)
            model.save_pretrained(out / modelio.ADAPTER_DIR)
            model.merge_and_unload().save_pretrained(out)
        manifest["layout"] = "full"
    else:
        trainer.save_model(str(out))
        manifest["layout"] = "adapter"
    if is_main_process():
        tok.save_pretrained(out)
        (out / "training_args.bin").unlink(missing_ok=True)  # a pickle; not part of the model
        modelio.write_manifest(out, **manifest)
