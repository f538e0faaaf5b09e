"""Evaluation: metrics on a held-out split, with thresholds that gate promotion."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from .base import KubeModel, Name, cel
from .dataset import DatasetTask
from .kuberesource import KubeResource, bounded_printer_columns
from .references import DatasetInput, SpecReference, dataset_reference, model_reference, rerun_on_input_change_field
from .resources import Resources
from .sources import ModelSource, TokenizerSource
from .status import CommonStatus, LineageEntry
from .storage import StorageLocation


class EvalTask(StrEnum):
    """How the model is exercised."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    GENERATION = "generation"
    LANGUAGE_MODELING = "language-modeling"
    MULTIPLE_CHOICE = "multiple-choice"
    NUMERIC_ANSWER = "numeric-answer"


class Metric(StrEnum):
    """Metrics the evaluate stage computes (names match status.metrics keys)."""

    ACCURACY = "accuracy"
    PRECISION = "precision"
    RECALL = "recall"
    F1 = "f1"
    MSE = "mse"
    RMSE = "rmse"
    MAE = "mae"
    BLEU = "bleu"
    NIST = "nist"
    ROUGE1 = "rouge1"
    ROUGE2 = "rouge2"
    ROUGEL = "rougeL"
    EXACT_MATCH = "exact_match"
    EXACT_MATCH_STRICT = "exact_match_strict"
    EXACT_MATCH_FLEXIBLE = "exact_match_flexible"
    CONTAINS = "contains"
    ACC_NORM = "acc_norm"
    PERPLEXITY = "perplexity"


# Which metrics make sense for each task.
TASK_METRICS: dict[EvalTask, set[Metric]] = {
    EvalTask.CLASSIFICATION: {Metric.ACCURACY, Metric.PRECISION, Metric.RECALL, Metric.F1},
    EvalTask.REGRESSION: {Metric.MSE, Metric.RMSE, Metric.MAE},
    EvalTask.GENERATION: {
        Metric.BLEU, Metric.NIST, Metric.ROUGE1, Metric.ROUGE2, Metric.ROUGEL, Metric.EXACT_MATCH, Metric.CONTAINS,
    },
    EvalTask.LANGUAGE_MODELING: {Metric.PERPLEXITY},
    EvalTask.MULTIPLE_CHOICE: {Metric.ACCURACY, Metric.ACC_NORM},
    EvalTask.NUMERIC_ANSWER: {
        Metric.ACCURACY, Metric.EXACT_MATCH, Metric.EXACT_MATCH_STRICT, Metric.EXACT_MATCH_FLEXIBLE,
    },
}

# Dataset tasks whose records each taskType can read (`kubeforge validate` checks the pair).
DATASET_TASKS: dict[EvalTask, tuple[DatasetTask, ...]] = {
    EvalTask.CLASSIFICATION: (DatasetTask.CLASSIFICATION,),
    EvalTask.REGRESSION: (DatasetTask.REGRESSION,),
    EvalTask.GENERATION: (DatasetTask.INSTRUCTION, DatasetTask.CHAT, DatasetTask.QUESTION_ANSWER),
    EvalTask.LANGUAGE_MODELING: (
        DatasetTask.TEXT, DatasetTask.INSTRUCTION, DatasetTask.CHAT, DatasetTask.CLASSIFICATION, DatasetTask.REGRESSION,
    ),
    EvalTask.MULTIPLE_CHOICE: (DatasetTask.MULTIPLE_CHOICE,),
    EvalTask.NUMERIC_ANSWER: (DatasetTask.QUESTION_ANSWER,),
}
# Task types that take prompt variants (the others score the records as they are).
PROMPTED_TASKS = (EvalTask.GENERATION, EvalTask.MULTIPLE_CHOICE, EvalTask.NUMERIC_ANSWER)


def _task_metric_rule() -> str:
    clauses = [
        f"(self.taskType == '{task.value}' && self.metrics.all(m, m in {sorted(m.value for m in allowed)}))"
        for task, allowed in TASK_METRICS.items()
    ]
    return " || ".join(clauses)


class Threshold(KubeModel):
    """A pass/fail bound on one metric of one prompt variant."""

    metric: Metric = Field(description="Metric the bound applies to (must be listed in `metrics`).")
    min: float | None = Field(default=None, description="Pass only if metric >= min.")
    max: float | None = Field(default=None, description="Pass only if metric <= max (min <= max when both set).")
    variant: Name | None = Field(
        default=None,
        description="Prompt variant (a `prompts[].name`) whose score is gated; default: the first variant.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.min) || has(self.max)", "a threshold needs min or max"),
                cel("!has(self.min) || !has(self.max) || self.min <= self.max", "threshold min must be <= max",
                    ".min"),
            ]
        }
    )

    @model_validator(mode="after")
    def _bound(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("a threshold needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("threshold min must be <= max")
        return self

    def passes(self, value: float) -> bool:
        """Whether `value` is inside the bound."""
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class GenerationSettings(KubeModel):
    """Decoding used for generation-based metrics."""

    max_new_tokens: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description=(
            "Tokens to generate per sample. Default 64; 256 (lm-evaluation-harness's max_gen_toks) for "
            "numeric-answer and chain-of-thought prompt variants."
        ),
    )
    temperature: float = Field(default=0.0, ge=0, le=10, description="0 = greedy decoding.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    stop: list[str] | None = Field(
        default=None,
        max_length=8,
        description=(
            "Stop sequences: the output is cut at the first occurrence of each (the tokenizer's EOS always stops). "
            "Default for prompt variants: `Question:`, `</s>`, `<|im_end|>` (the harness's GSM8K), plus `Q:` for "
            "chain-of-thought; without `prompts`, numeric-answer stops at `Question:` and a blank line."
        ),
    )


class FewShot(KubeModel):
    """Solved exemplars shown before each question (lm-evaluation-harness's few-shot context)."""

    shots: int = Field(default=0, ge=0, le=32, description="Exemplars per question (0 = zero-shot).")
    split: Literal["train", "validation", "test"] = Field(
        default="train",
        description=(
            "Dataset split the exemplars are drawn from (MMLU: its dev split, GSM8K: train). When it is the "
            "evaluated split, the question itself is never its own exemplar."
        ),
    )
    sampler: Literal["first", "random"] = Field(
        default="first",
        description=(
            "`first`: the first `shots` records of the pool in split order (the harness's `first_n`, MMLU); "
            "`random`: drawn with a generator seeded by `seed`, one stream per pool consumed in record order "
            "(the harness's default sampler, GSM8K)."
        ),
    )
    seed: int = Field(default=1234, ge=0, description="Seed of the `random` sampler (the harness's default 1234).")
    same_subject: bool = Field(
        default=True,
        description=(
            "When records carry a `subject`, draw exemplars of the question's subject only (MMLU runs one task "
            "per subject)."
        ),
    )


class ChainOfThought(KubeModel):
    """Reason before answering: generate, then extract the answer from the reasoning."""

    trigger: str = Field(
        default="Let's think step by step.",
        max_length=500,
        description=(
            "Text after the question's answer cue that starts the reasoning (zero-shot CoT, Kojima et al.); it "
            "also precedes each exemplar's rationale. Empty: none (usual for few-shot CoT, e.g. the harness's "
            "gsm8k_cot)."
        ),
    )
    exemplar_target: str | None = Field(
        default=None,
        max_length=500,
        description=(
            "How a few-shot exemplar's answer is written, with `{rationale}` and `{answer}`. Default "
            "`{rationale} The answer is {answer}.` (numeric-answer) or `{rationale} The answer is ({answer}).` "
            "(multiple-choice, `{answer}` is the letter). Exemplars need a rationale (the `rationale` column, or "
            "the text before `####` of a GSM8K answer)."
        ),
    )
    answer_pattern: str | None = Field(
        default=None,
        max_length=500,
        description=(
            "Regex whose first group is the answer, first match wins (the harness's strict-match). Default "
            "`The answer is (\\-?[0-9\\.\\,]+)` (numeric-answer) or `answer is \\(?([A-Z])\\)?` "
            "(multiple-choice). Without a match: numeric-answer falls back to the last number, multiple-choice "
            "to the last standalone option letter."
        ),
    )
    answer_trigger: str | None = Field(
        default=None,
        max_length=500,
        description=(
            "Two-stage extraction: after the reasoning, append this (e.g. `Therefore, the answer (arabic "
            "numerals) is`) and generate the answer again (Kojima et al.); unset: extract from the reasoning."
        ),
    )


class PromptVariant(KubeModel):
    """One way of asking: template, zero-/few-shot, chain of thought. Text is rendered as plain text unless `chat`."""

    name: Name = Field(description="Variant name: the key in status.variants and thresholds[].variant.")
    format: Literal["lettered", "cloze"] | None = Field(
        default=None,
        description=(
            "multiple-choice only. `lettered` (default; the harness's MMLU): options listed as `A. ...`, the "
            "letter's log-likelihood (` A`, ` B`, ...) is scored. `cloze` (the harness's mmlu_continuation): "
            "each option's text is scored as the continuation."
        ),
    )
    system: str | None = Field(
        default=None,
        max_length=20000,
        description=(
            "System prompt. With `chat` it is the system turn; otherwise it is prepended to the header, joined by "
            "a blank line (the harness's system_instruction)."
        ),
    )
    header: str | None = Field(
        default=None,
        max_length=20000,
        description=(
            "Section before the exemplars (the harness's description); `{subject}` is the record's subject with "
            "`_` as spaces. Default for multiple-choice records with a subject: `The following are multiple "
            "choice questions (with answers) about {subject}.` (cloze: `The following are questions (with "
            "answers) about {subject}.`) and a blank line; otherwise none. Empty string: none."
        ),
    )
    user: str | None = Field(
        default=None,
        max_length=20000,
        description=(
            "Template of each question (exemplars and the evaluated one) with named sections `{question}`, "
            "`{choices}` (lettered list `A. ...` one per line), `{subject}`, `{prompt}` (instruction records). "
            "Default: `{question}\\n{choices}\\nAnswer:` (lettered), `Question: {question}\\nAnswer:` (cloze, "
            "numeric-answer, question-answer generation), `{prompt}` (instruction records)."
        ),
    )
    target_delimiter: str = Field(
        default=" ",
        max_length=16,
        description="Between a question and its answer, added only when neither side has whitespace there.",
    )
    exemplar_separator: str = Field(
        default="\n\n", max_length=16, description="After each few-shot exemplar (the harness's fewshot_delimiter)."
    )
    chat: bool = Field(
        default=False,
        description=(
            "Render through the tokenizer's chat template: a system turn (system prompt and header), a user/assistant "
            "turn pair per exemplar, then the question as the last user turn (the harness's --apply_chat_template "
            "--fewshot_as_multiturn); multiple-choice options are then scored without the target delimiter."
        ),
    )
    stop: list[str] | None = Field(
        default=None,
        max_length=8,
        description="Stop sequences of this variant (generated answers); default `generation.stop`, else per task.",
    )
    few_shot: FewShot = Field(default_factory=FewShot, description="Few-shot exemplars (default: zero-shot).")
    chain_of_thought: ChainOfThought | None = Field(
        default=None,
        description=(
            "Generate reasoning before the answer (multiple-choice: lettered only, scored by the extracted "
            "letter, so acc_norm is not reported; numeric-answer). Unset: answer directly."
        ),
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!has(self.chainOfThought) || !has(self.format) || self.format == 'lettered'",
                    "chainOfThought needs format lettered", ".chainOfThought"),
            ]
        }
    )

    @model_validator(mode="after")
    def _cot_format(self) -> PromptVariant:
        if self.chain_of_thought is not None and self.format == "cloze":
            raise ValueError("chainOfThought needs format lettered")
        return self


class BleuOptions(KubeModel):
    """sacrebleu settings."""

    effective_order: bool = Field(
        default=False,
        description=(
            "sacrebleu's effective order: n-gram orders no prediction is long enough to have are left out of the "
            "geometric mean instead of counting as zero precision, so a corpus of 1-3 word answers is not scored "
            "0. Off: sacrebleu's corpus BLEU defaults (what most papers report)."
        ),
    )
    tokenize: Literal["13a", "intl", "zh", "char", "none"] = Field(
        default="13a",
        description="sacrebleu tokenizer for BLEU and NIST: 13a (default), intl, zh (Chinese), char, none.",
    )


class RougeOptions(KubeModel):
    """rouge-score settings."""

    tokenizer: Literal["unicode", "rouge-score"] = Field(
        default="unicode",
        description=(
            "`unicode`: words of any script, lower-cased, and each CJK/kana character as its own token (identical "
            "to rouge-score on ASCII text). `rouge-score`: the package's default, which keeps only [a-z0-9] and so "
            "scores Chinese as 0."
        ),
    )
    use_stemmer: bool = Field(default=True, description="Porter-stem ASCII words longer than 3 letters.")


class ExactMatchOptions(KubeModel):
    """How predictions are normalised before exact match (whitespace is always collapsed and stripped)."""

    ignore_case: bool = Field(default=False, description="Lower-case both sides (the harness's ignore_case).")
    ignore_punctuation: bool = Field(
        default=False, description="Remove ASCII punctuation (the harness's ignore_punctuation)."
    )
    ignore_articles: bool = Field(
        default=False,
        description="Remove the words a, an, the; with the two above this is SQuAD's normalize_answer.",
    )
    regexes_to_ignore: list[str] | None = Field(
        default=None,
        max_length=16,
        description="Regexes deleted from both sides first (the harness's regexes_to_ignore).",
    )


class PerplexityOptions(KubeModel):
    """Sliding-window perplexity for texts longer than the context."""

    max_length: int | None = Field(
        default=None,
        ge=8,
        le=1048576,
        description="Window in tokens; default the model's context (at most 2048).",
    )
    stride: int | None = Field(
        default=None,
        ge=1,
        le=1048576,
        description=(
            "Tokens predicted per window after the first; each token is scored once, with the window's other "
            "tokens before it as context (at least window - stride). Default half the window; at most window - 1."
        ),
    )


class MetricOptions(KubeModel):
    """Metric semantics."""

    bleu: BleuOptions = Field(default_factory=BleuOptions, description="BLEU/NIST options.")
    rouge: RougeOptions = Field(default_factory=RougeOptions, description="ROUGE options.")
    exact_match: ExactMatchOptions = Field(default_factory=ExactMatchOptions, description="Exact-match options.")
    perplexity: PerplexityOptions = Field(default_factory=PerplexityOptions, description="Perplexity options.")


class EvaluationSpec(KubeModel):
    """Desired state of an Evaluation."""

    model: ModelSource = Field(description="Model under test: a producing object's output or a uri.")
    tokenizer: TokenizerSource = Field(default_factory=TokenizerSource, description="Tokenizer (default: model's).")
    dataset: DatasetInput = Field(description="Evaluation data (set `split`, usually `test`).")
    task_type: EvalTask = Field(
        description=(
            "classification, regression, generation, language-modeling, multiple-choice (MMLU style: "
            "`question`, `choices`, `answer`; a multiple-choice Dataset) or numeric-answer (GSM8K style: "
            "`question`, `answer`; a question-answer Dataset)."
        ),
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "taskType is immutable")]},
    )
    metrics: list[Metric] = Field(
        min_length=1,
        max_length=16,
        description=(
            "Metrics to compute. generation: bleu, nist, rouge1/2/L, exact_match, contains (the prediction "
            "contains its whole reference as words, after the exactMatch normalisation: a correct answer with "
            "extra text around it still counts, a fluent wrong one does not); multiple-choice: accuracy (the "
            "harness's acc), acc_norm (log-likelihood per "
            "character of the option); numeric-answer: accuracy (last number equals the gold number), "
            "exact_match, exact_match_strict and exact_match_flexible (the harness's GSM8K strict-match and "
            "flexible-extract)."
        ),
    )
    average: Literal["macro", "micro", "weighted", "binary"] = Field(
        default="macro", description="Averaging for precision/recall/F1."
    )
    generation: GenerationSettings = Field(default_factory=GenerationSettings, description="Decoding settings.")
    prompts: list[PromptVariant] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description=(
            "Prompt variants (generation, multiple-choice, numeric-answer), each scored on the same records; "
            "status.variants holds a variant x metric table and status.metrics the first variant's. Unset: one "
            "zero-shot `Question: ...\\nAnswer:` prompt (multiple-choice scored cloze-style), as before."
        ),
    )
    metric_options: MetricOptions = Field(
        default_factory=MetricOptions, description="Metric semantics (BLEU, ROUGE, exact match, perplexity)."
    )
    thresholds: list[Threshold] | None = Field(
        default=None, max_length=16, description="Bounds that must all hold for `Passed=True`."
    )
    max_samples: int | None = Field(default=None, ge=1, description="Evaluate at most this many records.")
    resources: Resources = Field(default_factory=Resources, description="Compute per pod.")
    output: StorageLocation = Field(default_factory=StorageLocation, description="Where the report is written.")
    rerun_on_input_change: bool = rerun_on_input_change_field()
    backoff_limit: int = Field(default=1, ge=0, le=20, description="Pod retries before the Job fails.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.thresholds) || self.thresholds.all(t, t.metric in self.metrics)",
                    "every thresholds[].metric must also be listed in metrics",
                    ".thresholds",
                ),
                cel(_task_metric_rule(), "metrics must suit taskType (e.g. mse for regression, bleu for generation)",
                    ".metrics"),
                cel(
                    "!has(self.prompts) || self.taskType in ['generation', 'multiple-choice', 'numeric-answer']",
                    "prompts need taskType generation, multiple-choice or numeric-answer",
                    ".prompts",
                ),
                cel(
                    "!has(self.prompts) || self.prompts.all(p, self.prompts.filter(q, q.name == p.name).size() == 1)",
                    "prompts[].name must be unique",
                    ".prompts",
                ),
                cel(
                    "!has(self.prompts) || self.taskType == 'multiple-choice' || self.prompts.all(p, !has(p.format))",
                    "prompts[].format needs taskType multiple-choice",
                    ".prompts",
                ),
                cel(
                    "!has(self.prompts) || self.taskType != 'generation' || "
                    "self.prompts.all(p, !has(p.chainOfThought))",
                    "prompts[].chainOfThought needs taskType multiple-choice or numeric-answer",
                    ".prompts",
                ),
                cel(
                    "!has(self.thresholds) || self.thresholds.all(t, !has(t.variant) || "
                    "(has(self.prompts) && self.prompts.exists(p, p.name == t.variant)))",
                    "thresholds[].variant must name one of prompts[].name",
                    ".thresholds",
                ),
            ]
        }
    )

    @model_validator(mode="after")
    def _rules(self) -> EvaluationSpec:
        bad = [m.value for m in self.metrics if m not in TASK_METRICS[self.task_type]]
        if bad:
            allowed = sorted(m.value for m in TASK_METRICS[self.task_type])
            raise ValueError(
                f"metrics must suit taskType (e.g. mse for regression, bleu for generation): {bad} are not "
                f"allowed for {self.task_type.value}; allowed: {allowed}"
            )
        for t in self.thresholds or []:
            if t.metric not in self.metrics:
                raise ValueError(f"thresholds metric {t.metric.value} must also be listed in metrics")
        if self.prompts is not None:
            if self.task_type not in PROMPTED_TASKS:
                raise ValueError("prompts need taskType generation, multiple-choice or numeric-answer")
            names = [p.name for p in self.prompts]
            if len(set(names)) != len(names):
                raise ValueError(f"prompts[].name must be unique: {names}")
            if self.task_type != EvalTask.MULTIPLE_CHOICE and any(p.format is not None for p in self.prompts):
                raise ValueError("prompts[].format needs taskType multiple-choice")
            if self.task_type == EvalTask.GENERATION and any(p.chain_of_thought for p in self.prompts):
                raise ValueError("prompts[].chainOfThought needs taskType multiple-choice or numeric-answer")
        known = set(self.variant_names())
        for t in self.thresholds or []:
            if t.variant is not None and (self.prompts is None or t.variant not in known):
                raise ValueError(f"thresholds[].variant must name one of prompts[].name, got {t.variant!r}")
        return self

    def variant_names(self) -> list[str]:
        """Names of the prompt variants in order (`default` when `prompts` is unset)."""
        return [p.name for p in self.prompts] if self.prompts else [DEFAULT_VARIANT]


DEFAULT_VARIANT = "default"


class VariantMetrics(KubeModel):
    """One row of the variant x metric table."""

    name: str = Field(description="Prompt variant (`spec.prompts[].name`).")
    metrics: dict[str, float] = Field(description="Metric values of this variant.")


class EvaluationStatus(CommonStatus):
    """Observed state of an Evaluation."""

    metrics: dict[str, float] | None = Field(
        default=None, description="Computed metric values (of the first prompt variant)."
    )
    variants: list[VariantMetrics] | None = Field(
        default=None,
        description="Metric values per prompt variant, in spec.prompts order (set when spec.prompts is).",
    )
    sample_count: int | None = Field(default=None, description="Records evaluated.")
    report_uri: str | None = Field(default=None, description="Where the JSON report and per-sample results are.")
    failed_thresholds: list[str] | None = Field(default=None, description="Thresholds that did not hold.")
    lineage: list[LineageEntry] | None = Field(
        default=None, description="The model and data evaluated (a gate compares it with the model to serve)."
    )


class Evaluation(KubeResource):
    """Evaluation of a model with pass/fail thresholds."""

    KIND: ClassVar[str] = "Evaluation"
    PLURAL: ClassVar[str] = "evaluations"
    SHORT_NAMES: ClassVar[list[str]] = ["kfev"]
    PRINTER_COLUMNS: ClassVar[list[dict[str, Any]]] = bounded_printer_columns(
        [
            {"name": "Passed", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Passed")].status'},
            {"name": "Task", "type": "string", "jsonPath": ".spec.taskType"},
            {"name": "Samples", "type": "integer", "jsonPath": ".status.sampleCount", "priority": 1},
        ]
    )

    kind: Literal["Evaluation"] = Field(default="Evaluation", description="Evaluation.")
    spec: EvaluationSpec = Field(description="Desired state.")
    status: EvaluationStatus | None = Field(default=None, description="Observed state (set by the operator).")


    def stage(self) -> str:
        return "evaluate"

    def references(self) -> list[SpecReference]:
        return [*dataset_reference(self.spec.dataset, "dataset", "spec.dataset"),
                *model_reference(self.spec.model, "model", "spec.model")]

    def uri_inputs(self) -> dict[str, str]:
        return {"model": self.spec.model.uri} if self.spec.model.uri is not None else {}
