/* log.h — JSON lines on stderr, one object per line, written with one write(2) so lines from
 * different threads never interleave. Any thread may call. Never pass a secret. */
#ifndef KZ_LOG_H
#define KZ_LOG_H

#include "buf.h"

/** Longest line written, newline excluded. */
#define KZ_LOG_LINE_MAX 8192

/** Logs {"ts":..,"level":level,"msg":msg[,fields]}. `fields`, when not NULL, is a printf format
 * producing `"key":value` pairs separated by commas; string values must be escaped by the caller
 * (use kz_log_esc). Every line is one valid JSON object with unique keys, whatever the caller
 * passes: fields that would make the line longer than KZ_LOG_LINE_MAX are dropped whole and
 * `"truncated":true` is added (a value is never cut); a field named ts, level, msg or truncated
 * is written as "field.<name>"; a fragment that is not valid JSON members (a forgotten escape,
 * a repeated key) is kept as the string value of "fields". */
void kz_log(const char *level, const char *msg, const char *fields, ...)
    __attribute__((format(printf, 3, 4)));

/** Copies `s` into `out` (size `n`, n >= 1) with JSON escaping of quotes, backslashes and
 * control characters, and bytes that are not UTF-8 as \ufffd, truncating safely between
 * characters (never inside an escape or a UTF-8 sequence). Returns `out`. */
const char *kz_log_esc(const char *s, char *out, size_t n);

#endif
