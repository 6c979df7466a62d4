/* test_ratelimit.c — fixed-window counters and in-flight counts (src/ratelimit.h), including
 * keys chosen on purpose to land on the same home slot. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "ratelimit.h"

#define MINUTE INT64_C(60000)
#define T0 (INT64_C(28000000) * MINUTE) /* the start of some minute */

static size_t home_of(const char *key)
{
    return kz_hash_str(key) % KZ_RATE_SLOTS;
}

/* Fills keys[0..n) with distinct keys "<prefix><i>" whose home slot is `home`. */
static void colliding_keys(const char *prefix, size_t home, char keys[][32], size_t n)
{
    size_t found = 0;

    for (unsigned i = 0; found < n; i++) {
        char k[32];

        snprintf(k, sizeof(k), "%s%u", prefix, i);
        if (home_of(k) == home)
            memcpy(keys[found++], k, sizeof(k));
        assert_true(i < 100u * 1000 * 1000);
    }
}

static struct kz_rate_table *table_new(void)
{
    return kz_calloc(1, sizeof(struct kz_rate_table));
}

/* ==== kz_window_hit ==== */

static void test_limit_and_wait(void **state)
{
    struct kz_rate_table *t = table_new();
    int i;

    (void)state;
    for (i = 0; i < 3; i++)
        assert_int_equal(kz_window_hit(t, "app", 3, T0 + 15000, true), 0);
    /* 45 s left in the minute */
    assert_int_equal(kz_window_hit(t, "app", 3, T0 + 15000, true), 45);
    /* a refused call is not counted, and the wait rounds up and is never 0 */
    assert_int_equal(kz_window_hit(t, "app", 3, T0 + 59999, true), 1);
    assert_int_equal(kz_window_hit(t, "app", 3, T0 + 30500, false), 30);
    assert_int_equal(kz_window_hit(t, "other", 3, T0 + 15000, true), 0);
    kz_free(t);
}

static void test_ask_does_not_count(void **state)
{
    struct kz_rate_table *t = table_new();
    int i;

    (void)state;
    for (i = 0; i < 10; i++)
        assert_int_equal(kz_window_hit(t, "ip", 2, T0, false), 0);
    assert_int_equal(kz_window_hit(t, "ip", 2, T0, true), 0);
    assert_int_equal(kz_window_hit(t, "ip", 2, T0, true), 0);
    assert_int_not_equal(kz_window_hit(t, "ip", 2, T0, false), 0);
    kz_free(t);
}

static void test_window_reset(void **state)
{
    struct kz_rate_table *t = table_new();

    (void)state;
    assert_int_equal(kz_window_hit(t, "app", 1, T0 + 100, true), 0);
    assert_int_equal(kz_window_hit(t, "app", 1, T0 + 59000, true), 1);
    /* the next minute starts from zero, the one after that too */
    assert_int_equal(kz_window_hit(t, "app", 1, T0 + MINUTE, true), 0);
    assert_int_equal(kz_window_hit(t, "app", 1, T0 + MINUTE + 1, true), 60);
    assert_int_equal(kz_window_hit(t, "app", 1, T0 + 3 * MINUTE, true), 0);
    kz_free(t);
}

/* Two keys whose hashes land on the same home slot keep separate counts: a throttled key does
 * not throttle its neighbour, and the neighbour's calls do not free the throttled one. */
static void test_colliding_keys_separate(void **state)
{
    struct kz_rate_table *t = table_new();
    char keys[2][32];
    int i;

    (void)state;
    colliding_keys("app-", home_of("app-0"), keys, 2);
    assert_string_not_equal(keys[0], keys[1]);
    assert_int_equal(home_of(keys[0]), home_of(keys[1]));
    for (i = 0; i < 5; i++)
        assert_int_equal(kz_window_hit(t, keys[0], 5, T0, true), 0);
    assert_int_not_equal(kz_window_hit(t, keys[0], 5, T0, true), 0);
    for (i = 0; i < 5; i++)
        assert_int_equal(kz_window_hit(t, keys[1], 5, T0, true), 0);
    assert_int_not_equal(kz_window_hit(t, keys[1], 5, T0, true), 0);
    assert_int_not_equal(kz_window_hit(t, keys[0], 5, T0, true), 0);
    /* the same in the other order of arrival, in the next minute */
    for (i = 0; i < 5; i++)
        assert_int_equal(kz_window_hit(t, keys[1], 5, T0 + MINUTE, true), 0);
    assert_int_equal(kz_window_hit(t, keys[0], 5, T0 + MINUTE, true), 0);
    kz_free(t);
}

/* A key whose home slot lies within another key's probes (a neighbour one slot on) is also kept
 * apart: the second key finds its own slot, not the first key's. */
static void test_neighbour_slots(void **state)
{
    struct kz_rate_table *t = table_new();
    char a[1][32], b[1][32];

    (void)state;
    colliding_keys("a", 100, a, 1);
    colliding_keys("b", 100, b, 1);
    assert_int_equal(kz_window_hit(t, a[0], 1, T0, true), 0); /* a takes 100 */
    assert_int_equal(kz_window_hit(t, b[0], 1, T0, true), 0); /* b takes 101 */
    colliding_keys("c", 101, a, 1);
    assert_int_equal(kz_window_hit(t, a[0], 1, T0, true), 0); /* c (home 101) takes 102 */
    assert_int_not_equal(kz_window_hit(t, b[0], 1, T0, true), 0);
    assert_int_not_equal(kz_window_hit(t, a[0], 1, T0, true), 0);
    kz_free(t);
}

/* When all KZ_RATE_PROBES slots of a key hold other keys counted this minute, the key shares its
 * home slot's count (never an exemption); in the next minute it has a slot of its own again. */
static void test_all_probes_taken(void **state)
{
    struct kz_rate_table *t = table_new();
    char keys[KZ_RATE_PROBES + 1][32];
    size_t home = 7;
    int i;

    (void)state;
    colliding_keys("k", home, keys, KZ_RATE_PROBES + 1);
    /* keys[0] takes the home slot to its limit, keys[1..15] one call each on the next slots */
    for (i = 0; i < 3; i++)
        assert_int_equal(kz_window_hit(t, keys[0], 3, T0, true), 0);
    for (i = 1; i < KZ_RATE_PROBES; i++)
        assert_int_equal(kz_window_hit(t, keys[i], 3, T0, true), 0);
    for (i = 0; i < KZ_RATE_PROBES; i++)
        assert_string_equal(t->slot[home + (size_t)i].key, keys[i]);
    /* the 17th colliding key: every probe slot taken, so it counts in keys[0]'s slot, which is
     * at its limit */
    assert_int_not_equal(kz_window_hit(t, keys[KZ_RATE_PROBES], 3, T0, true), 0);
    /* the other keys are untouched by it */
    for (i = 1; i < KZ_RATE_PROBES; i++)
        assert_int_equal(t->slot[home + (size_t)i].count, 1);
    /* a slot that frees up in the next minute is its own again */
    assert_int_equal(kz_window_hit(t, keys[KZ_RATE_PROBES], 3, T0 + MINUTE, true), 0);
    assert_int_equal(kz_window_hit(t, keys[KZ_RATE_PROBES], 3, T0 + MINUTE, true), 0);
    assert_int_equal(kz_window_hit(t, keys[0], 3, T0 + MINUTE, true), 0);
    assert_int_equal(t->slot[home].count, 2);
    kz_free(t);
}

/* A shared home slot whose count is below the limit lets the 17th key through, counting it there.
 */
static void test_all_probes_taken_shares_count(void **state)
{
    struct kz_rate_table *t = table_new();
    char keys[KZ_RATE_PROBES + 1][32];
    size_t home = KZ_RATE_SLOTS - 3; /* probes wrap around the end of the table */
    int i;

    (void)state;
    colliding_keys("w", home, keys, KZ_RATE_PROBES + 1);
    for (i = 0; i < KZ_RATE_PROBES; i++)
        assert_int_equal(kz_window_hit(t, keys[i], 2, T0, true), 0);
    assert_string_equal(t->slot[(home + KZ_RATE_PROBES - 1) % KZ_RATE_SLOTS].key,
                        keys[KZ_RATE_PROBES - 1]);
    assert_int_equal(kz_window_hit(t, keys[KZ_RATE_PROBES], 2, T0, true), 0);
    assert_int_equal(t->slot[home].count, 2);
    assert_int_not_equal(kz_window_hit(t, keys[0], 2, T0, true), 0);
    kz_free(t);
}

/* ==== struct kz_ratelimit ==== */

static void test_policies(void **state)
{
    struct kz_ratelimit *rl = kz_ratelimit_new();
    int i;

    (void)state;
    for (i = 0; i < 1000; i++)
        assert_int_equal(kz_ratelimit_call(rl, "app", 0, T0), 0); /* 0 = off */
    for (i = 0; i < 2; i++)
        assert_int_equal(kz_ratelimit_call(rl, "app", 2, T0), 0);
    assert_int_equal(kz_ratelimit_call(rl, "app", 2, T0), 60);
    /* auth: per application, then per address */
    for (i = 0; i < KZ_AUTH_FAILURES_PER_APP; i++)
        assert_int_equal(kz_ratelimit_auth(rl, "app", "10.0.0.1", T0, true), 0);
    assert_int_equal(kz_ratelimit_auth(rl, "app", "10.0.0.2", T0, false), 60);
    assert_int_equal(kz_ratelimit_auth(rl, "app2", "10.0.0.2", T0, false), 0);
    for (i = KZ_AUTH_FAILURES_PER_APP; i < KZ_AUTH_FAILURES_PER_IP; i++) {
        char app[16];

        snprintf(app, sizeof(app), "x%d", i);
        assert_int_equal(kz_ratelimit_auth(rl, app, "10.0.0.1", T0, true), 0);
    }
    assert_int_equal(kz_ratelimit_auth(rl, "app3", "10.0.0.1", T0 + 1000, false), 59);
    /* admin: its own table */
    assert_int_equal(kz_ratelimit_admin(rl, "10.0.0.1", T0, false), 0);
    for (i = 0; i < KZ_ADMIN_FAILURES_PER_IP; i++)
        assert_int_equal(kz_ratelimit_admin(rl, "10.0.0.1", T0, true), 0);
    assert_int_equal(kz_ratelimit_admin(rl, "10.0.0.1", T0, false), 60);
    assert_int_equal(kz_ratelimit_admin(rl, "10.0.0.1", T0 + MINUTE, false), 0);
    kz_ratelimit_free(rl);
}

static void test_acquire_release(void **state)
{
    struct kz_ratelimit *rl = kz_ratelimit_new();
    char keys[2][32];
    int i;

    (void)state;
    colliding_keys("hs", 3, keys, 2);
    for (i = 0; i < 4; i++)
        assert_true(kz_ratelimit_acquire(rl, keys[0], 4));
    assert_false(kz_ratelimit_acquire(rl, keys[0], 4));
    assert_int_equal(kz_ratelimit_held(rl, keys[0]), 4);
    /* a colliding key has its own count */
    assert_true(kz_ratelimit_acquire(rl, keys[1], 4));
    assert_int_equal(kz_ratelimit_held(rl, keys[1]), 1);
    kz_ratelimit_release(rl, keys[0]);
    assert_true(kz_ratelimit_acquire(rl, keys[0], 4));
    for (i = 0; i < 4; i++)
        kz_ratelimit_release(rl, keys[0]);
    kz_ratelimit_release(rl, keys[1]);
    assert_int_equal(kz_ratelimit_held(rl, keys[0]), 0);
    assert_int_equal(kz_ratelimit_held(rl, keys[1]), 0);
    kz_ratelimit_free(rl);
}

/* In-flight counts never share: with every probe slot held by other keys, a new key is refused
 * until one is given back. */
static void test_acquire_all_probes_taken(void **state)
{
    struct kz_ratelimit *rl = kz_ratelimit_new();
    char keys[KZ_RATE_PROBES + 1][32];
    int i;

    (void)state;
    colliding_keys("p", 500, keys, KZ_RATE_PROBES + 1);
    for (i = 0; i < KZ_RATE_PROBES; i++)
        assert_true(kz_ratelimit_acquire(rl, keys[i], 4));
    assert_false(kz_ratelimit_acquire(rl, keys[KZ_RATE_PROBES], 4));
    assert_int_equal(kz_ratelimit_held(rl, keys[KZ_RATE_PROBES]), 0);
    kz_ratelimit_release(rl, keys[5]);
    assert_true(kz_ratelimit_acquire(rl, keys[KZ_RATE_PROBES], 4));
    assert_int_equal(kz_ratelimit_held(rl, keys[KZ_RATE_PROBES]), 1);
    assert_int_equal(kz_ratelimit_held(rl, keys[0]), 1);
    kz_ratelimit_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limit_and_wait),
        cmocka_unit_test(test_ask_does_not_count),
        cmocka_unit_test(test_window_reset),
        cmocka_unit_test(test_colliding_keys_separate),
        cmocka_unit_test(test_neighbour_slots),
        cmocka_unit_test(test_all_probes_taken),
        cmocka_unit_test(test_all_probes_taken_shares_count),
        cmocka_unit_test(test_policies),
        cmocka_unit_test(test_acquire_release),
        cmocka_unit_test(test_acquire_all_probes_taken),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
