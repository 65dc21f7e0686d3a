#!/usr/bin/env bash
# Proxy throughput and latency: direct, nginx, haproxy and switchyard in front of
# one fixed backend, each proxy with one worker thread, keep-alive, loopback,
# measured by wrk in the same run. Proxies are pinned to CPU 0; wrk and the
# backend to CPU 1, so each proxy gets the same dedicated core.
#
# Usage: bench/proxy/run.sh [duration_seconds] [connections] [rounds]
#        SY_BASELINE=path/to/older/switchyard bench/proxy/run.sh ...   (also
#        measures that binary, as "baseline", in the same interleaved rounds)
#        BODY=65536 bench/proxy/run.sh ...   (the backend answers BODY bytes)
#        POST=1024 bench/proxy/run.sh ...    (POSTs with 1024-byte bodies)
#        STICKY=header|client_ip|none bench/proxy/run.sh ...   (switchyard's
#        stickiness: `hash` on an `X-User` header, 1,000 users round-robin,
#        the default; `hash` on the client address; or `none`)
set -euo pipefail
DUR=${1:-10}
CONNS=${2:-32}
ROUNDS=${3:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/bench/out/proxy}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.3; rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! need nginx || ! need haproxy || ! need wrk; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

if [ -z "${SY:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin switchyard -q)
  SY="$ROOT/target/release/switchyard"
fi

BACKEND=19100; NGINX_P=19101; HAPROXY_P=19102; SY_P=19103; SY_ADMIN=19104
BASE_P=19105; BASE_ADMIN=19106
BODY=${BODY:-}
# POST=N: every request is a POST with an N-byte body (Content-Length).
POST=${POST:-}
STICKY=${STICKY:-header}
case "$STICKY" in
  header) STICKY_CONF='sticky = "hash"
sticky_key = "header:x-user"' ;;
  client_ip) STICKY_CONF='sticky = "hash"
sticky_key = "client_ip"' ;;
  none) STICKY_CONF='sticky = "none"' ;;
  *) echo "STICKY must be header, client_ip or none, not $STICKY" >&2; exit 2 ;;
esac
WRK_SCRIPT=()
if [ "$STICKY" = header ] && [ -z "$POST" ]; then
  # Every target gets the same requests: 1,000 users' heads made once,
  # sent round-robin (no per-request formatting in wrk).
  cat > "$WORK/users.lua" <<'LUA'
local reqs, i = {}, 0
init = function(args)
  for u = 1, 1000 do
    reqs[u] = wrk.format(nil, nil, { ["X-User"] = "user-" .. u })
  end
end
request = function()
  i = i % 1000 + 1
  return reqs[i]
end
LUA
  WRK_SCRIPT=(-s "$WORK/users.lua")
fi
if [ -n "$POST" ]; then
  cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = string.rep("p", $POST)
wrk.headers["X-User"] = "user-1"
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
  WRK_SCRIPT=(-s "$WORK/post.lua")
fi

# The fixed backend: nginx answering a small body (or BODY random bytes),
# pinned to CPU 1.
BACKEND_ANSWER='return 200 "hello from the backend\n";'
if [ -n "$BODY" ]; then
  chmod 755 "$WORK"; mkdir -p "$WORK/www"
  head -c "$BODY" /dev/urandom > "$WORK/www/body"; chmod 644 "$WORK/www/body"
  BACKEND_ANSWER="root $WORK/www; rewrite ^ /body break;"
fi
mkdir -p "$WORK/backend" "$WORK/nginx"
cat > "$WORK/backend/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/backend/pid; error_log $WORK/backend/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; location / { $BACKEND_ANSWER } } }
CONF
taskset -c 1 "$NGINX" -c "$WORK/backend/nginx.conf" -p "$WORK/backend" &

cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx/pid; error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$BACKEND; keepalive 256; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NGINX_P;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
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
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY_P
  default_backend be
backend be
  server s1 127.0.0.1:$BACKEND
CONF
taskset -c 0 "$HAPROXY" -f "$WORK/haproxy.cfg" &
HAPROXY_PID=$!

# switchyard: both colours on the same backend, green at 50% so every
# request goes through the sticky hash (unless STICKY=none) and the weight
# comparison.
cat > "$WORK/switchyard.toml" <<CONF
[proxy]
listen = "127.0.0.1:$SY_P"
workers = 1
$STICKY_CONF
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
taskset -c 0 "$SY" run -c "$WORK/switchyard.toml" > "$WORK/sy.out" 2> "$WORK/sy.err" &
SY_PID=$!
TARGETS="direct nginx haproxy switchyard"
ADMINS=$SY_ADMIN
if [ -n "${SY_BASELINE:-}" ]; then
  sed -e "s/:$SY_P\"/:$BASE_P\"/" -e "s/:$SY_ADMIN\"/:$BASE_ADMIN\"/" -e "s#state.json#base-state.json#" \
    "$WORK/switchyard.toml" > "$WORK/baseline.toml"
  taskset -c 0 "$SY_BASELINE" run -c "$WORK/baseline.toml" > "$WORK/base.out" 2> "$WORK/base.err" &
  BASE_PID=$!
  TARGETS="$TARGETS baseline"
  ADMINS="$ADMINS $BASE_ADMIN"
fi
for admin in $ADMINS; do
  for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null 2>&1 && break; sleep 0.1
  done
  curl -sf -X PUT -H "Authorization: Bearer bench" -d '{"green": 50}' "http://127.0.0.1:$admin/api/v1/weights" >/dev/null
done
sleep 0.5

declare -A RPS P50 P99 CPU
# CPU time (clock ticks) used so far by a process and its children.
ticks() {
  local total=0 p
  for p in "$@" $(for q in "$@"; do pgrep -P "$q" || true; done); do
    [ -r "/proc/$p/stat" ] || continue
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "$total"
}
one_round() { # round name port pids...
  local r=$1 name=$2 port=$3; shift 3
  local t0 t1
  t0=$(ticks "$@")
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "${WRK_SCRIPT[@]}" "http://127.0.0.1:$port/" > "$OUT/$name.$r.txt"
  t1=$(ticks "$@")
  echo "proxy_cpu_ticks: $(( t1 - t0 )) $(getconf CLK_TCK)" >> "$OUT/$name.$r.txt"
}
summarise() { # name
  local name=$1 line
  line=$(for r in $(seq "$ROUNDS"); do
      python3 - "$OUT/$name.$r.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v, u): return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", t); p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
n = int(re.search(r"(\d+) requests in", t).group(1))
ticks, hz = map(int, re.search(r"proxy_cpu_ticks: (-?\d+) (\d+)", t).groups())
cpu_us = (ticks / hz) * 1e6 / n if ticks > 0 else 0.0
print(f"{rps:.0f} {ms(*p50.groups()):.3f} {ms(*p99.groups()):.3f} {errs.group(1) if errs else 0} {cpu_us:.1f}")
PY
    done | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p")
  read -r RPS[$name] P50[$name] P99[$name] errs CPU[$name] <<< "$line"
  if [ "$errs" != 0 ]; then echo "$name answered $errs non-2xx responses" >&2; exit 1; fi
}

for port in $BACKEND $NGINX_P $HAPROXY_P $SY_P ${SY_BASELINE:+$BASE_P}; do
  curl -sf "http://127.0.0.1:$port/" >/dev/null || { echo "nothing answers on $port" >&2; exit 1; }
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s "${WRK_SCRIPT[@]}" "http://127.0.0.1:$port/" >/dev/null # warm-up
done
# Rounds interleave the targets, so drift in the machine's load (a shared
# VM) hits all of them alike; each target's median round is reported.
for r in $(seq "$ROUNDS"); do
  one_round "$r" direct $BACKEND
  one_round "$r" nginx $NGINX_P $NGINX_PID
  one_round "$r" haproxy $HAPROXY_P $HAPROXY_PID
  one_round "$r" switchyard $SY_P $SY_PID
  [ -n "${SY_BASELINE:-}" ] && one_round "$r" baseline $BASE_P $BASE_PID
done
for n in $TARGETS; do summarise $n; done

{
  echo "| target | requests/s | p50 ms | p99 ms | proxy CPU µs/request | switchyard ÷ target (req/s) |"
  echo "|---|---:|---:|---:|---:|---:|"
  for n in $TARGETS; do
    ratio=$(python3 -c "print(f'{${RPS[switchyard]}/${RPS[$n]}:.2f}')")
    cpu=${CPU[$n]}; [ "$n" = direct ] && cpu="–"
    echo "| $n | ${RPS[$n]} | ${P50[$n]} | ${P99[$n]} | $cpu | $ratio |"
  done
  echo
  echo "wrk -t1 -c$CONNS -d${DUR}s${BODY:+, $BODY-byte responses}${POST:+, POST with $POST-byte bodies}, switchyard sticky=$STICKY at green 50%, median of $ROUNDS interleaved rounds; proxies pinned to CPU 0, wrk and the backend to CPU 1; $(nproc) cores; $(date -u +%F)"
} | tee "$OUT/table.md"
