#!/usr/bin/env bash
# Instructions `sessiongate serve` executes per request, counted by callgrind
# (all threads, host and the filter's compiled wasm alike), under a steady
# wrk load. A count, not a time: the same binary gives the same figure within
# ~1 % on a loaded or a noisy machine, where req/s moves by 10-20 % between
# runs, so two builds can be compared one after the other.
#
#   scripts/serve-instructions.sh [BINARY] [flood|page] [SECONDS]
#     flood: the 429 flood (limit 1 a day), as scripts/bench-load.sh (a)
#     page:  the admitted stub page (limit 100,000 a second), as (b)
#     forward: the same page from an nginx upstream, forwarded, as (c)
#   SESSIONGATE_CALLGRIND_OUT=FILE keeps callgrind's profile there, for
#   callgrind_annotate (which functions the instructions are in).
#
# Needs (installs nothing itself): valgrind, wrk, curl, and nginx for forward
# (Debian: apt-get install valgrind wrk curl nginx). BINARY defaults to the
# release build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-${CARGO_TARGET_DIR:-$root/target}/release/sessiongate}"
kind="${2:-flood}"
seconds="${3:-8}"
for tool in valgrind callgrind_control wrk curl; do
  command -v "$tool" >/dev/null || { echo "serve-instructions.sh: needs $tool" >&2; exit 2; }
done
[ -x "$bin" ] || { echo "serve-instructions.sh: no binary at $bin (cargo build --release -p sessiongate)" >&2; exit 2; }

work="$(mktemp -d)"
chmod o+x "$work"   # for nginx's workers (scripts/lib/nginx-page.sh)
vg=""
upstream=""
cleanup() {
  [ -n "$vg" ] && kill "$vg" 2>/dev/null && wait "$vg" 2>/dev/null
  [ -n "$upstream" ] && kill "$upstream" 2>/dev/null && wait "$upstream" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=lib/nginx-page.sh
. "$root/scripts/lib/nginx-page.sh"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 120); do curl -s -m 5 -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 1; done; echo "port $1 never answered" >&2; exit 1; }
token="$("$bin" token create --store "$work/tokens.json" --name bench --customer acme --all-sites 2>/dev/null)"
open='[limit]\nrequests = 100000\nwindow_seconds = 1\n[guard]\nfailures = 0\n'
path="/v1/external/sessions/acme/site-1"
case "$kind" in
  flood) printf '[limit]\nrequests = 1\nwindow_seconds = 86400\n[guard]\nfailures = 0\n' > "$work/config.toml" ;;
  page) printf "$open" > "$work/config.toml" ;;
  forward)
    command -v nginx >/dev/null || { echo "serve-instructions.sh: forward needs nginx" >&2; exit 2; }
    # The upstream serves the stub's own page as a file, as bench-load's (c).
    printf "$open" > "$work/config.toml"
    stub_port="$(free_port)"
    "$bin" serve --config "$work/config.toml" --store "$work/tokens.json" --listen "127.0.0.1:$stub_port" --admin off >/dev/null 2>&1 &
    upstream=$!
    wait_port "$stub_port"
    mkdir -p "$work/nginx/www"
    curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$stub_port$path" -o "$work/nginx/www/page.json"
    kill "$upstream"; wait "$upstream" 2>/dev/null || true
    nginx_port="$(free_port)"
    nginx_page_conf "$work/nginx" "$nginx_port" 1
    nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
    upstream=$!
    wait_port "$nginx_port"
    nginx_page_check "$nginx_port" "$work/nginx/www/page.json"
    printf 'backend = "http://127.0.0.1:%s"\n' "$nginx_port" > "$work/config.toml"
    printf "$open" >> "$work/config.toml"
    ;;
  *) echo "serve-instructions.sh: flood, page or forward, not $kind" >&2; exit 2 ;;
esac
port="$(free_port)"

# Start-up is not counted: instrumentation goes on once the load is steady.
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.out" \
  "$bin" serve --config "$work/config.toml" --store "$work/tokens.json" \
  --listen "127.0.0.1:$port" --admin off >/dev/null 2>&1 &
vg=$!
url="http://127.0.0.1:$port$path"
wait_port "$port"
for _ in 1 2 3; do curl -s -o /dev/null -H "Authorization: Bearer $token" "$url"; done
# What is counted must be what the kind says: the flood's 429, the page's 200.
want=200; [ "$kind" = flood ] && want=429
got="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$url")"
[ "$got" = "$want" ] || { echo "serve-instructions.sh: $kind answered $got, not $want" >&2; exit 1; }
wrk -t1 -c4 -d3s -H "Authorization: Bearer $token" "$url" >/dev/null
callgrind_control -i on "$vg" >/dev/null
callgrind_control -z "$vg" >/dev/null
requests="$(wrk -t1 -c4 -d"${seconds}s" -H "Authorization: Bearer $token" "$url" | awk '/requests in/ {print $1}')"
callgrind_control -d "$vg" >/dev/null
instructions="$(cat "$work"/cg.out* | awk '/^summary:/ {s += $2} END {print s}')"
[ -n "${SESSIONGATE_CALLGRIND_OUT:-}" ] && cat "$work"/cg.out* > "$SESSIONGATE_CALLGRIND_OUT"
echo "$kind $bin: $requests requests, $instructions instructions, $((instructions / requests)) per request"
