#!/usr/bin/env bash
# Proves grafana/ against a real Prometheus scraping a real vigil (tests/observability.py).
# Needs the release binary (scripts/test.sh builds it) and the test venv; installs
# Prometheus from Debian if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends prometheus
fi
[ -x target/release/vigil ] || cargo build --release
exec .venv/bin/python tests/observability.py
