"""The `prepare` stage: read raw records, clean them as the Dataset spec says, split, write parquet.

Rules run in spec.processing field order (normalize, pii, filters, dedup, outliers, labelMap,
chatTemplate); every rule that removes records is counted in `stats.json` and in status.removed,
so an empty result can be explained rule by rule. Everything is deterministic: the same input and
spec give byte-identical splits and the same content digest.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from kubeforge.api.v1alpha1.dataset import (
    OPTIONAL_COLUMNS,
    TASK_COLUMNS,
    Dataset,
    DatasetSpec,
    DatasetTask,
    Normalize,
    Pii,
)
from kubeforge.stage import StageConfig, StageResult

from . import dataio
from .runtime import ProgressReporter, StageError, artifact_for, digest_path, lineage_of, write_lineage

Record = dict[str, Any]
DROP_LABEL = "__drop__"
# Fields holding free text that normalisation and PII scrubbing rewrite (`answer` only when it is text).
TEXT_FIELDS = ("text", "prompt", "completion", "chosen", "rejected", "question", "answer", "rationale", "subject")
# Fields that filters, dedup and statistics read as the record's content (options count, subjects do not).
CONTENT_FIELDS = ("text", "prompt", "completion", "chosen", "rejected", "question", "answer", "rationale")


# --------------------------------------------------------------------------------------------- reading


def _source_records(config: StageConfig, spec: DatasetSpec) -> list[Record]:
    """Raw records from spec.source (files/globs/hf://) or from the parent Dataset's splits."""
    src = spec.source
    if src.from_dataset is not None:
        parent = config.inputs.get("parentDataset")
        if parent is None:
            raise StageError(
                f"spec.source.fromDataset {src.from_dataset.name!r} was not resolved (no parentDataset input)",
                reason="DependencyMissing",
            )
        records = dataio.read_split_records(parent.uri, src.from_dataset.split)
        return records[: spec.max_records] if spec.max_records else records
    out: list[Record] = []
    for uri in src.uris or []:
        left = None if spec.max_records is None else spec.max_records - len(out)
        if left == 0:
            break
        out.extend(
            dataio.read_records(uri, spec.format, hf_config=src.hf_config, hf_split=src.hf_split, limit=left)
        )
    return out


def map_columns(records: list[Record], spec: DatasetSpec) -> list[Record]:
    """Rename source columns to the task's fields; a missing column is a one-line, fixable error.

    Optional fields (`subject`, `rationale`) are kept when mapped or present under their own name;
    multiple-choice options may come from one list column or from `columns.choiceColumns`.
    """
    fields = TASK_COLUMNS[spec.task]
    choice_columns = spec.columns.choice_columns if spec.task == DatasetTask.MULTIPLE_CHOICE else None
    mapping = {f: getattr(spec.columns, f) or f for f in fields if not (f == "choices" and choice_columns)}
    available: list[str] = sorted({k for r in records for k in r})
    for f in OPTIONAL_COLUMNS.get(spec.task, ()):
        explicit = getattr(spec.columns, f)
        if explicit is not None or f in available:
            mapping[f] = explicit or f
    for field, column in mapping.items():
        if column not in available:
            hint = (
                f"set spec.columns.{field} to the source column holding the {field}"
                if column == field
                else f"spec.columns.{field} names {column!r}; fix it"
            )
            raise StageError(
                f"column {column!r} (task {spec.task.value} field {field!r}) not found in the source data; "
                f"available columns: {available}; {hint}",
                reason="MissingColumn",
            )
    missing_choices = [c for c in choice_columns or [] if c not in available]
    if missing_choices:
        raise StageError(
            f"spec.columns.choiceColumns names {missing_choices}, not found in the source data; "
            f"available columns: {available}",
            reason="MissingColumn",
        )
    out = [{f: r.get(c) for f, c in mapping.items()} for r in records]
    if choice_columns:
        for rec, r in zip(out, records, strict=True):
            rec["choices"] = [r.get(c) for c in choice_columns]
    return out


def _coerce(records: list[Record], task: DatasetTask) -> tuple[list[Record], int]:
    """Give every field its task type; records with a missing (null) field are dropped and counted."""
    out: list[Record] = []
    missing = 0
    optional = OPTIONAL_COLUMNS.get(task, ())
    for i, r in enumerate(records):
        if any(v is None for k, v in r.items() if k not in optional):
            missing += 1
            continue
        rec: Record = {k: ("" if v is None else v) for k, v in r.items()}
        for f in TEXT_FIELDS:
            if f in rec and not (f == "answer" and task == DatasetTask.MULTIPLE_CHOICE):
                rec[f] = str(rec[f])
        if task == DatasetTask.MULTIPLE_CHOICE:
            rec["choices"] = _choices(rec["choices"], i)
            if len(rec["choices"]) < 2:
                missing += 1
                continue
            rec["answer"] = _answer_index(rec["answer"], rec["choices"], i)
        elif task == DatasetTask.CHAT:
            rec["messages"] = _messages(rec["messages"], i)
        elif task == DatasetTask.REGRESSION:
            try:
                rec["value"] = float(rec["value"])
            except (TypeError, ValueError) as exc:
                raise StageError(
                    f"record {i}: regression value {rec['value']!r} is not a number; fix the data or "
                    "spec.columns.value",
                    reason="InvalidData",
                ) from exc
            if not math.isfinite(rec["value"]):
                missing += 1
                continue
        out.append(rec)
    if task == DatasetTask.CLASSIFICATION:
        labels = [r["label"] for r in out]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
            for r in out:  # one Arrow type per column: mixed or non-integer labels become strings
                r["label"] = str(r["label"])
    return out, missing


def _choices(value: Any, index: int) -> list[str]:
    """Multiple-choice options as a list of strings (a JSON list string, e.g. from CSV, is parsed;
    empty cells of `choiceColumns` are dropped)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise StageError(
                f"record {index}: choices is a string but not a JSON list ({exc.msg}); use a list column or "
                "spec.columns.choiceColumns",
                reason="InvalidData",
            ) from exc
    if not isinstance(value, list | tuple):
        raise StageError(
            f"record {index}: choices must be a list of options, got {type(value).__name__}; check "
            "spec.columns.choices or use spec.columns.choiceColumns",
            reason="InvalidData",
        )
    return [str(c) for c in value if c is not None and str(c) != ""]


def _answer_index(answer: Any, choices: list[str], index: int) -> int:
    """The gold option as a 0-based index (from an index, a letter A-Z, a digit string or the option text)."""
    from .prompts import answer_index

    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    return answer_index(answer, choices, index)


def _messages(value: Any, index: int) -> list[dict[str, str]]:
    """Chat messages as a list of {role, content} (JSON strings from CSV are parsed)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise StageError(f"record {index}: messages is a string but not JSON ({exc.msg})") from exc
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise StageError(
            f"record {index}: messages must be a list of {{role, content}} objects; check spec.columns.messages",
            reason="InvalidData",
        )
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


# ---------------------------------------------------------------------------------------- text helpers


def content(record: Record) -> str:
    """The record's text as filters, dedup and statistics see it (all text fields, labels excluded)."""
    if "messages" in record:  # chat: the messages (a rendered `text` is derived from them)
        return "\n".join(str(m["content"]) for m in record["messages"])
    if "choices" in record:  # multiple-choice: the question and its options, not the answer index
        return "\n".join([str(record["question"]), *(str(c) for c in record["choices"])])
    return "\n".join(str(record[f]) for f in CONTENT_FIELDS if f in record)


def _map_text(record: Record, fn: Callable[[str], str]) -> Record:
    out = dict(record)
    for f in TEXT_FIELDS:
        if f in out and isinstance(out[f], str):
            out[f] = fn(out[f])
    if "choices" in out:
        out["choices"] = [fn(c) for c in out["choices"]]
    if "messages" in out:
        out["messages"] = [{"role": m["role"], "content": fn(m["content"])} for m in out["messages"]]
    return out


_WS = re.compile(r"\s+")


def normalizer(spec: Normalize) -> Callable[[str], str]:
    """The text normalisation function the spec describes."""

    def norm(s: str) -> str:
        if spec.unicode != "none":
            s = unicodedata.normalize(spec.unicode, s)
        if spec.lowercase:
            s = s.lower()
        if spec.collapse_whitespace:
            s = _WS.sub(" ", s).strip()
        return s

    return norm


# ------------------------------------------------------------------------------------------------ PII


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
PII_PATTERNS: dict[str, re.Pattern[str]] = {
    # credit cards first (13-19 digits, Luhn-checked), so the phone rule does not eat them
    "credit-card": re.compile(r"(?<![\w.])(?:\d[ -]?){12,18}\d(?![\w.])"),
    # well-known token formats, and the value of `api_key=...`/`password: ...` style assignments
    "key": re.compile(
        r"(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|xox[abprs]-[A-Za-z0-9-]{10,}"
        r"|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,})"
        r"|(?i:\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|token|password|passwd)\b[\"']?\s*[:=]\s*[\"']?)"
        r"(?P<value>[^\s\"'&,;]{6,})"
    ),
    "email": re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "ip": re.compile(
        rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.])"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
    ),
    "phone": re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}(?!\w)"
    ),
}
PII_ORDER = ("credit-card", "key", "email", "ip", "phone")


def pii_scrubber(spec: Pii) -> tuple[Callable[[str], str], Counter[str]]:
    """A scrubbing function for the enabled kinds, and a counter of replacements it made."""
    hits: Counter[str] = Counter()
    kinds = [k for k in PII_ORDER if k in spec.kinds]

    def scrub(s: str) -> str:
        for kind in kinds:
            repl = spec.replacement.replace("{kind}", kind.upper().replace("-", "_"))

            def sub(m: re.Match[str], kind: str = kind, repl: str = repl) -> str:
                if kind == "credit-card" and not _luhn_ok(re.sub(r"\D", "", m.group(0))):
                    return m.group(0)
                hits[kind] += 1
                if m.groupdict().get("value") is not None:  # keep `api_key=`, replace only the secret
                    return m.group(0)[: m.start("value") - m.start(0)] + repl
                return repl

            s = PII_PATTERNS[kind].sub(sub, s)
        return s

    return scrub, hits


# ----------------------------------------------------------------------------------------- the rules


class Pipeline:
    """Runs the rules in order and keeps the before/after counts for stats.json."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.steps: list[dict[str, Any]] = []
        self.removed: dict[str, int] = {}

    def keep(self, rule: str, predicate: Callable[[Record], bool]) -> None:
        """Keep records the predicate accepts; count the rest under `rule`."""
        before = len(self.records)
        self.records = [r for r in self.records if predicate(r)]
        self.note(rule, before)

    def note(self, rule: str, before: int, **extra: Any) -> None:
        """Record a step's counts."""
        after = len(self.records)
        self.steps.append({"rule": rule, "before": before, "after": after, "removed": before - after, **extra})
        self.removed[rule] = self.removed.get(rule, 0) + before - after


def _compile(patterns: list[str], field: str) -> list[re.Pattern[str]]:
    out = []
    for i, p in enumerate(patterns):
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise StageError(f"spec.processing.filters.{field}[{i}] {p!r} is not a valid regex: {exc}") from exc
    return out


# LSH bands are chosen so that a pair exactly at the decision threshold becomes a candidate with at
# least this probability (LSH tuned *at* the threshold finds only about half of them); pairs above it
# are found even more often. Candidates are then decided exactly, so the looser LSH drops nothing extra.
LSH_RECALL_AT_THRESHOLD = 0.99


def lsh_params(threshold: float, num_perm: int, recall: float = LSH_RECALL_AT_THRESHOLD) -> tuple[int, int]:
    """(bands, rows): the most selective banding whose candidate probability at `threshold` is >= recall.

    P(candidate | Jaccard s) = 1 - (1 - s**rows) ** bands. For threshold 0.85 and 128 permutations this is
    16 bands of 8 rows (P = 0.994 at 0.85), which behaves like an LSH tuned at about 0.65.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def shingles(text: str, ngram: int) -> frozenset[str]:
    """Character n-gram shingles of a record's content (a short text is one shingle)."""
    return frozenset(text[j : j + ngram] for j in range(max(1, len(text) - ngram + 1)))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Exact Jaccard similarity of two shingle sets."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _near_duplicates(pipe: Pipeline, threshold: float, num_perm: int, ngram: int) -> None:
    """Drop a record whose shingle Jaccard similarity to an earlier kept record reaches `threshold`.

    MinHash + LSH only proposes candidates, with bands loose enough that a pair at the threshold is a
    candidate with probability >= LSH_RECALL_AT_THRESHOLD (`lsh_params`; an LSH tuned at the decision
    threshold misses about half the pairs right at it); each candidate is then checked with the exact
    Jaccard similarity of the shingle sets, so no record below the threshold is ever dropped.
    bench/near_dedup.py measures recall and false drops.
    """
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=num_perm, params=lsh_params(threshold, num_perm))
    kept: list[Record] = []
    sets: dict[str, frozenset[str]] = {}
    before = len(pipe.records)
    for i, r in enumerate(pipe.records):
        sh = shingles(content(r), ngram)
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([s.encode("utf-8") for s in sorted(sh)])
        if any(jaccard(sets[k], sh) >= threshold for k in lsh.query(m)):
            continue
        key = str(i)
        lsh.insert(key, m)
        sets[key] = sh
        kept.append(r)
    pipe.records = kept
    pipe.note("nearDuplicate", before)


def _outliers(pipe: Pipeline, method: str, k: float) -> None:
    values = np.array([r["value"] for r in pipe.records], dtype=float)
    before = len(pipe.records)
    if len(values) == 0:
        pipe.note("outliers", before)
        return
    if method == "zscore":
        std = values.std()
        keep = np.ones(len(values), bool) if std == 0 else np.abs(values - values.mean()) / std <= k
    else:
        q1, q3 = np.percentile(values, [25, 75])
        iqr = q3 - q1
        keep = (values >= q1 - k * iqr) & (values <= q3 + k * iqr)
    pipe.records = [r for r, ok in zip(pipe.records, keep, strict=True) if ok]
    pipe.note("outliers", before)


def _label_map(pipe: Pipeline, mapping: dict[str, str]) -> None:
    before = len(pipe.records)
    out = []
    for r in pipe.records:
        new = mapping.get(str(r["label"]), str(r["label"]))
        if new != DROP_LABEL:
            out.append(r | {"label": new})
    pipe.records = out
    pipe.note("labelMap", before)


def _chat_template(pipe: Pipeline, template: str) -> None:
    """Render messages into `text` with the same sandboxed Jinja settings transformers uses."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        tmpl = env.from_string(template)
    except TemplateError as exc:
        raise StageError(f"spec.processing.chatTemplate is not a valid Jinja template: {exc}") from exc
    before = len(pipe.records)
    out = []
    for i, r in enumerate(pipe.records):
        try:
            text = tmpl.render(messages=r["messages"], add_generation_prompt=False, bos_token="", eos_token="")
        except TemplateError as exc:
            raise StageError(f"spec.processing.chatTemplate failed on record {i}: {exc}") from exc
        out.append(r | {"text": text})
    pipe.records = out
    pipe.note("chatTemplate", before)


def process(records: list[Record], spec: DatasetSpec) -> tuple[list[Record], Pipeline, dict[str, int]]:
    """Apply spec.processing in field order; returns the kept records, the pipeline log and PII hits."""
    proc = spec.processing
    records, missing = _coerce(records, spec.task)
    pipe = Pipeline(records)
    pipe.steps.append(
        {"rule": "missingValues", "before": len(records) + missing, "after": len(records), "removed": missing}
    )
    pipe.removed["missingValues"] = missing

    norm = normalizer(proc.normalize)
    before = len(pipe.records)
    pipe.records = [_map_text(r, norm) for r in pipe.records]
    pipe.note("normalize", before)

    pii_hits: Counter[str] = Counter()
    if proc.pii.enabled:
        scrub, pii_hits = pii_scrubber(proc.pii)
        before = len(pipe.records)
        pipe.records = [_map_text(r, scrub) for r in pipe.records]
        pipe.note("pii", before, replaced=dict(sorted(pii_hits.items())))

    f = proc.filters
    if f.min_length is not None:
        lo = f.min_length
        pipe.keep("minLength", lambda r: len(content(r)) >= lo)
    if f.max_length is not None:
        hi = f.max_length
        pipe.keep("maxLength", lambda r: len(content(r)) <= hi)
    if f.include_regex:
        inc = _compile(f.include_regex, "includeRegex")
        pipe.keep("includeRegex", lambda r: all(p.search(content(r)) for p in inc))
    if f.exclude_regex:
        exc = _compile(f.exclude_regex, "excludeRegex")
        pipe.keep("excludeRegex", lambda r: not any(p.search(content(r)) for p in exc))

    if proc.dedup.exact:
        seen: set[str] = set()

        def first(r: Record) -> bool:
            h = hashlib.sha256(content(r).encode("utf-8")).hexdigest()
            if h in seen:
                return False
            seen.add(h)
            return True

        pipe.keep("exactDuplicate", first)
    near = proc.dedup.near
    if near.enabled:
        _near_duplicates(pipe, near.threshold, near.num_perm, near.ngram)

    if spec.task == DatasetTask.REGRESSION and proc.outliers.method != "none":
        _outliers(pipe, proc.outliers.method, proc.outliers.threshold)
    if spec.task == DatasetTask.CLASSIFICATION and proc.label_map:
        _label_map(pipe, proc.label_map)
    if spec.task == DatasetTask.CHAT and proc.chat_template:
        _chat_template(pipe, proc.chat_template)
    return pipe.records, pipe, dict(pii_hits)


# ---------------------------------------------------------------------------------------------- split


def _counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Records per split for n records; train gets the remainder (and at least one record)."""
    n_val = math.floor(n * fractions[1] + 0.5)
    n_test = math.floor(n * fractions[2] + 0.5)
    while n_val + n_test >= n and n > 0:  # keep at least one training record
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def _apportion(sizes: list[int], fraction: float, target: int, taken: list[int]) -> list[int]:
    """Records per group for one split: `target` in total, each group near `size * fraction`.

    Largest remainders first, so each group gets the floor or ceiling of its share
    and the total matches the split's global count. A group first keeps one record for train; only when
    the target cannot be met otherwise (many singleton groups) do groups give up their last record.
    """
    ideal = [n * fraction for n in sizes]
    alloc = [0] * len(sizes)
    # largest remainder first; among equals, groups that gave the earlier split fewer records, then group order
    order = sorted(range(len(sizes)), key=lambda i: (-(ideal[i] - math.floor(ideal[i])), taken[i], i))
    for reserve in (1, 0):
        cap = [max(0, n - t - reserve) for n, t in zip(sizes, taken, strict=True)]
        for i in range(len(sizes)):
            alloc[i] = max(alloc[i], min(math.floor(ideal[i]), cap[i]))
        left = target - sum(alloc)
        while left > 0:
            progressed = False
            for i in order:
                if left > 0 and alloc[i] < cap[i] and alloc[i] < math.ceil(ideal[i]) + (1 - reserve) * sizes[i]:
                    alloc[i] += 1
                    left -= 1
                    progressed = True
            if not progressed:
                break
        if left <= 0:
            break
    while sum(alloc) > target:  # the global count was lowered to keep a train record: trim the smallest remainders
        i = next(i for i in reversed(order) if alloc[i] > 0)
        alloc[i] -= 1
    return alloc


def _stratified_counts(sizes: list[int], fractions: tuple[float, float, float]) -> list[tuple[int, int, int]]:
    """(train, validation, test) per group whose totals equal the unstratified split of sum(sizes).

    Rounding each group on its own drifts with many small groups (100 labels of 3 records at 0.8/0.1/0.1
    would put nothing in validation or test); apportioning the global counts keeps every split within one
    record of its ratio.
    """
    _, n_val, n_test = _counts(sum(sizes), fractions)
    val = _apportion(sizes, fractions[1], n_val, [0] * len(sizes))
    test = _apportion(sizes, fractions[2], n_test, val)
    return [(n - v - t, v, t) for n, v, t in zip(sizes, val, test, strict=True)]


def split(records: list[Record], spec: DatasetSpec) -> dict[str, list[Record]]:
    """Seeded shuffle into train/validation/test; with stratify, each label is split on its own (the
    per-label counts are apportioned so the global ratios hold within one record per split)."""
    s = spec.split
    fractions = (s.train, s.validation, s.test)
    rng = np.random.default_rng(s.seed)
    groups: list[list[int]]
    if s.stratify:  # by label (classification) or subject (multiple-choice)
        group_key = "label" if spec.task == DatasetTask.CLASSIFICATION else "subject"
        by_label: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by_label.setdefault(str(r.get(group_key, "")), []).append(i)
        groups = [by_label[k] for k in sorted(by_label)]
    else:
        groups = [list(range(len(records)))]
    parts: dict[str, list[int]] = {name: [] for name in dataio.SPLITS}
    counts = _stratified_counts([len(g) for g in groups], fractions)
    for idx, (n_train, n_val, _) in zip(groups, counts, strict=True):
        order = [idx[j] for j in rng.permutation(len(idx))]
        parts["train"] += order[:n_train]
        parts["validation"] += order[n_train : n_train + n_val]
        parts["test"] += order[n_train + n_val :]
    out = {}
    for name, idx in parts.items():
        if s.stratify:  # interleave labels inside each split
            idx = [idx[j] for j in rng.permutation(len(idx))]
        out[name] = [records[i] for i in idx]
    return out


# ---------------------------------------------------------------------------------------------- stats


def content_digest(splits: dict[str, list[Record]]) -> str:
    """`sha256:` over the canonical JSON of every record of every split (independent of parquet bytes)."""
    h = hashlib.sha256()
    for name in dataio.SPLITS:
        h.update(name.encode() + b"\0")
        for r in splits[name]:
            h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return "sha256:" + h.hexdigest()


def statistics(records: list[Record], task: DatasetTask) -> tuple[dict[str, Any], dict[str, float]]:
    """Length distribution and label balance / target summary: (nested for stats.json, flat for status)."""
    lengths = np.array([len(content(r)) for r in records], dtype=float)
    nested: dict[str, Any] = {}
    flat: dict[str, float] = {}
    if len(lengths):
        dist = {
            "min": float(lengths.min()),
            "max": float(lengths.max()),
            "mean": float(lengths.mean()),
            "p50": float(np.percentile(lengths, 50)),
            "p95": float(np.percentile(lengths, 95)),
        }
        nested["length"] = dist
        flat.update({f"length.{k}": round(v, 4) for k, v in dist.items()})
    if task == DatasetTask.CLASSIFICATION and records:
        counts = Counter(str(r["label"]) for r in records)
        nested["labels"] = dict(sorted(counts.items()))
        for label, c in sorted(counts.items()):
            flat[f"label.{label}"] = round(c / len(records), 6)
    if task == DatasetTask.MULTIPLE_CHOICE and records:
        golds = Counter(chr(ord("A") + int(r["answer"])) for r in records)
        nested["answers"] = dict(sorted(golds.items()))
        for letter, c in sorted(golds.items()):
            flat[f"answer.{letter}"] = round(c / len(records), 6)
        n_choices = np.array([len(r["choices"]) for r in records], dtype=float)
        nested["choices"] = {"min": float(n_choices.min()), "max": float(n_choices.max())}
        flat["choices.mean"] = round(float(n_choices.mean()), 4)
        subjects = Counter(str(r.get("subject") or "") for r in records)
        if any(subjects):
            nested["subjects"] = dict(sorted(subjects.items()))
            flat["subjects"] = float(len(subjects))
    if task in (DatasetTask.MULTIPLE_CHOICE, DatasetTask.QUESTION_ANSWER) and records:
        with_rationale = sum(1 for r in records if str(r.get("rationale") or "") or "####" in str(r.get("answer")))
        flat["rationale.share"] = round(with_rationale / len(records), 6)
    if task == DatasetTask.REGRESSION and records:
        values = np.array([r["value"] for r in records], dtype=float)
        target = {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
                  "std": float(values.std())}
        nested["value"] = target
        flat.update({f"value.{k}": round(v, 6) for k, v in target.items()})
    return nested, flat


def _explain_empty(pipe: Pipeline, n_input: int) -> str:
    removed = ", ".join(f"{s['rule']} removed {s['removed']}" for s in pipe.steps if s["removed"])
    return (
        f"no records left for the train split: read {n_input}, {removed or 'nothing was removed'}; "
        "loosen spec.processing (filters/dedup/outliers/labelMap) or add data"
    )


# ------------------------------------------------------------------------------------------------ run


def run(config: StageConfig, reporter: ProgressReporter) -> StageResult:
    """Read, clean, split and write the Dataset; returns counts, removals, statistics and digests."""
    resource = cast(Dataset, config.typed())
    spec = resource.spec
    total_steps = 4
    reporter.update(step=0, total_steps=total_steps, force=True)

    raw = _source_records(config, spec)
    n_input = len(raw)
    if n_input == 0:
        raise StageError("the source yielded no records; check spec.source", reason="EmptyDataset")
    records = map_columns(raw, spec)
    reporter.update(step=1, total_steps=total_steps)

    records, pipe, pii_hits = process(records, spec)
    if not records:
        raise StageError(_explain_empty(pipe, n_input), reason="EmptyDataset")
    reporter.update(step=2, total_steps=total_steps)

    splits = split(records, spec)
    if not splits["train"]:
        raise StageError(_explain_empty(pipe, n_input), reason="EmptyDataset")
    columns = list(TASK_COLUMNS[spec.task])
    columns += [c for c in OPTIONAL_COLUMNS.get(spec.task, ()) if any(c in r for r in records)]
    if spec.task == DatasetTask.CHAT and spec.processing.chat_template:
        columns.append("text")
    schema = dataio.schema_for(records, columns)
    digest = content_digest(splits)
    nested, flat = statistics(records, spec.task)
    counts = {"input": n_input, **{name: len(rs) for name, rs in splits.items()}}
    stats_body = {
        "task": spec.task.value,
        "counts": counts,
        "steps": pipe.steps,
        "removed": pipe.removed,
        "pii": pii_hits,
        "statistics": nested,
        "splitStatistics": {name: statistics(rs, spec.task)[0] for name, rs in splits.items()},
        "digest": digest,
    }
    with dataio.staged_output(config.output_uri) as out:
        for name, rs in splits.items():
            dataio.write_split(out, name, rs, schema)
        (out / "stats.json").write_text(json.dumps(stats_body, indent=2, sort_keys=True))
        reporter.update(step=3, total_steps=total_steps)
        if dataio.is_local(config.output_uri):
            artifact = artifact_for(config.output_uri)
            write_lineage(config, artifact)
        else:
            from kubeforge.api.v1alpha1.status import Artifact

            d, size = digest_path(out)
            artifact = Artifact(uri=config.output_uri, digest=d, size_bytes=size)
            write_lineage(config.model_copy(update={"output_uri": str(out)}), artifact)
    reporter.update(step=total_steps, total_steps=total_steps, force=True)
    summary = ", ".join(f"{k}={v}" for k, v in counts.items())
    return StageResult(
        succeeded=True,
        message=f"prepared {spec.task.value} dataset: {summary}",
        artifact=artifact,
        lineage=lineage_of(config),
        details={
            "counts": counts,
            "removed": pipe.removed,
            "statistics": flat,
            "digest": digest,
            "artifactUri": config.output_uri,
        },
    )
