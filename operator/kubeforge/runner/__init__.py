"""`kubeforge run`: the whole pipeline on one machine, with the operator's configs and status model.

graph (load, validate, order) → executor (subprocess per stage, skip by digest, resume) → state
(per-object status JSON under the workdir) → report (summary table, HTML with plots) and serve
(Triton smoke test of converted ModelDeployments).
"""

from __future__ import annotations

from .graph import Pipeline, load_pipeline
from .state import DEFAULT_WORKDIR, ResourceState, StateStore

__all__ = ["DEFAULT_WORKDIR", "Pipeline", "ResourceState", "StateStore", "load_pipeline"]
