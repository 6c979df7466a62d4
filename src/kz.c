/* kz.c — error names, panic, clocks, the string hash and the UTF-8 validator. */
#include "kz.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
        [KZ_ERR_QUOTA] = "quota exceeded",
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

int64_t kz_mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

uint32_t kz_hash(uint32_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    size_t i;

    for (i = 0; i < n; i++)
        h = (h ^ s[i]) * 16777619u;
    return h;
}

uint32_t kz_hash_str(const char *s)
{
    return kz_hash(KZ_HASH_INIT, s, strlen(s));
}

size_t kz_utf8_seq(const unsigned char *p, size_t n)
{
    size_t len, i;
    uint32_t cp;

    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
        cp = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        cp = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}
