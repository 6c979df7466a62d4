/* test_storepolicy.c — store rules that must hold the same on every backend, run once on SQLite
 * (a temp file) and once on PostgreSQL: a webhook insert for an application that is gone fails
 * with KZ_ERR_AUTH and stores nothing (also while another connection is deleting it), the
 * per-application webhook quota (also with two nodes inserting at once), the live-token cap
 * per application, and the one cleaning rule for stored receiver text.
 *
 * The PostgreSQL half needs KZ_TEST_PG_URL (a database this test may wipe: it drops the store's
 * tables before every test); without it that half FAILS unless KZ_TEST_PG_SKIP=1, as in
 * test_store_pg.c.
 */
#include "store.h"
#include "alloc.h"
#include "kz.h"

#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *pg_url; /* NULL: the SQLite run */

struct fx {
    char dir[64];
    char url[512];
    struct kz_store *st;
};

/* ==== fixture ==== */

static void pg_exec(const char *sql)
{
    PGconn *c = PQconnectdb(pg_url);
    PGresult *r;

    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect: %s", PQerrorMessage(c));
    r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

static void open_store(struct fx *f, struct kz_store **st)
{
    char err[256];

    if (kz_store_open(st, f->url, 10000, err, sizeof(err)))
        fail_msg("kz_store_open: %s", err);
}

static int setup(void **state)
{
    struct fx *f = kz_calloc(1, sizeof(*f));

    if (pg_url) {
        pg_exec("SET client_min_messages = warning;"
                "DROP SCHEMA public CASCADE; CREATE SCHEMA public" /* every table, whatever the migrations add */);
        snprintf(f->url, sizeof(f->url), "%s", pg_url);
    } else {
        snprintf(f->dir, sizeof(f->dir), "/tmp/kz-policy-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->url, sizeof(f->url), "%s/kz.db", f->dir);
    }
    open_store(f, &f->st);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char p[128];

    kz_store_close(f->st);
    if (!pg_url) {
        const char *files[] = {"kz.db", "kz.db-wal", "kz.db-shm"};
        size_t i;

        for (i = 0; i < 3; i++) {
            snprintf(p, sizeof(p), "%s/%s", f->dir, files[i]);
            unlink(p);
        }
        rmdir(f->dir);
    }
    kz_free(f);
    assert_int_equal(kz_alloc_live(), 0);
    return 0;
}

/* ==== helpers ==== */

static void add_app(struct kz_store *st, const char *id)
{
    struct kz_op op = {.type = KZ_OP_APP_CREATE};

    snprintf(op.u.app.id, sizeof(op.u.app.id), "%s", id);
    op.u.app.name = (char *)"app name";
    op.u.app.object_ids_json = (char *)"[\"*\"]";
    memset(op.u.app.secret_hash, 'a', 64);
    memset(op.u.app.refresh_hash, 'b', 64);
    op.u.app.created_at = 1;
    assert_int_equal(kz_store_exec(st, &op), KZ_OK);
}

static enum kz_err del_app(struct kz_store *st, const char *id)
{
    struct kz_op op = {.type = KZ_OP_APP_DELETE};

    op.u.id = id;
    return kz_store_exec(st, &op);
}

static void fill_insert(struct kz_op *op, const char *id, const char *app, int max_per_app)
{
    struct kz_webhook *w = &op->u.webhook;

    memset(op, 0, sizeof(*op));
    op->type = KZ_OP_WEBHOOK_INSERT;
    snprintf(w->id, sizeof(w->id), "%s", id);
    snprintf(w->app_id, sizeof(w->app_id), "%s", app);
    w->object_type = KZ_OBJ_GROUP;
    w->object_id = (char *)"g1";
    w->event_mask = 1;
    w->callback_url = (char *)"https://example.com/hook";
    w->signing_secret = (char *)"whsec_c2VjcmV0";
    w->ts_ms = 1;
    w->validity_ms = 1000;
    w->active = true;
    op->u.max_per_app = max_per_app;
}

static enum kz_err insert(struct kz_store *st, const char *id, const char *app, int max_per_app)
{
    struct kz_op op;

    fill_insert(&op, id, app, max_per_app);
    return kz_store_exec(st, &op);
}

static void count_cb(void *arg, const struct kz_webhook *w)
{
    (void)w;
    (*(int *)arg)++;
}

static int webhooks_of(struct kz_store *st, const char *app)
{
    int n = 0;

    assert_int_equal(kz_store_webhook_list(st, app, -1, NULL, count_cb, &n), KZ_OK);
    return n;
}

static int64_t version(struct kz_store *st)
{
    struct kz_buf v;
    int64_t n;

    kz_buf_init(&v, 64);
    assert_int_equal(kz_store_meta_get(st, "webhooks_version", &v), KZ_OK);
    n = strtoll(kz_buf_cstr(&v), NULL, 10);
    kz_buf_cleanup(&v);
    return n;
}

/* Ops submitted together land in one batch when the writer is busy; `done` counts them. */
struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int left;
};

static void op_done(struct kz_op *op, void *arg)
{
    struct waiter *w = arg;

    (void)op;
    pthread_mutex_lock(&w->mu);
    w->left--;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void submit_all(struct kz_store *st, struct kz_op *ops, int n)
{
    struct waiter w = {.left = n};
    int i;

    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    for (i = 0; i < n; i++) {
        ops[i].done = op_done;
        ops[i].arg = &w;
        assert_int_equal(kz_store_submit(st, &ops[i]), KZ_OK);
    }
    pthread_mutex_lock(&w.mu);
    while (w.left)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
}

/* ==== 1. a webhook for an application that is gone ==== */

static void test_insert_needs_its_app(void **state)
{
    struct fx *f = *state;
    struct kz_webhook w;
    struct kz_op ops[2];
    int64_t v0;

    add_app(f->st, "app-1");
    v0 = version(f->st);
    assert_int_equal(insert(f->st, "wh-none", "app-never", 0), KZ_ERR_AUTH);
    assert_int_equal(del_app(f->st, "app-1"), KZ_OK);
    assert_int_equal(insert(f->st, "wh-1", "app-1", 0), KZ_ERR_AUTH);
    assert_int_equal(kz_store_webhook_get(f->st, "wh-1", &w), KZ_ERR_NOTFOUND);
    assert_int_equal(kz_store_webhook_get(f->st, "wh-none", &w), KZ_ERR_NOTFOUND);
    assert_int_equal(version(f->st), v0); /* nothing changed webhooks */

    /* the delete and the insert in one batch: the insert sees the delete */
    add_app(f->st, "app-2");
    memset(&ops[0], 0, sizeof(ops[0]));
    ops[0].type = KZ_OP_APP_DELETE;
    ops[0].u.id = "app-2";
    fill_insert(&ops[1], "wh-2", "app-2", 0);
    submit_all(f->st, ops, 2);
    assert_int_equal(ops[0].result, KZ_OK);
    assert_int_equal(ops[1].result, KZ_ERR_AUTH);
    assert_int_equal(webhooks_of(f->st, NULL), 0);

    /* invalid: a negative quota never reaches SQL */
    add_app(f->st, "app-3");
    assert_int_equal(insert(f->st, "wh-3", "app-3", -1), KZ_ERR_INVALID);
    assert_int_equal(insert(f->st, "wh-3", "app-3", 0), KZ_OK);
}

/* PostgreSQL: another node's DELETE of the application is in progress (its row is locked and
 * gone in that transaction) when the insert runs. The insert must wait for it and then fail. */
struct slow_insert {
    struct kz_store *st;
    enum kz_err result;
};

static void *slow_insert_main(void *arg)
{
    struct slow_insert *s = arg;

    s->result = insert(s->st, "wh-race", "app-r", 0);
    return NULL;
}

static void test_insert_waits_for_a_concurrent_app_delete(void **state)
{
    struct fx *f = *state;
    struct slow_insert s = {.st = f->st, .result = KZ_ERR_IO};
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 300 * 1000 * 1000};
    PGconn *c;
    PGresult *r;
    pthread_t t;

    if (!pg_url)
        skip();
    add_app(f->st, "app-r");
    c = PQconnectdb(pg_url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    r = PQexec(c, "BEGIN; DELETE FROM applications WHERE id = 'app-r'");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    pthread_create(&t, NULL, slow_insert_main, &s);
    nanosleep(&ts, NULL); /* the insert is now waiting for the row lock */
    r = PQexec(c, "DELETE FROM webhooks WHERE application_id = 'app-r'; COMMIT");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    PQfinish(c);
    pthread_join(t, NULL);
    assert_int_equal(s.result, KZ_ERR_AUTH);
    assert_int_equal(webhooks_of(f->st, NULL), 0);
}

/* ==== 2. webhooks per application ==== */

static void test_quota(void **state)
{
    struct fx *f = *state;
    struct kz_op ops[5];
    char id[5][16];
    int ok = 0;
    int quota = 0;
    int i;

    add_app(f->st, "app-1");
    add_app(f->st, "app-2");
    assert_int_equal(insert(f->st, "wh-1", "app-1", 2), KZ_OK);
    assert_int_equal(insert(f->st, "wh-2", "app-1", 2), KZ_OK);
    assert_int_equal(insert(f->st, "wh-3", "app-1", 2), KZ_ERR_QUOTA);
    assert_int_equal(webhooks_of(f->st, "app-1"), 2);
    assert_int_equal(insert(f->st, "wh-4", "app-2", 2), KZ_OK); /* per application */
    assert_int_equal(insert(f->st, "wh-5", "app-1", 0), KZ_OK); /* 0: no limit */
    assert_int_equal(insert(f->st, "wh-6", "app-1", 3), KZ_ERR_QUOTA);

    /* several inserts in one batch count each other */
    for (i = 0; i < 5; i++) {
        snprintf(id[i], sizeof(id[i]), "wh-b%d", i);
        fill_insert(&ops[i], id[i], "app-2", 3);
    }
    submit_all(f->st, ops, 5);
    for (i = 0; i < 5; i++) {
        ok += ops[i].result == KZ_OK;
        quota += ops[i].result == KZ_ERR_QUOTA;
    }
    assert_int_equal(ok, 2);
    assert_int_equal(quota, 3);
    assert_int_equal(webhooks_of(f->st, "app-2"), 3);
}

/* Two stores (two nodes on PostgreSQL, two processes' worth of connections on SQLite) insert
 * webhooks for one application at once: the quota holds exactly. */
struct inserter {
    struct kz_store *st;
    int node;
};

static void *inserter_main(void *arg)
{
    struct inserter *in = arg;
    struct kz_op ops[20];
    char id[20][24];
    int i;

    for (i = 0; i < 20; i++) {
        snprintf(id[i], sizeof(id[i]), "wh-n%d-%d", in->node, i);
        fill_insert(&ops[i], id[i], "app-q", 7);
    }
    submit_all(in->st, ops, 20);
    return NULL;
}

static void test_quota_two_nodes(void **state)
{
    struct fx *f = *state;
    struct kz_store *st2 = NULL;
    struct inserter a = {.st = f->st, .node = 1};
    struct inserter b = {.node = 2};
    pthread_t ta, tb;

    add_app(f->st, "app-q");
    open_store(f, &st2);
    b.st = st2;
    pthread_create(&ta, NULL, inserter_main, &a);
    pthread_create(&tb, NULL, inserter_main, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    kz_store_close(st2);
    assert_int_equal(webhooks_of(f->st, "app-q"), 7);
}

/* ==== 3. live tokens per application ==== */

static enum kz_err add_token(struct kz_store *st, const char *app, int i, int64_t expires_at)
{
    struct kz_op op = {.type = KZ_OP_TOKEN_ADD};
    char hash[65];

    snprintf(hash, sizeof(hash), "%s-tok-%04d", app, i);
    op.u.token.hash = hash;
    op.u.token.app_id = app;
    op.u.token.expires_at = expires_at;
    return kz_store_exec(st, &op);
}

static bool has_token(struct kz_store *st, const char *app, int i)
{
    char hash[65];
    char app_id[40];
    int64_t exp;

    snprintf(hash, sizeof(hash), "%s-tok-%04d", app, i);
    return kz_store_token_get(st, hash, app_id, &exp) == KZ_OK;
}

static void test_token_cap(void **state)
{
    struct fx *f = *state;
    int64_t later = kz_now_ms() + 3600 * 1000;
    int live = 0;
    int i;

    add_app(f->st, "app-1");
    add_app(f->st, "app-2");
    assert_int_equal(add_token(f->st, "app-1", 9000, 1), KZ_OK); /* expired long ago */
    assert_int_equal(add_token(f->st, "app-2", 0, later), KZ_OK);
    for (i = 0; i < KZ_TOKENS_PER_APP; i++)
        assert_int_equal(add_token(f->st, "app-1", i, later + i), KZ_OK);
    for (i = 0; i < KZ_TOKENS_PER_APP; i++)
        live += has_token(f->st, "app-1", i);
    assert_int_equal(live, KZ_TOKENS_PER_APP);
    assert_false(has_token(f->st, "app-1", 9000)); /* expired: purged */

    /* one more: the oldest (first to expire) is revoked */
    assert_int_equal(add_token(f->st, "app-1", KZ_TOKENS_PER_APP, later + KZ_TOKENS_PER_APP),
                     KZ_OK);
    assert_false(has_token(f->st, "app-1", 0));
    assert_true(has_token(f->st, "app-1", 1));
    assert_true(has_token(f->st, "app-1", KZ_TOKENS_PER_APP));
    live = 0;
    for (i = 0; i <= KZ_TOKENS_PER_APP; i++)
        live += has_token(f->st, "app-1", i);
    assert_int_equal(live, KZ_TOKENS_PER_APP);
    assert_true(has_token(f->st, "app-2", 0)); /* other applications keep theirs */

    /* 50 more: always the newest KZ_TOKENS_PER_APP stay */
    for (i = KZ_TOKENS_PER_APP + 1; i <= KZ_TOKENS_PER_APP + 50; i++)
        assert_int_equal(add_token(f->st, "app-1", i, later + i), KZ_OK);
    live = 0;
    for (i = 0; i <= KZ_TOKENS_PER_APP + 50; i++)
        live += has_token(f->st, "app-1", i);
    assert_int_equal(live, KZ_TOKENS_PER_APP);
    assert_false(has_token(f->st, "app-1", 50));
    assert_true(has_token(f->st, "app-1", 51));
}

/* ==== stored receiver text: one cleaning rule ==== */

struct dl {
    char resp[KZ_RESPONSE_KEEP + 8];
    char err[KZ_ERROR_KEEP + 8];
    size_t resp_len;
};

static void dl_cb(void *arg, const struct kz_delivery *d)
{
    struct dl *l = arg;

    l->resp_len = d->last_response ? strlen(d->last_response) : 0;
    snprintf(l->resp, sizeof(l->resp), "%s", d->last_response ? d->last_response : "");
    snprintf(l->err, sizeof(l->err), "%s", d->last_error ? d->last_error : "");
}

static void complete_with(struct kz_store *st, int64_t id, const char *resp, size_t len,
                          const char *err)
{
    struct kz_attempt a;
    struct kz_op op = {.type = KZ_OP_COMPLETE};

    memset(&a, 0, sizeof(a));
    a.delivery_id = id;
    snprintf(a.webhook_id, sizeof(a.webhook_id), "wh-1");
    a.state = KZ_D_PENDING;
    a.attempts = 1;
    a.next_attempt_at = 1;
    a.status = 500;
    a.response = resp;
    a.response_len = len;
    a.error = err;
    op.u.complete.items = &a;
    op.u.complete.n = 1;
    assert_int_equal(kz_store_exec(st, &op), KZ_OK);
}

static int64_t claim_one(struct kz_store *st)
{
    struct kz_op op = {.type = KZ_OP_CLAIM};
    int64_t id;

    op.u.claim.now = kz_now_ms() + 1000;
    op.u.claim.lease_until = op.u.claim.now + 60000;
    op.u.claim.limit = 1;
    assert_int_equal(kz_store_exec(st, &op), KZ_OK);
    assert_int_equal(op.u.claim.n_out, 1);
    id = op.u.claim.out[0].delivery_id;
    kz_claim_cleanup(&op);
    return id;
}

static void test_stored_text_is_cleaned(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    bool active[] = {true};
    struct kz_publish_item it;
    struct kz_op op = {.type = KZ_OP_PUBLISH};
    char *big = kz_malloc(KZ_RESPONSE_KEEP + 100);
    char err[KZ_ERROR_KEEP + 10];
    struct dl l;
    int64_t id;

    add_app(f->st, "app-1");
    assert_int_equal(insert(f->st, "wh-1", "app-1", 0), KZ_OK);
    memset(&it, 0, sizeof(it));
    it.ev.event_id = (char *)"ev-1";
    it.ev.data_json = (char *)"{}";
    it.webhook_ids = ids;
    it.target_active = active;
    it.n_targets = 1;
    op.u.publish.items = &it;
    op.u.publish.n = 1;
    assert_int_equal(kz_store_exec(f->st, &op), KZ_OK);

    /* invalid bytes and NUL become U+FFFD; the rest is kept as is */
    id = claim_one(f->st);
    memcpy(big, "ok\xff\xfe\0\"\\ \xc3\xa9", 10);
    complete_with(f->st, id, big, 10, "bad \x80 byte");
    memset(&l, 0, sizeof(l));
    assert_int_equal(kz_store_delivery_list(f->st, "wh-1", -1, 0, 10, dl_cb, &l), KZ_OK);
    assert_string_equal(l.resp, "ok\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"\\ \xc3\xa9");
    assert_string_equal(l.err, "bad \xef\xbf\xbd byte");

    /* the cut comes after the cleaning, at a character boundary: 4096 invalid bytes are 4096
     * U+FFFD, of which 1365 (4095 bytes) fit; 2000 error bytes of 0x80 keep 341 (1023 bytes) */
    id = claim_one(f->st);
    memset(big, 0xff, KZ_RESPONSE_KEEP + 100);
    memset(err, 0x80, sizeof(err));
    err[sizeof(err) - 1] = '\0';
    complete_with(f->st, id, big, KZ_RESPONSE_KEEP + 100, err);
    memset(&l, 0, sizeof(l));
    assert_int_equal(kz_store_delivery_list(f->st, "wh-1", -1, 0, 10, dl_cb, &l), KZ_OK);
    assert_int_equal(l.resp_len, (KZ_RESPONSE_KEEP / 3) * 3);
    assert_memory_equal(l.resp, "\xef\xbf\xbd\xef\xbf\xbd", 6);
    assert_int_equal(strlen(l.err), (KZ_ERROR_KEEP / 3) * 3);
    kz_free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_insert_needs_its_app, setup, teardown),
        cmocka_unit_test_setup_teardown(test_insert_waits_for_a_concurrent_app_delete, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_quota, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quota_two_nodes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stored_text_is_cleaned, setup, teardown),
    };
    const char *url = getenv("KZ_TEST_PG_URL");
    const char *skip_env = getenv("KZ_TEST_PG_SKIP");
    int failed;

    pg_url = NULL;
    failed = cmocka_run_group_tests_name("storepolicy/sqlite", tests, NULL, NULL);
    if (!url || !*url) {
        if (skip_env && !strcmp(skip_env, "1")) {
            printf("test_storepolicy: PostgreSQL half SKIPPED (KZ_TEST_PG_SKIP=1)\n");
            return failed;
        }
        fprintf(stderr, "test_storepolicy: FAILED: KZ_TEST_PG_URL is not set (see "
                        "test_store_pg.c), or set KZ_TEST_PG_SKIP=1 to skip on purpose.\n");
        return 1;
    }
    pg_url = url;
    failed += cmocka_run_group_tests_name("storepolicy/postgresql", tests, NULL, NULL);
    return failed;
}
