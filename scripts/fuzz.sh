#!/usr/bin/env bash
# Run every libFuzzer target in BIN_DIR for SECONDS each, one after the other.
#   scripts/fuzz.sh build/fuzz/bin 20
# Seeds come from BIN_DIR/make_seeds (valid messages built from the schema) and
# tests/fuzz/seeds/<target>/ when present. New inputs, logs and crash artifacts go
# under BIN_DIR/.. (corpus/, logs/, artifacts/). Prints one line per target; exits
# non-zero if any target crashed, leaked, timed out or could not run.
set -uo pipefail

if [[ $# -lt 1 || $# -gt 2 || ! -d "$1" ]]; then
  echo "usage: $0 BIN_DIR [SECONDS]" >&2
  exit 2
fi
bin_dir=$(cd "$1" && pwd)
seconds=${2:-20}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || (( seconds < 1 )); then
  echo "fuzz.sh: SECONDS must be a positive integer, got '$seconds'" >&2
  exit 2
fi
src_dir=$(cd "$(dirname "$0")/.." && pwd)
work=$(cd "$bin_dir/.." && pwd)

shopt -s nullglob
targets=("$bin_dir"/fuzz_*)
if (( ${#targets[@]} == 0 )); then
  echo "fuzz.sh: no fuzz_* binaries in $bin_dir (build with: cmake --preset fuzz)" >&2
  exit 2
fi

seeds="$work/seeds"
rm -rf "$seeds"
mkdir -p "$seeds"
if [[ -x "$bin_dir/make_seeds" ]]; then
  if ! "$bin_dir/make_seeds" "$seeds"; then
    echo "fuzz.sh: make_seeds failed" >&2
    exit 1
  fi
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=0
for bin in "${targets[@]}"; do
  [[ -x "$bin" && -f "$bin" ]] || continue
  name=$(basename "$bin")
  corpus="$work/corpus/$name"
  artifacts="$work/artifacts/$name"
  log="$work/logs/$name.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")" "$seeds/$name"
  dirs=("$corpus" "$seeds/$name")
  [[ -d "$src_dir/tests/fuzz/seeds/$name" ]] && dirs+=("$src_dir/tests/fuzz/seeds/$name")

  start=$(date +%s)
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "${dirs[@]}" >"$log" 2>&1
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  (( elapsed > 0 )) || elapsed=1
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  runs=${runs:-0}
  files=$(find "$corpus" -type f | wc -l)
  if (( rc == 0 )); then
    printf '%-16s ok     %10s runs in %3ss (%s/s), corpus %s inputs\n' \
      "$name" "$runs" "$elapsed" "$(( runs / elapsed ))" "$files"
  else
    failed=1
    artifact=$(ls -t "$artifacts" 2>/dev/null | head -n1)
    printf '%-16s FAILED exit %s after %s runs; artifact: %s; log: %s\n' \
      "$name" "$rc" "$runs" "${artifact:+$artifacts/$artifact}" "$log"
    grep -E 'ERROR|SUMMARY|check failed|runtime error' "$log" | head -n 8 | sed 's/^/    /'
  fi
done
exit $failed
