#!/usr/bin/env bash
# Instructions one request through the filter takes under wasmtime, counted
# by callgrind in the filter bench (proxy/benches/filter.rs): the inclusive
# count of `Vm::on_request` and `Vm::on_response` (the compiled wasm, its
# host calls and the host's side of them) divided by the requests. A count, not a time: it holds
# on a noisy machine, where the bench's microseconds move by 10-20 %. The
# bench's set-up is counted too, so a longer run gives a lower figure
# (1 s under valgrind: 23,100-23,700 for a 429; keep SECONDS equal to compare).
#
#   scripts/filter-instructions.sh [BENCH_BINARY] [rate_limited|admitted_forward] [SECONDS]
#   SESSIONGATE_BENCH_PLUGIN=FILE counts another build of the filter.
#
# BENCH_BINARY defaults to the newest `filter-*` bench of the release build
# (cargo bench -p sessiongate --bench filter --no-run). Needs valgrind.
#
# Under valgrind the CPU has no SHA extensions, so the host's native SHA-256
# (none on these paths) would be overstated; the filter's own SHA-256 runs
# in wasm and is counted as it runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
bench="${1:-}"
# sed reads the whole list: head would close the pipe early, and pipefail
# would end the script.
[ -n "$bench" ] || bench="$(ls -t "$target_dir"/release/deps/filter-* 2>/dev/null | grep -v '\.d$' | sed -n 1p || true)"
which="${2:-rate_limited}"
seconds="${3:-2}"
command -v valgrind >/dev/null || { echo "filter-instructions.sh: needs valgrind" >&2; exit 2; }
[ -n "$bench" ] && [ -x "$bench" ] || {
  echo "filter-instructions.sh: no bench binary (cargo bench -p sessiongate --bench filter --no-run)" >&2
  exit 2
}
case "$which" in
  rate_limited | admitted_forward) ;;
  *) echo "filter-instructions.sh: rate_limited or admitted_forward, not $which" >&2; exit 2 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# wasmtime writes the code it compiles into memory it maps itself:
# --smc-check=all-non-file makes valgrind see it.
valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file="$work/cg.out" \
  "$bench" --bench --profile-time "$seconds" "filter/.*/$which\$" >/dev/null 2>"$work/valgrind.log" || {
  cat "$work/valgrind.log" >&2
  exit 1
}
python3 - "$work/cg.out" "$which" "$bench" <<'EOF'
import re, sys

path, which, bench = sys.argv[1:]
names = {}

def name(field):
    # Callgrind's name compression: "(id) name" the first time, "(id)" after.
    m = re.match(r"\((\d+)\)(?: (.*))?", field)
    if not m:
        return field
    if m.group(2) is not None:
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), field)

# A request's phases: the forward's response phase is part of its stream.
phases = re.compile(r"\bVm>?::on_(request|response)\b")
calls = cost = 0
callee = None
pending = None
with open(path) as f:
    for line in f:
        line = line.rstrip("\n")
        if line.startswith(("fn=", "cfi=", "cfl=", "fl=", "fi=", "fe=", "ob=", "cob=")):
            if line.startswith("fn="):
                name(line[3:])
            continue
        if line.startswith("cfn="):
            callee = name(line[4:])
            continue
        if line.startswith("calls="):
            m = phases.search(callee) if callee else None
            pending = (int(line[6:].split()[0]), m.group(1)) if m else None
            continue
        if pending is not None and line and (line[0].isdigit() or line[0] in "+-*"):
            count, phase = pending
            if phase == "request":
                calls += count
            cost += int(line.split()[-1])
            pending = None
if calls == 0:
    sys.exit("filter-instructions.sh: no call of Vm::on_request in the profile")
print(f"{which} {bench}: {calls} requests, {cost} instructions, {cost // calls} per request")
EOF
