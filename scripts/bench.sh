#!/usr/bin/env bash
# The benchmarks, with the figures the README reports.
#
#   scripts/bench.sh                 # end to end against Tansu (1M events), then the transform
#   scripts/bench.sh --events 200000 # extra arguments go to `pseudonymizer bench`
#
# End to end: one worker against Tansu on loopback, with the transform and with a pass-through
# copy (same clients, same settings), alternately, each in its own process; events/s, their
# ratio, and the worker's peak and sampled RSS. Then the per-event transform (criterion).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --quiet
bin=target/release/pseudonymizer
[ -f keys/keyring.json ] || $bin keys init --keyring keys/keyring.json

export TANSU_RUN_DIR=${TANSU_RUN_DIR:-$(mktemp -d)}
brokers=$(scripts/tansu.sh start)
trap 'scripts/tansu.sh stop' EXIT
echo "tansu listening on $brokers"
$bin bench --brokers "$brokers" "$@"

cargo bench --locked --bench transform
