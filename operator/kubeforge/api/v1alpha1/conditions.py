"""Condition types and reasons: one vocabulary for the operator, `kubeforge run`, the Argo CD health
checks and the docs. Stage-specific failure reasons (`InvalidData`, `ParityFailed`, ...) come from the
stage's result and pass through as they are.

Bounded kinds (Dataset, TrainingJob, RewardModel, RLHFJob, Evaluation) end with `Succeeded`; a
ModelDeployment reports `Ready`. Every other condition describes one generation (its
`observedGeneration`) and disappears when a new generation starts.
"""

from __future__ import annotations

# ---- condition types ----------------------------------------------------------------------------
SUCCEEDED = "Succeeded"
"""Bounded kinds: True once the stage's Job completed and its result was lifted into status."""
READY = "Ready"
"""ModelDeployment: True while Triton serves the model."""
DEPENDENCIES_READY = "DependenciesReady"
"""Every referenced object succeeded (and, for a ModelDeployment, its Evaluation gate passed)."""
JOB_CREATED = "JobCreated"
"""The stage Job of this generation exists."""
PASSED = "Passed"
"""Evaluation: every threshold holds."""
MODEL_EXPORTED = "ModelExported"
"""ModelDeployment: the conversion Job wrote the Triton model repository."""
MAIN_CONDITIONS = (SUCCEEDED, READY)

# ---- reasons the operator and the runner set ----------------------------------------------------
COMPLETED = "Completed"
"""Succeeded=True: the stage finished (a stage may give a more specific reason)."""
RUNNING = "Running"
"""Succeeded=Unknown: the Job runs."""
INVALID_SPEC = "InvalidSpec"
"""The spec cannot run (schema passed, deeper check failed, or a dependency cycle); fix the named field."""
WAITING_FOR_DEPENDENCIES = "WaitingForDependencies"
"""A referenced object has not succeeded yet."""
DEPENDENCY_FAILED = "DependencyFailed"
"""A referenced object failed; this one waits for it to be fixed."""
DEPENDENCIES_SUCCEEDED = "DependenciesSucceeded"
"""DependenciesReady=True."""
INCOMPATIBLE_DATASET = "IncompatibleDataset"
"""The referenced Dataset's task or columns do not fit this object's method."""
REFERENCE_NOT_GRANTED = "ReferenceNotGranted"
"""A reference into another namespace that has not granted it (annotation
`kubeforge.io/allow-references-from` on that Namespace); clears once a cluster admin grants it."""
INPUTS_CHANGED = "InputsChanged"
"""DependenciesReady=True on an object that finished: an input's producer now offers another artifact than the
one this result was made from; it re-runs (`spec.rerunOnInputChange`, default) or keeps its result."""
CHILD_REJECTED = "ChildRejected"
"""The API server refused a child (400/403/422); its message says why. Retrying cannot help."""
THRESHOLDS_MET = "ThresholdsMet"
"""Passed=True."""
THRESHOLDS_FAILED = "ThresholdsFailed"
"""Passed=False: at least one threshold does not hold (listed in status.failedThresholds)."""
EVALUATION_FAILED = "EvaluationFailed"
"""Passed=False because the evaluation itself did not complete."""
NO_RESULT = "NoResult"
"""The stage left no result (termination message)."""
STAGE_CRASHED = "StageCrashed"
"""The stage process exited without a result."""
INVALID_RESULT = "InvalidResult"
"""Succeeded=False: the stage's result does not fit the kind's status schema (the message names the fields)."""
GATE_FAILED = "GateFailed"
"""ModelDeployment: the gating Evaluation did not pass."""
GATE_PENDING = "GatePending"
"""ModelDeployment: the gating Evaluation has not finished (or evaluated another model)."""
CONVERTING = "Converting"
"""ModelDeployment: the conversion Job runs and no earlier run is being served (while one is, Ready stays True)."""
EXPORTED = "Exported"
"""ModelExported=True: the conversion wrote the model repository (status.modelRepository)."""
CONVERSION_FAILED = "ConversionFailed"
"""ModelDeployment: conversion failed; ModelExported says why."""
PROGRESSING = "Progressing"
"""ModelDeployment: Triton pods are starting."""
SERVING = "Serving"
"""ModelDeployment Ready=True."""

WARNING_REASONS = frozenset({
    INVALID_SPEC, DEPENDENCY_FAILED, INCOMPATIBLE_DATASET, GATE_FAILED, "BackoffLimitExceeded",
    "DeadlineExceeded", "Failed", CONVERSION_FAILED, THRESHOLDS_FAILED, NO_RESULT, CHILD_REJECTED,
    STAGE_CRASHED, EVALUATION_FAILED, REFERENCE_NOT_GRANTED, INVALID_RESULT,
})
"""Reasons posted as Warning Events."""
RECOVERABLE = frozenset({DEPENDENCY_FAILED, INCOMPATIBLE_DATASET, REFERENCE_NOT_GRANTED})
"""Succeeded=False reasons that may clear by themselves (a dependency re-runs): the operator keeps looking."""
