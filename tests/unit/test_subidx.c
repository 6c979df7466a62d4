/* Unit tests for subidx.c: matching rules (scope, event type, active, validity). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "subidx.h"

static struct kz_webhook mk(const char *id, const char *app, enum kz_objtype t, const char *oid,
                            uint32_t mask, bool active, int64_t validity)
{
    struct kz_webhook w;

    memset(&w, 0, sizeof(w));
    strcpy(w.id, id);
    strcpy(w.app_id, app);
    w.object_type = t;
    w.object_id = (char *)oid;
    w.event_mask = mask;
    w.active = active;
    w.validity_ms = validity;
    return w;
}

#define BIT(e) (1u << (e))
#define FAR 4102444800000LL

static size_t match(struct kz_subidx *idx, enum kz_evtype et, const char *g, const char *a,
                    const char *p, int64_t now, struct kz_match **m)
{
    size_t n = 0, cap = 0;

    struct kz_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.event_type = et;
    ev.group_id = (char *)g;
    ev.action_id = (char *)a;
    ev.action_package_id = (char *)p;
    *m = NULL;
    kz_subidx_match(idx, &ev, now, m, &n, &cap);
    return n;
}

static bool has(const struct kz_match *m, size_t n, const char *id, bool active)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (!strcmp(m[i].webhook_id, id))
            return m[i].active == active;
    }
    return false;
}

static void scopes_and_types(void **state)
{
    struct kz_subidx *idx = kz_subidx_new();
    struct kz_webhook w1 = mk("w1", "a", KZ_OBJ_GROUP, "g1", BIT(KZ_EV_SURVEYRESPONSE), true, FAR);
    struct kz_webhook w2 =
        mk("w2", "a", KZ_OBJ_ACTION, "act1", BIT(KZ_EV_SURVEYRESPONSE), true, FAR);
    struct kz_webhook w3 = mk("w3", "b", KZ_OBJ_ACTIONPACKAGE, "com.x",
                              BIT(KZ_EV_SURVEYRESPONSE) | BIT(KZ_EV_ACTIONCREATED), true, FAR);
    struct kz_webhook w4 =
        mk("w4", "b", KZ_OBJ_GROUP, "g1", BIT(KZ_EV_TEXTMESSAGECREATED), true, FAR);
    struct kz_webhook w5 =
        mk("w5", "b", KZ_OBJ_GROUP, "act1", BIT(KZ_EV_SURVEYRESPONSE), true, FAR);
    struct kz_match *m;
    size_t n;

    (void)state;
    kz_subidx_put(idx, &w1, 0);
    kz_subidx_put(idx, &w2, 0);
    kz_subidx_put(idx, &w3, 0);
    kz_subidx_put(idx, &w4, 0);
    kz_subidx_put(idx, &w5, 0);

    n = match(idx, KZ_EV_SURVEYRESPONSE, "g1", "act1", "com.x", 1000, &m);
    assert_int_equal(n, 3);
    assert_true(has(m, n, "w1", true));
    assert_true(has(m, n, "w2", true));
    assert_true(has(m, n, "w3", true));
    assert_false(has(m, n, "w5", true)); /* a Group webhook on "act1" is not an Action webhook */
    kz_free(m);

    n = match(idx, KZ_EV_TEXTMESSAGECREATED, "g1", NULL, NULL, 1000, &m);
    assert_int_equal(n, 1);
    assert_true(has(m, n, "w4", true));
    kz_free(m);

    n = match(idx, KZ_EV_ACTIONCREATED, "g2", NULL, "com.x", 1000, &m);
    assert_int_equal(n, 1);
    assert_true(has(m, n, "w3", true));
    kz_free(m);

    n = match(idx, KZ_EV_SURVEYRESPONSE, "g2", NULL, NULL, 1000, &m);
    assert_int_equal(n, 0);
    kz_free(m);

    kz_subidx_remove_app(idx, "b", 0);
    n = match(idx, KZ_EV_SURVEYRESPONSE, "g1", "act1", "com.x", 1000, &m);
    assert_int_equal(n, 2);
    kz_free(m);
    kz_subidx_free(idx);
    assert_int_equal(kz_alloc_live(), 0);
}

static void inactive_and_expired_are_skipped_not_dropped(void **state)
{
    struct kz_subidx *idx = kz_subidx_new();
    struct kz_webhook w1 = mk("w1", "a", KZ_OBJ_GROUP, "g1", BIT(KZ_EV_JOBCREATED), true, 5000);
    struct kz_webhook w2 = mk("w2", "a", KZ_OBJ_GROUP, "g1", BIT(KZ_EV_JOBCREATED), false, FAR);
    struct kz_match *m;
    size_t n;

    (void)state;
    kz_subidx_put(idx, &w1, 0);
    kz_subidx_put(idx, &w2, 0);
    n = match(idx, KZ_EV_JOBCREATED, "g1", NULL, NULL, 4999, &m);
    assert_int_equal(n, 2);
    assert_true(has(m, n, "w1", true));
    assert_true(has(m, n, "w2", false));
    kz_free(m);
    n = match(idx, KZ_EV_JOBCREATED, "g1", NULL, NULL, 5000, &m); /* validity reached */
    assert_true(has(m, n, "w1", false));
    kz_free(m);
    kz_subidx_set_active(idx, "w2", true, 0);
    n = match(idx, KZ_EV_JOBCREATED, "g1", NULL, NULL, 10, &m);
    assert_true(has(m, n, "w2", true));
    kz_free(m);
    kz_subidx_remove(idx, "w2", 0);
    n = match(idx, KZ_EV_JOBCREATED, "g1", NULL, NULL, 10, &m);
    assert_int_equal(n, 1);
    kz_free(m);
    kz_subidx_free(idx);
}

static void replace_and_grow(void **state)
{
    struct kz_subidx *idx = kz_subidx_new();
    char id[40], oid[40];
    struct kz_match *m;
    size_t n, total, inactive;
    int i;

    (void)state;
    for (i = 0; i < 3000; i++) {
        struct kz_webhook w;

        snprintf(id, sizeof(id), "w%d", i);
        snprintf(oid, sizeof(oid), "g%d", i % 10);
        w = mk(id, "a", KZ_OBJ_GROUP, oid, BIT(KZ_EV_POLLCREATED), i % 3 != 0, FAR);
        kz_subidx_put(idx, &w, 0);
    }
    kz_subidx_counts(idx, &total, &inactive);
    assert_int_equal(total, 3000);
    assert_int_equal(inactive, 1000);
    n = match(idx, KZ_EV_POLLCREATED, "g3", NULL, NULL, 0, &m);
    assert_int_equal(n, 300);
    kz_free(m);
    {
        /* put with the same id moves the webhook to another object */
        struct kz_webhook w =
            mk("w3", "a", KZ_OBJ_GROUP, "elsewhere", BIT(KZ_EV_POLLCREATED), true, FAR);

        kz_subidx_put(idx, &w, 0);
    }
    n = match(idx, KZ_EV_POLLCREATED, "g3", NULL, NULL, 0, &m);
    assert_int_equal(n, 299);
    kz_free(m);
    kz_subidx_counts(idx, &total, &inactive);
    assert_int_equal(total, 3000);
    kz_subidx_free(idx);
}

/* The filter is compiled when the webhook enters the index and evaluated per event; a PUT that
 * replaces it (put again) takes effect for the next event; a filter that does not compile
 * lets nothing through. */
static void filters_are_kept_compiled(void **state)
{
    struct kz_subidx *idx = kz_subidx_new();
    struct kz_webhook w = mk("f1", "app", KZ_OBJ_GROUP, "g1", BIT(KZ_EV_SURVEYRESPONSE), true, FAR);
    struct kz_webhook plain =
        mk("p1", "app", KZ_OBJ_GROUP, "g1", BIT(KZ_EV_SURVEYRESPONSE), true, FAR);
    struct kz_event ev;
    struct kz_match *m = NULL;
    size_t n = 0, cap = 0;

    (void)state;
    w.filter_json = (char *)"{\"data.total\":{\"$gte\":100},\"fromUserId\":\"u1\"}";
    kz_subidx_put(idx, &w, 0);
    kz_subidx_put(idx, &plain, 0);
    memset(&ev, 0, sizeof(ev));
    ev.event_type = KZ_EV_SURVEYRESPONSE;
    ev.group_id = (char *)"g1";
    ev.from_user_id = (char *)"u1";
    ev.data_json = (char *)"{\"total\":99.99}";
    assert_int_equal(kz_subidx_match(idx, &ev, 0, &m, &n, &cap), 1);
    assert_string_equal(m[0].webhook_id, "p1");
    n = 0;
    ev.data_json = (char *)"{\"total\":100000000000000000000000}";
    assert_int_equal(kz_subidx_match(idx, &ev, 0, &m, &n, &cap), 2);
    n = 0;
    ev.from_user_id = NULL;
    assert_int_equal(kz_subidx_match(idx, &ev, 0, &m, &n, &cap), 1);
    n = 0;
    w.filter_json = NULL;
    kz_subidx_put(idx, &w, 0);
    assert_int_equal(kz_subidx_match(idx, &ev, 0, &m, &n, &cap), 2);
    n = 0;
    w.filter_json = (char *)"{\"nope\":1}";
    kz_subidx_put(idx, &w, 0);
    assert_int_equal(kz_subidx_match(idx, &ev, 0, &m, &n, &cap), 1);
    kz_free(m);
    kz_subidx_free(idx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(scopes_and_types),
        cmocka_unit_test(inactive_and_expired_are_skipped_not_dropped),
        cmocka_unit_test(replace_and_grow),
        cmocka_unit_test(filters_are_kept_compiled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
