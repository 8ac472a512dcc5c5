#!/usr/bin/env bash
# False-rollback rate of the canary judge: runs the identical-canary test (iris v1 as both
# stable and canary, steps 10/50/100 %, 300 ms steps, min_requests 15) N times and counts
# the runs that did not end in "promoted". Every failed run prints the judge's reason.
#   cargo test --release --test canary_analysis --no-run && benches/canary_false_rollback.sh 50
set -u
n=${1:-50}
bin=$(ls -t target/release/deps/canary_analysis-* | grep -v '\.d$' | head -1)
fail=0
for i in $(seq 1 "$n"); do
  if ! out=$("$bin" --exact identical_canary_walks_every_step_and_is_promoted --test-threads 1 2>&1); then
    fail=$((fail + 1))
    echo "run $i: $(echo "$out" | grep -o '"reason": "[^"]*"' | head -1)"
  fi
done
echo "identical canary: $fail of $n runs not promoted (load: $(cut -d' ' -f1-3 /proc/loadavg))"
