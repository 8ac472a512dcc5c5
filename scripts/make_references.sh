#!/usr/bin/env bash
# Regenerates the sample repository's drift references from each version's training
# sample, with `vigil profile`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
for train in models/*/*/train.npy; do
  dir=$(dirname "$train")
  ./target/release/vigil profile --data "$train" --model "$dir" --out "$dir/reference.json"
done
