/* buf.c — bounded growable buffer. */
#include "buf.h"
#include "alloc.h"

#include <stdio.h>
#include <string.h>

void kz_buf_init(struct kz_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void kz_buf_cleanup(struct kz_buf *b)
{
    kz_free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void kz_buf_reset(struct kz_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

/* Ensure room for `extra` more bytes plus a NUL. */
static enum kz_err reserve(struct kz_buf *b, size_t extra)
{
    size_t need, ncap;

    if (extra > b->max || b->len > b->max - extra)
        return KZ_ERR_TOOBIG;
    need = b->len + extra + 1;
    if (need <= b->cap)
        return KZ_OK;
    ncap = b->cap ? b->cap : 64;
    while (ncap < need)
        ncap *= 2;
    if (ncap > b->max + 1)
        ncap = b->max + 1;
    b->data = kz_realloc(b->data, ncap);
    b->cap = ncap;
    return KZ_OK;
}

enum kz_err kz_buf_append(struct kz_buf *b, const void *p, size_t len)
{
    enum kz_err result;

    if (!len)
        return KZ_OK;
    result = reserve(b, len);
    if (result)
        return result;
    memcpy(b->data + b->len, p, len);
    b->len += len;
    b->data[b->len] = '\0';
    return KZ_OK;
}

enum kz_err kz_buf_puts(struct kz_buf *b, const char *s)
{
    return kz_buf_append(b, s, strlen(s));
}

enum kz_err kz_buf_printf(struct kz_buf *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];
    int n;
    enum kz_err result;

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return KZ_ERR_INVALID;
    if ((size_t)n < sizeof(small))
        return kz_buf_append(b, small, (size_t)n);
    result = reserve(b, (size_t)n);
    if (result)
        return result;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return KZ_OK;
}

enum kz_err kz_buf_json_str(struct kz_buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t i, run = 0;
    enum kz_err result = kz_buf_append(b, "\"", 1);

    for (i = 0; !result && i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6];
        size_t elen = 2;

        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        result = kz_buf_append(b, s + run, i - run);
        if (result)
            break;
        run = i + 1;
        esc[0] = '\\';
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        result = kz_buf_append(b, esc, elen);
    }
    if (!result)
        result = kz_buf_append(b, s + run, len - run);
    if (!result)
        result = kz_buf_append(b, "\"", 1);
    return result;
}

enum kz_err kz_buf_text(struct kz_buf *b, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    enum kz_err result = KZ_OK;
    size_t i = 0, run = 0; /* run: clean bytes pending a copy, ending at i */

    while (i < len && !result) {
        size_t k = u[i] ? kz_utf8_seq(u + i, len - i) : 0;

        if (k) {
            i += k;
            run += k;
            continue;
        }
        result = kz_buf_append(b, s + i - run, run);
        run = 0;
        if (!result)
            result = kz_buf_append(b, "\xef\xbf\xbd", 3);
        i++;
    }
    if (!result)
        result = kz_buf_append(b, s + i - run, run);
    return result;
}

char *kz_buf_take(struct kz_buf *b)
{
    char *p = b->data;

    if (!p)
        p = kz_strdup("");
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return p;
}

const char *kz_buf_cstr(const struct kz_buf *b)
{
    return b->data ? b->data : "";
}
