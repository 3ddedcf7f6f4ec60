#!/usr/bin/env bash
# Installs (once, cached) the project's Python tools and starts the KMS emulator the tests
# use: moto's server mode, which serves AWS KMS (CreateKey, Encrypt, Decrypt, encryption
# contexts enforced) over HTTP on loopback.
#
#   scripts/kms.sh install     make the project's Python environment (scripts/python-env.sh)
#   scripts/kms.sh start       start moto on a free loopback port; prints the path of an env
#                              file with PSEUDONYMIZER_KMS_ENDPOINT, PSEUDONYMIZER_MOTO_SERVER
#                              and PSEUDONYMIZER_PYTHON (the environment's python)
#   scripts/kms.sh stop        stop it
#   scripts/kms.sh python      install, then print the environment's python
#
# The environment (moto[server], cryptography, …: scripts/python-requirements.txt) lives in
# ${PSEUDONYMIZER_CACHE:-$HOME/.cache/pseudonymizer}, outside the checkout, so a second run
# reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${PSEUDONYMIZER_CACHE:-$HOME/.cache/pseudonymizer}
RUN_DIR=${KMS_RUN_DIR:-$CACHE/run/kms}
VENV=""

install() {
  VENV=$(scripts/python-env.sh)
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start() {
  install
  mkdir -p "$RUN_DIR"
  local port
  port=$(free_port)
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$RUN_DIR/moto.log" 2>&1 &
  echo $! >"$RUN_DIR/moto.pid"
  for _ in $(seq 1 300); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
      cat >"$RUN_DIR/kms.env" <<EOF
PSEUDONYMIZER_KMS_ENDPOINT=http://127.0.0.1:$port
PSEUDONYMIZER_MOTO_SERVER=$VENV/bin/moto_server
PSEUDONYMIZER_PYTHON=$VENV/bin/python
EOF
      echo "$RUN_DIR/kms.env"
      return 0
    fi
    if ! kill -0 "$(cat "$RUN_DIR/moto.pid")" 2>/dev/null; then
      echo "moto exited; its log follows" >&2
      cat "$RUN_DIR/moto.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "moto did not open port $port within 30 s" >&2
  return 1
}

stop() {
  if [ -f "$RUN_DIR/moto.pid" ]; then
    kill "$(cat "$RUN_DIR/moto.pid")" 2>/dev/null || true
    rm -f "$RUN_DIR/moto.pid"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  python) install; echo "$VENV/bin/python" ;;
  *) echo "usage: $0 install|start|stop|python" >&2; exit 2 ;;
esac
