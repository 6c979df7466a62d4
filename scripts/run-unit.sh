#!/bin/sh
# Runs each cmocka unit binary and prints one closing line: "unit: N passed, N failed".
# test_store runs its PostgreSQL half only with KZ_TEST_PG_URL (scripts/run-tests.sh sets it);
# without it the closing line says that half was skipped.
passed=0
failed=0
for t in "$@"; do
    if "$t"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAILED: $t" >&2
    fi
done
note=
[ -n "${KZ_TEST_PG_URL:-}" ] || note=" (PostgreSQL store tests SKIPPED: KZ_TEST_PG_URL unset)"
echo "unit: $passed passed, $failed failed$note"
[ "$failed" -eq 0 ]
