/* kz.h — what every module shares: the one error enum, assertions, byte slices.
 * Pure declarations; no state. */
#ifndef KZ_KZ_H
#define KZ_KZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define KZ_VERSION "0.1.0"

/** The one error type returned by every fallible function (STYLE rule 4). Mapped to HTTP in api.c.
 */
enum kz_err {
    KZ_OK = 0,
    KZ_ERR_NOMEM,
    KZ_ERR_INVALID, /* input failed validation */
    KZ_ERR_NOTFOUND,
    KZ_ERR_CONFLICT,
    KZ_ERR_TOOBIG, /* a bounded buffer or count hit its limit */
    KZ_ERR_DB,     /* the store failed (I/O, corruption, constraint we did not expect) */
    KZ_ERR_BUSY,   /* the store or a queue is overloaded / locked: try again later */
    KZ_ERR_IO,
    KZ_ERR_TIMEOUT,
    KZ_ERR_FORBIDDEN,
    KZ_ERR_AUTH,
    KZ_ERR_UNSAFE,  /* a callback target failed the SSRF guard */
    KZ_ERR_PENDING, /* not an error: the answer comes later through a completion */
};

/** Static text for `e`; never NULL. */
const char *kz_err_str(enum kz_err e);

/** Borrowed bytes; never owns. */
struct kz_str {
    const char *p;
    size_t len;
};
#define KZ_STR_LIT(s) ((struct kz_str){(s), sizeof(s) - 1})

_Noreturn void kz_panic(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Programmer errors only; always compiled in; never checks input. */
#define KZ_ASSERT(c) ((c) ? (void)0 : kz_panic(__FILE__, __LINE__, "assertion failed: %s", #c))

#define KZ_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/** Wall clock in epoch milliseconds. */
int64_t kz_now_ms(void);
/** Monotonic clock in milliseconds, for durations and deadlines. */
int64_t kz_mono_ms(void);

#endif
