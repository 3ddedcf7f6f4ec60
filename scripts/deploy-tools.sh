#!/usr/bin/env bash
# Installs (once; cached where a second run can reuse it) what the deploy-pack tests need, and
# prints an env file naming each tool (tests/deploy.rs reads them):
#   - podman and mmdebstrap (Debian packages): the image is built with `podman build` from a
#     local Debian base made by mmdebstrap (no container registry can be reached here), cached
#     as a tarball in ~/.cache/pseudonymizer/base;
#   - promtool (Debian's prometheus package): checks and unit-tests the alert rules;
#   - kustomize (built from the Go module proxy, cached): renders deploy/kubernetes;
#   - kubernetes-validate (PyPI, the project's Python environment): validates what it renders.
#
#   scripts/deploy-tools.sh install     prints the path of the env file
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${PSEUDONYMIZER_CACHE:-$HOME/.cache/pseudonymizer}
KUSTOMIZE_VERSION=v5.5.0
DEBIAN_RELEASE=bookworm
BASE_TAR="$CACHE/base/$DEBIAN_RELEASE-minbase.tar"
ENV_FILE="$CACHE/run/deploy-tools.env"

install_packages() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v promtool >/dev/null || missing+=(prometheus)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (Debian packages)" >&2
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=""; fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" uidmap fuse-overlayfs >&2
  fi
}

install_kustomize() {
  local bin="$CACHE/kustomize-$KUSTOMIZE_VERSION/kustomize"
  if ! [ -x "$bin" ]; then
    echo "building kustomize $KUSTOMIZE_VERSION from the Go module proxy (first time only)" >&2
    # Built into a temporary directory and moved into place only once it runs: an interrupted
    # or failed build leaves nothing that a later run would take for a kustomize.
    local staging="$CACHE/kustomize-$KUSTOMIZE_VERSION.partial"
    rm -rf "$staging"
    mkdir -p "$staging"
    GOBIN="$staging" GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2
    "$staging/kustomize" version >/dev/null
    rm -rf "$(dirname "$bin")"
    mv "$staging" "$(dirname "$bin")"
  fi
  echo "$bin"
}

# A minimal Debian base of the same release as the production base (debian:bookworm-slim),
# with what the binary links (libc, libgcc, zlib) and CA certificates.
#
# mmdebstrap picks its output format from the target's name, and for a name it does not know
# (`….tar.tmp`, say) it writes a directory: the temporary name ends in `.tar` so that it
# writes a tarball, and the tarball is read back (`tar -t`, with /etc/os-release in it) before
# it is moved into place. A cached base that is not such a tarball is made again.
base_tar_is_good() {
  # grep without -q reads the whole listing: an early exit would give tar a SIGPIPE, which
  # pipefail reports as a failure.
  [ -f "$1" ] && tar -tf "$1" 2>/dev/null | grep -x '\./etc/os-release\|etc/os-release' >/dev/null
}

install_base() {
  if [ -e "$BASE_TAR" ] && ! base_tar_is_good "$BASE_TAR"; then
    echo "the cached base $BASE_TAR is not a readable tarball; making it again" >&2
    rm -rf "$BASE_TAR"
  fi
  if ! [ -f "$BASE_TAR" ]; then
    echo "making a $DEBIAN_RELEASE base with mmdebstrap (first time only, about 40 s)" >&2
    mkdir -p "$(dirname "$BASE_TAR")"
    local staging="$BASE_TAR.partial.tar"
    rm -rf "$staging"
    mmdebstrap --variant=minbase --include=ca-certificates,zlib1g --mode=root \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      "$DEBIAN_RELEASE" "$staging" >&2
    if ! base_tar_is_good "$staging"; then
      echo "mmdebstrap did not write a tarball with /etc/os-release at $staging" >&2
      rm -rf "$staging"
      exit 1
    fi
    mv "$staging" "$BASE_TAR"
  fi
}

case "${1:-}" in
  install)
    install_packages
    kustomize=$(install_kustomize)
    install_base
    venv=$(scripts/python-env.sh)
    mkdir -p "$(dirname "$ENV_FILE")"
    cat >"$ENV_FILE" <<EOT
PSEUDONYMIZER_PODMAN=$(command -v podman)
PSEUDONYMIZER_PROMTOOL=$(command -v promtool)
PSEUDONYMIZER_KUSTOMIZE=$kustomize
PSEUDONYMIZER_KUBERNETES_VALIDATE=$venv/bin/kubernetes-validate
PSEUDONYMIZER_BASE_TAR=$BASE_TAR
EOT
    echo "$ENV_FILE"
    ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
