#!/usr/bin/env bash
# Builds the proxy-wasm filter for shipping: the `plugin` profile, then
# binaryen's `wasm-opt` (from npm, pinned in plugin/package.json).
#
#   scripts/build-plugin.sh [--fast] [--fleet] [--no-simd] [OUT]   (default OUT: $CARGO_TARGET_DIR/sessiongate_plugin[_fleet][_nosimd].wasm)
#
# Default: `opt-level = "s"` (3 for the crates Cargo.toml names), then
# `wasm-opt -Oz --converge`: under 250 KB
# and under 5 us a request under wasmtime (`"z"` is 9 % smaller and 30 %
# slower). `--fast`: `opt-level = 3`
# throughout, then `wasm-opt -O3`: larger (the tests hold it under 300,000
# bytes) and faster again. Prints the path and
# the sizes. `--fleet`: with the limiter on etcd (the `fleet` feature;
# plugin/envoy-fleet.yaml loads it), ~30 KB larger.
#
# The filter uses WebAssembly's 128-bit SIMD (Wasm 2.0; V8 from 9.1, so
# Envoy's default runtime, and Wasmtime run it): SHA-256 of every presented
# secret has a SIMD form in `sha2`, and the filter is smaller with it.
# `--no-simd` builds one for a runtime without it. The
# flag is also in .cargo/config.toml, for every other build of the filter
# (the one `serve` embeds); the RUSTFLAGS set here replace that file's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
level=s
wasm_opt=(-Oz --converge)
features=()
name=sessiongate_plugin
simd=1
while [ $# -gt 0 ]; do
  case "$1" in
    --fast) level=3; wasm_opt=(-O3); shift ;;
    --fleet) features=(--features fleet); name=sessiongate_plugin_fleet; shift ;;
    --no-simd) simd=""; shift ;;
    *) break ;;
  esac
done
suffix=""
[ -n "$simd" ] || suffix=_nosimd
out="${1:-$target/$name$suffix.wasm}"
# Panic locations keep source paths even with panic = "abort": map this
# machine's registry and checkout away, so the shipped file names no build
# machine's paths (and is some 2 KB smaller).
remap=()
for dir in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do
  remap+=("--remap-path-prefix=$dir=")
done
remap+=("--remap-path-prefix=$root/=")
features_enabled=(--enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int)
if [ -n "$simd" ]; then
  remap+=("-Ctarget-feature=+simd128")
  features_enabled+=(--enable-simd)
else
  # Without SIMD, sha2 falls back to its unrolled software SHA-256 (~8 KB
  # of code); its compact form keeps this build inside the same budget.
  remap+=('--cfg=sha2_backend_soft="compact"')
fi
rustflags="$(IFS=$'\x1f'; echo "${remap[*]}")"
# Cargo.toml compiles the per-request crates at 3 inside the size budget;
# without SIMD's SHA-256 that would be over it, so that build keeps
# everything at "s" (244 KB).
levels=()
if [ -z "$simd" ] && [ "$level" = s ]; then
  for package in sessiongate-plugin proxy-wasm sha2; do
    levels+=(--config "profile.plugin.package.$package.opt-level=\"s\"")
  done
fi
# Its own target directory: `cargo test` may hold the lock of the outer one.
build="$target/sessiongate-plugin-ship-$level${features:+-fleet}$suffix"
(cd "$root" && CARGO_TARGET_DIR="$build" CARGO_PROFILE_PLUGIN_OPT_LEVEL="$level" \
  CARGO_ENCODED_RUSTFLAGS="$rustflags" \
  cargo build --quiet -p sessiongate-plugin --target wasm32-wasip1 --profile plugin "${features[@]}" "${levels[@]}")
raw="$build/wasm32-wasip1/plugin/sessiongate_plugin.wasm"
# One install at a time: two builds at once (the tests run both) would
# otherwise race on node_modules, one seeing it half-written.
(
  flock 9
  if [ ! -x "$root/plugin/node_modules/.bin/wasm-opt" ]; then
    (cd "$root/plugin" && npm install --no-audit --no-fund --loglevel=error >&2)
  fi
) 9>"$root/plugin/.npm-install.lock"
"$root/plugin/node_modules/.bin/wasm-opt" "${wasm_opt[@]}" --strip-debug --strip-producers \
  "${features_enabled[@]}" "$raw" -o "$out"
echo "$out"
echo "sizes: $(wc -c < "$raw") bytes built (opt-level $level), $(wc -c < "$out") bytes after wasm-opt ${wasm_opt[*]}" >&2
