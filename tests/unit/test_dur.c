/* test_dur.c — duration and duration-list parsing (src/dur.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "dur.h"

/* ==== kz_dur_parse ==== */

static void test_parse_valid(void **state)
{
    static const struct {
        const char *s;
        int64_t ms;
    } cases[] = {
        {"500ms", 500},
        {"15s", 15000},
        {"1m", 60000},
        {"10m", 600000},
        {"1h", 3600000},
        {"7d", 604800000},
        {"1h30m", 5400000},
        {"1d2h3m4s5ms", 86400000 + 7200000 + 180000 + 4000 + 5},
        {"1m1ms", 60001},
        {"2s500ms", 2500},
        {"0s", 0},
        {"0ms", 0},
        {"0d0h", 0},
        {"01s", 1000},
        {"24h", 86400000},
        {"36525d", KZ_DUR_MAX_MS},
        {"876600h", KZ_DUR_MAX_MS},
        {"3155760000000ms", KZ_DUR_MAX_MS},
        {"36524d23h59m59s999ms", KZ_DUR_MAX_MS - 1},
    };
    size_t i;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(cases); i++) {
        int64_t ms = -42;

        if (kz_dur_parse(cases[i].s, &ms) != KZ_OK)
            fail_msg("rejected \"%s\"", cases[i].s);
        assert_int_equal(ms, cases[i].ms);
    }
}

static void test_parse_invalid(void **state)
{
    static const char *const cases[] = {
        "",
        "15",
        "0",
        "-1s",
        "+1s",
        " 1s",
        "1s ",
        "1 s",
        "1.5h",
        "1,5h",
        "1H",
        "1S",
        "1Ms",
        "s",
        "ms",
        "d",
        "1x",
        "1sec",
        "1mss",
        "1msx",
        "1hh",
        "1m1m",
        "1d1d",
        "30m1h",
        "1s1m",
        "1ms1s",
        "1h30",
        "1h 30m",
        "1h\n",
        "36525d1ms",
        "36526d",
        "876601h",
        "3155760000001ms",
        "9223372036854775807ms",
        "99999999999999999999999999s",
        "106751991167300d",
    };
    size_t i;
    int64_t ms = -42;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(cases); i++) {
        if (kz_dur_parse(cases[i], &ms) != KZ_ERR_INVALID)
            fail_msg("accepted \"%s\"", cases[i]);
    }
    assert_int_equal(kz_dur_parse(NULL, &ms), KZ_ERR_INVALID);
    assert_int_equal(ms, -42);
}

/* ==== kz_dur_list_parse ==== */

static void test_list_default_schedule(void **state)
{
    static const int64_t want[] = {60000, 600000, 3600000, 14400000, 43200000, 86400000};
    int64_t out[8];
    size_t n = 0, i;

    (void)state;
    assert_int_equal(kz_dur_list_parse("1m,10m,1h,4h,12h,24h", out, 8, &n), KZ_OK);
    assert_int_equal(n, 6);
    for (i = 0; i < n; i++)
        assert_int_equal(out[i], want[i]);
}

static void test_list_spaces_and_single(void **state)
{
    int64_t out[4];
    size_t n = 0;

    (void)state;
    assert_int_equal(kz_dur_list_parse(" 1m , 10m ,\t1h30m\t", out, 4, &n), KZ_OK);
    assert_int_equal(n, 3);
    assert_int_equal(out[0], 60000);
    assert_int_equal(out[1], 600000);
    assert_int_equal(out[2], 5400000);
    assert_int_equal(kz_dur_list_parse("5s", out, 1, &n), KZ_OK);
    assert_int_equal(n, 1);
    assert_int_equal(out[0], 5000);
    assert_int_equal(kz_dur_list_parse("1ms,1ms", out, 4, &n), KZ_OK);
    assert_int_equal(n, 2);
    assert_int_equal(out[1], 1);
}

static void test_list_max_boundary(void **state)
{
    int64_t out[3] = {0, 0, 0};
    size_t n = 77;

    (void)state;
    assert_int_equal(kz_dur_list_parse("1s,2s,3s", out, 3, &n), KZ_OK);
    assert_int_equal(n, 3);
    assert_int_equal(out[2], 3000);
    n = 77;
    assert_int_equal(kz_dur_list_parse("1s,2s,3s", out, 2, &n), KZ_ERR_TOOBIG);
    assert_int_equal(n, 77);
    assert_int_equal(kz_dur_list_parse("1s", out, 0, &n), KZ_ERR_TOOBIG);
    assert_int_equal(n, 77);
}

static void test_list_invalid(void **state)
{
    static const char *const cases[] = {
        "",       " ",       ",",       "1s,",       ",1s",   "1s,,2s", "1s, ,2s",
        "0s",     "1s,0ms",  "0s,1s",   "1s,bogus",  "1s 2s", "1s;2s",  "15",
        "1s,-1s", "1s,1.5s", "1s,\n2s", "1s,36526d", "1s,2S",
    };
    size_t i, n = 77;
    int64_t out[8];

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(cases); i++) {
        if (kz_dur_list_parse(cases[i], out, 8, &n) != KZ_ERR_INVALID)
            fail_msg("accepted \"%s\"", cases[i]);
    }
    assert_int_equal(kz_dur_list_parse(NULL, out, 8, &n), KZ_ERR_INVALID);
    assert_int_equal(n, 77);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),           cmocka_unit_test(test_parse_invalid),
        cmocka_unit_test(test_list_default_schedule), cmocka_unit_test(test_list_spaces_and_single),
        cmocka_unit_test(test_list_max_boundary),     cmocka_unit_test(test_list_invalid),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
