#!/usr/bin/env bash
# Memory per idle keep-alive connection, and the long soak: N client
# connections (default 10,000) each send one request through the proxy and
# then stay open and idle; resident memory (VmRSS) of the proxy is read
# before, while they are held, and after they close. nginx (one worker,
# keep-alive to the same backend) holds the same N in the same run. While
# the N are held, 20 new clients must still be served.
#
# Usage: bench/connections/run.sh [connections] [rounds]
#        CHURN=1 bench/connections/run.sh 2000 [rounds]   (the CPU cost of
#        idle spells: clients that pause 0.5 s or 1.5 s between requests)
set -euo pipefail
N=${1:-10000}
ROUNDS=${2:-1}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/bench/out/connections}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.3; rm -rf "$WORK"' EXIT

# Room for N client sockets, N proxy-side sockets and upstream connections.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $(( N + 1000 )) ] || { echo "ulimit -n $(ulimit -n) is too low for $N connections" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! need nginx; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -z "${SY:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin switchyard -q)
  SY="${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard"
fi

BACKEND=19200; NGINX_P=19201; SY_P=19202; SY_ADMIN=19203
WC=$(( N * 2 + 1000 ))

mkdir -p "$WORK/backend" "$WORK/nginx"
cat > "$WORK/backend/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/backend/pid; error_log $WORK/backend/error.log;
worker_rlimit_nofile 65536;
events { worker_connections $WC; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; location / { return 200 "hello from the backend\n"; } } }
CONF
"$NGINX" -c "$WORK/backend/nginx.conf" -p "$WORK/backend" &

# The peer: nginx as the reverse proxy, one worker, keep-alive upstream,
# idle client connections kept for 75 s (its default keepalive_timeout).
# The peer: nginx as the reverse proxy, one worker, keep-alive upstream,
# idle client connections kept for 75 s (its default keepalive_timeout).
# nginx allocates a connection and two events for each of
# `worker_connections` when it starts, so its RSS above its baseline shows
# only part of what a connection costs it; the same nginx started with 1,024
# slots (`slots.json`) says what each preallocated slot costs.
nginx_conf() { # dir worker_connections
  cat > "$1/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $1/pid; error_log $1/error.log;
worker_rlimit_nofile 65536;
events { worker_connections $2; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 75s;
  upstream app { server 127.0.0.1:$BACKEND; keepalive 256; }
  server { listen 127.0.0.1:$NGINX_P backlog=4096;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
}
nginx_conf "$WORK/nginx" "$WC"

cat > "$WORK/switchyard.toml" <<CONF
[proxy]
listen = "127.0.0.1:$SY_P"
workers = 1
max_connections = $(( N + 1000 ))
backlog = 4096
[pools.blue]
upstreams = ["127.0.0.1:$BACKEND"]
[pools.green]
upstreams = ["127.0.0.1:$BACKEND"]
[admin]
listen = "127.0.0.1:$SY_ADMIN"
token = "bench"
[state]
path = "$WORK/state.json"
[log]
level = "warn"
CONF

wait_for() { # url
  for _ in $(seq 100); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "nothing answered at $1" >&2; exit 1
}
rss_of() { # pid,pid...
  local t=0
  for p in ${1//,/ }; do t=$(( t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status") )); done
  echo "$t"
}

# Each round starts both proxies afresh (a process that held 10,000
# connections before keeps its allocator's high-water mark, which would
# hide the next round's cost), nginx and switchyard interleaved.
for r in $(seq "$ROUNDS"); do
  "$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
  NGINX_MASTER=$!
  wait_for "http://127.0.0.1:$NGINX_P/"
  sleep 0.5
  NGINX_PIDS="$NGINX_MASTER,$(pgrep -P "$NGINX_MASTER" | paste -sd,)"
  python3 "$ROOT/bench/connections/hold.py" "$NGINX_P" "$N" "$NGINX_PIDS" > "$OUT/nginx.$r.json"
  kill "$NGINX_MASTER"; wait "$NGINX_MASTER" 2>/dev/null || true

  "$SY" run -c "$WORK/switchyard.toml" > "$WORK/sy.out" 2> "$WORK/sy.err" &
  SY_PID=$!
  wait_for "http://127.0.0.1:$SY_ADMIN/healthz"
  wait_for "http://127.0.0.1:$SY_P/"
  sleep 0.5
  python3 "$ROOT/bench/connections/hold.py" "$SY_P" "$N" "$SY_PID" > "$OUT/switchyard.$r.json"
  kill "$SY_PID"; wait "$SY_PID" 2>/dev/null || true
done

# CHURN=1: the cost of idle spells. 2,000 keep-alive clients, one request
# each every 0.5 s (never idle long enough to park) and every 1.5 s (every
# request comes after a park), 20 s each, beside nginx under the same load.
if [ -n "${CHURN:-}" ]; then
  for r in $(seq "$ROUNDS"); do
    for period in 0.5 1.5; do
      "$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
      NGINX_MASTER=$!
      wait_for "http://127.0.0.1:$NGINX_P/"
      NGINX_PIDS="$NGINX_MASTER,$(pgrep -P "$NGINX_MASTER" | paste -sd,)"
      python3 "$ROOT/bench/connections/churn.py" "$NGINX_P" 2000 "$period" 20 "$NGINX_PIDS" > "$OUT/churn-nginx-$period.$r.json"
      kill "$NGINX_MASTER"; wait "$NGINX_MASTER" 2>/dev/null || true
      "$SY" run -c "$WORK/switchyard.toml" > "$WORK/sy.out" 2> "$WORK/sy.err" &
      SY_PID=$!
      wait_for "http://127.0.0.1:$SY_ADMIN/healthz"
      wait_for "http://127.0.0.1:$SY_P/"
      python3 "$ROOT/bench/connections/churn.py" "$SY_P" 2000 "$period" 20 "$SY_PID" > "$OUT/churn-switchyard-$period.$r.json"
      kill "$SY_PID"; wait "$SY_PID" 2>/dev/null || true
    done
  done
  python3 - "$OUT" "$ROUNDS" <<'PY' | tee "$OUT/churn.md"
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("| proxy | one request per client every | requests | failed | CPU µs per request (median) |")
print("|---|---:|---:|---:|---:|")
for name in ("nginx", "switchyard"):
    for period in ("0.5", "1.5"):
        runs = [json.load(open(os.path.join(out, f"churn-{name}-{period}.{r}.json"))) for r in range(1, rounds + 1)]
        print(f"| {name} | {period} s | {sum(r['requests'] for r in runs)} | {sum(r['failures'] for r in runs)} | {statistics.median(r['cpu_us_per_request'] for r in runs)} |")
PY
  exit 0
fi

# nginx's preallocation: the same worker with $WC slots and with 1,024.
slots_rss() { # worker_connections
  mkdir -p "$WORK/slots$1"; nginx_conf "$WORK/slots$1" "$1"
  "$NGINX" -c "$WORK/slots$1/nginx.conf" -p "$WORK/slots$1" &
  local m=$!
  wait_for "http://127.0.0.1:$NGINX_P/" ; sleep 0.5
  rss_of "$m,$(pgrep -P "$m" | paste -sd,)"
  kill "$m"; wait "$m" 2>/dev/null || true
}
BIG=$(slots_rss "$WC"); SMALL=$(slots_rss 1024)
echo "{\"slots_big\": $WC, \"rss_big_kib\": $BIG, \"slots_small\": 1024, \"rss_small_kib\": $SMALL}" > "$OUT/slots.json"

python3 - "$OUT" "$ROUNDS" "$N" <<'PY' | tee "$OUT/table.md"
import json, os, statistics, sys
out, rounds, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = {}
for name in ("nginx", "switchyard"):
    runs = [json.load(open(os.path.join(out, f"{name}.{r}.json"))) for r in range(1, rounds + 1)]
    for run in runs:
        if run["failures"] or run["probes_ok_while_held"] != 20:
            sys.exit(f"{name}: {run}")
    med = lambda k: statistics.median(r[k] for r in runs)
    rows[name] = {k: med(k) for k in ("connections", "baseline_kib", "held_kib", "after_close_kib", "bytes_per_connection", "open_seconds")}
print("| proxy | connections held | RSS before | RSS holding them | RSS after they close | bytes per idle connection | time to open them |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, r in rows.items():
    print(f"| {name} | {r['connections']:.0f} | {r['baseline_kib']/1024:.1f} MiB | {r['held_kib']/1024:.1f} MiB | {r['after_close_kib']/1024:.1f} MiB | {r['bytes_per_connection']:.0f} | {r['open_seconds']:.2f} s |")
slots = json.load(open(os.path.join(out, "slots.json")))
per_slot = (slots["rss_big_kib"] - slots["rss_small_kib"]) * 1024 / (slots["slots_big"] - slots["slots_small"])
print("\n| round | nginx (above its baseline) | nginx + its preallocated slot | switchyard |")
print("|---|---:|---:|---:|")
for r in range(1, rounds + 1):
    ng = json.load(open(os.path.join(out, f"nginx.{r}.json")))["bytes_per_connection"]
    sy = json.load(open(os.path.join(out, f"switchyard.{r}.json")))["bytes_per_connection"]
    print(f"| {r} | {ng} B | {ng + per_slot:.0f} B | {sy} B |")
ng, sy = rows["nginx"]["bytes_per_connection"], rows["switchyard"]["bytes_per_connection"]
print(f"\nnginx preallocates {per_slot:.0f} B per connection slot ({slots['slots_big']} slots: {slots['rss_big_kib']/1024:.1f} MiB, {slots['slots_small']}: {slots['rss_small_kib']/1024:.1f} MiB).")
print(f"switchyard / nginx bytes per idle connection: {sy / max(ng, 1):.2f} above nginx's baseline, {sy / (ng + per_slot):.2f} counting its slot; every connection answered 200 and 20 new clients were served while they were held; median of {rounds} round(s), fresh processes each round, {os.cpu_count()} cores")
PY
