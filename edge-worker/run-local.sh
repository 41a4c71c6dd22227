#!/usr/bin/env bash
# Runs the sessiongate Worker locally on workerd (Cloudflare's open-source
# runtime), in the foreground, with the credentials of a token store.
#
#   edge-worker/run-local.sh --store FILE --port PORT [--requests N] [--window-seconds S]
#                            [--backend stub|URL] [--admin-hash HEX] [--state-dir DIR]
#                            [--credentials-in-store] [--filter-ttl-ms MS] [--last-use-flush-ms MS]
#
# --credentials-in-store: the binding holds no credentials; they live in the
# Durable Object's store, filled with `sessiongate worker-sync` (README, "Edge").
# --filter-ttl-ms: how long the Worker trusts its copy of the stored digests'
# filter, the longest a synced credential waits (default 10000; the
# SESSIONGATE_FILTER_TTL_MS binding).
# --last-use-flush-ms: how long the object keeps admitted credentials' last
# use before an alarm writes it (default 60000; SESSIONGATE_LAST_USE_FLUSH_MS).
#
# Builds the Worker first if it is not built or its sources changed. Needs only
# crates.io and npm: worker-build and wasm-bindgen-cli are installed into
# $SESSIONGATE_TOOLS (default ~/.cache/sessiongate/tools) once; workerd and
# esbuild come from edge-worker/package-lock.json.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"

store="" port="" requests=20 window=60 backend=stub state="" admin_hash="${SESSIONGATE_ADMIN_HASH:-}" without="" filter_ttl=10000 last_use_flush=60000
while [ $# -gt 0 ]; do
  case "$1" in
    --store) store="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --window-seconds) window="$2"; shift 2 ;;
    --backend) backend="$2"; shift 2 ;;
    --admin-hash) admin_hash="$2"; shift 2 ;;
    --state-dir) state="$2"; shift 2 ;;
    --credentials-in-store) without="--without-credentials"; shift ;;
    --filter-ttl-ms) filter_ttl="$2"; shift 2 ;;
    --last-use-flush-ms) last_use_flush="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "run-local.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$store" ] && [ -n "$port" ] || { echo "run-local.sh: --store FILE and --port PORT are required" >&2; exit 2; }
store="$(cd "$(dirname "$store")" && pwd)/$(basename "$store")"

log() { echo "run-local.sh: $*" >&2; }

tools="${SESSIONGATE_TOOLS:-$HOME/.cache/sessiongate/tools}"
export PATH="$tools/bin:$PATH"
# Several Workers may start at once (proxy/tests/worker.rs starts three): one
# installs the tools and builds the bundle while the others wait for it, so
# no two `cargo install`s or builds write the same files. Released before
# workerd starts.
mkdir -p "$tools"
exec 9>"$tools/.lock"
flock 9
bindgen_version="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$root/Cargo.lock")"

ensure_tool() { # binary crate version
  if ! "$1" --version 2>/dev/null | grep -q "$3"; then
    log "installing $2 $3 into $tools (once; takes minutes)"
    # Its own target directory, not the workspace's: nothing of the
    # workspace's builds is disturbed, and its files are left to no one else.
    CARGO_TARGET_DIR="$tools/target" cargo install --quiet "$2" --version "$3" --root "$tools" >&2
  fi
}
ensure_tool worker-build worker-build 0.8.7
ensure_tool wasm-bindgen wasm-bindgen-cli "$bindgen_version"

if [ ! -x "$here/node_modules/.bin/workerd" ]; then
  log "installing workerd and esbuild from npm"
  # `npm install`, not `npm ci`: npm records only this platform's optional
  # workerd binary in the lock file, which `npm ci` then calls out of sync.
  # The versions are pinned exactly in package.json either way.
  (cd "$here" && npm install --no-audit --no-fund --loglevel=error >&2)
fi
esbuild="$here/node_modules/@esbuild/linux-x64/bin/esbuild"
[ -x "$esbuild" ] || esbuild="$here/node_modules/.bin/esbuild"
workerd="$here/node_modules/.bin/workerd"

# Build when the bundle is missing or older than any source it is made of.
stamp="$here/build/.sessiongate-stamp"
# The Worker's own target directory: `cargo test` may hold the lock of the
# outer one while its tests run this script.
workspace_target="${CARGO_TARGET_DIR:-$root/target}"
export CARGO_TARGET_DIR="$workspace_target/sessiongate-edge-worker"
if [ ! -f "$stamp" ] || [ -n "$(find "$root/core/src" "$root/core/Cargo.toml" "$here/src" "$here/Cargo.toml" "$root/Cargo.lock" "$0" -newer "$stamp" -print -quit)" ]; then
  log "building the Worker (worker-build --release)"
  # Stripped, as wrangler.toml builds it: the wasm's `name` section is
  # ~260 KB of function names nobody at the edge reads.
  (cd "$here" && CARGO_PROFILE_RELEASE_STRIP=true WASM_BINDGEN_BIN="$(command -v wasm-bindgen)" ESBUILD_BIN="$esbuild" worker-build --release >&2)
  touch "$stamp"
fi
exec 9>&-

# The CLI only renders the binding: the workspace's own build (release if
# there is one, else debug), never a second one of its own (wasmtime takes
# ~15 minutes cold).
sessiongate="${SESSIONGATE_BIN:-}"
for built in "$workspace_target/release/sessiongate" "$workspace_target/debug/sessiongate"; do
  [ -z "$sessiongate" ] && [ -x "$built" ] && sessiongate="$built"
done
if [ -z "$sessiongate" ]; then
  log "building the sessiongate CLI (the workspace's debug build)"
  (cd "$root" && CARGO_TARGET_DIR="$workspace_target" cargo build --quiet -p sessiongate >&2)
  sessiongate="$workspace_target/debug/sessiongate"
fi

state="${state:-$(mktemp -d)}"
mkdir -p "$state/do"
cp "$here/build/index.js" "$here/build/index_bg.wasm" "$state/"
"$sessiongate" worker-config --store "$store" --requests "$requests" --window-seconds "$window" --backend "$backend" $without > "$state/config.json"
printf '%s' "$admin_hash" > "$state/admin-hash"
printf '%s' "$filter_ttl" > "$state/filter-ttl-ms"
printf '%s' "$last_use_flush" > "$state/last-use-flush-ms"

cat > "$state/config.capnp" <<CAPNP
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .gate),
    (name = "do-storage", disk = (path = "$state/do", writable = true)),
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [ (name = "http", address = "127.0.0.1:$port", http = (), service = "main") ],
);

const gate :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "index.js"),
    (name = "index_bg.wasm", wasm = embed "index_bg.wasm"),
  ],
  compatibilityDate = "2025-09-01",
  bindings = [
    (name = "SESSIONGATE_CONFIG", text = embed "config.json"),
    (name = "SESSIONGATE_ADMIN_HASH", text = embed "admin-hash"),
    (name = "SESSIONGATE_FILTER_TTL_MS", text = embed "filter-ttl-ms"),
    (name = "SESSIONGATE_LAST_USE_FLUSH_MS", text = embed "last-use-flush-ms"),
    (name = "LIMITER", durableObjectNamespace = "GlobalLimiter"),
  ],
  durableObjectNamespaces = [
    (className = "GlobalLimiter", uniqueKey = "sessiongate-global-limiter", enableSql = true),
  ],
  durableObjectStorage = (localDisk = "do-storage"),
  globalOutbound = "internet",
);
CAPNP

log "serving on http://127.0.0.1:$port (limit $requests/${window}s, state in $state)"
exec "$workerd" serve "$state/config.capnp" --experimental
