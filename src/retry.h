/* retry.h — when to try a failed delivery again. Pure: no clock and no randomness inside; the
 * caller passes `now_ms` and a uniformly random `rnd`. Any thread may call.
 *
 * `schedule[0..n-1]` holds the delays before retry 1..n (from --retry-schedule, each > 0).
 * Retry k is the (k+1)-th attempt; after retry n fails the delivery is dead.
 */
#ifndef KZ_RETRY_H
#define KZ_RETRY_H

#include "kz.h"

/** Longest Retry-After honoured when parsing: 10 years (365-day years), in milliseconds. */
#define KZ_RETRY_AFTER_MAX_MS ((int64_t)10 * 365 * 24 * 60 * 60 * 1000)

/**
 * Delay in milliseconds before retry number `retry` (counting from 1; 0 is a programmer error).
 * Returns -1 when `retry` > `n`: no retry is left and the delivery is dead. Otherwise returns
 * schedule[retry - 1] scaled by a jitter factor spread uniformly over [0.8, 1.2] by the top 16
 * bits of `rnd` (rnd 0 gives exactly 0.8x, rnd UINT32_MAX exactly 1.2x), rounded down, at
 * least 1, and saturating at INT64_MAX. Jitter keeps deliveries that failed together from
 * hitting a recovering receiver together.
 */
int64_t kz_retry_delay_ms(const int64_t *schedule, size_t n, unsigned retry, uint32_t rnd);

/**
 * Parses the value of a Retry-After response header into milliseconds from `now_ms` (epoch ms):
 *  - delta-seconds: ASCII digits only, capped at KZ_RETRY_AFTER_MAX_MS ("120" -> 120000);
 *  - an HTTP-date in any of the three forms of RFC 9110 section 5.6.7, read by libcurl's
 *    curl_getdate() after an exact shape check (names case-sensitive, GMT only, the day must
 *    exist in its month, four-digit years from 1583; the weekday is not compared with the date):
 *    IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT", RFC 850 "Sunday, 06-Nov-94 08:49:37 GMT"
 *    (two-digit years as curl_getdate() reads them) and asctime "Sun Nov  6 08:49:37 1994".
 *    The result is the time left until then, 0 when it has passed, capped at
 *    KZ_RETRY_AFTER_MAX_MS. No clock is read: curl_getdate() ignores its `now` argument.
 * Leading and trailing spaces, tabs, CR and LF are ignored. Returns -1 for NULL, an empty value
 * or anything else (negative numbers, fractions, other date shapes).
 */
int64_t kz_retry_after_parse(const char *value, int64_t now_ms);

/**
 * Delay before retry `retry` (from 1) after a failed attempt whose response carried a parsed
 * Retry-After of `retry_after_ms` (-1 when absent or invalid). Returns -1 when `retry` > `n`
 * (dead, whatever the receiver asked). With a Retry-After (>= 0): that value capped at the last
 * (longest) schedule entry, at least 1, no jitter. Without: kz_retry_delay_ms().
 */
int64_t kz_retry_honour(const int64_t *schedule, size_t n, unsigned retry, uint32_t rnd,
                        int64_t retry_after_ms);

#endif
