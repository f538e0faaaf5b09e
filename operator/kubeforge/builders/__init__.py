"""Pure builders: validated models in, Kubernetes manifests out (one module per kind)."""

from __future__ import annotations

from . import common, dataset, evaluation, modeldeployment, rewardmodel, rlhfjob, trainingjob

__all__ = ["common", "dataset", "evaluation", "modeldeployment", "rewardmodel", "rlhfjob", "trainingjob"]
