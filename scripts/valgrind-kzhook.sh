#!/bin/sh
# Runs kzhook ($KZ_VG_BINARY) under valgrind memcheck: any memory error or definite leak makes the
# process exit 99, which the integration suite sees as a failed stop. Used by `make valgrind`.
exec valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite --track-origins=no --child-silent-after-fork=yes \
    --suppressions="$(dirname "$0")/valgrind.supp" \
    "${KZ_VG_BINARY:?set KZ_VG_BINARY to the kzhook binary}" "$@"
