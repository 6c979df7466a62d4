/* buf.h — a growable byte buffer with a mandatory size limit (curl dynbuf).
 * Not thread-safe; one owner at a time. The data is always NUL-terminated when len > 0. */
#ifndef KZ_BUF_H
#define KZ_BUF_H

#include "kz.h"

#include <stdarg.h>

struct kz_buf {
    char *data;
    size_t len, cap, max;
};

/** Empty buffer that may grow to `max` bytes. Allocates nothing; cannot fail. */
void kz_buf_init(struct kz_buf *b, size_t max);
/** Frees the data, not `b`; `b` is empty and reusable afterwards. */
void kz_buf_cleanup(struct kz_buf *b);
/** Sets len to 0, keeping the allocation. */
void kz_buf_reset(struct kz_buf *b);
/** Appends `len` bytes. KZ_ERR_TOOBIG, leaving `b` unchanged, if the result would exceed max.
 * Never reads `p` when `len` is 0. */
enum kz_err kz_buf_append(struct kz_buf *b, const void *p, size_t len);
/** Appends a NUL-terminated string. */
enum kz_err kz_buf_puts(struct kz_buf *b, const char *s);
/** Appends formatted text; KZ_ERR_TOOBIG as kz_buf_append. */
enum kz_err kz_buf_printf(struct kz_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/** Appends `s` as a JSON string literal, quotes included (escapes ", \, controls; bytes >= 0x80
 * are copied, so `s` must already be valid UTF-8). */
enum kz_err kz_buf_json_str(struct kz_buf *b, const char *s, size_t len);
/** Appends `s[0..len)` as clean text: valid UTF-8 is copied, and every byte that is not part of
 * a valid sequence, and every NUL, becomes U+FFFD. This is the one rule for text kzhook did not
 * write (a receiver's answer, a client's bytes quoted in a message): what is stored and shown is
 * the same on every backend. KZ_ERR_TOOBIG as kz_buf_append (b keeps what fitted). */
enum kz_err kz_buf_text(struct kz_buf *b, const char *s, size_t len);
/** Moves the data out (caller frees with kz_free); `b` is left empty. Returns "" copy if empty. */
char *kz_buf_take(struct kz_buf *b);
/** The data as a C string; "" when empty. Borrowed. */
const char *kz_buf_cstr(const struct kz_buf *b);

#endif
