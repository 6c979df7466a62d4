/* filter.c — compiling and evaluating webhook event filters (see filter.h).
 *
 * Both the filter text and the event's data are read with the small bounded scanners below
 * rather than jansson, because numbers must keep their spelling: jansson turns 1e400 into an
 * error and 100000000000000000001 into a double. Every scanner takes an end pointer and never
 * reads past it, so malformed input (the fuzz target feeds any bytes) only ends a walk early. */
#include "filter.h"
#include "alloc.h"
#include "model.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ==== values ==== */

enum vtype { V_ABSENT, V_NULL, V_BOOL, V_NUM, V_STR, V_OTHER /* object or array */ };

/* A JSON number, normalised: value = (neg ? -1 : 1) * 0.d1 d2 ... dn * 10^exp, d1 != 0 and dn
 * != 0 (leading and trailing zeros dropped); zero has zero = true. The digits stay in the text:
 * digit i is at ip[i] for i < ilen, else fp[i - ilen] (the integer and fraction parts). */
struct num {
    bool neg, zero;
    int64_t exp;
    const char *ip, *fp;
    size_t ilen;
    size_t first, ndig; /* index of d1 among all digits, and n */
};

/* Exponents whose decimal spelling has more digits than this saturate when read from event
 * data; a filter refuses them, so every comparison of an event number against a filter number
 * stays exact (a saturated exponent is beyond any a filter can hold). */
#define EXP_DIGITS_MAX 15
#define EXP_SATURATED (INT64_C(1) << 60)

struct lit {
    enum vtype t;
    bool b;
    char *s; /* V_STR: unescaped bytes (owned); V_NUM: the number's text (owned, n points in) */
    size_t slen;
    struct num n;
};

enum field { F_EVENTTYPE, F_FROMUSER, F_FROMUSERID, F_FROMUSERNAME, F_DATA };
enum op { OP_EQ, OP_NE, OP_GT, OP_GTE, OP_LT, OP_LTE, OP_IN, OP_NIN, OP_EXISTS };

struct seg {
    size_t off, len; /* into cond.path */
};

struct cond {
    char *path; /* as written (unescaped) */
    enum field field;
    struct seg *segs; /* after "data." */
    size_t nseg;
    enum op op;
    struct lit *lits; /* one, or the array of $in/$nin */
    size_t nlits;
    bool exists;
};

struct kz_filter {
    struct cond *c;
    size_t n;
};

static const char *const op_names[] = {"$eq",  "$ne", "$gt",  "$gte",   "$lt",
                                       "$lte", "$in", "$nin", "$exists"};

/* ==== bounded scanners ==== */

static const char *ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool hex4(const char *p, const char *end, unsigned *out)
{
    unsigned v = 0;
    int i;

    if (end - p < 4)
        return false;
    for (i = 0; i < 4; i++) {
        int h = hexval(p[i]);

        if (h < 0)
            return false;
        v = v * 16 + (unsigned)h;
    }
    *out = v;
    return true;
}

static size_t utf8_put(unsigned cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* p at '"': returns the byte after the closing quote, or NULL when the string is malformed or
 * runs past end. When `out` is not NULL, the unescaped bytes are written there (the caller
 * gives at least end - p bytes: unescaping never lengthens) and their count to *outlen. */
static const char *scan_string(const char *p, const char *end, char *out, size_t *outlen)
{
    size_t n = 0;

    if (p >= end || *p != '"')
        return NULL;
    p++;
    while (p < end) {
        unsigned char c = (unsigned char)*p;

        if (c == '"') {
            if (outlen)
                *outlen = n;
            return p + 1;
        }
        if (c < 0x20)
            return NULL;
        if (c != '\\') {
            if (out)
                out[n] = (char)c;
            n++;
            p++;
            continue;
        }
        if (end - p < 2)
            return NULL;
        p++;
        switch (*p) {
        case '"':
        case '\\':
        case '/':
            c = (unsigned char)*p;
            break;
        case 'b':
            c = '\b';
            break;
        case 'f':
            c = '\f';
            break;
        case 'n':
            c = '\n';
            break;
        case 'r':
            c = '\r';
            break;
        case 't':
            c = '\t';
            break;
        case 'u': {
            unsigned cp, lo;
            char tmp[4];
            size_t k;

            if (!hex4(p + 1, end, &cp))
                return NULL;
            p += 5;
            if (cp >= 0xd800 && cp < 0xdc00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u' &&
                hex4(p + 2, end, &lo) && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            } else if (cp >= 0xd800 && cp < 0xe000) {
                cp = 0xfffd; /* a lone surrogate (jansson refuses these anyway) */
            }
            k = utf8_put(cp, tmp);
            if (out)
                memcpy(out + n, tmp, k);
            n += k;
            continue;
        }
        default:
            return NULL;
        }
        if (out)
            out[n] = (char)c;
        n++;
        p++;
    }
    return NULL;
}

/* Reads a JSON number at p into *nm (pointing into the text). Returns the byte after it, or NULL
 * when there is no valid number there. `exp_strict`: refuse (rather than saturate) an exponent
 * of more than EXP_DIGITS_MAX digits. */
static const char *scan_number(const char *p, const char *end, struct num *nm, bool exp_strict)
{
    size_t flen = 0, i, total, last = 0;
    int64_t e = 0;
    bool eneg = false, any = false;
    size_t edig = 0;

    memset(nm, 0, sizeof(*nm));
    if (p < end && *p == '-') {
        nm->neg = true;
        p++;
    }
    if (p >= end || !is_digit(*p))
        return NULL;
    nm->ip = p;
    if (*p == '0') {
        p++;
    } else {
        while (p < end && is_digit(*p))
            p++;
    }
    nm->ilen = (size_t)(p - nm->ip);
    nm->fp = p;
    if (p < end && *p == '.') {
        p++;
        nm->fp = p;
        while (p < end && is_digit(*p))
            p++;
        flen = (size_t)(p - nm->fp);
        if (!flen)
            return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        if (p >= end || !is_digit(*p))
            return NULL;
        while (p < end && *p == '0')
            p++;
        while (p < end && is_digit(*p)) {
            if (++edig <= EXP_DIGITS_MAX)
                e = e * 10 + (*p - '0');
            p++;
        }
        if (edig > EXP_DIGITS_MAX) {
            if (exp_strict)
                return NULL;
            e = EXP_SATURATED;
        }
        if (eneg)
            e = -e;
    }
    total = nm->ilen + flen;
    for (i = 0; i < total; i++) {
        char d = i < nm->ilen ? nm->ip[i] : nm->fp[i - nm->ilen];

        if (d != '0') {
            if (!any)
                nm->first = i;
            any = true;
            last = i;
        }
    }
    if (!any) {
        nm->zero = true;
        nm->neg = false;
        return p;
    }
    nm->ndig = last - nm->first + 1;
    /* lengths are below 2^31 (the text is bounded by the request body), e below 2^61 */
    nm->exp = e + (int64_t)nm->ilen - (int64_t)nm->first;
    return p;
}

static char num_digit(const struct num *n, size_t k)
{
    size_t i = n->first + k;

    return i < n->ilen ? n->ip[i] : n->fp[i - n->ilen];
}

/* -1, 0, 1 as a <, =, > b, by exact decimal value. */
static int num_cmp(const struct num *a, const struct num *b)
{
    int mag = 0;
    size_t k;

    if (a->zero || b->zero) {
        if (a->zero && b->zero)
            return 0;
        if (a->zero)
            return b->neg ? 1 : -1;
        return a->neg ? -1 : 1;
    }
    if (a->neg != b->neg)
        return a->neg ? -1 : 1;
    if (a->exp != b->exp) {
        mag = a->exp > b->exp ? 1 : -1;
    } else {
        for (k = 0; k < a->ndig && k < b->ndig && !mag; k++) {
            char x = num_digit(a, k), y = num_digit(b, k);

            if (x != y)
                mag = x > y ? 1 : -1;
        }
        if (!mag && a->ndig != b->ndig)
            mag = a->ndig > b->ndig ? 1 : -1;
    }
    return a->neg ? -mag : mag;
}

/* Skips one value (valid or not: brackets are counted, strings skipped). Returns the byte after
 * it, or NULL when the text ends first or there is no value. */
static const char *skip_value(const char *p, const char *end)
{
    size_t depth = 0;

    p = ws(p, end);
    if (p >= end)
        return NULL;
    do {
        if (p >= end)
            return NULL;
        if (*p == '"') {
            p = scan_string(p, end, NULL, NULL);
            if (!p)
                return NULL;
            continue;
        }
        if (*p == '{' || *p == '[') {
            depth++;
        } else if (*p == '}' || *p == ']') {
            if (!depth)
                return NULL;
            depth--;
        } else if (!depth) {
            /* a scalar: up to the next delimiter */
            while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' &&
                   *p != '\t' && *p != '\r')
                p++;
            return p;
        }
        p++;
    } while (depth);
    return p;
}

/* ==== compiling ==== */

struct cc {
    const char *p, *end;
    char *err;
    size_t errlen;
    struct kz_filter *f;
    char *scratch; /* unescaping buffer, as long as the text */
};

static enum kz_err failf(struct cc *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static enum kz_err failf(struct cc *c, const char *fmt, ...)
{
    va_list ap;

    if (c->errlen) {
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return KZ_ERR_INVALID;
}

static void lit_cleanup(struct lit *l)
{
    kz_free(l->s);
}

static void cond_cleanup(struct cond *cd)
{
    size_t i;

    for (i = 0; i < cd->nlits; i++)
        lit_cleanup(&cd->lits[i]);
    kz_free(cd->lits);
    kz_free(cd->segs);
    kz_free(cd->path);
}

void kz_filter_free(struct kz_filter *f)
{
    size_t i;

    if (!f)
        return;
    for (i = 0; i < f->n; i++)
        cond_cleanup(&f->c[i]);
    kz_free(f->c);
    kz_free(f);
}

size_t kz_filter_conditions(const struct kz_filter *f)
{
    return f ? f->n : 0;
}

/* A path shown in a message: printable ASCII as is, anything else as '?', at most 80 bytes. */
static void show(const char *s, size_t n, char out[84])
{
    size_t i, k = 0;

    for (i = 0; i < n && k < 80; i++)
        out[k++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    if (i < n) {
        out[k++] = '.';
        out[k++] = '.';
        out[k++] = '.';
    }
    out[k] = '\0';
}

/* A string at c->p, unescaped into c->scratch; *n its length. */
static enum kz_err read_string(struct cc *c, const char **s, size_t *n, const char *what)
{
    const char *q = scan_string(c->p, c->end, c->scratch, n);

    if (!q)
        return failf(c, "filter: %s is not a valid JSON string", what);
    c->p = q;
    *s = c->scratch;
    return KZ_OK;
}

/* A literal at c->p: string, number, true, false or null. */
static enum kz_err read_literal(struct cc *c, const char *path, const char *what, struct lit *l)
{
    const char *p = ws(c->p, c->end), *q;
    size_t n;

    memset(l, 0, sizeof(*l));
    c->p = p;
    if (p >= c->end)
        return failf(c, "filter: %s: %s is missing", path, what);
    if (*p == '"') {
        q = scan_string(p, c->end, c->scratch, &n);
        if (!q)
            return failf(c, "filter: %s: %s is not a valid JSON string", path, what);
        l->t = V_STR;
        l->s = kz_malloc(n + 1);
        memcpy(l->s, c->scratch, n);
        l->s[n] = '\0';
        l->slen = n;
        c->p = q;
        return KZ_OK;
    }
    if (*p == '-' || is_digit(*p)) {
        struct num tmp;

        q = scan_number(p, c->end, &tmp, true);
        if (!q)
            return failf(c,
                         "filter: %s: %s is not a valid number (or its exponent has over %d "
                         "digits)",
                         path, what, EXP_DIGITS_MAX);
        if (q < c->end && *q != ',' && *q != '}' && *q != ']' && *q != ' ' && *q != '\t' &&
            *q != '\n' && *q != '\r')
            return failf(c, "filter: %s: %s is not a valid number", path, what);
        l->t = V_NUM;
        l->slen = (size_t)(q - p);
        l->s = kz_malloc(l->slen + 1);
        memcpy(l->s, p, l->slen);
        l->s[l->slen] = '\0';
        scan_number(l->s, l->s + l->slen, &l->n, true);
        c->p = q;
        return KZ_OK;
    }
    if ((size_t)(c->end - p) >= 4 && !memcmp(p, "true", 4)) {
        l->t = V_BOOL;
        l->b = true;
        c->p = p + 4;
    } else if ((size_t)(c->end - p) >= 5 && !memcmp(p, "false", 5)) {
        l->t = V_BOOL;
        c->p = p + 5;
    } else if ((size_t)(c->end - p) >= 4 && !memcmp(p, "null", 4)) {
        l->t = V_NULL;
        c->p = p + 4;
    } else {
        return failf(c, "filter: %s: %s must be a string, number, true, false or null", path, what);
    }
    if (c->p < c->end && (is_digit(*c->p) || (*c->p >= 'a' && *c->p <= 'z')))
        return failf(c, "filter: %s: %s must be a string, number, true, false or null", path, what);
    return KZ_OK;
}

/* Expects `ch` (after whitespace); moves past it. */
static bool expect(struct cc *c, char ch)
{
    c->p = ws(c->p, c->end);
    if (c->p >= c->end || *c->p != ch)
        return false;
    c->p++;
    return true;
}

static struct cond *new_cond(struct cc *c, const struct cond *proto)
{
    struct cond *cd;

    c->f->c = kz_realloc(c->f->c, (c->f->n + 1) * sizeof(*c->f->c));
    cd = &c->f->c[c->f->n++];
    memset(cd, 0, sizeof(*cd));
    cd->path = kz_strdup(proto->path);
    cd->field = proto->field;
    if (proto->nseg) {
        cd->segs = kz_malloc(proto->nseg * sizeof(*cd->segs));
        memcpy(cd->segs, proto->segs, proto->nseg * sizeof(*cd->segs));
    }
    cd->nseg = proto->nseg;
    return cd;
}

/* Splits and checks a key into proto (path, field, segments). */
static enum kz_err parse_path(struct cc *c, const char *key, size_t n, struct cond *proto)
{
    static const struct {
        const char *name;
        enum field f;
    } tops[] = {{"eventType", F_EVENTTYPE},
                {"fromUser", F_FROMUSER},
                {"fromUserId", F_FROMUSERID},
                {"fromUserName", F_FROMUSERNAME}};
    char shown[84];
    size_t i, start;

    show(key, n, shown);
    if (!n || n > KZ_FILTER_PATH_MAX || memchr(key, '\0', n))
        return failf(c, "filter: path \"%s\" must be 1..%d bytes", shown, KZ_FILTER_PATH_MAX);
    proto->path = kz_strndup(key, n);
    for (i = 0; i < KZ_ARRAY_LEN(tops); i++) {
        if (strlen(tops[i].name) == n && !memcmp(tops[i].name, key, n)) {
            proto->field = tops[i].f;
            return KZ_OK;
        }
    }
    if (n < 4 || memcmp(key, "data", 4) || (n > 4 && key[4] != '.'))
        return failf(c,
                     "filter: unknown path \"%s\" (use eventType, fromUser, fromUserId, "
                     "fromUserName, data or data.<member>...)",
                     shown);
    proto->field = F_DATA;
    if (n == 4)
        return KZ_OK;
    proto->segs = kz_malloc(n * sizeof(*proto->segs));
    for (start = 5, i = 5; i <= n; i++) {
        if (i < n && key[i] != '.')
            continue;
        if (i == start)
            return failf(c, "filter: path \"%s\" has an empty segment", shown);
        proto->segs[proto->nseg].off = start;
        proto->segs[proto->nseg].len = i - start;
        proto->nseg++;
        start = i + 1;
    }
    return KZ_OK;
}

static enum kz_err add_literal_cond(struct cc *c, const struct cond *proto, enum op op,
                                    const char *what)
{
    struct lit l;
    struct cond *cd;
    enum kz_err e;

    if (c->f->n >= KZ_FILTER_CONDS_MAX)
        return failf(c, "filter: %s: more than %d conditions", proto->path, KZ_FILTER_CONDS_MAX);
    e = read_literal(c, proto->path, what, &l);
    if (e) {
        lit_cleanup(&l);
        return e;
    }
    if ((op == OP_GT || op == OP_GTE || op == OP_LT || op == OP_LTE) && l.t != V_NUM &&
        l.t != V_STR) {
        lit_cleanup(&l);
        return failf(c, "filter: %s: %s needs a number or a string", proto->path, what);
    }
    cd = new_cond(c, proto);
    cd->op = op;
    cd->lits = kz_malloc(sizeof(*cd->lits));
    cd->lits[0] = l;
    cd->nlits = 1;
    return KZ_OK;
}

static enum kz_err add_list_cond(struct cc *c, const struct cond *proto, enum op op)
{
    struct cond *cd;
    const char *name = op_names[op];

    if (c->f->n >= KZ_FILTER_CONDS_MAX)
        return failf(c, "filter: %s: more than %d conditions", proto->path, KZ_FILTER_CONDS_MAX);
    if (!expect(c, '['))
        return failf(c, "filter: %s: %s needs an array of literals", proto->path, name);
    cd = new_cond(c, proto);
    cd->op = op;
    c->p = ws(c->p, c->end);
    if (c->p < c->end && *c->p == ']') {
        c->p++;
        return KZ_OK;
    }
    for (;;) {
        struct lit l;
        enum kz_err e;

        e = read_literal(c, proto->path, name, &l);
        if (e) {
            lit_cleanup(&l);
            return e;
        }
        cd->lits = kz_realloc(cd->lits, (cd->nlits + 1) * sizeof(*cd->lits));
        cd->lits[cd->nlits++] = l;
        c->p = ws(c->p, c->end);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        if (c->p < c->end && *c->p == ']') {
            c->p++;
            return KZ_OK;
        }
        return failf(c, "filter: %s: %s needs an array of literals", proto->path, name);
    }
}

/* An operator object at c->p ('{' already consumed). */
static enum kz_err read_operators(struct cc *c, const struct cond *proto)
{
    size_t nops = 0;

    for (;;) {
        const char *k = NULL;
        size_t kn = 0;
        int op = -1, i;
        enum kz_err e;
        char shown[84];

        c->p = ws(c->p, c->end);
        if (c->p < c->end && *c->p == '}' && !nops)
            return failf(c, "filter: %s: an operator object needs at least one operator",
                         proto->path);
        e = read_string(c, &k, &kn, proto->path);
        if (e)
            return e;
        for (i = 0; i < (int)KZ_ARRAY_LEN(op_names); i++) {
            if (strlen(op_names[i]) == kn && !memcmp(op_names[i], k, kn))
                op = i;
        }
        show(k, kn, shown);
        if (op < 0)
            return failf(c,
                         "filter: %s: unknown operator \"%s\" (use $eq $ne $gt $gte $lt $lte "
                         "$in $nin $exists)",
                         proto->path, shown);
        if (!expect(c, ':'))
            return failf(c, "filter: %s: malformed operator object", proto->path);
        if (op == OP_IN || op == OP_NIN) {
            e = add_list_cond(c, proto, (enum op)op);
        } else if (op == OP_EXISTS) {
            struct lit l;
            struct cond *cd;

            if (c->f->n >= KZ_FILTER_CONDS_MAX)
                return failf(c, "filter: %s: more than %d conditions", proto->path,
                             KZ_FILTER_CONDS_MAX);
            e = read_literal(c, proto->path, "$exists", &l);
            lit_cleanup(&l);
            if (!e && l.t != V_BOOL)
                e = failf(c, "filter: %s: $exists needs true or false", proto->path);
            if (!e) {
                cd = new_cond(c, proto);
                cd->op = OP_EXISTS;
                cd->exists = l.b;
            }
        } else {
            e = add_literal_cond(c, proto, (enum op)op, op_names[op]);
        }
        if (e)
            return e;
        nops++;
        c->p = ws(c->p, c->end);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        if (c->p < c->end && *c->p == '}') {
            c->p++;
            return KZ_OK;
        }
        return failf(c, "filter: %s: malformed operator object", proto->path);
    }
}

enum kz_err kz_filter_compile(const char *text, size_t len, struct kz_filter **out, char *err,
                              size_t errlen)
{
    struct cc c;
    enum kz_err e = KZ_ERR_INVALID;

    *out = NULL;
    memset(&c, 0, sizeof(c));
    c.p = text;
    c.end = text + len;
    c.err = err;
    c.errlen = errlen;
    if (errlen)
        err[0] = '\0';
    if (len > KZ_FILTER_MAX)
        return failf(&c, "filter: more than %d bytes", KZ_FILTER_MAX);
    if (!text || !expect(&c, '{'))
        return failf(&c, "filter must be a JSON object");
    c.f = kz_calloc(1, sizeof(*c.f));
    c.scratch = kz_malloc(len + 1);
    c.p = ws(c.p, c.end);
    if (c.p < c.end && *c.p == '}') {
        c.p++;
    } else {
        for (;;) {
            struct cond proto;
            const char *k = NULL;
            size_t kn = 0;

            memset(&proto, 0, sizeof(proto));
            e = read_string(&c, &k, &kn, "a path");
            if (!e)
                e = parse_path(&c, k, kn, &proto);
            if (!e && !expect(&c, ':'))
                e = failf(&c, "filter: %s: malformed member", proto.path);
            if (!e) {
                c.p = ws(c.p, c.end);
                if (c.p < c.end && *c.p == '{') {
                    c.p++;
                    e = read_operators(&c, &proto);
                } else if (c.p < c.end && *c.p == '[') {
                    e = failf(&c,
                              "filter: %s: a value must be a literal or an operator object "
                              "(use $in for a list)",
                              proto.path);
                } else {
                    e = add_literal_cond(&c, &proto, OP_EQ, "the value");
                }
            }
            kz_free(proto.path);
            kz_free(proto.segs);
            if (e)
                goto out;
            c.p = ws(c.p, c.end);
            if (c.p < c.end && *c.p == ',') {
                c.p++;
                continue;
            }
            if (c.p < c.end && *c.p == '}') {
                c.p++;
                break;
            }
            e = failf(&c, "filter must be a JSON object of path: condition members");
            goto out;
        }
    }
    if (ws(c.p, c.end) != c.end) {
        e = failf(&c, "filter: unexpected text after the object");
        goto out;
    }
    e = KZ_OK;
    if (c.f->n) {
        *out = c.f;
        c.f = NULL;
    }
out:
    kz_free(c.scratch);
    kz_filter_free(c.f);
    if (!e && errlen)
        err[0] = '\0';
    return e;
}

/* ==== evaluating ==== */

/* A value found in the event. */
struct val {
    enum vtype t;
    bool b;
    struct num n;
    const char *s; /* V_STR: top-level fields: the bytes; data: the raw JSON string at '"' */
    size_t slen;   /* top-level fields only */
    bool raw;      /* s is raw JSON text (unescape before comparing) */
    const char *end;
};

/* Compares a data key (raw JSON string at p, escapes possible) with a segment. */
static bool key_is(const char *p, const char *end, const char *seg, size_t n, const char **after)
{
    const char *q = p + 1;

    /* fast path: no escapes */
    while (q < end && *q != '"' && *q != '\\')
        q++;
    if (q < end && *q == '"') {
        *after = q + 1;
        return (size_t)(q - p - 1) == n && !memcmp(p + 1, seg, n);
    }
    {
        size_t len = 0;
        char *tmp = kz_malloc((size_t)(end - p) + 1);
        bool same;

        *after = scan_string(p, end, tmp, &len);
        same = *after && len == n && !memcmp(tmp, seg, n);
        kz_free(tmp);
        return same;
    }
}

/* The array index a segment names: canonical decimal digits below 10^9; -1 otherwise. */
static long seg_index(const char *s, size_t n)
{
    long v = 0;
    size_t i;

    if (!n || n > 9 || (n > 1 && s[0] == '0'))
        return -1;
    for (i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* Walks `data` along the segments; *v is V_ABSENT when the path is not there. */
static void resolve_data(const struct cond *cd, const char *p, const char *end, struct val *v)
{
    size_t k;

    for (k = 0; k < cd->nseg; k++) {
        const char *seg = cd->path + cd->segs[k].off;
        size_t sn = cd->segs[k].len;
        bool found = false;

        p = ws(p, end);
        if (p >= end)
            return;
        if (*p == '{') {
            p = ws(p + 1, end);
            while (p < end && *p == '"') {
                const char *after;
                bool same = key_is(p, end, seg, sn, &after);

                if (!after)
                    return;
                p = ws(after, end);
                if (p >= end || *p != ':')
                    return;
                p = ws(p + 1, end);
                if (same) {
                    found = true;
                    break;
                }
                p = skip_value(p, end);
                if (!p)
                    return;
                p = ws(p, end);
                if (p < end && *p == ',')
                    p = ws(p + 1, end);
                else
                    return;
            }
        } else if (*p == '[') {
            long idx = seg_index(seg, sn), i;

            if (idx < 0)
                return;
            p = ws(p + 1, end);
            if (p < end && *p == ']')
                return;
            for (i = 0; i < idx; i++) {
                p = skip_value(p, end);
                if (!p)
                    return;
                p = ws(p, end);
                if (p < end && *p == ',')
                    p = ws(p + 1, end);
                else
                    return;
            }
            found = true;
        }
        if (!found)
            return;
    }
    p = ws(p, end);
    if (p >= end)
        return;
    if (*p == '"') {
        if (!scan_string(p, end, NULL, NULL))
            return;
        v->t = V_STR;
        v->s = p;
        v->raw = true;
        v->end = end;
    } else if (*p == '-' || is_digit(*p)) {
        if (scan_number(p, end, &v->n, false))
            v->t = V_NUM;
    } else if (*p == '{' || *p == '[') {
        v->t = V_OTHER;
    } else if ((size_t)(end - p) >= 4 && !memcmp(p, "true", 4)) {
        v->t = V_BOOL;
        v->b = true;
    } else if ((size_t)(end - p) >= 5 && !memcmp(p, "false", 5)) {
        v->t = V_BOOL;
    } else if ((size_t)(end - p) >= 4 && !memcmp(p, "null", 4)) {
        v->t = V_NULL;
    }
}

static void resolve(const struct cond *cd, const struct kz_filter_event *ev, struct val *v)
{
    const char *s = NULL;

    memset(v, 0, sizeof(*v));
    switch (cd->field) {
    case F_EVENTTYPE:
        s = ev->event_type;
        break;
    case F_FROMUSER:
        s = ev->from_user;
        break;
    case F_FROMUSERID:
        s = ev->from_user_id;
        break;
    case F_FROMUSERNAME:
        s = ev->from_user_name;
        break;
    case F_DATA:
        if (ev->data_json)
            resolve_data(cd, ev->data_json, ev->data_json + ev->data_len, v);
        return;
    }
    if (s) {
        v->t = V_STR;
        v->s = s;
        v->slen = strlen(s);
    }
}

/* -2 when the types differ (no order), else -1, 0, 1. `tmp` receives an unescaped data string. */
static int compare(const struct val *v, const struct lit *l, char **tmp)
{
    const char *s;
    size_t n, m;
    int r;

    if (v->t != l->t)
        return -2;
    switch (v->t) {
    case V_NULL:
        return 0;
    case V_BOOL:
        return v->b == l->b ? 0 : (v->b ? 1 : -1);
    case V_NUM:
        return num_cmp(&v->n, &l->n);
    case V_STR:
        if (v->raw) {
            if (!*tmp)
                *tmp = kz_malloc((size_t)(v->end - v->s) + 1);
            scan_string(v->s, v->end, *tmp, &n);
            s = *tmp;
        } else {
            s = v->s;
            n = v->slen;
        }
        m = n < l->slen ? n : l->slen;
        r = m ? memcmp(s, l->s, m) : 0;
        if (r)
            return r < 0 ? -1 : 1;
        return n == l->slen ? 0 : (n < l->slen ? -1 : 1);
    default:
        return -2;
    }
}

static bool holds(const struct cond *cd, const struct kz_filter_event *ev)
{
    struct val v;
    char *tmp = NULL;
    bool ok = false;
    size_t i;
    int r;

    resolve(cd, ev, &v);
    switch (cd->op) {
    case OP_EXISTS:
        ok = (v.t != V_ABSENT) == cd->exists;
        break;
    case OP_EQ:
        ok = compare(&v, &cd->lits[0], &tmp) == 0;
        break;
    case OP_NE:
        ok = compare(&v, &cd->lits[0], &tmp) != 0;
        break;
    case OP_GT:
    case OP_GTE:
    case OP_LT:
    case OP_LTE:
        r = compare(&v, &cd->lits[0], &tmp);
        if (r == -2)
            break;
        ok = cd->op == OP_GT ? r > 0 : cd->op == OP_GTE ? r >= 0 : cd->op == OP_LT ? r < 0 : r <= 0;
        break;
    case OP_IN:
    case OP_NIN:
        for (i = 0; i < cd->nlits && !ok; i++)
            ok = compare(&v, &cd->lits[i], &tmp) == 0;
        if (cd->op == OP_NIN)
            ok = !ok;
        break;
    }
    kz_free(tmp);
    return ok;
}

bool kz_filter_match(const struct kz_filter *f, const struct kz_filter_event *ev)
{
    size_t i;

    if (!f)
        return true;
    for (i = 0; i < f->n; i++) {
        if (!holds(&f->c[i], ev))
            return false;
    }
    return true;
}
