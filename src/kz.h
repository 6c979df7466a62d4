/* kz.h — what every module shares: the one error enum, assertions, byte slices.
 * Pure declarations; no state. */
#ifndef KZ_KZ_H
#define KZ_KZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define KZ_VERSION "0.1.0"

/** The one error type returned by every fallible function (docs/STYLE.md rule 4). Mapped to HTTP in
 * api.c.
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
    KZ_ERR_QUOTA,   /* a per-application quota is used up (webhooks, pending handshakes) */
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
/** Monotonic clock in microseconds (request and attempt durations). */
int64_t kz_mono_us(void);

/** The one string hash (FNV-1a, 32 bits): spreads keys over in-memory tables. Continue a hash
 * over several pieces by passing the previous result as `h`; start with KZ_HASH_INIT. Not a
 * defence against chosen keys: tables that hold client keys bound their probing. */
#define KZ_HASH_INIT 2166136261u
uint32_t kz_hash(uint32_t h, const void *p, size_t n);
/** kz_hash of a NUL-terminated string from KZ_HASH_INIT. */
uint32_t kz_hash_str(const char *s);

/** The one UTF-8 validator: length (1..4) of the valid UTF-8 sequence at p[0..n), n >= 1, or 0
 * when those bytes are not one (a stray continuation byte, an overlong form, a surrogate, a code
 * point past U+10FFFF, a truncated sequence). NUL is valid UTF-8 and counts as 1; callers that
 * cannot hold NUL (stored text, C strings) check for it themselves. */
size_t kz_utf8_seq(const unsigned char *p, size_t n);

#endif
