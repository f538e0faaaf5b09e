#!/usr/bin/env bash
# Copy the generated CRDs (crds/, from `kubeforge crds`) into the Helm chart.
# The chart renders them from charts/kubeforge/files/crds so `crds.enabled`/`crds.keep` can gate
# them (Helm's own crds/ directory can neither be templated nor upgraded).
# tests/unit/test_chart_crds_sync.py fails when the two copies differ.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/charts/kubeforge/files/crds"
mkdir -p "$dest"
rm -f "$dest"/*.yaml
cp "$root"/crds/*.yaml "$dest"/
ls "$dest"
