#!/usr/bin/env bash
# Installs what benches/load.py runs beside vigil: wrk (Debian), the FastAPI peer in
# .venv-bench and MLServer in .venv-mlserver (PyPI). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v wrk >/dev/null 2>&1; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends wrk
fi
for pair in "bench:benches/peers/requirements-fastapi.txt" "mlserver:benches/peers/requirements-mlserver.txt"; do
  venv=".venv-${pair%%:*}"; req="${pair#*:}"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
done
echo "bench setup: wrk, .venv-bench (FastAPI peer), .venv-mlserver ready"
