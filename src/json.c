/* json.c — lenient JSON accessors over jansson (see json.h). */
#include "json.h"
#include "alloc.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ASCII-only case folding: locale-independent, so "I" never folds to a dotless i. */
static int ascii_lower(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A' + 'a';
    return c;
}

static bool ascii_caseeq(const char *a, const char *b, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (ascii_lower((unsigned char)a[i]) != ascii_lower((unsigned char)b[i]))
            return false;
    }
    return true;
}

json_t *kz_json_get(const json_t *obj, const char *name)
{
    json_t *exact;
    json_t *mobj;
    void *it;
    size_t nlen;

    if (!obj || !name || !json_is_object(obj))
        return NULL;
    exact = json_object_get(obj, name);
    if (exact)
        return exact;
    /* jansson's iterator API takes a non-const object although iterating does not modify it. */
    mobj = (json_t *)obj;
    nlen = strlen(name);
    for (it = json_object_iter(mobj); it; it = json_object_iter_next(mobj, it)) {
        if (json_object_iter_key_len(it) == nlen &&
            ascii_caseeq(json_object_iter_key(it), name, nlen))
            return json_object_iter_value(it);
    }
    return NULL;
}

enum kz_err kz_json_bool(const json_t *v, bool *out)
{
    const char *s;
    size_t len;

    if (!v)
        return KZ_ERR_INVALID;
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return KZ_OK;
    }
    if (!json_is_string(v))
        return KZ_ERR_INVALID;
    s = json_string_value(v);
    len = json_string_length(v);
    if (len == 4 && ascii_caseeq(s, "true", 4)) {
        *out = true;
        return KZ_OK;
    }
    if (len == 5 && ascii_caseeq(s, "false", 5)) {
        *out = false;
        return KZ_OK;
    }
    return KZ_ERR_INVALID;
}

/* Strict decimal: optional '-', 1..19 digits, nothing else; accumulates in unsigned so that
 * INT64_MIN ("-9223372036854775808") is representable. */
static enum kz_err parse_i64(const char *s, size_t len, int64_t *out)
{
    const uint64_t pos_max = (uint64_t)INT64_MAX;
    bool neg = false;
    uint64_t acc = 0;
    size_t i = 0;

    if (len && s[0] == '-') {
        neg = true;
        i = 1;
    }
    if (len - i < 1 || len - i > 19)
        return KZ_ERR_INVALID;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return KZ_ERR_INVALID;
        /* 19 digits fit in uint64_t (max 9999999999999999999 < 2^64), so no overflow here. */
        acc = acc * 10 + (uint64_t)(s[i] - '0');
    }
    if (acc > pos_max + (neg ? 1u : 0u))
        return KZ_ERR_INVALID;
    if (neg)
        *out = acc == pos_max + 1u ? INT64_MIN : -(int64_t)acc;
    else
        *out = (int64_t)acc;
    return KZ_OK;
}

enum kz_err kz_json_i64(const json_t *v, int64_t *out)
{
    double d;
    int64_t i;

    if (!v)
        return KZ_ERR_INVALID;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return KZ_OK;
    }
    if (json_is_real(v)) {
        d = json_real_value(v);
        /* -2^63 and 2^63 are exact doubles; the half-open range excludes values that would
         * overflow the conversion (undefined behaviour) and NaN fails both comparisons. */
        if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
            return KZ_ERR_INVALID;
        i = (int64_t)d;
        if ((double)i != d)
            return KZ_ERR_INVALID;
        *out = i;
        return KZ_OK;
    }
    if (json_is_string(v))
        return parse_i64(json_string_value(v), json_string_length(v), out);
    return KZ_ERR_INVALID;
}

enum kz_err kz_json_str(const json_t *v, size_t maxlen, const char **out, size_t *len)
{
    const char *s;
    size_t n;

    if (!v || !json_is_string(v))
        return KZ_ERR_INVALID;
    s = json_string_value(v);
    n = json_string_length(v);
    if (n < 1 || n > maxlen || memchr(s, '\0', n))
        return KZ_ERR_INVALID;
    *out = s;
    if (len)
        *len = n;
    return KZ_OK;
}

size_t kz_json_bom(const char *body, size_t len)
{
    if (body && len >= 3 && (unsigned char)body[0] == 0xef && (unsigned char)body[1] == 0xbb &&
        (unsigned char)body[2] == 0xbf)
        return 3;
    return 0;
}

static json_t *parse(const char *body, size_t len, size_t flags, char *err, size_t errlen);
static json_t *finish(json_t *doc, json_error_t *jerr, char *err, size_t errlen);

json_t *kz_json_parse(const char *body, size_t len, char *err, size_t errlen)
{
    return parse(body, len, 0, err, errlen);
}

/* Length of the number token at p[i] (a '-' or digit outside a string): every byte that can
 * belong to a JSON number. Whether the token is well formed is left to jansson. */
static size_t number_len(const char *p, size_t i, size_t n)
{
    size_t j = i;

    while (j < n && ((p[j] >= '0' && p[j] <= '9') || p[j] == '-' || p[j] == '+' || p[j] == '.' ||
                     p[j] == 'e' || p[j] == 'E'))
        j++;
    return j - i;
}

/* True when t[0..len) is exactly one JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool number_well_formed(const char *t, size_t len)
{
    size_t i = 0, d;

    if (i < len && t[i] == '-')
        i++;
    if (i < len && t[i] == '0') {
        i++;
    } else {
        for (d = i; i < len && t[i] >= '0' && t[i] <= '9'; i++)
            ;
        if (i == d)
            return false;
    }
    if (i < len && t[i] == '.') {
        for (d = ++i; i < len && t[i] >= '0' && t[i] <= '9'; i++)
            ;
        if (i == d)
            return false;
    }
    if (i < len && (t[i] == 'e' || t[i] == 'E')) {
        i++;
        if (i < len && (t[i] == '+' || t[i] == '-'))
            i++;
        for (d = i; i < len && t[i] >= '0' && t[i] <= '9'; i++)
            ;
        if (i == d)
            return false;
    }
    return i == len;
}

/* True when the well-formed number at t[0..len) is beyond the range of a double, jansson's one
 * reason to refuse a well-formed number ("real number overflow"): the same strtod test it
 * makes. t[len] must be writable (it is restored). */
static bool number_overflows(char *t, size_t len)
{
    char saved = t[len];
    double v;

    t[len] = '\0';
    errno = 0;
    v = strtod(t, NULL);
    t[len] = saved;
    return errno == ERANGE && (v == HUGE_VAL || v == -HUGE_VAL);
}

json_t *kz_json_parse_lenient_numbers(const char *body, size_t len, char *err, size_t errlen)
{
    json_t *doc;
    json_error_t jerr;
    char *copy;
    size_t i;
    bool in_str = false;
    size_t bom = kz_json_bom(body, len);

    body = body ? body + bom : body;
    len -= bom;
    if (!body || !len)
        return parse(body, len, JSON_DECODE_INT_AS_REAL, err, errlen);
    /* Fast path: almost every body has only numbers a double holds. */
    doc = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &jerr);
    if (doc || json_error_code(&jerr) != json_error_numeric_overflow)
        return finish(doc, &jerr, err, errlen);
    /* The caller delivers the raw bytes, so a number beyond a double (1e400, a 400-digit
     * integer) must not refuse the document: parse a copy in which each such number is
     * replaced by the largest power of ten a double holds, of the same sign, padded with
     * spaces to the same length so that positions in any other error stay exact. The tree
     * then compares such values as +-1e308. Every overflowing token is at least "1e309" long,
     * so the replacement always fits. */
    copy = kz_malloc(len + 1);
    memcpy(copy, body, len);
    copy[len] = '\0';
    for (i = 0; i < len; i++) {
        char c = copy[i];
        size_t tl;

        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
            continue;
        }
        if (c != '-' && !(c >= '0' && c <= '9'))
            continue;
        tl = number_len(copy, i, len);
        if (number_well_formed(copy + i, tl) && number_overflows(copy + i, tl)) {
            const char *rep = c == '-' ? "-1e308" : "1e308";
            size_t rl = strlen(rep);

            KZ_ASSERT(rl <= tl);
            memcpy(copy + i, rep, rl);
            memset(copy + i + rl, ' ', tl - rl);
        }
        i += tl - 1;
    }
    doc = parse(copy, len, JSON_DECODE_INT_AS_REAL, err, errlen);
    kz_free(copy);
    return doc;
}

/* The checks every parse shares, on jansson's result `doc` (consumed on failure). */
static json_t *finish(json_t *doc, json_error_t *jerr, char *err, size_t errlen)
{
    /* Without JSON_DECODE_ANY jansson already refuses scalar top levels; we check again so the
     * contract does not depend on that default. */
    if (doc && !json_is_object(doc) && !json_is_array(doc)) {
        json_decref(doc);
        doc = NULL;
        snprintf(jerr->text, sizeof(jerr->text), "%s", "top level must be an object or array");
        jerr->line = 1;
        jerr->column = 1;
    }
    if (!doc && err && errlen)
        snprintf(err, errlen, "%s (line %d, column %d)", jerr->text, jerr->line, jerr->column);
    return doc;
}

static json_t *parse(const char *body, size_t len, size_t flags, char *err, size_t errlen)
{
    json_error_t jerr;

    size_t bom = kz_json_bom(body, len);

    if (!body) {
        body = "";
        len = 0;
    }
    body += bom;
    len -= bom;
    /* JSON_DISABLE_EOF_CHECK is deliberately absent: trailing garbage is an error. */
    return finish(json_loadb(body, len, JSON_REJECT_DUPLICATES | flags, &jerr), &jerr, err, errlen);
}

struct dump_ctx {
    struct kz_buf *out;
    bool toobig;
};

static int dump_cb(const char *p, size_t n, void *data)
{
    struct dump_ctx *ctx = data;

    if (kz_buf_append(ctx->out, p, n)) {
        ctx->toobig = true;
        return -1;
    }
    return 0;
}

enum kz_err kz_json_dump(const json_t *v, struct kz_buf *out)
{
    struct dump_ctx ctx = {out, false};
    size_t before = out->len;

    if (!v)
        return KZ_ERR_INVALID;
    /* jansson may report success after the callback refused a chunk: trust our own flag too. */
    if (!json_dump_callback(v, dump_cb, &ctx,
                            JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY) &&
        !ctx.toobig)
        return KZ_OK;
    /* Roll back whatever the partial dump appended before it failed. */
    out->len = before;
    if (out->data)
        out->data[before] = '\0';
    return ctx.toobig ? KZ_ERR_TOOBIG : KZ_ERR_INVALID;
}

/* ==== raw member lookup: a small scanner over text jansson has already validated ==== */

static size_t skip_ws(const char *p, size_t i, size_t n)
{
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}

/* `p[i]` is the opening quote; returns the index just past the closing quote. */
static size_t skip_string(const char *p, size_t i, size_t n)
{
    for (i++; i < n; i++) {
        if (p[i] == '\\')
            i++;
        else if (p[i] == '"')
            return i + 1;
    }
    return n;
}

/* Returns the index just past the value starting at `p[i]`. Iterative: depth is only counted. */
static size_t skip_value(const char *p, size_t i, size_t n)
{
    size_t depth = 0;

    if (i >= n)
        return n;
    if (p[i] == '"')
        return skip_string(p, i, n);
    if (p[i] != '{' && p[i] != '[') {
        while (i < n && p[i] != ',' && p[i] != '}' && p[i] != ']' && p[i] != ' ' && p[i] != '\t' &&
               p[i] != '\n' && p[i] != '\r')
            i++;
        return i;
    }
    while (i < n) {
        char c = p[i];

        if (c == '"') {
            i = skip_string(p, i, n);
            continue;
        }
        if (c == '{' || c == '[')
            depth++;
        else if ((c == '}' || c == ']') && --depth == 0)
            return i + 1;
        i++;
    }
    return n;
}

static bool key_is(const char *k, size_t klen, const char *key, bool exact)
{
    size_t i;

    if (klen != strlen(key) || memchr(k, '\\', klen))
        return false;
    for (i = 0; i < klen; i++) {
        unsigned char a = (unsigned char)k[i], b = (unsigned char)key[i];

        if (exact ? a != b : tolower(a) != tolower(b))
            return false;
    }
    return true;
}

/* Member `key` of the object starting at doc[i] (after whitespace). */
static enum kz_err member_of(const char *doc, size_t len, size_t i, const char *key,
                             struct kz_str *out)
{
    struct kz_str ci = {NULL, 0};

    i = skip_ws(doc, i, len);
    if (i >= len || doc[i] != '{')
        return KZ_ERR_NOTFOUND;
    i = skip_ws(doc, i + 1, len);
    while (i < len && doc[i] == '"') {
        size_t ks = i + 1, ke = skip_string(doc, i, len) - 1, vs, ve;

        i = skip_ws(doc, ke + 1, len);
        if (i >= len || doc[i] != ':')
            return KZ_ERR_NOTFOUND;
        vs = skip_ws(doc, i + 1, len);
        ve = skip_value(doc, vs, len);
        if (key_is(doc + ks, ke - ks, key, true)) {
            out->p = doc + vs;
            out->len = ve - vs;
            return KZ_OK;
        }
        if (!ci.p && key_is(doc + ks, ke - ks, key, false)) {
            ci.p = doc + vs;
            ci.len = ve - vs;
        }
        i = skip_ws(doc, ve, len);
        if (i >= len || doc[i] != ',')
            break;
        i = skip_ws(doc, i + 1, len);
    }
    if (!ci.p)
        return KZ_ERR_NOTFOUND;
    *out = ci;
    return KZ_OK;
}

enum kz_err kz_json_array_offsets(const char *doc, size_t len, size_t *offs, size_t n)
{
    size_t i = skip_ws(doc, kz_json_bom(doc, len), len), k;

    if (i >= len || doc[i] != '[')
        return KZ_ERR_NOTFOUND;
    i = skip_ws(doc, i + 1, len);
    for (k = 0; k < n; k++) {
        if (i >= len || doc[i] == ']')
            return KZ_ERR_NOTFOUND;
        offs[k] = i;
        i = skip_ws(doc, skip_value(doc, i, len), len);
        if (k + 1 < n) {
            if (i >= len || doc[i] != ',')
                return KZ_ERR_NOTFOUND;
            i = skip_ws(doc, i + 1, len);
        }
    }
    return KZ_OK;
}

enum kz_err kz_json_raw_member_at(const char *doc, size_t len, size_t offset, const char *key,
                                  struct kz_str *out)
{
    if (offset > len)
        return KZ_ERR_NOTFOUND;
    if (!offset)
        offset = kz_json_bom(doc, len);
    return member_of(doc, len, offset, key, out);
}

enum kz_err kz_json_raw_member(const char *doc, size_t len, long index, const char *key,
                               struct kz_str *out)
{
    size_t i = skip_ws(doc, kz_json_bom(doc, len), len);

    if (index >= 0) {
        long k;

        if (i >= len || doc[i] != '[')
            return KZ_ERR_NOTFOUND;
        i = skip_ws(doc, i + 1, len);
        for (k = 0; k < index && i < len; k++) {
            i = skip_ws(doc, skip_value(doc, i, len), len);
            if (i >= len || doc[i] != ',')
                return KZ_ERR_NOTFOUND;
            i = skip_ws(doc, i + 1, len);
        }
    }
    return member_of(doc, len, i, key, out);
}

enum kz_err kz_json_minify(struct kz_str v, struct kz_buf *out)
{
    size_t i = 0, run = 0;
    bool in_str = false;
    enum kz_err r = KZ_OK;

    for (i = 0; i < v.len && !r; i++) {
        char c = v.p[i];

        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            r = kz_buf_append(out, v.p + run, i - run);
            run = i + 1;
        }
    }
    if (!r)
        r = kz_buf_append(out, v.p + run, (i > v.len ? v.len : i) - run);
    return r;
}
