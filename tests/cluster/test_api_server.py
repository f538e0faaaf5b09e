"""The CRDs against a real kube-apiserver (hack/test-cluster.sh): install, explain, dry-run, CEL, printing.

Every invalid manifest in INVALID is checked twice: rejected by the server (422 naming the field) and
rejected offline by the pydantic models (`kubeforge.manifests.parse`). That pair keeps the CEL rules in
the CRDs and the Python validators in sync. The offline half needs no cluster and runs everywhere.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubeforge.api.v1alpha1 import GROUP, KINDS, VERSION
from kubeforge.api.v1alpha1.dataset import Split
from kubeforge.api.v1alpha1.modeldeployment import Quantization
from kubeforge.api.v1alpha1.rlhfjob import RLHFJobSpec
from kubeforge.api.v1alpha1.training import Peft
from kubeforge.api.v1alpha1.trainingjob import TrainingJobSpec
from kubeforge.manifests import ManifestError, iter_documents, parse
from kubernetes import client
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
Cluster = Any  # tests/conftest.py:Cluster (conftest modules are not importable by name)
API = f"{GROUP}/{VERSION}"
DELETE = object()  # marker: remove the key

# Smallest valid object of each kind; every invalid case below is one of these plus a change.
BASE: dict[str, dict[str, Any]] = {
    "Dataset": {"source": {"uris": ["file:///data/train.jsonl"]}, "task": "text"},
    "TrainingJob": {"method": "sft", "model": {"uri": "org/base-model"}, "dataset": {"name": "instructions"}},
    "RewardModel": {"model": {"uri": "org/base-model"}, "dataset": {"name": "prefs"}},
    "RLHFJob": {
        "algorithm": "grpo",
        "policy": {"uri": "org/policy"},
        "reward": {"functions": [{"name": "length", "targetLength": 100}]},
        "dataset": {"name": "prompts"},
    },
    "Evaluation": {
        "model": {"uri": "org/model"},
        "dataset": {"name": "eval", "split": "test"},
        "taskType": "classification",
        "metrics": ["accuracy", "f1"],
    },
    "ModelDeployment": {"model": {"uri": "org/model"}},
}
PLURALS = {kind: model.PLURAL for kind, model in KINDS.items()}


def manifest(kind: str, name: str = "sample", changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """BASE[kind] as a full object, with `changes` applied (dotted paths under the object; DELETE removes)."""
    body: dict[str, Any] = {
        "apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": copy.deepcopy(BASE[kind])
    }
    for path, value in (changes or {}).items():
        *parents, leaf = path.split(".")
        node = body
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return body


@dataclass(frozen=True)
class Invalid:
    """One invalid manifest: where the server must point (`field`) and what both sides must say (`msg`)."""

    id: str
    kind: str
    changes: dict[str, Any]
    field: str
    msg: str | None = None  # substring in both the server body and the offline problems
    server_msg: str | None = None
    offline_msg: str | None = None
    offline_field: str | None = None  # defaults to `field`; the offline loc must be it or an ancestor
    extra: dict[str, Any] = field(default_factory=dict)


INVALID = [
    # TrainingJob: required fields, types, ranges, enums, patterns, unknown fields
    Invalid("tj-missing-method", "TrainingJob", {"spec.method": DELETE}, "spec.method",
            server_msg="Required value", offline_msg="Field required"),
    Invalid("tj-bad-method", "TrainingJob", {"spec.method": "rlhf"}, "spec.method",
            server_msg='Unsupported value: "rlhf"', offline_msg="'classification' or 'regression'"),
    Invalid("tj-lr-type", "TrainingJob", {"spec.hyperparameters": {"learningRate": "fast"}},
            "spec.hyperparameters.learningRate", server_msg="must be of type number",
            offline_msg="valid number"),
    Invalid("tj-lr-range", "TrainingJob", {"spec.hyperparameters": {"learningRate": 2}},
            "spec.hyperparameters.learningRate", msg="less than or equal to 1"),
    Invalid("tj-batch-zero", "TrainingJob", {"spec.hyperparameters": {"batchSize": 0}},
            "spec.hyperparameters.batchSize", msg="greater than or equal to 1"),
    Invalid("tj-gpu-range", "TrainingJob", {"spec.resources": {"gpu": 65}}, "spec.resources.gpu",
            msg="less than or equal to 64"),
    Invalid("tj-cpu-quantity", "TrainingJob", {"spec.resources": {"cpu": "lots"}}, "spec.resources.cpu",
            server_msg="should match", offline_msg="should match pattern"),
    Invalid("tj-memory-negative", "TrainingJob", {"spec.resources": {"memory": "-4Gi"}}, "spec.resources.memory",
            server_msg="should match", offline_msg="should match pattern"),
    Invalid("tj-cpu-two-dots", "TrainingJob", {"spec.resources": {"cpu": "1.2.3"}}, "spec.resources.cpu",
            server_msg="should match", offline_msg="should match pattern"),
    Invalid("tj-gpu-type-label", "TrainingJob", {"spec.resources": {"gpuType": "NVIDIA H100"}},
            "spec.resources.gpuType", server_msg="should match", offline_msg="should match pattern"),
    Invalid("tj-queue-name-label", "TrainingJob", {"spec.resources": {"queueName": "team/a"}},
            "spec.resources.queueName", server_msg="should match", offline_msg="should match pattern"),
    Invalid("tj-model-uri-length", "TrainingJob", {"spec.model": {"uri": "org/" + "m" * 4096}}, "spec.model.uri",
            server_msg="Too long", offline_msg="at most 4096 characters"),
    Invalid("tj-name-length", "TrainingJob", {"metadata.name": "n" * 64}, "metadata.name",
            msg="metadata.name must be at most 63 characters"),
    Invalid("tj-output-scheme", "TrainingJob", {"spec.output": {"uri": "http://bucket/x"}}, "spec.output.uri",
            server_msg="should match", offline_msg="should match pattern"),
    Invalid("tj-dataset-name", "TrainingJob", {"spec.dataset": {"name": "Bad_Name"}}, "spec.dataset.name",
            server_msg="should match", offline_msg="should match pattern"),
    Invalid("tj-unknown-field", "TrainingJob", {"spec.learningRate": 0.1}, "spec.learningRate",
            server_msg='unknown field "spec.learningRate"', offline_msg="unknown field"),
    Invalid("tj-unknown-nested", "TrainingJob", {"spec.peft": {"method": "lora", "rank": 8}}, "spec.peft.rank",
            server_msg='unknown field "spec.peft.rank"', offline_msg="unknown field"),
    Invalid("tj-bad-peft-enum", "TrainingJob", {"spec.peft": {"method": "adapters"}}, "spec.peft.method",
            server_msg='Unsupported value: "adapters"', offline_msg="'qlora'"),
    Invalid("tj-quant-bits", "TrainingJob", {"spec.peft": {"method": "qlora", "quantBits": 3},
                                             "spec.resources": {"gpu": 1}}, "spec.peft.quantBits",
            server_msg="Unsupported value: 3", offline_msg="Input should be 4 or 8"),
    # TrainingJob: CEL rules
    Invalid("tj-model-two-sources", "TrainingJob",
            {"spec.method": "pretrain", "spec.model": {"uri": "org/x", "architecture": {"family": "gpt2"}}},
            "spec.model", msg="exactly one of uri, ref or architecture must be set"),
    Invalid("tj-model-no-source", "TrainingJob", {"spec.model": {"revision": "main"}}, "spec.model",
            msg="exactly one of uri, ref or architecture must be set"),
    Invalid("tj-qlora-no-gpu", "TrainingJob", {"spec.peft": {"method": "qlora"}}, "spec.peft.method",
            msg="peft.method qlora needs a GPU", offline_field="spec"),
    Invalid("tj-arch-with-peft", "TrainingJob",
            {"spec.method": "pretrain", "spec.model": {"architecture": {}}, "spec.peft": {"method": "lora"}},
            "spec.peft.method", msg="trains fully: set peft.method none", offline_field="spec"),
    Invalid("tj-arch-needs-pretrain", "TrainingJob", {"spec.model": {"architecture": {}}}, "spec.method",
            msg="model.architecture (from scratch) needs method pretrain", offline_field="spec"),
    Invalid("tj-heads-divide", "TrainingJob",
            {"spec.method": "pretrain", "spec.model": {"architecture": {"hiddenSize": 66, "numHeads": 4}}},
            "spec.model.architecture.hiddenSize", msg="hiddenSize must be divisible by numHeads",
            offline_field="spec.model.architecture"),
    Invalid("tj-freeze-no-layers", "TrainingJob", {"spec.peft": {"method": "freeze"}},
            "spec.peft.freezeLayers", msg="method freeze needs freezeLayers > 0", offline_field="spec.peft"),
    Invalid("tj-nodes-without-strategy", "TrainingJob", {"spec.distributed": {"nodes": 2}},
            "spec.distributed.strategy", msg="needs strategy ddp or deepspeed", offline_field="spec.distributed"),
    Invalid("tj-offload-params-zero2", "TrainingJob",
            {"spec.distributed": {"strategy": "deepspeed", "offloadParams": True, "zeroStage": 2}},
            "spec.distributed.offloadParams", msg="offloadParams needs zeroStage 3",
            offline_field="spec.distributed"),
    # model parallelism (issue 14 §2): pipelineParallel refused, tensorParallel only through DeepSpeed AutoTP
    Invalid("tj-pipeline-parallel", "TrainingJob",
            {"spec.distributed": {"strategy": "deepspeed", "processesPerNode": 2, "pipelineParallel": 2}},
            "spec.distributed.pipelineParallel", msg="Trainer and TRL have no pipeline-parallel training loop",
            offline_field="spec.distributed"),
    Invalid("tj-tp-with-ddp", "TrainingJob",
            {"spec.distributed": {"strategy": "ddp", "processesPerNode": 2, "tensorParallel": 2}},
            "spec.distributed.tensorParallel", msg="tensorParallel > 1 needs strategy deepspeed",
            offline_field="spec.distributed"),
    Invalid("tj-tp-zero3", "TrainingJob",
            {"spec.distributed": {"strategy": "deepspeed", "processesPerNode": 2, "tensorParallel": 2,
                                  "zeroStage": 3}},
            "spec.distributed.zeroStage", msg="tensorParallel > 1 needs zeroStage 0-2",
            offline_field="spec.distributed"),
    Invalid("tj-tp-divides-world", "TrainingJob",
            {"spec.distributed": {"strategy": "deepspeed", "processesPerNode": 6, "tensorParallel": 4}},
            "spec.distributed.tensorParallel", msg="tensorParallel must divide the worker processes",
            offline_field="spec.distributed"),
    Invalid("tj-tp-lora", "TrainingJob",
            {"spec.distributed": {"strategy": "deepspeed", "processesPerNode": 2, "tensorParallel": 2},
             "spec.peft": {"method": "lora"}},
            "spec.peft.method", msg="tensorParallel > 1 needs peft.method none or freeze", offline_field="spec"),
    Invalid("tj-tokenizer-both", "TrainingJob", {"spec.tokenizer": {"uri": "org/tok", "trainVocabSize": 1000}},
            "spec.tokenizer", msg="set either uri or trainVocabSize, not both"),
    # Dataset
    Invalid("ds-bad-task", "Dataset", {"spec.task": "images"}, "spec.task",
            server_msg='Unsupported value: "images"', offline_msg="'classification'"),
    Invalid("ds-split-sum", "Dataset", {"spec.split": {"train": 0.5, "validation": 0.1, "test": 0.1}},
            "spec.split", msg="split ratios train + validation + test must sum to 1"),
    Invalid("ds-no-source", "Dataset", {"spec.source": {"hfConfig": "x"}}, "spec.source",
            msg="exactly one of uris or fromDataset must be set"),
    Invalid("ds-two-sources", "Dataset", {"spec.source": {"uris": ["file:///a"], "fromDataset": {"name": "p"}}},
            "spec.source", msg="exactly one of uris or fromDataset must be set"),
    Invalid("ds-stratify-text", "Dataset", {"spec.split": {"stratify": True}}, "spec.split.stratify",
            msg="split.stratify needs task classification", offline_field="spec"),
    Invalid("ds-outliers-text", "Dataset", {"spec.processing": {"outliers": {"method": "zscore"}}},
            "spec.processing.outliers.method", msg="processing.outliers needs task regression",
            offline_field="spec"),
    Invalid("ds-filter-order", "Dataset", {"spec.processing": {"filters": {"minLength": 10, "maxLength": 5}}},
            "spec.processing.filters.minLength", msg="minLength must be <= maxLength",
            offline_field="spec.processing.filters"),
    Invalid("ds-near-threshold", "Dataset", {"spec.processing": {"dedup": {"near": {"threshold": 1.5}}}},
            "spec.processing.dedup.near.threshold", msg="less than or equal to 1"),
    Invalid("ds-pii-kind", "Dataset", {"spec.processing": {"pii": {"kinds": ["ssn"]}}},
            "spec.processing.pii.kinds[0]", server_msg='Unsupported value: "ssn"', offline_msg="'email'"),
    # RLHFJob
    Invalid("rl-bad-algorithm", "RLHFJob", {"spec.algorithm": "ppo"}, "spec.algorithm",
            server_msg='Unsupported value: "ppo"', offline_msg="'grpo'"),
    Invalid("rl-online-no-reward", "RLHFJob", {"spec.reward": DELETE}, "spec.reward",
            msg="online algorithms (grpo, rloo, online-dpo) need reward", offline_field="spec"),
    Invalid("rl-online-empty-reward", "RLHFJob", {"spec.algorithm": "rloo", "spec.reward": {"functions": []}},
            "spec.reward", msg="online algorithms (grpo, rloo, online-dpo) need reward", offline_field="spec"),
    Invalid("rl-dpo-with-reward", "RLHFJob", {"spec.algorithm": "dpo"}, "spec.reward",
            msg="dpo learns from preference pairs: remove reward", offline_field="spec"),
    Invalid("rl-reward-model-and-uri", "RLHFJob",
            {"spec.reward": {"model": {"name": "rm"}, "uri": "s3://b/rm"}}, "spec.reward.uri",
            msg="set reward.model or reward.uri, not both", offline_field="spec.reward"),
    Invalid("rl-arch-policy", "RLHFJob", {"spec.policy": {"architecture": {}}}, "spec.policy",
            msg="the policy must be a trained model", offline_field="spec"),
    Invalid("rl-num-generations", "RLHFJob", {"spec.generation": {"numGenerations": 1}},
            "spec.generation.numGenerations", msg="greater than or equal to 2"),
    Invalid("rl-reward-fn-enum", "RLHFJob", {"spec.reward": {"functions": [{"name": "vibes"}]}},
            "spec.reward.functions[0].name", server_msg='Unsupported value: "vibes"', offline_msg="'length'"),
    # RewardModel
    Invalid("rm-pipeline-parallel", "RewardModel", {"spec.distributed": {"pipelineParallel": 2}},
            "spec.distributed.pipelineParallel", msg="no pipeline-parallel training loop",
            offline_field="spec.distributed"),
    Invalid("rl-tp-online", "RLHFJob",
            {"spec.distributed": {"strategy": "deepspeed", "processesPerNode": 2, "tensorParallel": 2}},
            "spec.distributed.tensorParallel", msg="tensorParallel > 1 needs algorithm dpo", offline_field="spec"),
    Invalid("rm-arch-base", "RewardModel", {"spec.model": {"architecture": {}}}, "spec.model",
            msg="a reward model needs a pretrained base", offline_field="spec"),
    Invalid("rm-qlora-no-gpu", "RewardModel", {"spec.peft": {"method": "qlora"}}, "spec.peft.method",
            msg="peft.method qlora needs a GPU", offline_field="spec"),
    # Evaluation
    Invalid("ev-threshold-not-listed", "Evaluation", {"spec.thresholds": [{"metric": "precision", "min": 0.5}]},
            "spec.thresholds", msg="must also be listed in metrics", offline_field="spec"),
    Invalid("ev-metrics-task", "Evaluation", {"spec.taskType": "regression"}, "spec.metrics",
            msg="suit taskType", offline_field="spec"),
    Invalid("ev-threshold-no-bound", "Evaluation", {"spec.thresholds": [{"metric": "accuracy"}]},
            "spec.thresholds[0]", msg="a threshold needs min or max"),
    Invalid("ev-metrics-empty", "Evaluation", {"spec.metrics": []}, "spec.metrics",
            server_msg="should have at least 1 items", offline_msg="at least 1 item"),
    Invalid("ev-bad-metric", "Evaluation", {"spec.metrics": ["wer"]}, "spec.metrics[0]",
            server_msg='Unsupported value: "wer"', offline_msg="'accuracy'"),
    Invalid("ev-missing-task", "Evaluation", {"spec.taskType": DELETE}, "spec.taskType",
            server_msg="Required value", offline_msg="Field required"),
    # ModelDeployment
    Invalid("md-int8-static-no-calibration", "ModelDeployment", {"spec.quantization": {"mode": "int8-static"}},
            "spec.quantization.calibration", msg="int8-static needs quantization.calibration",
            offline_field="spec.quantization"),
    Invalid("md-min-gt-max", "ModelDeployment", {"spec.autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
            "spec.autoscaling.minReplicas", msg="minReplicas must be <= maxReplicas",
            offline_field="spec.autoscaling"),
    Invalid("md-tensorrt-no-gpu", "ModelDeployment", {"spec.backend": "tensorrt"}, "spec.backend",
            msg="backend tensorrt needs a GPU", offline_field="spec"),
    Invalid("md-opset-range", "ModelDeployment", {"spec.export": {"opset": 13}}, "spec.export.opset",
            msg="greater than or equal to 14"),
    Invalid("md-canary-weight", "ModelDeployment", {"spec.rollout": {"strategy": "canary", "canaryWeight": 100}},
            "spec.rollout.canaryWeight", msg="less than or equal to 99"),
    Invalid("md-arch-model", "ModelDeployment", {"spec.model": {"architecture": {}}}, "spec.model",
            msg="serve a trained model", offline_field="spec"),
    Invalid("md-replicas-type", "ModelDeployment", {"spec.replicas": "two"}, "spec.replicas",
            server_msg="must be of type integer", offline_msg="valid integer"),
]
assert len(INVALID) >= 30 and len({c.id for c in INVALID}) == len(INVALID)

# Issue 13: `spec.resources.podOverrides` is an allow-list. Each hostile override must be refused by the API
# server itself, naming the field: unknown fields by strict field validation (400, `unknown field "..."`),
# reserved names and keys by CEL (422). tests/unit/test_pod_overrides.py holds the same table offline.
OV = "spec.resources.podOverrides"
UNKNOWN = "unknown field"


def _ov(overrides: dict[str, Any], where: str = "spec.resources") -> dict[str, Any]:
    return {where: {"podOverrides": overrides}}


def _unknown(id: str, kind: str, overrides: dict[str, Any], path: str, where: str = "spec.resources") -> Invalid:
    return Invalid(id, kind, _ov(overrides, where), path, server_msg=f'unknown field "{path}"', offline_msg=UNKNOWN)


def _cfg_mount(path: str) -> dict[str, Any]:
    return {"volumes": [{"name": "cfg", "configMap": {"name": "evil"}}],
            "volumeMounts": [{"name": "cfg", "mountPath": path}]}


HOSTILE_OVERRIDES = [
    _unknown("ov-pod-security-context-root", "TrainingJob", {"securityContext": {"runAsUser": 0}},
             f"{OV}.securityContext"),
    _unknown("ov-service-account-name", "TrainingJob", {"serviceAccountName": "kubeforge-operator"},
             f"{OV}.serviceAccountName"),
    _unknown("ov-service-account-deprecated", "RewardModel", {"serviceAccount": "kubeforge-operator"},
             f"{OV}.serviceAccount"),
    _unknown("ov-automount-token", "ModelDeployment", {"automountServiceAccountToken": True},
             f"{OV}.automountServiceAccountToken"),
    _unknown("ov-host-network", "ModelDeployment", {"hostNetwork": True}, f"{OV}.hostNetwork"),
    _unknown("ov-host-pid", "RLHFJob", {"hostPID": True}, f"{OV}.hostPID"),
    _unknown("ov-host-ipc", "Evaluation", {"hostIPC": True}, f"{OV}.hostIPC"),
    _unknown("ov-privileged", "TrainingJob", {"privileged": True}, f"{OV}.privileged"),
    _unknown("ov-container-privileged", "TrainingJob",
             {"containers": [{"name": "stage", "securityContext": {"privileged": True}}]}, f"{OV}.containers"),
    _unknown("ov-container-image-command", "ModelDeployment",
             {"containers": [{"name": "triton", "image": "evil:latest", "command": ["sh"]}]}, f"{OV}.containers"),
    _unknown("ov-image", "ModelDeployment", {"image": "evil:latest"},
             "spec.conversionResources.podOverrides.image", where="spec.conversionResources"),
    _unknown("ov-command", "RLHFJob", {"command": ["sh", "-c", "id"]}, f"{OV}.command"),
    _unknown("ov-args", "Evaluation", {"args": ["--evil"]}, f"{OV}.args"),
    _unknown("ov-init-containers", "RewardModel", {"initContainers": [{"name": "x", "image": "evil"}]},
             f"{OV}.initContainers"),
    _unknown("ov-node-name", "TrainingJob", {"nodeName": "control-plane"}, f"{OV}.nodeName"),
    _unknown("ov-runtime-class", "TrainingJob", {"runtimeClassName": "unconfined"}, f"{OV}.runtimeClassName"),
    _unknown("ov-host-path-volume", "ModelDeployment",
             {"volumes": [{"name": "host", "hostPath": {"path": "/"}}],
              "volumeMounts": [{"name": "host", "mountPath": "/host"}]}, f"{OV}.volumes[0].hostPath"),
    _unknown("ov-secret-volume", "TrainingJob", {"volumes": [{"name": "creds", "secret": {"secretName": "x"}}]},
             f"{OV}.volumes[0].secret"),
    _unknown("ov-csi-volume", "RLHFJob",
             {"volumes": [{"name": "vault", "csi": {"driver": "secrets-store.csi.k8s.io"}}]},
             f"{OV}.volumes[0].csi"),
    _unknown("ov-nfs-volume", "Evaluation", {"volumes": [{"name": "n", "nfs": {"server": "10.0.0.1", "path": "/"}}]},
             f"{OV}.volumes[0].nfs"),
    _unknown("ov-projected-sa-token", "TrainingJob",
             {"volumes": [{"name": "tok", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]},
             f"{OV}.volumes[0].projected.sources[0].serviceAccountToken"),
    _unknown("ov-projected-secret", "RewardModel",
             {"volumes": [{"name": "s", "projected": {"sources": [{"secret": {"name": "db-password"}}]}}]},
             f"{OV}.volumes[0].projected.sources[0].secret"),
    _unknown("ov-env-secret-ref", "ModelDeployment",
             {"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "db-password", "key": "pw"}}}]},
             f"{OV}.env[0].valueFrom.secretKeyRef"),
    _unknown("ov-env-from-secret", "TrainingJob", {"envFrom": [{"secretRef": {"name": "db-password"}}]},
             f"{OV}.envFrom"),
    _unknown("ov-mount-propagation", "TrainingJob",
             {"volumes": [{"name": "s", "emptyDir": {}}],
              "volumeMounts": [{"name": "s", "mountPath": "/data", "mountPropagation": "Bidirectional"}]},
             f"{OV}.volumeMounts[0].mountPropagation"),
    Invalid("ov-mount-over-stage-config", "TrainingJob", _ov(_cfg_mount("/etc/kubeforge")),
            f"{OV}.volumeMounts[0].mountPath", msg="mountPath must not be"),
    Invalid("ov-mount-over-dev", "ModelDeployment", _ov(_cfg_mount("/dev/shm")),
            f"{OV}.volumeMounts[0].mountPath", msg="mountPath must not be"),
    Invalid("ov-shadow-operator-volume", "TrainingJob", _ov({"volumes": [{"name": "config", "emptyDir": {}}]}),
            f"{OV}.volumes[0].name", msg="volume name is reserved"),
    Invalid("ov-env-shadows-operator", "TrainingJob", _ov({"env": [{"name": "KUBEFORGE_TEST_HOOKS", "value": "1"}]}),
            f"{OV}.env[0].name", msg="env name is reserved for the operator"),
    Invalid("ov-env-redirects-s3", "ModelDeployment",
            _ov({"env": [{"name": "AWS_ENDPOINT_URL", "value": "https://evil.example"}]}, "spec.conversionResources"),
            "spec.conversionResources.podOverrides.env[0].name", msg="env name is reserved for the operator"),
    Invalid("ov-apparmor-unconfined", "TrainingJob",
            _ov({"annotations": {"container.apparmor.security.beta.kubernetes.io/stage": "unconfined"}}),
            f"{OV}.annotations", msg="annotation keys must not use the reserved prefixes"),
    Invalid("ov-forged-result", "Evaluation", _ov({"annotations": {"kubeforge.io/result": "{}"}}),
            f"{OV}.annotations", msg="annotation keys must not use the reserved prefixes"),
    Invalid("ov-reserved-label", "ModelDeployment", _ov({"labels": {"app.kubernetes.io/name": "triton"}}),
            f"{OV}.labels", msg="label keys must not use the reserved prefixes"),
    Invalid("ov-system-priority", "RLHFJob", _ov({"priorityClassName": "system-node-critical"}),
            f"{OV}.priorityClassName", msg="must not be a system- class"),
]
assert len(HOSTILE_OVERRIDES) >= 15 and len({c.id for c in HOSTILE_OVERRIDES}) == len(HOSTILE_OVERRIDES)

# The most permissive overrides the API accepts (tests/unit/test_pod_overrides.py: PERMISSIVE renders restricted pods).
SAFE_OVERRIDES: dict[str, Any] = {
    "nodeSelector": {"pool": "ml"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ml"]}]}]}}},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway",
                                   "labelSelector": {"matchLabels": {"team": "nlp"}}}],
    "priorityClassName": "ml-batch",
    "env": [{"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "HTTPS_PROXY", "valueFrom": {"configMapKeyRef": {"name": "proxy", "key": "https"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "MEMORY_MB", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}],
    "volumes": [{"name": "team-config", "configMap": {"name": "team-config", "defaultMode": 292}},
                {"name": "scratch", "emptyDir": {"sizeLimit": "2Gi"}},
                {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache", "readOnly": True}},
                {"name": "bundle", "projected": {"sources": [
                    {"configMap": {"name": "ca-bundle"}},
                    {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]}}],
    "volumeMounts": [{"name": "team-config", "mountPath": "/etc/team", "readOnly": True},
                     {"name": "scratch", "mountPath": "/scratch"},
                     {"name": "hf-cache", "mountPath": "/cache/hf", "subPath": "models"},
                     {"name": "bundle", "mountPath": "/var/run/bundle"}],
    "annotations": {"example.com/cost-center": "nlp"},
    "labels": {"team": "nlp"},
}
SAFE_OVERRIDE_CASES = [(k, "spec.resources") for k in sorted(BASE) if k != "Dataset"] + [
    ("ModelDeployment", "spec.conversionResources")]

# (kind, spec field path, new value, message) for `self == oldSelf` rules.
IMMUTABLE = [
    ("TrainingJob", "method", "pretrain", "method is immutable"),
    ("Dataset", "task", "instruction", "task is immutable"),
    ("RLHFJob", "algorithm", "rloo", "algorithm is immutable"),
    ("Evaluation", "taskType", "multiple-choice", "taskType is immutable"),
]

EXAMPLE_DOCS = [d for d in iter_documents([REPO / "examples"]) if d.body.get("apiVersion") == API]


def _create(body: dict[str, Any], namespace: str, dry_run: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = client.CustomObjectsApi().create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[body["kind"]], body,
        dry_run="All" if dry_run else None, field_validation="Strict",
    )
    return result


def _rejection(call: Callable[[], Any]) -> tuple[int, str, list[str]]:
    """Run an API call that must fail; return (HTTP status, message, fields named in the causes)."""
    with pytest.raises(ApiException) as info:
        call()
    status = json.loads(info.value.body)
    causes = (status.get("details") or {}).get("causes") or []
    return int(info.value.status), status.get("message", ""), [c.get("field", "") for c in causes]


def _offline_problems(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(loc, message) pairs from the pydantic models."""
    with pytest.raises(ManifestError) as info:
        parse(body, "case")
    out = []
    for line in info.value.problems:
        loc, _, msg = line.removeprefix("case: ").partition(": ")
        out.append((loc, msg))
    return out


def _is_ancestor_or_self(loc: str, path: str) -> bool:
    return path == loc or path.startswith(loc + ".") or path.startswith(loc + "[")


# --------------------------------------------------------------------------- offline (no cluster)


@pytest.mark.parametrize("kind", sorted(BASE))
def test_base_manifest_valid_offline(kind: str) -> None:
    parse(manifest(kind), kind)


# tensorParallel through DeepSpeed AutoTP: accepted with strategy deepspeed, zeroStage <= 2, full training
TENSOR_PARALLEL = [
    ("TrainingJob", {"spec.distributed": {"strategy": "deepspeed", "nodes": 2, "processesPerNode": 8,
                                          "tensorParallel": 8}}),
    ("TrainingJob", {"spec.distributed": {"strategy": "deepspeed", "processesPerNode": 4, "tensorParallel": 2,
                                          "zeroStage": 1, "offloadOptimizer": True},
                     "spec.peft": {"method": "freeze", "freezeLayers": 2}}),
    ("RewardModel", {"spec.distributed": {"strategy": "deepspeed", "processesPerNode": 2, "tensorParallel": 2}}),
    ("RLHFJob", {"spec.algorithm": "dpo", "spec.reward": DELETE,
                 "spec.distributed": {"strategy": "deepspeed", "processesPerNode": 2, "tensorParallel": 2}}),
]


@pytest.mark.parametrize(("kind", "changes"), TENSOR_PARALLEL, ids=[f"{k}-{i}" for i, (k, _) in
                                                                    enumerate(TENSOR_PARALLEL)])
def test_tensor_parallel_valid_offline(kind: str, changes: dict[str, Any]) -> None:
    parse(manifest(kind, changes=changes), kind)


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_rejected_offline(case: Invalid) -> None:
    problems = _offline_problems(manifest(case.kind, changes=case.changes))
    expected_msg = case.offline_msg or case.msg
    expected_loc = case.offline_field or case.field
    assert any(_is_ancestor_or_self(loc, expected_loc) for loc, _ in problems), (
        f"no offline problem at {expected_loc} (or an ancestor): {problems}"
    )
    assert expected_msg and any(expected_msg in msg for _, msg in problems), (
        f"{expected_msg!r} not in {problems}"
    )


@pytest.mark.parametrize("case", HOSTILE_OVERRIDES, ids=lambda c: c.id)
def test_hostile_override_rejected_offline(case: Invalid) -> None:
    test_invalid_rejected_offline(case)


@pytest.mark.parametrize(("kind", "where"), SAFE_OVERRIDE_CASES, ids=[f"{k}-{w}" for k, w in SAFE_OVERRIDE_CASES])
def test_safe_overrides_valid_offline(kind: str, where: str) -> None:
    parse(manifest(kind, changes={where: {"podOverrides": SAFE_OVERRIDES}}), kind)


# --------------------------------------------------------------------------- real API server


@pytest.mark.cluster
def test_crds_established(cluster: Cluster, crds: list[str]) -> None:
    api = client.ApiextensionsV1Api()
    assert sorted(crds) == sorted(f"{m.PLURAL}.{GROUP}" for m in KINDS.values())
    for name in crds:
        crd = api.read_custom_resource_definition(name)
        conditions = {c.type: c.status for c in crd.status.conditions}
        assert conditions.get("Established") == "True", f"{name}: {conditions}"
        assert conditions.get("NamesAccepted") == "True", f"{name}: {conditions}"
        assert "kubeforge" in (crd.spec.names.categories or [])


def _norm(text: str) -> str:
    return " ".join(text.split())


EXPLAIN = [
    ("trainingjob.spec.peft", [TrainingJobSpec.model_fields["peft"].description, *(
        Peft.model_fields[f].description for f in ("r", "alpha", "quant_bits", "freeze_layers"))]),
    ("dataset.spec.split", [Split.model_fields[f].description for f in ("train", "stratify")]),
    ("modeldeployment.spec.quantization", [Quantization.model_fields[f].description
                                           for f in ("mode", "calibration")]),
    ("rlhfjob.spec.algorithm", [RLHFJobSpec.model_fields["algorithm"].description]),
    ("kftj.spec.method", [TrainingJobSpec.model_fields["method"].description]),
]


@pytest.mark.cluster
@pytest.mark.parametrize(("path", "descriptions"), EXPLAIN, ids=[e[0] for e in EXPLAIN])
def test_kubectl_explain_shows_model_descriptions(
    cluster: Cluster, crds: list[str], path: str, descriptions: list[str | None]
) -> None:
    # kubectl explain reads the published OpenAPI, which lags CRD creation by a moment.
    deadline = time.monotonic() + 30
    while (proc := cluster.kubectl("explain", path, check=False)).returncode != 0:
        assert time.monotonic() < deadline, proc.stderr
        time.sleep(1)
    out = _norm(proc.stdout)
    for d in descriptions:
        assert d and _norm(d) in out, f"{d!r} missing from `kubectl explain {path}`:\n{proc.stdout}"


@pytest.mark.cluster
@pytest.mark.parametrize("doc", EXAMPLE_DOCS, ids=lambda d: f"{Path(d.source).name}#{d.index}")
def test_examples_accepted_by_server(cluster: Cluster, crds: list[str], doc: Any) -> None:
    created = _create(doc.body, "default")
    assert created["metadata"]["name"] == doc.body["metadata"]["name"]


@pytest.mark.cluster
@pytest.mark.parametrize("kind", sorted(BASE))
def test_base_manifest_accepted_by_server(cluster: Cluster, crds: list[str], kind: str) -> None:
    _create(manifest(kind), "default")


@pytest.mark.cluster
@pytest.mark.parametrize(("kind", "changes"), TENSOR_PARALLEL, ids=[f"{k}-{i}" for i, (k, _) in
                                                                    enumerate(TENSOR_PARALLEL)])
def test_tensor_parallel_accepted_by_server(cluster: Cluster, crds: list[str], kind: str,
                                            changes: dict[str, Any]) -> None:
    created = _create(manifest(kind, f"tp-{kind.lower()}", changes), "default")
    assert created["spec"]["distributed"]["tensorParallel"] > 1
    assert created["spec"]["distributed"]["pipelineParallel"] == 1  # defaulted by the server


@pytest.mark.cluster
@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_rejected_by_server(cluster: Cluster, crds: list[str], case: Invalid) -> None:
    body = manifest(case.kind, changes=case.changes)
    status, message, fields = _rejection(lambda: _create(body, "default"))
    assert status in (400, 422), f"HTTP {status}: {message}"  # unknown fields under Strict are 400s
    assert case.field in fields or case.field in message, f"{case.field} not named: {message} {fields}"
    expected = case.server_msg or case.msg
    assert expected and expected in message, f"{expected!r} not in {message}"


@pytest.mark.cluster
@pytest.mark.parametrize("case", HOSTILE_OVERRIDES, ids=lambda c: c.id)
def test_hostile_override_rejected_by_server(cluster: Cluster, crds: list[str], case: Invalid) -> None:
    """Refused by the API server itself, naming the field (issue 13: podOverrides ran arbitrary pods)."""
    test_invalid_rejected_by_server(cluster, crds, case)


@pytest.mark.cluster
@pytest.mark.parametrize(("kind", "where"), SAFE_OVERRIDE_CASES, ids=[f"{k}-{w}" for k, w in SAFE_OVERRIDE_CASES])
def test_safe_overrides_accepted_by_server(cluster: Cluster, crds: list[str], kind: str, where: str) -> None:
    created = _create(manifest(kind, changes={where: {"podOverrides": SAFE_OVERRIDES}}), "default")
    spec = created["spec"]
    for key in where.split(".")[1:]:
        spec = spec[key]
    assert spec["podOverrides"] == SAFE_OVERRIDES, "nothing pruned from the allowed overrides"


@pytest.mark.cluster
@pytest.mark.parametrize(("kind", "key", "value", "msg"), IMMUTABLE, ids=[i[0] for i in IMMUTABLE])
def test_immutable_fields(cluster: Cluster, crds: list[str], namespace: str, kind: str, key: str,
                          value: str, msg: str) -> None:
    base = manifest(kind, name="immutable")
    if kind == "RLHFJob":  # keep every other rule satisfied so only immutability can fail
        base["spec"]["reward"] = {"functions": [{"name": "length", "targetLength": 10}]}
    if kind == "Evaluation":
        base["spec"]["metrics"] = ["accuracy"]
    _create(base, namespace, dry_run=False)
    api = client.CustomObjectsApi()
    status, message, fields = _rejection(lambda: api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[kind], "immutable", {"spec": {key: value}}))
    assert status == 422, message
    assert f"spec.{key}" in fields and msg in message, f"{message} {fields}"
    # Other fields stay mutable.
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], "immutable",
                                       {"metadata": {"labels": {"touched": "yes"}}})


@pytest.mark.cluster
def test_printer_columns(cluster: Cluster, crds: list[str], namespace: str) -> None:
    body = manifest("TrainingJob", name="printed", changes={"spec.peft": {"method": "lora"}})
    _create(body, namespace, dry_run=False)
    client.CustomObjectsApi().patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "trainingjobs", "printed",
        {"status": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}],
                    "progress": {"percent": "42%", "loss": 1.25, "etaSeconds": 73.5}}},
    )
    out = cluster.kubectl("get", "trainingjobs", "-n", namespace).stdout.splitlines()
    assert re.split(r"\s{2,}", out[0].strip()) == ["NAME", "SUCCEEDED", "REASON", "METHOD", "PROGRESS", "LOSS", "ETA",
                                                   "AGE"]
    assert re.split(r"\s{2,}", out[1].strip())[:7] == ["printed", "Unknown", "Running", "sft", "42%", "1.25", "73.5"]
    wide = cluster.kubectl("get", "kftj", "printed", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert "PEFT" in wide[0] and "lora" in wide[1]


@pytest.mark.cluster
def test_category_lists_all_kinds(cluster: Cluster, crds: list[str], namespace: str) -> None:
    for kind in BASE:
        _create(manifest(kind, name=f"cat-{kind.lower()}"), namespace, dry_run=False)
    names = cluster.kubectl("get", "kubeforge", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(names) == sorted(f"{PLURALS[k][:-1]}.{GROUP}/cat-{k.lower()}" for k in BASE)


# --------------------------------------------------------------------------- the test cluster itself

RESTRICTED_CONTAINER: dict[str, Any] = {
    "name": "main",
    "image": "registry.example/kubeforge/trainer:test",
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


@pytest.mark.cluster
def test_fake_gpu_nodes(cluster: Cluster) -> None:
    nodes = client.CoreV1Api().list_node(label_selector="kubeforge.io/test-node=true").items
    gpus = {n.metadata.name: n.status.allocatable.get("nvidia.com/gpu") for n in nodes}
    assert sorted(v for v in gpus.values() if v) == ["8", "8"], gpus
    assert len(nodes) == 3
    for n in nodes:
        ready = {c.type: c.status for c in n.status.conditions}.get("Ready")
        assert ready == "True", f"{n.metadata.name} not Ready"


@pytest.mark.cluster
def test_pod_security_restricted_enforced(cluster: Cluster, namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
           "spec": {"containers": [{"name": "main", "image": "x", "securityContext": {"privileged": True}}]}}
    status, message, _ = _rejection(
        lambda: client.CoreV1Api().create_namespaced_pod(namespace, pod, dry_run="All"))
    assert status == 403 and 'violates PodSecurity "restricted' in message, message
    ok = {**pod, "spec": {"containers": [RESTRICTED_CONTAINER]}}
    client.CoreV1Api().create_namespaced_pod(namespace, ok, dry_run="All")


def _job(name: str, annotations: dict[str, str] | None = None, gpu: int = 0) -> dict[str, Any]:
    container = copy.deepcopy(RESTRICTED_CONTAINER)
    if gpu:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpu)}}
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": annotations or {}},
            "spec": {"restartPolicy": "Never", "containers": [container]}}},
    }


def _wait_job(namespace: str, name: str, condition: str, timeout_s: float = 90) -> Any:
    api = client.BatchV1Api()
    deadline = time.monotonic() + timeout_s
    while True:
        job = api.read_namespaced_job(name, namespace)
        conds = {c.type: c.status for c in job.status.conditions or []}
        if conds.get(condition) == "True":
            return job
        assert time.monotonic() < deadline, f"Job {name} never reached {condition}: {conds}"
        time.sleep(0.5)


@pytest.mark.cluster
def test_kwok_runs_jobs_to_completion_on_gpu_nodes(cluster: Cluster, namespace: str) -> None:
    client.BatchV1Api().create_namespaced_job(namespace, _job("ok", gpu=4))
    _wait_job(namespace, "ok", "Complete")
    pods = client.CoreV1Api().list_namespaced_pod(namespace, label_selector="job-name=ok").items
    assert pods and pods[0].spec.node_name.startswith("kubeforge-gpu-")


@pytest.mark.cluster
def test_kwok_fails_annotated_pods(cluster: Cluster, namespace: str) -> None:
    fail = {"kubeforge.io/test-fail": "true", "kubeforge.io/test-fail-message": "OOM at step 3"}
    job = _job("boom", annotations=fail)
    client.BatchV1Api().create_namespaced_job(namespace, job)
    _wait_job(namespace, "boom", "Failed")
    pod = client.CoreV1Api().list_namespaced_pod(namespace, label_selector="job-name=boom").items[0]
    term = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, term.exit_code, term.message) == ("Failed", 1, "OOM at step 3")
