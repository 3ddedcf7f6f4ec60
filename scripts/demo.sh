#!/usr/bin/env bash
# The main job on sample data: make a keyring, generate raw call and message events,
# sanitize them, and show one raw event, its sanitized form (what analytics teams read) and
# its decrypted form (authorized re-identification).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --quiet
bin=target/release/pseudonymizer
mkdir -p out
[ -f keys/keyring.json ] || $bin keys init --keyring keys/keyring.json
$bin check --config config/pipeline.toml

for kind in call message; do
  $bin generate --schema "$kind" --count 100000 --output "out/$kind.avro"
  $bin transform --config config/pipeline.toml --input "out/$kind.avro" --output "out/$kind.sanitized.avro"
done

for kind in call message; do
  echo
  echo "=== $kind: raw ==="
  $bin show --input "out/$kind.avro" --count 1
  echo "=== $kind: sanitized (analytics topics see this) ==="
  $bin show --input "out/$kind.sanitized.avro" --count 1
  echo "=== $kind: decrypted (authorized re-identification only) ==="
  $bin decrypt --config config/pipeline.toml --input "out/$kind.sanitized.avro" 2>/dev/null | head -n 1
done
