/* log.h — JSON lines on stderr, one object per line, written with one write(2) so lines from
 * different threads never interleave. Any thread may call. Never pass a secret. */
#ifndef KZ_LOG_H
#define KZ_LOG_H

#include "buf.h"

/** Logs {"ts":..,"level":level,"msg":msg[,fields]}. `fields`, when not NULL, is a printf format
 * producing `"key":value` pairs separated by commas; string values must be escaped by the caller
 * (use kz_log_esc). */
void kz_log(const char *level, const char *msg, const char *fields, ...)
    __attribute__((format(printf, 3, 4)));

/** Copies `s` into `out` (size `n`, n >= 1) with JSON escaping of quotes, backslashes and
 * control characters, truncating safely. Returns `out`. */
const char *kz_log_esc(const char *s, char *out, size_t n);

#endif
