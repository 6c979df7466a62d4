/* fuzz_dur.c — durations from the command line and the environment (src/dur.h).
 *
 * Input: the text, up to its first NUL, as a NUL-terminated copy (operators type these). The
 * first byte also picks the `max` of kz_dur_list_parse(), whose output array is allocated with
 * exactly `max` entries so that ASan sees any write past it.
 * Checked:
 *  - kz_dur_parse(): a result is 0..KZ_DUR_MAX_MS; it equals an independent reading of the
 *    grammar ("<digits><unit>" components, units d h m s ms strictly decreasing, no signs or
 *    spaces); *ms is untouched on error; the canonical spelling of the result parses back to it;
 *  - kz_dur_list_parse(): accepts exactly when every comma-separated entry, trimmed of spaces
 *    and tabs, parses to a value > 0 and there are at most `max` of them; the values match
 *    kz_dur_parse() of each entry; *n is untouched on error. */
#include "fuzz_common.h"

#include "alloc.h"
#include "dur.h"

#include <inttypes.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

/* The grammar of dur.h, written independently: returns false for anything it rejects. */
static bool ref_parse(const char *s, size_t len, int64_t *out)
{
    static const struct {
        const char *name;
        int64_t ms;
    } units[] = {{"ms", 1}, {"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    __int128 total = 0;
    int64_t last = INT64_MAX;
    size_t i = 0, u;

    if (!len)
        return false;
    while (i < len) {
        __int128 num = 0;
        size_t start = i;

        while (i < len && s[i] >= '0' && s[i] <= '9') {
            if (num < ((__int128)1 << 64)) /* past that it is far over the cap anyway */
                num = num * 10 + (s[i] - '0');
            i++;
        }
        if (i == start)
            return false;
        for (u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
            size_t ul = strlen(units[u].name);

            if (len - i >= ul && !memcmp(s + i, units[u].name, ul))
                break;
        }
        if (u == sizeof(units) / sizeof(units[0]) || units[u].ms >= last)
            return false;
        last = units[u].ms;
        i += strlen(units[u].name);
        total += num * units[u].ms;
        if (total > KZ_DUR_MAX_MS)
            return false;
    }
    *out = (int64_t)total;
    return true;
}

/* Canonical spelling: largest units first, zero components left out, "0s" for zero. */
static void spell(int64_t ms, char *buf, size_t n)
{
    static const struct {
        const char *name;
        int64_t ms;
    } units[] = {{"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1}};
    size_t i, off = 0;

    buf[0] = '\0';
    if (!ms) {
        snprintf(buf, n, "0s");
        return;
    }
    for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        int64_t q = ms / units[i].ms;

        if (!q)
            continue;
        ms -= q * units[i].ms;
        off += (size_t)snprintf(buf + off, n - off, "%" PRId64 "%s", q, units[i].name);
    }
}

static bool blank(char c)
{
    return c == ' ' || c == '\t';
}

static void check_list(const char *s, size_t max)
{
    int64_t *out = malloc((max ? max : 1) * sizeof(*out));
    size_t n = 777, count = 0;
    const char *p = s;
    bool ok = true;
    enum kz_err e, want = KZ_OK;

    if (!out)
        abort();
    e = kz_dur_list_parse(s, max ? out : NULL, max, &n);
    /* The reference: split at commas, trim, parse each. */
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *b = p, *end = comma ? comma : p + strlen(p);
        int64_t v, v2 = -1;

        while (b < end && blank(*b))
            b++;
        while (end > b && blank(end[-1]))
            end--;
        if (!ref_parse(b, (size_t)(end - b), &v) || v <= 0) {
            ok = false;
            want = KZ_ERR_INVALID;
            break;
        }
        if (count == max) {
            ok = false;
            want = KZ_ERR_TOOBIG;
            break;
        }
        if (!e) {
            char *entry = fuzz_cstr((const uint8_t *)b, (size_t)(end - b));

            FUZZ_CHECK(!kz_dur_parse(entry, &v2) && v2 == v && out[count] == v,
                       "entry %zu \"%s\": list %" PRId64 ", parse %" PRId64 ", ref %" PRId64, count,
                       entry, out[count], v2, v);
            free(entry);
        }
        count++;
        if (!comma)
            break;
        p = comma + 1;
    }
    FUZZ_CHECK(e == want, "kz_dur_list_parse(\"%.200s\", max %zu) = %d, reference %d", s, max, e,
               want);
    if (ok)
        FUZZ_CHECK(n == count && n >= 1 && n <= max, "n=%zu, reference %zu", n, count);
    else
        FUZZ_CHECK(n == 777, "%s", "*n written on error");
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *piece;
    size_t len;
    char *s, back[128];
    int64_t ms = -12345, ref = 0, again = -1;
    enum kz_err e;
    bool ok;

    piece = fuzz_next_piece(&p, data + size, &len);
    s = fuzz_cstr(piece, len);
    e = kz_dur_parse(s, &ms);
    ok = ref_parse(s, strlen(s), &ref);
    FUZZ_CHECK(!e == ok, "kz_dur_parse(\"%.200s\") = %d, reference %s", s, e,
               ok ? "accepts" : "rejects");
    if (!e) {
        FUZZ_CHECK(ms >= 0 && ms <= KZ_DUR_MAX_MS && ms == ref,
                   "\"%.200s\" -> %" PRId64 ", reference %" PRId64, s, ms, ref);
        spell(ms, back, sizeof(back));
        FUZZ_CHECK(!kz_dur_parse(back, &again) && again == ms,
                   "%" PRId64 " spelled \"%s\" parses to %" PRId64, ms, back, again);
    } else {
        FUZZ_CHECK(ms == -12345, "%s", "*ms written on error");
    }
    check_list(s, size ? (data[0] % 34) : 6);
    check_list(s, 32);
    free(s);
    FUZZ_CHECK(kz_dur_parse(NULL, &ms) == KZ_ERR_INVALID, "%s", "NULL accepted");
    return 0;
}
