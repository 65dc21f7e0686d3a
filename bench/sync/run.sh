#!/usr/bin/env bash
# switchyard sync benchmark: clone and verify of a pgbench database (scale 50 by
# default) between two local PostgreSQL clusters, against pg_dump/pg_restore and
# count(*), in the same run on the same clusters.
#
#   bash bench/sync/run.sh            # SCALE=50 RUNS=2 by default
#   SCALE=10 RUNS=1 bash bench/sync/run.sh
#   SHAPE=two bash bench/sync/run.sh  # a second table as big as pgbench_accounts,
#                                     # with two indexes, so index builds can overlap copies
#
# Needs the PostgreSQL server and client (initdb, pg_ctl, pgbench, pg_dump,
# pg_restore, psql from `pg_config --bindir`) and cargo. Runs the servers as the
# `postgres` user when started as root. Prints a Markdown table and writes it to
# bench/sync/results-<date>.md.
set -euo pipefail

SCALE=${SCALE:-50}
RUNS=${RUNS:-2}
JOBS=${JOBS:-2}
SHAPE=${SHAPE:-pgbench}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${SWITCHYARD_PG_BINDIR:-$(pg_config --bindir)}
WORK=$(mktemp -d /tmp/switchyard-bench-XXXXXX)
chmod 755 "$WORK"

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; fi
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_cluster() { # name port
  as_pg "$BIN/initdb" -D "$WORK/$1" -U postgres --auth=trust -E UTF8 --no-locale --no-sync >/dev/null
  cat >>"$WORK/$1/postgresql.conf" <<CONF
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = logical
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 8GB
shared_buffers = 256MB
maintenance_work_mem = 256MB
CONF
  as_pg "$BIN/pg_ctl" -D "$WORK/$1" -l "$WORK/$1.log" -w start >/dev/null
}
cleanup() {
  for c in blue green; do
    [ -d "$WORK/$c" ] && as_pg "$BIN/pg_ctl" -D "$WORK/$c" stop -m immediate >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

BLUE_PORT=$(free_port); start_cluster blue "$BLUE_PORT"
GREEN_PORT=$(free_port); start_cluster green "$GREEN_PORT"
BLUE="postgres://postgres@127.0.0.1:$BLUE_PORT/bench"
GREEN="postgres://postgres@127.0.0.1:$GREEN_PORT/bench"

echo "building switchyard (release)..." >&2
(cd "$ROOT" && cargo build --release -q --bin switchyard)
# `switchyard sync` reads [database] from a config; the rest is boilerplate.
cat >"$WORK/switchyard.toml" <<TOML
[pools.blue]
upstreams = ["127.0.0.1:1"]
[pools.green]
upstreams = ["127.0.0.1:2"]
[admin]
token = "bench"
[database]
blue = "$BLUE"
green = "$GREEN"
mode = "snapshot"
migrations = "$WORK/no-migrations"
TOML
SYNC="$ROOT/target/release/switchyard sync -c $WORK/switchyard.toml"

echo "pgbench -i -s $SCALE on blue..." >&2
"$BIN/createdb" -h 127.0.0.1 -p "$BLUE_PORT" -U postgres bench
"$BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$BLUE_PORT" -U postgres bench >/dev/null 2>&1
if [ "$SHAPE" = two ]; then
  "$BIN/psql" -Atq "$BLUE" -c "CREATE TABLE pgbench_accounts_b AS SELECT * FROM pgbench_accounts; \
    ALTER TABLE pgbench_accounts_b ADD PRIMARY KEY (aid); CREATE INDEX ON pgbench_accounts_b (abalance, bid)"
fi
SIZE=$("$BIN/psql" -At "$BLUE" -c "SELECT pg_size_pretty(pg_database_size('bench'))")

fresh_green() {
  "$BIN/dropdb" --if-exists -h 127.0.0.1 -p "$GREEN_PORT" -U postgres bench
  "$BIN/createdb" -h 127.0.0.1 -p "$GREEN_PORT" -U postgres bench
}
now() { date +%s.%N; }
elapsed() { printf "%.3f" "$(echo "$(now) - $1" | bc)"; }

declare -A times cpus
TCK=$(getconf CLK_TCK)
record() { # name seconds cpu-seconds
  echo "  $1: $2 s wall, $3 s CPU" >&2
  times[$1]="${times[$1]:-} $2"
  cpus[$1]="${cpus[$1]:-} $3"
}
stat() { # best|median list
  local sorted
  sorted=$(tr ' ' '\n' <<<"$2" | grep . | sort -g)
  if [ "$1" = best ]; then head -1 <<<"$sorted"; else awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}' <<<"$sorted"; fi
}
# CPU ticks used so far by both clusters: the postmasters (with the children
# they have reaped, i.e. finished backends) and their live children.
server_ticks() {
  local total=0 pm pid f
  for c in blue green; do
    pm=$(head -1 "$WORK/$c/postmaster.pid")
    for pid in $pm $(pgrep -P "$pm"); do
      f=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
      # after "comm)": field 1 is state, 12 utime, 13 stime, 14 cutime, 15 cstime
      if [ "$pid" = "$pm" ]; then
        total=$((total + $(awk '{print $12 + $13 + $14 + $15}' <<<"$f")))
      else
        total=$((total + $(awk '{print $12 + $13}' <<<"$f")))
      fi
    done
  done
  echo "$total"
}
# measure NAME CMD...: wall time, and CPU seconds of both servers plus the
# client programs. CPU time is what the method costs; on a machine shared with
# other work it is far steadier than wall time.
measure() {
  local name=$1 s0 s1 t wall client status=0
  shift
  s0=$(server_ticks); t=$(now)
  /usr/bin/time -f "%U %S" -o "$WORK/rusage" "$@" || status=$?
  wall=$(elapsed "$t")
  sleep 0.5 # let the postmasters reap their backends
  s1=$(server_ticks)
  client=$(awk '{print $1 + $2}' "$WORK/rusage")
  record "$name" "$wall" "$(echo "scale=2; ($s1 - $s0) / $TCK + $client" | bc | sed 's/^\./0./')"
  return "$status"
}
quiesce() { # flush both clusters so one method's dirty pages do not slow the next
  "$BIN/psql" -Atq "postgres://postgres@127.0.0.1:$BLUE_PORT/postgres" -c CHECKPOINT
  "$BIN/psql" -Atq "postgres://postgres@127.0.0.1:$GREEN_PORT/postgres" -c CHECKPOINT
  sync
}

check_green() { # the clone is complete: same row count as blue
  local n
  n=$("$BIN/psql" -At "$GREEN" -c "SELECT count(*) FROM pgbench_accounts")
  [ "$n" = "$((SCALE * 100000))" ] || { echo "green has $n accounts, expected $((SCALE * 100000))" >&2; exit 1; }
}

# count(*) of every pgbench table, run on blue and green at the same time
TABLES="pgbench_accounts pgbench_branches pgbench_tellers pgbench_history"
[ "$SHAPE" = two ] && TABLES+=" pgbench_accounts_b"
COUNTS=""
for t in $TABLES; do COUNTS+="SELECT count(*) FROM $t; "; done

clone_switchyard() {
  fresh_green; quiesce
  measure switchyard_clone $SYNC --json clone --jobs "$JOBS" >"$WORK/clone.json"
  check_green
  # verify right after (green equals blue), against count(*) of the same tables
  quiesce
  measure count bash -c "'$BIN/psql' -Atq '$BLUE' -c '$COUNTS' >/dev/null & '$BIN/psql' -Atq '$GREEN' -c '$COUNTS' >/dev/null & wait"
  measure switchyard_verify $SYNC --json verify --jobs "$JOBS" >"$WORK/verify.json" \
    || { cat "$WORK/verify.json" >&2; echo "verify failed" >&2; exit 1; }
}
clone_baseline() { # SY_BASELINE: another switchyard binary (e.g. the previous commit's), same run
  fresh_green; quiesce
  measure baseline_clone "$SY_BASELINE" sync -c "$WORK/switchyard.toml" --json clone --jobs "$JOBS" >/dev/null
  check_green
}
clone_dump_fc() {
  fresh_green; quiesce
  measure dump_fc_restore bash -c "'$BIN/pg_dump' -Fc -d '$BLUE' | '$BIN/pg_restore' --no-owner -d '$GREEN'"
  check_green
}
clone_dump_fd() {
  fresh_green; rm -rf "$WORK/dumpdir"; quiesce
  measure dump_fd_restore_j bash -c "'$BIN/pg_dump' -Fd -j '$JOBS' -f '$WORK/dumpdir' -d '$BLUE' && '$BIN/pg_restore' -j '$JOBS' --no-owner -d '$GREEN' '$WORK/dumpdir'"
  check_green
}

clone_pgcopydb() { # the peer users pick for fast clones, same job counts
  fresh_green; rm -rf "$WORK/pgcopydb"; quiesce
  measure pgcopydb env PATH="$BIN:$PATH" pgcopydb clone --source "$BLUE" --target "$GREEN" \
    --table-jobs "$JOBS" --index-jobs "$JOBS" --dir "$WORK/pgcopydb" \
    --no-owner --no-acl --skip-extensions >"$WORK/pgcopydb.log" 2>&1 \
    || { tail -20 "$WORK/pgcopydb.log" >&2; exit 1; }
  check_green
}

# The floor: the same rows loaded from server-side binary files with one
# COPY FREEZE per table ($JOBS sessions, largest table alone), then the
# same indexes and constraints (pg_restore --section=post-data -j$JOBS).
# No reading from blue at all: what green's server alone needs.
FLOOR="$WORK/floor"
prepare_floor() {
  mkdir -p "$FLOOR"; [ "$(id -u)" = 0 ] && chown postgres: "$FLOOR"
  for t in $TABLES; do
    "$BIN/psql" -Atq "$BLUE" -c "COPY $t TO '$FLOOR/$t.bin' WITH (FORMAT binary)"
  done
  "$BIN/pg_dump" -Fc --schema-only -d "$BLUE" -f "$FLOOR/schema.dump"
}
clone_floor() {
  fresh_green; quiesce
  local load="BEGIN; TRUNCATE %s; COPY %s FROM '$FLOOR/%s.bin' WITH (FORMAT binary, FREEZE); COMMIT;"
  local rest="" t
  for t in $TABLES; do [ "$t" = pgbench_accounts ] || rest+=$(printf "$load" $t $t $t); done
  measure floor bash -c "'$BIN/pg_restore' --no-owner --section=pre-data -d '$GREEN' '$FLOOR/schema.dump' \
    && { '$BIN/psql' -Atq '$GREEN' -c \"$(printf "$load" pgbench_accounts pgbench_accounts pgbench_accounts)\" & \
         '$BIN/psql' -Atq '$GREEN' -c \"$rest\" & wait; } \
    && '$BIN/pg_restore' --no-owner --section=post-data -j '$JOBS' -d '$GREEN' '$FLOOR/schema.dump'"
  check_green
}

# Warm-up: blue's pages read once (hint bits set) before anything is timed.
"$BIN/psql" -Atq "$BLUE" -c "VACUUM ANALYZE" >/dev/null
"$BIN/psql" -Atq "$BLUE" -c "$COUNTS" >/dev/null
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
prepare_floor
methods=(clone_switchyard clone_dump_fc clone_dump_fd clone_pgcopydb clone_floor)
[ -n "${SY_BASELINE:-}" ] && methods+=(clone_baseline)
n=${#methods[@]}
for run in $(seq 1 "$RUNS"); do
  echo "run $run/$RUNS (load average: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  for i in $(seq 0 $((n - 1))); do # rotate the order so no method always goes first
    "${methods[$(((i + run) % n))]}"
  done
done

ratio() { echo "scale=2; $1 / $2" | bc | sed 's/^\./0./'; }
OUT="$ROOT/bench/sync/results-$(date -u +%Y-%m-%d)-$SHAPE.md"
{
  echo "pgbench scale $SCALE, shape $SHAPE ($SIZE on blue), $(nproc) cores, PostgreSQL $("$BIN/postgres" --version | awk '{print $3}'), jobs $JOBS, $RUNS runs, load average before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "Wall time: median (best). CPU: median CPU seconds of both servers and the client programs."
  echo
  echo "| operation | switchyard | peer | peer | wall ratio median (best) | CPU ratio | target |"
  echo "|---|---|---|---|---|---|---|"
  row() { # op ours peer label target
    local om ob pm pb oc pc
    om=$(stat median "${times[$2]}"); ob=$(stat best "${times[$2]}"); oc=$(stat median "${cpus[$2]}")
    pm=$(stat median "${times[$3]}"); pb=$(stat best "${times[$3]}"); pc=$(stat median "${cpus[$3]}")
    echo "| $1 | $om s ($ob), CPU $oc s | $4 | $pm s ($pb), CPU $pc s | $(ratio "$om" "$pm") ($(ratio "$ob" "$pb")) | $(ratio "$oc" "$pc") | $5 |"
  }
  row clone switchyard_clone dump_fc_restore '`pg_dump -Fc \| pg_restore`' "≤ 0.7"
  row clone switchyard_clone dump_fd_restore_j "\`pg_dump -Fd -j$JOBS\` + \`pg_restore -j$JOBS\`" "≤ 0.8"
  row clone switchyard_clone pgcopydb "\`pgcopydb clone --table-jobs $JOBS --index-jobs $JOBS\`" "≤ 0.7"
  row clone switchyard_clone floor "floor: binary \`COPY FREEZE\` from server files + post-data -j$JOBS" "≤ 1.2"
  [ -n "${SY_BASELINE:-}" ] && row clone switchyard_clone baseline_clone "switchyard before (\`$SY_BASELINE\`)" "–"
  row verify switchyard_verify count '`count(*)` of the same tables, blue and green in parallel' "≤ 2"
  echo
  echo "Raw runs (wall s / CPU s):"
  for k in switchyard_clone dump_fc_restore dump_fd_restore_j pgcopydb floor baseline_clone switchyard_verify count; do
    [ -n "${times[$k]:-}" ] || continue
    echo "- $k: wall${times[$k]}; CPU${cpus[$k]}"
  done
} | tee "$OUT"
