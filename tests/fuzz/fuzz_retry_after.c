/* fuzz_retry_after.c — the Retry-After header a receiver sends back (src/retry.h), plus the
 * retry delay arithmetic it feeds.
 *
 * Input: 8 bytes of `now_ms` (little endian; clamped to 0..year 9999), then the header value up
 * to the first NUL, as a NUL-terminated copy (libcurl hands header values over that way).
 * Checked:
 *  - kz_retry_after_parse() returns -1 or 0..KZ_RETRY_AFTER_MAX_MS;
 *  - an all-digit value (after trimming) is min(value, cap) seconds, computed independently;
 *  - an accepted date is exactly one of the three HTTP-date forms (IMF-fixdate, RFC 850,
 *    asctime): formatting the instant back in that form gives the same bytes after the weekday
 *    (leap second :60 aside; the weekday is not compared with the date), and the result is that
 *    instant minus now, clamped;
 *  - kz_retry_delay_ms() and kz_retry_honour() with a schedule taken from the input stay in
 *    [0.8, 1.2] x the scheduled delay (at least 1, saturating), or the Retry-After capped at the
 *    last entry, and -1 past the last retry. */
#include "fuzz_common.h"

#include "alloc.h"
#include "retry.h"

#include <inttypes.h>
#include <time.h>

#define MAX_NOW INT64_C(253402300799999) /* 9999-12-31T23:59:59.999Z */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static bool ows(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Formats `epoch` (seconds) without its weekday, in the form of the `len`-byte date `b`:
 * IMF-fixdate (29 bytes) ", 06 Nov 1994 08:49:37 GMT", asctime (24) " Nov  6 08:49:37 1994"
 * (the day padded as in `b`), else RFC 850 ", 06-Nov-94 08:49:37 GMT". False outside
 * 0000..9999. */
static bool back(int64_t epoch, const char *b, size_t len, char out[40])
{
    static const char *const mo[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)epoch;
    struct tm tm;

    if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999)
        return false;
    if (len == 29)
        snprintf(out, 40, ", %02d %s %04d %02d:%02d:%02d GMT", tm.tm_mday, mo[tm.tm_mon],
                 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    else if (len == 24 && b[3] == ' ')
        snprintf(out, 40,
                 b[8] == ' ' ? " %s %2d %02d:%02d:%02d %04d" : " %s %02d %02d:%02d:%02d %04d",
                 mo[tm.tm_mon], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_year + 1900);
    else
        snprintf(out, 40, ", %02d-%s-%02d %02d:%02d:%02d GMT", tm.tm_mday, mo[tm.tm_mon],
                 (tm.tm_year + 1900) % 100, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return true;
}

static void check_after(const char *v, int64_t now)
{
    const int64_t cap = KZ_RETRY_AFTER_MAX_MS;
    int64_t r = kz_retry_after_parse(v, now);
    const char *b = v, *e = v + strlen(v), *sec;
    size_t len;

    FUZZ_CHECK(r == -1 || (r >= 0 && r <= cap), "Retry-After \"%.80s\" -> %" PRId64, v, r);
    while (b < e && ows(*b))
        b++;
    while (e > b && ows(e[-1]))
        e--;
    len = (size_t)(e - b);
    if (len && b[0] >= '0' && b[0] <= '9') {
        __int128 secs = 0;
        bool digits = true;
        size_t i;

        for (i = 0; i < len; i++) {
            if (b[i] < '0' || b[i] > '9')
                digits = false;
            else if (secs <= cap)
                secs = secs * 10 + (b[i] - '0');
        }
        if (!digits) {
            FUZZ_CHECK(r == -1, "\"%.80s\" (not all digits) -> %" PRId64, v, r);
        } else {
            __int128 want = secs * 1000 > cap ? cap : secs * 1000;

            FUZZ_CHECK(r == (int64_t)want, "\"%.80s\" -> %" PRId64 ", want %" PRId64, v, r,
                       (int64_t)want);
        }
        return;
    }
    if (r < 0)
        return;
    /* Accepted as a date: one of the three forms, and it names the instant the result gives. */
    FUZZ_CHECK(len == 29 || (len == 24 && b[3] == ' ') || (len >= 30 && len <= 33),
               "date \"%.80s\" of %zu bytes accepted", v, len);
    /* The seconds field: bytes 23-24 of an IMF-fixdate, 17-18 of asctime, 6-5 from the end of
     * RFC 850 (" GMT" ends it). */
    sec = len == 29 ? b + 23 : len == 24 ? b + 17 : b + len - 6;
    if (r > 0 && r < cap && memcmp(sec, "60", 2)) {
        int64_t at = now + r;
        char out[40];
        const char *rest = memchr(b, len == 24 ? ' ' : ',', len);

        FUZZ_CHECK(at % 1000 == 0, "date result %" PRId64 " + now %" PRId64 " is not whole seconds",
                   r, now);
        FUZZ_CHECK(rest && back(at / 1000, b, len, out) &&
                       strlen(out) == len - (size_t)(rest - b) && !memcmp(out, rest, strlen(out)),
                   "\"%.*s\" accepted, but that instant is \"%s\"", (int)len, b, out);
    }
}

static void check_delays(const uint8_t *p, size_t n, int64_t ra)
{
    int64_t sched[8];
    size_t k, cnt = n / 8 > 8 ? 8 : n / 8;
    unsigned retry;

    for (k = 0; k < cnt; k++) {
        uint64_t v;

        memcpy(&v, p + 8 * k, 8);
        sched[k] = (int64_t)(v >> 1) ? (int64_t)(v >> 1) : 1; /* entries are > 0 */
    }
    for (retry = 1; retry <= cnt + 1; retry++) {
        uint32_t rnds[3] = {0, UINT32_MAX, (uint32_t)(retry * 2654435761u)};
        size_t j;

        for (j = 0; j < 3; j++) {
            int64_t d = kz_retry_delay_ms(sched, cnt, retry, rnds[j]);
            int64_t h = kz_retry_honour(sched, cnt, retry, rnds[j], ra);

            if (retry > cnt) {
                FUZZ_CHECK(d == -1 && h == -1, "retry %u of %zu: %" PRId64 " %" PRId64, retry, cnt,
                           d, h);
                continue;
            }
            {
                __int128 base = sched[retry - 1];
                __int128 lo = base * 8 / 10, hi = base * 12 / 10 + 1;

                if (hi > INT64_MAX)
                    hi = INT64_MAX;
                /* Saturation may round a value just under INT64_MAX up to it. */
                if (d == INT64_MAX && hi > (__int128)INT64_MAX - (1 << 20))
                    hi = INT64_MAX;
                FUZZ_CHECK(d >= 1 && ((__int128)d >= lo - 1 || d == 1) && (__int128)d <= hi,
                           "delay %" PRId64 " for base %" PRId64 " rnd %u", d, sched[retry - 1],
                           rnds[j]);
                if (!rnds[j])
                    FUZZ_CHECK(d <= hi && (__int128)d <= base, "%s", "rnd 0 above the base");
            }
            if (ra < 0) {
                FUZZ_CHECK(h == d, "honour without Retry-After %" PRId64 " != %" PRId64, h, d);
            } else {
                int64_t want = ra > sched[cnt - 1] ? sched[cnt - 1] : ra;

                FUZZ_CHECK(h == (want < 1 ? 1 : want), "honour %" PRId64 " for ra %" PRId64, h, ra);
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size, *piece;
    uint64_t raw = 0;
    int64_t now;
    size_t len;
    char *v;

    if (size >= 8) {
        memcpy(&raw, data, 8);
        p += 8;
    }
    now = (int64_t)(raw % (uint64_t)(MAX_NOW + 1));
    piece = fuzz_next_piece(&p, end, &len);
    v = fuzz_cstr(piece, len);
    check_after(v, now);
    check_after(v, 0);
    check_after(v, MAX_NOW);
    FUZZ_CHECK(kz_retry_after_parse(NULL, now) == -1, "%s", "NULL accepted");
    check_delays(p, (size_t)(end - p), kz_retry_after_parse(v, now));
    check_delays(p, (size_t)(end - p), -1);
    free(v);
    return 0;
}
