"""The chart ships a copy of crds/ (charts/kubeforge/files/crds); it must never drift.

Fix a failure with `kubeforge crds && hack/sync-chart-crds.sh`.
"""

from __future__ import annotations

from pathlib import Path

from kubeforge import crdgen

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "crds"
CHART_COPY = ROOT / "charts" / "kubeforge" / "files" / "crds"
FIX = "run `hack/sync-chart-crds.sh` (after `kubeforge crds` if the API changed)"


def test_chart_has_the_same_crd_files() -> None:
    src = sorted(p.name for p in SOURCE.glob("*.yaml"))
    copy = sorted(p.name for p in CHART_COPY.glob("*.yaml"))
    assert src, "crds/ is empty: run `kubeforge crds`"
    assert copy == src, f"chart CRD files {copy} != crds/ {src}: {FIX}"


def test_chart_crds_are_byte_identical() -> None:
    differ = [p.name for p in SOURCE.glob("*.yaml") if (CHART_COPY / p.name).read_bytes() != p.read_bytes()]
    assert not differ, f"charts/kubeforge/files/crds differs from crds/ for {differ}: {FIX}"


def test_chart_crds_match_the_api_models() -> None:
    stale = crdgen.stale(CHART_COPY)
    assert not stale, f"chart CRDs are older than the API models: {stale}: {FIX}"
