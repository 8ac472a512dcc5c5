#!/usr/bin/env bash
# The test command: installs test dependencies, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-deps.sh
cargo test --release --all-targets "$@"
