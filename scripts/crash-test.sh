#!/bin/sh
# make crash-test: SIGKILL kzhook 20 times at random moments of a load run (publishers, deliveries,
# retries) and check that every accepted event reached its receivers at least once. Bounded to
# 3 minutes. Usage: scripts/crash-test.sh BUILD_DIR [crash_test.py options, e.g. --seed N -v]
# The last line: "crash-test: N kills, M events accepted, L lost, D duplicates"; exit 0 iff L = 0.
set -u
build=${1:?usage: crash-test.sh BUILD_DIR [options]}
shift
cd "$(dirname "$0")/.."
if [ ! -x "$build/kzhook" ]; then
    make --no-print-directory BUILD="$build" "$build/kzhook" || exit 1
fi
exec python3 tests/crash/crash_test.py --binary "$build/kzhook" --kills 20 --max-time 180 "$@"
