#!/usr/bin/env bash
# Fuzzing campaigns (libFuzzer + AddressSanitizer, nightly toolchain, cargo-fuzz).
#
#   scripts/fuzz.sh                      # every target for 30 s each
#   scripts/fuzz.sh 600                  # every target for 10 minutes each
#   scripts/fuzz.sh 600 transform_differential route
#
# Seeds are in fuzz/corpus/<target> (checked in); what a campaign discovers goes to
# fuzz/runs/<target> (not checked in); a crash is written to fuzz/artifacts/<target> and the
# script fails. Keep a crash's input in fuzz/regressions/<target> once it is fixed: `cargo test`
# replays it (tests/hostile_inputs.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(transform_differential route envelope_open keyring_parse config_parse)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
for target in "${targets[@]}"; do
  mkdir -p "fuzz/runs/$target"
  echo "== $target, $seconds s"
  cargo +nightly fuzz run "$target" "fuzz/runs/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 2>&1 | grep -E "^(stat::|#[0-9]+ +DONE|Done)|panicked|ERROR|SUMMARY" || true
  if compgen -G "fuzz/artifacts/$target/*" >/dev/null; then
    echo "$target: a crash was found, see fuzz/artifacts/$target" >&2
    exit 1
  fi
done
