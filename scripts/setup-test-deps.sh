#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine, idempotently:
#  - promtool (Debian package `prometheus`), to lint /metrics;
#  - a Python venv in .venv with onnxruntime (whose libonnxruntime.so the ort backend
#    loads) and the tritonclient test client;
#  - a second venv, .venv-mlflow, with MLflow (server and client) for tests/mlflow.rs;
#  - a third, .venv-schemathesis, with schemathesis for tests/openapi.rs (its own, as its
#    pins of hypothesis and jsonschema are its business);
#  - headless Chromium (Debian package `chromium`) for tests/console.rs;
#  - nginx and Alertmanager (Debian `nginx`, `prometheus-alertmanager`) for tests/fleet.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=()
command -v promtool >/dev/null 2>&1 || APT_PACKAGES+=(prometheus)
command -v chromium >/dev/null 2>&1 || APT_PACKAGES+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || APT_PACKAGES+=(nginx)
command -v prometheus-alertmanager >/dev/null 2>&1 || APT_PACKAGES+=(prometheus-alertmanager)
if [ ${#APT_PACKAGES[@]} -gt 0 ]; then
  echo "setup: installing ${APT_PACKAGES[*]} (Debian)"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt
ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* >/dev/null

# A real MLflow server and client for tests/mlflow.rs, in a venv of its own.
if [ ! -x .venv-mlflow/bin/python ]; then
  echo "setup: creating .venv-mlflow"
  python3 -m venv .venv-mlflow
fi
.venv-mlflow/bin/python -m pip install -q --disable-pip-version-check -r scripts/requirements-mlflow.txt
.venv-mlflow/bin/mlflow --version >/dev/null
# schemathesis, the property-based fuzzer of tests/openapi.rs, in a venv of its own.
if [ ! -x .venv-schemathesis/bin/python ]; then
  echo "setup: creating .venv-schemathesis"
  python3 -m venv .venv-schemathesis
fi
.venv-schemathesis/bin/python -m pip install -q --disable-pip-version-check -r scripts/requirements-schemathesis.txt
.venv-schemathesis/bin/st --version >/dev/null
echo "setup: test dependencies ready"
