#!/usr/bin/env bash
# Runs every cargo-fuzz target of the repository (dataplane/fuzz, control/fuzz) one after the
# other and prints a summary table: target, executions, wall time, result.
#
#   scripts/fuzz.sh                  10,000,000 executions per target
#   scripts/fuzz.sh 100000           a quick smoke run
#   scripts/fuzz.sh 300s             five minutes per target (libFuzzer's -max_total_time)
#   scripts/fuzz.sh 100000 decap lease_json     only these targets
#
# Each target starts from its committed seeds (fuzz/seeds/<target>) and grows its git-ignored
# corpus (fuzz/corpus/<target>); a crash lands in fuzz/artifacts/<target>/ and makes the script
# exit non-zero after the remaining targets ran. Full libFuzzer logs are in target/fuzz-logs/.
# Installs cargo-fuzz if missing; RUSTC_BOOTSTRAP=1 lets it use nightly flags on stable Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

budget=${1:-10000000}
shift || true
if ! [[ "$budget" =~ ^[0-9]+s?$ ]]; then
  echo "fuzz: budget must be a number of executions (100000) or seconds (300s), not $budget" >&2
  exit 2
fi
case "$budget" in
  *s) limit=-max_total_time="${budget%s}" ;;
  *) limit=-runs="$budget" ;;
esac

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

logs=$root/target/fuzz-logs
mkdir -p "$logs"
rows=()
failed=0

for crate in dataplane control; do
  cd "$root/$crate"
  targets=$(cargo fuzz list)
  if [ $# -gt 0 ]; then
    wanted=()
    for t in $targets; do
      for w in "$@"; do [ "$t" = "$w" ] && wanted+=("$t"); done
    done
    targets=${wanted[*]:-}
  fi
  [ -n "$targets" ] || continue
  echo "fuzz: building $crate/fuzz"
  if ! cargo fuzz build >"$logs/$crate-build.log" 2>&1; then
    echo "fuzz: building $crate/fuzz failed, see $logs/$crate-build.log" >&2
    tail -20 "$logs/$crate-build.log" >&2
    rows+=("$crate/fuzz - - BUILD-FAILED")
    failed=1
    continue
  fi
  for t in $targets; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log=$logs/$t.log
    echo "fuzz: $crate $t (${budget})"
    start=$(date +%s%N)
    set +e
    cargo fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      "$limit" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    secs=$(awk -v ns=$(($(date +%s%N) - start)) 'BEGIN { printf "%.1f", ns / 1e9 }')
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$rc" -eq 0 ]; then
      result=ok
    else
      failed=1
      artifact=$(sed -n 's/.*Test unit written to //p' "$log" | tail -1)
      result="CRASH(rc=$rc)${artifact:+ $artifact}"
      grep -m1 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer)" "$log" >&2 || tail -5 "$log" >&2
    fi
    rows+=("$crate/$t ${execs:-?} $secs $result")
  done
done

echo
printf '%-28s %14s %10s  %s\n' TARGET EXECUTIONS TIME_S RESULT
for row in "${rows[@]}"; do
  read -r name execs secs result <<<"$row"
  printf '%-28s %14s %10s  %s\n' "$name" "$execs" "$secs" "$result"
done
exit "$failed"
