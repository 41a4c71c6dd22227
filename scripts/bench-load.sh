#!/usr/bin/env bash
# End-to-end load on loopback: `sessiongate serve` beside nginx, same machine,
# same run, wrk with fixed connections and duration. Prints one table.
#
#   scripts/bench-load.sh [DURATION_SECONDS] [CONNECTIONS]     (default 10 s, 32 connections)
#   SESSIONGATE_BENCH_PLUGIN=FILE / SESSIONGATE_BENCH_COMPONENT=FILE: another
#   filter build, or a Spin component under `serve --component`.
#
# Besides requests/s and p99, each row shows the CPU the server itself spent
# per request (user + system, from /proc): wrk runs on the same cores, so
# this is what separates the servers' costs from the load generator's.
#
# Needs (and installs nothing itself): wrk and nginx (Debian: apt-get install
# wrk nginx), and a release build of sessiongate (built here if missing).
#   (a) the 429 flood: nginx `return 429` with a small JSON body, vs the gate
#       over its limit;
#   (b) the admitted path: nginx serving one static JSON page of 1,000
#       sessions, vs the gate admitting everything from its stub backend.
set -euo pipefail
duration="${1:-10}"
connections="${2:-32}"
root="$(cd "$(dirname "$0")/.." && pwd)"

missing=""
for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
  echo "bench-load.sh: needs:$missing (Debian: apt-get install$missing)" >&2
  exit 2
fi

target_dir="${CARGO_TARGET_DIR:-$root/target}"
gate="$target_dir/release/sessiongate"
if [ ! -x "$gate" ]; then
  echo "bench-load.sh: building sessiongate (release)" >&2
  (cd "$root" && cargo build --quiet --release -p sessiongate)
fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 never answered" >&2; exit 1; }

token="$("$gate" token create --store "$work/tokens.json" --name bench --customer acme --all-sites 2>/dev/null)"

# The gate twice: over its limit (1 request a day), and admitting everything.
gate_port_limited="$(free_port)"; gate_port_open="$(free_port)"
printf '[limit]\nrequests = 1\nwindow_seconds = 86400\n[guard]\nfailures = 0\n' > "$work/limited.toml"
printf '[limit]\nrequests = 100000\nwindow_seconds = 1\n[guard]\nfailures = 0\n' > "$work/open.toml"
# SESSIONGATE_BENCH_PLUGIN=FILE: measure another filter build (scripts/build-plugin.sh --fast).
# SESSIONGATE_BENCH_COMPONENT=FILE: measure a component (`serve --component FILE`) instead.
plugin_args=()
if [ -n "${SESSIONGATE_BENCH_PLUGIN:-}" ]; then plugin_args=(--plugin "$SESSIONGATE_BENCH_PLUGIN"); fi
if [ -n "${SESSIONGATE_BENCH_COMPONENT:-}" ]; then plugin_args=(--component "$SESSIONGATE_BENCH_COMPONENT"); fi
"$gate" serve "${plugin_args[@]}" --config "$work/limited.toml" --store "$work/tokens.json" --listen "127.0.0.1:$gate_port_limited" --admin off 2>/dev/null & pids+=($!)
gate_limited=$!
"$gate" serve "${plugin_args[@]}" --config "$work/open.toml" --store "$work/tokens.json" --listen "127.0.0.1:$gate_port_open" --admin off 2>/dev/null & pids+=($!)
gate_open=$!
wait_port "$gate_port_limited"; wait_port "$gate_port_open"
path="/v1/external/sessions/acme/site-1"
curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$gate_port_limited$path" -o /dev/null

# nginx: the same answers, as plain as they come.
nginx_port="$(free_port)"
mkdir -p "$work/nginx/logs" "$work/www"
curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$gate_port_open$path" -o "$work/www/page.json"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port;
    location = /flood { default_type application/json; return 429 '{"error":{"code":"rate_limited","message":"The global limit of this API is reached."}}'; }
    location = /page { default_type application/json; alias $work/www/page.json; }
  }
}
NGINX
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' & pids+=($!)
nginx_master=$!
wait_port "$nginx_port"
mapfile -t nginx_workers < <(pgrep -P "$nginx_master")

# CPU the server spent (user + system, all its threads or worker processes),
# in clock ticks: read from /proc around each wrk run.
cpu_ticks() {
  local total=0 p u st
  for p in "$@"; do
    read -r u st < <(awk '{print $14, $15}' "/proc/$p/stat")
    total=$((total + u + st))
  done
  echo "$total"
}
ticks_per_second="$(getconf CLK_TCK)"

run() { # name url header-or-empty server-pid...
  local name="$1" url="$2" header="$3" out before after
  shift 3
  before="$(cpu_ticks "$@")"
  if [ -n "$header" ]; then
    out="$(wrk -t2 -c"$connections" -d"${duration}s" --latency -H "$header" "$url")"
  else
    out="$(wrk -t2 -c"$connections" -d"${duration}s" --latency "$url")"
  fi
  after="$(cpu_ticks "$@")"
  local rps p99 requests cpu
  rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
  p99="$(echo "$out" | awk '$1 == "99%" {print $2}')"
  requests="$(echo "$out" | awk '/requests in/ {print $1}')"
  cpu="$(python3 -c "print(f'{($after - $before) / $ticks_per_second / max($requests, 1) * 1e6:.1f}')")"
  echo "$name $rps $p99 $cpu"
}

auth="Authorization: Bearer $token"
flood_nginx="$(run nginx-429 "http://127.0.0.1:$nginx_port/flood" "" "${nginx_workers[@]}")"
flood_gate="$(run gate-429 "http://127.0.0.1:$gate_port_limited$path" "$auth" "$gate_limited")"
page_nginx="$(run nginx-page "http://127.0.0.1:$nginx_port/page" "" "${nginx_workers[@]}")"
page_gate="$(run gate-page "http://127.0.0.1:$gate_port_open$path" "$auth" "$gate_open")"

echo
echo "wrk -t2 -c$connections -d${duration}s, $(nproc) cores, $(date -u +%Y-%m-%d)"
printf '%-28s %14s %10s %8s %14s\n' "path" "requests/s" "p99" "ratio" "server CPU/req"
row() { # label nginx-line gate-line
  local n g
  n="$(echo "$2" | awk '{print $2}')"; g="$(echo "$3" | awk '{print $2}')"
  printf '%-28s %14s %10s %8s %11s us\n' "$1 nginx" "$n" "$(echo "$2" | awk '{print $3}')" "" "$(echo "$2" | awk '{print $4}')"
  printf '%-28s %14s %10s %8s %11s us\n' "$1 sessiongate" "$g" "$(echo "$3" | awk '{print $3}')" "$(python3 -c "print(f'{$g/$n:.2f}x')")" "$(echo "$3" | awk '{print $4}')"
}
row "(a) 429 flood" "$flood_nginx" "$flood_gate"
row "(b) admitted page" "$page_nginx" "$page_gate"
