#!/usr/bin/env bash
# Fuzzing campaigns (libFuzzer + AddressSanitizer, nightly toolchain, cargo-fuzz).
#
#   scripts/fuzz.sh                      # every target for 30 s each (what scripts/test.sh runs)
#   scripts/fuzz.sh 600                  # every target for 10 minutes each
#   scripts/fuzz.sh 600 transform_differential route
#   scripts/fuzz.sh 600 schema_compile   # writer schemas as a registry answers them
#
# Seeds are in fuzz/corpus/<target> (checked in); what a campaign discovers goes to
# fuzz/runs/<target> (not checked in); a crash is written to fuzz/artifacts/<target> and the
# script fails. Keep a crash's input in fuzz/regressions/<target> once it is fixed: `cargo test`
# replays it (tests/hostile_inputs.rs).
#
# cargo-fuzz is installed once into ~/.cache/pseudonymizer (override with PSEUDONYMIZER_CACHE),
# so a second run, or a second CI run on the same machine, reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_fuzz_version=0.13.2
seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(transform_differential route envelope_open keyring_parse config_parse schema_compile phone_fast json_transform json_schema_derive protobuf_transform)
fi

cache=${PSEUDONYMIZER_CACHE:-$HOME/.cache/pseudonymizer}
root="$cache/cargo-fuzz-$cargo_fuzz_version"
if [ ! -x "$root/bin/cargo-fuzz" ]; then
  echo "installing cargo-fuzz $cargo_fuzz_version into $root"
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --root "$root"
fi
export PATH="$root/bin:$PATH"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi

# One build for every target (AddressSanitizer, debug assertions on).
cargo +nightly fuzz build

for target in "${targets[@]}"; do
  mkdir -p "fuzz/runs/$target"
  log="fuzz/runs/$target.log"
  echo "== $target, $seconds s"
  set +e
  cargo +nightly fuzz run "$target" "fuzz/runs/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  # The last status line carries executions and coverage (cov: edges, ft: features).
  grep -E "^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)" "$log" | tail -n 1 || true
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log" || true
  if [ "$status" -ne 0 ] || compgen -G "fuzz/artifacts/$target/*" >/dev/null; then
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" >&2 || tail -n 30 "$log" >&2
    echo "$target: the fuzzer failed (exit $status); see $log and fuzz/artifacts/$target" >&2
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets ran ${seconds} s each, no crash"
