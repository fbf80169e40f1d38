#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ for a bounded time each, one after
# the other, one libFuzzer job each.
#
#   scripts/fuzz.sh                 every target
#   scripts/fuzz.sh xds_requests    only those named
#
# Environment:
#   FUZZ_SECONDS    time per target (60)
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a hang (10)
#   FUZZ_RSS_MB     memory limit of the fuzzer process, in MiB (2048)
#   FUZZ_SANITIZER  address (default; on stable Rust through RUSTC_BOOTSTRAP=1)
#                   or none (faster, no ASan; plain stable Rust)
#
# Seeds come from fuzz/corpus/<target>/ (committed, written by
# fuzz/make_corpus.py); what the fuzzer adds goes to fuzz/generated/<target>/,
# crashes to fuzz/artifacts/<target>/, logs to fuzz/logs/ (none in git).
# Exits non-zero if any target crashed, hung or ran out of memory.
set -euo pipefail

cd "$(dirname "$0")/.."
ALL_TARGETS=(bundle_json bundle_yaml bundle_formats xds_requests store_record)
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
TIMEOUT=${FUZZ_TIMEOUT:-10}
RSS_MB=${FUZZ_RSS_MB:-2048}
SANITIZER=${FUZZ_SANITIZER:-address}

if [ $# -gt 0 ]; then targets=("$@"); else targets=("${ALL_TARGETS[@]}"); fi
for target in "${targets[@]}"; do
  [ -f "fuzz/fuzz_targets/$target.rs" ] || { echo "no fuzz target $target (have: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# With ASan, cargo-fuzz passes -Zsanitizer=address, which stable rustc takes
# only with RUSTC_BOOTSTRAP=1 (no nightly toolchain is needed). `none` passes
# no -Z flag. Switching rebuilds everything (about 15 minutes here).
if [ "$SANITIZER" != none ]; then export RUSTC_BOOTSTRAP=1; fi
build_flags=(--sanitizer "$SANITIZER" --codegen-units 16)

max_len() {
  case $1 in
    bundle_*) echo 32768 ;;
    store_record) echo 16384 ;;
    xds_requests) echo 8192 ;;
  esac
}

dict() {
  case $1 in
    bundle_*) echo fuzz/dict/bundle.dict ;;
    xds_requests) echo fuzz/dict/xds_requests.dict ;;
  esac
}

# One build of every target first: `cargo fuzz run` then finds it done.
cargo fuzz build "${build_flags[@]}"

mkdir -p fuzz/logs
failed=()
summary=()
for target in "${targets[@]}"; do
  mkdir -p "fuzz/generated/$target" "fuzz/artifacts/$target"
  log="fuzz/logs/$target.log"
  args=(-max_total_time="$SECONDS_PER_TARGET" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB"
        -max_len="$(max_len "$target")" -print_final_stats=1)
  if [ -n "$(dict "$target")" ]; then args+=(-dict="$(dict "$target")"); fi
  echo "== $target: ${SECONDS_PER_TARGET}s, log in $log"
  status=0
  # Seeds are read from the second corpus directory; new inputs are written
  # to the first only. No -jobs: libFuzzer's default is one in-process job.
  cargo fuzz run "${build_flags[@]}" "$target" "fuzz/generated/$target" "fuzz/corpus/$target" -- "${args[@]}" \
    >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  line="$target: ${runs:-?} executions in ${took:-?} s (${rate:-?}/s), exit $status"
  summary+=("$line")
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    # The panic message and where the input went; the whole story is in the log.
    grep -E -A4 '^thread .* panicked at' "$log" | head -12 || true
    grep -E 'ERROR: libFuzzer|^SUMMARY|Test unit written to' "$log" | head -5 || true
  fi
  echo "$line"
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/; reproduce with:" \
    "${RUSTC_BOOTSTRAP:+RUSTC_BOOTSTRAP=1 }cargo fuzz run ${build_flags[*]} <target> <input>)" >&2
  exit 1
fi
