#!/usr/bin/env bash
# The one test command, on a fresh machine or a used one: installs what the
# tests need when it is missing, then runs every test (`cargo test
# --workspace`, and scripts/layout.py's house rules). `.ci/run` runs exactly
# this.
#
#   scripts/test.sh [--loaded] [-- CARGO_TEST_ARGS...]
#
# --loaded: two CPU-bound loops run beside the suite (a stress check of the
#           suite itself: it waits on conditions, never on the clock).
#
# What it installs when missing:
# - the toolchain and wasm targets pinned in rust-toolchain.toml (rustup);
# - Debian packages: etcd-server (proxy/tests/fleet.rs, wasmx.rs), chromium
#   and chromium-driver (browser.rs), nginx, its Lua module and wrk
#   (bench.rs), and the C toolchain, cmake and headers WasmX builds with;
# - npm packages from plugin/ and edge-worker/'s lock files (wasm-opt;
#   workerd and esbuild);
# - Kong's WasmX (nginx + ngx_wasm_module) from ../shared/peers/wasmx into
#   ~/.cache/sessiongate/wasmx (proxy/tests/wasmx.rs), built while cargo
#   builds the tests.
#
# Build output goes to ~/.cache/sessiongate/target ($SESSIONGATE_TARGET_DIR),
# outside the clone, so a second run is quick; a fresh machine builds it all
# (wasmtime twice, ours and WasmX's: ~35 minutes on two cores).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

loaded=""
cargo_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --loaded) loaded=1; shift ;;
    --) shift; cargo_args=("$@"); break ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "scripts/test.sh: unknown argument $1 (cargo test's go after --)" >&2; exit 2 ;;
  esac
done

log() { echo "scripts/test.sh: $*" >&2; }

export CARGO_TARGET_DIR="${SESSIONGATE_TARGET_DIR:-$HOME/.cache/sessiongate/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cache="${SESSIONGATE_CACHE:-$HOME/.cache/sessiongate}"
mkdir -p "$cache"

rustup toolchain install

packages=()
command -v etcd >/dev/null || packages+=(etcd-server)
[ -x /usr/bin/chromium ] || packages+=(chromium)
[ -x /usr/bin/chromedriver ] || packages+=(chromium-driver)
command -v nginx >/dev/null || packages+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || packages+=(libnginx-mod-http-lua)
command -v wrk >/dev/null || packages+=(wrk)
wasmx_prefix="${WASMX_PREFIX:-$cache/wasmx}"
if [ ! -x "$wasmx_prefix/sbin/nginx" ]; then
  command -v cc >/dev/null && command -v make >/dev/null || packages+=(build-essential)
  command -v cmake >/dev/null || packages+=(cmake)
  command -v pkg-config >/dev/null || packages+=(pkg-config)
  for dev in libpcre2-dev zlib1g-dev libssl-dev; do
    dpkg -s "$dev" >/dev/null 2>&1 || packages+=("$dev")
  done
fi
if [ ${#packages[@]} -gt 0 ]; then
  log "installing Debian packages: ${packages[*]}"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}"
fi

# `npm install`, not `npm ci`: npm records only this platform's optional
# workerd binary in the lock file (edge-worker/run-local.sh says more).
for dir in plugin edge-worker; do
  if [ ! -d "$dir/node_modules" ]; then
    log "installing $dir's npm packages"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error)
  fi
done

# WasmX builds beside cargo (its own wasmtime, at nice 19); the tests wait
# for it below, not on its lock.
wasmx_pid=""
wasmx_log="$cache/wasmx-build.log"
if [ ! -x "$wasmx_prefix/sbin/nginx" ]; then
  peer="${SESSIONGATE_WASMX_PEER:-$root/../shared/peers/wasmx}"
  [ -x "$peer/build.sh" ] || { log "error: no $peer/build.sh to build WasmX with (set SESSIONGATE_WASMX_PEER)"; exit 1; }
  log "building WasmX into $wasmx_prefix beside the tests' build (log: $wasmx_log)"
  "$peer/build.sh" "$wasmx_prefix" > "$wasmx_log" 2>&1 &
  wasmx_pid=$!
fi

cargo test --workspace --no-run
if [ -n "$wasmx_pid" ]; then
  if ! wait "$wasmx_pid"; then
    tail -n 60 "$wasmx_log" >&2
    log "error: the WasmX build failed (the end of its log is above; all of it: $wasmx_log)"
    exit 1
  fi
  log "WasmX built: $wasmx_prefix/sbin/nginx"
fi

loops=()
stop_loops() {
  for pid in "${loops[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_loops EXIT
if [ -n "$loaded" ]; then
  for _ in 1 2; do
    bash -c 'while :; do :; done' &
    loops+=($!)
  done
  log "two CPU-bound loops beside the suite: pids ${loops[*]}"
fi

status=0
# The layout rules cargo does not check: no import circle, no file over 700
# lines outside tests (scripts/layout.py, which proves itself first).
python3 scripts/layout.py --self-test && python3 scripts/layout.py || status=$?
started=$(date +%s)
cargo test --workspace "${cargo_args[@]}" || status=$((status > 0 ? status : $?))
log "cargo test --workspace${loaded:+ (loaded)}: exit $status after $(( $(date +%s) - started )) s"
exit "$status"
