#!/usr/bin/env bash
# `sessiongate serve` with a large token store (issue 19, target 3): how soon
# it is ready and how much it keeps resident, start after start.
#
#   scripts/bench-store.sh [CREDENTIALS] [STARTS] [BINARY...]   (default 1000000, 4, the release build)
#
# With several binaries (builds to compare, copied aside), each start runs
# them in turn on the same store, so they are compared side by side.
# Generates CREDENTIALS records (scripts/gen-store.py: made-up hashes, the
# CLI's pretty JSON), adds one real token to them with the CLI, then starts
# each binary STARTS times with its defaults (two VMs, the stub
# backend). Each start reports `ready in` from the listening line, the
# resident set (`VmRSS`) once the admin port's `/readyz` says ready, and the status of one
# request with the real token, which must be 200: the set that was loaded is
# the set that answers. A benchmark, not a test: it prints the figures and
# fails only if a start never becomes ready or the request is refused.
#
# Needs (installs nothing itself): python3, curl; a release build of
# sessiongate (built here if missing).
set -euo pipefail
credentials="${1:-1000000}"
starts="${2:-4}"
root="$(cd "$(dirname "$0")/.." && pwd)"
for tool in python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench-store.sh: needs $tool" >&2; exit 2; }
done
shift $(( $# < 2 ? $# : 2 ))
binaries=("$@")
if [ ${#binaries[@]} -eq 0 ]; then
  bin="${CARGO_TARGET_DIR:-$root/target}/release/sessiongate"
  if [ ! -x "$bin" ]; then
    echo "bench-store.sh: building sessiongate (release)" >&2
    (cd "$root" && cargo build --quiet --release -p sessiongate)
  fi
  binaries=("$bin")
fi
for bin in "${binaries[@]}"; do
  [ -x "$bin" ] || { echo "bench-store.sh: no binary at $bin" >&2; exit 2; }
done

work="$(mktemp -d)"
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

store="$work/tokens.json"
python3 "$root/scripts/gen-store.py" "$credentials" > "$store"
token="$("${binaries[0]}" token create --store "$store" --name bench-real --customer acme --all-sites 2>/dev/null)"
size_mb=$(( $(stat -c %s "$store") / 1000000 ))
echo "store: $((credentials + 1)) credentials, $size_mb MB of JSON"
printf '| start | binary | ready | resident | a request with the real token |\n| --- | --- | --- | --- | --- |\n'

for start in $(seq "$starts"); do
 for bin in "${binaries[@]}"; do
  port="$(free_port)"; admin="$(free_port)"
  "$bin" serve --store "$store" --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" > "$work/out.log" 2>&1 &
  server=$!
  for _ in $(seq 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/readyz")" = 200 ] && break
    kill -0 "$server" 2>/dev/null || { cat "$work/out.log" >&2; echo "bench-store.sh: serve exited" >&2; exit 1; }
    sleep 0.05
  done
  ready="$(grep -o 'ready in [0-9]* ms' "$work/out.log" | grep -o '[0-9]*' || true)"
  [ -n "$ready" ] || { cat "$work/out.log" >&2; echo "bench-store.sh: start $start never became ready" >&2; exit 1; }
  resident_kb="$(awk '/^VmRSS:/ {print $2}' "/proc/$server/status")"
  status="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$port/v1/external/sessions/acme/site-1")"
  kill "$server"; wait "$server" 2>/dev/null || true
  server=""
  echo "| $start | $bin | $ready ms | $((resident_kb / 1024)) MB | $status |"
  [ "$status" = 200 ] || { echo "bench-store.sh: the real token was refused ($status)" >&2; exit 1; }
 done
done
echo "target 3: ready <= 1000 ms, resident <= 300 MB"
