/* test_json.c — lenient JSON accessors, strict parsing and compact dumping (src/json.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "buf.h"
#include "json.h"

/* ==== helpers ==== */

static json_t *must_parse(const char *text)
{
    char err[160];
    json_t *doc = kz_json_parse(text, strlen(text), err, sizeof(err));

    if (!doc)
        fail_msg("parse of %s failed: %s", text, err);
    return doc;
}

static int check_no_leak(void **state)
{
    (void)state;
    assert_int_equal(kz_alloc_live(), 0);
    return 0;
}

/* ==== kz_json_get ==== */

static void test_get_exact_and_case_insensitive(void **state)
{
    json_t *doc = must_parse("{\"objectId\": \"g1\", \"EventTypes\": [1]}");

    (void)state;
    assert_ptr_equal(kz_json_get(doc, "objectId"), json_object_get(doc, "objectId"));
    assert_string_equal(json_string_value(kz_json_get(doc, "objectid")), "g1");
    assert_string_equal(json_string_value(kz_json_get(doc, "OBJECTID")), "g1");
    assert_true(json_is_array(kz_json_get(doc, "eventTypes")));
    assert_true(json_is_array(kz_json_get(doc, "eventtypes")));
    json_decref(doc);
}

static void test_get_exact_case_wins(void **state)
{
    json_t *doc = must_parse("{\"active\": 1, \"Active\": 2, \"ACTIVE\": 3}");

    (void)state;
    assert_int_equal(json_integer_value(kz_json_get(doc, "active")), 1);
    assert_int_equal(json_integer_value(kz_json_get(doc, "Active")), 2);
    assert_int_equal(json_integer_value(kz_json_get(doc, "ACTIVE")), 3);
    /* No exact match: the first case-insensitive match in insertion order. */
    assert_int_equal(json_integer_value(kz_json_get(doc, "aCtIvE")), 1);
    json_decref(doc);
    doc = must_parse("{\"ACTIVE\": 3, \"active\": 1}");
    assert_int_equal(json_integer_value(kz_json_get(doc, "Active")), 3);
    json_decref(doc);
}

static void test_get_misses(void **state)
{
    json_t *doc = must_parse("{\"active\": 1, \"\\u00c9t\\u00e9\": 2}");
    json_t *arr = must_parse("[1, 2]");
    json_t *str = json_string("active");

    (void)state;
    assert_null(kz_json_get(doc, "activ"));
    assert_null(kz_json_get(doc, "activeX"));
    assert_null(kz_json_get(doc, "other"));
    assert_null(kz_json_get(doc, ""));
    assert_null(kz_json_get(doc, NULL));
    /* Only ASCII letters fold: U+00C9 does not match U+00E9. */
    assert_non_null(kz_json_get(doc, "\xc3\x89t\xc3\xa9"));
    assert_null(kz_json_get(doc, "\xc3\xa9t\xc3\xa9"));
    assert_null(kz_json_get(arr, "active"));
    assert_null(kz_json_get(str, "active"));
    assert_null(kz_json_get(NULL, "active"));
    json_decref(doc);
    json_decref(arr);
    json_decref(str);
}

static void test_get_does_not_fold_non_letters(void **state)
{
    json_t *doc = must_parse("{\"a[b\": 1, \"a@b\": 2}");

    (void)state;
    /* '[' (0x5b) and '{' (0x7b), '@' (0x40) and '`' (0x60) differ by the case bit only. */
    assert_null(kz_json_get(doc, "a{b"));
    assert_null(kz_json_get(doc, "a`b"));
    json_decref(doc);
}

/* ==== kz_json_bool ==== */

static void test_bool_accepts(void **state)
{
    static const struct {
        const char *text;
        bool want;
    } cases[] = {
        {"[true]", true},     {"[false]", false},     {"[\"true\"]", true}, {"[\"false\"]", false},
        {"[\"TRUE\"]", true}, {"[\"False\"]", false}, {"[\"tRuE\"]", true}, {"[\"FALSE\"]", false},
    };
    size_t i;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(cases); i++) {
        json_t *doc = must_parse(cases[i].text);
        bool out = !cases[i].want;

        assert_int_equal(kz_json_bool(json_array_get(doc, 0), &out), KZ_OK);
        assert_int_equal(out, cases[i].want);
        json_decref(doc);
    }
}

static void test_bool_rejects(void **state)
{
    static const char *const texts[] = {
        "[\"yes\"]",   "[\"1\"]",     "[1]",    "[0]",         "[null]",
        "[\"true \"]", "[\" true\"]", "[\"\"]", "[\"truee\"]", "[\"fals\"]",
        "[[true]]",    "[{}]",        "[1.0]",
    };
    size_t i;
    bool out = true;
    json_t *nul = json_stringn("true\0", 5);

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(texts); i++) {
        json_t *doc = must_parse(texts[i]);

        assert_int_equal(kz_json_bool(json_array_get(doc, 0), &out), KZ_ERR_INVALID);
        json_decref(doc);
    }
    assert_int_equal(kz_json_bool(nul, &out), KZ_ERR_INVALID);
    assert_int_equal(kz_json_bool(NULL, &out), KZ_ERR_INVALID);
    assert_true(out); /* untouched by every failure */
    json_decref(nul);
}

/* ==== kz_json_i64 ==== */

static void test_i64_accepts(void **state)
{
    static const struct {
        const char *text;
        int64_t want;
    } cases[] = {
        {"[0]", 0},
        {"[-1]", -1},
        {"[1614265330000]", 1614265330000},
        {"[9223372036854775807]", INT64_MAX},
        {"[-9223372036854775808]", INT64_MIN},
        {"[1000.0]", 1000},
        {"[1e3]", 1000},
        {"[-1.0]", -1},
        {"[-0.0]", 0},
        {"[-9223372036854775808.0]", INT64_MIN},
        {"[\"0\"]", 0},
        {"[\"-0\"]", 0},
        {"[\"123\"]", 123},
        {"[\"-123\"]", -123},
        {"[\"0009\"]", 9},
        {"[\"9223372036854775807\"]", INT64_MAX},
        {"[\"-9223372036854775808\"]", INT64_MIN},
        {"[\"1614265330000\"]", 1614265330000},
    };
    size_t i;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(cases); i++) {
        json_t *doc = must_parse(cases[i].text);
        int64_t out = 42;

        if (kz_json_i64(json_array_get(doc, 0), &out) != KZ_OK)
            fail_msg("rejected %s", cases[i].text);
        assert_int_equal(out, cases[i].want);
        json_decref(doc);
    }
}

static void test_i64_rejects(void **state)
{
    static const char *const texts[] = {
        "[1.5]",
        "[-0.5]",
        "[9223372036854775808.0]",
        "[1e19]",
        "[-1e19]",
        "[1e300]",
        "[\"\"]",
        "[\"-\"]",
        "[\"+1\"]",
        "[\" 1\"]",
        "[\"1 \"]",
        "[\"1e3\"]",
        "[\"1.0\"]",
        "[\"0x10\"]",
        "[\"--1\"]",
        "[\"1-\"]",
        "[\"9223372036854775808\"]",
        "[\"-9223372036854775809\"]",
        "[\"10000000000000000000\"]",
        "[\"00000000000000000001\"]",
        "[\"99999999999999999999\"]",
        "[true]",
        "[null]",
        "[{}]",
        "[[1]]",
    };
    size_t i;
    int64_t out = 42;
    json_t *nul = json_stringn("1\0", 2);

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(texts); i++) {
        json_t *doc = must_parse(texts[i]);

        if (kz_json_i64(json_array_get(doc, 0), &out) != KZ_ERR_INVALID)
            fail_msg("accepted %s", texts[i]);
        json_decref(doc);
    }
    assert_int_equal(kz_json_i64(nul, &out), KZ_ERR_INVALID);
    assert_int_equal(kz_json_i64(NULL, &out), KZ_ERR_INVALID);
    assert_int_equal(out, 42);
    json_decref(nul);
}

/* ==== kz_json_str ==== */

static void test_str_bounds(void **state)
{
    json_t *v = json_string("abc");
    const char *s = NULL;
    size_t len = 0;

    (void)state;
    assert_int_equal(kz_json_str(v, 3, &s, &len), KZ_OK);
    assert_ptr_equal(s, json_string_value(v));
    assert_int_equal(len, 3);
    s = NULL;
    assert_int_equal(kz_json_str(v, 100, &s, NULL), KZ_OK);
    assert_string_equal(s, "abc");
    s = "untouched";
    len = 99;
    assert_int_equal(kz_json_str(v, 2, &s, &len), KZ_ERR_INVALID);
    assert_string_equal(s, "untouched");
    assert_int_equal(len, 99);
    json_decref(v);
}

static void test_str_rejects(void **state)
{
    json_t *empty = json_string("");
    json_t *nul = json_stringn("a\0b", 3);
    json_t *num = json_integer(1);
    json_t *t = json_true();
    const char *s = "untouched";
    size_t len = 7;

    (void)state;
    assert_int_equal(kz_json_str(empty, 10, &s, &len), KZ_ERR_INVALID);
    assert_int_equal(kz_json_str(nul, 10, &s, &len), KZ_ERR_INVALID);
    assert_int_equal(kz_json_str(num, 10, &s, &len), KZ_ERR_INVALID);
    assert_int_equal(kz_json_str(t, 10, &s, &len), KZ_ERR_INVALID);
    assert_int_equal(kz_json_str(NULL, 10, &s, &len), KZ_ERR_INVALID);
    assert_string_equal(s, "untouched");
    assert_int_equal(len, 7);
    json_decref(empty);
    json_decref(nul);
    json_decref(num);
    json_decref(t);
}

/* ==== kz_json_parse ==== */

static void test_parse_ok(void **state)
{
    static const char *const texts[] = {"{}", "[]", " \n\t{\"a\": [1, {\"b\": null}]} \r\n",
                                        "[1, \"x\", true]"};
    size_t i;
    char err[64] = "untouched";

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(texts); i++) {
        json_t *doc = kz_json_parse(texts[i], strlen(texts[i]), err, sizeof(err));

        assert_non_null(doc);
        json_decref(doc);
    }
    assert_string_equal(err, "untouched");
}

static void test_parse_uses_len_not_nul(void **state)
{
    const char text[] = "{\"a\":1}garbage";
    char exact[7];
    json_t *doc;

    (void)state;
    doc = kz_json_parse(text, 7, NULL, 0);
    assert_non_null(doc);
    json_decref(doc);
    assert_null(kz_json_parse(text, sizeof(text) - 1, NULL, 0));
    /* A buffer without a terminating NUL is read exactly (ASan checks the bound). */
    memcpy(exact, "{\"a\":1}", 7);
    doc = kz_json_parse(exact, sizeof(exact), NULL, 0);
    assert_non_null(doc);
    assert_int_equal(json_integer_value(kz_json_get(doc, "A")), 1);
    json_decref(doc);
}

static void test_parse_rejects(void **state)
{
    static const char *const texts[] = {
        "",  "   ",   "{} x", "{}{}", "[1,]",    "{\"a\":1,\"a\":2}", "{\"a\":\"x\\u0000y\"}",
        "1", "\"s\"", "true", "null", "{'a':1}", "{\"a\":1",
    };
    size_t i;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(texts); i++) {
        char err[128] = "";

        if (kz_json_parse(texts[i], strlen(texts[i]), err, sizeof(err)))
            fail_msg("accepted %s", texts[i]);
        assert_non_null(strstr(err, "line"));
        assert_non_null(strstr(err, "column"));
    }
}

static void test_parse_error_messages(void **state)
{
    char err[128] = "";
    char tiny[8];

    (void)state;
    assert_null(kz_json_parse("42", 2, err, sizeof(err)));
    assert_non_null(strstr(err, "line 1, column"));
    assert_null(kz_json_parse("{\n  \"a\": }", 10, err, sizeof(err)));
    assert_non_null(strstr(err, "line 2"));
    assert_null(kz_json_parse(NULL, 0, err, sizeof(err)));
    assert_true(err[0] != '\0');
    /* Truncated to the buffer, always terminated. */
    memset(tiny, 'x', sizeof(tiny));
    assert_null(kz_json_parse("{", 1, tiny, sizeof(tiny)));
    assert_int_equal(strlen(tiny), sizeof(tiny) - 1);
    /* No buffer at all is fine, and errlen 0 writes nothing. */
    assert_null(kz_json_parse("{", 1, NULL, 0));
    tiny[0] = 'q';
    assert_null(kz_json_parse("{", 1, tiny, 0));
    assert_int_equal(tiny[0], 'q');
}

static void test_parse_deep_nesting_rejected(void **state)
{
    enum { DEPTH = 5000 };
    char *text = kz_malloc(2 * DEPTH);
    char err[128];

    (void)state;
    memset(text, '[', DEPTH);
    memset(text + DEPTH, ']', DEPTH);
    assert_null(kz_json_parse(text, 2 * DEPTH, err, sizeof(err)));
    kz_free(text);
}

/* ==== kz_json_dump ==== */

static void test_dump_compact_in_order(void **state)
{
    json_t *doc = must_parse("{ \"b\" : 1 , \"a\" : [ 1 , 2.5 ] , \"c\" : \"x\\n\\u00e9\" ,"
                             " \"d\" : { } , \"e\" : null }");
    struct kz_buf b;

    (void)state;
    kz_buf_init(&b, 1024);
    assert_int_equal(kz_json_dump(doc, &b), KZ_OK);
    assert_string_equal(kz_buf_cstr(&b), "{\"b\":1,\"a\":[1,2.5],\"c\":\"x\\n\xc3\xa9\",\"d\":{},"
                                         "\"e\":null}");
    kz_buf_cleanup(&b);
    json_decref(doc);
}

static void test_dump_appends_and_scalars(void **state)
{
    json_t *s = json_string("x\"y");
    json_t *n = json_integer(-7);
    struct kz_buf b;

    (void)state;
    kz_buf_init(&b, 64);
    assert_int_equal(kz_buf_puts(&b, "pre:"), KZ_OK);
    assert_int_equal(kz_json_dump(s, &b), KZ_OK);
    assert_int_equal(kz_json_dump(n, &b), KZ_OK);
    assert_string_equal(kz_buf_cstr(&b), "pre:\"x\\\"y\"-7");
    kz_buf_cleanup(&b);
    json_decref(s);
    json_decref(n);
}

static void test_dump_limit_exact_and_rollback(void **state)
{
    json_t *doc = must_parse("{\"key\":\"value\",\"list\":[1,2,3]}");
    const char *want = "{\"key\":\"value\",\"list\":[1,2,3]}";
    size_t wlen = strlen(want);
    struct kz_buf b;

    (void)state;
    /* Exactly at the limit fits. */
    kz_buf_init(&b, 2 + wlen);
    assert_int_equal(kz_buf_puts(&b, "ab"), KZ_OK);
    assert_int_equal(kz_json_dump(doc, &b), KZ_OK);
    assert_int_equal(b.len, 2 + wlen);
    kz_buf_cleanup(&b);
    /* One byte less: TOOBIG, and the buffer is exactly as before. */
    kz_buf_init(&b, 2 + wlen - 1);
    assert_int_equal(kz_buf_puts(&b, "ab"), KZ_OK);
    assert_int_equal(kz_json_dump(doc, &b), KZ_ERR_TOOBIG);
    assert_int_equal(b.len, 2);
    assert_string_equal(kz_buf_cstr(&b), "ab");
    kz_buf_cleanup(&b);
    /* From empty, limit 0. */
    kz_buf_init(&b, 0);
    assert_int_equal(kz_json_dump(doc, &b), KZ_ERR_TOOBIG);
    assert_int_equal(b.len, 0);
    assert_string_equal(kz_buf_cstr(&b), "");
    kz_buf_cleanup(&b);
    json_decref(doc);
}

static void test_dump_invalid(void **state)
{
    json_t *bad = json_object();
    struct kz_buf b;

    (void)state;
    /* A string that is not UTF-8 cannot be encoded; the partial output is rolled back. */
    json_object_set_new(bad, "ok", json_string("fine"));
    json_object_set_new(bad, "bad", json_stringn_nocheck("\xff\xfe", 2));
    kz_buf_init(&b, 1024);
    assert_int_equal(kz_buf_puts(&b, "keep"), KZ_OK);
    assert_int_equal(kz_json_dump(bad, &b), KZ_ERR_INVALID);
    assert_string_equal(kz_buf_cstr(&b), "keep");
    assert_int_equal(kz_json_dump(NULL, &b), KZ_ERR_INVALID);
    assert_string_equal(kz_buf_cstr(&b), "keep");
    kz_buf_cleanup(&b);
    json_decref(bad);
}

static void test_roundtrip(void **state)
{
    const char *text = "{\"z\":[{\"y\":\"\\u0001\"},-1.25,false],\"a\":{}}";
    json_t *doc = must_parse(text);
    struct kz_buf b;

    (void)state;
    kz_buf_init(&b, 256);
    assert_int_equal(kz_json_dump(doc, &b), KZ_OK);
    assert_string_equal(kz_buf_cstr(&b), text);
    kz_buf_cleanup(&b);
    json_decref(doc);
}

static void raw_is(const char *doc, long index, const char *key, const char *want)
{
    struct kz_str v;

    if (!want) {
        assert_int_equal(kz_json_raw_member(doc, strlen(doc), index, key, &v), KZ_ERR_NOTFOUND);
        return;
    }
    assert_int_equal(kz_json_raw_member(doc, strlen(doc), index, key, &v), KZ_OK);
    assert_int_equal(v.len, strlen(want));
    assert_memory_equal(v.p, want, v.len);
}

/* ==== kz_json_parse_lenient_numbers: numbers beyond a double ==== */

/* A publish body's numbers keep their spelling with no limit (README): a number a double cannot
 * hold is accepted, and the raw bytes of the member are what was written. */
static void test_lenient_huge_numbers(void **state)
{
    static const char *bodies[] = {
        "{\"data\":{\"a\":1e400}}",
        "{\"data\":{\"a\":-1E+400,\"b\":[2e308,-1.8e308]}}",
        "{\"data\":{\"s\":\"1e400 \\\" 1e400\",\"n\":1e99999999999999999999}}",
        "[{\"data\":1e400},{\"data\":{\"x\":1e-400}}]",
    };
    char big[1200], err[160];
    size_t i, n;
    json_t *doc;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(bodies); i++) {
        doc = kz_json_parse_lenient_numbers(bodies[i], strlen(bodies[i]), err, sizeof(err));
        if (!doc)
            fail_msg("%s refused: %s", bodies[i], err);
        json_decref(doc);
    }
    raw_is(bodies[0], -1, "data", "{\"a\":1e400}");
    raw_is(bodies[1], -1, "data", "{\"a\":-1E+400,\"b\":[2e308,-1.8e308]}");
    raw_is(bodies[2], -1, "data", "{\"s\":\"1e400 \\\" 1e400\",\"n\":1e99999999999999999999}");
    raw_is(bodies[3], 0, "data", "1e400");

    /* The tree holds such a value as the largest power of ten of the same sign; strings keep
     * their bytes. */
    doc = kz_json_parse_lenient_numbers(bodies[2], strlen(bodies[2]), NULL, 0);
    assert_non_null(doc);
    assert_true(json_real_value(json_object_get(json_object_get(doc, "data"), "n")) == 1e308);
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "data"), "s")),
                        "1e400 \" 1e400");
    json_decref(doc);
    doc = kz_json_parse_lenient_numbers(bodies[1], strlen(bodies[1]), NULL, 0);
    assert_true(json_real_value(json_object_get(json_object_get(doc, "data"), "a")) == -1e308);
    json_decref(doc);

    /* A 1000-digit integer and a 1000-digit fraction. */
    n = (size_t)snprintf(big, sizeof(big), "{\"data\":{\"i\":");
    for (i = 0; i < 500; i++)
        big[n++] = (char)('1' + i % 9);
    memcpy(big + n, ",\"f\":0.", 7);
    n += 7;
    for (i = 0; i < 500; i++)
        big[n++] = (char)('1' + i % 9);
    memcpy(big + n, "}}", 3);
    doc = kz_json_parse_lenient_numbers(big, strlen(big), err, sizeof(err));
    if (!doc)
        fail_msg("long numbers refused: %s", err);
    json_decref(doc);
    assert_int_equal(kz_json_raw_member(big, strlen(big), -1, "data", &(struct kz_str){0}), KZ_OK);
}

/* Only well-formed numbers are rewritten: malformed ones stay errors, and an error elsewhere in
 * the document reports the same position as the strict parser. */
static void test_lenient_huge_numbers_still_strict(void **state)
{
    static const char *bad[] = {
        "{\"a\":01e400}",        "{\"a\":1e400e}",  "{\"a\":1e400.5}",  "{\"a\":--1e400}",
        "{\"a\":1e400,}",        "{\"a\":1e400 1}", "{\"a\":+1e400}",   "{\"a\":1.e400}",
        "{\"a\":1e400,\"a\":1}", "1e400",           "{\"a\":nul1e400}",
    };
    char err[160], err2[160];
    size_t i;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(bad); i++) {
        json_t *doc = kz_json_parse_lenient_numbers(bad[i], strlen(bad[i]), err, sizeof(err));

        if (doc)
            fail_msg("%s accepted", bad[i]);
    }
    /* Same column as the strict parser on a body without the huge number. */
    assert_null(kz_json_parse_lenient_numbers("{\"a\":1e400, x}", 14, err, sizeof(err)));
    assert_null(kz_json_parse_lenient_numbers("{\"a\":1e300, x}", 14, err2, sizeof(err2)));
    assert_string_equal(err, err2);
}

static void test_raw_member(void **state)
{
    (void)state;
    raw_is("{\"data\": {\"n\": 19.99, \"big\": 18446744073709551615} }", -1, "data",
           "{\"n\": 19.99, \"big\": 18446744073709551615}");
    raw_is("{\"a\":\"da,ta}\",\"data\":[1, \"]\", {\"x\":\"\\\"\"}]}", -1, "data",
           "[1, \"]\", {\"x\":\"\\\"\"}]");
    raw_is("{\"Data\":1,\"data\":2}", -1, "data", "2");    /* exact case wins */
    raw_is("{\"DATA\":1e-7,\"x\":2}", -1, "data", "1e-7"); /* else case-insensitive */
    raw_is("{\"d\\u0061ta\":1}", -1, "data", NULL);        /* escaped keys never match */
    raw_is("{\"x\":1}", -1, "data", NULL);
    raw_is("[{\"data\":1},{\"data\" : null},{\"data\":\"three\"}]", 2, "data", "\"three\"");
    raw_is("[{\"data\":1},{\"data\" : null}]", 1, "data", "null");
    raw_is("[{\"data\":1}]", 1, "data", NULL);
    raw_is("[{\"data\":1}]", -1, "data", NULL);
    raw_is("{\"data\":1}", 0, "data", NULL);
}

/* Offsets of the elements of an array, then the member at each offset: the same answers as
 * kz_json_raw_member by index. */
static void test_array_offsets(void **state)
{
    const char *doc =
        " [ {\"data\":1} ,{\"x\":\"]\",\"data\" : [1,{\"a\":\"}\"}]},\n{\"DATA\":\"t\"}]";
    size_t offs[4], i;
    struct kz_str v, w;

    (void)state;
    assert_int_equal(kz_json_array_offsets(doc, strlen(doc), offs, 3), KZ_OK);
    assert_int_equal(offs[0], 3);
    for (i = 0; i < 3; i++) {
        assert_int_equal(doc[offs[i]], '{');
        assert_int_equal(kz_json_raw_member_at(doc, strlen(doc), offs[i], "data", &v), KZ_OK);
        assert_int_equal(kz_json_raw_member(doc, strlen(doc), (long)i, "data", &w), KZ_OK);
        assert_ptr_equal(v.p, w.p);
        assert_int_equal(v.len, w.len);
    }
    assert_int_equal(kz_json_raw_member_at(doc, strlen(doc), offs[1], "data", &v), KZ_OK);
    assert_int_equal(v.len, strlen("[1,{\"a\":\"}\"}]"));
    /* fewer elements than asked, not an array, an offset past the end */
    assert_int_equal(kz_json_array_offsets(doc, strlen(doc), offs, 4), KZ_ERR_NOTFOUND);
    assert_int_equal(kz_json_array_offsets("{\"a\":1}", 7, offs, 1), KZ_ERR_NOTFOUND);
    assert_int_equal(kz_json_array_offsets("[]", 2, offs, 1), KZ_ERR_NOTFOUND);
    assert_int_equal(kz_json_raw_member_at(doc, strlen(doc), strlen(doc) + 1, "data", &v),
                     KZ_ERR_NOTFOUND);
    assert_int_equal(kz_json_raw_member_at("{\"data\":2}", 10, 0, "data", &v), KZ_OK);
    assert_int_equal(v.len, 1);
}

static void minify_is(const char *in, const char *want)
{
    struct kz_buf b;
    struct kz_str v = {in, strlen(in)};

    kz_buf_init(&b, 1024);
    assert_int_equal(kz_json_minify(v, &b), KZ_OK);
    assert_string_equal(kz_buf_cstr(&b), want);
    kz_buf_cleanup(&b);
}

static void test_minify(void **state)
{
    struct kz_buf b;
    struct kz_str v = {"[1, 2, 3]", 9};

    (void)state;
    minify_is("{ \"a\" : [ 1 , 2.50 ] ,\n\t\"b\": \"x y\\\" z\" }",
              "{\"a\":[1,2.50],\"b\":\"x y\\\" z\"}");
    minify_is("\"\\u00fc \"", "\"\\u00fc \"");
    minify_is("-1.0E+2", "-1.0E+2");
    kz_buf_init(&b, 4);
    assert_int_equal(kz_json_minify(v, &b), KZ_ERR_TOOBIG);
    kz_buf_cleanup(&b);
}

/* A leading UTF-8 byte-order mark is ignored by every parse and raw lookup, as .NET's readers
 * did; anywhere else (after whitespace, twice, inside a value's place) it is still an error. */
static void test_bom(void **state)
{
    const char obj[] = "\xef\xbb\xbf{\"data\": {\"n\": 1.50}, \"x\": null}";
    const char arr[] = "\xef\xbb\xbf[{\"data\":1},{\"data\":[2]}]";
    char err[128];
    json_t *doc;
    struct kz_str v;
    size_t offs[2];

    (void)state;
    assert_int_equal(kz_json_bom(obj, strlen(obj)), 3);
    assert_int_equal(kz_json_bom("\xef\xbb", 2), 0);
    assert_int_equal(kz_json_bom("{}", 2), 0);
    assert_int_equal(kz_json_bom(NULL, 0), 0);
    doc = kz_json_parse(obj, strlen(obj), err, sizeof(err));
    assert_non_null(doc);
    assert_true(json_is_null(kz_json_get(doc, "x")));
    json_decref(doc);
    doc = kz_json_parse_lenient_numbers(arr, strlen(arr), err, sizeof(err));
    assert_non_null(doc);
    assert_int_equal(json_array_size(doc), 2);
    json_decref(doc);
    /* the lenient parser's slow path (a number beyond a double) skips it too */
    doc = kz_json_parse_lenient_numbers("\xef\xbb\xbf{\"a\":1e400}", 14, err, sizeof(err));
    assert_non_null(doc);
    json_decref(doc);
    /* raw lookups see the same document */
    assert_int_equal(kz_json_raw_member(obj, strlen(obj), -1, "data", &v), KZ_OK);
    assert_int_equal(v.len, strlen("{\"n\": 1.50}"));
    assert_memory_equal(v.p, "{\"n\": 1.50}", v.len);
    assert_int_equal(kz_json_raw_member_at(obj, strlen(obj), 0, "data", &v), KZ_OK);
    assert_int_equal(v.len, strlen("{\"n\": 1.50}"));
    assert_int_equal(kz_json_array_offsets(arr, strlen(arr), offs, 2), KZ_OK);
    assert_int_equal(offs[0], 4);
    assert_int_equal(kz_json_raw_member_at(arr, strlen(arr), offs[1], "data", &v), KZ_OK);
    assert_memory_equal(v.p, "[2]", 3);
    assert_int_equal(kz_json_raw_member(arr, strlen(arr), 1, "data", &v), KZ_OK);
    assert_memory_equal(v.p, "[2]", 3);
    /* only the very first bytes */
    assert_null(kz_json_parse(" \xef\xbb\xbf{}", 6, err, sizeof(err)));
    assert_null(kz_json_parse("\xef\xbb\xbf\xef\xbb\xbf{}", 8, err, sizeof(err)));
    assert_null(kz_json_parse("{\"a\":\xef\xbb\xbf"
                              "1}",
                              10, err, sizeof(err)));
    assert_null(kz_json_parse("\xef\xbb\xbf", 3, err, sizeof(err)));
    assert_null(kz_json_parse("\xef\xbb{}", 4, err, sizeof(err)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_get_exact_and_case_insensitive, check_no_leak),
        cmocka_unit_test_teardown(test_get_exact_case_wins, check_no_leak),
        cmocka_unit_test_teardown(test_get_misses, check_no_leak),
        cmocka_unit_test_teardown(test_get_does_not_fold_non_letters, check_no_leak),
        cmocka_unit_test_teardown(test_bool_accepts, check_no_leak),
        cmocka_unit_test_teardown(test_bool_rejects, check_no_leak),
        cmocka_unit_test_teardown(test_i64_accepts, check_no_leak),
        cmocka_unit_test_teardown(test_i64_rejects, check_no_leak),
        cmocka_unit_test_teardown(test_str_bounds, check_no_leak),
        cmocka_unit_test_teardown(test_str_rejects, check_no_leak),
        cmocka_unit_test_teardown(test_parse_ok, check_no_leak),
        cmocka_unit_test_teardown(test_parse_uses_len_not_nul, check_no_leak),
        cmocka_unit_test_teardown(test_parse_rejects, check_no_leak),
        cmocka_unit_test_teardown(test_parse_error_messages, check_no_leak),
        cmocka_unit_test_teardown(test_parse_deep_nesting_rejected, check_no_leak),
        cmocka_unit_test_teardown(test_dump_compact_in_order, check_no_leak),
        cmocka_unit_test_teardown(test_dump_appends_and_scalars, check_no_leak),
        cmocka_unit_test_teardown(test_dump_limit_exact_and_rollback, check_no_leak),
        cmocka_unit_test_teardown(test_dump_invalid, check_no_leak),
        cmocka_unit_test_teardown(test_roundtrip, check_no_leak),
        cmocka_unit_test_teardown(test_raw_member, check_no_leak),
        cmocka_unit_test_teardown(test_lenient_huge_numbers, check_no_leak),
        cmocka_unit_test_teardown(test_lenient_huge_numbers_still_strict, check_no_leak),
        cmocka_unit_test_teardown(test_array_offsets, check_no_leak),
        cmocka_unit_test_teardown(test_minify, check_no_leak),
        cmocka_unit_test_teardown(test_bom, check_no_leak),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
