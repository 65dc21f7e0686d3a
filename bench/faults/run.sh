#!/usr/bin/env bash
# The fault schedule of the cutover: FAULT_ROUNDS (default 20) rollouts
# under a write load through a real switchyard (release build), each with
# one fault at a random step of a random cutover (forward, or back after
# the promotion): a server killed and restarted, or its port cut off with
# iptables and healed. Reports writes acknowledged, lost and duplicated, and
# the longest write hold. FAULT_SEED=<n> repeats a schedule. Needs root
# (iptables) and PostgreSQL's server programs.
#
# Usage: bench/faults/run.sh     FAULT_ROUNDS=5 FAULT_SEED=7 bench/faults/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out="bench/faults/results-$(date -u +%F).md"
{
  echo "# Cutover fault schedule, $(date -u +'%F %H:%M UTC')"
  echo
  echo "- machine: $(nproc) cores, $(uname -sr); $(rustc --version), release profile"
  echo "- PostgreSQL $(pg_config --version | awk '{print $2}') clusters (fsync=off, synchronous_commit=off), cutover_timeout 5s, each cutover paused 1.5 s after the chosen step (SWITCHYARD_CUTOVER_PAUSE) and the fault injected 0.7 s into it, healed 3 s later"
  echo
} > "$out"
FAULTS_OUT="$out.table" cargo test --release --test cutover_faults fault_schedule -- --ignored --nocapture --test-threads=1
cat "$out.table" >> "$out"
rm -f "$out.table"
echo "results written to $out"
cat "$out"
