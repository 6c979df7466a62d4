#!/bin/sh
# Banned functions (docs/STYLE.md rule 12) and raw allocation outside alloc.c.
set -u
rc=0
banned='\b(sprintf|strcpy|strcat|strncpy|strtok|atoi|atol|atof|gets|rand|gmtime|localtime|asctime|ctime|system)\s*\('
if grep -nE "$banned" src/*.c src/*.h | grep -v '^\s*/\*'; then
    echo "lint: banned function used" >&2
    rc=1
fi
if grep -nE '\b(malloc|calloc|realloc|free|strdup|strndup)\s*\(' src/*.c | grep -v '^src/alloc.c' | grep -vE 'kz_(malloc|calloc|realloc|free|strdup|strndup)|json_|curl_free|PQfreemem|sqlite3_free|MHD_free'; then
    echo "lint: raw allocation outside alloc.c" >&2
    rc=1
fi
[ $rc -eq 0 ] && echo "lint: ok"
exit $rc
