/* test_filter.c — webhook event filters (src/filter.h): compiling, every refusal with the path
 * in its message, every operator, exact number comparison past 64 bits and past double range,
 * data paths through objects and arrays, and a small cost figure. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "filter.h"
#include "model.h"

static struct kz_filter_event ev_with(const char *data)
{
    struct kz_filter_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.event_type = "SurveyResponse";
    ev.from_user = "+15550100";
    ev.from_user_id = "u1";
    ev.data_json = data;
    ev.data_len = data ? strlen(data) : 0;
    return ev;
}

/* Compiles `f` (must succeed) and evaluates it on `data`. */
static bool match(const char *f, const char *data)
{
    struct kz_filter *flt = NULL;
    char err[256];
    struct kz_filter_event ev = ev_with(data);
    bool r;

    if (kz_filter_compile(f, strlen(f), &flt, err, sizeof(err)) != KZ_OK)
        fail_msg("compile %s: %s", f, err);
    r = kz_filter_match(flt, &ev);
    kz_filter_free(flt);
    return r;
}

/* Compiling `f` must fail with a message containing `needle`. */
static void refused(const char *f, const char *needle)
{
    struct kz_filter *flt = (struct kz_filter *)1;
    char err[256];

    assert_int_equal(kz_filter_compile(f, strlen(f), &flt, err, sizeof(err)), KZ_ERR_INVALID);
    assert_null(flt);
    if (!strstr(err, needle))
        fail_msg("%s: message \"%s\" lacks \"%s\"", f, err, needle);
}

static void test_empty_passes_all(void **state)
{
    struct kz_filter *flt = (struct kz_filter *)1;

    (void)state;
    assert_int_equal(kz_filter_compile("{}", 2, &flt, NULL, 0), KZ_OK);
    assert_null(flt);
    assert_int_equal(kz_filter_compile(" { } ", 5, &flt, NULL, 0), KZ_OK);
    assert_null(flt);
    assert_true(kz_filter_match(NULL, NULL));
    assert_true(match("{}", "{}"));
}

static void test_top_level_fields(void **state)
{
    (void)state;
    assert_true(match("{\"eventType\":\"SurveyResponse\"}", "{}"));
    assert_false(match("{\"eventType\":\"SurveyCreated\"}", "{}"));
    assert_true(match("{\"eventType\":{\"$in\":[\"A\",\"SurveyResponse\"]}}", "{}"));
    assert_true(match("{\"fromUserId\":\"u1\",\"fromUser\":\"+15550100\"}", "{}"));
    assert_false(match("{\"fromUserId\":\"u1\",\"fromUser\":\"+1\"}", "{}"));
    /* absent fields: equality fails, $ne and $nin hold, $exists tells */
    assert_false(match("{\"fromUserName\":\"x\"}", "{}"));
    assert_true(match("{\"fromUserName\":{\"$ne\":\"x\"}}", "{}"));
    assert_true(match("{\"fromUserName\":{\"$nin\":[\"x\"]}}", "{}"));
    assert_true(match("{\"fromUserName\":{\"$exists\":false}}", "{}"));
    assert_false(match("{\"fromUserName\":{\"$exists\":true}}", "{}"));
    assert_true(match("{\"fromUserId\":{\"$exists\":true}}", "{}"));
}

static void test_types_must_match(void **state)
{
    (void)state;
    assert_true(match("{\"data.n\":1}", "{\"n\":1}"));
    assert_false(match("{\"data.n\":\"1\"}", "{\"n\":1}"));
    assert_false(match("{\"data.n\":1}", "{\"n\":\"1\"}"));
    assert_true(match("{\"data.n\":{\"$ne\":\"1\"}}", "{\"n\":1}"));
    assert_true(match("{\"data.b\":true}", "{\"b\":true}"));
    assert_false(match("{\"data.b\":true}", "{\"b\":false}"));
    assert_false(match("{\"data.b\":1}", "{\"b\":true}"));
    assert_true(match("{\"data.z\":null}", "{\"z\":null}"));
    assert_false(match("{\"data.z\":null}", "{}"));
    assert_true(match("{\"data.z\":{\"$exists\":true}}", "{\"z\":null}"));
    /* ordering across types never holds */
    assert_false(match("{\"data.n\":{\"$gt\":\"0\"}}", "{\"n\":5}"));
    assert_false(match("{\"data.n\":{\"$lt\":5}}", "{\"n\":\"1\"}"));
    assert_false(match("{\"data.o\":{\"$gt\":1}}", "{\"o\":{\"a\":2}}"));
    assert_true(match("{\"data.o\":{\"$exists\":true}}", "{\"o\":{\"a\":2}}"));
}

static void test_numbers_exact(void **state)
{
    (void)state;
    assert_true(match("{\"data.n\":1}", "{\"n\":1.0}"));
    assert_true(match("{\"data.n\":1}", "{\"n\":1e0}"));
    assert_true(match("{\"data.n\":100}", "{\"n\":1E2}"));
    assert_true(match("{\"data.n\":0.05}", "{\"n\":5e-2}"));
    assert_true(match("{\"data.n\":0}", "{\"n\":-0.0}"));
    assert_true(match("{\"data.n\":{\"$gt\":1e399}}", "{\"n\":1e400}"));
    assert_false(match("{\"data.n\":{\"$gt\":1e400}}", "{\"n\":1e399}"));
    assert_true(
        match("{\"data.n\":{\"$gt\":100000000000000000000}}", "{\"n\":100000000000000000001}"));
    assert_false(match("{\"data.n\":100000000000000000000}", "{\"n\":100000000000000000001}"));
    /* 2^53 + 1 and 2^53 are one double */
    assert_false(match("{\"data.n\":9007199254740993}", "{\"n\":9007199254740992}"));
    assert_true(match("{\"data.n\":{\"$lt\":-1e400}}", "{\"n\":-1e401}"));
    assert_true(match("{\"data.n\":{\"$gt\":-1e401}}", "{\"n\":-1e400}"));
    assert_true(match("{\"data.n\":{\"$gt\":0}}", "{\"n\":1e-400}"));
    assert_true(match("{\"data.n\":{\"$lt\":0}}", "{\"n\":-1e-400}"));
    assert_true(match("{\"data.n\":{\"$gte\":2.5,\"$lte\":2.50}}", "{\"n\":25e-1}"));
    assert_true(match("{\"data.n\":{\"$lt\":1.0000000000000000000000000001}}", "{\"n\":1}"));
    assert_true(match("{\"data.n\":{\"$gt\":0.1}}", "{\"n\":0.10000000000000000001}"));
    /* an exponent of 30 digits in the data saturates beyond any a filter holds */
    assert_true(match("{\"data.n\":{\"$gt\":1e999999999999999}}",
                      "{\"n\":1e100000000000000000000000000000}"));
    assert_true(match("{\"data.n\":{\"$lt\":1e-999999999999999}}",
                      "{\"n\":1e-100000000000000000000000000000}"));
    assert_true(match("{\"data.n\":{\"$in\":[7,\"7\",1e1]}}", "{\"n\":10}"));
    assert_false(match("{\"data.n\":{\"$nin\":[7,\"7\",1e1]}}", "{\"n\":10.00}"));
}

static void test_strings(void **state)
{
    (void)state;
    assert_true(match("{\"data.s\":\"caf\\u00e9\"}", "{\"s\":\"café\"}"));
    assert_true(match("{\"data.s\":\"café\"}", "{\"s\":\"caf\\u00E9\"}"));
    assert_true(match("{\"data.s\":\"a\\\"b\"}", "{\"s\":\"a\\\"b\"}"));
    assert_true(match("{\"data.s\":\"\\ud83d\\ude00\"}", "{\"s\":\"😀\"}"));
    assert_true(match("{\"data.s\":{\"$gt\":\"abc\"}}", "{\"s\":\"abd\"}"));
    assert_true(match("{\"data.s\":{\"$gt\":\"ab\"}}", "{\"s\":\"abc\"}"));
    assert_false(match("{\"data.s\":{\"$gt\":\"abc\"}}", "{\"s\":\"abc\"}"));
    assert_true(match("{\"data.s\":{\"$gte\":\"abc\"}}", "{\"s\":\"abc\"}"));
    assert_true(match("{\"data.s\":\"\"}", "{\"s\":\"\"}"));
}

static void test_paths(void **state)
{
    static const char *data = "{\"a\":{\"b\":[10,{\"c\":\"x\"},[1,2]],\"k.e\":1},\"d\\u0061\":5,"
                              "\"arr\":[],\"n\":null}";

    (void)state;
    assert_true(match("{\"data.a.b.0\":10}", data));
    assert_true(match("{\"data.a.b.1.c\":\"x\"}", data));
    assert_true(match("{\"data.a.b.2.1\":2}", data));
    assert_false(match("{\"data.a.b.3\":{\"$exists\":true}}", data));
    assert_false(match("{\"data.a.b.01\":{\"$exists\":true}}", data));
    assert_false(match("{\"data.a.b.x\":{\"$exists\":true}}", data));
    assert_false(match("{\"data.arr.0\":{\"$exists\":true}}", data));
    assert_true(match("{\"data.da\":5}", data)); /* escaped key */
    assert_false(match("{\"data.a.b.0.c\":{\"$exists\":true}}", data));
    assert_true(match("{\"data\":{\"$exists\":true}}", data));
    assert_true(match("{\"data.n.x\":{\"$exists\":false}}", data));
    assert_false(match("{\"data.a\":{\"$exists\":true}}", NULL));
    /* every condition must hold */
    assert_true(match("{\"data.a.b.0\":10,\"eventType\":\"SurveyResponse\"}", data));
    assert_false(match("{\"data.a.b.0\":10,\"eventType\":\"JobCreated\"}", data));
    /* malformed data is read as far as it is valid */
    assert_false(match("{\"data.a.b\":1}", "{\"a\":{\"b\""));
    assert_true(match("{\"data.a\":1}", "{\"a\":1"));
    assert_false(match("{\"data.b\":1}", "{\"a\":1"));
    assert_false(match("{\"data.a\":1}", "[1"));
}

static void test_refusals_name_the_path(void **state)
{
    char big[8000];
    size_t i, n;

    (void)state;
    refused("[]", "filter must be a JSON object");
    refused("", "filter must be a JSON object");
    refused("{\"groupId\":\"g\"}", "unknown path \"groupId\"");
    refused("{\"dataX\":1}", "unknown path \"dataX\"");
    refused("{\"data.\":1}", "data.");
    refused("{\"data.a..b\":1}", "empty segment");
    refused("{\"data.a\":[1]}", "data.a: a value must be a literal");
    refused("{\"data.a\":{}}", "data.a: an operator object needs");
    refused("{\"data.a\":{\"$regex\":\"x\"}}", "data.a: unknown operator \"$regex\"");
    refused("{\"data.a\":{\"b\":1}}", "data.a: unknown operator \"b\"");
    refused("{\"data.a\":{\"$gt\":true}}", "data.a: $gt needs a number or a string");
    refused("{\"data.a\":{\"$lte\":null}}", "data.a: $lte needs a number or a string");
    refused("{\"data.a\":{\"$in\":1}}", "data.a: $in needs an array");
    refused("{\"data.a\":{\"$nin\":[[1]]}}", "data.a: $nin must be a string, number");
    refused("{\"data.a\":{\"$in\":[{\"a\":1}]}}", "data.a: $in must be");
    refused("{\"data.a\":{\"$exists\":1}}", "data.a: $exists needs true or false");
    refused("{\"data.a\":{\"$eq\":{\"x\":1}}}", "data.a: $eq must be");
    refused("{\"data.a\":1e1000000000000000}", "data.a: the value is not a valid number");
    refused("{\"data.a\":01}", "data.a");
    refused("{\"data.a\":1} x", "unexpected text");
    refused("{\"data.a\":tru}", "data.a");
    refused("{\"data.a\" 1}", "data.a: malformed member");
    /* 33 conditions */
    n = (size_t)snprintf(big, sizeof(big), "{");
    for (i = 0; i < 33; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, "%s\"data.k%zu\":%zu", i ? "," : "", i, i);
    snprintf(big + n, sizeof(big) - n, "}");
    refused(big, "data.k32: more than 32 conditions");
    /* 32 are fine, counting operators */
    n = (size_t)snprintf(big, sizeof(big), "{\"data.x\":{\"$gt\":1,\"$lt\":9}");
    for (i = 0; i < 30; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, ",\"data.k%zu\":%zu", i, i);
    snprintf(big + n, sizeof(big) - n, "}");
    {
        struct kz_filter *f = NULL;

        assert_int_equal(kz_filter_compile(big, strlen(big), &f, NULL, 0), KZ_OK);
        assert_int_equal(kz_filter_conditions(f), 32);
        kz_filter_free(f);
    }
    /* over 4 KiB */
    memset(big, ' ', sizeof(big));
    big[0] = '{';
    big[KZ_FILTER_MAX] = '}';

    {
        struct kz_filter *f = NULL;
        char err[128];

        assert_int_equal(kz_filter_compile(big, KZ_FILTER_MAX + 1, &f, err, sizeof(err)),
                         KZ_ERR_INVALID);
        assert_non_null(strstr(err, "more than 4096 bytes"));
        assert_int_equal(kz_filter_compile(big, KZ_FILTER_MAX, &f, err, sizeof(err)),
                         KZ_ERR_INVALID); /* not closed within the limit */
        big[KZ_FILTER_MAX - 1] = '}';
        assert_int_equal(kz_filter_compile(big, KZ_FILTER_MAX, &f, err, sizeof(err)), KZ_OK);
        assert_null(f);
    }
}

/* Evaluation cost of a typical 3-condition filter on a small event (printed, for the report and
 * docs/PERFORMANCE.md); the assertion only guards against something pathological. */
static void test_cost(void **state)
{
    static const char *flt = "{\"eventType\":{\"$in\":[\"SurveyResponse\",\"JobResponse\"]},"
                             "\"data.order.total\":{\"$gte\":100},\"data.order.items.0.sku\":"
                             "\"A-1\"}";
    static const char *data =
        "{\"customer\":{\"id\":\"c-991\",\"tier\":\"gold\"},\"order\":{\"id\":\"o-1\","
        "\"items\":[{\"sku\":\"A-1\",\"qty\":2},{\"sku\":\"B-7\",\"qty\":1}],\"total\":120.50},"
        "\"note\":\"leave at the door\"}";
    struct kz_filter *f = NULL;
    struct kz_filter_event ev = ev_with(data);
    struct timespec a, b;
    int i, n = 200000, hits = 0;
    double ns;

    (void)state;
    assert_int_equal(kz_filter_compile(flt, strlen(flt), &f, NULL, 0), KZ_OK);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (i = 0; i < n; i++)
        hits += kz_filter_match(f, &ev);
    clock_gettime(CLOCK_MONOTONIC, &b);
    ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / n;
    printf("filter cost: %.0f ns per evaluation (3 conditions, %zu-byte data)\n", ns, strlen(data));
    assert_int_equal(hits, n);
    assert_true(ns < 100000);
    kz_filter_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_passes_all),
        cmocka_unit_test(test_top_level_fields),
        cmocka_unit_test(test_types_must_match),
        cmocka_unit_test(test_numbers_exact),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_refusals_name_the_path),
        cmocka_unit_test(test_cost),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
