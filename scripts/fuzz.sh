#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and prints its executions.
#
#   scripts/fuzz.sh [SECONDS]        (default 60 per target; the decision target runs 3x as long)
#
# Needs cargo-fuzz from crates.io (`cargo install cargo-fuzz`); libFuzzer's
# nightly flags are enabled on the pinned stable toolchain with RUSTC_BOOTSTRAP=1.
# The run starts from fuzz/seeds/<target> and grows fuzz/corpus/<target> (not
# committed); `cargo fuzz cmin` then copying into fuzz/regressions/<target>
# keeps the interesting inputs as tests that `cargo test` replays.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
export PATH="${SESSIONGATE_TOOLS:-$HOME/.cache/sessiongate/tools}/bin:$PATH"
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: needs cargo-fuzz: cargo install cargo-fuzz" >&2; exit 2; }
mkdir -p corpus/decision corpus/config corpus/store corpus/limiter corpus/guard
for target in decision config store limiter guard; do
  t="$seconds"
  [ "$target" = decision ] && t=$((seconds * 3))
  log="$(mktemp)"
  # Safe Rust: no sanitizer needed to find panics, and 2-3x the executions.
  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$t" -print_final_stats=1 >"$log" 2>&1 || { tail -40 "$log"; exit 1; }
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
  echo "$target: ${execs:-?} executions in ${t}s, no crash"
done
