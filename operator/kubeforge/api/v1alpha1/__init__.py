"""Kubeforge v1alpha1 API: the single schema for operator, trainer image and serving."""

from __future__ import annotations

from .common import (
    API_VERSION,
    GROUP,
    VERSION,
    Artifact,
    Condition,
    ConditionStatus,
    KubeResource,
    LineageEntry,
    ModelRef,
    ModelSource,
    ObjectReference,
    Progress,
)
from .dataset import Dataset, DatasetSpec, DatasetStatus, DatasetTask
from .evaluation import EvalTask, Evaluation, EvaluationSpec, EvaluationStatus, Metric
from .modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from .rewardmodel import RewardModel, RewardModelSpec
from .rlhfjob import RLAlgorithm, RLHFJob, RLHFJobSpec
from .trainingjob import TrainingJob, TrainingJobSpec

# Apply order of a pipeline, also the order `kubeforge crds` writes.
KINDS: dict[str, type[KubeResource]] = {
    cls.KIND: cls for cls in (Dataset, TrainingJob, RewardModel, RLHFJob, Evaluation, ModelDeployment)
}

__all__ = [
    "API_VERSION", "GROUP", "KINDS", "VERSION", "Artifact", "Condition", "ConditionStatus", "Dataset",
    "DatasetSpec", "DatasetStatus", "DatasetTask", "EvalTask", "Evaluation", "EvaluationSpec",
    "EvaluationStatus", "KubeResource", "LineageEntry", "Metric", "ModelDeployment", "ModelDeploymentSpec",
    "ModelDeploymentStatus", "ModelRef", "ModelSource", "ObjectReference", "Progress", "RLAlgorithm", "RLHFJob",
    "RLHFJobSpec", "RewardModel", "RewardModelSpec", "TrainingJob", "TrainingJobSpec",
]
