/* kz.c — error names, panic, clocks. */
#include "kz.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

const char *kz_err_str(enum kz_err e)
{
    static const char *const names[] = {
        [KZ_OK] = "ok",
        [KZ_ERR_NOMEM] = "out of memory",
        [KZ_ERR_INVALID] = "invalid input",
        [KZ_ERR_NOTFOUND] = "not found",
        [KZ_ERR_CONFLICT] = "conflict",
        [KZ_ERR_TOOBIG] = "too big",
        [KZ_ERR_DB] = "database error",
        [KZ_ERR_BUSY] = "busy",
        [KZ_ERR_IO] = "i/o error",
        [KZ_ERR_TIMEOUT] = "timeout",
        [KZ_ERR_FORBIDDEN] = "forbidden",
        [KZ_ERR_AUTH] = "unauthenticated",
        [KZ_ERR_UNSAFE] = "unsafe target",
        [KZ_ERR_PENDING] = "pending",
    };
    if ((size_t)e >= KZ_ARRAY_LEN(names) || !names[e])
        return "unknown error";
    return names[e];
}

void kz_panic(const char *file, int line, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "{\"level\":\"fatal\",\"file\":\"%s\",\"line\":%d,\"msg\":\"", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\"}\n", stderr);
    abort();
}

int64_t kz_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kz_mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
