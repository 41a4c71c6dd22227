#!/usr/bin/env bash
# End-to-end load on loopback: `sessiongate serve` beside nginx and beside a
# Kong-like gate built from OpenResty's parts, same machine, same run, wrk
# with fixed connections and duration, ROUNDS rounds with the servers
# alternating inside each. Prints one table of medians.
#
#   scripts/bench-load.sh [DURATION_SECONDS] [CONNECTIONS] [ROUNDS]   (default 10 s, 32, 3)
#   SESSIONGATE_BENCH_PLUGIN=FILE / SESSIONGATE_BENCH_COMPONENT=FILE: another
#   filter build, or a Spin component under `serve --component`.
#   SESSIONGATE_BENCH_BINARY=FILE: another sessiongate binary.
#
# Besides requests/s and p99, each row shows the CPU the server itself spent
# per request (user + system, from /proc): wrk runs on the same cores, so
# this is what separates the servers' costs from the load generator's.
#
# Needs (and installs nothing itself): wrk, nginx and its Lua module (Debian:
# apt-get install wrk nginx libnginx-mod-http-lua), and a release build of
# sessiongate (built here if missing).
#
# The Kong-like gate is what a platform team on Kong or OpenResty runs for
# this job: a content_by_lua_block that matches the route with ngx.re.match
# (PCRE JIT), parses Bearer, hashes the secret with SHA-256 through LuaJIT's
# FFI into OpenSSL's libcrypto, looks the digest up in a Lua table, checks the
# customer, counts the request in a lua_shared_dict window counter (Kong's
# "local" policy), and answers the JSON error or the page held in memory;
# two worker processes, as nginx.
#   (a) the 429 flood: nginx `return 429` with a small JSON body, vs the gate
#       over its limit;
#   (b) the admitted path: nginx serving one static JSON page of 1,000
#       sessions, vs the gate admitting everything from its stub backend;
#   (c) the production path, forwarding: the gate with that nginx as its
#       upstream, vs nginx proxy_pass (keep-alive upstream) to the same, as
#       configured out of the box and with proxy buffers that hold the page
#       (nginx-tuned). CPU per request is the front server's (the upstream
#       is the same). Every server is checked to answer the page itself.
set -euo pipefail
duration="${1:-10}"
connections="${2:-32}"
rounds="${3:-3}"
root="$(cd "$(dirname "$0")/.." && pwd)"

missing=""
for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null || missing="$missing $tool"
done
lua_module=/usr/lib/nginx/modules/ngx_http_lua_module.so
[ -f "$lua_module" ] || missing="$missing libnginx-mod-http-lua"
if [ -n "$missing" ]; then
  echo "bench-load.sh: needs:$missing (Debian: apt-get install$missing)" >&2
  exit 2
fi

target_dir="${CARGO_TARGET_DIR:-$root/target}"
# SESSIONGATE_BENCH_BINARY=FILE: another build of sessiongate (the tests run
# the script on their debug build, to hold its checks; figures come from a
# release build).
gate="${SESSIONGATE_BENCH_BINARY:-$target_dir/release/sessiongate}"
if [ ! -x "$gate" ]; then
  echo "bench-load.sh: building sessiongate (release)" >&2
  (cd "$root" && cargo build --quiet --release -p sessiongate)
fi

work="$(mktemp -d)"
chmod o+x "$work"   # for nginx's workers (scripts/lib/nginx-page.sh)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=lib/nginx-page.sh
. "$root/scripts/lib/nginx-page.sh"
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
mkdir -p "$work/nginx/www"
curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$gate_port_open$path" -o "$work/nginx/www/page.json"
nginx_page_conf "$work/nginx" "$nginx_port" 2
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' & pids+=($!)
nginx_master=$!
wait_port "$nginx_port"
nginx_page_check "$nginx_port" "$work/nginx/www/page.json"
mapfile -t nginx_workers < <(pgrep -P "$nginx_master")

# (c) forwarding, the production path: serve with the nginx above as its
# upstream, beside nginx proxy_pass (keep-alive upstream) to the same.
forward_port="$(free_port)"; proxy_port="$(free_port)"
printf 'backend = "http://127.0.0.1:%s"\n[limit]\nrequests = 100000\nwindow_seconds = 1\n[guard]\nfailures = 0\n' "$nginx_port" > "$work/forward.toml"
"$gate" serve --config "$work/forward.toml" --store "$work/tokens.json" --listen "127.0.0.1:$forward_port" --admin off 2>/dev/null & pids+=($!)
gate_forward=$!
# Two nginx fronts: as configured out of the box (proxy_buffers 8 4k, so the
# 161 KB page moves in pieces: strace shows ~12 readv and ~22 writev a
# request), and with buffers that hold it (16 16k), as a platform team that
# forwards large pages would tune it.
proxy_tuned_port="$(free_port)"
proxy_front() { # name port extra-directives
  mkdir -p "$work/$1/logs"
  cat > "$work/$1/nginx.conf" <<PROXY
worker_processes 2;
pid $work/$1/nginx.pid;
error_log $work/$1/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream page { server 127.0.0.1:$nginx_port; keepalive 64; }
  server {
    listen 127.0.0.1:$2;
    location / { proxy_pass http://page; proxy_http_version 1.1; proxy_set_header Connection ""; $3 }
  }
}
PROXY
  chmod o+x "$work/$1"
  nginx -p "$work/$1" -c "$work/$1/nginx.conf" -g 'daemon off;' & pids+=($!)
}
proxy_front proxy "$proxy_port" ""
proxy_master=$!
proxy_front proxy-tuned "$proxy_tuned_port" "proxy_buffers 16 16k; proxy_buffer_size 16k; proxy_busy_buffers_size 32k;"
proxy_tuned_master=$!
wait_port "$proxy_port"; wait_port "$proxy_tuned_port"; wait_port "$forward_port"
# Every front server must forward the page itself, not an upstream error.
for front in "$proxy_port" "$proxy_tuned_port" "$forward_port"; do
  page_check "$work/nginx/www/page.json" "http://127.0.0.1:$front$path" -H "Authorization: Bearer $token"
done
mapfile -t proxy_workers < <(pgrep -P "$proxy_master")
mapfile -t proxy_tuned_workers < <(pgrep -P "$proxy_tuned_master")

# The Kong-like gate: OpenResty's parts on Debian's nginx.
kong_limited_port="$(free_port)"; kong_open_port="$(free_port)"
mkdir -p "$work/kong/logs"
token_digest="$(printf %s "$token" | sha256sum | cut -d' ' -f1)"
kong_server() { # port requests window
  cat <<KONG
  server {
    listen 127.0.0.1:$1;
    location / {
      content_by_lua_block {
        local m = ngx.re.match(ngx.var.uri, [[^/v1/external/sessions/([A-Za-z0-9_-]{1,64})/([A-Za-z0-9_-]{1,64})\$]], "jo")
        local json = "application/json"
        if not m then
          ngx.status = 404; ngx.header.content_type = json
          return ngx.print('{"error":{"code":"not_found","message":"No such route."}}')
        end
        local auth = ngx.var.http_authorization
        local secret = auth and auth:match("^Bearer (fus_[A-Za-z0-9]+)\$")
        local record = secret and credentials[sha256(secret)]
        if not record then
          ngx.status = 401; ngx.header.content_type = json
          return ngx.print('{"error":{"code":"invalid_credentials","message":"The credential is malformed, unknown or revoked."}}')
        end
        if record.customer ~= m[1] then
          ngx.status = 403; ngx.header.content_type = json
          return ngx.print('{"error":{"code":"forbidden","message":"This credential does not grant access to this customer."}}')
        end
        local now = ngx.now()
        local window = math.floor(now / $3)
        local count = ngx.shared.limits:incr("w" .. window, 1, 0, $3)
        local reset = math.ceil((window + 1) * $3 - now)
        ngx.header["RateLimit-Policy"] = "$2;w=$3"
        ngx.header["RateLimit"] = "limit=$2, remaining=" .. math.max($2 - count, 0) .. ", reset=" .. reset
        ngx.header.content_type = json
        if count > $2 then
          ngx.status = 429; ngx.header["Retry-After"] = reset
          return ngx.print('{"error":{"code":"rate_limited","message":"The global limit of this API is reached."}}')
        end
        ngx.print(page)
      }
    }
  }
KONG
}
cat > "$work/kong/nginx.conf" <<KONG
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module $lua_module;
worker_processes 2;
pid $work/kong/nginx.pid;
error_log $work/kong/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  lua_shared_dict limits 1m;
  init_by_lua_block {
    local ffi = require "ffi"
    ffi.cdef[[ unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md); ]]
    local crypto = ffi.load("libcrypto.so.3")
    local digest = ffi.new("unsigned char[32]")
    function sha256(s)
      crypto.SHA256(s, #s, digest)
      return ffi.string(digest, 32)
    end
    local hex = "$token_digest"
    credentials = { [(hex:gsub("..", function(b) return string.char(tonumber(b, 16)) end))] = { customer = "acme" } }
    page = io.open("$work/nginx/www/page.json"):read("*a")
  }
$(kong_server "$kong_limited_port" 1 86400)
$(kong_server "$kong_open_port" 100000 1)
}
KONG
nginx -p "$work/kong" -c "$work/kong/nginx.conf" -g 'daemon off;' & pids+=($!)
kong_master=$!
wait_port "$kong_open_port"
mapfile -t kong_workers < <(pgrep -P "$kong_master")
curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$kong_limited_port$path" -o /dev/null
kong_check="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$kong_open_port$path")"
[ "$kong_check" = 200 ] || { echo "the Kong-like gate answered $kong_check: $(cat "$work/kong/logs/error.log")" >&2; exit 1; }

# Each server answers what its row says it measures: a flood of 429s (the
# day's one request spent above), and the page with a 200.
expect() { # status url
  local got
  got="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$2")"
  [ "$got" = "$1" ] || { echo "bench-load.sh: $2 answered $got, not $1" >&2; exit 1; }
}
expect 429 "http://127.0.0.1:$nginx_port/flood"
expect 429 "http://127.0.0.1:$kong_limited_port$path"
expect 429 "http://127.0.0.1:$gate_port_limited$path"
expect 200 "http://127.0.0.1:$gate_port_open$path"

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
flood=(); page=(); forward=()
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  flood+=("$(run nginx "http://127.0.0.1:$nginx_port/flood" "" "${nginx_workers[@]}")")
  flood+=("$(run kong "http://127.0.0.1:$kong_limited_port$path" "$auth" "${kong_workers[@]}")")
  flood+=("$(run sessiongate "http://127.0.0.1:$gate_port_limited$path" "$auth" "$gate_limited")")
  page+=("$(run nginx "http://127.0.0.1:$nginx_port/page" "" "${nginx_workers[@]}")")
  page+=("$(run kong "http://127.0.0.1:$kong_open_port$path" "$auth" "${kong_workers[@]}")")
  page+=("$(run sessiongate "http://127.0.0.1:$gate_port_open$path" "$auth" "$gate_open")")
  forward+=("$(run nginx "http://127.0.0.1:$proxy_port$path" "$auth" "${proxy_workers[@]}")")
  forward+=("$(run nginx-tuned "http://127.0.0.1:$proxy_tuned_port$path" "$auth" "${proxy_tuned_workers[@]}")")
  forward+=("$(run sessiongate "http://127.0.0.1:$forward_port$path" "$auth" "$gate_forward")")
done

echo
echo "wrk -t2 -c$connections -d${duration}s, $rounds alternating rounds (medians), $(nproc) cores, $(date -u +%Y-%m-%d)"
# Lines "name rps p99 cpu", every round: medians per server, ratios of
# sessiongate to each other server.
printf '%s\n' "${flood[@]}" > "$work/flood.txt"
printf '%s\n' "${page[@]}" > "$work/page.txt"
printf '%s\n' "${forward[@]}" > "$work/forward.txt"
python3 - "$work/flood.txt" "$work/page.txt" "$work/forward.txt" <<'PY'
import statistics, sys
def ms(p99):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if p99.endswith(unit):
            return float(p99[: -len(unit)]) * f
    return float(p99)
print(f"{'path':<24}{'server':<14}{'requests/s':>12}{'p99':>10}{'CPU/req':>10}{'sessiongate is':>16}")
paths = (("(a) 429 flood", sys.argv[1]), ("(b) admitted page", sys.argv[2]),
         ("(c) forwarded page", sys.argv[3]))
for label, path in paths:
    rows = {}
    for line in open(path):
        name, rps, p99, cpu = line.split()
        rows.setdefault(name, []).append((float(rps), ms(p99), float(cpu)))
    med = {n: tuple(statistics.median(v[i] for v in r) for i in range(3)) for n, r in rows.items()}
    gate = med["sessiongate"][0]
    for name in ("nginx", "nginx-tuned", "kong", "sessiongate"):
        if name not in med:
            continue
        rps, p99, cpu = med[name]
        ratio = "" if name == "sessiongate" else f"{gate / rps:.2f}x"
        print(f"{label:<24}{name:<14}{rps:>12.0f}{p99:>8.2f}ms{cpu:>8.1f}us{ratio:>16}")
PY
