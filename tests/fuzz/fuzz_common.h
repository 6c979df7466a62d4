/* fuzz_common.h — what every libFuzzer harness in tests/fuzz/ shares: the libFuzzer entry points
 * (declared here so -Wmissing-prototypes stays on), an always-on invariant check that aborts with
 * a message (libFuzzer records the abort as a crash and keeps the input), and small helpers to
 * turn fuzz bytes into C strings.
 *
 * Harnesses are single-threaded (libFuzzer calls LLVMFuzzerTestOneInput from one thread); the api
 * harness alone has other threads (the store writer), which these helpers never touch. */
#ifndef KZ_FUZZ_COMMON_H
#define KZ_FUZZ_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/** libFuzzer entry points, defined by each harness. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/** Reports a broken invariant and aborts, so libFuzzer saves the input as a crash. */
__attribute__((noreturn, format(printf, 4, 5))) static inline void
fuzz_fail(const char *file, int line, const char *expr, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "\n==FUZZ== invariant broken at %s:%d: %s\n==FUZZ== ", file, line, expr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

/** Invariant check, always compiled in. The message is printf-style and says what was seen. */
#define FUZZ_CHECK(c, ...) ((c) ? (void)0 : fuzz_fail(__FILE__, __LINE__, #c, __VA_ARGS__))

/** NUL-terminated heap copy of `n` bytes (malloc, not kz_malloc: harness memory must not count
 * in kz_alloc_live()). The copy ends at the first NUL of the input, as a C caller would see it. */
static inline char *fuzz_cstr(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);

    if (!s)
        abort();
    if (n)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/** Splits [*p, end) at the next NUL: returns the piece and its length, advances *p past the NUL
 * (or to `end`). */
static inline const uint8_t *fuzz_next_piece(const uint8_t **p, const uint8_t *end, size_t *len)
{
    const uint8_t *start = *p;
    const uint8_t *nul = start < end ? memchr(start, '\0', (size_t)(end - start)) : NULL;

    if (!nul) {
        *len = (size_t)(end - start);
        *p = end;
    } else {
        *len = (size_t)(nul - start);
        *p = nul + 1;
    }
    return start;
}

#endif
