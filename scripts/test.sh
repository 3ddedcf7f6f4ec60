#!/usr/bin/env bash
# The project's test command: installs (once, cached) and starts the Tansu broker on a free
# loopback port, runs every test against it, and stops it.
#
#   scripts/test.sh            # all tests
#   scripts/test.sh -- NAME    # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/tansu.sh install
PSEUDONYMIZER_TEST_BROKERS=$(scripts/tansu.sh start)
export PSEUDONYMIZER_TEST_BROKERS
trap 'scripts/tansu.sh stop' EXIT
echo "tansu listening on $PSEUDONYMIZER_TEST_BROKERS"

cargo test --locked "$@"
