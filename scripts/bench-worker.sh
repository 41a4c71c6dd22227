#!/usr/bin/env bash
# The Worker on workerd: Durable Object calls per answer, and the admitted
# latency, one run, same machine:
#
#   scripts/bench-worker.sh [SECONDS] [CONNECTIONS]      (default 10 s, 8)
#   BASELINE_CHECKOUT=DIR scripts/bench-worker.sh         the same for the Worker
#                                                         of another checkout, side by side
#
# For each build, with credentials in the binding and in the object's store:
# - object calls per admitted request (50 in a row, a limit of 100,000/60 s),
#   per 429 while the window is full (50 after a limit of 5 is spent), per
#   401 for a guessed credential (until the guard holds the client), and per
#   guess once it does (40);
#   counted by the object itself (`/__sessiongate/stats`, less the stats call);
# - the admitted latency: wrk for SECONDS with CONNECTIONS, p50 / p99, and
#   admitted requests a second (binding credentials).
# workerd runs the object in the same process: an object call here costs a
# local hop, where at the edge it costs the round trip to the object's
# location; the call counts are what carries over.
set -euo pipefail
duration="${1:-10}"
connections="${2:-8}"
root="$(cd "$(dirname "$0")/.." && pwd)"
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-worker.sh: needs $tool (Debian: wrk, curl)" >&2; exit 2; }
done
target_dir="${CARGO_TARGET_DIR:-$root/target}"
gate="$target_dir/release/sessiongate"
[ -x "$gate" ] || gate="$target_dir/debug/sessiongate"
[ -x "$gate" ] || { (cd "$root" && cargo build --quiet --release -p sessiongate); gate="$target_dir/release/sessiongate"; }

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
admin="$(head -c 24 /dev/urandom | base64)"
admin_hash="$(printf %s "$admin" | sha256sum | cut -d' ' -f1)"
token="$("$gate" token create --store "$work/tokens.json" --name bench --customer acme --all-sites 2>/dev/null)"
path="/v1/external/sessions/acme/site-1"

builds=("today:$root")
[ -n "${BASELINE_CHECKOUT:-}" ] && builds+=("baseline:$BASELINE_CHECKOUT")

start_worker() { # checkout target-dir requests [--credentials-in-store]; sets $port
  port="$(free_port)"
  local state="$work/state-$port"
  CARGO_TARGET_DIR="$2" SESSIONGATE_BIN="$gate" "$1/edge-worker/run-local.sh" \
    --store "$work/tokens.json" --port "$port" --requests "$3" --window-seconds 60 \
    --admin-hash "$admin_hash" --state-dir "$state" ${4:-} > "$work/worker-$port.log" 2>&1 &
  pids+=($!)
  # The first start may build the Worker: minutes, not a fixed wait.
  for _ in $(seq 6000); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/worker-$port.log" >&2; exit 1; }
    sleep 0.1
  done
  if [ -n "${4:-}" ]; then
    SESSIONGATE_ADMIN_SECRET="$admin" "$gate" worker-sync --store "$work/tokens.json" \
      --url "http://127.0.0.1:$port" > /dev/null
  fi
}
calls() { curl -s -H "Authorization: Bearer $admin" "http://127.0.0.1:$1/__sessiongate/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["calls"])'; }
# Cloudflare sets CF-Connecting-IP on every request, which the guard counts
# by; workerd sets none, so the bench sends one, as Cloudflare would.
client="CF-Connecting-IP: 203.0.113.7"
status() { curl -s -o /dev/null -w '%{http_code}' -H "$client" -H "Authorization: $2" "http://127.0.0.1:$1$path"; }
# Object calls per answer for `n` requests with `auth` that each answer `want`.
per_answer() { # port n auth want [offset of @I@]
  local before after i got
  before="$(calls "$1")"
  for i in $(seq "$2"); do
    got="$(status "$1" "${3//@I@/$(printf %040d "$((i + ${5:-0}))")}")"
    [ "$got" = "$4" ] || { echo "bench-worker.sh: expected $4, got $got" >&2; exit 1; }
  done
  after="$(calls "$1")"
  python3 -c "print(f'{($after - $before - 1) / $2:.2f}')"
}

# Guessed credentials until the guard holds the client (at most 30): how
# many were answered 401, and the object calls per guess on the way.
until_held() { # port
  local before after i got=401
  before="$(calls "$1")"
  for i in $(seq 30); do
    got="$(status "$1" "Bearer fus_$(printf %040d "$i")")"
    [ "$got" = 401 ] || break
  done
  after="$(calls "$1")"
  [ "$got" = 429 ] || { echo "bench-worker.sh: 30 guesses and the guard never held the client ($got)" >&2; exit 1; }
  python3 -c "print(f'{$i - 1} guesses answered 401 at {($after - $before - 1) / $i:.2f} object calls each, the guard holding the next')"
}

report=()
for build in "${builds[@]}"; do
  name="${build%%:*}" checkout="${build#*:}"
  worker_target="$target_dir"
  # The other checkout's Worker builds in a target directory of its own, kept.
  [ "$name" = baseline ] && worker_target="$target_dir/baseline-worker"
  for mode in binding store; do
    flag=""; [ "$mode" = store ] && flag="--credentials-in-store"
    start_worker "$checkout" "$worker_target" 100000 "$flag"; open="$port"
    admitted="$(per_answer "$open" 50 "Bearer $token" 200)"
    start_worker "$checkout" "$worker_target" 5 "$flag"; full="$port"
    per_answer "$full" 5 "Bearer $token" 200 > /dev/null
    limited="$(per_answer "$full" 50 "Bearer $token" 429)"
    line="$name ($mode credentials): object calls per admitted $admitted, per 429 while full $limited"
    # The latency before the guesses: once the guard holds the client, it is 429.
    if [ "$mode" = binding ]; then
      out="$(wrk -t1 -c"$connections" -d"${duration}s" --latency -H "$client" -H "Authorization: Bearer $token" "http://127.0.0.1:$open$path")"
      rate="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
      non2xx="$(awk '/Non-2xx/ {print $5}' <<<"$out")"
      p50="$(awk '$1 == "50%" {print $2}' <<<"$out")"
      p99="$(awk '$1 == "99%" {print $2}' <<<"$out")"
      line="$line; wrk -c$connections ${duration}s: $rate admitted/s, p50 $p50, p99 $p99, non-2xx ${non2xx:-0}"
    fi
    guesses="$(until_held "$open")"
    held="$(per_answer "$open" 40 'Bearer fus_@I@' 429 1000)"
    line="$line; guessed credentials: $guesses, then $held per held guess (429)"
    echo "$line"
    report+=("$line")
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
  done
done
echo
echo "bench-worker.sh ${duration}s ${connections} connections, $(date -u +%F):"
printf '  %s\n' "${report[@]}"
