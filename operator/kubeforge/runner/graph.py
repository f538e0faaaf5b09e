"""Load a pipeline's manifests and order them by their references.

Everything here runs before any stage starts, so a typo in a reference, a cycle or a duplicate name
is reported with the manifest file and the field, and nothing has been trained yet.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

from ..api.v1alpha1 import KINDS, KubeResource
from ..manifests import ManifestError, iter_documents, parse
from ..stage import Dependency, dependencies

Key = tuple[str, str, str]  # (kind, namespace, name)

# How a dependency key maps to the manifest field that names it (for error messages).
DEP_FIELDS: dict[str, str] = {
    "parentDataset": "spec.source.fromDataset.name",
    "dataset": "spec.dataset.name",
    "model": "spec.model.ref.name",
    "rewardModel": "spec.reward.model.name",
    "calibration": "spec.quantization.calibration.name",
    "gate": "spec.gate.evaluations",
}


def key_of(resource: KubeResource) -> Key:
    """Identity of an object: kind, namespace, name."""
    return (resource.kind, resource.namespace, resource.name)


def ref_of(key: Key) -> str:
    """`Kind/name` (with `namespace/` when not default) for messages and the CLI."""
    kind, ns, name = key
    return f"{kind}/{name}" if ns == "default" else f"{kind}/{ns}/{name}"


@dataclass
class Node:
    """One object of the pipeline and where it was declared."""

    resource: KubeResource
    source: str
    label: str
    deps: list[Dependency] = field(default_factory=list)

    @property
    def key(self) -> Key:
        """Identity of the object."""
        return key_of(self.resource)

    @property
    def ref(self) -> str:
        """`Kind/name` for messages."""
        return ref_of(self.key)

    def dep_keys(self) -> list[Key]:
        """Keys of the objects this one needs, de-duplicated, in declaration order."""
        seen: dict[Key, None] = {}
        for d in self.deps:
            seen[(d.kind, d.namespace, d.name)] = None
        return list(seen)

    def input_deps(self) -> list[Dependency]:
        """Dependencies that feed the stage (gate Evaluations only gate promotion)."""
        return [d for d in self.deps if d.key != "gate"]

    def gate_deps(self) -> list[Dependency]:
        """Evaluations that must pass before a ModelDeployment is promoted."""
        return [d for d in self.deps if d.key == "gate"]


def dependency_fields(resource: KubeResource, deps: list[Dependency]) -> list[str]:
    """The manifest field of each dependency, e.g. `spec.policy.ref.name`, `spec.gate.evaluations[1]`."""
    out: list[str] = []
    gate_index = 0
    for d in deps:
        path = DEP_FIELDS[d.key]
        if d.key == "model" and resource.kind == "RLHFJob":
            path = "spec.policy.ref.name"
        if d.key == "gate":
            path = f"{path}[{gate_index}]"
            gate_index += 1
        out.append(path)
    return out


def _localize_uri(uri: str, base: Path, schemeless_is_file: bool) -> str:
    """`file://./x`, `file://x` (and, for data, a bare `x`) relative to `base` → `file:///abs/x`."""
    if uri.startswith("file:///"):
        return uri
    if uri.startswith("file://"):
        rel = uri.removeprefix("file://")
    elif schemeless_is_file and "://" not in uri:
        rel = uri
    else:
        return uri
    path = Path(rel).expanduser()
    if not path.is_absolute():
        path = (base / path).resolve()
    return f"file://{path}"


def localize(body: dict[str, Any], manifest_dir: Path) -> dict[str, Any]:
    """Resolve relative local paths against the manifest's directory (local runner only).

    Dataset `spec.source.uris` may be `data/x.jsonl`, `./data/x.jsonl` or `file://./data/x.jsonl`;
    model, tokenizer and reward `uri`s may use the explicit `file://./...` form (a bare `org/name`
    there is a Hugging Face id). Absolute `file:///` URIs and other schemes are left alone. The cluster
    never sees relative paths: the API's StorageLocation pattern only accepts `file:///`.
    """
    spec = body.get("spec")
    if not isinstance(spec, dict):
        return body
    source = spec.get("source")
    if isinstance(source, dict) and isinstance(source.get("uris"), list):
        source["uris"] = [
            _localize_uri(u, manifest_dir, True) if isinstance(u, str) else u for u in source["uris"]
        ]
    for holder_key in ("model", "policy", "tokenizer"):
        holder = spec.get(holder_key)
        if isinstance(holder, dict) and isinstance(holder.get("uri"), str):
            holder["uri"] = _localize_uri(holder["uri"], manifest_dir, False)
    reward = spec.get("reward")
    if isinstance(reward, dict) and isinstance(reward.get("uri"), str):
        reward["uri"] = _localize_uri(reward["uri"], manifest_dir, False)
    return body


def local_source_files(resource: KubeResource) -> list[Path]:
    """Local files a Dataset reads (their contents join the skip digest: edited data re-runs)."""
    if resource.kind != "Dataset":
        return []
    uris = resource.spec.source.uris or []  # type: ignore[attr-defined]
    files: list[Path] = []
    for uri in uris:
        if uri.startswith("file://"):
            files.extend(Path(p) for p in sorted(glob.glob(uri.removeprefix("file://"))) if Path(p).is_file())
    return files


def compatibility_problems(items: Sequence[tuple[KubeResource, str]]) -> list[str]:
    """Checks across objects that admission cannot make, one line per problem (`label: field: ...`).

    An Evaluation whose Dataset is among `items` must read records its taskType understands (a
    multiple-choice Evaluation needs a multiple-choice Dataset, numeric-answer a question-answer one)
    and splits the Dataset fills (the evaluated split and every few-shot split); a TrainingJob's method
    must fit its Dataset's task; a derived Dataset may only map columns its parent writes.
    """
    from ..api.v1alpha1.evaluation import DATASET_TASKS

    found: dict[tuple[str, str], list[KubeResource]] = {}
    for r, _ in items:
        if r.kind == "Dataset":
            found.setdefault((r.namespace, r.name), []).append(r)
    # a name defined twice (several pipelines validated together) is ambiguous: not checked here
    datasets = {k: v[0] for k, v in found.items() if len(v) == 1}
    problems: list[str] = []
    for resource, label in items:
        if resource.kind != "Evaluation":
            continue
        spec: Any = resource.spec  # type: ignore[attr-defined]
        ns = spec.dataset.namespace or resource.namespace
        ds = datasets.get((ns, spec.dataset.name))
        if ds is None:
            continue
        ds_spec: Any = ds.spec  # type: ignore[attr-defined]
        allowed = DATASET_TASKS[spec.task_type]
        if ds_spec.task not in allowed:
            problems.append(
                f"{label}: spec.dataset.name: Dataset/{ds.name} has task {ds_spec.task.value}, which cannot feed "
                f"taskType {spec.task_type.value}; it needs a Dataset with task "
                f"{' or '.join(t.value for t in allowed)}"
            )
        fractions = {"train": ds_spec.split.train, "validation": ds_spec.split.validation, "test": ds_spec.split.test}
        if fractions[spec.dataset.split] <= 0:
            problems.append(
                f"{label}: spec.dataset.split: Dataset/{ds.name} puts no records in split {spec.dataset.split} "
                f"(its split.{spec.dataset.split} is 0); evaluate another split or give it a share"
            )
        for i, variant in enumerate(spec.prompts or []):
            fs = variant.few_shot
            if fs.shots and fractions[fs.split] <= 0:
                problems.append(
                    f"{label}: spec.prompts[{i}].fewShot.split: Dataset/{ds.name} puts no records in split "
                    f"{fs.split} (its split.{fs.split} is 0); draw exemplars from a split it fills"
                )
    return problems + training_problems(items) + derived_dataset_problems(items)


def training_problems(items: Sequence[tuple[KubeResource, str]]) -> list[str]:
    """A TrainingJob whose Dataset is among `items` must train a method that fits the Dataset's task
    (sft on a classification Dataset would silently drop the labels: method classification trains them);
    an Evaluation of a TrainingJob's model must exercise the head that method trains."""
    from ..api.v1alpha1.trainingjob import dataset_task_problem

    found: dict[tuple[str, str, str], list[KubeResource]] = {}
    for r, _ in items:
        if r.kind in ("Dataset", "TrainingJob"):
            found.setdefault((r.kind, r.namespace, r.name), []).append(r)
    # a name defined twice (several pipelines validated together) is ambiguous: not checked here
    unique = {k: v[0] for k, v in found.items() if len(v) == 1}
    datasets = {(ns, name): r for (kind, ns, name), r in unique.items() if kind == "Dataset"}
    heads = ("classification", "regression")
    problems: list[str] = []
    for resource, label in items:
        if resource.kind == "Evaluation":
            ev: Any = resource.spec  # type: ignore[attr-defined]
            ref = ev.model.ref
            job = unique.get(("TrainingJob", ref.namespace or resource.namespace, ref.name)) if ref else None
            if job is None or ref.kind != "TrainingJob":
                continue
            method, task = str(job.spec.method), str(ev.task_type.value)  # type: ignore[attr-defined]
            if (task in heads or method in heads) and task != method:
                want = f"taskType {method}" if method in heads else "a language-model taskType"
                problems.append(
                    f"{label}: spec.taskType: {task} cannot evaluate TrainingJob/{job.name}, which trains method "
                    f"{method}; use {want}"
                )
            continue
        if resource.kind != "TrainingJob":
            continue
        spec: Any = resource.spec  # type: ignore[attr-defined]
        ds = datasets.get((spec.dataset.namespace or resource.namespace, spec.dataset.name))
        if ds is None:
            continue
        ds_spec: Any = ds.spec  # type: ignore[attr-defined]
        why = dataset_task_problem(spec.method, ds.name, ds_spec.task, bool(ds_spec.processing.chat_template))
        if why:
            problems.append(f"{label}: spec.method: {why}")
    return problems


def dataset_output_columns(spec: Any) -> set[str]:
    """Columns a Dataset's splits can hold: its task's fields, the optional ones, `text` from a chat template."""
    from ..api.v1alpha1.dataset import OPTIONAL_COLUMNS, TASK_COLUMNS, DatasetTask

    cols = set(TASK_COLUMNS[spec.task]) | set(OPTIONAL_COLUMNS.get(spec.task, ()))
    if spec.task == DatasetTask.CHAT and spec.processing.chat_template:
        cols.add("text")
    return cols


def derived_dataset_problems(items: Sequence[tuple[KubeResource, str]]) -> list[str]:
    """A Dataset derived from another (source.fromDataset) can only map columns its parent writes."""
    from ..api.v1alpha1.dataset import TASK_COLUMNS, DatasetTask

    found: dict[tuple[str, str], list[KubeResource]] = {}
    for r, _ in items:
        if r.kind == "Dataset":
            found.setdefault((r.namespace, r.name), []).append(r)
    # a name defined twice (several pipelines validated together) is ambiguous: not checked here
    datasets = {k: v[0] for k, v in found.items() if len(v) == 1}
    problems: list[str] = []
    for resource, label in items:
        spec: Any = resource.spec  # type: ignore[attr-defined]
        if resource.kind != "Dataset" or spec.source.from_dataset is None:
            continue
        parent = datasets.get((resource.namespace, spec.source.from_dataset.name))
        if parent is None:
            continue
        p_spec: Any = parent.spec  # type: ignore[attr-defined]
        have = dataset_output_columns(p_spec)
        wanted: list[tuple[str, str]] = []
        for f in TASK_COLUMNS[spec.task]:
            if f == "choices" and spec.columns.choice_columns:
                wanted += [(f"choiceColumns[{i}]", c) for i, c in enumerate(spec.columns.choice_columns)]
            else:
                wanted.append((f, getattr(spec.columns, f) or f))
        for f in ("subject", "rationale"):
            explicit = getattr(spec.columns, f, None)
            if explicit is not None and spec.task in (DatasetTask.MULTIPLE_CHOICE, DatasetTask.QUESTION_ANSWER):
                wanted.append((f, explicit))
        for f, column in wanted:
            if column in have:
                continue
            fix = f"set spec.columns.{f.split('[')[0]}" if column == f else f"fix spec.columns.{f}"
            problems.append(
                f"{label}: spec.columns.{f}: column {column!r} is not in the output of Dataset/{parent.name} "
                f"(task {p_spec.task.value}: columns {', '.join(sorted(have))}); {fix} to one of those, or read "
                "the raw data with spec.source.uris"
            )
    return problems


class Pipeline:
    """The validated objects of a run and their dependency order."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes: dict[Key, Node] = {n.key: n for n in nodes}
        self._check()
        self.order: list[Key] = self._toposort()

    def _check(self) -> None:
        problems: list[str] = []
        for node in self.nodes.values():
            for dep, path in zip(node.deps, dependency_fields(node.resource, node.deps), strict=True):
                if (dep.kind, dep.namespace, dep.name) in self.nodes:
                    continue
                same_name = [n.ref for k, n in self.nodes.items() if k[2] == dep.name and k[1] == dep.namespace]
                hint = f" (found {', '.join(same_name)}: wrong kind?)" if same_name else ""
                problems.append(
                    f"{node.label}: {path}: unknown reference {dep.ref} in namespace {dep.namespace}{hint}; "
                    f"add its manifest with another -f or fix the name"
                )
        problems += compatibility_problems([(n.resource, n.label) for n in self.nodes.values()])
        if problems:
            raise ManifestError(problems)

    def _toposort(self) -> list[Key]:
        sorter: TopologicalSorter[Key] = TopologicalSorter()
        for key, node in self.nodes.items():
            sorter.add(key, *node.dep_keys())
        try:
            sorter.prepare()
        except CycleError as exc:
            cycle: list[Key] = list(exc.args[1])
            first = self.nodes[cycle[0]]
            path = " -> ".join(ref_of(k) for k in reversed(cycle))
            fields = [
                f"{self.nodes[a].label}: {f} -> {ref_of(b)}"
                for a, b in zip(cycle[1:], cycle[:-1], strict=True)
                for d, f in zip(self.nodes[a].deps, dependency_fields(self.nodes[a].resource, self.nodes[a].deps),
                                strict=True)
                if (d.kind, d.namespace, d.name) == b
            ]
            raise ManifestError(
                [f"{first.label}: dependency cycle {path}; break it by removing one reference", *fields]
            ) from exc
        # Stable order: API apply order (Dataset first), then declaration order, among ready nodes.
        rank = {k: i for i, k in enumerate(self.nodes)}
        kind_rank = {k: i for i, k in enumerate(KINDS)}
        order: list[Key] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=lambda k: (kind_rank[k[0]], rank[k]))
            order.extend(ready)
            sorter.done(*ready)
        return order

    def __iter__(self) -> Iterator[Node]:
        """Nodes in run order."""
        return (self.nodes[k] for k in self.order)

    def find(self, ref: str) -> Node:
        """Look up `Kind/name` or `Kind/namespace/name` (kind case-insensitive; short names allowed)."""
        key = parse_ref(ref)
        for k, node in self.nodes.items():
            if k[0] == key[0] and k[2] == key[2] and (key[1] == "" or k[1] == key[1]):
                return node
        raise KeyError(f"{ref}: no such object in the given manifests (have: {', '.join(n.ref for n in self)})")

    def downstream(self, key: Key) -> list[Key]:
        """`key` and everything that (transitively) depends on it, in run order."""
        hit = {key}
        for k in self.order:
            if any(d in hit for d in self.nodes[k].dep_keys()):
                hit.add(k)
        return [k for k in self.order if k in hit]


def kind_from(text: str) -> str:
    """`trainingjob`, `trainingjobs`, `kftj`, `TrainingJob` → `TrainingJob`."""
    low = text.lower()
    for kind, cls in KINDS.items():
        if low in {kind.lower(), cls.PLURAL, *cls.SHORT_NAMES}:
            return kind
    raise KeyError(f"{text}: unknown kind; use one of {', '.join(KINDS)}")


def parse_ref(ref: str) -> Key:
    """`Kind/name` or `Kind/namespace/name` → key (namespace "" means any)."""
    parts = ref.split("/")
    if len(parts) == 2:
        return (kind_from(parts[0]), "", parts[1])
    if len(parts) == 3:
        return (kind_from(parts[0]), parts[1], parts[2])
    raise KeyError(f"{ref}: expected KIND/NAME, e.g. TrainingJob/base-lm")


def load_pipeline(paths: Iterable[str | Path]) -> Pipeline:
    """Parse, localise and validate every manifest; raise ManifestError listing every problem."""
    problems: list[str] = []
    nodes: list[Node] = []
    seen: dict[Key, str] = {}
    for doc in iter_documents(paths):
        body = localize(doc.body, Path(doc.source).resolve().parent)
        try:
            resource = parse(body, doc.label)
        except ManifestError as exc:
            problems.extend(exc.problems)
            continue
        key = key_of(resource)
        if key in seen:
            problems.append(
                f"{doc.label}: metadata.name: duplicate {ref_of(key)} (also defined in {seen[key]}); "
                f"names must be unique per kind and namespace"
            )
            continue
        seen[key] = doc.label
        nodes.append(Node(resource=resource, source=doc.source, label=doc.label, deps=dependencies(resource)))
    if problems:
        raise ManifestError(problems)
    if not nodes:
        raise ManifestError(["no Kubeforge manifests found in the given paths"])
    return Pipeline(nodes)
