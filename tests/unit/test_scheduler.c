/* test_scheduler.c — the transfer-slot scheduler (src/scheduler.h): round-robin fairness across
 * applications and endpoints, the per-endpoint, per-application and global caps, the claim
 * exclusions and room, the pace of rate-limited endpoints, and that no row or endpoint leaks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "scheduler.h"

static int64_t next_id;

/* Queues one row for webhook `wh` of application `app`; the row owns one heap string, so a row
 * the scheduler loses or frees twice shows in kz_alloc_live() or under ASan. */
static void push(struct kz_sched *s, const char *app, const char *wh)
{
    struct kz_claimed row;

    memset(&row, 0, sizeof(row));
    row.delivery_id = ++next_id;
    snprintf(row.wh.id, sizeof(row.wh.id), "%s", wh);
    snprintf(row.wh.app_id, sizeof(row.wh.app_id), "%s", app);
    row.wh.callback_url = kz_strdup("https://example.com/hook");
    kz_sched_push(s, &row);
    assert_int_equal(row.delivery_id, 0); /* moved */
    assert_null(row.wh.callback_url);
}

/* Queues one row for webhook "<prefix><i>". */
static void pushf(struct kz_sched *s, const char *app, const char *prefix, int i)
{
    char id[40];

    snprintf(id, sizeof(id), "%s%d", prefix, i);
    push(s, app, id);
}

/* Starts the next row; its webhook id into `wh` (when not NULL). */
static bool next(struct kz_sched *s, struct kz_sched_ep **ep, char *wh, char *app)
{
    struct kz_claimed row;

    if (!kz_sched_next(s, &row, ep))
        return false;
    assert_string_equal(kz_sched_ep_id(*ep), row.wh.id);
    if (wh)
        snprintf(wh, 40, "%s", row.wh.id);
    if (app)
        snprintf(app, 40, "%s", row.wh.app_id);
    kz_webhook_cleanup(&row.wh);
    kz_event_cleanup(&row.ev);
    return true;
}

static bool listed(const char **ids, size_t n, const char *id)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (!strcmp(ids[i], id))
            return true;
    }
    return false;
}

static int setup(void **state)
{
    (void)state;
    assert_int_equal(kz_alloc_live(), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    assert_int_equal(kz_alloc_live(), 0);
    return 0;
}

/* ==== fairness ==== */

/* Endpoints with queued work are served in turn: in every window of 3 starts each of the 3
 * endpoints appears once, whatever their backlog. */
static void test_round_robin_endpoints(void **state)
{
    struct kz_sched *s = kz_sched_new(8);
    struct kz_sched_ep *ep;
    char wh[40], seen[3][40];
    int i, k;

    (void)state;
    for (i = 0; i < 6; i++)
        push(s, "app1", "whA");
    for (i = 0; i < 2; i++)
        push(s, "app1", "whB");
    for (i = 0; i < 6; i++)
        push(s, "app1", "whC");
    for (k = 0; k < 2; k++) {
        for (i = 0; i < 3; i++) {
            assert_true(next(s, &ep, seen[i], NULL));
        }
        assert_string_not_equal(seen[0], seen[1]);
        assert_string_not_equal(seen[1], seen[2]);
        assert_string_not_equal(seen[0], seen[2]);
    }
    /* whB is empty now: the other two alternate. */
    assert_true(next(s, &ep, seen[0], NULL));
    assert_true(next(s, &ep, seen[1], NULL));
    assert_string_not_equal(seen[0], seen[1]);
    assert_string_not_equal(seen[0], "whB");
    assert_string_not_equal(seen[1], "whB");
    /* 14 rows, 8 slots each: all start; then nothing is left. */
    for (i = 0; i < 6; i++)
        assert_true(next(s, &ep, wh, NULL));
    assert_false(next(s, &ep, wh, NULL));
    assert_int_equal(kz_sched_inflight(s), 14);
    assert_int_equal(kz_sched_queued(s), 0);
    kz_sched_free(s);
}

/* An endpoint with one row among 50 with a deep backlog starts within one turn of the ring. */
static void test_no_endpoint_starved(void **state)
{
    struct kz_sched *s = kz_sched_new(1);
    struct kz_sched_ep *eps[64];
    char wh[40];
    int i, j, n = 0, at = -1;

    (void)state;
    for (i = 0; i < 50; i++) {
        for (j = 0; j < 20; j++)
            pushf(s, "app1", "busy", i);
    }
    /* cap 1: one each, then every endpoint is at its cap */
    for (i = 0; i < 50; i++)
        assert_true(next(s, &eps[i], NULL, NULL));
    assert_false(next(s, &eps[50], NULL, NULL));
    push(s, "app1", "late");
    /* Slots free up one at a time; the late endpoint must get one within the next 51 starts. */
    for (i = 0; i < 51 && at < 0; i++) {
        kz_sched_done(s, eps[i % 50]);
        while (next(s, &eps[i % 50], wh, NULL)) {
            if (!strcmp(wh, "late"))
                at = n;
            n++;
        }
    }
    assert_true(at >= 0 && at <= 1);
    kz_sched_free(s);
}

/* Applications are served in turn first: an application with 100 endpoints does not get 100
 * starts for every one of an application with a single endpoint. */
static void test_round_robin_applications(void **state)
{
    struct kz_sched *s = kz_sched_new(8);
    struct kz_sched_ep *ep;
    char app[40];
    int i, big = 0, small = 0;

    (void)state;
    for (i = 0; i < 100; i++)
        pushf(s, "big", "big", i);
    for (i = 0; i < 8; i++)
        push(s, "small", "one");
    for (i = 0; i < 16; i++) {
        assert_true(next(s, &ep, NULL, app));
        if (!strcmp(app, "big"))
            big++;
        else
            small++;
    }
    assert_int_equal(big, 8);
    assert_int_equal(small, 8);
    kz_sched_free(s);
}

/* ==== caps ==== */

static void test_endpoint_cap(void **state)
{
    struct kz_sched *s = kz_sched_new(2);
    struct kz_sched_ep *a, *b, *c;
    int i;

    (void)state;
    for (i = 0; i < 5; i++)
        push(s, "app1", "wh1");
    assert_true(next(s, &a, NULL, NULL));
    assert_true(next(s, &b, NULL, NULL));
    assert_ptr_equal(a, b);
    assert_false(next(s, &c, NULL, NULL)); /* at its cap of 2 */
    assert_int_equal(kz_sched_inflight(s), 2);
    kz_sched_done(s, a);
    assert_true(next(s, &c, NULL, NULL));
    assert_false(next(s, &c, NULL, NULL));
    kz_sched_done(s, b);
    kz_sched_done(s, c);
    assert_int_equal(kz_sched_inflight(s), 0);
    assert_int_equal(kz_sched_queued(s), 2);
    kz_sched_free(s); /* frees the two queued rows */
}

/* Past the soft cap an endpoint that already has transfers (of an application above its share
 * of the soft cap) waits; an idle endpoint may still start. */
static void test_soft_cap(void **state)
{
    struct kz_sched *s = kz_sched_new(1024);
    struct kz_sched_ep *ep;
    int i;

    (void)state;
    for (i = 0; i < KZ_SCHED_SOFT + 10; i++)
        push(s, "app1", "hot");
    while (next(s, &ep, NULL, NULL))
        ;
    assert_int_equal(kz_sched_inflight(s), KZ_SCHED_SOFT);
    push(s, "app1", "idle");
    push(s, "app1", "idle");
    assert_true(next(s, &ep, NULL, NULL));
    assert_string_equal(kz_sched_ep_id(ep), "idle");
    assert_false(next(s, &ep, NULL, NULL)); /* idle has one in flight now */
    assert_int_equal(kz_sched_inflight(s), KZ_SCHED_SOFT + 1);
    assert_int_equal(kz_sched_queued(s), 11);
    kz_sched_free(s);
}

/* All endpoints together never exceed the hard cap, however many applications have work. */
static void test_global_cap(void **state)
{
    struct kz_sched *s = kz_sched_new(1);
    struct kz_sched_ep *ep;
    char app[40];
    int i, j;

    (void)state;
    for (i = 0; i < 40; i++) {
        snprintf(app, sizeof(app), "app%d", i);
        for (j = 0; j < 60; j++) {
            char wh[40];

            snprintf(wh, sizeof(wh), "a%dw%d", i, j);
            push(s, app, wh);
        }
    }
    /* 40 applications: each may hold max(1792 / 40, 64) = 64; 40 x 60 = 2400 > 2048. */
    assert_int_equal(kz_sched_app_limit(s, "app0"), KZ_SCHED_APP_FLOOR);
    while (next(s, &ep, NULL, NULL))
        ;
    assert_int_equal(kz_sched_inflight(s), KZ_SCHED_HARD);
    assert_int_equal(kz_sched_claim_room(s), 0);
    /* Round-robin across applications: they share the 2048 slots evenly (51 or 52 each). */
    for (i = 0; i < 40; i++) {
        snprintf(app, sizeof(app), "app%d", i);
        assert_in_range(kz_sched_app_inflight(s, app), 51, 52);
    }
    kz_sched_done(s, ep);
    assert_int_equal(kz_sched_inflight(s), KZ_SCHED_HARD - 1);
    /* Below the hard cap again, but 352 rows that may start are queued: no claim needed. */
    assert_int_equal(kz_sched_claim_room(s), 0);
    assert_true(next(s, &ep, NULL, NULL));
    assert_false(next(s, &ep, NULL, NULL));
    kz_sched_free(s);
}

static void test_app_limit(void **state)
{
    struct kz_sched *s = kz_sched_new(8);
    char app[40];
    int i;

    (void)state;
    /* Alone, an application may not take the reserve. */
    assert_int_equal(kz_sched_app_limit(s, "x"), KZ_SCHED_HARD - KZ_SCHED_RESERVE);
    push(s, "a", "w1");
    assert_int_equal(kz_sched_app_limit(s, "a"), 1792);
    /* An application without work counts itself in: its share if it had some. */
    assert_int_equal(kz_sched_app_limit(s, "b"), 896);
    push(s, "b", "w2");
    assert_int_equal(kz_sched_app_limit(s, "a"), 896);
    push(s, "c", "w3");
    assert_int_equal(kz_sched_app_limit(s, "a"), 1792 / 3);
    for (i = 0; i < 100; i++) {
        snprintf(app, sizeof(app), "many%d", i);
        pushf(s, app, "m", i);
    }
    assert_int_equal(kz_sched_app_limit(s, "a"), KZ_SCHED_APP_FLOOR);
    kz_sched_free(s);
}

/* ==== claims ==== */

/* Exclusions: endpoints with a full queue; every known endpoint (queued or only in flight) of
 * an application with work enough for its limit; nobody else. */
static void test_exclusions(void **state)
{
    struct kz_sched *s = kz_sched_new(1);
    struct kz_sched_ep *ep;
    const char **ids;
    size_t n, i, target = kz_sched_queue_target(s);

    (void)state;
    assert_null(kz_sched_exclude(s, &n));
    assert_int_equal(n, 0);
    for (i = 0; i < target - 1; i++)
        push(s, "app1", "deep");
    push(s, "app1", "shallow");
    ids = kz_sched_exclude(s, &n);
    assert_int_equal(n, 0);
    assert_null(ids);
    push(s, "app1", "deep"); /* now at its target */
    ids = kz_sched_exclude(s, &n);
    assert_int_equal(n, 1);
    assert_string_equal(ids[0], "deep");
    kz_free(ids);
    /* Refill: once "deep" drains to half its target the caller is asked to claim again. */
    assert_false(kz_sched_take_refill(s));
    for (i = 0; i < target / 2; i++) {
        assert_true(next(s, &ep, NULL, NULL));
        kz_sched_done(s, ep);
        assert_true(next(s, &ep, NULL, NULL));
        kz_sched_done(s, ep);
    }
    assert_true(kz_sched_take_refill(s));
    assert_false(kz_sched_take_refill(s));
    kz_sched_free(s);

    /* An application at its limit: all its endpoints are excluded, not the other's. */
    s = kz_sched_new(1);
    for (i = 0; i < 1800; i++)
        pushf(s, "A", "A", (int)i);
    while (next(s, &ep, NULL, NULL))
        ;
    assert_int_equal(kz_sched_app_inflight(s, "A"), 1792);
    push(s, "B", "B0");
    push(s, "B", "B0");
    ids = kz_sched_exclude(s, &n);
    assert_int_equal(n, 1800);
    assert_true(listed(ids, n, "A0"));
    assert_true(listed(ids, n, "A1799"));
    assert_false(listed(ids, n, "B0"));
    kz_free(ids);
    kz_sched_free(s);
}

/* Claim room: free slots below the soft cap, at least the headroom below the hard cap, less
 * the queued rows that could start; rows parked for an application at its limit do not count. */
static void test_claim_room(void **state)
{
    struct kz_sched *s = kz_sched_new(8);
    struct kz_sched_ep *ep;
    size_t i;

    (void)state;
    assert_int_equal(kz_sched_claim_room(s), KZ_SCHED_CLAIM_MAX);
    for (i = 0; i < 100; i++)
        push(s, "a", "w");
    assert_int_equal(kz_sched_claim_room(s), KZ_SCHED_CLAIM_MAX - 100);
    for (i = 0; i < 200; i++)
        push(s, "a", "w");
    assert_int_equal(kz_sched_claim_room(s), 0);
    kz_sched_free(s);

    /* A at its limit with 300 rows parked: B's rows can still be claimed. */
    s = kz_sched_new(1);
    for (i = 0; i < 1792 + 300; i++)
        pushf(s, "A", "A", (int)i);
    while (next(s, &ep, NULL, NULL))
        ;
    assert_int_equal(kz_sched_inflight(s), 1792);
    assert_int_equal(kz_sched_queued(s), 300);
    assert_int_equal(kz_sched_claim_room(s), KZ_SCHED_HEADROOM);
    kz_sched_free(s);
}

/* ==== one application's silent endpoints (2,100) must not delay another ==== */

static void test_silent_app_does_not_block_other(void **state)
{
    struct kz_sched *s = kz_sched_new(8);
    struct kz_sched_ep *ep, *b_eps[8], **a_eps = kz_calloc(2100, sizeof(*a_eps));
    char app[40];
    int i, round, na = 0, b_started = 0;
    unsigned seed = 42;

    (void)state;
    /* A publishes to 2,100 webhooks on a receiver that never answers: A takes what it may. */
    for (i = 0; i < 2100; i++)
        pushf(s, "A", "A", i);
    while (next(s, &ep, NULL, app))
        a_eps[na++] = ep;
    assert_int_equal(na, KZ_SCHED_HARD - KZ_SCHED_RESERVE);
    assert_true(kz_sched_claim_room(s) > 0); /* B's rows can still be claimed */
    /* B publishes 15 events to its one webhook: all start at once, nothing waits for A. */
    for (i = 0; i < 15; i++)
        push(s, "B", "B0");
    while (next(s, &ep, NULL, app)) {
        assert_string_equal(app, "B");
        b_started++;
        kz_sched_done(s, ep); /* B's receiver answers at once */
    }
    assert_int_equal(b_started, 15);
    /* Over time A's attempts time out one by one and A's endpoints get new rows; B keeps
     * publishing to a receiver that answers at once. B's row is always started as soon as it is
     * queued, and A never takes the reserve. */
    for (round = 0; round < 3000; round++) {
        int k = (int)(rand_r(&seed) % (unsigned)na);

        kz_sched_done(s, a_eps[k]);
        a_eps[k] = a_eps[--na];
        pushf(s, "A", "A", (int)(rand_r(&seed) % 2100));
        if (round % 10 == 0)
            push(s, "B", "B0");
        while (next(s, &ep, NULL, app)) {
            if (!strcmp(app, "B")) {
                kz_sched_done(s, ep);
                b_started++;
            } else {
                a_eps[na++] = ep;
            }
        }
        assert_int_equal(kz_sched_app_inflight(s, "B"), 0); /* every B row started */
        assert_true(kz_sched_app_inflight(s, "A") <= KZ_SCHED_HARD - KZ_SCHED_RESERVE);
    }
    assert_int_equal(b_started, 15 + 300);
    /* Now B's receiver slows down: B keeps 8 transfers in flight, so two applications have
     * work and A comes down to its share (896) as its attempts end, and stays there. */
    for (i = 0; i < 20; i++)
        push(s, "B", "B0");
    for (i = 0; i < 8; i++) {
        assert_true(next(s, &b_eps[i], NULL, app));
        assert_string_equal(app, "B");
    }
    for (round = 0; round < 3000; round++) {
        int k = (int)(rand_r(&seed) % (unsigned)na);

        kz_sched_done(s, a_eps[k]);
        a_eps[k] = a_eps[--na];
        pushf(s, "A", "A", (int)(rand_r(&seed) % 2100));
        while (next(s, &ep, NULL, app)) {
            assert_string_equal(app, "A");
            a_eps[na++] = ep;
        }
        if (round >= 1792 - 896)
            assert_true(kz_sched_app_inflight(s, "A") <= 896);
    }
    assert_int_equal(kz_sched_app_inflight(s, "A"), 896);
    for (i = 0; i < 8; i++)
        kz_sched_done(s, b_eps[i]);
    for (i = 0; i < na; i++)
        kz_sched_done(s, a_eps[i]);
    kz_free(a_eps);
    kz_sched_free(s);
}

static void test_pop(void **state)
{
    struct kz_sched *s = kz_sched_new(1);
    struct kz_sched_ep *ep;
    struct kz_claimed row;
    int i, n = 0;

    (void)state;
    for (i = 0; i < 10; i++)
        pushf(s, "a", "w", i % 3);
    assert_true(next(s, &ep, NULL, NULL));
    while (kz_sched_pop(s, &row)) {
        kz_webhook_cleanup(&row.wh);
        kz_event_cleanup(&row.ev);
        n++;
    }
    assert_int_equal(n, 9);
    assert_int_equal(kz_sched_queued(s), 0);
    assert_false(next(s, &ep, NULL, NULL));
    kz_sched_done(s, ep);
    kz_sched_free(s);
}

/* ==== delivery controls: rateLimit pacing, ordered exclusions (README.md "Delivery controls") */

/* Queues one row of a webhook with rateLimit `rate` and `ordered`. */
static void push_ctl(struct kz_sched *s, const char *app, const char *wh, int rate, bool ordered)
{
    struct kz_claimed row;

    memset(&row, 0, sizeof(row));
    row.delivery_id = ++next_id;
    snprintf(row.wh.id, sizeof(row.wh.id), "%s", wh);
    snprintf(row.wh.app_id, sizeof(row.wh.app_id), "%s", app);
    row.wh.callback_url = kz_strdup("https://example.com/hook");
    row.wh.rate_limit = rate;
    row.wh.ordered = ordered;
    kz_sched_push(s, &row);
}

/* Starts everything that may start now, ends each transfer at once; counts per endpoint. */
static void start_all(struct kz_sched *s, int *paced, int *free_)
{
    struct kz_sched_ep *ep;
    char wh[40];

    while (next(s, &ep, wh, NULL)) {
        if (!strcmp(wh, "paced"))
            (*paced)++;
        else
            (*free_)++;
        kz_sched_done(s, ep);
    }
}

/* A paced endpoint starts a burst of rateLimit, then one every 1/rateLimit s: over any 10 s at
 * most 11 x rateLimit. It is passed over meanwhile: the other endpoint of the same application
 * gets every start it can take. */
static void test_rate_limit_paces_starts(void **state)
{
    struct kz_sched *s = kz_sched_new(100);
    int64_t starts[200];
    int n = 0, paced = 0, free_ = 0, i, k;
    int64_t t;

    (void)state;
    for (i = 0; i < 150; i++)
        push_ctl(s, "app", "paced", 5, false);
    for (i = 0; i < 30; i++)
        push(s, "app", "free");
    kz_sched_tick(s, 100000);
    start_all(s, &paced, &free_);
    assert_int_equal(paced, 5);
    assert_int_equal(free_, 30);
    assert_int_equal(kz_sched_next_ready(s), 100200); /* one start every 200 ms */
    kz_sched_tick(s, 100199);
    start_all(s, &paced, &free_);
    assert_int_equal(paced, 5);
    for (i = 0; i < 5; i++)
        starts[n++] = 100000;
    /* 20 s, a tick every millisecond */
    for (t = 100200; t < 120200; t++) {
        int before = paced;

        kz_sched_tick(s, t);
        start_all(s, &paced, &free_);
        for (k = before; k < paced && n < 200; k++)
            starts[n++] = t;
    }
    assert_int_equal(paced, 105); /* 5 + 20 s x 5 */
    for (i = 0; i < n; i++) {
        int in = 0;

        for (k = i; k < n && starts[k] < starts[i] + 10000; k++)
            in++;
        assert_true(in <= 55);
    }
    assert_int_equal(kz_sched_queued(s), 45);
    kz_sched_free(s);
}

/* The claim passes over a paced endpoint while it still has rows queued (they wait for the rate,
 * not for slots, so they leave the claim room as it was) and over an ordered endpoint with a row
 * queued or in flight. */
static void test_controls_exclusions_and_room(void **state)
{
    struct kz_sched *s = kz_sched_new(4);
    struct kz_sched_ep *ep, *ordered_ep = NULL;
    size_t n, room0 = kz_sched_claim_room(s), i;
    const char **ids;
    char wh[40];

    (void)state;
    kz_sched_tick(s, 1000);
    for (i = 0; i < 10; i++)
        push_ctl(s, "app", "paced", 2, false);
    push_ctl(s, "app", "ord", 0, true);
    ids = kz_sched_exclude(s, &n);
    assert_true(listed(ids, n, "paced"));
    assert_true(listed(ids, n, "ord"));
    kz_free(ids);
    assert_int_equal(kz_sched_claim_room(s), room0 - 1); /* the ordered row could start */
    while (next(s, &ep, wh, NULL)) {
        if (!strcmp(wh, "ord"))
            ordered_ep = ep;
        else
            kz_sched_done(s, ep);
    }
    assert_non_null(ordered_ep);
    ids = kz_sched_exclude(s, &n);
    assert_true(listed(ids, n, "paced")); /* 8 rows still wait for the rate */
    assert_true(listed(ids, n, "ord"));   /* in flight */
    kz_free(ids);
    kz_sched_done(s, ordered_ep);
    ids = kz_sched_exclude(s, &n);
    assert_false(listed(ids, n, "ord"));
    kz_free(ids);
    for (i = 0; i < 8; i++) { /* 2 per second */
        kz_sched_tick(s, 1500 + 500 * (int64_t)i);
        assert_true(next(s, &ep, wh, NULL));
        assert_string_equal(wh, "paced");
        kz_sched_done(s, ep);
        assert_false(next(s, &ep, wh, NULL));
    }
    ids = kz_sched_exclude(s, &n);
    assert_false(listed(ids, n, "paced"));
    kz_free(ids);
    assert_int_equal(kz_sched_next_ready(s), -1);
    kz_sched_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_robin_endpoints, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_endpoint_starved, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_robin_applications, setup, teardown),
        cmocka_unit_test_setup_teardown(test_endpoint_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_soft_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_global_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_app_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exclusions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_app_does_not_block_other, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limit_paces_starts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_controls_exclusions_and_room, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
