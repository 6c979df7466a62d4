#!/bin/sh
# Install the Debian packages kzhook needs, only when one is missing.
# Usage: scripts/bootstrap.sh [build|test|bench|fuzz]   (default: build)
set -eu
what=${1:-build}
pkgs="build-essential pkg-config libmicrohttpd-dev libcurl4-openssl-dev libjansson-dev \
libsqlite3-dev libssl-dev libpq-dev openssl ca-certificates nodejs npm"
case "$what" in
    test) pkgs="$pkgs libcmocka-dev clang libclang-rt-14-dev clang-format postgresql nodejs npm python3 valgrind curl chromium" ;;
    bench) pkgs="$pkgs nginx wrk python3 curl postgresql" ;;
    fuzz) pkgs="$pkgs clang libclang-rt-14-dev" ;;
esac
missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        # a tool present on PATH from elsewhere (e.g. node, python3 from pyenv) counts as installed
        case "$p" in
            nodejs) command -v node >/dev/null 2>&1 && continue ;;
            chromium) command -v chromium >/dev/null 2>&1 && continue ;;
            npm|python3|curl|openssl|clang|clang-format|valgrind) command -v "$p" >/dev/null 2>&1 && continue ;;
        esac
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
echo "bootstrap: installing:$missing" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
