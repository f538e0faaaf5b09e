"""What the training stages (pretrain/sft, reward, rlhf) share: data checks, device and precision
rules, Trainer arguments, PEFT, checkpoints/resume, and the final StageResult."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from kubeforge.api.v1alpha1.training import Peft, PeftMethod, Precision
from kubeforge.stage import StageConfig, StageResult, local_path

from . import dataio
from .callbacks import ProgressCallback
from .deepspeed_config import deepspeed_config_for, ensure_launcher_env, skip_cpu_shm_comm
from .modelio import read_manifest
from .runtime import ProgressReporter, StageError, artifact_for, lineage_of, write_lineage

if TYPE_CHECKING:
    import datasets
    from peft import PeftConfig


def on_gpu() -> bool:
    """Whether this pod trains on CUDA."""
    return torch.cuda.is_available()


def is_main_process() -> bool:
    """Rank 0 (or a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def check_device(spec: Any) -> None:
    """Reject settings this machine cannot run, naming the spec field and the fix."""
    gpu = on_gpu()
    peft: Peft | None = getattr(spec, "peft", None)
    if peft is not None and peft.method == PeftMethod.QLORA and not gpu:
        raise StageError(
            "spec.peft.method qlora needs a CUDA GPU (bitsandbytes 4/8-bit kernels): set spec.resources.gpu >= 1 "
            "and run on a GPU node, or use spec.peft.method lora on CPU",
            reason="Unsupported",
        )
    if spec.precision == Precision.FP16 and not gpu:
        raise StageError(
            "spec.precision fp16 needs a CUDA GPU (fp16 mixed precision is GPU-only): use bf16 or fp32 on CPU",
            reason="Unsupported",
        )


def precision_flags(precision: Precision) -> dict[str, bool]:
    """TrainingArguments bf16/fp16 flags (always explicit: TRL defaults bf16=True)."""
    return {"bf16": precision == Precision.BF16, "fp16": precision == Precision.FP16}


def read_split(config: StageConfig, split: str, *, required: bool) -> datasets.Dataset | None:
    """A split of the input Dataset; missing or empty → StageError when required, else None."""
    if "dataset" not in config.inputs:
        raise StageError("no input dataset: set spec.dataset.name to a succeeded Dataset")
    uri = config.inputs["dataset"].uri
    try:
        ds = dataio.read_split(uri, split)
    except StageError:
        if required:
            raise
        return None
    if len(ds) == 0:
        if required:
            raise StageError(
                f"split {split!r} of Dataset {config.inputs['dataset'].name} is empty: "
                "adjust the Dataset's spec.split or filters"
            )
        return None
    return ds


def require_columns(ds: datasets.Dataset, options: list[tuple[str, ...]], what: str, split: str) -> tuple[str, ...]:
    """The first column set in `options` that `ds` has; else a StageError naming what is missing."""
    cols = set(ds.column_names)
    for opt in options:
        if set(opt) <= cols:
            return opt
    wanted = " or ".join("/".join(o) for o in options)
    raise StageError(
        f"{what} needs a Dataset with columns {wanted} (split {split}); it has {', '.join(sorted(cols)) or 'none'}: "
        "point spec.dataset at a Dataset of the matching task"
    )


def checkpoint_dir(config: StageConfig) -> Path:
    """Where checkpoints go (config.checkpoint_uri, else <output>/checkpoints)."""
    uri = config.checkpoint_uri or f"{config.output_uri.rstrip('/')}/checkpoints"
    path = local_path(uri)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resume_point(ckpt_dir: Path, resume: bool) -> str | None:
    """Newest complete checkpoint to resume from (None for a fresh run).

    The Trainer writes `trainer_state.json` last, so a checkpoint without it was cut off mid-save (pod
    killed): it is skipped and the previous complete one is used.
    """
    if not resume:
        return None
    found = sorted(
        (p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for path in found:
        if (path / "trainer_state.json").is_file():
            if is_main_process():
                skipped = [p.name for p in found if int(p.name.split("-")[-1]) > int(path.name.split("-")[-1])]
                note = f" (skipping partial {', '.join(skipped)})" if skipped else ""
                print(f"kubeforge: resuming from checkpoint {path}{note}", file=sys.stderr, flush=True)
            return str(path)
    if found and is_main_process():
        print(f"kubeforge: no complete checkpoint in {ckpt_dir}; starting fresh", file=sys.stderr, flush=True)
    return None


def checkpoint_uris(config: StageConfig, ckpt_dir: Path) -> list[str]:
    """Checkpoint URIs, oldest first (status.checkpoints: newest last)."""
    base = (config.checkpoint_uri or f"{config.output_uri.rstrip('/')}/checkpoints").rstrip("/")
    found = sorted(
        (p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return [f"{base}/{p.name}" for p in found]


def quiet_other_ranks(reporter: ProgressReporter) -> None:
    """Only rank 0 writes progress.json (every rank trains; one reports)."""
    if not is_main_process():
        reporter.path = None


def setup_distributed(spec: Any) -> dict[str, Any] | None:
    """DeepSpeed config (and process-group setup) when spec.distributed.strategy is deepspeed."""
    dist = getattr(spec, "distributed", None)
    if dist is None or dist.strategy != "deepspeed":
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % dist.tensor_parallel:
        raise StageError(
            f"spec.distributed.tensorParallel {dist.tensor_parallel} does not divide the {world} worker processes: "
            "set nodes*processesPerNode to a multiple of tensorParallel",
            reason="Unsupported",
        )
    ensure_launcher_env()
    skip_cpu_shm_comm()
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if on_gpu() else "gloo")
    return deepspeed_config_for(spec)


def training_kwargs(
    spec: Any, config: StageConfig, ckpt_dir: Path, *, has_eval: bool, deepspeed: dict[str, Any] | None
) -> dict[str, Any]:
    """TrainingArguments fields every stage sets from spec.hyperparameters/precision/checkpointing."""
    hp = spec.hyperparameters
    ck = spec.checkpointing
    eval_strategy = "no"
    if has_eval:
        eval_strategy = "steps" if hp.eval_steps else "epoch"
    kw: dict[str, Any] = {
        "output_dir": str(ckpt_dir),
        "learning_rate": hp.learning_rate,
        "num_train_epochs": hp.epochs,
        "max_steps": hp.max_steps or -1,
        "per_device_train_batch_size": hp.batch_size,
        "per_device_eval_batch_size": hp.batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "warmup_steps": hp.warmup_ratio if hp.warmup_ratio < 1 else 0.999,  # a float < 1 is a ratio
        "weight_decay": hp.weight_decay,
        "lr_scheduler_type": hp.lr_scheduler,
        "seed": hp.seed,
        "data_seed": hp.seed,
        "logging_steps": hp.logging_steps,
        "logging_first_step": True,
        "eval_strategy": eval_strategy,
        "eval_steps": hp.eval_steps,
        "save_strategy": "steps",
        "save_steps": ck.interval_steps,
        "save_total_limit": ck.keep,
        # both names: transformers 5 renamed it, TRL defaults the old one to True
        "activation_checkpointing": hp.gradient_checkpointing,
        "gradient_checkpointing": hp.gradient_checkpointing,
        "use_cpu": not on_gpu(),
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
        **precision_flags(spec.precision),
    }
    if deepspeed is not None:
        kw["deepspeed"] = deepspeed
    return kw


def peft_config(peft: Peft, task_type: str, tokenizer_path: str | None = None) -> PeftConfig | None:
    """The peft library config for spec.peft (None for none/freeze)."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit

    m = peft.method
    if m in (PeftMethod.LORA, PeftMethod.QLORA):
        return LoraConfig(
            task_type=task_type,
            r=peft.r,
            lora_alpha=peft.alpha,
            lora_dropout=peft.dropout,
            target_modules=peft.target_modules or "all-linear",
        )
    if m == PeftMethod.IA3:
        return IA3Config(task_type=task_type, target_modules=peft.target_modules, feedforward_modules=None)
    if m == PeftMethod.PREFIX:
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=peft.num_virtual_tokens)
    if m == PeftMethod.PROMPT:
        if peft.prompt_init_text:
            return PromptTuningConfig(
                task_type=task_type,
                num_virtual_tokens=peft.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=peft.prompt_init_text,
                tokenizer_name_or_path=tokenizer_path,
            )
        return PromptTuningConfig(
            task_type=task_type, num_virtual_tokens=peft.num_virtual_tokens, prompt_tuning_init=PromptTuningInit.RANDOM
        )
    return None


def decoder_blocks(model: Any) -> torch.nn.ModuleList:
    """The ModuleList of transformer blocks (llama `model.layers`, gpt2 `transformer.h`, ...)."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise StageError(
        f"spec.peft.method freeze: cannot find the {n} transformer blocks of {type(model).__name__}; "
        "use spec.peft.method lora or none"
    )


def freeze_layers(model: Any, n: int) -> None:
    """Freeze the input embeddings and the first `n` blocks (spec.peft.freezeLayers)."""
    blocks = decoder_blocks(model)
    if n > len(blocks):
        raise StageError(f"spec.peft.freezeLayers {n} exceeds the model's {len(blocks)} layers: lower it")
    for p in model.get_input_embeddings().parameters():
        p.requires_grad_(False)
    for block in list(blocks)[:n]:
        for p in block.parameters():
            p.requires_grad_(False)


def apply_peft(model: Any, peft: Peft, task_type: str, tokenizer_path: str | None = None) -> Any:
    """Wrap `model` per spec.peft; an incompatible method/architecture is a one-line StageError."""
    if peft.method == PeftMethod.NONE:
        return model
    if peft.method == PeftMethod.FREEZE:
        freeze_layers(model, peft.freeze_layers)
        return model
    from peft import get_peft_model

    cfg = peft_config(peft, task_type, tokenizer_path)
    if peft.method == PeftMethod.QLORA:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)  # type: ignore[no-untyped-call]
    try:
        return get_peft_model(model, cfg)  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError, NotImplementedError, AttributeError) as exc:
        arch = getattr(model.config, "model_type", type(model).__name__)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StageError(
            f"spec.peft.method {peft.method.value} does not fit the {arch} architecture ({msg[:300]}); "
            "set spec.peft.targetModules or choose another method",
            reason="Unsupported",
        ) from None


def quantization_config(peft: Peft) -> Any:
    """bitsandbytes config of the frozen base under QLoRA (GPU only)."""
    if peft.method != PeftMethod.QLORA:
        return None
    from transformers import BitsAndBytesConfig

    if peft.quant_bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def check_merge(peft: Peft) -> None:
    """spec.peft.merge applies to additive adapters only."""
    if peft.merge and peft.method not in (PeftMethod.LORA, PeftMethod.QLORA, PeftMethod.IA3):
        raise StageError(
            f"spec.peft.merge is only supported for lora, qlora and ia3, not {peft.method.value}: "
            "set spec.peft.merge false"
        )


def input_model_uri(config: StageConfig, key: str = "model") -> str:
    """URI of a resolved model input, or a StageError naming the spec field."""
    if key not in config.inputs:
        field = "spec.policy" if key == "model" and config.resource["kind"] == "RLHFJob" else "spec.model"
        if key == "rewardModel":
            field = "spec.reward.model or spec.reward.uri"
        raise StageError(f"no input {key}: set {field}")
    return config.inputs[key].uri


def finish(
    config: StageConfig,
    reporter: ProgressReporter,
    callback: ProgressCallback,
    metrics: dict[str, float | None],
    ckpt_dir: Path,
    message: str,
) -> StageResult:
    """Digest the artifact, write lineage.json, and build the StageResult (all ranks agree on it)."""
    out = local_path(config.output_uri)
    artifact = artifact_for(config.output_uri)
    if is_main_process():
        write_lineage(config, artifact)
    clean = {k: float(v) for k, v in metrics.items() if v is not None}
    progress = reporter.update(force=True, loss=clean.get("train_loss"))
    if callback.tokens_per_second:
        progress = reporter.update(force=True, tokens_per_second=round(callback.tokens_per_second, 2))
    manifest = read_manifest(out)
    layout = manifest.get("layout", "full")
    return StageResult(
        succeeded=True,
        reason="Completed",
        message=f"{message}; artifact layout {layout} at {config.output_uri}",
        artifact=artifact,
        lineage=lineage_of(config),
        metrics=clean,
        progress=progress,
        checkpoints=checkpoint_uris(config, ckpt_dir),
    )
