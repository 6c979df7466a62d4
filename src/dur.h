/* dur.h — human durations for configuration ("15s", "1h30m") and lists of them
 * ("1m,10m,1h"). Pure functions; any thread may call them.
 */
#ifndef KZ_DUR_H
#define KZ_DUR_H

#include "kz.h"

/** Largest duration accepted: 100 years of 365.25 days, in milliseconds. */
#define KZ_DUR_MAX_MS ((int64_t)36525 * 24 * 60 * 60 * 1000)

/**
 * Parses a duration into milliseconds. Grammar: one or more `<digits><unit>` components with
 * units, in strictly decreasing order, from `d` (day = 24 h), `h`, `m` (minute), `s`, `ms`:
 * "500ms", "15s", "10m", "7d", "1h30m", "1d2h3m4s5ms". Units are lower case. A bare number
 * ("15"), an empty string, signs, spaces, fractions ("1.5h"), repeated or out-of-order units
 * ("1m1m", "30m1h"), unknown units, and totals above KZ_DUR_MAX_MS all return KZ_ERR_INVALID
 * and leave `*ms` untouched. "0s" is valid and yields 0. On success stores the total in `*ms`.
 */
enum kz_err kz_dur_parse(const char *s, int64_t *ms);

/**
 * Parses a comma-separated list of durations, such as "1m,10m, 1h ,4h". Spaces and tabs are
 * allowed around each entry. Every entry must parse with kz_dur_parse() and be > 0.
 * On success writes the entries to `out[0..*n-1]` and their count (1..`max`) to `*n`.
 * Errors: KZ_ERR_INVALID for NULL, an empty list, an empty entry (",,", a trailing comma), or
 * an entry that is invalid or zero; KZ_ERR_TOOBIG when there are more than `max` entries.
 * On error `*n` is untouched and `out` may have been partly overwritten.
 */
enum kz_err kz_dur_list_parse(const char *s, int64_t *out, size_t max, size_t *n);

#endif
