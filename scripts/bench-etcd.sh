#!/usr/bin/env bash
# The limiter on etcd against the limiter in shared data, one run, same machine:
#
#   scripts/bench-etcd.sh [FLOOD_SECONDS] [CONNECTIONS]   (default 10 s, 32)
#   BASELINE_PLUGIN=old.wasm scripts/bench-etcd.sh         (b) and (d) for that filter too
#
# (a) the 429 flood (a limit of 1 a day, spent): wrk against each serve, and
#     the etcd requests (range + txn) the flood caused, from etcd's /metrics;
# (b) the admitted path at a contract-like pace (10 requests a second, a limit
#     of 100 a second, one client): latency p50 / p99 through each store, and
#     etcd requests per admitted request.
# (c) contention: three serves on the one member, 48 clients, a limit of 200/s;
# (d) fleet rates: three serves (two VMs each) on a three-member etcd, 96
#     clients (wrk -t1 -c32 against each) for 10 s, a limit of 100,000 a
#     minute: admissions a second, answers other than 200, p50 / p99, and
#     etcd requests per admission; with BASELINE_PLUGIN, the same for that
#     filter (`serve --plugin`) in the same run, side by side.
# etcd here is one member on loopback (Debian's etcd-server) for (a)-(c); a
# real cluster adds its network round trips.
set -euo pipefail
duration="${1:-10}"
connections="${2:-32}"
root="$(cd "$(dirname "$0")/.." && pwd)"
for tool in wrk etcd curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-etcd.sh: needs $tool (Debian: wrk, etcd-server, curl)" >&2; exit 2; }
done
target_dir="${CARGO_TARGET_DIR:-$root/target}"
gate="$target_dir/release/sessiongate"
[ -x "$gate" ] || (cd "$root" && cargo build --quiet --release -p sessiongate)

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_url() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "$1 never answered" >&2; exit 1; }

client="$(free_port)"; peer="$(free_port)"
etcd --name m0 --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$client" \
  --advertise-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "m0=http://127.0.0.1:$peer" \
  --logger zap --log-level error >/dev/null 2>&1 & pids+=($!)
wait_url "http://127.0.0.1:$client/health"
# Range and Txn requests etcd's gRPC server handled (the gateway goes through it).
etcd_requests() {
  curl -s "http://127.0.0.1:$client/metrics" |
    awk '/^grpc_server_handled_total.*grpc_method="Range"/ {r+=$2} /^grpc_server_handled_total.*grpc_method="Txn"/ {t+=$2} END {printf "%d %d\n", r, t}'
}

token="$("$gate" token create --store "$work/tokens.json" --name bench --customer acme --all-sites 2>/dev/null)"
auth="Authorization: Bearer $token"
path="/v1/external/sessions/acme/site-1"
start_serve() { # name requests window store-lines [plugin]; sets $port
  port="$(free_port)"
  printf '[limit]\nrequests = %s\nwindow_seconds = %s\n%b[guard]\nfailures = 0\n' "$2" "$3" "$4" > "$work/$1.toml"
  plugin_args=(); [ -n "${5:-}" ] && plugin_args=(--plugin "$5")
  "$gate" serve --config "$work/$1.toml" --store "$work/tokens.json" --listen "127.0.0.1:$port" --admin off --workers 2 "${plugin_args[@]}" >/dev/null 2>&1 & pids+=($!)
  wait_url "http://127.0.0.1:$port/"
}
builds=("today:")
[ -n "${BASELINE_PLUGIN:-}" ] && builds+=("baseline:$BASELINE_PLUGIN")
on_etcd="store = \"etcd\"\netcd = [\"http://127.0.0.1:$client\"]\ntimeout_ms = 250\n"

echo "== (a) 429 flood: wrk -t2 -c$connections -d${duration}s, $(nproc) cores, $(date -u +%Y-%m-%d)"
for store in local etcd; do
  lines=""; [ "$store" = etcd ] && lines="$on_etcd"
  start_serve "flood-$store" 1 86400 "$lines"
  curl -s -o /dev/null -H "$auth" "http://127.0.0.1:$port$path"   # spends the day's one
  status="$(curl -s -o /dev/null -w '%{http_code}' -H "$auth" "http://127.0.0.1:$port$path")"
  [ "$status" = 429 ] || { echo "bench-etcd.sh: the flood's server answered $status, not 429" >&2; exit 1; }
  before="$(etcd_requests)"
  rps="$(wrk -t2 -c"$connections" -d"${duration}s" -H "$auth" "http://127.0.0.1:$port$path" | awk '/Requests\/sec/ {print $2}')"
  after="$(etcd_requests)"
  python3 - "$store" "$rps" "$before" "$after" "$duration" <<'PY'
import sys
store, rps, (r0, t0), (r1, t1), d = sys.argv[1], float(sys.argv[2]), map(int, sys.argv[3].split()), map(int, sys.argv[4].split()), float(sys.argv[5])
print(f"{store:6} {rps:10.0f} req/s   etcd ranges {r1 - r0}, txns {t1 - t0} during the flood ({(r1 - r0 + t1 - t0) / d:.1f}/s)")
PY
done

echo "== (b) admitted, 10 requests a second for 10 s, one client"
for run in local "${builds[@]}"; do
  store="${run%%:*}"; plugin="${run#*:}"; [ "$run" = local ] && plugin=""
  lines=""; [ "$store" != local ] && lines="$on_etcd"
  start_serve "paced-$store" 100 1 "$lines" "$plugin"
  before="$(etcd_requests)"
  python3 - "$store" "$port" "$token" "$path" "$before" "$client" <<'PY'
import http.client, sys, time, urllib.request
store, port, token, path, before, etcd = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
conn = http.client.HTTPConnection("127.0.0.1", port)
lat, admitted = [], 0
start = time.monotonic()
for i in range(100):
    next_at = start + i * 0.1
    time.sleep(max(0.0, next_at - time.monotonic()))
    t = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse(); r.read()
    lat.append((time.perf_counter() - t) * 1e3)
    admitted += r.status == 200
lat.sort()
m = urllib.request.urlopen(f"http://127.0.0.1:{etcd}/metrics").read().decode()
def handled(method):
    return sum(float(l.split()[-1]) for l in m.splitlines()
               if l.startswith("grpc_server_handled_total") and f'grpc_method="{method}"' in l)
r0, t0 = map(int, before.split())
ranges, txns = handled("Range") - r0, handled("Txn") - t0
calls = ranges + txns
print(f"{store:8} admitted {admitted}/100   p50 {lat[49]:.2f} ms   p99 {lat[98]:.2f} ms   etcd requests per admitted {calls / max(admitted, 1):.2f} ({ranges:.0f} ranges, {txns:.0f} txns)")
PY
done

echo "== (c) contention: three serves on the one etcd, wrk -t1 -c16 -d5s against each at once, a limit of 200 a second"
ports=()
for i in 1 2 3; do
  start_serve "contended-$i" 200 1 "$on_etcd"
  ports+=("$port")
done
before="$(etcd_requests)"
wrks=()
for p in "${ports[@]}"; do
  wrk -t1 -c16 -d5s -H "$auth" "http://127.0.0.1:$p$path" > "$work/wrk-$p.txt" & wrks+=($!)
done
wait "${wrks[@]}"
after="$(etcd_requests)"
python3 - "$before" "$after" "$work" "${ports[@]}" <<'PY'
import re, sys
(r0, t0), (r1, t1) = (map(int, a.split()) for a in sys.argv[1:3])
work, ports = sys.argv[3], sys.argv[4:]
total = refused = 0
for p in ports:
    out = open(f"{work}/wrk-{p}.txt").read()
    total += int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    refused += int(m.group(1)) if m else 0
admitted = total - refused
ranges, txns = r1 - r0, t1 - t0
print(f"admitted {admitted} of {total} (limit 200/s for 5 s: at most ~1,000)   etcd ranges {ranges}, txns {txns}: "
      f"{(ranges + txns) / max(admitted, 1):.2f} requests and {txns / max(admitted, 1):.2f} txns per admitted")
PY

echo "== (d) fleet rates: three serves x 2 VMs on a three-member etcd, wrk -t1 -c32 -d${duration}s --latency against each at once (96 clients), a limit of 100,000 a minute"
members=(); cluster=""; fleet_urls=()
for i in 0 1 2; do
  c="$(free_port)"; p="$(free_port)"
  members+=("$i:$c:$p"); cluster+="${cluster:+,}f$i=http://127.0.0.1:$p"
  fleet_urls+=("\"http://127.0.0.1:$c\"")
done
for m in "${members[@]}"; do
  IFS=: read -r i c p <<<"$m"
  etcd --name "f$i" --data-dir "$work/fleet-etcd-$i" --listen-client-urls "http://127.0.0.1:$c" \
    --advertise-client-urls "http://127.0.0.1:$c" --listen-peer-urls "http://127.0.0.1:$p" \
    --initial-advertise-peer-urls "http://127.0.0.1:$p" --initial-cluster "$cluster" \
    --initial-cluster-state new --logger zap --log-level error >/dev/null 2>&1 & pids+=($!)
done
for m in "${members[@]}"; do IFS=: read -r i c p <<<"$m"; wait_url "http://127.0.0.1:$c/health"; done
first_member="$(echo "${members[0]}" | cut -d: -f2)"
fleet_requests() { # Range and Txn requests every member handled
  for m in "${members[@]}"; do
    IFS=: read -r i c p <<<"$m"
    curl -s "http://127.0.0.1:$c/metrics"
  done | awk '/^grpc_server_handled_total.*grpc_method="Range"/ {r+=$2} /^grpc_server_handled_total.*grpc_method="Txn"/ {t+=$2} END {printf "%d %d\n", r, t}'
}
on_fleet="store = \"etcd\"\netcd = [$(IFS=,; echo "${fleet_urls[*]}")]\ntimeout_ms = 250\nkey = \"sessiongate/bench/KEY\"\n"
for run in "${builds[@]}"; do
  name="${run%%:*}"; plugin="${run#*:}"
  ports=()
  for i in 1 2 3; do
    start_serve "fleet-$name-$i" 100000 60 "${on_fleet//KEY/$name}" "$plugin"
    ports+=("$port")
  done
  before="$(fleet_requests)"
  wrks=()
  for p in "${ports[@]}"; do
    wrk -t1 -c32 -d"${duration}s" --latency -H "$auth" "http://127.0.0.1:$p$path" > "$work/fleet-$name-$p.txt" & wrks+=($!)
  done
  wait "${wrks[@]}"
  after="$(fleet_requests)"
  python3 - "$name" "$duration" "$before" "$after" "$work" "${ports[@]}" <<'PY'
import re, sys
name, d = sys.argv[1], float(sys.argv[2])
(r0, t0), (r1, t1) = (map(int, a.split()) for a in sys.argv[3:5])
work, ports = sys.argv[5], sys.argv[6:]
def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
def percentile(out, p):
    m = re.search(rf"{p}%\s+(\S+)", out)
    return ms(m.group(1)) if m else float("nan")
total = other = timeouts = 0
p50s, p99s = [], []
for p in ports:
    out = open(f"{work}/fleet-{name}-{p}.txt").read()
    total += int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    other += int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    timeouts += int(m.group(4)) if m else 0
    p50s.append(percentile(out, 50))
    p99s.append(percentile(out, 99))
admitted = total - other
ranges, txns = r1 - r0, t1 - t0
print(f"{name:8} {admitted / d:8.0f} admissions/s   answers other than 200: {other}, unanswered in wrk's 2 s: {timeouts}   "
      f"p50 {sorted(p50s)[1]:.1f} ms, p99 {max(p99s):.1f} ms (median and worst of the three serves)   "
      f"etcd requests per admission {(ranges + txns) / max(admitted, 1):.2f} ({ranges} ranges, {txns} txns)")
PY
  for p in "${pids[@]: -3}"; do kill "$p" 2>/dev/null || true; done
done
