#!/usr/bin/env bash
# Serves the sessiongate filter on Kong's WasmX (nginx + ngx_wasm_module), in
# the foreground, with the credentials of a token store: two nginx workers,
# one VM each, sharing one limit through shared data (shm_kv).
#
#   plugin/run-wasmx.sh --store FILE --port PORT [--requests N] [--window-seconds S]
#                       [--guard-failures N] [--backend stub|URL] [--workers N]
#                       [--fleet --etcd URL,URL,... [--etcd-timeout-ms MS]
#                        [--credentials-from-store]]
#                       [--run-dir DIR]
#
# --fleet: the fleet build of the filter, its limiter on etcd through a TCP
# proxy to the members that nginx itself runs (one more free port).
# --credentials-from-store (with --fleet and --store etcd://…/PREFIX on the
# same members): the filter looks each presented credential up in the store
# by digest instead of carrying them in its configuration, so any number of
# credentials is served, and one created or deleted with the CLI holds in
# every worker within a tick (250 ms) and a call, without a reload.
#
# Signals: SIGTERM or SIGINT stop nginx gracefully (in-flight requests end)
# and the script exits 0; SIGHUP renders the configuration again from the
# store (a new or deleted credential) and reloads nginx, then prints
# "run-wasmx.sh: reloaded" once no old worker is left.
#
# The filter's configuration is one nginx parameter, which nginx caps at
# 4,093 bytes (~13 credentials): a larger store is refused with a clear error
# (--credentials-from-store keeps it small whatever the store holds).
#
# Builds what is missing: WasmX through ../shared/peers/wasmx/build.sh into
# $WASMX_PREFIX (default ~/.cache/sessiongate/wasmx; ~17 minutes once), the
# filter through scripts/build-plugin.sh when it is older than its sources.
# $SESSIONGATE_WASMX_PEER names another copy of the peer folder.
set -euo pipefail

# bash cannot trap a signal it was started with ignored (nohup, some
# supervisors): SIGHUP would reload nothing, silently. Start again with it
# at its default, as nginx itself takes SIGHUP whatever it inherited.
if [ "$(trap -p HUP)" = "trap -- '' SIGHUP" ]; then
  exec python3 -c 'import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); os.execvp("bash", ["bash", *sys.argv[1:]])' "$0" "$@"
fi

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"

store="" port="" requests=20 window=60 guard="" backend=stub fleet="" etcd="" etcd_timeout=250 run="" workers=2 from_store=""
while [ $# -gt 0 ]; do
  case "$1" in
    --store) store="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --window-seconds) window="$2"; shift 2 ;;
    --guard-failures) guard="$2"; shift 2 ;;
    --backend) backend="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --fleet) fleet=1; shift ;;
    --etcd) etcd="$2"; shift 2 ;;
    --etcd-timeout-ms) etcd_timeout="$2"; shift 2 ;;
    --credentials-from-store) from_store=1; shift ;;
    --run-dir) run="$2"; shift 2 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "run-wasmx.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$store" ] && [ -n "$port" ] || { echo "run-wasmx.sh: --store FILE and --port PORT are required" >&2; exit 2; }
if [ -n "$fleet" ] && [ -z "$etcd" ]; then echo "run-wasmx.sh: --fleet needs --etcd URL,URL,..." >&2; exit 2; fi
if [ -z "$fleet" ] && [ -n "$etcd" ]; then echo "run-wasmx.sh: --etcd needs the fleet build: add --fleet" >&2; exit 2; fi
if [ -n "$from_store" ] && [ -z "$fleet" ]; then echo "run-wasmx.sh: --credentials-from-store needs the fleet build: add --fleet --etcd URL,..." >&2; exit 2; fi
case "$store" in
  etcd://*) ;;
  *) store="$(cd "$(dirname "$store")" && pwd)/$(basename "$store")" ;;
esac

log() { echo "run-wasmx.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

cache="${SESSIONGATE_CACHE:-$HOME/.cache/sessiongate}"
prefix="${WASMX_PREFIX:-$cache/wasmx}"
peer="${SESSIONGATE_WASMX_PEER:-$root/../shared/peers/wasmx}"
nginx="$prefix/sbin/nginx"
mkdir -p "$cache"

# Several instances may start at once (the tests start two): one builds
# WasmX and the filter while the others wait, so no two builds write the
# same files. Released before nginx starts.
exec 9>"$cache/.wasmx-lock"
flock 9
if [ ! -x "$nginx" ]; then
  [ -x "$peer/build.sh" ] || die "no WasmX at $nginx, and no $peer/build.sh to build it (set SESSIONGATE_WASMX_PEER)"
  for tool in cmake make cc; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install build-essential cmake pkg-config libpcre2-dev zlib1g-dev libssl-dev (scripts/test.sh does)"
  done
  log "building WasmX into $prefix (once; ~17 minutes on two cores)"
  "$peer/build.sh" "$prefix" >&2 || die "the WasmX build failed (its log is above)"
fi

workspace_target="${CARGO_TARGET_DIR:-$root/target}"
name=sessiongate_plugin
build_flags=()
if [ -n "$fleet" ]; then name=sessiongate_plugin_fleet; build_flags=(--fleet); fi
filter="$workspace_target/wasmx/$name.wasm"
mkdir -p "$workspace_target/wasmx"
if [ ! -f "$filter" ] || [ -n "$(find "$root/core/src" "$root/core/Cargo.toml" "$root/plugin/src" "$root/plugin/Cargo.toml" "$root/Cargo.lock" "$root/Cargo.toml" "$root/scripts/build-plugin.sh" -newer "$filter" -print -quit)" ]; then
  log "building the filter (scripts/build-plugin.sh ${build_flags[*]})"
  bash "$root/scripts/build-plugin.sh" "${build_flags[@]}" "$filter.new" >&2
  mv "$filter.new" "$filter"
fi

# The CLI only renders the configuration: the workspace's own build (release
# if there is one, else debug), never a second one of its own.
sessiongate="${SESSIONGATE_BIN:-}"
for built in "$workspace_target/release/sessiongate" "$workspace_target/debug/sessiongate"; do
  [ -z "$sessiongate" ] && [ -x "$built" ] && sessiongate="$built"
done
if [ -z "$sessiongate" ]; then
  log "building the sessiongate CLI (the workspace's debug build)"
  (cd "$root" && CARGO_TARGET_DIR="$workspace_target" cargo build --quiet -p sessiongate >&2)
  sessiongate="$workspace_target/debug/sessiongate"
fi
exec 9>&-

run="${run:-$(mktemp -d "${TMPDIR:-/tmp}/sessiongate-wasmx.XXXXXX")}"
mkdir -p "$run/logs" "$run/tmp"
run="$(cd "$run" && pwd)"

args=(wasmx-config --store "$store" --filter "$filter" --prefix "$run"
      --listen "127.0.0.1:$port" --workers "$workers"
      --requests "$requests" --window-seconds "$window" --backend "$backend")
[ -z "$guard" ] || args+=(--guard-failures "$guard")
[ -z "$from_store" ] || args+=(--credentials-from-store)
if [ -n "$etcd" ]; then
  etcd_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  args+=(--etcd "$etcd" --etcd-proxy "127.0.0.1:$etcd_port" --etcd-timeout-ms "$etcd_timeout")
fi

# Renders nginx.conf from the store and checks it with `nginx -t`; the file
# in use is replaced only by one that passed.
render() {
  "$sessiongate" "${args[@]}" > "$run/nginx.conf.next" || return 1
  if ! "$nginx" -p "$run" -c "$run/nginx.conf.next" -t > "$run/logs/nginx-t.log" 2>&1; then
    cat "$run/logs/nginx-t.log" >&2
    return 1
  fi
  mv "$run/nginx.conf.next" "$run/nginx.conf"
}
render || die "the configuration was refused (above); nothing started"

# nginx's workers, by their parent.
workers_of() { pgrep -P "$1" 2>/dev/null | sort | tr '\n' ' '; }

# A worker that cannot load the filter (on_configure refuses it) logs the
# reason and nginx goes on without it: say so, and stop.
worker_failed() {
  grep -E '\[(emerg|alert|crit)\]|refusing to start|failed to load' "$run/logs/error.log" 2>/dev/null
}

rm -f "$run"/*.sock
: > "$run/logs/error.log"
"$nginx" -p "$run" -c "$run/nginx.conf" 2>>"$run/logs/error.log" &
pid=$!
echo "$pid" > "$run/master.pid"

stop() {
  log "stopping nginx (graceful)"
  kill -QUIT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  exit 0
}
reload() {
  local before started
  before="$(workers_of "$pid")"
  started=$(date +%s)
  log "reloading: rendering the configuration from the store"
  if ! render; then
    log "reload refused: the new configuration does not pass nginx -t (above); the old one serves on"
    return
  fi
  log "reloading: nginx -t passed in $(( $(date +%s) - started )) s; old workers $before"
  kill -HUP "$pid"
  # Done when every worker is new and as many as configured are up: no old
  # worker (old credentials) can take a connection any more. An old worker
  # ends once its requests have (worker_shutdown_timeout bounds it).
  local said=$started
  while :; do
    local now left=""
    now="$(workers_of "$pid")"
    for w in $before; do
      case " $now " in *" $w "*) left=1 ;; esac
    done
    if [ -z "$left" ] && [ "$(echo "$now" | wc -w)" -ge "$workers" ]; then break; fi
    kill -0 "$pid" 2>/dev/null || return
    if [ $(( $(date +%s) - said )) -ge 10 ]; then
      said=$(date +%s)
      log "reloading: still waiting after $(( said - started )) s (workers now: $now; old: $before)"
    fi
    sleep 0.05
  done
  log "reloaded in $(( $(date +%s) - started )) s (workers $(workers_of "$pid"))"
}
trap stop TERM INT
trap reload HUP

# Ready: the port answers, every worker's filter logged its "configured:"
# line (error_log is at info for it), and no worker failed.
listening() { python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; }
started=$(date +%s)
until listening && [ "$(grep -c 'configured: [0-9]* credentials' "$run/logs/error.log" 2>/dev/null)" -ge "$workers" ] 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { cat "$run/logs/error.log" >&2; die "nginx exited"; }
  if worker_failed >&2; then kill -QUIT "$pid"; wait "$pid" || true; die "a worker failed (log: $run/logs/error.log)"; fi
  [ $(( $(date +%s) - started )) -lt 120 ] || { kill -QUIT "$pid"; cat "$run/logs/error.log" >&2; die "nginx did not get ready in 120 s"; }
  sleep 0.05
done
if worker_failed >&2; then kill -QUIT "$pid"; wait "$pid" || true; die "a worker failed (log: $run/logs/error.log)"; fi
log "serving on http://127.0.0.1:$port (limit $requests/${window}s, $workers workers, run dir $run)"

# `wait` returns early for every trapped signal: wait again until nginx ends.
while kill -0 "$pid" 2>/dev/null; do
  wait "$pid" || true
done
status=0
wait "$pid" 2>/dev/null || status=$?
cat "$run/logs/error.log" >&2
die "nginx exited by itself (status $status)"
