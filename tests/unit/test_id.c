/* test_id.c — random UUIDs and tokens, and the path-id character check (src/id.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "id.h"

/* ==== kz_id_uuid4 ==== */

static bool is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static void assert_uuid4(const char *u)
{
    size_t i;

    assert_int_equal(strlen(u), 36);
    for (i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            assert_int_equal(u[i], '-');
            continue;
        }
        if (!is_lower_hex(u[i]))
            fail_msg("%s: bad character at %zu", u, i);
    }
    assert_int_equal(u[14], '4');
    assert_non_null(strchr("89ab", u[19]));
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_uuid4_format_and_uniqueness(void **state)
{
    enum { N = 2000 };
    char(*ids)[37] = kz_malloc(sizeof(*ids) * N);
    int seen_variant[4] = {0, 0, 0, 0};
    size_t i;

    (void)state;
    for (i = 0; i < N; i++) {
        memset(ids[i], 'X', sizeof(ids[i]));
        kz_id_uuid4(ids[i]);
        assert_uuid4(ids[i]);
        seen_variant[strchr("89ab", ids[i][19]) - "89ab"]++;
    }
    /* All four variant nibbles occur: the random bits around the fixed ones are kept. */
    for (i = 0; i < 4; i++)
        assert_true(seen_variant[i] > 0);
    qsort(ids, N, sizeof(*ids), cmp_str);
    for (i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    kz_free(ids);
}

/* ==== kz_id_token ==== */

static const char token_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void test_token_lengths_and_terminator(void **state)
{
    static const size_t lens[] = {0, 1, 31, 32, 63, 64, 65, 200};
    char buf[204];
    size_t i, k;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(lens); i++) {
        memset(buf, '!', sizeof(buf));
        kz_id_token(buf, lens[i]);
        assert_int_equal(strlen(buf), lens[i]);
        assert_int_equal(buf[lens[i] + 1], '!'); /* nothing written past the NUL */
        for (k = 0; k < lens[i]; k++) {
            if (!memchr(token_alphabet, buf[k], 64))
                fail_msg("character 0x%02x outside the alphabet", (unsigned char)buf[k]);
        }
    }
}

static void test_token_uniform(void **state)
{
    /* 64 symbols x 2000 expected each. A count outside [1700, 2300] is ~7 standard deviations
     * off for a uniform source, so this fails for a biased or incomplete alphabet, not by
     * chance. */
    enum { PER = 2000, TOTAL = 64 * PER };
    char *buf = kz_malloc(TOTAL + 1);
    unsigned counts[256];
    size_t i;

    (void)state;
    memset(counts, 0, sizeof(counts));
    kz_id_token(buf, TOTAL);
    for (i = 0; i < TOTAL; i++)
        counts[(unsigned char)buf[i]]++;
    for (i = 0; i < 64; i++) {
        unsigned c = counts[(unsigned char)token_alphabet[i]];

        if (c < PER - 300 || c > PER + 300)
            fail_msg("symbol '%c' drawn %u times, expected about %d", token_alphabet[i], c, PER);
    }
    kz_free(buf);
}

static void test_token_differs(void **state)
{
    char a[33], b[33];

    (void)state;
    kz_id_token(a, 32);
    kz_id_token(b, 32);
    assert_string_not_equal(a, b);
}

/* ==== kz_id_is_safe ==== */

static void test_is_safe_accepts(void **state)
{
    static const char *const ok[] = {
        "abc",
        "ABCxyz019",
        "a-b_c.d:e@f+g=h~i",
        "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
        "com.example.form",
        "...",
        ".a",
        "a..b",
        "~",
    };
    size_t i;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(ok); i++) {
        if (!kz_id_is_safe(ok[i], 64))
            fail_msg("refused \"%s\"", ok[i]);
    }
}

static void test_is_safe_rejects(void **state)
{
    static const char *const bad[] = {
        "",    ".",   "..",  "a/b",  "a?b",  "a#b",   "a%2fb", "a b",  "a\"b",     "a\\b",
        "a*b", "a'b", "a<b", "a>b",  "a;b",  "a,b",   "a&b",   "a!b",  "a$b",      "a(b)",
        "a|b", "a`b", "a^b", "a{b}", "a[b]", "a\x7f", "a\nb",  "a\tb", "\xc3\xa9", "a\x01",
    };
    size_t i;

    (void)state;
    for (i = 0; i < KZ_ARRAY_LEN(bad); i++) {
        if (kz_id_is_safe(bad[i], 64))
            fail_msg("accepted \"%s\"", bad[i]);
    }
    assert_false(kz_id_is_safe(NULL, 64));
}

static void test_is_safe_maxlen(void **state)
{
    char unterminated[4];

    (void)state;
    assert_true(kz_id_is_safe("abcd", 4));
    assert_false(kz_id_is_safe("abcd", 3));
    assert_false(kz_id_is_safe("a", 0));
    assert_true(kz_id_is_safe("a", 1));
    /* Reads at most maxlen + 1 bytes: ASan would flag a read past this buffer. */
    memcpy(unterminated, "abcd", 4);
    assert_false(kz_id_is_safe(unterminated, 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uuid4_format_and_uniqueness),
        cmocka_unit_test(test_token_lengths_and_terminator),
        cmocka_unit_test(test_token_uniform),
        cmocka_unit_test(test_token_differs),
        cmocka_unit_test(test_is_safe_accepts),
        cmocka_unit_test(test_is_safe_rejects),
        cmocka_unit_test(test_is_safe_maxlen),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
