/* retry.c — retry delays and Retry-After parsing (see retry.h). */
#include "retry.h"

#include <string.h>

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

static bool is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int y, int m, int d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* Parses an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT", exactly 29 bytes) into epoch
 * seconds. */
static bool parse_imf_fixdate(const char *p, size_t len, int64_t *epoch)
{
    static const char wdays[] = "ThuFriSatSunMonTueWed"; /* 1970-01-01 was a Thursday */
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int day, mon, year, hh, mm, ss, wd = -1, i;
    int64_t days;

    if (len != 29 || memcmp(p + 3, ", ", 2) || p[7] != ' ' || p[11] != ' ' || p[16] != ' ' ||
        p[19] != ':' || p[22] != ':' || memcmp(p + 25, " GMT", 4))
        return false;
    for (i = 0; i < 7; i++) {
        if (!memcmp(p, wdays + 3 * i, 3))
            wd = i;
    }
    for (mon = 0; mon < 12; mon++) {
        if (!memcmp(p + 8, months + 3 * mon, 3))
            break;
    }
    if (wd < 0 || mon == 12 || !digits(p + 5, 2, &day) || !digits(p + 12, 4, &year) ||
        !digits(p + 17, 2, &hh) || !digits(p + 20, 2, &mm) || !digits(p + 23, 2, &ss))
        return false;
    if (day < 1 || day > mdays[mon] + (mon == 1 && is_leap(year)) || hh > 23 || mm > 59 || ss > 60)
        return false;
    days = days_from_civil(year, mon + 1, day);
    /* ((days % 7) + 7) % 7 is the weekday with 0 = Thursday, for dates before 1970 too. */
    if ((int)(((days % 7) + 7) % 7) != wd)
        return false;
    *epoch = days * 86400 + hh * 3600 + mm * 60 + ss;
    return true;
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
    if (!parse_imf_fixdate(b, (size_t)(e - b), &epoch))
        return -1;
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
