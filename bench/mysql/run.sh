#!/usr/bin/env bash
# switchyard sync benchmark on MariaDB: clone and verify of a sysbench-shaped
# database (two tables of ROWS/2 rows: id primary key, k with a secondary
# index, c CHAR(120), pad CHAR(60)) between two local MariaDB servers, against
# `mariadb-dump --single-transaction | mariadb` and mydumper/myloader with the
# same thread count, and verify against CHECKSUM TABLE and pt-table-checksum,
# all in the same run on the same servers, in rotating order.
#
#   bash bench/mysql/run.sh                  # ROWS=2000000 RUNS=2 JOBS=2
#   ROWS=200000 RUNS=1 bash bench/mysql/run.sh
#
# Needs Debian's mariadb-server, mariadb-client, mydumper and percona-toolkit,
# and cargo. Prints a Markdown table and writes it to
# bench/mysql/results-<date>.md.
set -euo pipefail

ROWS=${ROWS:-2000000}
RUNS=${RUNS:-2}
JOBS=${JOBS:-2}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# The servers and the peers, from Debian's packages, on a machine that lacks them.
if ! command -v mariadbd >/dev/null 2>&1 || ! command -v mydumper >/dev/null 2>&1 \
   || ! command -v pt-table-checksum >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mydumper percona-toolkit
  pkill -x mariadbd >/dev/null 2>&1 || true
fi
WORK=$(mktemp -d /tmp/switchyard-mybench-XXXXXX)
chmod 755 "$WORK"
as_mysql() { if [ "$(id -u)" = 0 ]; then runuser -u mysql -- "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ]; then chown mysql: "$WORK"; fi
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_server() { # name port server_id
  as_mysql mariadb-install-db --no-defaults --datadir="$WORK/$1" --auth-root-authentication-method=normal --skip-test-db >/dev/null 2>&1
  as_mysql mariadbd --no-defaults --datadir="$WORK/$1" --socket="$WORK/$1.sock" --pid-file="$WORK/$1.pid" \
    --log-error="$WORK/$1.log" --log-bin="$WORK/$1/binlog" --port="$2" --server-id="$3" \
    --bind-address=127.0.0.1 --skip-name-resolve --binlog-format=ROW --local-infile=1 \
    --innodb-flush-log-at-trx-commit=0 --sync-binlog=0 --innodb-buffer-pool-size=1G \
    --innodb-log-file-size=512M --innodb-doublewrite=0 --max-connections=200 \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci &
  for _ in $(seq 1 200); do mariadb -h 127.0.0.1 -P "$2" -u root -e 'SELECT 1' >/dev/null 2>&1 && return; sleep 0.1; done
  cat "$WORK/$1.log" >&2; exit 1
}
cleanup() {
  for c in blue green; do [ -f "$WORK/$c.pid" ] && kill -9 "$(cat "$WORK/$c.pid")" 2>/dev/null || true; done
  sleep 0.5; rm -rf "$WORK"
}
trap cleanup EXIT

BLUE_PORT=$(free_port); start_server blue "$BLUE_PORT" 1
GREEN_PORT=$(free_port); start_server green "$GREEN_PORT" 2
B="mariadb -h 127.0.0.1 -P $BLUE_PORT -u root"
G="mariadb -h 127.0.0.1 -P $GREEN_PORT -u root"

echo "building switchyard (release)..." >&2
(cd "$ROOT" && cargo build --release -q --bin switchyard)
cat >"$WORK/switchyard.toml" <<TOML
[pools.blue]
upstreams = ["127.0.0.1:1"]
[pools.green]
upstreams = ["127.0.0.1:2"]
[admin]
token = "bench"
[database]
blue = "mariadb://root@127.0.0.1:$BLUE_PORT/bench"
green = "mariadb://root@127.0.0.1:$GREEN_PORT/bench"
mode = "snapshot"
migrations = "$WORK/no-migrations"
TOML
SYNC="$ROOT/target/release/switchyard sync -c $WORK/switchyard.toml"

echo "loading $ROWS rows into blue..." >&2
HALF=$((ROWS / 2))
$B -e "CREATE DATABASE bench"
for t in sbtest1 sbtest2; do
  $B bench -e "CREATE TABLE $t (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL DEFAULT 0,
      c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '', KEY k_$t (k)) ENGINE=InnoDB;
    INSERT INTO $t (k, c, pad) SELECT FLOOR(RAND(seq) * $HALF), CONCAT(MD5(seq), '-', MD5(seq * 7), '-', MD5(seq * 13)),
      CONCAT(MD5(seq * 3), '-', LEFT(MD5(seq * 5), 27)) FROM seq_1_to_$HALF;"
done
$B bench -e "ANALYZE TABLE sbtest1, sbtest2" >/dev/null
SIZE=$($B -N -e "SELECT CONCAT(ROUND(SUM(DATA_LENGTH + INDEX_LENGTH) / 1048576), ' MiB') FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'bench'")

fresh_green() { $G -e "DROP DATABASE IF EXISTS bench; CREATE DATABASE bench"; }
check_green() {
  local n
  n=$($G -N -e "SELECT (SELECT COUNT(*) FROM bench.sbtest1) + (SELECT COUNT(*) FROM bench.sbtest2)")
  [ "$n" = "$((HALF * 2))" ] || { echo "green has $n rows, expected $((HALF * 2))" >&2; exit 1; }
  n=$($G -N -e "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = 'bench' AND INDEX_NAME LIKE 'k_%'")
  [ "$n" = 2 ] || { echo "green lacks its secondary indexes" >&2; exit 1; }
}
now() { date +%s.%N; }
declare -A times
measure() { # name cmd...
  local name=$1 t wall
  shift
  $B -e "FLUSH TABLES" >/dev/null; $G -e "FLUSH TABLES" >/dev/null 2>&1 || true; sync
  t=$(now)
  "$@"
  wall=$(printf "%.3f" "$(echo "$(now) - $t" | bc)")
  echo "  $name: $wall s" >&2
  times[$name]="${times[$name]:-} $wall"
}
best() { tr ' ' '\n' <<<"$1" | grep . | sort -g | head -1; }

clone_switchyard() { fresh_green; measure switchyard_clone $SYNC --json clone --jobs "$JOBS" >"$WORK/clone.json"; check_green; }
clone_dump() {
  fresh_green
  measure mysqldump_pipe bash -c "mariadb-dump -h 127.0.0.1 -P $BLUE_PORT -u root --single-transaction --routines --triggers --events bench | $G bench"
  check_green
}
clone_mydumper() {
  fresh_green; rm -rf "$WORK/dump"
  measure mydumper_myloader bash -c "mydumper -h 127.0.0.1 -P $BLUE_PORT -u root -B bench -t $JOBS -o '$WORK/dump' >/dev/null 2>&1 \
    && myloader -h 127.0.0.1 -P $GREEN_PORT -u root -B bench -t $JOBS -d '$WORK/dump' -o >/dev/null 2>&1"
  check_green
}
verify_all() {
  clone_switchyard
  measure switchyard_verify $SYNC --json verify --jobs "$JOBS" >"$WORK/verify.json" \
    || { cat "$WORK/verify.json" >&2; echo "verify failed" >&2; exit 1; }
  measure checksum_table bash -c "$B bench -N -e 'CHECKSUM TABLE sbtest1, sbtest2' >/dev/null & $G bench -N -e 'CHECKSUM TABLE sbtest1, sbtest2' >/dev/null & wait"
  measure pt_table_checksum bash -c "pt-table-checksum h=127.0.0.1,P=$BLUE_PORT,u=root --databases bench --no-check-binlog-format \
      --no-check-replication-filters --recursion-method=none --no-check-plan >/dev/null 2>&1 || [ \$? -lt 16 ]"
}

METHODS=(clone_switchyard clone_dump clone_mydumper verify_all)
for r in $(seq 1 "$RUNS"); do
  echo "round $r/$RUNS" >&2
  for i in "${!METHODS[@]}"; do
    "${METHODS[$(( (i + r) % ${#METHODS[@]} ))]}"
  done
done

sy=$(best "${times[switchyard_clone]}")
row() { printf "| %s | %s | %.2f× |\n" "$1" "$(best "${times[$2]}")" "$(echo "scale=4; $sy / $(best "${times[$2]}")" | bc)"; }
vy=$(best "${times[switchyard_verify]}")
vrow() { printf "| %s | %s | %.2f× |\n" "$1" "$(best "${times[$2]}")" "$(echo "scale=4; $vy / $(best "${times[$2]}")" | bc)"; }
OUT="$ROOT/bench/mysql/results-$(date +%F).md"
{
  echo "# MariaDB clone and verify, $(date +%F)"
  echo
  echo "$(mariadbd --version | head -1); $ROWS rows in 2 tables ($SIZE on blue); JOBS=$JOBS; best of $RUNS rotating rounds; $(nproc) cores."
  echo
  echo "| clone | seconds | switchyard / this |"
  echo "|---|---|---|"
  row "switchyard sync clone --jobs $JOBS" switchyard_clone
  row "mariadb-dump --single-transaction \| mariadb" mysqldump_pipe
  row "mydumper -t $JOBS + myloader -t $JOBS" mydumper_myloader
  echo
  echo "| verify | seconds | switchyard / this |"
  echo "|---|---|---|"
  vrow "switchyard sync verify --jobs $JOBS (chunked CRC32+CRC32C, both sides)" switchyard_verify
  vrow "CHECKSUM TABLE on both sides at once" checksum_table
  vrow "pt-table-checksum (blue only, no replicas)" pt_table_checksum
} | tee "$OUT"
