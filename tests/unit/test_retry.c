/* test_retry.c — retry delays with jitter, Retry-After parsing and honouring (src/retry.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "retry.h"

static const int64_t sched[] = {60000, 600000, 3600000, 14400000, 43200000, 86400000};
#define NSCHED KZ_ARRAY_LEN(sched)

/* "Sun, 06 Nov 1994 08:49:37 GMT" */
#define RFC_EPOCH_MS INT64_C(784111777000)

/* ==== kz_retry_delay_ms ==== */

static void test_delay_extremes(void **state)
{
    (void)state;
    assert_int_equal(kz_retry_delay_ms(sched, NSCHED, 1, 0), 48000);
    assert_int_equal(kz_retry_delay_ms(sched, NSCHED, 1, UINT32_MAX), 72000);
    assert_int_equal(kz_retry_delay_ms(sched, NSCHED, 2, 0), 480000);
    assert_int_equal(kz_retry_delay_ms(sched, NSCHED, 6, 0), 69120000);
    assert_int_equal(kz_retry_delay_ms(sched, NSCHED, 6, UINT32_MAX), 103680000);
    /* Midpoint: r = 0x8000 of 0xffff gives a factor a hair above 1. */
    assert_int_equal(kz_retry_delay_ms(sched, NSCHED, 1, 0x80000000u), 60000);
    assert_int_equal(kz_retry_delay_ms(sched, NSCHED, 1, 0x7fffffffu), 59999);
}

static void test_delay_out_of_retries(void **state)
{
    (void)state;
    assert_int_equal(kz_retry_delay_ms(sched, NSCHED, NSCHED + 1, 0), -1);
    assert_int_equal(kz_retry_delay_ms(sched, NSCHED, 1000, UINT32_MAX), -1);
    assert_int_equal(kz_retry_delay_ms(sched, 0, 1, 0), -1);
    assert_int_equal(kz_retry_delay_ms(NULL, 0, 1, 0), -1);
}

static void test_delay_within_bounds_and_monotonic(void **state)
{
    size_t r;
    uint64_t rnd;

    (void)state;
    for (r = 1; r <= NSCHED; r++) {
        int64_t base = sched[r - 1], prev = 0;

        for (rnd = 0; rnd <= UINT32_MAX; rnd += 0x00fff1ffu) {
            int64_t d = kz_retry_delay_ms(sched, NSCHED, (unsigned)r, (uint32_t)rnd);

            assert_true(d >= base * 8 / 10);
            assert_true(d <= base * 12 / 10);
            assert_true(d >= prev);
            prev = d;
        }
    }
}

static void test_delay_spreads(void **state)
{
    /* Different rnd values give different delays: the jitter is really applied. */
    int64_t a = kz_retry_delay_ms(sched, NSCHED, 3, 0x10000000u);
    int64_t b = kz_retry_delay_ms(sched, NSCHED, 3, 0xc0000000u);

    (void)state;
    assert_true(a < 3600000);
    assert_true(b > 3600000);
}

static void test_delay_small_and_odd_bases(void **state)
{
    static const int64_t tiny[] = {1, 0, -5, 2};
    static const int64_t huge[] = {INT64_MAX, INT64_C(3155760000000)};

    (void)state;
    assert_int_equal(kz_retry_delay_ms(tiny, 4, 1, 0), 1);          /* 0.8 ms floors to 1 */
    assert_int_equal(kz_retry_delay_ms(tiny, 4, 1, UINT32_MAX), 1); /* 1.2 ms rounds down */
    assert_int_equal(kz_retry_delay_ms(tiny, 4, 2, 0), 1);
    assert_int_equal(kz_retry_delay_ms(tiny, 4, 3, UINT32_MAX), 1);
    assert_int_equal(kz_retry_delay_ms(tiny, 4, 4, UINT32_MAX), 2);
    assert_int_equal(kz_retry_delay_ms(tiny, 4, 4, 0), 1);
    assert_int_equal(kz_retry_delay_ms(huge, 2, 1, UINT32_MAX), INT64_MAX);
    assert_true(kz_retry_delay_ms(huge, 2, 1, 0) > INT64_MAX / 10 * 7);
    assert_true(kz_retry_delay_ms(huge, 2, 1, 0) < INT64_MAX / 10 * 9);
    assert_int_equal(kz_retry_delay_ms(huge, 2, 2, UINT32_MAX), INT64_C(3786912000000));
    assert_int_equal(kz_retry_delay_ms(huge, 2, 2, 0), INT64_C(2524608000000));
}

/* ==== kz_retry_after_parse: delta-seconds ==== */

static void test_after_seconds(void **state)
{
    (void)state;
    assert_int_equal(kz_retry_after_parse("120", 0), 120000);
    assert_int_equal(kz_retry_after_parse("0", 123), 0);
    assert_int_equal(kz_retry_after_parse("007", 0), 7000);
    assert_int_equal(kz_retry_after_parse(" 5 ", 0), 5000);
    assert_int_equal(kz_retry_after_parse("\t5\r\n", 0), 5000);
    /* Independent of now. */
    assert_int_equal(kz_retry_after_parse("5", RFC_EPOCH_MS), 5000);
    /* The cap: 10 years. */
    assert_int_equal(kz_retry_after_parse("315359999", 0), INT64_C(315359999000));
    assert_int_equal(kz_retry_after_parse("315360000", 0), KZ_RETRY_AFTER_MAX_MS);
    assert_int_equal(kz_retry_after_parse("315360001", 0), KZ_RETRY_AFTER_MAX_MS);
    assert_int_equal(kz_retry_after_parse("99999999999999999999999999999", 0),
                     KZ_RETRY_AFTER_MAX_MS);
}

static void test_after_invalid(void **state)
{
    static const char *const bad[] = {
        "",
        "   ",
        "\r\n",
        "-1",
        "+5",
        "1.5",
        "5s",
        "5 5",
        "0x10",
        "1e3",
        "five",
        "sun, 06 nov 1994 08:49:37 gmt",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 GMTx",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun,06 Nov 1994 08:49:37 GMT ",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 06-Nov-1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08.49.37 GMT",
        "Xyz, 06 Nov 1994 08:49:37 GMT", /* no such weekday */
        "06 Nov 1994 08:49:37 GMT",      /* curl_getdate alone takes these */
        "1994-11-06 08:49:37",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Thu, 30 Feb 2023 00:00:00 GMT",
        "Sun, 06 Nov 0099 08:49:37 GMT", /* curl_getdate would read 1999 */
        "Fri, 31 Dec 1582 00:00:00 GMT", /* before curl_getdate's range */
        /* RFC 850 */
        "Sunday, 06-Nov-94 08:49:37 UTC",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun, 06-Nov-94 08:49:37 GMT",
        "sunday, 06-Nov-94 08:49:37 GMT",
        "Sunday,06-Nov-94 08:49:37 GMT ",
        "Sunday, 6-Nov-94 08:49:37 GMT",
        "Sunday, 06 Nov 94 08:49:37 GMT",
        "Sunday, 31-Nov-94 08:49:37 GMT",
        "Sunday, 29-Feb-95 08:49:37 GMT",
        "Sunday, 06-Nov-94 24:49:37 GMT",
        "Funday, 06-Nov-94 08:49:37 GMT",
        /* asctime */
        "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 94",
        "Sun Nov  6 08:49:37 1994 GMT",
        "Sun Nov  0 08:49:37 1994",
        "Sun Nov 31 08:49:37 1994",
        "Sun Now  6 08:49:37 1994",
        "Sun Nov  6 08:49:61 1994",
        "Sun Nov  6 8:49:37 1994 ",
        "Sun,Nov  6 08:49:37 1994",
        "Sun, 06 Now 1994 08:49:37 GMT", /* no such month */
        "Sun, 00 Nov 1994 08:49:37 GMT", /* day 0 */
        "Wed, 31 Nov 1994 08:49:37 GMT", /* November has 30 days */
        "Wed, 29 Feb 2023 00:00:00 GMT", /* not a leap year */
        "Mon, 29 Feb 2100 00:00:00 GMT", /* century, not a leap year */
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Nov 199a 08:49:37 GMT",
    };
    size_t i;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(bad); i++) {
        if (kz_retry_after_parse(bad[i], RFC_EPOCH_MS) != -1)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    assert_int_equal(kz_retry_after_parse(NULL, 0), -1);
}

/* ==== kz_retry_after_parse: HTTP dates ==== */

static void test_after_date(void **state)
{
    const char *d = "Sun, 06 Nov 1994 08:49:37 GMT";

    (void)state;
    assert_int_equal(kz_retry_after_parse(d, RFC_EPOCH_MS - 5000), 5000);
    assert_int_equal(kz_retry_after_parse(d, RFC_EPOCH_MS - 500), 500);
    assert_int_equal(kz_retry_after_parse(d, RFC_EPOCH_MS), 0);
    assert_int_equal(kz_retry_after_parse(d, RFC_EPOCH_MS + 1), 0);
    assert_int_equal(kz_retry_after_parse(d, RFC_EPOCH_MS + 86400000), 0);
    assert_int_equal(kz_retry_after_parse(" Sun, 06 Nov 1994 08:49:37 GMT\r\n", RFC_EPOCH_MS - 1),
                     1);
    /* One day and one second later: checks day, hour, minute and second arithmetic. */
    assert_int_equal(kz_retry_after_parse("Mon, 07 Nov 1994 08:49:38 GMT", RFC_EPOCH_MS), 86401000);
    assert_int_equal(kz_retry_after_parse("Sun, 06 Nov 1994 09:50:38 GMT", RFC_EPOCH_MS), 3661000);
    /* A leap second is accepted. */
    assert_int_equal(kz_retry_after_parse("Sun, 06 Nov 1994 08:49:60 GMT", RFC_EPOCH_MS), 23000);
    /* The weekday is not compared with the date (curl_getdate does not). */
    assert_int_equal(kz_retry_after_parse("Mon, 06 Nov 1994 08:49:38 GMT", RFC_EPOCH_MS), 1000);
}

/* The obsolete forms RFC 9110 section 5.6.7 still requires recipients to accept. */
static void test_after_date_rfc850(void **state)
{
    (void)state;
    assert_int_equal(kz_retry_after_parse("Sunday, 06-Nov-94 08:49:37 GMT", RFC_EPOCH_MS - 5000),
                     5000);
    assert_int_equal(kz_retry_after_parse("\tSunday, 06-Nov-94 08:49:37 GMT \r\n", RFC_EPOCH_MS),
                     0);
    assert_int_equal(kz_retry_after_parse("Wednesday, 09-Nov-94 08:49:37 GMT", RFC_EPOCH_MS),
                     3 * 86400000);
    assert_int_equal(
        kz_retry_after_parse("Tuesday, 29-Feb-00 00:00:00 GMT", INT64_C(951782400000) - 1), 1);
}

static void test_after_date_asctime(void **state)
{
    (void)state;
    assert_int_equal(kz_retry_after_parse("Sun Nov  6 08:49:37 1994", RFC_EPOCH_MS - 5000), 5000);
    assert_int_equal(kz_retry_after_parse("Sun Nov 06 08:49:37 1994", RFC_EPOCH_MS - 5000), 5000);
    assert_int_equal(kz_retry_after_parse("Thu Nov 10 08:49:38 1994", RFC_EPOCH_MS),
                     4 * 86400000 + 1000);
    assert_int_equal(kz_retry_after_parse(" Sun Nov  6 08:49:37 1994\r\n", RFC_EPOCH_MS + 1), 0);
    assert_int_equal(kz_retry_after_parse("Fri Dec 31 23:59:59 9999", RFC_EPOCH_MS),
                     KZ_RETRY_AFTER_MAX_MS);
}

static void test_after_date_calendar(void **state)
{
    (void)state;
    /* Epoch, leap days, and a date before 1970 (negative day numbers). */
    assert_int_equal(kz_retry_after_parse("Thu, 01 Jan 1970 00:00:00 GMT", -1000), 1000);
    assert_int_equal(kz_retry_after_parse("Wed, 31 Dec 1969 23:59:58 GMT", -5000), 3000);
    assert_int_equal(kz_retry_after_parse("Thu, 29 Feb 2024 00:00:00 GMT", INT64_C(1709164800000)),
                     0);
    assert_int_equal(kz_retry_after_parse("Fri, 01 Mar 2024 00:00:00 GMT", INT64_C(1709164800000)),
                     86400000);
    assert_int_equal(kz_retry_after_parse("Tue, 29 Feb 2000 12:00:00 GMT", INT64_C(951825600000)),
                     0);
    assert_int_equal(
        kz_retry_after_parse("Sun, 28 Feb 2100 00:00:00 GMT", INT64_C(4107456000000) - 1), 1);
}

static void test_after_date_cap(void **state)
{
    (void)state;
    assert_int_equal(kz_retry_after_parse("Fri, 31 Dec 9999 23:59:59 GMT", RFC_EPOCH_MS),
                     KZ_RETRY_AFTER_MAX_MS);
    assert_int_equal(kz_retry_after_parse("Fri, 31 Dec 9999 23:59:59 GMT", INT64_MIN),
                     KZ_RETRY_AFTER_MAX_MS);
    assert_int_equal(kz_retry_after_parse("Fri, 31 Dec 9999 23:59:59 GMT", INT64_MAX), 0);
    /* Just under the cap is returned as is. */
    assert_int_equal(kz_retry_after_parse("Sun, 06 Nov 1994 08:49:37 GMT",
                                          RFC_EPOCH_MS - KZ_RETRY_AFTER_MAX_MS + 1),
                     KZ_RETRY_AFTER_MAX_MS - 1);
    assert_int_equal(kz_retry_after_parse("Sun, 06 Nov 1994 08:49:37 GMT",
                                          RFC_EPOCH_MS - KZ_RETRY_AFTER_MAX_MS - 1),
                     KZ_RETRY_AFTER_MAX_MS);
}

/* ==== kz_retry_honour ==== */

static void test_honour(void **state)
{
    static const int64_t two[] = {1000, 50000};

    (void)state;
    /* No Retry-After: the jittered schedule. */
    assert_int_equal(kz_retry_honour(sched, NSCHED, 1, 0, -1), 48000);
    assert_int_equal(kz_retry_honour(sched, NSCHED, 2, UINT32_MAX, -1), 720000);
    /* Retry-After wins, without jitter, even above this retry's own schedule entry. */
    assert_int_equal(kz_retry_honour(two, 2, 1, 0, 5000), 5000);
    assert_int_equal(kz_retry_honour(two, 2, 1, UINT32_MAX, 20000), 20000);
    assert_int_equal(kz_retry_honour(two, 2, 1, 0, 50000), 50000);
    /* ... capped at the last (longest) entry. */
    assert_int_equal(kz_retry_honour(two, 2, 1, 0, 50001), 50000);
    assert_int_equal(kz_retry_honour(two, 2, 2, 0, KZ_RETRY_AFTER_MAX_MS), 50000);
    /* "Retry-After: 0" still waits 1 ms. */
    assert_int_equal(kz_retry_honour(two, 2, 1, 0, 0), 1);
    assert_int_equal(kz_retry_honour(two, 2, 1, 0, 1), 1);
    /* Out of retries: dead, whatever the receiver asked for. */
    assert_int_equal(kz_retry_honour(two, 2, 3, 0, 5000), -1);
    assert_int_equal(kz_retry_honour(two, 2, 3, 0, -1), -1);
    assert_int_equal(kz_retry_honour(NULL, 0, 1, 0, 5000), -1);
}

static void test_honour_with_parsed_header(void **state)
{
    int64_t ra = kz_retry_after_parse("30", 0);

    (void)state;
    assert_int_equal(kz_retry_honour(sched, NSCHED, 4, 12345, ra), 30000);
    ra = kz_retry_after_parse("garbage", 0);
    assert_int_equal(kz_retry_honour(sched, NSCHED, 4, 0, ra), 11520000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delay_extremes),
        cmocka_unit_test(test_delay_out_of_retries),
        cmocka_unit_test(test_delay_within_bounds_and_monotonic),
        cmocka_unit_test(test_delay_spreads),
        cmocka_unit_test(test_delay_small_and_odd_bases),
        cmocka_unit_test(test_after_seconds),
        cmocka_unit_test(test_after_invalid),
        cmocka_unit_test(test_after_date),
        cmocka_unit_test(test_after_date_rfc850),
        cmocka_unit_test(test_after_date_asctime),
        cmocka_unit_test(test_after_date_calendar),
        cmocka_unit_test(test_after_date_cap),
        cmocka_unit_test(test_honour),
        cmocka_unit_test(test_honour_with_parsed_header),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
