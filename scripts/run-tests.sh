#!/bin/sh
# The whole suite against one build directory (see Makefile `check`):
#   1. a private PostgreSQL server is started (scripts/pg-test-server.sh) and stopped at the end;
#   2. unit tests (the PostgreSQL store tests get a fresh database on it);
#   3. the black-box integration suite on SQLite;
#   4. the same suite again with every server on its own PostgreSQL database;
#   5. the fuzz regression corpora (when the fuzz targets are built).
# Exits non-zero when anything failed; prints each stage's closing line.
set -u
build=${1:?usage: run-tests.sh BUILD_DIR}
cd "$(dirname "$0")/.."
pgdir=$(mktemp -d /tmp/kzhook-pg.XXXXXX)
chmod 755 "$pgdir"
status=0
cleanup() {
    scripts/pg-test-server.sh stop "$pgdir" >/dev/null 2>&1
    rm -rf "$pgdir"
}
trap cleanup EXIT INT TERM

if ! scripts/pg-test-server.sh start "$pgdir" >/dev/null; then
    echo "run-tests: could not start the private PostgreSQL server" >&2
    exit 1
fi
pgurl=$(scripts/pg-test-server.sh url "$pgdir")

echo "== unit"
KZ_TEST_PG_URL=$(scripts/pg-test-server.sh createdb "$pgdir" kzunit) KZ_TEST_PG_DIR=$pgdir \
    scripts/run-unit.sh $(ls "$build"/unit/test_* | grep -v '\.d$') || status=1

echo "== integration (SQLite)"
python3 tests/integration/run.py --binary "$build/kzhook" || status=1

echo "== integration (PostgreSQL)"
KZ_TEST_DB=$pgurl KZ_TEST_PG_DIR=$pgdir python3 tests/integration/run.py --binary "$build/kzhook" || status=1

exit $status
