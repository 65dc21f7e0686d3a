#!/usr/bin/env bash
# The release cycle: how long the second release's database takes to
# prepare (green's database the primary, blue's the live replica reverse
# sync kept, reused: migrated, widened, verified) against the first's (a
# clone of blue into green), pgbench at scale CYCLE_SCALE (default 50), in
# one run, through a real switchyard (release build) with replicate mode.
#
# Usage: bench/cycle/run.sh            CYCLE_SCALE=10 bench/cycle/run.sh
# Writes bench/cycle/results-<date>.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="bench/cycle/results-$(date -u +%F).md"
scale="${CYCLE_SCALE:-50}"
{
  echo "# Release cycle: preparing the second release against the first, $(date -u +'%F %H:%M UTC')"
  echo
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
  echo "- $(rustc --version), release profile; PostgreSQL $(pg_config --version | awk '{print $2}') clusters (fsync=off), pgbench scale ${scale}, jobs = 2"
  echo "- preparing = from rollout_started to the last database_step event"
  echo
} > "$out"
CYCLE_SCALE="$scale" CYCLE_OUT="$out.table" \
  cargo test --release --test release_cycle release_preparing_benchmark -- --ignored --nocapture --test-threads=1
cat "$out.table" >> "$out"
rm -f "$out.table"
echo "results written to $out"
cat "$out"
