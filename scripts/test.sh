#!/usr/bin/env bash
# The project's test command: installs (once, cached) and starts the Tansu broker on a free
# loopback port, runs every test against it, then each fuzz target for 30 s, and stops it.
#
#   scripts/test.sh            # all tests
#   scripts/test.sh -- NAME    # extra arguments go to `cargo test` (and skip the fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/tansu.sh install
# The outage test starts a broker of its own behind a proxy it can cut.
PSEUDONYMIZER_TANSU_BIN=$(scripts/tansu.sh bin)
export PSEUDONYMIZER_TANSU_BIN
PSEUDONYMIZER_TEST_BROKERS=$(scripts/tansu.sh start)
export PSEUDONYMIZER_TEST_BROKERS
trap 'scripts/tansu.sh stop' EXIT
echo "tansu listening on $PSEUDONYMIZER_TEST_BROKERS"

# Unit and integration tests (the crate has no doctests). The summary line adds up every test
# binary's result.
log=$(mktemp)
set +e
cargo test --locked --no-fail-fast --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"

# The short fuzzing campaign: every fuzz target for 30 s from the checked-in corpus; a crash
# fails the run (docs/security.md, "Hostile bytes: fuzzing"). Skipped only when test arguments
# were given, i.e. when a developer asks for one test.
if [ $# -eq 0 ]; then
  scripts/fuzz.sh 30 || status=1
fi
exit "$status"
