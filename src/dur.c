/* dur.c — duration parsing (see dur.h). */
#include "dur.h"

#include <string.h>

struct unit {
    const char *name;
    size_t len;
    int64_t ms;
};

/* In matching order: "ms" must be tried before "m". Components must use strictly decreasing
 * units, which is checked by comparing their sizes, not their place in this table. */
static const struct unit units[] = {
    {"d", 1, 86400000}, {"h", 1, 3600000}, {"ms", 2, 1}, {"m", 1, 60000}, {"s", 1, 1000},
};

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Parses exactly the `len` bytes at `p`. */
static enum kz_err parse_span(const char *p, size_t len, int64_t *ms)
{
    size_t i = 0, u;
    int64_t last_unit = INT64_MAX;
    int64_t total = 0;

    if (!len)
        return KZ_ERR_INVALID;
    while (i < len) {
        int64_t num = 0;
        size_t start = i;

        while (i < len && is_digit(p[i])) {
            /* Anything above the cap is invalid anyway; stop before num can overflow. */
            if (num > KZ_DUR_MAX_MS)
                return KZ_ERR_INVALID;
            num = num * 10 + (p[i] - '0');
            i++;
        }
        if (i == start || i == len)
            return KZ_ERR_INVALID;
        for (u = 0; u < KZ_ARRAY_LEN(units); u++) {
            if (len - i >= units[u].len && !memcmp(p + i, units[u].name, units[u].len))
                break;
        }
        if (u == KZ_ARRAY_LEN(units) || units[u].ms >= last_unit)
            return KZ_ERR_INVALID;
        last_unit = units[u].ms;
        i += units[u].len;
        if (num > (KZ_DUR_MAX_MS - total) / units[u].ms)
            return KZ_ERR_INVALID;
        total += num * units[u].ms;
    }
    *ms = total;
    return KZ_OK;
}

enum kz_err kz_dur_parse(const char *s, int64_t *ms)
{
    if (!s)
        return KZ_ERR_INVALID;
    return parse_span(s, strlen(s), ms);
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

enum kz_err kz_dur_list_parse(const char *s, int64_t *out, size_t max, size_t *n)
{
    size_t count = 0;
    const char *p;

    if (!s)
        return KZ_ERR_INVALID;
    p = s;
    for (;;) {
        const char *end = strchr(p, ',');
        const char *b = p;
        const char *e = end ? end : p + strlen(p);
        int64_t v;

        while (b < e && is_blank(*b))
            b++;
        while (e > b && is_blank(e[-1]))
            e--;
        if (parse_span(b, (size_t)(e - b), &v) || v <= 0)
            return KZ_ERR_INVALID;
        if (count == max)
            return KZ_ERR_TOOBIG;
        out[count++] = v;
        if (!end)
            break;
        p = end + 1;
    }
    *n = count;
    return KZ_OK;
}
