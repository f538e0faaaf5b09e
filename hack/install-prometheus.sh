#!/usr/bin/env bash
# Install the real Prometheus server (Debian package) for tests/cluster/test_prometheus.py.
#
# Why Debian's package: no container registry or GitHub release download is reachable here, and
# the distro build is a real prometheus binary with promtool. Idempotent: a no-op when present.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  echo "[install-prometheus] $(prometheus --version 2>&1 | head -n1): already installed" >&2
  exit 0
fi

SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends keeps node-exporter & friends out; the package's postinst may try to
# start a service, which fails harmlessly without systemd, so we don't let that abort the install.
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null || {
  # A failed service start leaves the package half-configured; the binaries are still usable.
  command -v prometheus >/dev/null 2>&1 || { echo "[install-prometheus] apt-get install prometheus failed" >&2; exit 1; }
}
# Don't leave a packaged daemon running on :9090 (tests start their own on a free port).
if command -v service >/dev/null 2>&1; then $SUDO service prometheus stop >/dev/null 2>&1 || true; fi
echo "[install-prometheus] $(prometheus --version 2>&1 | head -n1)" >&2
