#!/usr/bin/env bash
# Installs what benches/load.py needs on a fresh machine, idempotently: wrk (Debian), the
# FastAPI peer and the model builder (onnx) in .venv-bench, MLServer in .venv-mlserver (PyPI),
# then builds vigil and the ceiling. `cargo test` needs none of it.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_PACKAGES=()
command -v wrk >/dev/null 2>&1 || APT_PACKAGES+=(wrk)
python3 -c "import ensurepip" >/dev/null 2>&1 || APT_PACKAGES+=(python3-venv)
if [ ${#APT_PACKAGES[@]} -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
fi
for pair in "bench:benches/peers/requirements-fastapi.txt" "mlserver:benches/peers/requirements-mlserver.txt"; do
  venv=".venv-${pair%%:*}"; req="${pair#*:}"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
done
# load.py's vigil-ort targets load this libonnxruntime (the same version the peers run).
ls .venv-bench/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* >/dev/null
cargo build --release
cargo bench --bench ceiling --no-run
echo "bench setup: wrk, .venv-bench (FastAPI peer, onnx), .venv-mlserver, vigil and the ceiling ready"
