/* json.h — lenient reading and compact writing of JSON over jansson.
 *
 * Kaizala's .NET server read request bodies leniently: property names match case-insensitively,
 * booleans may arrive as "true"/"false" strings and numbers as numeric strings. These helpers
 * reproduce that, and nothing more lenient: every accessor rejects what it cannot read exactly.
 *
 * Pure functions over jansson values: no I/O, no globals. Any thread may call them, provided no
 * other thread mutates the same json_t meanwhile (jansson values are not thread-safe).
 */
#ifndef KZ_JSON_H
#define KZ_JSON_H

#include "kz.h"
#include "buf.h"

#include <jansson.h>

/**
 * Member `name` of the object `obj`, matched case-insensitively over ASCII letters only (the
 * way .NET's OrdinalIgnoreCase did for the names we use). An exact-case match wins when present;
 * otherwise the first case-insensitive match in the object's insertion order is returned.
 * Returns NULL when `obj` is NULL or not an object, or when no key matches.
 * The result is borrowed from `obj`: do not json_decref() it; it lives as long as `obj` does.
 */
json_t *kz_json_get(const json_t *obj, const char *name);

/**
 * Reads a boolean: JSON true/false, or a string equal to "true"/"false" ignoring ASCII case.
 * On success stores it in `*out` and returns KZ_OK. Anything else (NULL, null, numbers, "1",
 * "yes", " true", strings with an embedded NUL) returns KZ_ERR_INVALID and leaves `*out` alone.
 */
enum kz_err kz_json_bool(const json_t *v, bool *out);

/**
 * Reads a signed 64-bit integer from:
 *  - a JSON integer;
 *  - a JSON real that is integral and inside [INT64_MIN, INT64_MAX] (1e3 -> 1000, 1.5 -> error);
 *  - a JSON string of an optional '-' followed by 1..19 ASCII digits, nothing else (no spaces,
 *    no '+', no exponent), whose value fits in int64_t.
 * On success stores the value in `*out` and returns KZ_OK; otherwise KZ_ERR_INVALID and `*out`
 * is untouched.
 */
enum kz_err kz_json_i64(const json_t *v, int64_t *out);

/**
 * Reads a non-empty string: `v` must be a JSON string of 1..`maxlen` bytes without an embedded
 * NUL byte. On success `*out` points at jansson's NUL-terminated copy (borrowed from `v`, valid
 * while `v` lives and is not modified) and, when `len` is not NULL, `*len` is its length.
 * Otherwise returns KZ_ERR_INVALID and leaves `*out` and `*len` alone.
 */
enum kz_err kz_json_str(const json_t *v, size_t maxlen, const char **out, size_t *len);

/**
 * Length of the UTF-8 byte-order mark (EF BB BF) at the start of `body`: 3, or 0 when there is
 * none (or `len` < 3). .NET's readers skipped it, so Kaizala clients may send one; every parse
 * and raw lookup below ignores it. Pure; any thread.
 */
size_t kz_json_bom(const char *body, size_t len);

/**
 * Parses `len` bytes at `body` (need not be NUL-terminated; `body` may be NULL when `len` is 0).
 * A leading UTF-8 byte-order mark is skipped (only there: anywhere else it is an error). Duplicate
 * keys, trailing non-whitespace after the value, "\u0000" inside strings, and a top
 * level that is not an object or array are all rejected. Returns a new reference the caller
 * must json_decref(), or NULL on failure. On failure, when `err` is not NULL and `errlen` > 0,
 * writes a short NUL-terminated human message with line and column into `err` (truncated to
 * `errlen`); on success `err` is left untouched.
 */
json_t *kz_json_parse(const char *body, size_t len, char *err, size_t errlen);

/**
 * As kz_json_parse, but integers of any size are read as reals, so a document whose numbers
 * do not fit 64 bits is still accepted (the caller then takes such values verbatim with
 * kz_json_raw_member rather than from the parsed tree).
 */
json_t *kz_json_parse_lenient_numbers(const char *body, size_t len, char *err, size_t errlen);

/**
 * Finds, in the JSON text `doc` (already validated by kz_json_parse*; a leading byte-order mark is
 * skipped), the bytes of the value of member `key` of the top-level object (`index` < 0) or of
 * element `index` of the top-level array. The key matches as kz_json_get does: exact case first,
 * else the first ASCII case-insensitive match (keys containing escapes never match). On success
 * `*out` points into `doc` at the value exactly as written (no surrounding whitespace) and KZ_OK is
 * returned; KZ_ERR_NOTFOUND otherwise. Pure; any thread.
 */
enum kz_err kz_json_raw_member(const char *doc, size_t len, long index, const char *key,
                               struct kz_str *out);

/**
 * As kz_json_raw_member, for the object that starts at byte `offset` of `doc` (whitespace
 * before it is skipped). With kz_json_array_offsets, each element of a large array is found
 * in time proportional to its own size rather than to its index.
 */
enum kz_err kz_json_raw_member_at(const char *doc, size_t len, size_t offset, const char *key,
                                  struct kz_str *out);

/**
 * Byte offsets (from the start of `doc`, byte-order mark included) of the first `n` elements of
 * the top-level array of the validated JSON text `doc`. KZ_ERR_NOTFOUND when `doc` is not an array
 * or has fewer elements. Pure; any thread.
 */
enum kz_err kz_json_array_offsets(const char *doc, size_t len, size_t *offs, size_t n);

/**
 * Appends the valid JSON text `v` to `out` without the whitespace between tokens; everything
 * else (numbers, escapes, key order) is copied verbatim. KZ_ERR_TOOBIG if over out->max.
 */
enum kz_err kz_json_minify(struct kz_str v, struct kz_buf *out);

/**
 * Appends the compact serialization of `v` (any JSON value, keys in insertion order, no
 * whitespace) to `out`. Returns KZ_OK; KZ_ERR_TOOBIG when the result would take `out` past the
 * limit given to kz_buf_init(); KZ_ERR_INVALID when jansson cannot encode `v` (NULL, or a string
 * that is not valid UTF-8). On any error `out` holds exactly what it held before the call.
 */
enum kz_err kz_json_dump(const json_t *v, struct kz_buf *out);

#endif
