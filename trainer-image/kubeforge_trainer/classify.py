"""`classification` and `regression` stages (TrainingJob): a sequence-classification head, HF Trainer.

classification: `text`/`label` records (a classification Dataset). The label set is every label of the
Dataset (all splits, so a class seen only in validation still gets an id): non-negative integer labels
are their own ids (`num_labels = max + 1`, as the Evaluation stage reads integer labels), other labels
get ids in sorted order. `id2label`/`label2id` are stored in the model config and the manifest.
regression: `text`/`value` records; one output trained with MSE (`problem_type="regression"`), its bias
started at the training mean so a few steps already predict the right scale.

The base is an encoder (BERT-like) or a causal LM (an adapter is merged first); full fine-tuning,
freeze-N, LoRA/QLoRA, IA3, prefix and prompt tuning all run with `task_type=SEQ_CLS` (the new head is
trained and saved with the adapter). Artifact layout as modelio describes; `kubeforge-model.json`
has `task: sequence-classification` (or `regression`), `numLabels`, `labels` and `problemType`, which
`modelio.load_sequence_classifier` (Evaluation) and the serving export read for adapter artifacts.
Metrics: eval accuracy/precision/recall/F1 (macro) or MSE/RMSE/MAE on spec.dataset.evalSplit.
"""

from __future__ import annotations

from typing import Any

from kubeforge.api.v1alpha1.training import PeftMethod
from kubeforge.api.v1alpha1.trainingjob import TrainingJobSpec
from kubeforge.stage import StageConfig, StageResult, local_path

from . import dataio, metrics, modelio
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

MAX_INT_LABEL = 1023  # integer labels up to this are their own ids; beyond, they are named like strings


def dataset_labels(config: StageConfig, train_ds: Any) -> list[Any]:
    """Every distinct label of the input Dataset (all splits it has), sorted."""
    values: set[Any] = set(train_ds["label"])
    uri = config.inputs["dataset"].uri
    for split in dataio.SPLITS:
        try:
            table = dataio.read_split_table(uri, split)
        except StageError:
            continue
        if "label" in table.column_names:
            values.update(v for v in table.column("label").to_pylist() if v is not None)
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    return sorted(values) if ints else sorted(str(v) for v in values)


def label_maps(labels: list[Any]) -> tuple[dict[int, str], dict[str, int]]:
    """(id2label, label2id): small non-negative integer labels keep their value as id; others sorted."""
    if labels and all(isinstance(v, int) and 0 <= v <= MAX_INT_LABEL for v in labels):
        id2label = {i: str(i) for i in range(max(labels) + 1)}
    else:
        id2label = {i: str(v) for i, v in enumerate(labels)}
    return id2label, {v: k for k, v in id2label.items()}


def _init_regression_bias(model: Any, mean: float) -> None:
    """Start the single output's bias at the target mean (when the head has a bias)."""
    import torch

    for name in ("classifier", "score", "regressor"):
        head = getattr(model, name, None)
        if head is None:
            continue
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)] if isinstance(
            head, torch.nn.Module
        ) else []
        if linears and linears[-1].out_features == 1 and linears[-1].bias is not None:
            with torch.no_grad():
                linears[-1].bias.fill_(mean)
            return


def _compute_metrics(regression: bool) -> Any:
    import numpy as np

    def compute(pred: Any) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        refs = np.asarray(pred.label_ids)
        if regression:
            return metrics.regression(refs.reshape(-1).tolist(), np.asarray(logits).reshape(-1).tolist())
        y_pred = np.asarray(logits).argmax(-1).tolist()
        return metrics.classification(refs.astype(int).tolist(), y_pred, "macro")

    return compute


def run(config: StageConfig, reporter: ProgressReporter) -> StageResult:
    """Train the classifier/regressor, evaluate it, save it (layout in modelio), report metrics."""
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    spec: TrainingJobSpec = config.typed().spec  # type: ignore[attr-defined]
    regression = spec.method == "regression"
    target = "value" if regression else "label"
    hp = spec.hyperparameters
    check_device(spec)
    quiet_other_ranks(reporter)
    check_merge(spec.peft)
    if spec.peft.merge and spec.distributed.strategy == "deepspeed" and spec.distributed.zero_stage == 3:
        raise StageError("spec.peft.merge cannot merge ZeRO-3 partitioned weights: set merge false or zeroStage <= 2")
    ds_config = setup_distributed(spec)
    what = f"method {spec.method}"

    split = spec.dataset.split
    train_ds = read_split(config, split, required=True)
    assert train_ds is not None
    cols = require_columns(train_ds, [("text", target)], what, split)
    eval_ds = read_split(config, spec.dataset.eval_split, required=False) if spec.dataset.eval_split else None
    if eval_ds is not None and not set(cols) <= set(eval_ds.column_names):
        eval_ds = None

    head: dict[str, Any]
    if regression:
        values = np.asarray(train_ds["value"], dtype=float)
        if not np.isfinite(values).all():
            raise StageError(f"{what}: split {split} has non-finite values; clean the Dataset (processing.outliers)")
        head = {"num_labels": 1, "problem_type": "regression"}
        id2label: dict[int, str] = {}
        label2id: dict[str, int] = {}
    else:
        labels = dataset_labels(config, train_ds)
        if len(labels) < 2:
            raise StageError(
                f"{what} needs at least two classes; Dataset {config.inputs['dataset'].name} has "
                f"{len(labels)} ({labels}): add data or adjust processing.labelMap"
            )
        id2label, label2id = label_maps(labels)
        head = {
            "num_labels": len(id2label),
            "id2label": id2label,
            "label2id": label2id,
            "problem_type": "single_label_classification",
        }

    ckpt = checkpoint_dir(config)
    base_uri = input_model_uri(config)
    base_loc = modelio.model_location(base_uri)
    if modelio.is_adapter_dir(base_loc):  # a causal-LM adapter (e.g. an sft output): merge it into a full base
        scratch = ckpt / ("base-merged" if is_main_process() else f"base-merged-rank{config_rank()}")
        base_loc = modelio.full_model_dir(base_loc, scratch=str(scratch))
    tok_loc = modelio.model_location(spec.tokenizer.uri) if spec.tokenizer.uri else base_loc
    tok = modelio.load_tokenizer(tok_loc, trust_remote_code=spec.model.trust_remote_code)
    if tok.pad_token is None:
        raise StageError(f"the tokenizer at {tok_loc} has no pad/eos/unk token to pad batches: set spec.tokenizer.uri")

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        enc = dict(tok([str(t) for t in batch["text"]], truncation=True, max_length=hp.max_length))
        if regression:
            enc["labels"] = [float(v) for v in batch["value"]]
        else:
            enc["labels"] = [label2id[str(v)] for v in batch["label"]]
        return enc

    train_enc = train_ds.map(encode, batched=True, remove_columns=train_ds.column_names)
    eval_enc = eval_ds.map(encode, batched=True, remove_columns=eval_ds.column_names) if eval_ds is not None else None

    set_seed(hp.seed)  # the new head is random: the same on every rank and in every run
    try:
        model: Any = AutoModelForSequenceClassification.from_pretrained(
            base_loc,
            trust_remote_code=spec.model.trust_remote_code,
            quantization_config=quantization_config(spec.peft),
            ignore_mismatched_sizes=True,  # a classifier base with another label set gets a new head
            **head,
        )
    except (OSError, ValueError) as exc:
        raise StageError(
            f"cannot build a sequence-classification model from {base_uri}: {str(exc).splitlines()[0]}"
        ) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if len(tok) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok))
    if regression:
        _init_regression_bias(model, float(values.mean()))
    prepare_tensor_parallel(spec, model)
    model = apply_peft(model, spec.peft, "SEQ_CLS", tok_loc)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    kw = training_kwargs(spec, config, ckpt, has_eval=eval_enc is not None, deepspeed=ds_config)
    kw.pop("gradient_checkpointing", None)  # the pre-transformers-5 name, kept only for TRL's configs
    args = TrainingArguments(**kw, include_num_input_tokens_seen=True)
    callback = ProgressCallback(reporter)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_enc,
        eval_dataset=eval_enc,
        processing_class=tok,
        data_collator=DataCollatorWithPadding(tok),
        compute_metrics=_compute_metrics(regression),
        callbacks=[callback],
    )
    resume = resume_point(ckpt, spec.checkpointing.resume)
    output = trainer.train(resume_from_checkpoint=resume)

    result_metrics: dict[str, float | None] = {
        "train_loss": callback.last("loss") if callback.last("loss") is not None else output.training_loss,
        "train_loss_mean": output.training_loss,
        "train_loss_initial": next((e["loss"] for e in callback.history if "loss" in e), None),
        "global_step": float(trainer.state.global_step),
        "trainable_params": float(trainable),
        "total_params": float(total),
        "tokens_per_second": callback.tokens_per_second,
    }
    if not regression:
        result_metrics["num_labels"] = float(len(id2label))
    if eval_enc is not None:
        ev = trainer.evaluate()
        names = ("mse", "rmse", "mae") if regression else ("accuracy", "precision", "recall", "f1")
        result_metrics["eval_loss"] = ev.get("eval_loss")
        result_metrics |= {k: ev.get(f"eval_{k}") for k in names}

    save_classifier(trainer, tok, spec, base_uri, id2label, local_path(config.output_uri))
    trainer.accelerator.wait_for_everyone()
    steps = trainer.state.global_step
    summary = ""
    if regression and result_metrics.get("rmse") is not None:
        summary = f", eval rmse {result_metrics['rmse']:.4f}"
    elif not regression and result_metrics.get("accuracy") is not None:
        summary = f", eval accuracy {result_metrics['accuracy']:.3f}, macro F1 {result_metrics['f1']:.3f}"
    message = f"{spec.method} finished after {steps} steps{summary}"
    return finish(config, reporter, callback, result_metrics, ckpt, message)


def config_rank() -> str:
    """This process's rank (torchrun's RANK), for per-rank scratch paths."""
    import os

    return os.environ.get("RANK", "0")


def save_classifier(
    trainer: Any, tok: Any, spec: TrainingJobSpec, base_uri: str, id2label: dict[int, str], out: Any
) -> None:
    """Write the artifact: full model, merged model + adapter/, or adapter, with the head in the manifest."""
    regression = spec.method == "regression"
    peft_used = spec.peft.method not in (PeftMethod.NONE, PeftMethod.FREEZE)
    manifest: dict[str, Any] = {
        "task": "regression" if regression else "sequence-classification",
        "peft": spec.peft.method.value,
        "baseModel": base_uri,
        "numLabels": 1 if regression else len(id2label),
        "labels": [] if regression else [id2label[i] for i in range(len(id2label))],
        "problemType": "regression" if regression else "single_label_classification",
    }
    if not peft_used:
        trainer.save_model(str(out))  # gathers ZeRO-3 shards; writes on the main process
        manifest["layout"] = "full"
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
