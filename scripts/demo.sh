#!/usr/bin/env bash
# The main job. First the stream worker: an in-process Kafka cluster, synthetic calls and
# messages (and poison records), the worker, raw and sanitized events side by side, and a
# throughput line (`pseudonymizer demo --brokers HOST:PORT` runs the same on a real cluster).
# Then file mode: a keyring, Avro container files sanitized, one event shown raw, sanitized
# and decrypted.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --quiet
# Where cargo put it: CARGO_TARGET_DIR when set (one shared target dir), ./target otherwise.
bin=${CARGO_TARGET_DIR:-target}/release/pseudonymizer

RUST_LOG=${RUST_LOG:-error} $bin demo --events "${DEMO_EVENTS:-100000}"

echo
echo "=== file mode ==="
mkdir -p out
[ -f keys/keyring.json ] || $bin keys init --keyring keys/keyring.json
$bin check --config config/pipeline.toml
$bin generate --schema message --count 20000 --output out/message.avro
$bin transform --config config/pipeline.toml --input out/message.avro --output out/message.sanitized.avro
echo "--- raw ---"
$bin show --input out/message.avro --count 1
echo "--- sanitized (what analytics reads) ---"
$bin show --input out/message.sanitized.avro --count 1
echo "--- decrypted (authorized re-identification only) ---"
$bin decrypt --config config/pipeline.toml --input out/message.sanitized.avro > out/message.decrypted.jsonl
head -n 1 out/message.decrypted.jsonl
echo "--- the audit records decrypt appended (var/audit.log): started before any output, then the outcome ---"
tail -n 2 var/audit.log
echo "--- the audit log's hash chain ---"
$bin audit verify --audit-log var/audit.log
