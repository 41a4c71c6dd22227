#!/usr/bin/env bash
# Builds the proxy-wasm filter for shipping: the `plugin` profile, then
# binaryen's `wasm-opt -Oz` (from npm, pinned in plugin/package.json).
#
#   scripts/build-plugin.sh [OUT]     (default: $CARGO_TARGET_DIR/sessiongate_plugin.wasm)
#
# Prints the path and the sizes before and after.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
out="${1:-$target/sessiongate_plugin.wasm}"
# Its own target directory: `cargo test` may hold the lock of the outer one.
build="$target/sessiongate-plugin-ship"
(cd "$root" && CARGO_TARGET_DIR="$build" cargo build --quiet -p sessiongate-plugin --target wasm32-wasip1 --profile plugin)
raw="$build/wasm32-wasip1/plugin/sessiongate_plugin.wasm"
if [ ! -x "$root/plugin/node_modules/.bin/wasm-opt" ]; then
  (cd "$root/plugin" && npm install --no-audit --no-fund --loglevel=error >&2)
fi
"$root/plugin/node_modules/.bin/wasm-opt" -Oz --strip-debug --strip-producers \
  --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int \
  "$raw" -o "$out"
echo "$out"
echo "sizes: $(wc -c < "$raw") bytes built, $(wc -c < "$out") bytes after wasm-opt -Oz" >&2
