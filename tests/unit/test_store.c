/* test_store.c — the store against real SQLite files in a temporary directory: every op and read,
 * group commit, back-pressure, migrations and durability across reopen.
 *
 * Includes store_sqlite.c to reach its statement table (query-plan checks); store.c comes from
 * the library. */
#include "../../src/store_sqlite.c"

#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdatomic.h>

#define T0 1700000000000LL /* a fixed "now" for deterministic schedules */

struct fx {
    char dir[64];
    char path[160];
    struct kz_store *st;
};

/* ==== fixture ==== */

static void open_store(struct fx *f, size_t queue_max)
{
    char err[256];

    assert_int_equal(kz_store_open(&f->st, f->path, queue_max, err, sizeof(err)), KZ_OK);
}

static int setup(void **state)
{
    struct fx *f = kz_calloc(1, sizeof(*f));

    snprintf(f->dir, sizeof(f->dir), "/tmp/kzstore-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    /* a missing sub-directory: the store must create it */
    snprintf(f->path, sizeof(f->path), "%s/data/kz.db", f->dir);
    open_store(f, 10000);
    *state = f;
    return 0;
}

static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[512];

    if (!d)
        return;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (e->d_type == DT_DIR)
            rm_tree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int teardown(void **state)
{
    struct fx *f = *state;

    kz_store_close(f->st);
    rm_tree(f->dir);
    kz_free(f);
    assert_int_equal(kz_alloc_live(), 0);
    return 0;
}

/* ==== helpers ==== */

static enum kz_err exec(struct kz_store *st, struct kz_op *op)
{
    return kz_store_exec(st, op);
}

static void add_app(struct kz_store *st, const char *id, int64_t created_at)
{
    struct kz_op op = {.type = KZ_OP_APP_CREATE};

    snprintf(op.u.app.id, sizeof(op.u.app.id), "%s", id);
    op.u.app.name = (char *)"app name";
    op.u.app.object_ids_json = (char *)"[\"g1\",\"*\"]";
    memset(op.u.app.secret_hash, 'a', 64);
    memset(op.u.app.refresh_hash, 'b', 64);
    op.u.app.created_at = created_at;
    assert_int_equal(exec(st, &op), KZ_OK);
}

static void fill_webhook(struct kz_webhook *w, const char *id, const char *app, const char *obj)
{
    memset(w, 0, sizeof(*w));
    snprintf(w->id, sizeof(w->id), "%s", id);
    snprintf(w->app_id, sizeof(w->app_id), "%s", app);
    w->object_type = KZ_OBJ_GROUP;
    w->object_id = (char *)obj;
    w->event_mask = 0x1ffff;
    w->callback_url = (char *)"https://example.com/hook";
    w->callback_token = NULL;
    w->callback_context = (char *)"ctx";
    w->signing_secret = (char *)"whsec_c2VjcmV0";
    w->ts_ms = T0;
    w->validity_ms = T0 + 1000000;
    w->active = true;
}

static int64_t add_webhook(struct kz_store *st, const char *id, const char *app, const char *obj)
{
    struct kz_op op = {.type = KZ_OP_WEBHOOK_INSERT};

    fill_webhook(&op.u.webhook, id, app, obj);
    assert_int_equal(exec(st, &op), KZ_OK);
    return op.webhooks_version;
}

/* Publishes one event to `n` webhooks, all active unless `skip` has a bit set for target i. */
static struct kz_publish_item publish(struct kz_store *st, const char *event_id, int64_t created_at,
                                      const char *const *ids, size_t n, unsigned skip)
{
    bool active[16];
    struct kz_op op = {.type = KZ_OP_PUBLISH};
    struct kz_publish_item it;
    size_t i;

    assert_true(n <= 16);
    for (i = 0; i < n; i++)
        active[i] = !(skip & (1u << i));
    memset(&it, 0, sizeof(it));
    it.ev.event_id = (char *)event_id;
    it.ev.event_type = KZ_EV_SURVEYRESPONSE;
    it.ev.group_id = (char *)"g1";
    it.ev.action_id = (char *)"a1";
    it.ev.from_user = (char *)"+15550100";
    it.ev.data_json = (char *)"{\"k\":1}";
    it.ev.created_at = created_at;
    it.webhook_ids = ids;
    it.target_active = active;
    it.n_targets = n;
    op.u.publish.items = &it;
    op.u.publish.n = 1;
    assert_int_equal(exec(st, &op), KZ_OK);
    it.target_active = NULL;
    return it;
}

static void claim(struct kz_store *st, struct kz_op *op, int64_t now, size_t limit,
                  const char *const *exclude, size_t n_exclude)
{
    memset(op, 0, sizeof(*op));
    op->type = KZ_OP_CLAIM;
    op->u.claim.now = now;
    op->u.claim.lease_until = now + 30000;
    op->u.claim.limit = limit;
    op->u.claim.exclude = exclude;
    op->u.claim.n_exclude = n_exclude;
    assert_int_equal(exec(st, op), KZ_OK);
}

static struct kz_op complete(struct kz_store *st, int64_t delivery_id, const char *wh,
                             enum kz_dstate state, int attempts, int64_t next_at, int status)
{
    struct kz_attempt a;
    struct kz_op op = {.type = KZ_OP_COMPLETE};

    memset(&a, 0, sizeof(a));
    a.delivery_id = delivery_id;
    snprintf(a.webhook_id, sizeof(a.webhook_id), "%s", wh);
    a.state = state;
    a.attempts = attempts;
    a.next_attempt_at = next_at;
    a.status = status;
    a.error = status ? NULL : "connection refused";
    a.response = status ? "nope" : NULL;
    a.response_len = status ? 4 : 0;
    op.u.complete.items = &a;
    op.u.complete.n = 1;
    assert_int_equal(exec(st, &op), KZ_OK);
    return op;
}

/* Collects a delivery_list page. */
struct dlist {
    size_t n;
    int64_t id[64];
    int state[64];
    int attempts[64];
    int64_t next_at[64];
    int status[64];
    char err0[64];
    char event_id0[KZ_ID_MAX + 1];
};

static void dlist_add(void *arg, const struct kz_delivery *d)
{
    struct dlist *l = arg;

    if (l->n == 0) {
        snprintf(l->err0, sizeof(l->err0), "%s", d->last_error ? d->last_error : "");
        snprintf(l->event_id0, sizeof(l->event_id0), "%s", d->event_id);
    }
    if (l->n < 64) {
        l->id[l->n] = d->id;
        l->state[l->n] = d->state;
        l->attempts[l->n] = d->attempts;
        l->next_at[l->n] = d->next_attempt_at;
        l->status[l->n] = d->last_status;
    }
    l->n++;
}

static struct dlist list_deliveries(struct kz_store *st, const char *wh, int state, int64_t cursor,
                                    size_t limit)
{
    struct dlist l;

    memset(&l, 0, sizeof(l));
    assert_int_equal(kz_store_delivery_list(st, wh, state, cursor, limit, dlist_add, &l), KZ_OK);
    return l;
}

static int64_t meta_version(struct kz_store *st)
{
    struct kz_buf b;
    int64_t v;

    kz_buf_init(&b, 64);
    assert_int_equal(kz_store_meta_get(st, "webhooks_version", &b), KZ_OK);
    v = strtoll(kz_buf_cstr(&b), NULL, 10);
    kz_buf_cleanup(&b);
    return v;
}

/* ==== open, migrations, durability ==== */

static int64_t count_rows(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    int64_t n = -1;

    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &q, NULL), SQLITE_OK);
    if (sqlite3_step(q) == SQLITE_ROW)
        n = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return n;
}

static void test_reopen_idempotent_and_durable(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    struct kz_app app;
    struct kz_buf b;
    struct stat sb;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    publish(f->st, "ev-1", T0, ids, 1, 0);
    kz_store_close(f->st);
    f->st = NULL;
    open_store(f, 100);
    kz_store_close(f->st);
    f->st = NULL;
    open_store(f, 100);

    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM schema_version"),
                     (int64_t)KZ_ARRAY_LEN(migrations));
    assert_int_equal(count_rows(f->path, "SELECT MAX(version) FROM schema_version"),
                     (int64_t)KZ_ARRAY_LEN(migrations));
    assert_int_equal(kz_store_app_get(f->st, "app-1", &app), KZ_OK);
    assert_string_equal(app.name, "app name");
    assert_int_equal(app.created_at, T0);
    kz_app_cleanup(&app);
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 10).n, 1);
    assert_int_equal(meta_version(f->st), 1);

    kz_buf_init(&b, 64);
    assert_int_equal(kz_store_meta_get(f->st, "no-such-key", &b), KZ_ERR_NOTFOUND);
    kz_buf_cleanup(&b);
    assert_int_equal(kz_store_ping(f->st), KZ_OK);
    assert_int_equal(stat(f->path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
}

static void test_open_errors(void **state)
{
    struct fx *f = *state;
    struct kz_store *st = NULL;
    char err[256];
    char path[200];

    /* A PostgreSQL URL selects the PostgreSQL backend; nothing listens on port 1. */
    assert_int_equal(kz_store_open(&st, "postgresql://u@127.0.0.1:1/db", 10, err, sizeof(err)),
                     KZ_ERR_DB);
    assert_non_null(strstr(err, "PostgreSQL"));
    assert_int_equal(kz_store_open(&st, "postgres://u@127.0.0.1:1/db", 10, err, sizeof(err)),
                     KZ_ERR_DB);
    assert_int_equal(kz_store_open(&st, ":memory:", 10, err, sizeof(err)), KZ_ERR_INVALID);
    assert_int_equal(kz_store_open(&st, "", 10, err, sizeof(err)), KZ_ERR_INVALID);
    assert_int_equal(kz_store_open(&st, f->path, 0, err, sizeof(err)), KZ_ERR_INVALID);
    /* the parent is a file, not a directory */
    snprintf(path, sizeof(path), "%s/x.db", f->path);
    assert_int_not_equal(kz_store_open(&st, path, 10, err, sizeof(err)), KZ_OK);
    assert_null(st);
    kz_store_close(NULL);
}

static void test_schema_newer_than_binary(void **state)
{
    struct fx *f = *state;
    struct kz_store *st = NULL;
    sqlite3 *db = NULL;
    char err[256];

    kz_store_close(f->st);
    f->st = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "INSERT INTO schema_version VALUES (999)", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(kz_store_open(&st, f->path, 10, err, sizeof(err)), KZ_ERR_DB);
    assert_non_null(strstr(err, "newer"));
    db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db, "DELETE FROM schema_version WHERE version = 999", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    open_store(f, 100);
}

/* ==== meta, apps, tokens ==== */

static void test_meta(void **state)
{
    struct fx *f = *state;
    struct kz_op op = {.type = KZ_OP_META_SET};
    struct kz_buf b;

    op.u.meta.key = "admin_token_hash";
    op.u.meta.value = "abc";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    op.u.meta.value = "def";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    kz_buf_init(&b, 2);
    assert_int_equal(kz_store_meta_get(f->st, "admin_token_hash", &b), KZ_ERR_TOOBIG);
    kz_buf_cleanup(&b);
    kz_buf_init(&b, 64);
    assert_int_equal(kz_store_meta_get(f->st, "admin_token_hash", &b), KZ_OK);
    assert_string_equal(kz_buf_cstr(&b), "def");
    kz_buf_cleanup(&b);
    op.u.meta.value = NULL;
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
}

struct applist {
    size_t n;
    char ids[8][40];
};

static void applist_add(void *arg, const struct kz_app *a)
{
    struct applist *l = arg;

    if (l->n < 8)
        snprintf(l->ids[l->n], 40, "%s", a->id);
    l->n++;
}

static void test_apps(void **state)
{
    struct fx *f = *state;
    struct kz_op op = {.type = KZ_OP_APP_CREATE};
    struct applist l;
    struct kz_app a;

    add_app(f->st, "zzz", T0 + 5);
    add_app(f->st, "aaa", T0 + 1);
    add_app(f->st, "mmm", T0 + 9);
    snprintf(op.u.app.id, sizeof(op.u.app.id), "aaa");
    assert_int_equal(exec(f->st, &op), KZ_ERR_CONFLICT);

    memset(&l, 0, sizeof(l));
    assert_int_equal(kz_store_app_list(f->st, applist_add, &l), KZ_OK);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.ids[0], "zzz"); /* creation order */
    assert_string_equal(l.ids[1], "aaa");
    assert_string_equal(l.ids[2], "mmm");

    assert_int_equal(kz_store_app_get(f->st, "aaa", &a), KZ_OK);
    assert_string_equal(a.object_ids_json, "[\"g1\",\"*\"]");
    assert_int_equal(strlen(a.secret_hash), 64);
    assert_int_equal(a.secret_hash[0], 'a');
    assert_int_equal(a.refresh_hash[63], 'b');
    kz_app_cleanup(&a);
    assert_int_equal(kz_store_app_get(f->st, "nope", &a), KZ_ERR_NOTFOUND);
}

static void test_tokens(void **state)
{
    struct fx *f = *state;
    struct kz_op op = {.type = KZ_OP_TOKEN_ADD};
    int64_t now = kz_now_ms();
    char app_id[40];
    int64_t exp;

    add_app(f->st, "app-1", T0);
    op.u.token.hash = "h-old";
    op.u.token.app_id = "app-1";
    op.u.token.expires_at = now - 1000; /* already expired */
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(kz_store_token_get(f->st, "h-old", app_id, &exp), KZ_OK);
    assert_string_equal(app_id, "app-1");
    assert_int_equal(exp, now - 1000);

    op.u.token.hash = "h-new";
    op.u.token.expires_at = now + 3600000;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(kz_store_token_get(f->st, "h-new", app_id, &exp), KZ_OK);
    assert_int_equal(exp, now + 3600000);
    /* adding a token purged the app's expired ones */
    assert_int_equal(kz_store_token_get(f->st, "h-old", app_id, &exp), KZ_ERR_NOTFOUND);
    assert_int_equal(exec(f->st, &op), KZ_ERR_CONFLICT);
}

/* ==== webhooks ==== */

struct whlist {
    size_t n;
    char ids[8][40];
    bool active[8];
};

static void whlist_add(void *arg, const struct kz_webhook *w)
{
    struct whlist *l = arg;

    if (l->n < 8) {
        snprintf(l->ids[l->n], 40, "%s", w->id);
        l->active[l->n] = w->active;
    }
    l->n++;
}

static struct whlist list_webhooks(struct kz_store *st, const char *app, int type, const char *obj)
{
    struct whlist l;

    memset(&l, 0, sizeof(l));
    assert_int_equal(kz_store_webhook_list(st, app, type, obj, whlist_add, &l), KZ_OK);
    return l;
}

static void test_webhooks_crud(void **state)
{
    struct fx *f = *state;
    struct kz_op op;
    struct kz_webhook w;
    struct whlist l;
    int64_t v0 = meta_version(f->st);
    int64_t v;

    add_app(f->st, "app-1", T0);
    add_app(f->st, "app-2", T0);
    v = add_webhook(f->st, "wh-c", "app-1", "g1");
    assert_int_equal(v, v0 + 1);
    assert_int_equal(meta_version(f->st), v0 + 1);
    add_webhook(f->st, "wh-a", "app-1", "g2");
    add_webhook(f->st, "wh-b", "app-2", "g1");

    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_INSERT;
    fill_webhook(&op.u.webhook, "wh-a", "app-1", "g1");
    assert_int_equal(exec(f->st, &op), KZ_ERR_CONFLICT);
    assert_int_equal(op.webhooks_version, v0 + 3); /* a failed op changes nothing */

    assert_int_equal(kz_store_webhook_get(f->st, "wh-c", &w), KZ_OK);
    assert_string_equal(w.app_id, "app-1");
    assert_string_equal(w.object_id, "g1");
    assert_int_equal(w.object_type, KZ_OBJ_GROUP);
    assert_int_equal(w.event_mask, 0x1ffff);
    assert_null(w.callback_token);
    assert_string_equal(w.callback_context, "ctx");
    assert_string_equal(w.signing_secret, "whsec_c2VjcmV0");
    assert_int_equal(w.validity_ms, T0 + 1000000);
    assert_true(w.active);
    kz_webhook_cleanup(&w);
    assert_int_equal(kz_store_webhook_get(f->st, "nope", &w), KZ_ERR_NOTFOUND);

    l = list_webhooks(f->st, "app-1", -1, NULL);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.ids[0], "wh-c"); /* creation order, not id order */
    assert_string_equal(l.ids[1], "wh-a");
    assert_int_equal(list_webhooks(f->st, "app-1", KZ_OBJ_GROUP, "g2").n, 1);
    assert_int_equal(list_webhooks(f->st, "app-1", KZ_OBJ_ACTION, NULL).n, 0);
    assert_int_equal(list_webhooks(f->st, NULL, -1, "g1").n, 2);
    assert_int_equal(list_webhooks(f->st, NULL, -1, NULL).n, 3);

    /* update: matched by id and app; NULL secret keeps the stored one */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_UPDATE;
    fill_webhook(&op.u.webhook, "wh-c", "app-2", "g9");
    assert_int_equal(exec(f->st, &op), KZ_ERR_NOTFOUND);
    fill_webhook(&op.u.webhook, "wh-c", "app-1", "g9");
    op.u.webhook.callback_url = (char *)"https://example.org/new";
    op.u.webhook.callback_token = (char *)"tok";
    op.u.webhook.callback_context = NULL;
    op.u.webhook.signing_secret = NULL;
    op.u.webhook.event_mask = 3;
    op.u.webhook.active = false;
    op.u.webhook.ts_ms = 1; /* immutable */
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.webhooks_version, v0 + 4);
    assert_int_equal(kz_store_webhook_get(f->st, "wh-c", &w), KZ_OK);
    assert_string_equal(w.object_id, "g9");
    assert_string_equal(w.callback_url, "https://example.org/new");
    assert_string_equal(w.callback_token, "tok");
    assert_null(w.callback_context);
    assert_string_equal(w.signing_secret, "whsec_c2VjcmV0");
    assert_int_equal(w.event_mask, 3);
    assert_int_equal(w.ts_ms, T0);
    assert_false(w.active);
    kz_webhook_cleanup(&w);

    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_ACTIVE;
    op.u.active.id = "wh-c";
    op.u.active.flag = true;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.webhooks_version, v0 + 5);
    assert_true(list_webhooks(f->st, "app-1", -1, "g9").active[0]);
    op.u.active.id = "nope";
    assert_int_equal(exec(f->st, &op), KZ_ERR_NOTFOUND);

    /* delete: another app's webhook is not found; "" means any app */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_DELETE;
    op.u.del.id = "wh-b";
    op.u.del.app_id = "app-1";
    assert_int_equal(exec(f->st, &op), KZ_ERR_NOTFOUND);
    op.u.del.app_id = "";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(kz_store_webhook_get(f->st, "wh-b", &w), KZ_ERR_NOTFOUND);
    assert_int_equal(exec(f->st, &op), KZ_ERR_NOTFOUND);
    assert_int_equal(meta_version(f->st), v0 + 6);
}

static void test_webhook_delete_cascades(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1", "wh-2"};
    struct kz_op op = {.type = KZ_OP_WEBHOOK_DELETE};

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    add_webhook(f->st, "wh-2", "app-1", "g1");
    publish(f->st, "ev-1", T0, ids, 2, 0);
    publish(f->st, "ev-2", T0, ids, 2, 0);
    op.u.del.id = "wh-1";
    op.u.del.app_id = "app-1";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 10).n, 0);
    assert_int_equal(list_deliveries(f->st, "wh-2", -1, 0, 10).n, 2);
}

static void test_app_delete_cascades(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1", "wh-2", "wh-3"};
    struct kz_op op = {.type = KZ_OP_APP_DELETE};
    struct kz_op tok = {.type = KZ_OP_TOKEN_ADD};
    struct kz_app a;
    char app_id[40];
    int64_t exp;
    int64_t v;

    add_app(f->st, "app-1", T0);
    add_app(f->st, "app-2", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    add_webhook(f->st, "wh-2", "app-1", "g1");
    v = add_webhook(f->st, "wh-3", "app-2", "g1");
    tok.u.token.hash = "h1";
    tok.u.token.app_id = "app-1";
    tok.u.token.expires_at = kz_now_ms() + 100000;
    assert_int_equal(exec(f->st, &tok), KZ_OK);
    publish(f->st, "ev-1", T0, ids, 3, 0);

    op.u.id = "app-1";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.webhooks_version, v + 1);
    assert_int_equal(kz_store_app_get(f->st, "app-1", &a), KZ_ERR_NOTFOUND);
    assert_int_equal(kz_store_token_get(f->st, "h1", app_id, &exp), KZ_ERR_NOTFOUND);
    assert_int_equal(list_webhooks(f->st, "app-1", -1, NULL).n, 0);
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 10).n, 0);
    assert_int_equal(list_deliveries(f->st, "wh-2", -1, 0, 10).n, 0);
    assert_int_equal(list_deliveries(f->st, "wh-3", -1, 0, 10).n, 1);
    assert_int_equal(list_webhooks(f->st, "app-2", -1, NULL).n, 1);
    assert_int_equal(exec(f->st, &op), KZ_ERR_NOTFOUND);
}

/* ==== publish ==== */

static void test_publish_and_idempotency(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1", "wh-2", "wh-3"};
    struct kz_publish_item it, again;
    struct kz_publish_item items[3];
    bool act[3] = {true, true, true};
    struct kz_op op = {.type = KZ_OP_PUBLISH};
    struct dlist l;
    size_t i;

    add_app(f->st, "app-1", T0);
    for (i = 0; i < 3; i++)
        add_webhook(f->st, ids[i], "app-1", "g1");
    /* wh-2 inactive: skipped */
    it = publish(f->st, "ev-1", T0, ids, 3, 1u << 1);
    assert_false(it.duplicate);
    assert_int_equal(it.deliveries, 3);
    assert_true(it.seq > 0);
    l = list_deliveries(f->st, "wh-2", -1, 0, 10);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.state[0], KZ_D_SKIPPED);
    assert_string_equal(l.event_id0, "ev-1");
    l = list_deliveries(f->st, "wh-1", -1, 0, 10);
    assert_int_equal(l.state[0], KZ_D_PENDING);
    assert_int_equal(l.next_at[0], T0); /* due at once */
    assert_int_equal(l.attempts[0], 0);

    /* republished in another batch, with other targets: the original answer, nothing new */
    again = publish(f->st, "ev-1", T0 + 5, ids, 1, 0);
    assert_true(again.duplicate);
    assert_int_equal(again.seq, it.seq);
    assert_int_equal(again.deliveries, 3);
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 10).n, 1);

    /* a duplicate inside one batch */
    memset(items, 0, sizeof(items));
    for (i = 0; i < 3; i++) {
        items[i].ev.event_id = (char *)(i == 1 ? "ev-x" : "ev-y");
        items[i].ev.created_at = T0;
        items[i].webhook_ids = ids;
        items[i].target_active = act;
        items[i].n_targets = i + 1;
    }
    op.u.publish.items = items;
    op.u.publish.n = 3;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_false(items[0].duplicate);
    assert_false(items[1].duplicate);
    assert_true(items[2].duplicate);
    assert_int_equal(items[2].seq, items[0].seq);
    assert_int_equal(items[2].deliveries, 1);
    assert_int_equal(items[1].deliveries, 2);
    assert_int_not_equal(items[1].seq, items[0].seq);
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 10).n, 3);
    assert_int_equal(list_deliveries(f->st, "wh-3", -1, 0, 10).n, 1);

    /* an event matching no webhook is still recorded (idempotency) */
    it = publish(f->st, "ev-none", T0, NULL, 0, 0);
    assert_false(it.duplicate);
    assert_int_equal(it.deliveries, 0);
    it = publish(f->st, "ev-none", T0, NULL, 0, 0);
    assert_true(it.duplicate);

    /* an item without event_id fails its op alone */
    memset(items, 0, sizeof(items));
    op.u.publish.items = items;
    op.u.publish.n = 1;
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
}

/* A failing op in the middle of a batch is rolled back alone (savepoints). */
static void test_failed_op_rolls_back_alone(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    const char *bad_ids[] = {"wh-1", NULL};
    bool act[2] = {true, true};
    struct kz_publish_item bad;
    struct kz_op op = {.type = KZ_OP_PUBLISH};
    struct kz_publish_item it;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    memset(&bad, 0, sizeof(bad));
    bad.ev.event_id = (char *)"ev-bad";
    bad.webhook_ids = bad_ids; /* second target NULL: fails after the event and one delivery */
    bad.target_active = act;
    bad.n_targets = 2;
    op.u.publish.items = &bad;
    op.u.publish.n = 1;
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 10).n, 0);
    /* the event insert was rolled back too: publishing it again is not a duplicate */
    it = publish(f->st, "ev-bad", T0, ids, 1, 0);
    assert_false(it.duplicate);
}

/* ==== claim, complete, replay, release ==== */

static void setup_backlog(struct kz_store *st)
{
    const char *ids[] = {"wh-1", "wh-2"};

    add_app(st, "app-1", T0);
    add_webhook(st, "wh-1", "app-1", "g1");
    add_webhook(st, "wh-2", "app-1", "g1");
    publish(st, "ev-3", T0 + 30, ids, 2, 0); /* later event first: order is by time */
    publish(st, "ev-1", T0 + 10, ids, 2, 0);
    publish(st, "ev-2", T0 + 20, ids, 1, 0);
    publish(st, "ev-late", T0 + 100000, ids, 2, 0); /* not due at T0 + 1000 */
}

static void test_claim_order_limit_exclude_lease(void **state)
{
    struct fx *f = *state;
    const char *excl[] = {"wh-2"};
    struct kz_op op;
    struct kz_claimed *r;
    struct dlist l;

    setup_backlog(f->st);
    claim(f->st, &op, T0 + 1000, 3, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 3);
    r = op.u.claim.out;
    assert_string_equal(r[0].ev.event_id, "ev-1");
    assert_string_equal(r[0].wh.id, "wh-1");
    assert_string_equal(r[1].ev.event_id, "ev-1");
    assert_string_equal(r[1].wh.id, "wh-2");
    assert_true(r[0].delivery_id < r[1].delivery_id);
    assert_string_equal(r[2].ev.event_id, "ev-2");
    /* full rows */
    assert_string_equal(r[0].wh.callback_url, "https://example.com/hook");
    assert_string_equal(r[0].wh.signing_secret, "whsec_c2VjcmV0");
    assert_string_equal(r[0].ev.data_json, "{\"k\":1}");
    assert_string_equal(r[0].ev.group_id, "g1");
    assert_null(r[0].ev.action_package_id);
    assert_int_equal(r[0].ev.event_type, KZ_EV_SURVEYRESPONSE);
    assert_int_equal(r[0].ev.created_at, T0 + 10);
    assert_int_equal(r[0].created_at, T0 + 10);
    assert_int_equal(r[0].attempts, 0);

    l = list_deliveries(f->st, "wh-1", KZ_D_PENDING, 0, 10); /* pending includes inflight */
    assert_int_equal(l.n, 4);
    kz_claim_cleanup(&op);
    assert_null(op.u.claim.out);

    /* claimed rows are leased: not claimed again; wh-2 excluded */
    claim(f->st, &op, T0 + 1000, 10, excl, 1);
    assert_int_equal(op.u.claim.n_out, 1);
    assert_string_equal(op.u.claim.out[0].ev.event_id, "ev-3");
    assert_string_equal(op.u.claim.out[0].wh.id, "wh-1");
    kz_claim_cleanup(&op);
    /* an empty exclusion list does not keep the previous one */
    claim(f->st, &op, T0 + 1000, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 1);
    assert_string_equal(op.u.claim.out[0].wh.id, "wh-2");
    kz_claim_cleanup(&op);
    claim(f->st, &op, T0 + 1000, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 0);
    kz_claim_cleanup(&op);
    claim(f->st, &op, T0 + 1000, 0, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 0);

    /* after the lease ends the housekeeper releases them; then they are due again */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_RELEASE;
    op.u.release.now = T0 + 1000 + 29999; /* lease_until = T0 + 31000: not yet over */
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.release.released, 0);
    op.u.release.now = T0 + 1000 + 30001;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.release.released, 5);
    claim(f->st, &op, T0 + 1000 + 30001, 100, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 5);
    kz_claim_cleanup(&op);
    /* `all` ignores the lease (startup after a crash) */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_RELEASE;
    op.u.release.now = T0;
    op.u.release.all = true;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.release.released, 5);
}

/* With exclusions the claim goes webhook by webhook (deliveries_pending): the excluded ones'
 * rows are never returned however many come first, the others share the limit, each oldest
 * first, and rows not yet due or whose webhook is gone stay. */
static void test_claim_with_exclusions_shares_the_limit(void **state)
{
    struct fx *f = *state;
    const char *all[] = {"wh-1", "wh-2", "wh-3"};
    const char *gone[] = {"wh-gone"};
    const char *excl[] = {"wh-3", "wh-1"}; /* unsorted on purpose */
    struct kz_op op;
    char eid[32];
    size_t i, per[3];
    int64_t last[3];

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    add_webhook(f->st, "wh-2", "app-1", "g1");
    add_webhook(f->st, "wh-3", "app-1", "g1");
    add_webhook(f->st, "wh-gone", "app-1", "g1");
    /* 50 due rows of the excluded wh-1 come first */
    for (i = 0; i < 50; i++) {
        snprintf(eid, sizeof(eid), "early-%zu", i);
        publish(f->st, eid, T0 + (int64_t)i, all, 1, 0);
    }
    for (i = 0; i < 10; i++) {
        snprintf(eid, sizeof(eid), "ev-%zu", i);
        publish(f->st, eid, T0 + 100 + (int64_t)i, all, 3, 0);
    }
    publish(f->st, "later", T0 + 5000, all, 3, 0);  /* not due at T0 + 1000 */
    publish(f->st, "orphan", T0 + 200, gone, 1, 0); /* its webhook is deleted below */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_DELETE;
    op.u.del.id = "wh-gone";
    op.u.del.app_id = "";
    assert_int_equal(exec(f->st, &op), KZ_OK);

    claim(f->st, &op, T0 + 1000, 4, excl + 1, 1); /* only wh-1 excluded */
    assert_int_equal(op.u.claim.n_out, 4);
    memset(per, 0, sizeof(per));
    for (i = 0; i < op.u.claim.n_out; i++) {
        const struct kz_claimed *r = &op.u.claim.out[i];
        int w = r->wh.id[3] - '1';

        assert_true(w == 1 || w == 2);
        per[w]++;
        assert_int_equal(r->ev.created_at, T0 + 100 + (int64_t)(per[w] - 1)); /* oldest first */
    }
    assert_int_equal(per[1], 2);
    assert_int_equal(per[2], 2);
    kz_claim_cleanup(&op);

    /* wh-1 and wh-3 excluded: the rest of wh-2's due rows, nothing else */
    claim(f->st, &op, T0 + 1000, 100, excl, 2);
    assert_int_equal(op.u.claim.n_out, 8);
    last[1] = 0;
    for (i = 0; i < op.u.claim.n_out; i++) {
        assert_string_equal(op.u.claim.out[i].wh.id, "wh-2");
        assert_true(op.u.claim.out[i].ev.created_at > last[1]);
        last[1] = op.u.claim.out[i].ev.created_at;
    }
    kz_claim_cleanup(&op);
    claim(f->st, &op, T0 + 1000, 100, excl, 2);
    assert_int_equal(op.u.claim.n_out, 0);
    kz_claim_cleanup(&op);

    /* no exclusions: the oldest first, wh-1's early rows */
    claim(f->st, &op, T0 + 1000, 100, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 68); /* 50 + 10 of wh-1, 8 left of wh-3 */
    for (i = 0; i < 50; i++)
        assert_string_equal(op.u.claim.out[i].wh.id, "wh-1");
    kz_claim_cleanup(&op);
    /* everything due is claimed; "later" becomes due at T0 + 5000, the orphan never */
    claim(f->st, &op, T0 + 6000, 100, excl + 1, 1);
    assert_int_equal(op.u.claim.n_out, 2);
    for (i = 0; i < op.u.claim.n_out; i++)
        assert_string_equal(op.u.claim.out[i].ev.event_id, "later");
    kz_claim_cleanup(&op);
    claim(f->st, &op, T0 + 6000, 100, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 1);
    assert_string_equal(op.u.claim.out[0].wh.id, "wh-1");
    kz_claim_cleanup(&op);
}

static void test_complete_retry_success_dead(void **state)
{
    struct fx *f = *state;
    struct kz_op op, res;
    struct dlist l;
    struct kz_webhook w;
    int64_t d1, d2, d3, v;
    int64_t now = T0 + 1000;

    setup_backlog(f->st);
    claim(f->st, &op, now, 3, NULL, 0); /* ev-1/wh-1, ev-1/wh-2, ev-2/wh-1 */
    d1 = op.u.claim.out[0].delivery_id;
    d2 = op.u.claim.out[1].delivery_id;
    d3 = op.u.claim.out[2].delivery_id;
    kz_claim_cleanup(&op);
    v = meta_version(f->st);

    res = complete(f->st, d1, "wh-1", KZ_D_PENDING, 1, now + 60000, 500);
    assert_int_equal(res.webhooks_version, v);
    complete(f->st, d3, "wh-1", KZ_D_SUCCEEDED, 1, 0, 200);
    l = list_deliveries(f->st, "wh-1", -1, 0, 10);
    assert_int_equal(l.n, 4); /* newest first: ev-late, ev-2 (d3), ev-1 (d1), ev-3 */
    assert_int_equal(l.id[2], d1);
    assert_int_equal(l.state[2], KZ_D_PENDING);
    assert_int_equal(l.attempts[2], 1);
    assert_int_equal(l.next_at[2], now + 60000);
    assert_int_equal(l.status[2], 500);
    assert_int_equal(l.id[1], d3);
    assert_int_equal(l.state[1], KZ_D_SUCCEEDED);

    /* d1 is not due before its retry time: only ev-3's two deliveries are */
    claim(f->st, &op, now + 59999, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 2);
    kz_claim_cleanup(&op);
    claim(f->st, &op, now + 60000, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 1);
    assert_int_equal(op.u.claim.out[0].delivery_id, d1);
    assert_int_equal(op.u.claim.out[0].attempts, 1);
    kz_claim_cleanup(&op);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_RELEASE;
    op.u.release.all = true;
    op.u.release.now = now;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.release.released, 4); /* d1, d2 and ev-3's two */

    /* dead: the webhook becomes inactive and the version moves; the row must be inflight */
    complete(f->st, d2, "wh-2", KZ_D_DEAD, 7, 0, 0);
    assert_int_equal(meta_version(f->st), v); /* d2 had been released: ignored */
    claim(f->st, &op, now, 100, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 4);
    kz_claim_cleanup(&op);
    res = complete(f->st, d2, "wh-2", KZ_D_DEAD, 7, 0, 0);
    assert_int_equal(res.webhooks_version, v + 1);
    assert_int_equal(meta_version(f->st), v + 1);
    assert_int_equal(kz_store_webhook_get(f->st, "wh-2", &w), KZ_OK);
    assert_false(w.active);
    kz_webhook_cleanup(&w);
    l = list_deliveries(f->st, "wh-2", KZ_D_DEAD, 0, 10);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.attempts[0], 7);
    assert_string_equal(l.err0, "connection refused");
}

static void test_complete_truncates_response(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    char *big = kz_malloc(KZ_RESPONSE_KEEP + 100);
    struct kz_attempt a;
    struct kz_op op;
    int64_t len;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    publish(f->st, "ev-1", T0, ids, 1, 0);
    claim(f->st, &op, T0, 1, NULL, 0);
    memset(&a, 0, sizeof(a));
    a.delivery_id = op.u.claim.out[0].delivery_id;
    kz_claim_cleanup(&op);
    snprintf(a.webhook_id, sizeof(a.webhook_id), "wh-1");
    memset(big, 'x', KZ_RESPONSE_KEEP + 100);
    big[KZ_RESPONSE_KEEP - 1] = (char)0xC3; /* a 2-byte UTF-8 character across the cut */
    big[KZ_RESPONSE_KEEP] = (char)0xA9;
    a.state = KZ_D_SUCCEEDED;
    a.attempts = 1;
    a.status = 200;
    a.response = big;
    a.response_len = KZ_RESPONSE_KEEP + 100;
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_COMPLETE;
    op.u.complete.items = &a;
    op.u.complete.n = 1;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    kz_free(big);
    len = count_rows(f->path, "SELECT length(CAST(last_response AS BLOB)) FROM deliveries");
    assert_int_equal(len, KZ_RESPONSE_KEEP - 1);

    a.state = KZ_D_INFLIGHT; /* not an outcome */
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
}

static void test_replay(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    struct kz_op op;
    struct dlist l;
    int64_t d[4];
    int i;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    publish(f->st, "ev-0", T0, ids, 1, 0);      /* before `since`: untouched */
    publish(f->st, "ev-1", T0 + 10, ids, 1, 0); /* -> succeeded */
    publish(f->st, "ev-2", T0 + 20, ids, 1, 0); /* -> dead */
    publish(f->st, "ev-3", T0 + 30, ids, 1, 1); /* skipped */
    publish(f->st, "ev-4", T0 + 40, ids, 1, 0); /* -> pending retry */
    publish(f->st, "ev-5", T0 + 50, ids, 1, 0); /* -> inflight: left alone */
    claim(f->st, &op, T0 + 100, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 5);
    for (i = 0; i < 4; i++)
        d[i] = op.u.claim.out[i + 1].delivery_id;
    kz_claim_cleanup(&op);
    complete(f->st, d[0], "wh-1", KZ_D_SUCCEEDED, 1, 0, 200);
    complete(f->st, d[1], "wh-1", KZ_D_DEAD, 3, 0, 500);
    complete(f->st, d[2], "wh-1", KZ_D_PENDING, 2, T0 + 999999, 500);

    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_REPLAY;
    op.u.replay.webhook_id = "wh-1";
    op.u.replay.since = T0 + 10;
    op.u.replay.now = T0 + 200;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.replay.requeued, 3); /* dead, skipped, pending */
    l = list_deliveries(f->st, "wh-1", KZ_D_PENDING, 0, 10);
    assert_int_equal(l.n, 5); /* ev-5 inflight, ev-4/3/2 requeued, ev-0 inflight */
    for (i = 0; i < 3; i++) {
        assert_int_equal(l.next_at[i + 1], T0 + 200);
        assert_int_equal(l.attempts[i + 1], 0);
    }
    assert_int_equal(list_deliveries(f->st, "wh-1", KZ_D_SUCCEEDED, 0, 10).n, 1);
    op.u.replay.webhook_id = "wh-none";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.replay.requeued, 0);
}

/* ==== delivery log ==== */

static void test_delivery_list_filter_and_cursor(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    struct kz_op op;
    struct dlist l;
    char evid[32];
    int64_t cursor;
    size_t total = 0;
    int i;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    for (i = 0; i < 25; i++) {
        snprintf(evid, sizeof(evid), "ev-%02d", i);
        publish(f->st, evid, T0 + i, ids, 1, i % 5 == 4 ? 1 : 0); /* 5 skipped */
    }
    claim(f->st, &op, T0 + 100, 2, NULL, 0); /* 2 inflight */
    complete(f->st, op.u.claim.out[0].delivery_id, "wh-1", KZ_D_SUCCEEDED, 1, 0, 200);
    kz_claim_cleanup(&op);

    l = list_deliveries(f->st, "wh-1", -1, 0, 100);
    assert_int_equal(l.n, 25);
    for (i = 1; i < 25; i++)
        assert_true(l.id[i] < l.id[i - 1]); /* newest first */
    assert_int_equal(list_deliveries(f->st, "wh-1", KZ_D_SKIPPED, 0, 100).n, 5);
    assert_int_equal(list_deliveries(f->st, "wh-1", KZ_D_SUCCEEDED, 0, 100).n, 1);
    assert_int_equal(list_deliveries(f->st, "wh-1", KZ_D_PENDING, 0, 100).n, 19);
    assert_int_equal(list_deliveries(f->st, "wh-1", KZ_D_DEAD, 0, 100).n, 0);
    assert_int_equal(list_deliveries(f->st, "wh-2", -1, 0, 100).n, 0);
    assert_int_equal(kz_store_delivery_list(f->st, "wh-1", 9, 0, 10, dlist_add, &l),
                     KZ_ERR_INVALID);

    /* pages of 7 by cursor: every row once, in order */
    cursor = 0;
    for (;;) {
        l = list_deliveries(f->st, "wh-1", KZ_D_PENDING, cursor, 7);
        if (!l.n)
            break;
        assert_true(l.n <= 7);
        if (cursor)
            assert_true(l.id[0] < cursor);
        total += l.n;
        cursor = l.id[l.n - 1];
    }
    assert_int_equal(total, 19);
}

/* ==== prune, backlog, next_due ==== */

static void test_prune(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1", "wh-2"};
    struct kz_op op;
    int i;
    char evid[32];

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    add_webhook(f->st, "wh-2", "app-1", "g1");
    /* 6 old events: both deliveries succeed for 0..3; event 4 keeps a dead one; 5 has none */
    for (i = 0; i < 5; i++) {
        snprintf(evid, sizeof(evid), "old-%d", i);
        publish(f->st, evid, T0 + i, ids, 2, 0);
    }
    publish(f->st, "old-none", T0 + 5, NULL, 0, 0);
    claim(f->st, &op, T0 + 100, 100, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 10);
    for (i = 0; i < 10; i++)
        complete(f->st, op.u.claim.out[i].delivery_id, op.u.claim.out[i].wh.id,
                 i == 9 ? KZ_D_DEAD : KZ_D_SUCCEEDED, 1, 0, 200);
    kz_claim_cleanup(&op);
    publish(f->st, "new-1", kz_now_ms() + 100000, ids, 2, 0); /* inside the window */
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM events"), 7);

    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_PRUNE;
    op.u.prune.before = kz_now_ms() + 50000; /* completions happened "now" */
    op.u.prune.limit = 4;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.prune.pruned, 4);
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.prune.pruned, 4);
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.prune.pruned, 1); /* 9 succeeded in all */
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.prune.pruned, 0);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM deliveries"), 3);
    /* old-4 (dead delivery left) and new-1 stay; old-0..3 and old-none are gone */
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM events"), 2);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM events WHERE event_id"
                                         " IN ('old-4', 'new-1')"),
                     2);
    op.u.prune.limit = 0;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.prune.pruned, 0);
}

static void test_backlog_next_due(void **state)
{
    struct fx *f = *state;
    struct kz_op op;
    int64_t due, sched, infl, at;

    assert_int_equal(kz_store_next_due(f->st, &at), KZ_OK);
    assert_int_equal(at, -1);
    setup_backlog(f->st); /* 7 pending: 5 due by T0 + 1000, 2 at T0 + 100000 */
    assert_int_equal(kz_store_next_due(f->st, &at), KZ_OK);
    assert_int_equal(at, T0 + 10);
    claim(f->st, &op, T0 + 1000, 2, NULL, 0);
    kz_claim_cleanup(&op);
    assert_int_equal(kz_store_backlog(f->st, T0 + 1000, &due, &sched, &infl), KZ_OK);
    assert_int_equal(due, 3);
    assert_int_equal(sched, 2);
    assert_int_equal(infl, 2);
    assert_int_equal(kz_store_next_due(f->st, &at), KZ_OK);
    assert_int_equal(at, T0 + 20);
}

/* ==== writer: group commit and back-pressure ==== */

struct counter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int failed;
};

static void count_done(struct kz_op *op, void *arg)
{
    struct counter *c = arg;

    pthread_mutex_lock(&c->mu);
    c->done++;
    if (op->result)
        c->failed++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

#define GC_THREADS 8
#define GC_PER_THREAD 25

struct gc_arg {
    struct kz_store *st;
    struct counter *cnt;
    int t;
    struct kz_op ops[GC_PER_THREAD];
    struct kz_publish_item items[GC_PER_THREAD];
    char evid[GC_PER_THREAD][32];
};

static const char *const gc_ids[] = {"wh-1"};
static const bool gc_active[] = {true};

static void *gc_thread(void *p)
{
    struct gc_arg *a = p;
    int i;

    for (i = 0; i < GC_PER_THREAD; i++) {
        struct kz_op *op = &a->ops[i];

        snprintf(a->evid[i], sizeof(a->evid[i]), "gc-%d-%d", a->t, i);
        memset(&a->items[i], 0, sizeof(a->items[i]));
        a->items[i].ev.event_id = a->evid[i];
        a->items[i].ev.created_at = T0;
        a->items[i].webhook_ids = gc_ids;
        a->items[i].target_active = gc_active;
        a->items[i].n_targets = 1;
        memset(op, 0, sizeof(*op));
        op->type = KZ_OP_PUBLISH;
        op->u.publish.items = &a->items[i];
        op->u.publish.n = 1;
        op->done = count_done;
        op->arg = a->cnt;
        if (kz_store_submit(a->st, op))
            return (void *)1;
    }
    return NULL;
}

static void test_group_commit_batches(void **state)
{
    struct fx *f = *state;
    struct counter cnt = {.done = 0};
    struct gc_arg *args = kz_calloc(GC_THREADS, sizeof(*args));
    pthread_t th[GC_THREADS];
    uint64_t b0, o0, b1, o1;
    void *ret;
    int i;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    pthread_mutex_init(&cnt.mu, NULL);
    pthread_cond_init(&cnt.cv, NULL);
    kz_store_stats(f->st, &b0, &o0);
    for (i = 0; i < GC_THREADS; i++) {
        args[i].st = f->st;
        args[i].cnt = &cnt;
        args[i].t = i;
        assert_int_equal(pthread_create(&th[i], NULL, gc_thread, &args[i]), 0);
    }
    for (i = 0; i < GC_THREADS; i++) {
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
    pthread_mutex_lock(&cnt.mu);
    while (cnt.done < GC_THREADS * GC_PER_THREAD)
        pthread_cond_wait(&cnt.cv, &cnt.mu);
    pthread_mutex_unlock(&cnt.mu);
    assert_int_equal(cnt.failed, 0);
    kz_store_stats(f->st, &b1, &o1);
    assert_int_equal(o1 - o0, GC_THREADS * GC_PER_THREAD);
    print_message("group commit: %d ops in %llu batches\n", GC_THREADS * GC_PER_THREAD,
                  (unsigned long long)(b1 - b0));
    assert_true(b1 - b0 < o1 - o0);
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 1000).n, GC_THREADS * GC_PER_THREAD);
    pthread_cond_destroy(&cnt.cv);
    pthread_mutex_destroy(&cnt.mu);
    kz_free(args);
}

/* A done() that parks the writer until the test lets it go, so that the queue can fill. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool entered, open;
};

static void gate_done(struct kz_op *op, void *arg)
{
    struct gate *g = arg;

    (void)op;
    pthread_mutex_lock(&g->mu);
    g->entered = true;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void test_queue_full_busy(void **state)
{
    struct fx *f = *state;
    struct gate g = {.entered = false, .open = false};
    struct counter cnt = {.done = 0};
    struct kz_op first = {.type = KZ_OP_META_SET};
    struct kz_op ops[3];
    int i;

    kz_store_close(f->st);
    f->st = NULL;
    open_store(f, 2);
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    pthread_mutex_init(&cnt.mu, NULL);
    pthread_cond_init(&cnt.cv, NULL);

    first.u.meta.key = "k";
    first.u.meta.value = "v";
    first.done = gate_done;
    first.arg = &g;
    assert_int_equal(kz_store_submit(f->st, &first), KZ_OK);
    pthread_mutex_lock(&g.mu);
    while (!g.entered)
        pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);

    for (i = 0; i < 3; i++) {
        memset(&ops[i], 0, sizeof(ops[i]));
        ops[i].type = KZ_OP_META_SET;
        ops[i].u.meta.key = "k";
        ops[i].u.meta.value = "w";
        ops[i].done = count_done;
        ops[i].arg = &cnt;
    }
    assert_int_equal(kz_store_submit(f->st, &ops[0]), KZ_OK);
    assert_int_equal(kz_store_submit(f->st, &ops[1]), KZ_OK);
    assert_int_equal(kz_store_submit(f->st, &ops[2]), KZ_ERR_BUSY);
    assert_int_equal(kz_store_exec(f->st, &ops[2]), KZ_ERR_BUSY);

    pthread_mutex_lock(&g.mu);
    g.open = true;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    pthread_mutex_lock(&cnt.mu);
    while (cnt.done < 2)
        pthread_cond_wait(&cnt.cv, &cnt.mu);
    pthread_mutex_unlock(&cnt.mu);
    assert_int_equal(cnt.failed, 0);
    assert_int_equal(first.result, KZ_OK);
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&cnt.cv);
    pthread_mutex_destroy(&cnt.mu);
}

/* Close drains: ops submitted just before close still commit and get done(). */
static void test_close_drains(void **state)
{
    struct fx *f = *state;
    struct counter cnt = {.done = 0};
    struct kz_op ops[50];
    struct kz_buf b;
    int i;

    pthread_mutex_init(&cnt.mu, NULL);
    pthread_cond_init(&cnt.cv, NULL);
    for (i = 0; i < 50; i++) {
        memset(&ops[i], 0, sizeof(ops[i]));
        ops[i].type = KZ_OP_META_SET;
        ops[i].u.meta.key = "last";
        ops[i].u.meta.value = i == 49 ? "49" : "x";
        ops[i].done = count_done;
        ops[i].arg = &cnt;
        assert_int_equal(kz_store_submit(f->st, &ops[i]), KZ_OK);
    }
    kz_store_close(f->st);
    f->st = NULL;
    assert_int_equal(cnt.done, 50);
    assert_int_equal(cnt.failed, 0);
    open_store(f, 100);
    kz_buf_init(&b, 16);
    assert_int_equal(kz_store_meta_get(f->st, "last", &b), KZ_OK);
    assert_string_equal(kz_buf_cstr(&b), "49");
    kz_buf_cleanup(&b);
    pthread_cond_destroy(&cnt.cv);
    pthread_mutex_destroy(&cnt.mu);
}

/* The CLI (another process, here another connection) bumps the version; the store reports it. */
static void test_version_seen_across_processes(void **state)
{
    struct fx *f = *state;
    struct kz_op op = {.type = KZ_OP_META_SET};
    sqlite3 *db = NULL;
    int64_t v = meta_version(f->st);

    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE meta SET value = CAST(value AS INTEGER) + 10"
                                  " WHERE key = 'webhooks_version'",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(meta_version(f->st), v + 10);
    op.u.meta.key = "k";
    op.u.meta.value = "v";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.webhooks_version, v + 10);
    add_app(f->st, "app-1", T0);
    assert_int_equal(add_webhook(f->st, "wh-1", "app-1", "g1"), v + 11);
}

/* While another connection holds the write lock longer than busy_timeout, a whole batch fails
 * with KZ_ERR_BUSY: claimed rows are freed, publish results cleared, and the next batch works.
 * A gate holds the writer so that both ops land in the same batch. */
static void test_locked_batch_busy(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    struct gate g = {.entered = false, .open = false};
    struct counter cnt = {.done = 0};
    struct kz_op first = {.type = KZ_OP_META_SET};
    struct kz_op meta = {.type = KZ_OP_META_SET};
    struct kz_op cl;
    sqlite3 *db = NULL;
    uint64_t b0, o0, b1, o1;
    struct kz_buf b;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    publish(f->st, "ev-1", T0, ids, 1, 0);
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    pthread_mutex_init(&cnt.mu, NULL);
    pthread_cond_init(&cnt.cv, NULL);

    first.u.meta.key = "k0";
    first.u.meta.value = "v";
    first.done = gate_done;
    first.arg = &g;
    assert_int_equal(kz_store_submit(f->st, &first), KZ_OK);
    pthread_mutex_lock(&g.mu);
    while (!g.entered)
        pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);

    meta.u.meta.key = "k";
    meta.u.meta.value = "v";
    meta.done = count_done;
    meta.arg = &cnt;
    memset(&cl, 0, sizeof(cl));
    cl.type = KZ_OP_CLAIM;
    cl.u.claim.now = T0;
    cl.u.claim.lease_until = T0 + 1000;
    cl.u.claim.limit = 10;
    cl.done = count_done;
    cl.arg = &cnt;
    assert_int_equal(kz_store_submit(f->st, &meta), KZ_OK);
    assert_int_equal(kz_store_submit(f->st, &cl), KZ_OK);
    kz_store_stats(f->st, &b0, &o0);

    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    pthread_mutex_lock(&g.mu);
    g.open = true;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    pthread_mutex_lock(&cnt.mu);
    while (cnt.done < 2) /* after busy_timeout (5 s) */
        pthread_cond_wait(&cnt.cv, &cnt.mu);
    pthread_mutex_unlock(&cnt.mu);
    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    kz_store_stats(f->st, &b1, &o1);
    assert_int_equal(b1 - b0, 1);
    assert_int_equal(meta.result, KZ_ERR_BUSY);
    assert_int_equal(cl.result, KZ_ERR_BUSY);
    assert_null(cl.u.claim.out);
    assert_int_equal(cl.u.claim.n_out, 0);
    kz_buf_init(&b, 16);
    assert_int_equal(kz_store_meta_get(f->st, "k", &b), KZ_ERR_NOTFOUND);
    meta.done = NULL;
    assert_int_equal(exec(f->st, &meta), KZ_OK);
    assert_int_equal(kz_store_meta_get(f->st, "k", &b), KZ_OK);
    kz_buf_cleanup(&b);
    claim(f->st, &cl, T0, 10, NULL, 0);
    assert_int_equal(cl.u.claim.n_out, 1); /* the failed claim leased nothing */
    kz_claim_cleanup(&cl);
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&cnt.cv);
    pthread_mutex_destroy(&cnt.mu);
}

/* More reader threads than pooled connections, beside a busy writer: every read answers. */
#define RD_THREADS 12

struct rd_arg {
    struct kz_store *st;
    int failures;
};

static void *rd_thread(void *p)
{
    struct rd_arg *a = p;
    struct kz_webhook w;
    int64_t due, sched, infl;
    int i;

    for (i = 0; i < 50; i++) {
        struct dlist l;

        memset(&l, 0, sizeof(l));
        if (kz_store_webhook_get(a->st, "wh-1", &w))
            a->failures++;
        else
            kz_webhook_cleanup(&w);
        if (kz_store_delivery_list(a->st, "wh-1", -1, 0, 10, dlist_add, &l))
            a->failures++;
        if (kz_store_backlog(a->st, T0, &due, &sched, &infl))
            a->failures++;
    }
    return NULL;
}

static void test_concurrent_reads(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    struct rd_arg args[RD_THREADS];
    pthread_t th[RD_THREADS];
    char evid[32];
    int i;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    for (i = 0; i < RD_THREADS; i++) {
        args[i].st = f->st;
        args[i].failures = 0;
        assert_int_equal(pthread_create(&th[i], NULL, rd_thread, &args[i]), 0);
    }
    for (i = 0; i < 100; i++) {
        snprintf(evid, sizeof(evid), "ev-%d", i);
        publish(f->st, evid, T0, ids, 1, 0);
    }
    for (i = 0; i < RD_THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 1000).n, 100);
}

/* ==== query plans of the hot statements ==== */

/* Fails unless the plan of statement `id` mentions `must_use`, scans no table or index from end
 * to end, and (unless `may_sort`) sorts nothing. */
static void assert_plan(sqlite3 *db, enum stmt_id id, const char *must_use, bool may_sort)
{
    char sql[2048];
    char plan[2048] = "";
    sqlite3_stmt *q = NULL;
    bool bad = false;
    size_t n = 0;

    snprintf(sql, sizeof(sql), "EXPLAIN QUERY PLAN %s", stmt_sql[id]);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &q, NULL), SQLITE_OK);
    while (sqlite3_step(q) == SQLITE_ROW) {
        const char *d = (const char *)sqlite3_column_text(q, 3);

        d = d ? d : "";
        if (!strncmp(d, "SCAN ", 5) && strcmp(d, "SCAN CONSTANT ROW"))
            bad = true;
        if (strstr(d, "TEMP B-TREE") && !may_sort)
            bad = true;
        n += (size_t)snprintf(plan + n, sizeof(plan) - n, "%s\n", d);
        if (n >= sizeof(plan))
            n = sizeof(plan) - 1;
    }
    sqlite3_finalize(q);
    if (bad || !strstr(plan, must_use))
        fail_msg("statement %d: plan does not use %s:\n%s", (int)id, must_use, plan);
}

static void test_query_plans(void **state)
{
    struct fx *f = *state;
    sqlite3 *db = NULL;

    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_plan(db, S_CLAIM_SELECT, "INDEX deliveries_due (state=? AND next_attempt_at<?)", false);
    assert_plan(db, S_CLAIM_WH_NEXT, "INDEX deliveries_pending (webhook_id>?)", false);
    assert_plan(db, S_CLAIM_WH_SELECT,
                "INDEX deliveries_pending (webhook_id=? AND next_attempt_at<?)", false);
    assert_plan(db, S_NEXT_DUE, "INDEX deliveries_due (state=?)", false);
    assert_plan(db, S_BACKLOG, "INDEX deliveries_due (state=? AND next_attempt_at>?)", false);
    assert_plan(db, S_LEASE_EXPIRED, "INDEX deliveries_due (state=?)", false);
    assert_plan(db, S_PRUNE_DLV, "INDEX deliveries_due (state=? AND next_attempt_at<?)", false);
    assert_plan(db, S_DLV_LIST, "INDEX deliveries_webhook (webhook_id=? AND id<?)", false);
    assert_plan(db, S_REPLAY, "INDEX deliveries_webhook (webhook_id=?)", false);
    assert_plan(db, S_PRUNE_EV_ORPHAN, "INDEX deliveries_event (event_seq=?)", false);
    assert_plan(db, S_EV_LOOKUP, "INDEX sqlite_autoindex_events_1 (event_id=?)", false);
    assert_plan(db, S_WH_LIST_APP, "INDEX webhooks_object (application_id=?)", true);
    assert_plan(db, S_APP_DEL_DELIVERIES, "INDEX deliveries_webhook (webhook_id=?)", false);
    assert_plan(db, S_TOKEN_PURGE, "INDEX access_tokens_app (application_id=?)", false);
    sqlite3_close(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reopen_idempotent_and_durable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_schema_newer_than_binary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_meta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_webhooks_crud, setup, teardown),
        cmocka_unit_test_setup_teardown(test_webhook_delete_cascades, setup, teardown),
        cmocka_unit_test_setup_teardown(test_app_delete_cascades, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_and_idempotency, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_op_rolls_back_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_order_limit_exclude_lease, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_with_exclusions_shares_the_limit, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_complete_retry_success_dead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_complete_truncates_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delivery_list_filter_and_cursor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backlog_next_due, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_batches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_full_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_version_seen_across_processes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_locked_batch_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_reads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_query_plans, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
