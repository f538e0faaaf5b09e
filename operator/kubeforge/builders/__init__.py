"""Pure builders: validated models in, Kubernetes manifests out (one module per kind; the names, pod parts and
stage Jobs they share in `naming`, `pods` and `workloads`)."""

from __future__ import annotations

from . import dataset, evaluation, modeldeployment, naming, pods, rewardmodel, rlhfjob, trainingjob, workloads

__all__ = [
    "dataset", "evaluation", "modeldeployment", "naming", "pods", "rewardmodel", "rlhfjob", "trainingjob", "workloads",
]
