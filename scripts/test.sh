#!/usr/bin/env bash
# The test command: installs test dependencies, runs the whole suite, then proves the
# dashboards and alert rules against a real Prometheus (tests/observability.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-deps.sh
cargo test --release --all-targets "$@"
# `cargo test` built target/release/vigil for the integration tests; the proof uses it.
tests/observability.sh
