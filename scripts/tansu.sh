#!/usr/bin/env bash
# Installs (once, cached) and starts Tansu, the Kafka-compatible broker the tests and the
# demo's --brokers mode talk to.
#
#   scripts/tansu.sh install        build tansu into the cache (about 11 minutes the first time)
#   scripts/tansu.sh start          start it on a free loopback port; prints HOST:PORT
#   scripts/tansu.sh stop           stop the broker started by `start`
#
# The cache lives in ${PSEUDONYMIZER_CACHE:-$HOME/.cache/pseudonymizer}, outside the checkout,
# so a second run (or a fresh clone on the same machine) reuses the binary.
set -euo pipefail

TANSU_VERSION=0.6.0
CACHE=${PSEUDONYMIZER_CACHE:-$HOME/.cache/pseudonymizer}
ROOT="$CACHE/tansu-$TANSU_VERSION"
BIN="$ROOT/bin/tansu"
RUN_DIR=${TANSU_RUN_DIR:-$CACHE/run}

install() {
  if [ -x "$BIN" ]; then
    return 0
  fi
  echo "installing tansu $TANSU_VERSION into $ROOT (first time only, about 11 minutes)" >&2
  # Installed under a temporary root and moved into place only once the binary runs: an
  # interrupted build leaves nothing a later run would take for a broker.
  local staging="$ROOT.partial"
  rm -rf "$staging"
  mkdir -p "$staging"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore \
    --root "$staging" --target-dir "$CACHE/tansu-build" >&2
  "$staging/bin/tansu" --help >/dev/null
  rm -rf "$ROOT"
  mv "$staging" "$ROOT"
  rm -rf "$CACHE/tansu-build"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start() {
  install
  mkdir -p "$RUN_DIR"
  local port
  port=$(free_port)
  local url="tcp://127.0.0.1:$port"
  "$BIN" broker \
    --storage-engine memory://tansu/ \
    --listener-url "$url" \
    --advertised-listener-url "$url" \
    >"$RUN_DIR/tansu.log" 2>&1 &
  echo $! >"$RUN_DIR/tansu.pid"
  # Wait until the port accepts connections (bounded: 30 s).
  for _ in $(seq 1 300); do
    if python3 -c "import socket,sys; s=socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
      echo "127.0.0.1:$port"
      return 0
    fi
    if ! kill -0 "$(cat "$RUN_DIR/tansu.pid")" 2>/dev/null; then
      echo "tansu exited; its log follows" >&2
      cat "$RUN_DIR/tansu.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "tansu did not open port $port within 30 s" >&2
  return 1
}

stop() {
  if [ -f "$RUN_DIR/tansu.pid" ]; then
    kill "$(cat "$RUN_DIR/tansu.pid")" 2>/dev/null || true
    rm -f "$RUN_DIR/tansu.pid"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  bin) install; echo "$BIN" ;;
  *) echo "usage: $0 install|start|stop|bin" >&2; exit 2 ;;
esac
