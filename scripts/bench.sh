#!/usr/bin/env bash
# The benchmarks, with the figures the README reports.
#
#   scripts/bench.sh                     # end to end against Tansu (1M events), then the transform
#   scripts/bench.sh --events 200000     # extra arguments go to `pseudonymizer bench`
#   scripts/bench.sh --kafka --mode exactly-once --events 300000
#                                        # against Apache Kafka (scripts/kafka.sh), with transactions
#
# End to end: one worker against the broker on loopback, with the transform and with a
# pass-through copy (same clients, same settings), and librdkafka's own at-least-once copy of
# the same records (the floor, src/bench/floor.rs), alternately, each in its own process;
# events/s, CPU per event, worker / floor, and the worker's peak and sampled RSS. With `--mode exactly-once`
# each round adds the transform in exactly-once mode. Then the per-event transform (criterion).
set -euo pipefail
cd "$(dirname "$0")/.."

broker=tansu
if [ "${1:-}" = "--kafka" ]; then
  broker=kafka
  shift
fi

cargo build --release --locked --quiet
# Where cargo put it: CARGO_TARGET_DIR when set (one shared target dir), ./target otherwise.
bin=${CARGO_TARGET_DIR:-target}/release/pseudonymizer
[ -f keys/keyring.json ] || $bin keys init --keyring keys/keyring.json

if [ "$broker" = kafka ]; then
  export KAFKA_RUN_DIR=${KAFKA_RUN_DIR:-$(mktemp -d)}
  kafka_env=$(scripts/kafka.sh start)
  trap 'scripts/kafka.sh stop' EXIT
  brokers=$(sed -n 's/^PSEUDONYMIZER_KAFKA_BROKERS=//p' "$kafka_env")
  echo "kafka listening on $brokers"
else
  export TANSU_RUN_DIR=${TANSU_RUN_DIR:-$(mktemp -d)}
  brokers=$(scripts/tansu.sh start)
  trap 'scripts/tansu.sh stop' EXIT
  echo "tansu listening on $brokers"
fi
$bin bench --brokers "$brokers" "$@"

cargo bench --locked --bench transform
