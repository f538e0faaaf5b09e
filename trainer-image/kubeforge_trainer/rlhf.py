"""`rlhf` stage (RLHFJob): GRPO, RLOO and online DPO against a reward model and/or built-in reward
functions (weighted per spec.reward), or offline DPO on preference pairs (TRL).

Mapping: spec.klCoefficient → `beta`; spec.generation → num_generations, max_completion_length
(online DPO: max_new_tokens), temperature, top_p. Metrics: `reward` is the mean reward of the
sampled completions over the run (online), or the mean implicit reward margin chosen-rejected
(DPO); `reward_final` is the last logged value. Online algorithms also score greedy completions of
held-out prompts before and after training (`reward_before`, `reward_after`, `reward_gain`; see
rlhf_heldout). The policy is saved like a TrainingJob output.
"""

from __future__ import annotations

from typing import Any

from kubeforge.api.v1alpha1.rlhfjob import RLAlgorithm, RLHFJobSpec
from kubeforge.stage import StageConfig, StageResult, local_path

from . import modelio
from .callbacks import ProgressCallback
from .rewards import REFERENCE_COLUMN, ScoredAsTrained, build_reward_functions
from .rlhf_heldout import RewardSetup, before_after_metrics, heldout_prompts, log_samples, mean_reward
from .runtime import ProgressReporter, StageError
from .stagecommon import (
    apply_peft,
    check_device,
    check_merge,
    checkpoint_dir,
    finish,
    input_model_uri,
    quantization_config,
    quiet_other_ranks,
    read_split,
    require_columns,
    resume_point,
    setup_distributed,
    training_kwargs,
)
from .tensor_parallel import prepare_tensor_parallel
from .train import count_trainable, save_causal_lm

PROMPT_COLUMNS: list[tuple[str, ...]] = [("prompt",), ("messages",)]
PREFERENCE_COLUMNS: list[tuple[str, ...]] = [("prompt", "chosen", "rejected"), ("chosen", "rejected")]
# metric logged by each trainer that `reward` reports
REWARD_KEY = {
    RLAlgorithm.GRPO: "reward",
    RLAlgorithm.RLOO: "reward",
    RLAlgorithm.ONLINE_DPO: "objective/scores",
    RLAlgorithm.DPO: "rewards/margins",
}


def prompts_dataset(ds: Any, cols: tuple[str, ...]) -> Any:
    """`prompt` (+ `reference` when the data has an answer) for online algorithms."""
    if cols == ("prompt",):
        keep = ["prompt"] + (["completion"] if "completion" in ds.column_names else [])
        ds = ds.select_columns(keep)
        return ds.rename_column("completion", REFERENCE_COLUMN) if "completion" in keep else ds

    def split_chat(row: dict[str, Any]) -> dict[str, Any]:
        msgs = list(row["messages"])
        ref = msgs.pop()["content"] if msgs and msgs[-1].get("role") == "assistant" else ""
        return {"prompt": msgs, REFERENCE_COLUMN: ref}

    return ds.map(split_chat, remove_columns=ds.column_names)


def _reward_model(config: StageConfig, scratch: str) -> tuple[Any, Any] | None:
    """(model, tokenizer) of the reward model input, if any."""
    if "rewardModel" not in config.inputs:
        return None
    from transformers import AutoModelForSequenceClassification

    uri = input_model_uri(config, "rewardModel")
    rm_dir = modelio.full_model_dir(modelio.model_location(uri), scratch=scratch)
    try:
        rm = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1)
    except (OSError, ValueError) as exc:
        raise StageError(f"cannot load the reward model {uri}: {str(exc).splitlines()[0]}") from None
    rm_tok = modelio.load_tokenizer(rm_dir)
    if rm.config.pad_token_id is None:
        rm.config.pad_token_id = rm_tok.pad_token_id
    rm.eval()
    return rm, rm_tok


def run(config: StageConfig, reporter: ProgressReporter) -> StageResult:
    """Optimise the policy, report rewards, save it."""
    spec: RLHFJobSpec = config.typed().spec  # type: ignore[attr-defined]
    algo = spec.algorithm
    check_device(spec)
    quiet_other_ranks(reporter)
    check_merge(spec.peft)
    ds_config = setup_distributed(spec)

    split = spec.dataset.split
    train_ds = read_split(config, split, required=True)
    assert train_ds is not None
    what = f"algorithm {algo.value}"
    if algo == RLAlgorithm.DPO:
        cols = require_columns(train_ds, PREFERENCE_COLUMNS, what, split)
        train_ds = train_ds.select_columns(list(cols))
    else:
        cols = require_columns(train_ds, PROMPT_COLUMNS, what, split)
        train_ds = prompts_dataset(train_ds, cols)
    eval_ds = None
    if algo == RLAlgorithm.DPO and spec.dataset.eval_split:
        eval_ds = read_split(config, spec.dataset.eval_split, required=False)
        if eval_ds is not None:
            eval_ds = eval_ds.select_columns(list(cols)) if set(cols) <= set(eval_ds.column_names) else None

    ckpt = checkpoint_dir(config)
    policy_uri = input_model_uri(config)
    policy_loc = modelio.model_location(policy_uri)
    tok_loc = modelio.model_location(spec.tokenizer.uri) if spec.tokenizer.uri else policy_loc
    tok = modelio.load_tokenizer(tok_loc, trust_remote_code=spec.policy.trust_remote_code)
    if "messages" in cols:
        modelio.ensure_chat_template(tok)

    kw = training_kwargs(spec, config, ckpt, has_eval=eval_ds is not None, deepspeed=ds_config)
    reward_funcs: list[Any] = []
    reward_weights: list[float] = []
    reward_tokenizers: list[Any] = []
    if algo != RLAlgorithm.DPO:
        assert spec.reward is not None
        rm = _reward_model(config, str(ckpt / "reward-merged"))
        if rm is not None:
            reward_funcs.append(rm[0])
            reward_weights.append(spec.reward.model_weight)
            # plain prompts: score prompt + completion + EOS, as the RewardTrainer trained the model
            reward_tokenizers.append(rm[1] if "messages" in cols else ScoredAsTrained(rm[1]))
        fns, weights = build_reward_functions(spec.reward.functions)
        reward_funcs += fns
        reward_weights += weights
        reward_tokenizers += [None] * len(fns)
        if not reward_funcs:
            raise StageError(f"{what} needs spec.reward.model, spec.reward.uri or spec.reward.functions")

    args = _config(spec, kw, reward_weights)

    model = modelio.load_causal_lm(
        policy_loc,
        merge=True,
        trust_remote_code=spec.policy.trust_remote_code,
        quantization_config=quantization_config(spec.peft),
    )
    if modelio.is_prompt_learning(model):
        raise StageError(f"spec.policy {policy_uri} is a prefix/prompt-tuning adapter: start from its base model")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    prepare_tensor_parallel(spec, model)  # dpo only: the API refuses tensorParallel for online algorithms
    model = apply_peft(model, spec.peft, "CAUSAL_LM", tok_loc)
    trainable, _ = count_trainable(model)

    callback = ProgressCallback(reporter)
    common: dict[str, Any] = {
        "model": model,
        "args": args,
        "train_dataset": train_ds,
        "processing_class": tok,
        "callbacks": [callback],
    }
    trainer: Any
    try:
        if algo == RLAlgorithm.GRPO:
            from trl.trainer.grpo_trainer import GRPOTrainer

            trainer = GRPOTrainer(reward_funcs=reward_funcs, reward_processing_classes=reward_tokenizers, **common)
        elif algo == RLAlgorithm.RLOO:
            from trl.trainer.rloo_trainer import RLOOTrainer

            trainer = RLOOTrainer(reward_funcs=reward_funcs, reward_processing_classes=reward_tokenizers, **common)
        elif algo == RLAlgorithm.ONLINE_DPO:
            from trl.experimental.online_dpo import OnlineDPOTrainer

            trainer = OnlineDPOTrainer(reward_funcs=reward_funcs, reward_processing_classes=reward_tokenizers, **common)
        else:
            from trl.trainer.dpo_trainer import DPOTrainer

            trainer = DPOTrainer(eval_dataset=eval_ds, **common)
    except ValueError as exc:  # TRL's own consistency checks (batch vs group size, ...)
        raise StageError(f"{what}: {str(exc).splitlines()[0]}") from None

    heldout = None
    zero3 = ds_config is not None and spec.distributed.zero_stage == 3  # generate() needs gathered weights
    if algo != RLAlgorithm.DPO and not zero3:
        heldout = heldout_prompts(config, spec, prompts_dataset)
    setup = RewardSetup(reward_funcs, reward_weights, reward_tokenizers)
    max_new = spec.generation.max_completion_length
    before = None
    if heldout is not None:  # the starting policy, whether or not training resumes from a checkpoint
        before = mean_reward(trainer.model, tok, heldout[1], setup, max_new, keep_samples=4)
        log_samples(f"held-out {heldout[0]} before {algo.value}", before[0], setup.samples)

    resume = resume_point(ckpt, spec.checkpointing.resume)
    output = trainer.train(resume_from_checkpoint=resume)
    after = None
    if heldout is not None:
        after = mean_reward(trainer.accelerator.unwrap_model(trainer.model), tok, heldout[1], setup, max_new, 4)
        log_samples(f"held-out {heldout[0]} after {algo.value}", after[0], setup.samples)
    key = REWARD_KEY[algo]
    metrics: dict[str, float | None] = {
        "train_loss": callback.last("loss") if callback.last("loss") is not None else output.training_loss,
        "train_loss_mean": output.training_loss,
        "global_step": float(trainer.state.global_step),
        "tokens_per_second": callback.tokens_per_second,
        "trainable_params": float(trainable),
        "reward": callback.mean(key),
        "reward_initial": next((e[key] for e in callback.history if key in e), None),
        "reward_final": callback.last(key),
    }
    if algo == RLAlgorithm.DPO:
        metrics["reward_accuracy"] = callback.last("rewards/accuracies")
        if eval_ds is not None:
            ev = trainer.evaluate()
            metrics["eval_loss"] = ev.get("eval_loss")
            metrics["eval_reward_accuracy"] = ev.get("eval_rewards/accuracies")
    else:
        metrics["kl"] = callback.last("kl")
        n = len(heldout[1]) if heldout is not None else 0
        metrics.update(before_after_metrics(before, after, n, setup.mixed))

    save_causal_lm(trainer, tok, spec, policy_uri, local_path(config.output_uri))
    trainer.accelerator.wait_for_everyone()
    r, b, a = metrics["reward"], metrics.get("reward_before"), metrics.get("reward_after")
    return finish(
        config,
        reporter,
        callback,
        metrics,
        ckpt,
        f"{algo.value} finished after {trainer.state.global_step} steps"
        + (f", mean reward {r:.4f}" if r is not None else "")
        + (f", held-out reward {b:.4f} -> {a:.4f}" if b is not None and a is not None else ""),
    )


def _config(spec: RLHFJobSpec, kw: dict[str, Any], reward_weights: list[float]) -> Any:
    """The TRL config for spec.algorithm, with RL fields mapped from the spec."""
    algo, gen, hp = spec.algorithm, spec.generation, spec.hyperparameters
    if algo in (RLAlgorithm.GRPO, RLAlgorithm.RLOO):
        world = spec.distributed.world_size
        group = hp.batch_size * world * hp.gradient_accumulation_steps
        if group % gen.num_generations:
            raise StageError(
                f"spec.generation.numGenerations {gen.num_generations} must divide spec.hyperparameters.batchSize x "
                f"gradientAccumulationSteps x processes ({group}): change one of them"
            )
        rl: dict[str, Any] = {
            "num_generations": gen.num_generations,
            "max_completion_length": gen.max_completion_length,
            "temperature": gen.temperature,
            "top_p": gen.top_p,
            "beta": spec.kl_coefficient,
            "reward_weights": reward_weights,
            "log_completions": False,
        }
        if algo == RLAlgorithm.GRPO:
            from trl.trainer.grpo_config import GRPOConfig

            return GRPOConfig(**kw, **rl)
        from trl.trainer.rloo_config import RLOOConfig

        return RLOOConfig(**kw, **rl)
    if algo == RLAlgorithm.ONLINE_DPO:
        from trl.experimental.online_dpo import OnlineDPOConfig

        return OnlineDPOConfig(
            **kw,
            max_new_tokens=gen.max_completion_length,
            max_length=hp.max_length,
            temperature=gen.temperature,
            top_p=gen.top_p,
            beta=[spec.kl_coefficient],
            reward_weights=reward_weights,
        )
    from trl.trainer.dpo_config import DPOConfig

    return DPOConfig(**kw, beta=spec.kl_coefficient, max_length=hp.max_length)
