#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets) for RUNS executions (default 20000), starting
# from its seed files and its regression inputs (fuzz/regressions/TARGET: inputs that once
# found a defect), and fails on the first crash, panic, abort, timeout or memory blow-up.
# cargo fuzz runs on stable without a sanitizer (-s none); -a keeps overflow checks on.
#   tools/fuzz.sh [RUNS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20000}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pth_zip pth_legacy safetensors cifar_batch image labels)

declare -A seeds=(
  [pth_zip]="tests/fixtures/pth"
  [pth_legacy]="fuzz/seeds/pth_legacy"
  [safetensors]="fuzz/seeds/safetensors tests/fixtures/pth"
  [cifar_batch]="fuzz/seeds/cifar_batch"
  [image]="tests/fixtures/images"
  [labels]="fuzz/seeds/labels"
)

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
cargo fuzz build -s none -a
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "$work/artifacts-$t"
  echo "fuzz: $t, $runs executions"
  # The first corpus folder takes what the run finds; the committed ones are only read.
  # shellcheck disable=SC2086
  if ! cargo fuzz run -s none -a "$t" "$work/$t" fuzz/regressions/$t ${seeds[$t]} -- \
      -runs="$runs" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
      -artifact_prefix="$work/artifacts-$t/" 2>"$work/$t.log"; then
    tail -40 "$work/$t.log"
    echo "fuzz: $t FAILED; the input that failed is saved as fuzz/regressions/$t/ (commit it with the fix)"
    cp "$work/artifacts-$t"/* "fuzz/regressions/$t/" 2>/dev/null || true
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^Done|cov:' "$work/$t.log" | tail -3
done
echo "fuzz: ${#targets[@]} passed, 0 failed"
