/* fuzz_filter.c — webhook event filters (src/filter.h): the compiler on any bytes, the evaluator
 * on any event data, and the exact number order.
 *
 * Input: pieces separated by NUL bytes: the filter text, the event's data text, then two
 * literals A and B. Each piece is copied into a buffer of exactly its length (no terminator), so
 * ASan sees any read past it.
 * Checked:
 *  - kz_filter_compile(): a success has 0..KZ_FILTER_CONDS_MAX conditions (an empty filter is
 *    NULL); a refusal leaves *out NULL and says why in a message that starts with "filter";
 *    text over KZ_FILTER_MAX bytes is always refused;
 *  - kz_filter_match(): never reads outside the data, gives the same answer twice;
 *  - order: for data {"a":A} and the filters {"data.a":{"$lt":B}}, {"data.a":B},
 *    {"data.a":{"$gt":B}}, at most one holds, and exactly one when A and B are both numbers or
 *    both strings; $gt with (A, B) agrees with $lt with (B, A);
 *  - no allocation is left behind (kz_alloc_live() is back to where it started). */
#include "fuzz_common.h"

#include <jansson.h>

#include "alloc.h"
#include "filter.h"
#include "model.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static char *exact(const uint8_t *p, size_t n)
{
    char *s = malloc(n ? n : 1);

    if (!s)
        abort();
    if (n)
        memcpy(s, p, n);
    return s;
}

/* Compiles `text` (must be valid as a filter to count) and evaluates it on `data`. Returns -1
 * when it does not compile, else 0/1. */
static int eval(const char *text, size_t tlen, const char *data, size_t dlen)
{
    struct kz_filter *f = NULL;
    struct kz_filter_event ev;
    char err[256];
    int r;

    if (kz_filter_compile(text, tlen, &f, err, sizeof(err)))
        return -1;
    memset(&ev, 0, sizeof(ev));
    ev.event_type = "SurveyResponse";
    ev.from_user = "+15550100";
    ev.from_user_id = "u1";
    ev.data_json = data;
    ev.data_len = dlen;
    r = kz_filter_match(f, &ev);
    FUZZ_CHECK(r == (int)kz_filter_match(f, &ev), "two evaluations differ");
    kz_filter_free(f);
    return r;
}

/* Holds `op` ("$lt", "" for equality, "$gt") with data {"a":x} against literal y? -1 when the
 * filter does not compile (y is not a literal). */
static int order(const char *op, const uint8_t *x, size_t xn, const uint8_t *y, size_t yn)
{
    char *text = malloc(yn + 32), *data = malloc(xn + 8);
    size_t tl, dl;
    int r;

    if (!text || !data)
        abort();
    tl = (size_t)snprintf(text, 32, *op ? "{\"data.a\":{\"%s\":" : "{\"data.a\":", op);
    memcpy(text + tl, y, yn);
    tl += yn;
    memcpy(text + tl, *op ? "}}" : "}", *op ? 2 : 1);
    tl += *op ? 2 : 1;
    memcpy(data, "{\"a\":", 5);
    memcpy(data + 5, x, xn);
    memcpy(data + 5 + xn, "}", 1);
    dl = xn + 6;
    {
        char *t = exact((const uint8_t *)text, tl), *d = exact((const uint8_t *)data, dl);

        r = eval(t, tl, d, dl);
        free(t);
        free(d);
    }
    free(text);
    free(data);
    return r;
}

/* p[0..n) is exactly one JSON value; a number too big for a double (which the filter keeps
 * exactly) counts when it is made of number characters only */
static bool one_value(const uint8_t *p, size_t n)
{
    json_error_t e;
    json_t *v = json_loadb((const char *)p, n, JSON_DECODE_ANY, &e);
    size_t i;

    json_decref(v);
    if (v)
        return true;
    for (i = 0; i < n; i++) {
        if (!strchr("0123456789+-.eE", p[i]) || !p[i])
            return false;
    }
    return n > 0;
}

static bool is_number_literal(const uint8_t *p, size_t n)
{
    return n && (p[0] == '-' || (p[0] >= '0' && p[0] <= '9'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    const uint8_t *ft, *dt, *a, *b;
    size_t fn, dn, an, bn;
    int64_t live = kz_alloc_live();
    struct kz_filter *f = (struct kz_filter *)1;
    char err[256];
    char *text, *dtext;
    enum kz_err e;

    ft = fuzz_next_piece(&p, end, &fn);
    dt = fuzz_next_piece(&p, end, &dn);
    a = fuzz_next_piece(&p, end, &an);
    b = fuzz_next_piece(&p, end, &bn);
    text = exact(ft, fn);
    dtext = exact(dt, dn);
    e = kz_filter_compile(text, fn, &f, err, sizeof(err));
    if (e) {
        FUZZ_CHECK(e == KZ_ERR_INVALID, "compile returned %d", (int)e);
        FUZZ_CHECK(!f, "a refused filter was returned");
        FUZZ_CHECK(!strncmp(err, "filter", 6), "message \"%s\"", err);
    } else {
        FUZZ_CHECK(fn <= KZ_FILTER_MAX, "%zu bytes accepted", fn);
        FUZZ_CHECK(kz_filter_conditions(f) <= KZ_FILTER_CONDS_MAX, "%zu conditions",
                   kz_filter_conditions(f));
        FUZZ_CHECK(!f == !kz_filter_conditions(f), "an empty filter must be NULL");
        kz_filter_free(f);
        (void)eval(text, fn, dtext, dn);
    }
    free(text);
    free(dtext);
    if (an && bn && an < 512 && bn < 512) {
        int lt = order("$lt", a, an, b, bn), eq = order("", a, an, b, bn);
        int gt = order("$gt", a, an, b, bn);

        if (lt >= 0 && eq >= 0 && gt >= 0) {
            FUZZ_CHECK(lt + eq + gt <= 1, "lt %d eq %d gt %d", lt, eq, gt);
            /* two valid numbers, A also valid as data: exactly one relation */
            if (is_number_literal(a, an) && is_number_literal(b, bn) &&
                order("$exists", a, an, (const uint8_t *)"true", 4) == 1 &&
                order("", b, bn, b, bn) == 1 && order("", a, an, a, an) == 1)
                FUZZ_CHECK(lt + eq + gt == 1, "numbers: lt %d eq %d gt %d", lt, eq, gt);
            /* only when each piece is one JSON value: `0.1,"$gte":1000` spliced after "$lt":
             * adds conditions of its own, and the two sides no longer mirror each other */
            if (one_value(a, an) && one_value(b, bn) && order("$lt", b, bn, a, an) >= 0)
                FUZZ_CHECK(gt == order("$lt", b, bn, a, an), "$gt(A,B) != $lt(B,A)");
        }
    }
    FUZZ_CHECK(kz_alloc_live() == live, "%lld allocations left",
               (long long)(kz_alloc_live() - live));
    return 0;
}
