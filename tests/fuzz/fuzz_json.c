/* fuzz_json.c — the lenient Kaizala JSON reader (src/json.h) on arbitrary bytes.
 *
 * Input: the raw request body. The first byte also picks the size of the error buffer, so the
 * truncation of kz_json_parse()'s message is exercised at every length, including 0 and 1.
 * Checked for every parsed document, recursively (bounded):
 *  - kz_json_get() with each member's exact name returns that member; with the name upper- or
 *    lower-cased it returns a member whose name matches ASCII-case-insensitively;
 *  - kz_json_bool/i64/str accept exactly what json.h documents and leave *out alone on error;
 *  - kz_json_dump() output re-parses to an equal value; with a tight limit it fails with
 *    KZ_ERR_TOOBIG and leaves the buffer byte-for-byte as it was;
 *  - on failure the message is NUL-terminated within the buffer; on success the buffer is
 *    untouched; kz_json_parse_lenient_numbers() accepts whatever kz_json_parse() does. Every kz_malloc is freed again (kz_alloc_live() back to its start value). */
#include "fuzz_common.h"

#include "alloc.h"
#include "json.h"

#include <errno.h>
#include <inttypes.h>

#define MAX_DEPTH 8
#define MAX_VISITS 2000

static int visits;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    json_set_alloc_funcs(kz_malloc, kz_free); /* as main() does: jansson counts in kz_alloc_live */
    return 0;
}

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static int upper(int c)
{
    return c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c;
}

static bool caseeq(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t i;

    if (alen != blen)
        return false;
    for (i = 0; i < alen; i++) {
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return false;
    }
    return true;
}

/* The reference reading of a numeric string, per json.h: optional '-', 1..19 digits. */
static bool ref_i64_str(const char *s, size_t len, int64_t *out)
{
    size_t i = 0, nd;
    char *end;
    long long v;

    if (len && s[0] == '-')
        i = 1;
    nd = len - i;
    if (nd < 1 || nd > 19)
        return false;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
    }
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || end != s + len)
        return false;
    *out = v;
    return true;
}

static void check_scalars(const json_t *v)
{
    bool b = true;
    int64_t i = 0x5a5a5a5a5a5a5a5a, ref;
    const char *s = (const char *)&b;
    size_t len = 12345, maxes[] = {0, 1, 2, 16, 256, 2048, SIZE_MAX};
    size_t k;
    enum kz_err e;

    /* bool */
    e = kz_json_bool(v, &b);
    if (json_is_boolean(v)) {
        FUZZ_CHECK(!e && b == json_is_true(v), "bool of a JSON boolean: e=%d", e);
    } else if (json_is_string(v)) {
        const char *t = json_string_value(v);
        size_t n = json_string_length(v);
        bool is_t = caseeq(t, n, "true", 4), is_f = caseeq(t, n, "false", 5);

        FUZZ_CHECK(!e == (is_t || is_f), "bool of string \"%.40s\": e=%d", t, e);
        if (!e)
            FUZZ_CHECK(b == is_t, "%s", "bool of a string has the wrong value");
        else
            FUZZ_CHECK(b == true, "%s", "kz_json_bool wrote *out on error");
    } else {
        FUZZ_CHECK(e == KZ_ERR_INVALID && b == true, "bool of a non-bool: e=%d", e);
    }

    /* i64 */
    e = kz_json_i64(v, &i);
    if (json_is_integer(v)) {
        FUZZ_CHECK(!e && i == json_integer_value(v), "%s", "i64 of a JSON integer");
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        bool ok =
            d >= -9223372036854775808.0 && d < 9223372036854775808.0 && (double)(int64_t)d == d;

        FUZZ_CHECK(!e == ok, "i64 of real %.17g: e=%d", d, e);
        if (!e)
            FUZZ_CHECK((double)i == d, "i64 %" PRId64 " of real %.17g", i, d);
        else
            FUZZ_CHECK(i == 0x5a5a5a5a5a5a5a5a, "%s", "kz_json_i64 wrote *out on error");
    } else if (json_is_string(v)) {
        bool ok = ref_i64_str(json_string_value(v), json_string_length(v), &ref);

        FUZZ_CHECK(!e == ok, "i64 of string \"%.40s\": e=%d ref=%d", json_string_value(v), e, ok);
        if (ok)
            FUZZ_CHECK(i == ref, "i64 %" PRId64 " != strtoll %" PRId64, i, ref);
    } else {
        FUZZ_CHECK(e == KZ_ERR_INVALID, "i64 of a non-number: e=%d", e);
    }

    /* str, at several limits */
    for (k = 0; k < sizeof(maxes) / sizeof(maxes[0]); k++) {
        const char *out = (const char *)&b;
        size_t olen = 12345;

        e = kz_json_str(v, maxes[k], &out, &olen);
        if (json_is_string(v)) {
            size_t n = json_string_length(v);
            bool ok = n >= 1 && n <= maxes[k] && !memchr(json_string_value(v), 0, n);

            FUZZ_CHECK(!e == ok, "str (len %zu, max %zu): e=%d", n, maxes[k], e);
            if (ok)
                FUZZ_CHECK(out == json_string_value(v) && olen == n && out[n] == '\0', "%s",
                           "str result does not point at jansson's copy");
        } else {
            FUZZ_CHECK(e == KZ_ERR_INVALID, "str of a non-string: e=%d", e);
        }
        if (e)
            FUZZ_CHECK(out == (const char *)&b && olen == 12345, "%s",
                       "kz_json_str wrote *out or *len on error");
    }
    /* len may be NULL */
    e = kz_json_str(v, SIZE_MAX, &s, NULL);
    (void)e;
    (void)len;
}

static void check_dump(const json_t *v, size_t limit_seed)
{
    struct kz_buf full, tight;
    enum kz_err e;
    json_t *back;
    json_error_t jerr;

    kz_buf_init(&full, 64 * 1024 * 1024);
    e = kz_json_dump(v, &full);
    FUZZ_CHECK(!e, "kz_json_dump of a parsed value failed: %d", e);
    back = json_loadb(full.data, full.len, JSON_DECODE_ANY, &jerr);
    FUZZ_CHECK(back, "dump does not re-parse: %s in %.200s", jerr.text, kz_buf_cstr(&full));
    FUZZ_CHECK(json_equal(back, (json_t *)v), "dump re-parses to a different value: %.200s",
               kz_buf_cstr(&full));
    json_decref(back);

    /* A buffer holding a prefix, with a limit that cannot take the whole dump. */
    if (full.len) {
        size_t room = limit_seed % full.len;
        char before[8] = "pre";

        kz_buf_init(&tight, 3 + room);
        kz_buf_append(&tight, before, 3);
        e = kz_json_dump(v, &tight);
        FUZZ_CHECK(e == KZ_ERR_TOOBIG, "dump into %zu bytes of room for %zu: e=%d", room, full.len,
                   e);
        FUZZ_CHECK(tight.len == 3 && !memcmp(tight.data, "pre", 4), "%s",
                   "a failed dump left bytes behind");
        kz_buf_cleanup(&tight);
    }
    kz_buf_cleanup(&full);
}

static void visit(const json_t *v, int depth)
{
    size_t i;

    if (++visits > MAX_VISITS)
        return;
    check_scalars(v);
    if (depth >= MAX_DEPTH)
        return;
    if (json_is_object(v)) {
        const char *key;
        json_t *val;
        void *it;

        for (it = json_object_iter((json_t *)v); it; it = json_object_iter_next((json_t *)v, it)) {
            char name[128];
            size_t klen = json_object_iter_key_len(it), j;
            json_t *got;

            key = json_object_iter_key(it);
            val = json_object_iter_value(it);
            /* json.h reads names as C strings; a name with an embedded NUL is out of reach. */
            if (memchr(key, '\0', klen))
                goto children;
            got = kz_json_get(v, key);
            FUZZ_CHECK(got == val, "kz_json_get(\"%.60s\") is not the exact member", key);
            if (klen < sizeof(name)) {
                for (j = 0; j < 2; j++) {
                    size_t c;
                    void *it2;

                    for (c = 0; c < klen; c++)
                        name[c] =
                            (char)(j ? upper((unsigned char)key[c]) : lower((unsigned char)key[c]));
                    name[klen] = '\0';
                    got = kz_json_get(v, name);
                    FUZZ_CHECK(got, "kz_json_get(\"%.60s\") found nothing for key \"%.60s\"", name,
                               key);
                    if (json_object_get(v, name)) {
                        FUZZ_CHECK(got == json_object_get(v, name), "%s",
                                   "an exact-case member did not win");
                    } else {
                        /* The first case-insensitive match in insertion order. */
                        for (it2 = json_object_iter((json_t *)v); it2;
                             it2 = json_object_iter_next((json_t *)v, it2)) {
                            if (caseeq(json_object_iter_key(it2), json_object_iter_key_len(it2),
                                       name, klen))
                                break;
                        }
                        FUZZ_CHECK(it2 && got == json_object_iter_value(it2),
                                   "kz_json_get(\"%.60s\") is not the first match", name);
                    }
                }
            }
        children:
            visit(val, depth + 1);
        }
        FUZZ_CHECK(!kz_json_get(v, "\x01no such key\x02"), "%s", "a missing key was found");
    } else if (json_is_array(v)) {
        FUZZ_CHECK(!kz_json_get(v, "0"), "%s", "kz_json_get on an array returned a value");
        for (i = 0; i < json_array_size(v); i++)
            visit(json_array_get(v, i), depth + 1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int64_t live = kz_alloc_live();
    size_t errlen = size ? data[0] % 64 : 0;
    char err[80];
    json_t *doc;
    size_t i;

    memset(err, 'Z', sizeof(err));
    doc = kz_json_parse((const char *)data, size, errlen ? err : NULL, errlen);
    if (doc) {
        FUZZ_CHECK(json_is_object(doc) || json_is_array(doc), "%s", "scalar top level accepted");
        for (i = 0; i < sizeof(err); i++)
            FUZZ_CHECK(err[i] == 'Z', "%s", "err written on success");
        visits = 0;
        visit(doc, 0);
        check_dump(doc, size > 1 ? data[1] : 0);
        json_decref(doc);
    } else if (errlen) {
        FUZZ_CHECK(memchr(err, '\0', errlen), "error message not terminated within %zu", errlen);
        for (i = errlen; i < sizeof(err); i++)
            FUZZ_CHECK(err[i] == 'Z', "error message overran its %zu-byte buffer", errlen);
    }
    /* Same bytes with err NULL and a NULL body. */
    doc = kz_json_parse((const char *)data, size, NULL, 0);
    /* The publish reader accepts at least what the strict one does (it also takes numbers a
     * double cannot hold, rewriting them only in its private copy). */
    {
        json_t *lenient = kz_json_parse_lenient_numbers((const char *)data, size, NULL, 0);

        FUZZ_CHECK(!doc || lenient, "%s", "lenient-number parse refused what the strict accepted");
        json_decref(lenient);
    }
    json_decref(doc);
    FUZZ_CHECK(!kz_json_parse(NULL, 0, NULL, 0), "%s", "an empty body parsed");
    FUZZ_CHECK(kz_json_get(NULL, "a") == NULL, "%s", "kz_json_get(NULL)");
    FUZZ_CHECK(kz_alloc_live() == live, "kz_alloc_live %" PRId64 " -> %" PRId64 ": leak", live,
               kz_alloc_live());
    return 0;
}
