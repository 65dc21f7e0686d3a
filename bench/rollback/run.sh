#!/usr/bin/env bash
# Rollback reaction benchmark: steady load on both colours through a real
# switchyard (release build), green at 50%, then green starts failing a share
# of its requests. Reports the time from onset to green weight 0 (the
# server-side timestamp of the `rolled_back` event, taken just before the
# weight is set) and the failed responses clients received.
#
# Usage: bench/rollback/run.sh            (3 runs per scenario)
#        ROLLBACK_RUNS=5 bench/rollback/run.sh
# Writes bench/rollback/results-<date>.md and prints the table.
set -euo pipefail
cd "$(dirname "$0")/../.."

out="bench/rollback/results-$(date -u +%F).md"
runs="${ROLLBACK_RUNS:-3}"

{
  echo "# Rollback reaction, $(date -u +'%F %H:%M UTC')"
  echo
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
  echo "- $(rustc --version), release profile; load driver, backends and switchyard on the same host (loopback)"
  echo "- green at 50% (a parked rollout step), 8 keep-alive clients without a sticky key, ${runs} runs per row"
  echo
} > "$out"

ROLLBACK_RUNS="$runs" ROLLBACK_OUT="$out.table" \
  cargo test --release --test rollout rollback_reaction_benchmark -- \
  --ignored --nocapture --test-threads=1

cat "$out.table" >> "$out"
rm -f "$out.table"
echo
echo "results written to $out"
cat "$out"
