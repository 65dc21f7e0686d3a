#!/usr/bin/env bash
# HTTP/2 benchmarks, peers in the same run, rounds interleaved:
#
#  grpc   gRPC unary calls (grpc.health.v1.Health/Check) from h2load to a
#         real gRPC server (tonic, release build): direct, through
#         switchyard (protocol = "h2c"), nginx (grpc_pass) and haproxy
#         (proto h2 on both sides).
#  h2     an HTTP/2 client (h2load, prior knowledge) in front of the
#         HTTP/1.1 backend of bench/proxy: switchyard's, nginx's and
#         haproxy's h2 frontends.
#
# Each proxy has one worker thread and is pinned to CPU 0; h2load and the
# backends to CPU 1. Reports requests/s, mean latency and the proxy's CPU
# time per request (from /proc/PID/stat).
#
# Usage: bench/h2/run.sh [duration_seconds] [clients] [streams_per_client] [rounds]
#        SY_BASELINE=path/to/older/switchyard bench/h2/run.sh ...   (also measures
#        that binary, as "baseline", in the same interleaved rounds)
set -euo pipefail
DUR=${1:-10}
CLIENTS=${2:-16}
STREAMS=${3:-8}
ROUNDS=${4:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/bench/out/h2}
mkdir -p "$OUT"
WORK=$(mktemp -d)
chmod 755 "$WORK"
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.3; rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! need nginx || ! need haproxy || ! need h2load; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy nghttp2-client
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

cd "$ROOT"
if [ -z "${SY:-}" ]; then
  cargo build --release --bin switchyard -q
  SY="$ROOT/target/release/switchyard"
fi
# The gRPC backend: tonic's grpc.health.v1, from the test suite's ignored
# bench_grpc_backend, built in release.
TEST_BIN=$(cargo test --release --test grpc --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "grpc" and m.get("executable"):
        print(m["executable"])')

GRPC_B=19200; HTTP_B=19201
SY_GRPC=19210; SY_GRPC_ADMIN=19211; NGINX_GRPC=19212; HAPROXY_GRPC=19213
SY_H2=19220; SY_H2_ADMIN=19221; NGINX_H2=19222; HAPROXY_H2=19223
BASE_GRPC=19230; BASE_GRPC_ADMIN=19231; BASE_H2=19232; BASE_H2_ADMIN=19233
TOTAL=$(( (DUR + 3) * ROUNDS * 8 + 60 ))

BENCH_GRPC_PORT=$GRPC_B BENCH_SECS=$TOTAL taskset -c 1 "$TEST_BIN" bench_grpc_backend \
  --ignored --exact --nocapture > "$WORK/grpc-backend.log" 2>&1 &

mkdir -p "$WORK/backend" "$WORK/nginx"
cat > "$WORK/backend/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/backend/pid; error_log $WORK/backend/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$HTTP_B; location / { return 200 "hello from the backend\n"; } } }
CONF
taskset -c 1 "$NGINX" -c "$WORK/backend/nginx.conf" -p "$WORK/backend" &

cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx/pid; error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream grpc_app { server 127.0.0.1:$GRPC_B; keepalive 64; keepalive_requests 1000000; }
  upstream http_app { server 127.0.0.1:$HTTP_B; keepalive 256; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NGINX_GRPC http2; location / { grpc_pass grpc://grpc_app; } }
  server { listen 127.0.0.1:$NGINX_H2 http2;
    location / { proxy_pass http://http_app; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
CONF
taskset -c 0 "$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
NGINX_PID=$!

cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend grpc
  bind 127.0.0.1:$HAPROXY_GRPC proto h2
  default_backend grpc
backend grpc
  server s1 127.0.0.1:$GRPC_B proto h2
frontend h2
  bind 127.0.0.1:$HAPROXY_H2 proto h2
  option forwardfor
  default_backend http
backend http
  server s1 127.0.0.1:$HTTP_B
CONF
taskset -c 0 "$HAPROXY" -f "$WORK/haproxy.cfg" &
HAPROXY_PID=$!

# switchyard: both colours on the same backend, green at 50% with hash
# stickiness on the client IP (every request through the hash and the
# weight comparison). One process per case, each with one worker.
sy_config() { # name port admin protocol backend
  cat > "$WORK/$1.toml" <<CONF
[proxy]
listen = "127.0.0.1:$2"
workers = 1
sticky = "hash"
sticky_key = "client_ip"
[pools.blue]
upstreams = ["127.0.0.1:$5"]
protocol = "$4"
[pools.green]
upstreams = ["127.0.0.1:$5"]
protocol = "$4"
[admin]
listen = "127.0.0.1:$3"
token = "bench"
[state]
path = "$WORK/$1.state.json"
[log]
level = "warn"
CONF
}
sy_config sy-grpc $SY_GRPC $SY_GRPC_ADMIN h2c $GRPC_B
sy_config sy-h2 $SY_H2 $SY_H2_ADMIN http1 $HTTP_B
taskset -c 0 "$SY" run -c "$WORK/sy-grpc.toml" > "$WORK/sy-grpc.out" 2> "$WORK/sy-grpc.err" &
SY_GRPC_PID=$!
taskset -c 0 "$SY" run -c "$WORK/sy-h2.toml" > "$WORK/sy-h2.out" 2> "$WORK/sy-h2.err" &
SY_H2_PID=$!
ADMINS="$SY_GRPC_ADMIN $SY_H2_ADMIN"
TARGETS="direct nginx haproxy switchyard"
if [ -n "${SY_BASELINE:-}" ]; then
  sy_config base-grpc $BASE_GRPC $BASE_GRPC_ADMIN h2c $GRPC_B
  sy_config base-h2 $BASE_H2 $BASE_H2_ADMIN http1 $HTTP_B
  taskset -c 0 "$SY_BASELINE" run -c "$WORK/base-grpc.toml" > "$WORK/base-grpc.out" 2> "$WORK/base-grpc.err" &
  BASE_GRPC_PID=$!
  taskset -c 0 "$SY_BASELINE" run -c "$WORK/base-h2.toml" > "$WORK/base-h2.out" 2> "$WORK/base-h2.err" &
  BASE_H2_PID=$!
  ADMINS="$ADMINS $BASE_GRPC_ADMIN $BASE_H2_ADMIN"
  TARGETS="$TARGETS baseline"
fi
for admin in $ADMINS; do
  for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null 2>&1 && break; sleep 0.1
  done
  curl -sf -X PUT -H "Authorization: Bearer bench" -d '{"green": 50}' \
    "http://127.0.0.1:$admin/api/v1/weights" >/dev/null
done
for _ in $(seq 100); do grep -q serving "$WORK/grpc-backend.log" && break; sleep 0.1; done
grep -q serving "$WORK/grpc-backend.log" || { cat "$WORK/grpc-backend.log" >&2; exit 1; }
sleep 0.5

# An empty HealthCheckRequest: one uncompressed gRPC message of 0 bytes.
printf '\0\0\0\0\0' > "$WORK/check.bin"

ticks() {
  local total=0 p
  for p in "$@" $(for q in "$@"; do pgrep -P "$q" || true; done); do
    [ -r "/proc/$p/stat" ] || continue
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "$total"
}
load() { # case url
  if [ "$1" = grpc ]; then
    taskset -c 1 h2load -t1 -c"$CLIENTS" -m"$STREAMS" -D"$DUR" \
      -d "$WORK/check.bin" -H 'content-type: application/grpc' -H 'te: trailers' "$2"
  else
    taskset -c 1 h2load -t1 -c"$CLIENTS" -m"$STREAMS" -D"$DUR" "$2"
  fi
}
one_round() { # case round name port pids...
  local c=$1 r=$2 name=$3 port=$4; shift 4
  local path=/; [ "$c" = grpc ] && path=/grpc.health.v1.Health/Check
  local t0 t1
  t0=$(ticks "$@")
  load "$c" "http://127.0.0.1:$port$path" > "$OUT/$c.$name.$r.txt"
  t1=$(ticks "$@")
  echo "proxy_cpu_ticks: $(( t1 - t0 )) $(getconf CLK_TCK)" >> "$OUT/$c.$name.$r.txt"
}
declare -A RPS LAT CPU
summarise() { # case name
  local line
  line=$(for r in $(seq "$ROUNDS"); do
      python3 - "$OUT/$1.$2.$r.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", t).group(1))
done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", t).group(1))
failed = sum(map(int, re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", t).groups()))
c4, c5 = map(int, re.search(r"(\d+) 4xx, (\d+) 5xx", t).groups())
m = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", t)
mean_ms = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
ticks, hz = map(int, re.search(r"proxy_cpu_ticks: (-?\d+) (\d+)", t).groups())
cpu_us = (ticks / hz) * 1e6 / done if ticks > 0 and done else 0.0
print(f"{rps:.0f} {mean_ms:.3f} {failed + c4 + c5} {cpu_us:.1f}")
PY
    done | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p")
  local errs
  read -r RPS[$1.$2] LAT[$1.$2] errs CPU[$1.$2] <<< "$line"
  if [ "$errs" != 0 ]; then echo "$1 $2: $errs requests failed or answered 4xx/5xx" >&2; exit 1; fi
}

# Warm-up, and a check that every target answers.
for t in "grpc $GRPC_B" "grpc $SY_GRPC" "grpc $NGINX_GRPC" "grpc $HAPROXY_GRPC" \
         "h2 $SY_H2" "h2 $NGINX_H2" "h2 $HAPROXY_H2"; do
  set -- $t
  path=/; [ "$1" = grpc ] && path=/grpc.health.v1.Health/Check
  DUR=2 load "$1" "http://127.0.0.1:$2$path" > "$WORK/warm.txt" || { cat "$WORK/warm.txt" >&2; exit 1; }
  grep -q "status codes: [1-9][0-9]* 2xx" "$WORK/warm.txt" || { echo "no 2xx from $2" >&2; cat "$WORK/warm.txt" >&2; exit 1; }
done
for r in $(seq "$ROUNDS"); do
  one_round grpc "$r" direct $GRPC_B
  one_round grpc "$r" nginx $NGINX_GRPC $NGINX_PID
  one_round grpc "$r" haproxy $HAPROXY_GRPC $HAPROXY_PID
  one_round grpc "$r" switchyard $SY_GRPC $SY_GRPC_PID
  one_round h2 "$r" nginx $NGINX_H2 $NGINX_PID
  one_round h2 "$r" haproxy $HAPROXY_H2 $HAPROXY_PID
  one_round h2 "$r" switchyard $SY_H2 $SY_H2_PID
  if [ -n "${SY_BASELINE:-}" ]; then
    one_round grpc "$r" baseline $BASE_GRPC $BASE_GRPC_PID
    one_round h2 "$r" baseline $BASE_H2 $BASE_H2_PID
  fi
done
for n in $TARGETS; do summarise grpc $n; done
for n in ${TARGETS#direct }; do summarise h2 $n; done

{
  echo "gRPC unary (grpc.health.v1 Check), h2load -c$CLIENTS -m$STREAMS -D$DUR:"
  echo
  echo "| target | requests/s | mean latency ms | proxy CPU µs/request | switchyard ÷ target (req/s) |"
  echo "|---|---:|---:|---:|---:|"
  for n in $TARGETS; do
    ratio=$(python3 -c "print(f'{${RPS[grpc.switchyard]}/${RPS[grpc.$n]}:.2f}')")
    cpu=${CPU[grpc.$n]}; [ "$n" = direct ] && cpu="–"
    echo "| $n | ${RPS[grpc.$n]} | ${LAT[grpc.$n]} | $cpu | $ratio |"
  done
  echo
  echo "HTTP/2 clients, HTTP/1.1 backend, h2load -c$CLIENTS -m$STREAMS -D$DUR:"
  echo
  echo "| proxy | requests/s | mean latency ms | proxy CPU µs/request | switchyard ÷ proxy (req/s) |"
  echo "|---|---:|---:|---:|---:|"
  for n in ${TARGETS#direct }; do
    ratio=$(python3 -c "print(f'{${RPS[h2.switchyard]}/${RPS[h2.$n]}:.2f}')")
    echo "| $n | ${RPS[h2.$n]} | ${LAT[h2.$n]} | ${CPU[h2.$n]} | $ratio |"
  done
  echo
  echo "median of $ROUNDS interleaved rounds; proxies pinned to CPU 0 with one worker, h2load and the backends to CPU 1; $(nproc) cores; $(date -u +%F)"
} | tee "$OUT/table.md"
