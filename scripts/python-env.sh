#!/usr/bin/env bash
# Makes (once, cached) the project's Python virtual environment from
# scripts/python-requirements.txt and prints its directory. The directory is named by a hash
# of the requirements, so a change to them makes a fresh one.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${PSEUDONYMIZER_CACHE:-$HOME/.cache/pseudonymizer}
hash=$(sha256sum scripts/python-requirements.txt | cut -c1-12)
VENV="$CACHE/python-$hash"
if ! [ -x "$VENV/bin/python" ] || ! [ -f "$VENV/.complete" ]; then
  echo "installing the Python tools into $VENV (first time only, about a minute)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/python-requirements.txt >&2
  touch "$VENV/.complete"
fi
echo "$VENV"
