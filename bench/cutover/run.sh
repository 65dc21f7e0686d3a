#!/usr/bin/env bash
# Cutover benchmark: an orders application whose blue and green releases use
# their own PostgreSQL databases (throwaway clusters, wal_level=logical),
# steady writes through a real switchyard (release build) in replicate mode.
# Each round promotes (blue -> green cutover) and then aborts (green -> blue
# cutover back) under the load, and reports how long writes were held, how
# many waited, the lag just before, failed requests and lost writes.
#
# Usage: bench/cutover/run.sh                 (5 rounds, 8 writers)
#        CUTOVER_ROUNDS=10 CUTOVER_WRITERS=16 bench/cutover/run.sh
#        CUTOVER_SYNC_COMMIT=off bench/cutover/run.sh   (asynchronous commit on both servers)
# Writes bench/cutover/results-<date>.md and prints the table.
set -euo pipefail
cd "$(dirname "$0")/../.."

out="bench/cutover/results-$(date -u +%F).md"
rounds="${CUTOVER_ROUNDS:-5}"
sync_commit="${CUTOVER_SYNC_COMMIT:-on}"
writers="${CUTOVER_WRITERS:-8}"
{
  echo "# Cutover write hold, $(date -u +'%F %H:%M UTC')"
  echo
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
  echo "- $(rustc --version), release profile; PostgreSQL $(pg_config --version | awk '{print $2}') clusters (fsync=off, synchronous_commit=${sync_commit}, as production runs it unless noted), apps, load and switchyard on one host (loopback)"
  echo "- ${writers} writers sending POST /orders back to back and 2 readers through the proxy; cutover_timeout 5s; ${rounds} rounds"
  echo
} > "$out"

CUTOVER_ROUNDS="$rounds" CUTOVER_WRITERS="$writers" CUTOVER_SYNC_COMMIT="$sync_commit" CUTOVER_OUT="$out.table" \
  cargo test --release --test replicate_rollout cutover_hold_benchmark -- \
  --ignored --nocapture --test-threads=1

cat "$out.table" >> "$out"
rm -f "$out.table"
echo
echo "results written to $out"
cat "$out"
