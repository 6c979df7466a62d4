/* retry.c — retry delays and Retry-After parsing (see retry.h). */
#include "retry.h"

#include <curl/curl.h>
#include <string.h>
#include <time.h>

/* Jitter resolution: the factor is (4 * J + 2 * r) / (5 * J) with r = rnd >> 16 in 0..J, so
 * r = 0 gives 0.8 and r = J gives 1.2, and every product below fits in int64_t. */
#define JITTER_STEPS 65535

int64_t kz_retry_delay_ms(const int64_t *schedule, size_t n, unsigned retry, uint32_t rnd)
{
    const int64_t den = 5 * (int64_t)JITTER_STEPS;
    int64_t base, num, q, delay;

    KZ_ASSERT(retry >= 1);
    if (retry > n)
        return -1;
    base = schedule[retry - 1];
    if (base <= 0)
        return 1;
    num = 4 * (int64_t)JITTER_STEPS + 2 * (int64_t)(rnd >> 16);
    /* base * num / den without overflowing: split base = q * den + r. */
    q = base / den;
    if (q > (INT64_MAX - num) / num)
        return INT64_MAX;
    delay = q * num + (base % den) * num / den;
    return delay < 1 ? 1 : delay;
}

/* ==== Retry-After ==== */

static bool is_ows(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Reads exactly `n` digits at `p` into `*v`. */
static bool digits(const char *p, size_t n, int *v)
{
    size_t i;

    *v = 0;
    for (i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        *v = *v * 10 + (p[i] - '0');
    }
    return true;
}

/* Index (0 = first) of the 3-letter name at `p` in `names` (3 * count letters), or -1. */
static int name3(const char *names, int count, const char *p)
{
    int i;

    for (i = 0; i < count; i++) {
        if (!memcmp(p, names + 3 * i, 3))
            return i;
    }
    return -1;
}

/* Checks that `p` (`len` bytes, trimmed) has exactly the shape of one of the three HTTP-date
 * forms of RFC 9110 section 5.6.7, with real day and month names and a day that exists in that
 * month; libcurl's curl_getdate() then reads it. curl_getdate() alone is far more lenient
 * ("06 Nov 1994", "1994-11-06", any time zone, "Feb 30" rolled into March, "0099" read as a
 * two-digit year), so the shape is checked first. The weekday must be a weekday name but, as
 * in curl_getdate(), need not match the date. Ranges of the time fields are curl_getdate()'s.
 *   IMF-fixdate  "Sun, 06 Nov 1994 08:49:37 GMT"
 *   RFC 850      "Sunday, 06-Nov-94 08:49:37 GMT"  (two-digit year: curl_getdate's century)
 *   asctime      "Sun Nov  6 08:49:37 1994"        (day padded with a space or a zero) */
static bool http_date_shape(const char *p, size_t len)
{
    static const char wdays[] = "SunMonTueWedThuFriSat";
    static const char *const wlong[] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                        "Thursday", "Friday", "Saturday"};
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const char *tp; /* "HH:MM:SS" */
    int day = 0, mon, year = 0, v, i;
    bool ok;

    if (len == 29) { /* IMF-fixdate */
        ok = name3(wdays, 7, p) >= 0 && !memcmp(p + 3, ", ", 2) && digits(p + 5, 2, &day) &&
             p[7] == ' ' && p[11] == ' ' && digits(p + 12, 4, &year) && p[16] == ' ' &&
             !memcmp(p + 25, " GMT", 4);
        mon = name3(months, 12, p + 8);
        tp = p + 17;
    } else if (len == 24 && p[3] == ' ') { /* asctime */
        ok = name3(wdays, 7, p) >= 0 && p[7] == ' ' && p[10] == ' ' && p[19] == ' ' &&
             digits(p + 20, 4, &year) &&
             (p[8] == ' ' ? digits(p + 9, 1, &day) : digits(p + 8, 2, &day));
        mon = name3(months, 12, p + 4);
        tp = p + 11;
    } else { /* RFC 850 */
        size_t n = 0;

        for (i = 0; i < 7 && !n; i++) {
            if (len == strlen(wlong[i]) + 24 && !memcmp(p, wlong[i], strlen(wlong[i])))
                n = strlen(wlong[i]);
        }
        if (!n)
            return false;
        p += n;
        ok = !memcmp(p, ", ", 2) && digits(p + 2, 2, &day) && p[4] == '-' && p[8] == '-' &&
             digits(p + 9, 2, &year) && p[11] == ' ' && !memcmp(p + 20, " GMT", 4);
        year += 2000; /* for the leap-year test only; of 1900 and 2000 only 2000 would matter */
        mon = name3(months, 12, p + 5);
        tp = p + 12;
    }
    if (!ok || mon < 0 || day < 1 || day > mdays[mon])
        return false;
    if (mon == 1 && day == 29 && !((year % 4 == 0 && year % 100 != 0) || year % 400 == 0))
        return false;
    /* curl_getdate() reads a four-digit year below 100 as a two-digit one ("0099" as 1999) and
     * refuses years before 1583: refuse them all here, so an accepted year means what it says. */
    if (year < 1583)
        return false;
    return tp[2] == ':' && tp[5] == ':' && digits(tp, 2, &v) && digits(tp + 3, 2, &v) &&
           digits(tp + 6, 2, &v);
}

int64_t kz_retry_after_parse(const char *value, int64_t now_ms)
{
    const int64_t cap_s = KZ_RETRY_AFTER_MAX_MS / 1000;
    const char *b, *e;
    int64_t secs = 0, epoch, delta;

    if (!value)
        return -1;
    b = value;
    e = value + strlen(value);
    while (b < e && is_ows(*b))
        b++;
    while (e > b && is_ows(e[-1]))
        e--;
    if (b == e)
        return -1;
    if (*b >= '0' && *b <= '9') {
        for (; b < e; b++) {
            if (*b < '0' || *b > '9')
                return -1;
            if (secs <= cap_s)
                secs = secs * 10 + (*b - '0');
        }
        return (secs > cap_s ? cap_s : secs) * 1000;
    }
    if (!http_date_shape(b, (size_t)(e - b)))
        return -1;
    /* The value is trimmed, shape-checked and ends at `e`: copy it to terminate it there. A
     * date is at most 33 bytes ("Wednesday, 09-Nov-94 08:49:37 GMT"). curl_getdate() reads no
     * clock for an absolute date (its second argument is unused), so this stays pure. */
    {
        char tmp[40];
        time_t t;

        memcpy(tmp, b, (size_t)(e - b));
        tmp[e - b] = '\0';
        t = curl_getdate(tmp, NULL);
        if (t == -1)
            return -1;
        epoch = (int64_t)t;
    }
    /* Dates are whole seconds; compare in seconds first so that no product can overflow. */
    if (epoch > now_ms / 1000 + cap_s + 1)
        return KZ_RETRY_AFTER_MAX_MS;
    delta = epoch * 1000 - now_ms;
    if (delta < 0)
        return 0;
    return delta > KZ_RETRY_AFTER_MAX_MS ? KZ_RETRY_AFTER_MAX_MS : delta;
}

int64_t kz_retry_honour(const int64_t *schedule, size_t n, unsigned retry, uint32_t rnd,
                        int64_t retry_after_ms)
{
    int64_t cap;

    KZ_ASSERT(retry >= 1);
    if (retry > n)
        return -1;
    if (retry_after_ms < 0)
        return kz_retry_delay_ms(schedule, n, retry, rnd);
    cap = schedule[n - 1];
    if (retry_after_ms > cap)
        retry_after_ms = cap;
    return retry_after_ms < 1 ? 1 : retry_after_ms;
}
