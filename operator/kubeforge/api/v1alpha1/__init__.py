"""Kubeforge v1alpha1 API: the single schema for operator, trainer image and serving."""

from __future__ import annotations

from .base import API_VERSION, GROUP, VERSION
from .dataset import Dataset, DatasetSpec, DatasetStatus, DatasetTask
from .evaluation import EvalTask, Evaluation, EvaluationSpec, EvaluationStatus, Metric
from .kuberesource import KubeResource
from .modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from .references import ModelRef, ObjectReference
from .rewardmodel import RewardModel, RewardModelSpec
from .rlhfjob import RLAlgorithm, RLHFJob, RLHFJobSpec
from .sources import ModelSource
from .status import Artifact, Condition, ConditionStatus, LineageEntry, Progress
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
