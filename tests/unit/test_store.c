/* test_store.c — the store (src/store.h) on both backends: every test that is not about one
 * backend runs once on a real SQLite file in a temporary directory and once on a real PostgreSQL
 * database, and its name ends in [sqlite] or [pg]. Covered: every op and read, publish sets
 * (duplicates inside one batch, an invalid op failing alone), claims with exclusions, group
 * commit, back-pressure, migrations (also under concurrent opens), durability across reopen,
 * and throughput figures. The tests named sqlite_only_… or pg_only_… exercise what only one
 * backend has: SQLite's file lock and query plans; PostgreSQL's SKIP LOCKED claims from two
 * stores, lock timeouts, NOTIFY between stores, and reconnects after the server goes away.
 * The tests named both_… open one store of each kind side by side and assert that the API shows
 * the same thing on both: the odd-text rule of the delivery log, and a seeded property test of
 * publish/claim/complete (KZ_TEST_SEED=N repeats a run; the seed is printed).
 *
 * PostgreSQL comes from KZ_TEST_PG_URL, a database this test may wipe (it drops the store's
 * tables before every PostgreSQL test). Without it every [pg] and both_… test is reported
 * SKIPPED, with a banner on stderr; `make test` (scripts/run-tests.sh) always provides one. With
 * KZ_TEST_PG_DIR (the directory given to scripts/pg-test-server.sh) the server is also stopped
 * and restarted mid-test. KZ_TEST_FILTER picks tests by cmocka pattern, e.g. "*[sqlite]".
 *
 *   D=$(mktemp -d); scripts/pg-test-server.sh start $D
 *   KZ_TEST_PG_URL=$(scripts/pg-test-server.sh createdb $D kzunit) KZ_TEST_PG_DIR=$D \
 *       build/unit/test_store
 *   scripts/pg-test-server.sh stop $D
 *
 * Includes store_sqlite.c to reach its statement table and migration list (query plans, schema
 * version); store.c and store_pg.c come from the library. */
#include "../../src/store_sqlite.c"

#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <libpq-fe.h>
#include <spawn.h>
#include <sys/wait.h>

extern char **environ;

#define T0 1700000000000LL /* a fixed "now" for deterministic schedules */
#define PG_READ_MAX 4      /* read connections of the PostgreSQL backend at most (store_pg.c) */

enum backend { B_SQLITE = 1, B_PG = 2 };

static const char *pg_url;
static const char *pg_dir;

struct fx {
    enum backend be;
    int64_t live0;  /* allocations live before the test: a failed one may leak its own */
    char dir[64];   /* a fresh temporary directory, on both backends */
    char path[160]; /* the SQLite file, in a sub-directory the store must create */
    struct kz_store *st;
    struct kz_store *pg; /* both_… tests: the PostgreSQL store beside the SQLite one in `st` */
};

static const char *be_name(enum backend be)
{
    return be == B_PG ? "pg" : "sqlite";
}

/* ==== direct SQL (another "process") ==== */

static PGconn *sql_conn(void)
{
    PGconn *c = PQconnectdb(pg_url);

    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect to %s: %s", pg_url, PQerrorMessage(c));
    return c;
}

static void sql_exec(const char *sql)
{
    PGconn *c = sql_conn();
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

static int64_t sql_int(const char *sql)
{
    PGconn *c = sql_conn();
    PGresult *r = PQexec(c, sql);
    int64_t v = -1;

    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    if (PQntuples(r) && !PQgetisnull(r, 0, 0))
        v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    PQfinish(c);
    return v;
}

static void reset_db(void)
{
    sql_exec("SET client_min_messages = warning;"
             "DROP SCHEMA public CASCADE; CREATE SCHEMA public" /* every table, whatever the migrations add */);
}

/* The first column of the first row of `sql` on the SQLite file `path` (read-only), -1 if none. */
static int64_t count_rows(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    int64_t n = -1;

    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_type(q, 0) != SQLITE_NULL)
        n = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return n;
}

static void sqlite_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    char *msg = NULL;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg ? msg : "?");
    sqlite3_free(msg);
    sqlite3_close(db);
}

/* The same query on the fixture's backend, from another connection. */
static int64_t db_int(const struct fx *f, const char *sql)
{
    return f->be == B_PG ? sql_int(sql) : count_rows(f->path, sql);
}

static void db_exec(const struct fx *f, const char *sql)
{
    if (f->be == B_PG)
        sql_exec(sql);
    else
        sqlite_exec(f->path, sql);
}

/* Runs scripts/pg-test-server.sh `cmd` on KZ_TEST_PG_DIR (from the repository root, where
 * make runs the tests), its output discarded. */
static void server(const char *cmd)
{
    char *argv[] = {(char *)"scripts/pg-test-server.sh", (char *)cmd, (char *)pg_dir, NULL};
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int status = -1;
    int rc;

    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc)
        fail_msg("%s: %s", argv[0], strerror(rc));
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
        fail_msg("%s %s %s: status %d", argv[0], cmd, pg_dir, status);
}

/* ==== fixture ==== */

static const char *url(const struct fx *f)
{
    return f->be == B_PG ? pg_url : f->path;
}

static void open_store(const struct fx *f, struct kz_store **st, size_t queue_max)
{
    char err[256];

    if (kz_store_open(st, url(f), queue_max, err, sizeof(err)))
        fail_msg("kz_store_open(%s): %s", be_name(f->be), err);
}

static struct fx *fx_new(enum backend be)
{
    int64_t live0 = kz_alloc_live();
    struct fx *f = kz_calloc(1, sizeof(*f));

    f->be = be;
    f->live0 = live0;
    snprintf(f->dir, sizeof(f->dir), "/tmp/kzstore-XXXXXX");
    if (!mkdtemp(f->dir)) {
        kz_free(f);
        return NULL;
    }
    /* a missing sub-directory: the store must create it */
    snprintf(f->path, sizeof(f->path), "%s/data/kz.db", f->dir);
    return f;
}

static int setup_sqlite(void **state)
{
    struct fx *f = fx_new(B_SQLITE);

    if (!f)
        return -1;
    open_store(f, &f->st, 10000);
    *state = f;
    return 0;
}

static int setup_pg(void **state)
{
    struct fx *f = fx_new(B_PG);

    if (!f)
        return -1;
    reset_db();
    open_store(f, &f->st, 10000);
    *state = f;
    return 0;
}

/* both_… tests: `st` is a SQLite store, `pg` a PostgreSQL one, both empty. */
static int setup_both(void **state)
{
    struct fx *f = fx_new(B_SQLITE);
    struct fx p = {.be = B_PG};

    if (!f)
        return -1;
    reset_db();
    open_store(f, &f->st, 10000);
    open_store(&p, &f->pg, 10000);
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
    int64_t live0 = f->live0;

    kz_store_close(f->st);
    kz_store_close(f->pg);
    rm_tree(f->dir);
    kz_free(f);
    assert_int_equal(kz_alloc_live(), live0);
    return 0;
}

/* What a [pg] or both_… test runs instead when KZ_TEST_PG_URL is unset. */
static void pg_unavailable(void **state)
{
    (void)state;
    print_message("KZ_TEST_PG_URL is not set: PostgreSQL test SKIPPED\n");
    skip();
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

static void fill_item(struct kz_publish_item *it, const char *event_id, int64_t created_at,
                      const char *const *ids, const bool *active, size_t n)
{
    memset(it, 0, sizeof(*it));
    it->ev.event_id = (char *)event_id;
    it->ev.event_type = KZ_EV_SURVEYRESPONSE;
    it->ev.group_id = (char *)"g1";
    it->ev.action_id = (char *)"a1";
    it->ev.from_user = (char *)"+15550100";
    it->ev.data_json = (char *)"{\"k\":1,\"s\":\"q\\\"uo{te},\\\\\"}";
    it->ev.created_at = created_at;
    it->webhook_ids = ids;
    it->target_active = active;
    it->n_targets = n;
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
    fill_item(&it, event_id, created_at, ids, active, n);
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

struct dlist {
    size_t n;
    int64_t id[64];
    int state[64];
    int attempts[64];
    int64_t next_at[64];
    int status[64];
    char err0[64];
    char resp0[64];
    size_t resp_len0;
    char event_id0[KZ_ID_MAX + 1];
};

static void dlist_add(void *arg, const struct kz_delivery *d)
{
    struct dlist *l = arg;

    if (l->n == 0) {
        snprintf(l->err0, sizeof(l->err0), "%s", d->last_error ? d->last_error : "");
        snprintf(l->resp0, sizeof(l->resp0), "%s", d->last_response ? d->last_response : "");
        l->resp_len0 = d->last_response ? strlen(d->last_response) : 0;
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

static void counter_wait(struct counter *c, int n)
{
    pthread_mutex_lock(&c->mu);
    while (c->done < n)
        pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

/* A done() that parks the writer until the test lets it go, so that the ops submitted meanwhile
 * land in one batch. */
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

/* Parks the writer of `st` inside the done() of a META_SET. */
static void gate_close(struct kz_store *st, struct gate *g, struct kz_op *first)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->entered = false;
    g->open = false;
    memset(first, 0, sizeof(*first));
    first->type = KZ_OP_META_SET;
    first->u.meta.key = "gate";
    first->u.meta.value = "v";
    first->done = gate_done;
    first->arg = g;
    assert_int_equal(kz_store_submit(st, first), KZ_OK);
    pthread_mutex_lock(&g->mu);
    while (!g->entered)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gate_destroy(struct gate *g)
{
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

static void counter_init(struct counter *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
}

static void counter_destroy(struct counter *c)
{
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
}
/* ==== open, migrations, durability ==== */

/* The schema is at the newest version of this binary, each migration recorded once: on SQLite
 * the count is the length of its migration list; on PostgreSQL versions 1..N are each there
 * once (schema_newer_than_binary shows N + 1 is refused, so N is this binary's newest). */
static void assert_schema_current(const struct fx *f)
{
    int64_t n = db_int(f, "SELECT count(*) FROM schema_version");

    assert_true(n >= 1);
    assert_int_equal(db_int(f, "SELECT count(DISTINCT version) FROM schema_version"), n);
    assert_int_equal(db_int(f, "SELECT MIN(version) FROM schema_version"), 1);
    assert_int_equal(db_int(f, "SELECT MAX(version) FROM schema_version"), n);
    if (f->be == B_SQLITE)
        assert_int_equal(n, (int64_t)KZ_ARRAY_LEN(migrations));
}

static void test_reopen_idempotent_and_durable(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    struct kz_app app;
    struct kz_buf b;
    struct stat sb;
    int64_t versions;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    publish(f->st, "ev-1", T0, ids, 1, 0);
    versions = db_int(f, "SELECT count(*) FROM schema_version");
    kz_store_close(f->st);
    f->st = NULL;
    open_store(f, &f->st, 100);
    kz_store_close(f->st);
    f->st = NULL;
    open_store(f, &f->st, 100);

    assert_schema_current(f);
    assert_int_equal(db_int(f, "SELECT count(*) FROM schema_version"), versions);
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
    if (f->be == B_SQLITE) { /* the database file is the owner's only */
        assert_int_equal(stat(f->path, &sb), 0);
        assert_int_equal(sb.st_mode & 0777, 0600);
    }
}

/* Bad URLs and arguments fail at once, whatever backend the fixture runs on. */
static void test_open_errors(void **state)
{
    struct fx *f = *state;
    struct kz_store *st = NULL;
    char err[256];
    char path[200];
    int64_t t0 = kz_mono_ms();
    int fd;

    /* A PostgreSQL URL selects the PostgreSQL backend; nothing listens on port 1: refused at
     * once */
    assert_int_equal(kz_store_open(&st, "postgresql://u@127.0.0.1:1/db", 10, err, sizeof(err)),
                     KZ_ERR_DB);
    assert_non_null(strstr(err, "PostgreSQL"));
    assert_int_equal(kz_store_open(&st, "postgres://u@127.0.0.1:1/db", 10, err, sizeof(err)),
                     KZ_ERR_DB);
    assert_null(st);
    assert_true(kz_mono_ms() - t0 < 3000);
    assert_int_equal(kz_store_open(&st, ":memory:", 10, err, sizeof(err)), KZ_ERR_INVALID);
    assert_int_equal(kz_store_open(&st, "", 10, err, sizeof(err)), KZ_ERR_INVALID);
    assert_int_equal(kz_store_open(&st, url(f), 0, err, sizeof(err)), KZ_ERR_INVALID);
    /* the parent is a file, not a directory */
    snprintf(path, sizeof(path), "%s/file", f->dir);
    fd = open(path, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    snprintf(path, sizeof(path), "%s/file/x.db", f->dir);
    assert_int_not_equal(kz_store_open(&st, path, 10, err, sizeof(err)), KZ_OK);
    assert_null(st);
    kz_store_close(NULL);
    assert_int_equal(kz_store_ping(f->st), KZ_OK);
}

struct open_arg {
    const char *url;
    struct kz_store *st;
    enum kz_err e;
    char err[256];
};

static void *open_thread(void *p)
{
    struct open_arg *a = p;

    a->e = kz_store_open(&a->st, a->url, 100, a->err, sizeof(a->err));
    return NULL;
}

/* Nodes (or a node and the CLI) starting together on an empty database migrate it exactly once
 * (PostgreSQL: an advisory lock; SQLite: the write lock). */
static void test_concurrent_open_migrates_once(void **state)
{
    struct fx *f = *state;
    struct open_arg args[3];
    pthread_t th[3];
    int i;

    kz_store_close(f->st);
    f->st = NULL;
    if (f->be == B_PG) {
        reset_db();
    } else {
        rm_tree(f->dir);
        assert_int_equal(mkdir(f->dir, 0700), 0);
    }
    memset(args, 0, sizeof(args));
    for (i = 0; i < 3; i++) {
        args[i].url = url(f);
        assert_int_equal(pthread_create(&th[i], NULL, open_thread, &args[i]), 0);
    }
    for (i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        if (args[i].e)
            fail_msg("open %d: %s", i, args[i].err);
    }
    assert_schema_current(f);
    assert_int_equal(db_int(f, "SELECT count(*) FROM meta WHERE key = 'webhooks_version'"), 1);
    add_app(args[0].st, "app-1", T0);
    add_webhook(args[1].st, "wh-1", "app-1", "g1");
    assert_int_equal(meta_version(args[2].st), 1);
    for (i = 0; i < 3; i++)
        kz_store_close(args[i].st);
    open_store(f, &f->st, 100);
}

/* A database migrated by a newer kzhook is refused with a message saying so, and nothing is
 * left held (PostgreSQL: the advisory lock is given back; SQLite: the file is not locked). */
static void test_schema_newer_than_binary(void **state)
{
    struct fx *f = *state;
    struct kz_store *st = NULL;
    char err[256];
    char sql[128];
    int64_t n = db_int(f, "SELECT MAX(version) FROM schema_version");

    snprintf(sql, sizeof(sql), "INSERT INTO schema_version VALUES (%lld)", (long long)n + 1);
    db_exec(f, sql);
    assert_int_equal(kz_store_open(&st, url(f), 10, err, sizeof(err)), KZ_ERR_DB);
    assert_non_null(strstr(err, "newer"));
    assert_null(st);
    snprintf(sql, sizeof(sql), "DELETE FROM schema_version WHERE version = %lld", (long long)n + 1);
    db_exec(f, sql);
    assert_int_equal(kz_store_open(&st, url(f), 10, err, sizeof(err)), KZ_OK);
    kz_store_close(st);
    assert_int_equal(kz_store_ping(f->st), KZ_OK);
    assert_schema_current(f);
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

/* Delivery controls: headers and filter are stored and replaced by UPDATE (NULL clears them);
 * ROTATE keeps the replaced secret while its overlap lasts, only the newest one, never touches
 * the bumped version, and is matched by app; UPDATE leaves the rotation alone; the store refuses
 * texts over their limits before any SQL. */
static void test_webhook_controls_and_rotate(void **state)
{
    struct fx *f = *state;
    struct kz_op op;
    struct kz_webhook w;
    struct kz_claimed *row;
    int64_t v;
    char *big;
    const char *const ids[] = {"wh-r"};
    const bool act[] = {true};
    struct kz_publish_item it;

    add_app(f->st, "app-1", T0);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_INSERT;
    fill_webhook(&op.u.webhook, "wh-r", "app-1", "g1");
    op.u.webhook.headers_json = (char *)"{\"X-A\":\"1\"}";
    op.u.webhook.filter_json = (char *)"{\"data.n\":{\"$gt\":1e400}}";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    v = op.webhooks_version;
    assert_int_equal(kz_store_webhook_get(f->st, "wh-r", &w), KZ_OK);
    assert_string_equal(w.headers_json, "{\"X-A\":\"1\"}");
    assert_string_equal(w.filter_json, "{\"data.n\":{\"$gt\":1e400}}");
    assert_null(w.prev_secret);
    assert_int_equal(w.prev_expires, 0);
    kz_webhook_cleanup(&w);

    /* rotate with an overlap: the replaced secret is kept until then */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_ROTATE;
    op.u.rotate.id = "wh-r";
    op.u.rotate.app_id = "app-2";
    op.u.rotate.secret = "whsec_bmV3MQ==";
    op.u.rotate.now = T0;
    op.u.rotate.expires = T0 + 5000;
    assert_int_equal(exec(f->st, &op), KZ_ERR_NOTFOUND); /* another app's */
    op.u.rotate.app_id = "app-1";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_true(op.webhooks_version > v); /* bumped: dispatchers cache secrets */
    op.u.rotate.secret = "whsec_bmV3Mg==";
    op.u.rotate.expires = T0 + 9000;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(kz_store_webhook_get(f->st, "wh-r", &w), KZ_OK);
    assert_string_equal(w.signing_secret, "whsec_bmV3Mg==");
    assert_string_equal(w.prev_secret, "whsec_bmV3MQ=="); /* only the newest previous */
    assert_int_equal(w.prev_expires, T0 + 9000);
    kz_webhook_cleanup(&w);

    /* UPDATE replaces headers/filter (NULL clears), keeps secret and rotation */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_UPDATE;
    fill_webhook(&op.u.webhook, "wh-r", "app-1", "g1");
    op.u.webhook.signing_secret = NULL;
    op.u.webhook.headers_json = NULL;
    op.u.webhook.filter_json = (char *)"{\"fromUser\":\"x\"}";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(kz_store_webhook_get(f->st, "wh-r", &w), KZ_OK);
    assert_null(w.headers_json);
    assert_string_equal(w.filter_json, "{\"fromUser\":\"x\"}");
    assert_string_equal(w.signing_secret, "whsec_bmV3Mg==");
    assert_string_equal(w.prev_secret, "whsec_bmV3MQ==");
    kz_webhook_cleanup(&w);

    /* a claim carries the rotation to the dispatcher */
    fill_item(&it, "ev-r", T0, ids, act, 1);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_PUBLISH;
    op.u.publish.items = &it;
    op.u.publish.n = 1;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    claim(f->st, &op, T0 + 10, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 1);
    row = &op.u.claim.out[0];
    assert_string_equal(row->wh.prev_secret, "whsec_bmV3MQ==");
    assert_int_equal(row->wh.prev_expires, T0 + 9000);
    assert_string_equal(row->wh.filter_json, "{\"fromUser\":\"x\"}");
    kz_claim_cleanup(&op);

    /* no overlap: the previous secret is dropped */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_ROTATE;
    op.u.rotate.id = "wh-r";
    op.u.rotate.app_id = "";
    op.u.rotate.secret = "whsec_bmV3Mw==";
    op.u.rotate.now = T0 + 100;
    op.u.rotate.expires = T0 + 100;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(kz_store_webhook_get(f->st, "wh-r", &w), KZ_OK);
    assert_string_equal(w.signing_secret, "whsec_bmV3Mw==");
    assert_null(w.prev_secret);
    assert_int_equal(w.prev_expires, 0);
    kz_webhook_cleanup(&w);
    op.u.rotate.secret = NULL;
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
    op.u.rotate.secret = "";
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
    op.u.rotate.id = "nope";
    op.u.rotate.secret = "whsec_eA==";
    assert_int_equal(exec(f->st, &op), KZ_ERR_NOTFOUND);

    /* limits are the store's policy, the same on both backends */
    big = test_malloc(KZ_FILTER_MAX + 2);
    memset(big, 'x', KZ_FILTER_MAX + 1);
    big[KZ_FILTER_MAX + 1] = '\0';
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_UPDATE;
    fill_webhook(&op.u.webhook, "wh-r", "app-1", "g1");
    op.u.webhook.filter_json = big;
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
    big[KZ_FILTER_MAX] = '\0';
    assert_int_equal(exec(f->st, &op), KZ_OK);
    test_free(big);
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

/* Runs `op` on a store of the fixture's database opened in a child process, so that a store
 * that crashes on it fails this test instead of ending the whole run. The fixture's store is
 * closed meanwhile (no threads while forking) and opened again. Returns the op's result. */
static enum kz_err exec_isolated(struct fx *f, struct kz_op *op)
{
    pid_t pid;
    int status = 0;

    kz_store_close(f->st);
    f->st = NULL;
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct kz_store *st = NULL;
        char err[256];
        enum kz_err e;

        /* cmocka's handlers must not catch a crash on the writer thread */
        signal(SIGSEGV, SIG_DFL);
        signal(SIGBUS, SIG_DFL);
        signal(SIGILL, SIG_DFL);
        signal(SIGFPE, SIG_DFL);
        e = kz_store_open(&st, url(f), 10, err, sizeof(err));
        if (!e)
            e = kz_store_exec(st, op);
        kz_store_close(st);
        _exit(100 + (int)e); /* below 100: the process ended some other way (a sanitizer) */
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    open_store(f, &f->st, 10000);
    if (WIFSIGNALED(status))
        fail_msg("%s store: the writer crashed (signal %d) on this op", be_name(f->be),
                 WTERMSIG(status));
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) < 100)
        fail_msg("%s store: the process ended with status %d on this op", be_name(f->be),
                 WEXITSTATUS(status));
    return (enum kz_err)(WEXITSTATUS(status) - 100);
}

static void test_publish_and_idempotency(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1", "wh-2", "wh-3"};
    struct kz_publish_item it, again;
    struct kz_publish_item items[3];
    bool act[3] = {true, true, true};
    struct kz_op op = {.type = KZ_OP_PUBLISH};
    struct kz_op cl;
    struct dlist l;
    size_t i;

    add_app(f->st, "app-1", T0);
    for (i = 0; i < 3; i++)
        add_webhook(f->st, ids[i], "app-1", "g1");
    it = publish(f->st, "ev-1", T0, ids, 3, 1u << 1); /* wh-2 inactive: skipped */
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
    /* every stored field survives the array literals (quotes, braces, backslashes) */
    claim(f->st, &cl, T0, 1, NULL, 0);
    assert_int_equal(cl.u.claim.n_out, 1);
    assert_string_equal(cl.u.claim.out[0].ev.data_json, "{\"k\":1,\"s\":\"q\\\"uo{te},\\\\\"}");
    assert_string_equal(cl.u.claim.out[0].ev.from_user, "+15550100");
    assert_null(cl.u.claim.out[0].ev.from_user_pic);
    assert_int_equal(cl.u.claim.out[0].ev.seq, it.seq);
    kz_claim_cleanup(&cl);

    /* republished in another batch, with other targets: the original answer, nothing new */
    again = publish(f->st, "ev-1", T0 + 5, ids, 1, 0);
    assert_true(again.duplicate);
    assert_int_equal(again.seq, it.seq);
    assert_int_equal(again.deliveries, 3);
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 10).n, 1);

    /* a duplicate inside one op */
    memset(items, 0, sizeof(items));
    for (i = 0; i < 3; i++)
        fill_item(&items[i], i == 1 ? "ev-x" : "ev-y", T0, ids, act, i + 1);
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
    op.u.publish.items = NULL; /* n items promised, none given */
    assert_int_equal(exec_isolated(f, &op), KZ_ERR_INVALID);
}

/* The Kaizala callback fields and the traceparent are stored with the event and come back with
 * every claim as published; an event without them claims back not-a-bot, no source group, no
 * traceparent. A traceparent that could break a header block, or is over KZ_TRACEPARENT_MAX,
 * fails its op alone (store.c's policy, the same on both backends). */
static void test_publish_kaizala_fields_and_traceparent(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-k"};
    const char *tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    bool act[] = {true};
    struct kz_publish_item items[2];
    struct kz_op op = {.type = KZ_OP_PUBLISH};
    struct kz_op cl;
    char longtp[KZ_TRACEPARENT_MAX + 2];
    size_t i;

    add_app(f->st, "app-k", T0);
    add_webhook(f->st, ids[0], "app-k", "g1");
    fill_item(&items[0], "ev-k1", T0, ids, act, 1);
    items[0].ev.is_bot = true;
    items[0].ev.source_group_id = (char *)"sub-g \"1\"";
    items[0].ev.traceparent = (char *)tp;
    fill_item(&items[1], "ev-k2", T0 + 1, ids, act, 1);
    op.u.publish.items = items;
    op.u.publish.n = 2;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    for (i = 0; i < 2; i++) {
        claim(f->st, &cl, T0 + 10 + (int64_t)i * 100000, 1, NULL, 0);
        assert_int_equal(cl.u.claim.n_out, 1);
        if (i == 0) {
            assert_string_equal(cl.u.claim.out[0].ev.event_id, "ev-k1");
            assert_true(cl.u.claim.out[0].ev.is_bot);
            assert_string_equal(cl.u.claim.out[0].ev.source_group_id, "sub-g \"1\"");
            assert_string_equal(cl.u.claim.out[0].ev.traceparent, tp);
        } else {
            assert_string_equal(cl.u.claim.out[0].ev.event_id, "ev-k2");
            assert_false(cl.u.claim.out[0].ev.is_bot);
            assert_null(cl.u.claim.out[0].ev.source_group_id);
            assert_null(cl.u.claim.out[0].ev.traceparent);
        }
        kz_claim_cleanup(&cl);
    }
    /* refused before any SQL: CR/LF, a control byte, empty, too long */
    fill_item(&items[0], "ev-k3", T0, ids, act, 1);
    op.u.publish.n = 1;
    items[0].ev.traceparent =
        (char *)"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nX: 1";
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
    items[0].ev.traceparent = (char *)"\t";
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
    items[0].ev.traceparent = (char *)"";
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
    memset(longtp, 'a', sizeof(longtp) - 1);
    longtp[sizeof(longtp) - 1] = '\0';
    items[0].ev.traceparent = longtp;
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
    items[0].ev.traceparent = NULL;
    items[0].ev.source_group_id = (char *)"\xff";
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
    /* exactly the limit is kept */
    longtp[KZ_TRACEPARENT_MAX] = '\0';
    items[0].ev.source_group_id = NULL;
    items[0].ev.traceparent = longtp;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    claim(f->st, &cl, T0 + 10000000, 1, NULL, 0);
    assert_int_equal(cl.u.claim.n_out, 1);
    assert_string_equal(cl.u.claim.out[0].ev.traceparent, longtp);
    kz_claim_cleanup(&cl);
}

/* Many PUBLISH ops in one batch become one set: duplicates across ops and against stored events
 * are reported per item; an invalid op (no event_id) and an op the server rejects (invalid
 * UTF-8) fail alone; a webhook delete in the same batch still removes deliveries published
 * before it; the batch is one transaction. */
static void test_publish_batch_set(void **state)
{
    struct fx *f = *state;
    static const char *const ids[] = {"wh-1", "wh-2"};
    static const char *const wh3[] = {"wh-3"};
    static const char *const wh13[] = {"wh-1", "wh-3"};
    static const bool act[] = {true, false};
    struct gate g;
    struct kz_op first;
    struct counter cnt;
    struct kz_op ops[8];
    struct kz_publish_item items[8][2];
    char bad_utf8[] = {'e', 'v', '-', (char)0xff, '\0'};
    uint64_t b0, o0, b1, o1;
    struct dlist l;
    int i;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    add_webhook(f->st, "wh-2", "app-1", "g1");
    add_webhook(f->st, "wh-3", "app-1", "g1");
    publish(f->st, "ev-old", T0, ids, 1, 0);

    counter_init(&cnt);
    gate_close(f->st, &g, &first);
    memset(ops, 0, sizeof(ops));
    memset(items, 0, sizeof(items));
    /* 0: ev-a, ev-b | 1: ev-b (dup of op 0), ev-old (stored) | 2: no event_id (invalid)
     * 3: ev-c | 4: invalid UTF-8 (server rejects) | 5: ev-a again, ev-d | 6: delete wh-3
     * 7: ev-e to wh-3 (after the delete: the event is stored, no delivery row for a webhook that no
     * longer exists) */
    fill_item(&items[0][0], "ev-a", T0 + 1, ids, act, 2);
    fill_item(&items[0][1], "ev-b", T0 + 2, ids, act, 1);
    fill_item(&items[1][0], "ev-b", T0 + 3, ids, act, 2);
    fill_item(&items[1][1], "ev-old", T0 + 3, ids, act, 2);
    fill_item(&items[2][0], NULL, T0, ids, act, 1);
    fill_item(&items[3][0], "ev-c", T0 + 4, ids, act, 2);
    fill_item(&items[4][0], bad_utf8, T0 + 5, ids, act, 1);
    fill_item(&items[5][0], "ev-a", T0 + 6, ids, act, 1);
    fill_item(&items[5][1], "ev-d", T0 + 7, ids + 1, act, 1);
    for (i = 0; i < 8; i++) {
        ops[i].type = KZ_OP_PUBLISH;
        ops[i].u.publish.items = items[i];
        ops[i].u.publish.n = (i == 0 || i == 1 || i == 5) ? 2 : 1;
        ops[i].done = count_done;
        ops[i].arg = &cnt;
    }
    fill_item(&items[7][0], "ev-e", T0 + 8, wh3, act, 1);
    /* and a delivery to wh-3 from op 3, published before the delete: deleted with it */
    items[3][0].webhook_ids = wh13;
    ops[6].type = KZ_OP_WEBHOOK_DELETE;
    ops[6].u.del.id = "wh-3";
    ops[6].u.del.app_id = "";
    for (i = 0; i < 8; i++)
        assert_int_equal(kz_store_submit(f->st, &ops[i]), KZ_OK);
    kz_store_stats(f->st, &b0, &o0);
    gate_open(&g);
    counter_wait(&cnt, 8);
    kz_store_stats(f->st, &b1, &o1);
    assert_int_equal(b1 - b0, 1); /* the gate op's batch, then one batch of 8 */

    assert_int_equal(ops[0].result, KZ_OK);
    assert_false(items[0][0].duplicate);
    assert_false(items[0][1].duplicate);
    assert_true(items[0][0].seq < items[0][1].seq);
    assert_int_equal(items[0][0].deliveries, 2);
    assert_int_equal(ops[1].result, KZ_OK);
    assert_true(items[1][0].duplicate);
    assert_int_equal(items[1][0].seq, items[0][1].seq);
    assert_int_equal(items[1][0].deliveries, 1);
    assert_true(items[1][1].duplicate);
    assert_int_equal(items[1][1].deliveries, 1);
    assert_int_equal(ops[2].result, KZ_ERR_INVALID);
    assert_int_equal(ops[3].result, KZ_OK);
    assert_int_equal(ops[4].result, KZ_ERR_INVALID);
    assert_int_equal(items[4][0].seq, 0);
    assert_int_equal(ops[5].result, KZ_OK);
    assert_true(items[5][0].duplicate);
    assert_int_equal(items[5][0].seq, items[0][0].seq);
    assert_false(items[5][1].duplicate);
    assert_int_equal(ops[6].result, KZ_OK);
    assert_int_equal(ops[7].result, KZ_OK);
    assert_false(items[7][0].duplicate);

    /* wh-1: ev-old, ev-a, ev-b, ev-c; wh-2: ev-a (skipped), ev-d (pending) */
    l = list_deliveries(f->st, "wh-1", -1, 0, 10);
    assert_int_equal(l.n, 4);
    l = list_deliveries(f->st, "wh-2", -1, 0, 10);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.state[0], KZ_D_PENDING); /* newest first: ev-d */
    assert_int_equal(l.state[1], KZ_D_SKIPPED);
    assert_int_equal(list_deliveries(f->st, "wh-3", -1, 0, 10).n, 0); /* deleted; ev-e adds none */
    assert_int_equal(db_int(f, "SELECT count(*) FROM events"), 6);
    assert_int_equal(db_int(f, "SELECT n_deliveries FROM events WHERE event_id = 'ev-c'"), 2);
    gate_destroy(&g);
    counter_destroy(&cnt);
}

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
    assert_string_equal(r[0].ev.data_json, "{\"k\":1,\"s\":\"q\\\"uo{te},\\\\\"}");
    assert_string_equal(r[0].ev.group_id, "g1");
    assert_null(r[0].ev.action_package_id);
    assert_int_equal(r[0].ev.event_type, KZ_EV_SURVEYRESPONSE);
    assert_int_equal(r[0].ev.created_at, T0 + 10);
    assert_int_equal(r[0].created_at, T0 + 10);
    assert_int_equal(r[0].attempts, 0);
    assert_true(r[0].wh.active);
    assert_int_equal(r[0].wh.event_mask, 0x1ffff);

    l = list_deliveries(f->st, "wh-1", KZ_D_PENDING, 0, 10); /* pending includes inflight */
    assert_int_equal(l.n, 4);
    kz_claim_cleanup(&op);
    assert_null(op.u.claim.out);
    assert_int_equal(db_int(f, "SELECT count(*) FROM deliveries WHERE state = 1 AND lease_until = "
                               "1700000031000"),
                     3);

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

/* Two stores (two nodes) claim a backlog concurrently: SKIP LOCKED hands each row to exactly
 * one of them. */
#define SL_EVENTS 600
#define SL_TARGETS 4

struct sl_arg {
    struct kz_store *st;
    int64_t *ids;
    size_t n;
    size_t claims;
};

static void *sl_thread(void *p)
{
    struct sl_arg *a = p;
    struct kz_op op;
    size_t i;

    for (;;) {
        memset(&op, 0, sizeof(op));
        op.type = KZ_OP_CLAIM;
        op.u.claim.now = T0 + 1000;
        op.u.claim.lease_until = T0 + 60000;
        op.u.claim.limit = 7;
        if (kz_store_exec(a->st, &op))
            return (void *)1;
        a->claims++;
        if (!op.u.claim.n_out)
            break;
        for (i = 0; i < op.u.claim.n_out; i++)
            a->ids[a->n++] = op.u.claim.out[i].delivery_id;
        kz_claim_cleanup(&op);
    }
    return NULL;
}

static int cmp_i64(const void *x, const void *y)
{
    int64_t a = *(const int64_t *)x;
    int64_t b = *(const int64_t *)y;

    return (a > b) - (a < b);
}

static void test_pg_only_claim_skip_locked_two_nodes(void **state)
{
    struct fx *f = *state;
    const char *ids[SL_TARGETS] = {"wh-1", "wh-2", "wh-3", "wh-4"};
    bool act[SL_TARGETS] = {true, true, true, true};
    struct kz_publish_item *items = kz_calloc(SL_EVENTS, sizeof(*items));
    char(*evid)[16] = kz_calloc(SL_EVENTS, sizeof(*evid));
    struct kz_op op = {.type = KZ_OP_PUBLISH};
    struct sl_arg a[4];
    pthread_t th[4];
    struct kz_store *other = NULL;
    int64_t *all;
    size_t total = 0;
    void *ret;
    int i;

    add_app(f->st, "app-1", T0);
    for (i = 0; i < SL_TARGETS; i++)
        add_webhook(f->st, ids[i], "app-1", "g1");
    for (i = 0; i < SL_EVENTS; i++) {
        snprintf(evid[i], sizeof(evid[i]), "sl-%d", i);
        fill_item(&items[i], evid[i], T0 + (i % 50), ids, act, SL_TARGETS);
    }
    op.u.publish.items = items;
    op.u.publish.n = SL_EVENTS;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    open_store(f, &other, 1000);

    memset(a, 0, sizeof(a));
    for (i = 0; i < 4; i++) { /* two claimers per node: a node's claims queue on its writer */
        a[i].st = i % 2 ? other : f->st;
        a[i].ids = kz_calloc(SL_EVENTS * SL_TARGETS, sizeof(int64_t));
        assert_int_equal(pthread_create(&th[i], NULL, sl_thread, &a[i]), 0);
    }
    for (i = 0; i < 4; i++) {
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
    all = kz_calloc(SL_EVENTS * SL_TARGETS, sizeof(int64_t));
    for (i = 0; i < 4; i++) {
        assert_true(total + a[i].n <= SL_EVENTS * SL_TARGETS);
        memcpy(all + total, a[i].ids, a[i].n * sizeof(int64_t));
        total += a[i].n;
    }
    print_message("skip locked: node A %zu + %zu rows, node B %zu + %zu rows\n", a[0].n, a[2].n,
                  a[1].n, a[3].n);
    assert_int_equal(total, SL_EVENTS * SL_TARGETS);
    qsort(all, total, sizeof(int64_t), cmp_i64);
    for (i = 1; i < (int)total; i++)
        assert_true(all[i] != all[i - 1]);
    assert_true(a[1].n + a[3].n > 0 && a[0].n + a[2].n > 0);
    assert_int_equal(db_int(f, "SELECT count(*) FROM deliveries WHERE state = 1"),
                     SL_EVENTS * SL_TARGETS);
    kz_store_close(other);
    for (i = 0; i < 4; i++)
        kz_free(a[i].ids);
    kz_free(all);
    kz_free(items);
    kz_free(evid);
}

/* The SQLite store's exclusion test on PostgreSQL, whose claim walks deliveries_due filtering
 * `webhook_id <> ALL(excluded)`: the same results (the excluded ones' rows are never returned
 * however many come first, the others are claimed oldest first, rows not yet due or whose
 * webhook is gone stay). */
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

/* Several attempts in one op (one statement): a repeated id applies once, a row no longer
 * inflight is ignored, two dead webhooks are disabled with one version bump. */
static void test_complete_many(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1", "wh-2", "wh-3"};
    struct kz_attempt a[5];
    struct kz_op op, cl;
    struct kz_webhook w;
    struct dlist l;
    int64_t v;
    int i;

    add_app(f->st, "app-1", T0);
    for (i = 0; i < 3; i++)
        add_webhook(f->st, ids[i], "app-1", "g1");
    publish(f->st, "ev-1", T0, ids, 3, 0);
    publish(f->st, "ev-2", T0 + 1, ids, 1, 0);
    claim(f->st, &cl, T0 + 10, 3, NULL, 0); /* ev-1 x3; ev-2 stays pending */
    assert_int_equal(cl.u.claim.n_out, 3);
    v = meta_version(f->st);
    memset(a, 0, sizeof(a));
    for (i = 0; i < 3; i++) {
        a[i].delivery_id = cl.u.claim.out[i].delivery_id;
        snprintf(a[i].webhook_id, sizeof(a[i].webhook_id), "%s", cl.u.claim.out[i].wh.id);
        a[i].state = i == 0 ? KZ_D_SUCCEEDED : KZ_D_DEAD;
        a[i].attempts = 3;
        a[i].status = i == 0 ? 200 : 0;
        a[i].error = i == 0 ? NULL : "boom";
    }
    a[3] = a[0]; /* repeated: the first wins */
    a[3].state = KZ_D_DEAD;
    a[4].delivery_id = 999999; /* unknown: ignored */
    snprintf(a[4].webhook_id, sizeof(a[4].webhook_id), "wh-1");
    a[4].state = KZ_D_DEAD;
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_COMPLETE;
    op.u.complete.items = a;
    op.u.complete.n = 5;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.webhooks_version, v + 1);
    kz_claim_cleanup(&cl);
    assert_int_equal(kz_store_webhook_get(f->st, "wh-1", &w), KZ_OK);
    assert_true(w.active);
    kz_webhook_cleanup(&w);
    assert_int_equal(kz_store_webhook_get(f->st, "wh-3", &w), KZ_OK);
    assert_false(w.active);
    kz_webhook_cleanup(&w);
    l = list_deliveries(f->st, "wh-1", -1, 0, 10);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.state[1], KZ_D_SUCCEEDED);
    assert_int_equal(l.state[0], KZ_D_PENDING); /* ev-2 untouched */
    assert_int_equal(list_deliveries(f->st, "wh-2", KZ_D_DEAD, 0, 10).n, 1);
    /* again: nothing is inflight any more, nothing changes */
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.webhooks_version, v + 1);
    op.u.complete.n = 0;
    assert_int_equal(exec(f->st, &op), KZ_OK);
}

static void test_complete_truncates_response(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    char *big = kz_malloc(KZ_RESPONSE_KEEP + 100);
    struct kz_attempt a;
    struct kz_op op;
    struct dlist l;

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
    /* cut at a character boundary, on disk and in the log (the odd-text rule is
     * both_delivery_log_odd_text's) */
    assert_int_equal(db_int(f, f->be == B_PG
                                   ? "SELECT octet_length(last_response) FROM deliveries"
                                   : "SELECT length(CAST(last_response AS BLOB)) FROM deliveries"),
                     KZ_RESPONSE_KEEP - 1);
    l = list_deliveries(f->st, "wh-1", -1, 0, 10);
    assert_int_equal(l.resp_len0, KZ_RESPONSE_KEEP - 1);
    assert_int_equal(l.status[0], 200);
    kz_free(big);

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
    assert_int_equal(db_int(f, "SELECT count(*) FROM events"), 7);

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
    assert_int_equal(db_int(f, "SELECT count(*) FROM deliveries"), 3);
    /* old-4 (dead delivery left) and new-1 stay; old-0..3 and old-none are gone */
    assert_int_equal(db_int(f, "SELECT count(*) FROM events"), 2);
    assert_int_equal(db_int(f, "SELECT count(*) FROM events WHERE event_id IN ('old-4', 'new-1')"),
                     2);
    op.u.prune.limit = 0;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.prune.pruned, 0);
}

/* The orphan sweep is bounded by `limit` events per call and reaches every orphan. */
static void test_prune_sweep_bounded(void **state)
{
    struct fx *f = *state;
    struct kz_op op;
    char evid[32];
    int calls = 0;
    int i;

    for (i = 0; i < 25; i++) {
        snprintf(evid, sizeof(evid), "orphan-%d", i);
        publish(f->st, evid, T0 + i, NULL, 0, 0);
    }
    publish(f->st, "recent", kz_now_ms(), NULL, 0, 0);
    for (;;) {
        int64_t before = db_int(f, "SELECT count(*) FROM events");

        memset(&op, 0, sizeof(op));
        op.type = KZ_OP_PRUNE;
        op.u.prune.before = T0 + 1000;
        op.u.prune.limit = 10;
        assert_int_equal(exec(f->st, &op), KZ_OK);
        assert_true(before - db_int(f, "SELECT count(*) FROM events") <= 10);
        calls++;
        if (db_int(f, "SELECT count(*) FROM events") == 1)
            break;
        assert_true(calls < 10);
    }
    assert_int_equal(calls, 3);
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

/* ==== writer ==== */

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
        fill_item(&a->items[i], a->evid[i], T0, gc_ids, gc_active, 1);
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
    struct counter cnt;
    struct gc_arg *args = kz_calloc(GC_THREADS, sizeof(*args));
    pthread_t th[GC_THREADS];
    uint64_t b0, o0, b1, o1;
    void *ret;
    int i;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    counter_init(&cnt);
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
    counter_wait(&cnt, GC_THREADS * GC_PER_THREAD);
    assert_int_equal(cnt.failed, 0);
    kz_store_stats(f->st, &b1, &o1);
    assert_int_equal(o1 - o0, GC_THREADS * GC_PER_THREAD);
    print_message("group commit: %d ops in %llu batches\n", GC_THREADS * GC_PER_THREAD,
                  (unsigned long long)(b1 - b0));
    assert_true(b1 - b0 < o1 - o0);
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 1000).n, GC_THREADS * GC_PER_THREAD);
    counter_destroy(&cnt);
    kz_free(args);
}

static void test_close_drains(void **state)
{
    struct fx *f = *state;
    struct counter cnt;
    struct kz_op ops[50];
    struct kz_buf b;
    int i;

    counter_init(&cnt);
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
    open_store(f, &f->st, 100);
    kz_buf_init(&b, 16);
    assert_int_equal(kz_store_meta_get(f->st, "last", &b), KZ_OK);
    assert_string_equal(kz_buf_cstr(&b), "49");
    kz_buf_cleanup(&b);
    counter_destroy(&cnt);
}

static void test_version_seen_across_processes(void **state)
{
    struct fx *f = *state;
    struct kz_op op = {.type = KZ_OP_META_SET};
    int64_t v = meta_version(f->st);

    db_exec(f, f->be == B_PG ? "UPDATE meta SET value = (value::bigint + 10)::text"
                               " WHERE key = 'webhooks_version'"
                             : "UPDATE meta SET value = CAST(value AS INTEGER) + 10"
                               " WHERE key = 'webhooks_version'");
    assert_int_equal(meta_version(f->st), v + 10);
    op.u.meta.key = "k";
    op.u.meta.value = "v";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.webhooks_version, v + 10);
    add_app(f->st, "app-1", T0);
    assert_int_equal(add_webhook(f->st, "wh-1", "app-1", "g1"), v + 11);
}

/* A row another session holds locked makes the op that needs it wait; a lock timeout fails that
 * op alone (KZ_ERR_BUSY), and the rest of the batch commits. */
static void test_pg_only_lock_timeout_busy_alone(void **state)
{
    struct fx *f = *state;
    PGconn *c = sql_conn();
    PGresult *r;
    struct kz_op op = {.type = KZ_OP_META_SET};

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    db_exec(f, "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET lock_timeout = 300',"
               " current_database()); END$$");
    kz_store_close(f->st);
    open_store(f, &f->st, 100); /* new sessions pick the setting up */
    r = PQexec(c, "BEGIN; SELECT 1 FROM webhooks WHERE id = 'wh-1' FOR UPDATE");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_ACTIVE;
    op.u.active.id = "wh-1";
    op.u.active.flag = false;
    assert_int_equal(exec(f->st, &op), KZ_ERR_BUSY);
    r = PQexec(c, "ROLLBACK");
    PQclear(r);
    PQfinish(c);
    db_exec(f, "DO $$BEGIN EXECUTE format('ALTER DATABASE %I RESET lock_timeout',"
               " current_database()); END$$");
    assert_int_equal(exec(f->st, &op), KZ_OK);
}

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

/* How many of this process's descriptors are open on `path`. */
static int open_files(const char *path)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    char real[PATH_MAX], p[300], target[PATH_MAX];
    int n = 0;

    assert_non_null(realpath(path, real));
    assert_non_null(d);
    while ((e = readdir(d))) {
        ssize_t k;

        snprintf(p, sizeof(p), "/proc/self/fd/%s", e->d_name);
        k = readlink(p, target, sizeof(target) - 1);
        if (k <= 0)
            continue;
        target[k] = '\0';
        n += !strcmp(target, real);
    }
    closedir(d);
    return n;
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
    /* the readers shared a bounded pool: the writer's connection and READ_MAX more at most */
    if (f->be == B_PG)
        assert_true(db_int(f, "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                              " 'kzhook' AND datname = current_database()") <= 1 + PG_READ_MAX);
    else
        assert_true(open_files(f->path) <= 1 + READ_MAX);
}

/* ==== notifications ==== */

struct notes {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int webhooks, due;
};

static void on_note(void *arg, int what)
{
    struct notes *n = arg;

    pthread_mutex_lock(&n->mu);
    if (what == KZ_NOTIFY_WEBHOOKS)
        n->webhooks++;
    else if (what == KZ_NOTIFY_DUE)
        n->due++;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

/* Waits up to `ms` for the counts to reach at least (w, d); returns whether they did. */
static bool notes_wait(struct notes *n, int w, int d, int ms)
{
    int64_t end = kz_mono_ms() + ms;
    bool ok;

    pthread_mutex_lock(&n->mu);
    while (!(n->webhooks >= w && n->due >= d) && kz_mono_ms() < end) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&n->cv, &n->mu, &ts);
    }
    ok = n->webhooks >= w && n->due >= d;
    pthread_mutex_unlock(&n->mu);
    return ok;
}

static void notes_init(struct notes *n)
{
    memset(n, 0, sizeof(*n));
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->cv, NULL);
}

static void test_pg_only_notify_other_node(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    struct kz_store *other = NULL;
    struct notes mine, theirs;
    struct kz_op op;

    notes_init(&mine);
    notes_init(&theirs);
    open_store(f, &other, 100);
    kz_store_on_notify(f->st, on_note, &mine);
    kz_store_on_notify(other, on_note, &theirs);

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    assert_true(notes_wait(&theirs, 1, 0, 5000));
    publish(f->st, "ev-1", T0, ids, 1, 0);
    assert_true(notes_wait(&theirs, 1, 1, 5000));
    publish(f->st, "ev-2", T0, ids, 1, 1); /* skipped only: nothing became due */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_META_SET;
    op.u.meta.key = "k";
    op.u.meta.value = "v";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    /* the other direction: a release on `other` that freed rows */
    claim(f->st, &op, T0, 10, NULL, 0);
    kz_claim_cleanup(&op);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_RELEASE;
    op.u.release.all = true;
    op.u.release.now = T0;
    assert_int_equal(exec(other, &op), KZ_OK);
    assert_int_equal(op.u.release.released, 1);
    assert_true(notes_wait(&mine, 0, 1, 5000));
    usleep(200 * 1000);
    pthread_mutex_lock(&theirs.mu);
    assert_int_equal(theirs.webhooks, 1);
    assert_int_equal(theirs.due, 1);
    pthread_mutex_unlock(&theirs.mu);
    pthread_mutex_lock(&mine.mu);
    assert_int_equal(mine.webhooks, 0); /* its own changes are not reported */
    assert_int_equal(mine.due, 1);
    pthread_mutex_unlock(&mine.mu);

    kz_store_on_notify(other, NULL, NULL);
    add_webhook(f->st, "wh-2", "app-1", "g1");
    usleep(200 * 1000);
    pthread_mutex_lock(&theirs.mu);
    assert_int_equal(theirs.webhooks, 1); /* removed: not called */
    pthread_mutex_unlock(&theirs.mu);
    kz_store_close(other);
    kz_store_on_notify(f->st, NULL, NULL);
}

/* ==== connection loss ==== */

/* Every server session of the store is killed (as a server restart does): the next read and the
 * next write notice, reconnect at once and succeed; the notify thread reconnects too. */
static void test_pg_only_reconnect_after_terminate(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    struct notes n;
    struct kz_app a;
    int64_t killed;

    notes_init(&n);
    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    kz_store_on_notify(f->st, on_note, &n);
    assert_int_equal(kz_store_app_get(f->st, "app-1", &a), KZ_OK); /* a pooled read conn */
    kz_app_cleanup(&a);
    killed = db_int(f, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                       " WHERE application_name = 'kzhook' AND datname = current_database()");
    assert_true(killed >= 3); /* writer, reader, listener */
    usleep(100 * 1000);
    assert_int_equal(kz_store_app_get(f->st, "app-1", &a), KZ_OK);
    kz_app_cleanup(&a);
    publish(f->st, "ev-1", T0, ids, 1, 0);
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 10).n, 1);
    /* the listener reports both kinds after it reconnects */
    assert_true(notes_wait(&n, 1, 1, 5000));
    kz_store_on_notify(f->st, NULL, NULL);
}

/* The server stops: reads and writes fail fast with KZ_ERR_DB and nothing is half-done; the
 * server comes back (same port): everything works again without reopening the store. Needs
 * KZ_TEST_PG_DIR. */
static void test_pg_only_server_down_and_back(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    struct kz_publish_item it;
    bool act[] = {true};
    struct kz_op op;
    struct notes n;
    struct kz_app a;
    int64_t t0, t1;
    int i;
    enum kz_err e = KZ_ERR_DB;

    if (!pg_dir) {
        print_message("KZ_TEST_PG_DIR unset: server stop/start not exercised\n");
        skip();
    }
    notes_init(&n);
    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    kz_store_on_notify(f->st, on_note, &n);
    server("stop");

    t0 = kz_mono_ms();
    for (i = 0; i < 5; i++) {
        assert_int_equal(kz_store_app_get(f->st, "app-1", &a), KZ_ERR_DB);
        assert_int_equal(kz_store_ping(f->st), KZ_ERR_DB);
        fill_item(&it, "ev-down", T0, ids, act, 1);
        memset(&op, 0, sizeof(op));
        op.type = KZ_OP_PUBLISH;
        op.u.publish.items = &it;
        op.u.publish.n = 1;
        assert_int_equal(exec(f->st, &op), KZ_ERR_DB);
        assert_int_equal(it.seq, 0);
    }
    t1 = kz_mono_ms();
    print_message("server down: 5 x (2 reads + 1 publish) failed in %lld ms\n",
                  (long long)(t1 - t0));
    assert_true(t1 - t0 < 2000);

    server("start");
    t0 = kz_mono_ms();
    /* within one backoff period (<= 5 s) both sides are back */
    while (kz_mono_ms() - t0 < 12000) {
        fill_item(&it, "ev-up", T0, ids, act, 1);
        memset(&op, 0, sizeof(op));
        op.type = KZ_OP_PUBLISH;
        op.u.publish.items = &it;
        op.u.publish.n = 1;
        e = exec(f->st, &op);
        if (!e)
            break;
        usleep(100 * 1000);
    }
    assert_int_equal(e, KZ_OK);
    print_message("server back: first write ok after %lld ms\n", (long long)(kz_mono_ms() - t0));
    assert_false(it.duplicate); /* the publishes made while down were not committed */
    while ((e = kz_store_app_get(f->st, "app-1", &a)) && kz_mono_ms() - t0 < 12000)
        usleep(100 * 1000);
    assert_int_equal(e, KZ_OK);
    kz_app_cleanup(&a);
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 10).n, 1);
    assert_true(notes_wait(&n, 1, 1, 12000));

    /* and a plain restart (pg_ctl restart) */
    server("restart");
    publish(f->st, "ev-after-restart", T0, ids, 1, 0);
    assert_int_equal(list_deliveries(f->st, "wh-1", -1, 0, 10).n, 2);
    kz_store_on_notify(f->st, NULL, NULL);
}

/* ==== throughput (figures printed, loose floor asserted) ==== */

#define PERF_TARGETS 3
static const char *const perf_ids[PERF_TARGETS] = {"wh-1", "wh-2", "wh-3"};
static const bool perf_active[PERF_TARGETS] = {true, true, true};

static void perf_setup(struct kz_store *st)
{
    int i;

    add_app(st, "app-1", T0);
    for (i = 0; i < PERF_TARGETS; i++)
        add_webhook(st, perf_ids[i], "app-1", "g1");
}

static void test_perf_batches_of_1000(void **state)
{
    struct fx *f = *state;
    struct kz_publish_item *items = kz_calloc(1000, sizeof(*items));
    char(*evid)[24] = kz_calloc(1000, sizeof(*evid));
    struct kz_op op;
    int64_t t0;
    double secs;
    int b;
    int i;

    perf_setup(f->st);
    t0 = kz_mono_ms();
    for (b = 0; b < 10; b++) {
        for (i = 0; i < 1000; i++) {
            snprintf(evid[i], sizeof(evid[i]), "pb-%d-%d", b, i);
            fill_item(&items[i], evid[i], T0 + i, perf_ids, perf_active, PERF_TARGETS);
        }
        memset(&op, 0, sizeof(op));
        op.type = KZ_OP_PUBLISH;
        op.u.publish.items = items;
        op.u.publish.n = 1000;
        assert_int_equal(exec(f->st, &op), KZ_OK);
    }
    secs = (double)(kz_mono_ms() - t0) / 1000.0;
    print_message(
        "perf: 10 x PUBLISH(1000 events x %d targets): %.0f events/s (%.0f deliveries/s)\n",
        PERF_TARGETS, 10000 / secs, 10000 * PERF_TARGETS / secs);
    assert_int_equal(db_int(f, "SELECT count(*) FROM deliveries"), 10000 * PERF_TARGETS);
    kz_free(items);
    kz_free(evid);
}

#define PT_THREADS 32
#define PT_PER_THREAD 300

struct pt_arg {
    struct kz_store *st;
    int node, t;
    int failures;
};

static void *pt_thread(void *p)
{
    struct pt_arg *a = p;
    struct kz_publish_item it;
    char evid[48];
    struct kz_op op;
    int i;

    for (i = 0; i < PT_PER_THREAD; i++) {
        snprintf(evid, sizeof(evid), "pt-%d-%d-%d", a->node, a->t, i);
        fill_item(&it, evid, T0 + i, perf_ids, perf_active, PERF_TARGETS);
        memset(&op, 0, sizeof(op));
        op.type = KZ_OP_PUBLISH;
        op.u.publish.items = &it;
        op.u.publish.n = 1;
        if (kz_store_exec(a->st, &op) || it.duplicate)
            a->failures++;
    }
    return NULL;
}

/* 32 threads each publishing single events (kz_store_exec) on `nodes` stores. */
static double perf_threads(struct kz_store **st, int nodes, int run)
{
    struct pt_arg a[PT_THREADS];
    pthread_t th[PT_THREADS];
    uint64_t b0[2] = {0, 0}, o0[2] = {0, 0}, b1[2] = {0, 0}, o1[2] = {0, 0};
    int64_t t0;
    double secs;
    int i;

    for (i = 0; i < nodes; i++)
        kz_store_stats(st[i], &b0[i], &o0[i]);
    t0 = kz_mono_ms();
    for (i = 0; i < PT_THREADS; i++) {
        a[i].st = st[i % nodes];
        a[i].node = run * 10 + i % nodes;
        a[i].t = i;
        a[i].failures = 0;
        assert_int_equal(pthread_create(&th[i], NULL, pt_thread, &a[i]), 0);
    }
    for (i = 0; i < PT_THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(a[i].failures, 0);
    }
    secs = (double)(kz_mono_ms() - t0) / 1000.0;
    for (i = 0; i < nodes; i++)
        kz_store_stats(st[i], &b1[i], &o1[i]);
    print_message("perf: %d threads x %d single-event PUBLISH on %d node(s): %.0f events/s, "
                  "average batch %.1f ops\n",
                  PT_THREADS, PT_PER_THREAD, nodes, PT_THREADS * PT_PER_THREAD / secs,
                  (double)(o1[0] - o0[0] + o1[1] - o0[1]) /
                      (double)(b1[0] - b0[0] + b1[1] - b0[1]));
    return PT_THREADS * PT_PER_THREAD / secs;
}

static void test_perf_threads(void **state)
{
    struct fx *f = *state;
    struct kz_store *st[1] = {f->st};
    double one;

    perf_setup(f->st);
    one = perf_threads(st, 1, 1);
    assert_int_equal(db_int(f, "SELECT count(*) FROM events"), PT_THREADS * PT_PER_THREAD);
    assert_true(one > 500); /* a floor that only catches a broken group commit */
}

/* The same load split over two nodes (two stores, 16 threads each) sharing the server. */
static void test_pg_only_perf_threads_two_nodes(void **state)
{
    struct fx *f = *state;
    struct kz_store *st[2] = {f->st, NULL};
    double two;

    perf_setup(f->st);
    open_store(f, &st[1], 10000);
    two = perf_threads(st, 2, 2);
    kz_store_close(st[1]);
    assert_int_equal(db_int(f, "SELECT count(*) FROM events"), PT_THREADS * PT_PER_THREAD);
    assert_true(two > 500);
}

/* Open loop, as the HTTP API drives the store: publishes are submitted without waiting (done()
 * answers the client), so the in-flight count is the number of concurrent clients, not threads.
 * Two nodes, each keeping OL_WINDOW single-event publishes in flight. */
#define OL_WINDOW 256
#define OL_PER_NODE 15000

struct ol_node {
    struct kz_store *st;
    int node;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight;
    int failures;
    struct kz_op *ops;
    struct kz_publish_item *items;
    char (*evid)[32];
};

static void ol_done(struct kz_op *op, void *arg)
{
    struct ol_node *n = arg;

    pthread_mutex_lock(&n->mu);
    if (op->result || op->u.publish.items[0].duplicate)
        n->failures++;
    n->inflight--;
    pthread_cond_signal(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

static void *ol_thread(void *p)
{
    struct ol_node *n = p;
    int i;

    for (i = 0; i < OL_PER_NODE; i++) {
        struct kz_op *op = &n->ops[i];

        snprintf(n->evid[i], sizeof(n->evid[i]), "ol-%d-%d", n->node, i);
        fill_item(&n->items[i], n->evid[i], T0 + i, perf_ids, perf_active, PERF_TARGETS);
        memset(op, 0, sizeof(*op));
        op->type = KZ_OP_PUBLISH;
        op->u.publish.items = &n->items[i];
        op->u.publish.n = 1;
        op->done = ol_done;
        op->arg = n;
        pthread_mutex_lock(&n->mu);
        while (n->inflight >= OL_WINDOW)
            pthread_cond_wait(&n->cv, &n->mu);
        n->inflight++;
        pthread_mutex_unlock(&n->mu);
        if (kz_store_submit(n->st, op)) {
            pthread_mutex_lock(&n->mu);
            n->inflight--;
            n->failures++;
            pthread_mutex_unlock(&n->mu);
        }
    }
    pthread_mutex_lock(&n->mu);
    while (n->inflight > 0)
        pthread_cond_wait(&n->cv, &n->mu);
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

static void test_pg_only_perf_open_loop_two_nodes(void **state)
{
    struct fx *f = *state;
    struct ol_node nodes[2];
    pthread_t th[2];
    uint64_t b0[2], o0[2], b1[2], o1[2];
    int64_t t0;
    double secs;
    int i;

    perf_setup(f->st);
    memset(nodes, 0, sizeof(nodes));
    for (i = 0; i < 2; i++) {
        if (i)
            open_store(f, &nodes[i].st, 10000);
        else
            nodes[i].st = f->st;
        nodes[i].node = i;
        pthread_mutex_init(&nodes[i].mu, NULL);
        pthread_cond_init(&nodes[i].cv, NULL);
        nodes[i].ops = kz_calloc(OL_PER_NODE, sizeof(*nodes[i].ops));
        nodes[i].items = kz_calloc(OL_PER_NODE, sizeof(*nodes[i].items));
        nodes[i].evid = kz_calloc(OL_PER_NODE, sizeof(*nodes[i].evid));
        kz_store_stats(nodes[i].st, &b0[i], &o0[i]);
    }
    t0 = kz_mono_ms();
    for (i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, ol_thread, &nodes[i]), 0);
    for (i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    secs = (double)(kz_mono_ms() - t0) / 1000.0;
    for (i = 0; i < 2; i++)
        kz_store_stats(nodes[i].st, &b1[i], &o1[i]);
    print_message("perf: 2 nodes x %d in flight, single-event PUBLISH (%d targets): %.0f durable "
                  "events/s, average batch %.1f ops\n",
                  OL_WINDOW, PERF_TARGETS, 2 * OL_PER_NODE / secs,
                  (double)(o1[0] - o0[0] + o1[1] - o0[1]) /
                      (double)(b1[0] - b0[0] + b1[1] - b0[1]));
    for (i = 0; i < 2; i++) {
        assert_int_equal(nodes[i].failures, 0);
        if (i)
            kz_store_close(nodes[i].st);
        pthread_cond_destroy(&nodes[i].cv);
        pthread_mutex_destroy(&nodes[i].mu);
        kz_free(nodes[i].ops);
        kz_free(nodes[i].items);
        kz_free(nodes[i].evid);
    }
    assert_int_equal(db_int(f, "SELECT count(*) FROM events"), 2 * OL_PER_NODE);
}

/* ==== back-pressure; SQLite's file lock and query plans ==== */

/* The queue holds queue_max ops: one more is refused with KZ_ERR_BUSY (not queued, done() not
 * called) while the writer is parked; the queued ones still commit. */
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
    open_store(f, &f->st, 2);
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

/* While another connection holds the write lock longer than busy_timeout, a whole batch fails
 * with KZ_ERR_BUSY: claimed rows are freed, publish results cleared, and the next batch works.
 * A gate holds the writer so that both ops land in the same batch. */
static void test_sqlite_only_locked_batch_busy(void **state)
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

static void test_sqlite_only_query_plans(void **state)
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

/* ==== the same answer on both backends ==== */

/* A whole delivery-log row, strings copied, for comparing one store with the other. */
struct row {
    char event_id[KZ_ID_MAX + 1];
    int state, attempts, status;
    int64_t next_at;
    char *err, *resp; /* NULL when the store said none */
};

struct rows {
    size_t n, cap;
    struct row *r;
};

static void rows_add(void *arg, const struct kz_delivery *d)
{
    struct rows *l = arg;
    struct row *w;

    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->r = kz_realloc(l->r, l->cap * sizeof(*l->r));
    }
    w = &l->r[l->n++];
    snprintf(w->event_id, sizeof(w->event_id), "%s", d->event_id);
    w->state = d->state;
    w->attempts = d->attempts;
    w->status = d->last_status;
    w->next_at = d->next_attempt_at;
    w->err = d->last_error ? kz_strdup(d->last_error) : NULL;
    w->resp = d->last_response ? kz_strdup(d->last_response) : NULL;
}

static void rows_free(struct rows *l)
{
    size_t i;

    for (i = 0; i < l->n; i++) {
        kz_free(l->r[i].err);
        kz_free(l->r[i].resp);
    }
    kz_free(l->r);
    memset(l, 0, sizeof(*l));
}

static int row_cmp(const void *a, const void *b)
{
    return strcmp(((const struct row *)a)->event_id, ((const struct row *)b)->event_id);
}

/* The delivery log of `wh`, sorted by event id (delivery ids may differ between stores). */
static void rows_of(struct kz_store *st, const char *wh, struct rows *l)
{
    memset(l, 0, sizeof(*l));
    assert_int_equal(kz_store_delivery_list(st, wh, -1, 0, 100000, rows_add, l), KZ_OK);
    if (l->n)
        qsort(l->r, l->n, sizeof(*l->r), row_cmp);
}

static const struct row *row_find(const struct rows *l, const char *event_id)
{
    size_t i;

    for (i = 0; i < l->n; i++) {
        if (!strcmp(l->r[i].event_id, event_id))
            return &l->r[i];
    }
    return NULL;
}

/* Prints `s` with every byte outside printable ASCII as \xHH (for failure messages). */
static const char *shown(const char *s, char *out, size_t n)
{
    size_t o = 0;

    if (!s)
        return "(null)";
    if (strlen(s) > 120) { /* a long answer: its end is what differs */
        o = (size_t)snprintf(out, n, "[%zu bytes...]", strlen(s) - 40);
        s += strlen(s) - 40;
    }
    for (; *s && o + 5 < n; s++) {
        unsigned char c = (unsigned char)*s;

        if (c >= 0x20 && c < 0x7f && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, n - o, "\\x%02x", c);
    }
    out[o] = '\0';
    return out;
}

/* The text the delivery log must show for `len` bytes a receiver sent: every byte that is not
 * part of valid UTF-8, and every NUL, becomes U+FFFD (kz_buf_text), and the result is cut to
 * `max` bytes at a character boundary. Caller frees. */
static char *expected_text(const char *s, size_t len, size_t max)
{
    struct kz_buf b;
    char *out;
    size_t n;

    kz_buf_init(&b, 8 * len + 16);
    assert_int_equal(kz_buf_text(&b, s, len), KZ_OK);
    n = b.len;
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)b.data[n] & 0xC0) == 0x80)
            n--;
    }
    out = kz_strndup(kz_buf_cstr(&b), n);
    kz_buf_cleanup(&b);
    return out;
}

/* Adds a line to `report` unless `got` is `want` (NULL: none). */
static void check_text(struct kz_buf *report, const char *backend, const char *what,
                       const char *got, const char *want)
{
    char g[512], w[512];

    if (got == want || (got && want && !strcmp(got, want)))
        return;
    (void)kz_buf_printf(report, "  %s: %s is \"%s\" (%zu bytes), want \"%s\" (%zu bytes)\n",
                        backend, what, shown(got, g, sizeof(g)), got ? strlen(got) : 0,
                        shown(want, w, sizeof(w)), want ? strlen(want) : 0);
}

#define RC "\xef\xbf\xbd" /* U+FFFD */

/* An odd receiver answer (invalid UTF-8 of every kind, a NUL inside the counted length) and an
 * odd error text show in the delivery log as the same clean text on SQLite and on PostgreSQL:
 * the one rule of kz_buf_text, cut to KZ_RESPONSE_KEEP at a character boundary. */
static void test_both_delivery_log_odd_text(void **state)
{
    struct fx *f = *state;
    static const char case2[] = "A\x80"
                                "B\xc0\xaf"
                                "C\xed\xa0\x80"
                                "D\xe2\x82xE\xf0\x9f\x98\x80"
                                "F\0G\xf4\x90\x80\x80"
                                "H\xf5";
    struct {
        const char *resp;
        size_t len;
        const char *err;
        const char *want_resp, *want_err; /* hand-written; NULL: computed only */
    } cases[5];
    struct kz_store *st[2] = {f->st, f->pg};
    const char *names[2] = {"sqlite", "pg"};
    const char *ids[] = {"wh-1"};
    char *near1 = kz_malloc(KZ_RESPONSE_KEEP);
    char *near2 = kz_malloc(KZ_RESPONSE_KEEP);
    struct rows got[2];
    struct kz_buf report;
    static char msg[16384];
    size_t i, s;

    /* 1: the bytes PostgreSQL text cannot hold (invalid UTF-8, NUL) beside valid ones */
    cases[0].resp = "ok\xff\xfe\0\"\\ \xc3\xa9";
    cases[0].len = 10;
    cases[0].err = "bad \x80 byte";
    cases[0].want_resp = "ok" RC RC RC "\"\\ \xc3\xa9";
    cases[0].want_err = "bad " RC " byte";
    /* 2: a lone continuation, an overlong "/", a surrogate, a cut 3-byte sequence, a valid 4-byte
     * one, a NUL, a code point above U+10FFFF, a byte that never starts a sequence */
    cases[1].resp = case2;
    cases[1].len = sizeof(case2) - 1;
    cases[1].err = "E\xc3(\xfe";
    cases[1].want_resp = "A" RC "B" RC RC "C" RC RC RC "D" RC RC "xE\xf0\x9f\x98\x80"
                         "F" RC "G" RC RC RC RC "H" RC;
    cases[1].want_err = "E" RC "(" RC;
    /* 3: fits as bytes, not once cleaned: U+FFFD does not fit, it is dropped whole */
    memset(near1, 'x', KZ_RESPONSE_KEEP);
    near1[KZ_RESPONSE_KEEP - 2] = (char)0xff;
    cases[2].resp = near1;
    cases[2].len = KZ_RESPONSE_KEEP - 1;
    cases[2].err = NULL;
    cases[2].want_resp = NULL;
    cases[2].want_err = NULL;
    /* 4: a valid "€" ending at KZ_RESPONSE_KEEP - 1, then a bad byte: the euro stays */
    memset(near2, 'y', KZ_RESPONSE_KEEP);
    memcpy(near2 + KZ_RESPONSE_KEEP - 4, "\xe2\x82\xac\xff", 4);
    cases[3].resp = near2;
    cases[3].len = KZ_RESPONSE_KEEP;
    cases[3].err = "\xff";
    cases[3].want_resp = NULL;
    cases[3].want_err = RC;
    /* 5: nothing but a NUL */
    cases[4].resp = "\0";
    cases[4].len = 1;
    cases[4].err = "";
    cases[4].want_resp = RC;
    cases[4].want_err = "";

    for (s = 0; s < 2; s++) {
        add_app(st[s], "app-1", T0);
        add_webhook(st[s], "wh-1", "app-1", "g1");
    }
    for (i = 0; i < KZ_ARRAY_LEN(cases); i++) {
        char evid[16];

        snprintf(evid, sizeof(evid), "odd-%zu", i);
        for (s = 0; s < 2; s++) {
            struct kz_attempt a;
            struct kz_op op;

            publish(st[s], evid, T0 + (int64_t)i, ids, 1, 0);
            claim(st[s], &op, T0 + 100, 1, NULL, 0);
            assert_int_equal(op.u.claim.n_out, 1);
            assert_string_equal(op.u.claim.out[0].ev.event_id, evid);
            memset(&a, 0, sizeof(a));
            a.delivery_id = op.u.claim.out[0].delivery_id;
            kz_claim_cleanup(&op);
            snprintf(a.webhook_id, sizeof(a.webhook_id), "wh-1");
            a.state = KZ_D_PENDING; /* retried much later: never claimed again here */
            a.attempts = 1;
            a.next_attempt_at = T0 + 1000000000;
            a.status = 502;
            a.error = cases[i].err;
            a.response = cases[i].resp;
            a.response_len = cases[i].len;
            memset(&op, 0, sizeof(op));
            op.type = KZ_OP_COMPLETE;
            op.u.complete.items = &a;
            op.u.complete.n = 1;
            assert_int_equal(exec(st[s], &op), KZ_OK);
        }
    }

    /* every difference is listed, on both backends, before the test fails */
    kz_buf_init(&report, 1 << 20);
    for (s = 0; s < 2; s++)
        rows_of(st[s], "wh-1", &got[s]);
    for (i = 0; i < KZ_ARRAY_LEN(cases); i++) {
        char *want_resp = expected_text(cases[i].resp, cases[i].len, KZ_RESPONSE_KEEP);
        char *want_err =
            cases[i].err ? expected_text(cases[i].err, strlen(cases[i].err), 1024) : NULL;
        char evid[16], what[64];

        snprintf(evid, sizeof(evid), "odd-%zu", i);
        /* the rule as written by hand agrees with kz_buf_text */
        snprintf(what, sizeof(what), "%s response", evid);
        if (cases[i].want_resp)
            check_text(&report, "expected_text", what, want_resp, cases[i].want_resp);
        snprintf(what, sizeof(what), "%s error", evid);
        if (cases[i].want_err)
            check_text(&report, "expected_text", what, want_err, cases[i].want_err);
        assert_true(strlen(want_resp) <= KZ_RESPONSE_KEEP);
        for (s = 0; s < 2; s++) {
            const struct row *r = row_find(&got[s], evid);

            assert_non_null(r);
            assert_int_equal(r->status, 502);
            snprintf(what, sizeof(what), "%s last_response", evid);
            check_text(&report, names[s], what, r->resp, want_resp);
            snprintf(what, sizeof(what), "%s last_error", evid);
            check_text(&report, names[s], what, r->err, want_err);
        }
        kz_free(want_resp);
        kz_free(want_err);
    }
    /* the near-limit cases, spelled out */
    for (s = 0; s < 2; s++) {
        const char *r2 = row_find(&got[s], "odd-2")->resp;
        const char *r3 = row_find(&got[s], "odd-3")->resp;

        if (!r2 || strlen(r2) != KZ_RESPONSE_KEEP - 2 || !r3 || strlen(r3) != KZ_RESPONSE_KEEP - 1)
            (void)kz_buf_printf(&report,
                                "  %s: near-limit answers are %zu and %zu bytes, want %d"
                                " and %d\n",
                                names[s], r2 ? strlen(r2) : 0, r3 ? strlen(r3) : 0,
                                KZ_RESPONSE_KEEP - 2, KZ_RESPONSE_KEEP - 1);
    }
    for (s = 0; s < 2; s++)
        rows_free(&got[s]);
    snprintf(msg, sizeof(msg), "%s", kz_buf_cstr(&report));
    kz_buf_cleanup(&report);
    kz_free(near1);
    kz_free(near2);
    if (*msg) {
        fprintf(stderr, "the delivery log does not show the clean text:\n%s", msg);
        fail_msg("the delivery log does not show the clean text (listed above)");
    }
}

/* ==== property: SQLite and PostgreSQL answer alike ==== */

#define PR_WEBHOOKS 6
#define PR_ROUNDS 60
#define PR_SEED 20240611ULL

static uint64_t pr_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static unsigned pr_rnd(uint64_t *s, unsigned n)
{
    return (unsigned)(pr_next(s) % n);
}

/* qsort of claimed-row indices by (event id, webhook id); pr_claimed is the array they index. */
static const struct kz_claimed *pr_claimed;

static int claimed_cmp(const void *x, const void *y)
{
    const struct kz_claimed *a = &pr_claimed[*(const size_t *)x];
    const struct kz_claimed *b = &pr_claimed[*(const size_t *)y];
    int c = strcmp(a->ev.event_id, b->ev.event_id);

    return c ? c : strcmp(a->wh.id, b->wh.id);
}

static const char *const pr_ids[PR_WEBHOOKS] = {"wh-0", "wh-1", "wh-2", "wh-3", "wh-4", "wh-5"};

/* Everything a client could see of one store after a round: each webhook's delivery log (by
 * event id), the webhooks' active flags, the version, the backlog and the next due time. Fails
 * naming the seed, the round and the first difference. */
static void pr_compare(struct kz_store **st, uint64_t seed, int round, int64_t now)
{
    struct whlist wl[2];
    int64_t due[2], sched[2], infl[2], at[2];
    size_t w, i, s;

    for (w = 0; w < PR_WEBHOOKS; w++) {
        struct rows l[2];

        for (s = 0; s < 2; s++)
            rows_of(st[s], pr_ids[w], &l[s]);
        if (l[0].n != l[1].n)
            fail_msg("seed %llu round %d %s: %zu deliveries on sqlite, %zu on pg",
                     (unsigned long long)seed, round, pr_ids[w], l[0].n, l[1].n);
        for (i = 0; i < l[0].n; i++) {
            const struct row *a = &l[0].r[i], *b = &l[1].r[i];
            const char *ae = a->err ? a->err : "(none)", *be = b->err ? b->err : "(none)";
            const char *ar = a->resp ? a->resp : "(none)", *br = b->resp ? b->resp : "(none)";

            if (strcmp(a->event_id, b->event_id) || a->state != b->state ||
                a->attempts != b->attempts || a->status != b->status || a->next_at != b->next_at ||
                !a->err != !b->err || strcmp(ae, be) || !a->resp != !b->resp || strcmp(ar, br))
                fail_msg("seed %llu round %d %s: sqlite %s state %d attempts %d status %d next %lld"
                         " error \"%s\" response \"%s\"; pg %s state %d attempts %d status %d"
                         " next %lld error \"%s\" response \"%s\"",
                         (unsigned long long)seed, round, pr_ids[w], a->event_id, a->state,
                         a->attempts, a->status, (long long)a->next_at, ae, ar, b->event_id,
                         b->state, b->attempts, b->status, (long long)b->next_at, be, br);
        }
        for (s = 0; s < 2; s++)
            rows_free(&l[s]);
    }
    for (s = 0; s < 2; s++) {
        wl[s] = list_webhooks(st[s], "app-1", -1, NULL);
        assert_int_equal(kz_store_backlog(st[s], now, &due[s], &sched[s], &infl[s]), KZ_OK);
        assert_int_equal(kz_store_next_due(st[s], &at[s]), KZ_OK);
    }
    assert_int_equal(wl[0].n, PR_WEBHOOKS);
    assert_int_equal(wl[1].n, PR_WEBHOOKS);
    for (w = 0; w < PR_WEBHOOKS; w++) {
        if (strcmp(wl[0].ids[w], wl[1].ids[w]) || wl[0].active[w] != wl[1].active[w])
            fail_msg("seed %llu round %d: webhook %s active %d on sqlite, %s active %d on pg",
                     (unsigned long long)seed, round, wl[0].ids[w], wl[0].active[w], wl[1].ids[w],
                     wl[1].active[w]);
    }
    if (due[0] != due[1] || sched[0] != sched[1] || infl[0] != infl[1] || at[0] != at[1])
        fail_msg("seed %llu round %d: backlog due/scheduled/inflight/next %lld/%lld/%lld/%lld on"
                 " sqlite, %lld/%lld/%lld/%lld on pg",
                 (unsigned long long)seed, round, (long long)due[0], (long long)sched[0],
                 (long long)infl[0], (long long)at[0], (long long)due[1], (long long)sched[1],
                 (long long)infl[1], (long long)at[1]);
    if (meta_version(st[0]) != meta_version(st[1]))
        fail_msg("seed %llu round %d: webhooks_version %lld on sqlite, %lld on pg",
                 (unsigned long long)seed, round, (long long)meta_version(st[0]),
                 (long long)meta_version(st[1]));
}

/* Random rounds, the same on both stores: re-enable a webhook now and then; publish a batch of
 * events (some ids repeated, inside the batch or from earlier rounds) to random sets of webhooks,
 * some targets inactive (skipped); claim a random number, sometimes excluding a webhook; complete
 * each claimed row as succeeded, retry later, dead, or not at all (the lease runs out); now and
 * then release ended leases (or all, as after a crash) and replay a webhook. Every op's answer
 * must agree, and after every round so must everything pr_compare looks at. */
static void test_both_property_same_answers(void **state)
{
    struct fx *f = *state;
    struct kz_store *st[2] = {f->st, f->pg};
    const char *env = getenv("KZ_TEST_SEED");
    uint64_t seed = env && *env ? strtoull(env, NULL, 10) : PR_SEED;
    uint64_t rs = seed;
    int64_t t_start = kz_mono_ms();
    size_t n_pub = 0, n_claimed = 0, n_dead = 0;
    int round;
    size_t s, w;

    print_message("property: seed %llu (KZ_TEST_SEED=%llu repeats this run)\n",
                  (unsigned long long)seed, (unsigned long long)seed);
    for (s = 0; s < 2; s++) {
        add_app(st[s], "app-1", T0);
        for (w = 0; w < PR_WEBHOOKS; w++)
            add_webhook(st[s], pr_ids[w], "app-1", "g1");
    }
    for (round = 0; round < PR_ROUNDS; round++) {
        int64_t now = T0 + (int64_t)round * 1000;
        struct whlist wl = list_webhooks(st[0], "app-1", -1, NULL);
        char evid[8][24];
        const char *tg[8][PR_WEBHOOKS];
        bool act[8][PR_WEBHOOKS];
        struct kz_publish_item items[2][8];
        struct kz_op op[2];
        struct kz_attempt at[2][64];
        size_t idx[2][64];
        size_t n_ev = 1 + pr_rnd(&rs, 6), n_at = 0, i, j;
        size_t limit = pr_rnd(&rs, 9);
        const char *excl[1];
        size_t n_excl = 0;

        /* an operator turns a webhook back on */
        if (pr_rnd(&rs, 4) == 0) {
            const char *id = pr_ids[pr_rnd(&rs, PR_WEBHOOKS)];

            for (s = 0; s < 2; s++) {
                memset(&op[s], 0, sizeof(op[s]));
                op[s].type = KZ_OP_WEBHOOK_ACTIVE;
                op[s].u.active.id = id;
                op[s].u.active.flag = true;
                assert_int_equal(exec(st[s], &op[s]), KZ_OK);
            }
            wl = list_webhooks(st[0], "app-1", -1, NULL);
        }

        /* publish: targets follow the active flags, like the subscription index */
        for (i = 0; i < n_ev; i++) {
            size_t nt = 0;

            if (pr_rnd(&rs, 8) == 0)
                snprintf(evid[i], sizeof(evid[i]), "e%u-0", pr_rnd(&rs, (unsigned)round + 1));
            else
                snprintf(evid[i], sizeof(evid[i]), "e%d-%zu", round, i);
            for (w = 0; w < PR_WEBHOOKS; w++) {
                if (pr_rnd(&rs, 2))
                    continue;
                tg[i][nt] = pr_ids[w];
                act[i][nt] = wl.active[w] && pr_rnd(&rs, 6) != 0;
                nt++;
            }
            for (s = 0; s < 2; s++)
                fill_item(&items[s][i], evid[i], now + (int64_t)pr_rnd(&rs, 500), tg[i], act[i],
                          nt);
            /* the same event time on both stores */
            items[1][i].ev.created_at = items[0][i].ev.created_at;
        }
        for (s = 0; s < 2; s++) {
            memset(&op[s], 0, sizeof(op[s]));
            op[s].type = KZ_OP_PUBLISH;
            op[s].u.publish.items = items[s];
            op[s].u.publish.n = n_ev;
            assert_int_equal(exec(st[s], &op[s]), KZ_OK);
        }
        for (i = 0; i < n_ev; i++) {
            if (items[0][i].duplicate != items[1][i].duplicate ||
                items[0][i].deliveries != items[1][i].deliveries)
                fail_msg("seed %llu round %d publish %s: duplicate %d deliveries %d on sqlite,"
                         " duplicate %d deliveries %d on pg",
                         (unsigned long long)seed, round, evid[i], items[0][i].duplicate,
                         items[0][i].deliveries, items[1][i].duplicate, items[1][i].deliveries);
            n_pub += !items[0][i].duplicate;
        }

        /* claim. With exclusions SQLite gives each other webhook a share of the limit while
         * PostgreSQL takes the oldest rows of any (docs/internals/STORE.md, CLAIM), so the
         * limit then covers every due row and only the set claimed must agree. */
        if (pr_rnd(&rs, 4) == 0) {
            excl[0] = pr_ids[pr_rnd(&rs, PR_WEBHOOKS)];
            n_excl = 1;
            limit = 1000;
        }
        for (s = 0; s < 2; s++) {
            claim(st[s], &op[s], now + 600, limit, n_excl ? excl : NULL, n_excl);
            assert_true(op[s].u.claim.n_out <= KZ_ARRAY_LEN(idx[s]));
            for (i = 0; i < op[s].u.claim.n_out; i++)
                idx[s][i] = i;
            if (n_excl) {
                pr_claimed = op[s].u.claim.out;
                qsort(idx[s], op[s].u.claim.n_out, sizeof(idx[s][0]), claimed_cmp);
            }
        }
        if (op[0].u.claim.n_out != op[1].u.claim.n_out)
            fail_msg("seed %llu round %d: claim of %zu (excluding %s) returned %zu on sqlite, %zu"
                     " on pg",
                     (unsigned long long)seed, round, limit, n_excl ? excl[0] : "none",
                     op[0].u.claim.n_out, op[1].u.claim.n_out);
        for (i = 0; i < op[0].u.claim.n_out; i++) {
            const struct kz_claimed *a = &op[0].u.claim.out[idx[0][i]];
            const struct kz_claimed *b = &op[1].u.claim.out[idx[1][i]];
            unsigned o = pr_rnd(&rs, 10);

            if (strcmp(a->ev.event_id, b->ev.event_id) || strcmp(a->wh.id, b->wh.id) ||
                a->attempts != b->attempts || a->created_at != b->created_at)
                fail_msg("seed %llu round %d claim (limit %zu, excluding %s) row %zu: %s/%s"
                         " attempts %d on sqlite, %s/%s attempts %d on pg",
                         (unsigned long long)seed, round, limit, n_excl ? excl[0] : "none", i,
                         a->ev.event_id, a->wh.id, a->attempts, b->ev.event_id, b->wh.id,
                         b->attempts);
            n_claimed++;
            if (o == 9)
                continue; /* no answer: the lease runs out */
            for (s = 0; s < 2; s++) {
                struct kz_attempt *x = &at[s][n_at];

                memset(x, 0, sizeof(*x));
                x->delivery_id = op[s].u.claim.out[idx[s][i]].delivery_id;
                snprintf(x->webhook_id, sizeof(x->webhook_id), "%s", a->wh.id);
                x->attempts = a->attempts + 1;
                if (o < 5) {
                    x->state = KZ_D_SUCCEEDED;
                    x->status = 200;
                    x->response =
                        o & 1 ? "{\"ok\":true,\"note\":\"d\xc3\xa9j\xc3\xa0 vu \xe2\x9c\x93\"}"
                              : "";
                    x->response_len = strlen(x->response);
                } else if (o < 8) {
                    x->state = KZ_D_PENDING;
                    x->next_attempt_at = now + 600 + (int64_t)(o * 700);
                    x->status = o == 5 ? 0 : 503;
                    x->error = o == 5 ? "timeout after 10000 ms" : NULL;
                    x->response = o == 5 ? NULL : "busy";
                    x->response_len = o == 5 ? 0 : 4;
                } else {
                    x->state = KZ_D_DEAD;
                    x->status = 410;
                    x->error = "gone: \xe2\x80\x9cno such hook\xe2\x80\x9d";
                }
            }
            n_dead += at[0][n_at].state == KZ_D_DEAD;
            n_at++;
        }
        for (s = 0; s < 2; s++) {
            int64_t v;

            kz_claim_cleanup(&op[s]);
            memset(&op[s], 0, sizeof(op[s]));
            op[s].type = KZ_OP_COMPLETE;
            op[s].u.complete.items = at[s];
            op[s].u.complete.n = n_at;
            assert_int_equal(exec(st[s], &op[s]), KZ_OK);
            v = op[s].webhooks_version;
            if (s && v != op[0].webhooks_version)
                fail_msg("seed %llu round %d complete: version %lld on sqlite, %lld on pg",
                         (unsigned long long)seed, round, (long long)op[0].webhooks_version,
                         (long long)v);
        }

        /* housekeeping */
        j = pr_rnd(&rs, 10);
        if (j < 4) {
            for (s = 0; s < 2; s++) {
                memset(&op[s], 0, sizeof(op[s]));
                op[s].type = KZ_OP_RELEASE;
                op[s].u.release.now = now + 600;
                op[s].u.release.all = j == 0;
                assert_int_equal(exec(st[s], &op[s]), KZ_OK);
            }
            if (op[0].u.release.released != op[1].u.release.released)
                fail_msg("seed %llu round %d release: %lld on sqlite, %lld on pg",
                         (unsigned long long)seed, round, (long long)op[0].u.release.released,
                         (long long)op[1].u.release.released);
        }
        if (pr_rnd(&rs, 12) == 0) {
            const char *id = pr_ids[pr_rnd(&rs, PR_WEBHOOKS)];
            int64_t since = now - (int64_t)pr_rnd(&rs, 8000);

            for (s = 0; s < 2; s++) {
                memset(&op[s], 0, sizeof(op[s]));
                op[s].type = KZ_OP_REPLAY;
                op[s].u.replay.webhook_id = id;
                op[s].u.replay.since = since;
                op[s].u.replay.now = now + 600;
                assert_int_equal(exec(st[s], &op[s]), KZ_OK);
            }
            if (op[0].u.replay.requeued != op[1].u.replay.requeued)
                fail_msg("seed %llu round %d replay %s: %lld on sqlite, %lld on pg",
                         (unsigned long long)seed, round, id, (long long)op[0].u.replay.requeued,
                         (long long)op[1].u.replay.requeued);
        }
        pr_compare(st, seed, round, now + 600);
    }
    print_message("property: %d rounds, %zu events, %zu claims, %zu dead, %lld ms\n", PR_ROUNDS,
                  n_pub, n_claimed, n_dead, (long long)(kz_mono_ms() - t_start));
    assert_true(n_claimed > 50 && n_dead > 0);
}

/* ==== main ==== */

/* ==== attempt history, the disable rule, retry ==== */

/* One attempt started at `at` (0: no request made) lasting `dur`; returns whether it disabled. */
static bool attempt_at(struct kz_store *st, int64_t delivery_id, const char *wh,
                       enum kz_dstate state, int attempts, int64_t at, int64_t dur, int status)
{
    struct kz_attempt a;
    struct kz_op op = {.type = KZ_OP_COMPLETE};
    bool disabled = true;

    memset(&a, 0, sizeof(a));
    a.delivery_id = delivery_id;
    snprintf(a.webhook_id, sizeof(a.webhook_id), "%s", wh);
    a.state = state;
    a.attempts = attempts;
    a.next_attempt_at = at + 100;
    a.status = status;
    a.error = status == 200 ? NULL : "HTTP 500";
    a.response = status ? "r\xff" : NULL; /* cleaned as stored: U+FFFD */
    a.response_len = status ? 2 : 0;
    a.at = at;
    a.duration_ms = dur;
    op.u.complete.items = &a;
    op.u.complete.n = 1;
    op.u.complete.disabled = &disabled;
    assert_int_equal(exec(st, &op), KZ_OK);
    return disabled;
}

/* Claims every due row; returns the delivery id of (event_id, webhook) among them, 0 if none. */
static int64_t claim_find(struct kz_store *st, int64_t now, const char *event_id, const char *wh)
{
    struct kz_op op;
    int64_t id = 0;
    size_t i;

    claim(st, &op, now, 100, NULL, 0);
    for (i = 0; i < op.u.claim.n_out; i++) {
        if (!strcmp(op.u.claim.out[i].ev.event_id, event_id) &&
            !strcmp(op.u.claim.out[i].wh.id, wh))
            id = op.u.claim.out[i].delivery_id;
    }
    kz_claim_cleanup(&op);
    return id;
}

static bool webhook_is_active(struct kz_store *st, const char *id)
{
    struct kz_webhook w;
    bool on;

    assert_int_equal(kz_store_webhook_get(st, id, &w), KZ_OK);
    on = w.active;
    kz_webhook_cleanup(&w);
    return on;
}

static void test_attempt_history(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1", "wh-2"};
    struct kz_delivery_detail dd;
    struct kz_op op;
    int64_t d1, d2, found = 0;
    char sql[160];

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    add_webhook(f->st, "wh-2", "app-1", "g1");
    publish(f->st, "ev-1", T0, ids, 2, 0);
    d1 = claim_find(f->st, T0 + 10, "ev-1", "wh-1");
    assert_true(d1 > 0);
    /* every row was claimed: find d2 by the event */
    assert_int_equal(kz_store_delivery_of_event(f->st, "wh-2", "ev-1", &d2), KZ_OK);
    assert_int_equal(kz_store_delivery_of_event(f->st, "wh-2", "ev-x", &found), KZ_ERR_NOTFOUND);
    attempt_at(f->st, d1, "wh-1", KZ_D_PENDING, 1, T0 + 20, 15, 500);
    attempt_at(f->st, d2, "wh-2", KZ_D_PENDING, 0, 0, 0, 0); /* handed back: no attempt */
    assert_int_equal(claim_find(f->st, T0 + 200, "ev-1", "wh-1"), d1);
    attempt_at(f->st, d1, "wh-1", KZ_D_SUCCEEDED, 2, T0 + 300, 7, 200);
    /* an outcome for a row no longer inflight is dropped, history included */
    attempt_at(f->st, d1, "wh-1", KZ_D_DEAD, 3, T0 + 400, 1, 0);

    assert_int_equal(kz_store_delivery_get(f->st, "wh-1", d1, &dd), KZ_OK);
    assert_int_equal(dd.d.id, d1);
    assert_int_equal(dd.d.state, KZ_D_SUCCEEDED);
    assert_string_equal(dd.ev.event_id, "ev-1");
    assert_string_equal(dd.ev.data_json, "{\"k\":1,\"s\":\"q\\\"uo{te},\\\\\"}");
    assert_string_equal(dd.wh.id, "wh-1");
    assert_string_equal(dd.wh.callback_context, "ctx");
    assert_int_equal(dd.n_attempts, 2);
    assert_int_equal(dd.attempts[0].at, T0 + 20);
    assert_int_equal(dd.attempts[0].duration_ms, 15);
    assert_int_equal(dd.attempts[0].status, 500);
    assert_string_equal(dd.attempts[0].error, "HTTP 500");
    assert_string_equal(dd.attempts[0].response, "r\xef\xbf\xbd");
    assert_int_equal(dd.attempts[1].at, T0 + 300);
    assert_int_equal(dd.attempts[1].status, 200);
    assert_null(dd.attempts[1].error);
    kz_delivery_detail_cleanup(&dd);
    assert_int_equal(kz_store_delivery_get(f->st, "wh-2", d2, &dd), KZ_OK);
    assert_int_equal(dd.n_attempts, 0);
    kz_delivery_detail_cleanup(&dd);
    assert_int_equal(kz_store_delivery_get(f->st, "wh-2", d1, &dd), KZ_ERR_NOTFOUND);
    assert_int_equal(kz_store_delivery_get(f->st, "wh-1", 999999, &dd), KZ_ERR_NOTFOUND);

    /* the history goes with its delivery: retention, webhook delete, app delete */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_PRUNE;
    op.u.prune.before = kz_now_ms() + 50000;
    op.u.prune.limit = 10;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(op.u.prune.pruned, 1);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM delivery_attempts WHERE delivery_id = %lld",
             (long long)d1);
    assert_int_equal(db_int(f, sql), 0);
    publish(f->st, "ev-2", T0, ids, 2, 0);
    d1 = claim_find(f->st, T0 + 10, "ev-2", "wh-1");
    assert_int_equal(kz_store_delivery_of_event(f->st, "wh-2", "ev-2", &d2), KZ_OK);
    attempt_at(f->st, d1, "wh-1", KZ_D_PENDING, 1, T0 + 20, 1, 500);
    attempt_at(f->st, d2, "wh-2", KZ_D_PENDING, 1, T0 + 20, 1, 500);
    assert_int_equal(db_int(f, "SELECT count(*) FROM delivery_attempts"), 2);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_DELETE;
    op.u.del.id = "wh-1";
    op.u.del.app_id = "app-1";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(db_int(f, "SELECT count(*) FROM delivery_attempts"), 1);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_APP_DELETE;
    op.u.id = "app-1";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(db_int(f, "SELECT count(*) FROM delivery_attempts"), 0);
}

/* A dead delivery disables its webhook only when nothing to that webhook succeeded since the
 * delivery's first attempt. */
static void test_disable_rule(void **state)
{
    struct fx *f = *state;
    const char *w1[] = {"wh-1"}, *w2[] = {"wh-2"}, *w3[] = {"wh-3"};
    struct kz_attempt a[2];
    struct kz_op op = {.type = KZ_OP_COMPLETE};
    bool dis[2] = {true, true};
    int64_t pa, pb, da, db, v;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    add_webhook(f->st, "wh-2", "app-1", "g1");
    add_webhook(f->st, "wh-3", "app-1", "g1");

    /* wh-1, a poison event: first attempt at T0+10; another event succeeds at T0+50; then the
     * poison one dies: the webhook stays active */
    publish(f->st, "poison", T0, w1, 1, 0);
    publish(f->st, "fine", T0, w1, 1, 0);
    pa = claim_find(f->st, T0 + 5, "poison", "wh-1");
    assert_int_equal(kz_store_delivery_of_event(f->st, "wh-1", "fine", &pb), KZ_OK);
    attempt_at(f->st, pa, "wh-1", KZ_D_PENDING, 1, T0 + 10, 3, 400);
    attempt_at(f->st, pb, "wh-1", KZ_D_SUCCEEDED, 1, T0 + 50, 3, 200);
    assert_int_equal(claim_find(f->st, T0 + 200, "poison", "wh-1"), pa);
    v = meta_version(f->st);
    assert_false(attempt_at(f->st, pa, "wh-1", KZ_D_DEAD, 2, T0 + 300, 3, 400));
    assert_true(webhook_is_active(f->st, "wh-1"));
    assert_int_equal(meta_version(f->st), v);

    /* wh-2, down: its last success ended before the dead delivery's first attempt */
    publish(f->st, "ok-early", T0, w2, 1, 0);
    publish(f->st, "down", T0 + 1, w2, 1, 0);
    da = claim_find(f->st, T0 + 5, "ok-early", "wh-2");
    assert_int_equal(kz_store_delivery_of_event(f->st, "wh-2", "down", &db), KZ_OK);
    attempt_at(f->st, da, "wh-2", KZ_D_SUCCEEDED, 1, T0 + 10, 5, 200); /* ended T0+15 */
    attempt_at(f->st, db, "wh-2", KZ_D_PENDING, 1, T0 + 16, 5, 500);
    assert_int_equal(claim_find(f->st, T0 + 500, "down", "wh-2"), db);
    assert_true(attempt_at(f->st, db, "wh-2", KZ_D_DEAD, 2, T0 + 600, 5, 500));
    assert_false(webhook_is_active(f->st, "wh-2"));
    assert_int_equal(meta_version(f->st), v + 1);

    /* wh-3: the dead attempt and a later success in the same op (dead first): the success
     * counts, so the webhook stays active; a replayed delivery starts a new series */
    publish(f->st, "p3", T0, w3, 1, 0);
    publish(f->st, "f3", T0, w3, 1, 0);
    da = claim_find(f->st, T0 + 5, "p3", "wh-3");
    assert_int_equal(kz_store_delivery_of_event(f->st, "wh-3", "f3", &db), KZ_OK);
    memset(a, 0, sizeof(a));
    a[0].delivery_id = da;
    snprintf(a[0].webhook_id, sizeof(a[0].webhook_id), "wh-3");
    a[0].state = KZ_D_DEAD;
    a[0].attempts = 1;
    a[0].at = T0 + 10;
    a[0].status = 400;
    a[1] = a[0];
    a[1].delivery_id = db;
    a[1].state = KZ_D_SUCCEEDED;
    a[1].at = T0 + 11;
    a[1].status = 200;
    op.u.complete.items = a;
    op.u.complete.n = 2;
    op.u.complete.disabled = dis;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_false(dis[0]);
    assert_false(dis[1]);
    assert_true(webhook_is_active(f->st, "wh-3"));
    assert_int_equal(db_int(f, "SELECT count(*) FROM delivery_attempts"), 8);
}

static void test_retry_one_delivery(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wh-1"};
    struct kz_op op;
    struct kz_delivery_detail dd;
    int64_t d1;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    add_webhook(f->st, "wh-2", "app-1", "g1");
    publish(f->st, "ev-1", T0, ids, 1, 0);
    d1 = claim_find(f->st, T0 + 5, "ev-1", "wh-1");
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_RETRY;
    op.u.retry.webhook_id = "wh-2";
    op.u.retry.delivery_id = d1;
    op.u.retry.now = T0 + 100;
    assert_int_equal(exec(f->st, &op), KZ_ERR_NOTFOUND);
    op.u.retry.webhook_id = "wh-1";
    op.u.retry.now = T0 + 2000000;
    assert_int_equal(exec(f->st, &op), KZ_ERR_CONFLICT); /* validity ended at T0 + 1000000 */
    op.u.retry.now = T0 + 1000;
    assert_int_equal(exec(f->st, &op), KZ_OK); /* inflight: left to its attempt */
    assert_false(op.u.retry.requeued);
    attempt_at(f->st, d1, "wh-1", KZ_D_DEAD, 3, T0 + 10, 1, 500);
    assert_false(webhook_is_active(f->st, "wh-1"));
    assert_int_equal(exec(f->st, &op), KZ_ERR_CONFLICT);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_ACTIVE;
    op.u.active.id = "wh-1";
    op.u.active.flag = true;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_RETRY;
    op.u.retry.webhook_id = "wh-1";
    op.u.retry.delivery_id = d1;
    op.u.retry.now = T0 + 2000;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_true(op.u.retry.requeued);
    assert_int_equal(kz_store_delivery_get(f->st, "wh-1", d1, &dd), KZ_OK);
    assert_int_equal(dd.d.state, KZ_D_PENDING);
    assert_int_equal(dd.d.attempts, 0);
    assert_int_equal(dd.d.next_attempt_at, T0 + 2000);
    assert_int_equal(dd.n_attempts, 1); /* the history stays */
    kz_delivery_detail_cleanup(&dd);
    /* a pending one is due now, its series kept */
    assert_int_equal(claim_find(f->st, T0 + 2000, "ev-1", "wh-1"), d1);
    attempt_at(f->st, d1, "wh-1", KZ_D_PENDING, 1, T0 + 2001, 1, 500); /* next at T0 + 2101 */
    op.u.retry.now = T0 + 2050;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(kz_store_delivery_get(f->st, "wh-1", d1, &dd), KZ_OK);
    assert_int_equal(dd.d.attempts, 1);
    assert_int_equal(dd.d.next_attempt_at, T0 + 2050);
    kz_delivery_detail_cleanup(&dd);
}

/* ==== nodes: identity, resume at start, heartbeat, takeover ==== */

static void release_op(struct kz_store *st, struct kz_op *op, int64_t now)
{
    memset(op, 0, sizeof(*op));
    op->type = KZ_OP_RELEASE;
    op->u.release.now = now;
    assert_int_equal(exec(st, op), KZ_OK);
}

static struct kz_takeover tk_nodes[KZ_TAKEOVER_NODES_MAX];

static void takeover_op(struct kz_store *st, struct kz_op *op)
{
    memset(op, 0, sizeof(*op));
    op->type = KZ_OP_TAKEOVER;
    op->u.takeover.nodes = tk_nodes;
    op->u.takeover.now = kz_now_ms();
    assert_int_equal(exec(st, op), KZ_OK);
}

/* A node's claims carry its id; the node starting again (a new store on the same database, as
 * after a kill -9) takes every one of them back at once; a live node's claims are not released
 * by their lease on PostgreSQL (its heartbeat is fresh), and on SQLite, which has no heartbeats,
 * they are, as before node ids; TAKEOVER has nothing to do on SQLite (one node). */
static void test_node_start_resumes_own_claims(void **state)
{
    struct fx *f = *state;
    struct kz_op op;
    int64_t resumed = -1;

    assert_int_equal(kz_store_node_start(f->st, "bad id", &resumed), KZ_ERR_INVALID);
    assert_int_equal(kz_store_node_start(f->st, "", &resumed), KZ_ERR_INVALID);
    assert_int_equal(kz_store_node_start(f->st, "node-1", &resumed), KZ_OK);
    assert_int_equal(resumed, 0);
    assert_int_equal(kz_store_node_start(f->st, "node-1", &resumed), KZ_ERR_INVALID); /* once */
    assert_true(kz_store_node_live(f->st));
    setup_backlog(f->st);
    claim(f->st, &op, T0 + 1000, 3, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 3);
    kz_claim_cleanup(&op);
    assert_int_equal(
        db_int(f, "SELECT count(*) FROM deliveries WHERE state = 1 AND claimed_by = 'node-1'"), 3);
    assert_int_equal(db_int(f, "SELECT count(*) FROM nodes WHERE id = 'node-1'"), 1);

    /* the lease (T0 + 31000) is long over by the wall clock */
    release_op(f->st, &op, kz_now_ms());
    assert_int_equal(op.u.release.released, f->be == B_PG ? 0 : 3);
    if (f->be == B_SQLITE) {
        claim(f->st, &op, kz_now_ms(), 3, NULL, 0); /* due again, now */
        assert_int_equal(op.u.claim.n_out, 3);
        kz_claim_cleanup(&op);
    }
    takeover_op(f->st, &op);
    assert_int_equal(op.u.takeover.released, 0);
    assert_int_equal(op.u.takeover.n_nodes, 0);

    /* kill -9 and start again: a second store, the first one's rows still claimed */
    {
        struct kz_store *again = NULL;

        open_store(f, &again, 100);
        assert_int_equal(kz_store_node_start(again, "node-1", &resumed), KZ_OK);
        assert_int_equal(resumed, 3);
        assert_int_equal(db_int(f, "SELECT count(*) FROM deliveries WHERE state = 1"), 0);
        /* own claims keep their place in the due order (PostgreSQL; SQLite releases all) */
        if (f->be == B_PG)
            assert_int_equal(db_int(f, "SELECT min(next_attempt_at) FROM deliveries"), T0 + 10);
        claim(again, &op, kz_now_ms(), 10, NULL, 0);
        assert_int_equal(op.u.claim.n_out, 7); /* ev-late is due by now too */
        if (f->be == B_PG)
            assert_string_equal(op.u.claim.out[0].ev.event_id, "ev-1");
        kz_claim_cleanup(&op);
        kz_store_close(again);
    }
    /* PostgreSQL: a node that stopped is marked so, and its leftovers are free at once */
    if (f->be == B_PG)
        assert_int_equal(db_int(f, "SELECT heartbeat_at FROM nodes WHERE id = 'node-1'"), 0);
}

/* Hand-off: a publish may insert deliveries already leased to this node (inflight, claimed by it,
 * until the op's lease_until) and gets their ids back, target by target, also when several
 * publishes run as one set in one batch; refused without a started node, for an inactive target
 * or without a lease time; no CLAIM hands them out; a duplicate event and a webhook that no
 * longer exists get id 0; COMPLETE records them like claimed rows; the node starting again
 * takes them back. */
static void test_publish_leased(void **state)
{
    struct fx *f = *state;
    static const char *const ids[] = {"wh-1", "wh-2", "wh-gone", "wh-1"};
    bool active[] = {true, true, true, true};
    bool leased[] = {true, false, true, true};
    int64_t dids[2][4];
    struct kz_publish_item items[2];
    struct kz_op ops[2], op;
    struct gate g;
    struct kz_op first;
    struct counter cnt;
    int64_t resumed = 0, until = kz_now_ms() + 60000;
    char sql[400];
    int i;

    add_app(f->st, "app-1", T0);
    add_webhook(f->st, "wh-1", "app-1", "g1");
    add_webhook(f->st, "wh-2", "app-1", "g1");
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_PUBLISH;
    fill_item(&items[0], "ev-l0", T0, ids, active, 2);
    items[0].target_leased = leased;
    items[0].delivery_ids = dids[0];
    op.u.publish.items = items;
    op.u.publish.n = 1;
    op.u.publish.lease_until = until;
    /* no node yet: refused, nothing stored */
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
    assert_int_equal(kz_store_node_start(f->st, "node-1", &resumed), KZ_OK);
    /* a lease of an inactive target, or without a lease time: refused */
    active[0] = false;
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
    active[0] = true;
    op.u.publish.lease_until = 0;
    assert_int_equal(exec(f->st, &op), KZ_ERR_INVALID);
    assert_int_equal(db_int(f, "SELECT count(*) FROM events"), 0);

    /* two publishes in one batch (one set on PostgreSQL), ids target by target; the second
     * event lists wh-1 twice and a webhook that does not exist */
    counter_init(&cnt);
    gate_close(f->st, &g, &first);
    memset(ops, 0, sizeof(ops));
    memset(dids, 0xff, sizeof(dids));
    fill_item(&items[0], "ev-l1", T0 + 1, ids, active, 2);
    fill_item(&items[1], "ev-l2", T0 + 2, ids, active, 4);
    for (i = 0; i < 2; i++) {
        items[i].target_leased = leased;
        items[i].delivery_ids = dids[i];
        ops[i].type = KZ_OP_PUBLISH;
        ops[i].u.publish.items = &items[i];
        ops[i].u.publish.n = 1;
        ops[i].u.publish.lease_until = until - i;
        ops[i].done = count_done;
        ops[i].arg = &cnt;
        assert_int_equal(kz_store_submit(f->st, &ops[i]), KZ_OK);
    }
    gate_open(&g);
    counter_wait(&cnt, 2);
    assert_int_equal(ops[0].result, KZ_OK);
    assert_int_equal(ops[1].result, KZ_OK);
    assert_true(dids[0][0] > 0);
    assert_int_equal(dids[0][1], 0); /* not leased */
    assert_true(dids[1][0] > dids[0][0]);
    assert_int_equal(dids[1][1], 0);
    assert_int_equal(dids[1][2], 0); /* no such webhook: no row */
    assert_true(dids[1][3] > dids[1][0]);
    for (i = 0; i < 3; i++) {
        int64_t id = i == 0 ? dids[0][0] : dids[1][i == 1 ? 0 : 3];

        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM deliveries AS d JOIN events AS e ON e.seq = d.event_seq"
                 " WHERE d.id = %lld AND d.state = 1 AND d.claimed_by = 'node-1'"
                 " AND d.webhook_id = 'wh-1' AND e.event_id = '%s' AND d.lease_until >= %lld",
                 (long long)id, i ? "ev-l2" : "ev-l1", (long long)(until - 1));
        assert_int_equal(db_int(f, sql), 1);
    }
    assert_int_equal(db_int(f, "SELECT count(*) FROM deliveries WHERE state = 0"), 2); /* wh-2 */
    gate_destroy(&g);
    counter_destroy(&cnt);

    /* claims hand out the pending rows only */
    claim(f->st, &op, kz_now_ms(), 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 2);
    assert_string_equal(op.u.claim.out[0].wh.id, "wh-2");
    assert_string_equal(op.u.claim.out[1].wh.id, "wh-2");
    kz_claim_cleanup(&op);

    /* a duplicate event: no rows, ids 0 */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_PUBLISH;
    memset(dids, 0xff, sizeof(dids));
    fill_item(&items[0], "ev-l1", T0 + 3, ids, active, 2);
    items[0].target_leased = leased;
    items[0].delivery_ids = dids[0];
    op.u.publish.items = items;
    op.u.publish.n = 1;
    op.u.publish.lease_until = until;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_true(items[0].duplicate);
    assert_int_equal(dids[0][0], 0);
    assert_int_equal(dids[0][1], 0);

    /* a leased row completes like a claimed one, with its attempt */
    {
        int64_t id = 0;

        snprintf(sql, sizeof(sql),
                 "SELECT min(d.id) FROM deliveries AS d JOIN events AS e ON e.seq = d.event_seq"
                 " WHERE e.event_id = 'ev-l1' AND d.webhook_id = 'wh-1'");
        struct kz_attempt a;

        id = db_int(f, sql);
        memset(&a, 0, sizeof(a));
        a.delivery_id = id;
        snprintf(a.webhook_id, sizeof(a.webhook_id), "wh-1");
        a.state = KZ_D_SUCCEEDED;
        a.attempts = 1;
        a.status = 200;
        a.at = kz_now_ms();
        memset(&op, 0, sizeof(op));
        op.type = KZ_OP_COMPLETE;
        op.u.complete.items = &a;
        op.u.complete.n = 1;
        assert_int_equal(exec(f->st, &op), KZ_OK);
        snprintf(sql, sizeof(sql), "SELECT state FROM deliveries WHERE id = %lld", (long long)id);
        assert_int_equal(db_int(f, sql), KZ_D_SUCCEEDED);
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM delivery_attempts WHERE delivery_id = %lld", (long long)id);
        assert_int_equal(db_int(f, sql), 1);
    }

    /* kill -9 and start again: the node takes back its leased rows (and the claimed ones) */
    {
        struct kz_store *again = NULL;

        open_store(f, &again, 100);
        assert_int_equal(kz_store_node_start(again, "node-1", &resumed), KZ_OK);
        assert_int_equal(resumed, 4); /* ev-l2's two leased rows, wh-2's two claimed rows */
        assert_int_equal(db_int(f, "SELECT count(*) FROM deliveries WHERE state = 1"), 0);
        kz_store_close(again);
    }
}

/* Whenever webhooks may have changed, the generation moves: a commit that changed them, and a
 * webhooks_version read that differs from the last one (another process). */
static void test_webhooks_generation_moves(void **state)
{
    struct fx *f = *state;
    struct kz_buf v;
    int64_t g0 = kz_store_webhooks_gen(f->st), g1, g2;

    add_app(f->st, "app-1", T0);
    assert_int_equal(kz_store_webhooks_gen(f->st), g0); /* an app is no webhook */
    add_webhook(f->st, "wh-1", "app-1", "g1");
    g1 = kz_store_webhooks_gen(f->st);
    assert_true(g1 > g0);
    kz_buf_init(&v, 64);
    assert_int_equal(kz_store_meta_get(f->st, "webhooks_version", &v), KZ_OK);
    g2 = kz_store_webhooks_gen(f->st);
    assert_int_equal(kz_store_meta_get(f->st, "webhooks_version", &v), KZ_OK);
    assert_int_equal(kz_store_webhooks_gen(f->st), g2); /* same version: no move */
    db_exec(f, "UPDATE meta SET value = '1000' WHERE key = 'webhooks_version'");
    assert_int_equal(kz_store_meta_get(f->st, "webhooks_version", &v), KZ_OK);
    assert_true(kz_store_webhooks_gen(f->st) > g2);
    kz_buf_cleanup(&v);
}

/* Waits up to `ms` for `st` to stop being live; true when it did. */
static bool wait_not_live(struct kz_store *st, int ms)
{
    for (int i = 0; i < ms / 20; i++) {
        if (!kz_store_node_live(st))
            return true;
        usleep(20000);
    }
    return false;
}

/* Two nodes on one database. A's claims stay A's while its heartbeat is fresh (no takeover, no
 * lease release); once its heartbeat is older than KZ_NODE_DEAD_MS, B's TAKEOVER releases them
 * (in their due order), names A and counts them; A never takes itself over; when another
 * process takes A's node id, A stops being live. A node closed gracefully is taken over at once.
 * Rows no node claimed (NULL) still follow their lease. */
static void test_pg_only_takeover_of_a_dead_node(void **state)
{
    struct fx *f = *state;
    struct kz_store *b = NULL, *c = NULL;
    struct kz_op op;
    int64_t resumed;

    open_store(f, &b, 100);
    assert_int_equal(kz_store_node_start(f->st, "node-a", &resumed), KZ_OK);
    assert_int_equal(kz_store_node_start(b, "node-b", &resumed), KZ_OK);
    setup_backlog(f->st);
    claim(f->st, &op, T0 + 1000, 3, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 3);
    kz_claim_cleanup(&op);

    takeover_op(b, &op);
    assert_int_equal(op.u.takeover.released, 0);
    release_op(b, &op, kz_now_ms()); /* lease over, but A is live */
    assert_int_equal(op.u.release.released, 0);

    /* A's heartbeat is 10 s old and another process took its id (so A's next beat fails) */
    sql_exec("UPDATE nodes SET incarnation = 'other', heartbeat_at = heartbeat_at - 10000"
             " WHERE id = 'node-a'");
    takeover_op(f->st, &op); /* never itself */
    assert_int_equal(op.u.takeover.released, 0);
    takeover_op(b, &op);
    assert_int_equal(op.u.takeover.n_nodes, 1);
    assert_string_equal(op.u.takeover.nodes[0].node_id, "node-a");
    assert_int_equal(op.u.takeover.nodes[0].deliveries, 3);
    assert_int_equal(op.u.takeover.released, 3);
    assert_int_equal(sql_int("SELECT count(*) FROM deliveries WHERE state = 1"), 0);
    assert_int_equal(sql_int("SELECT min(next_attempt_at) FROM deliveries"), T0 + 10);
    takeover_op(b, &op);
    assert_int_equal(op.u.takeover.released, 0);
    assert_true(wait_not_live(f->st, 3000));

    /* B claims; C claims and stops: C's rows are free at once */
    open_store(f, &c, 100);
    assert_int_equal(kz_store_node_start(c, "node-c", &resumed), KZ_OK);
    claim(c, &op, T0 + 1000, 2, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 2);
    kz_claim_cleanup(&op);
    claim(b, &op, T0 + 1000, 2, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 2);
    kz_claim_cleanup(&op);
    kz_store_close(c);
    takeover_op(b, &op);
    assert_int_equal(op.u.takeover.n_nodes, 1);
    assert_string_equal(op.u.takeover.nodes[0].node_id, "node-c");
    assert_int_equal(op.u.takeover.released, 2);
    assert_int_equal(sql_int("SELECT count(*) FROM deliveries WHERE state = 1"), 2); /* B's */

    /* a row claimed without a node id follows its lease */
    sql_exec("UPDATE deliveries SET claimed_by = NULL WHERE state = 1");
    release_op(b, &op, kz_now_ms());
    assert_int_equal(op.u.release.released, 2);
    kz_store_close(b);
}

struct tcase {
    const char *name;
    CMUnitTestFunction fn;
    unsigned on; /* B_SQLITE | B_PG: one entry per backend; 0: both_…, one entry needing both */
};

#define T(fn, on)                                                                                  \
    {                                                                                              \
#fn, test_##fn, on                                                                         \
    }
#define BOTH (B_SQLITE | B_PG)

/* ==== statistics (KZ_OP_STATS_ADD) ==== */

struct minsum {
    int n;
    int64_t published, succeeded, hist3;
};

static void minsum_add(void *arg, const struct kz_stats_minute *m)
{
    struct minsum *ms = arg;

    ms->n++;
    ms->published += m->published;
    ms->succeeded += m->succeeded;
    ms->hist3 += m->hist[3];
}

struct failsum {
    int n;
    char id[40];
    int64_t since;
    char err[64];
};

static void failsum_add(void *arg, const struct kz_failing *f)
{
    struct failsum *fs = arg;

    if (!fs->n++) {
        snprintf(fs->id, sizeof(fs->id), "%s", f->id);
        fs->since = f->failing_since;
        snprintf(fs->err, sizeof(fs->err), "%s", f->last_error ? f->last_error : "");
    }
}

static enum kz_err stats_add(struct kz_store *st, const char *node, const struct kz_stats_minute *m,
                             const struct kz_stats_webhook *w, int64_t prune_before)
{
    struct kz_op op = {.type = KZ_OP_STATS_ADD};

    op.u.stats.node_id = node;
    op.u.stats.minutes = m;
    op.u.stats.n_minutes = m ? 1 : 0;
    op.u.stats.webhooks = w;
    op.u.stats.n_webhooks = w ? 1 : 0;
    op.u.stats.prune_before = prune_before;
    return exec(st, &op);
}

static struct kz_stats_webhook wh_outcome(const char *id, int64_t ok_at, int64_t fail_at,
                                          int64_t fail_since, const char *err)
{
    struct kz_stats_webhook w;

    memset(&w, 0, sizeof(w));
    snprintf(w.webhook_id, sizeof(w.webhook_id), "%s", id);
    w.hour = T0 - T0 % 3600000;
    w.succeeded = ok_at ? 1 : 0;
    w.failed = fail_at ? 1 : 0;
    w.last_ok_at = ok_at;
    w.last_fail_at = fail_at;
    w.fail_since = fail_since;
    w.last_error = err;
    return w;
}

static void test_stats_rows_and_failing_state(void **state)
{
    struct fx *f = *state;
    int64_t minute = T0 - T0 % 60000;
    struct kz_stats_minute m;
    struct kz_stats_webhook w;
    struct kz_webhook_health h;
    struct minsum ms = {0};
    struct failsum fs = {0};

    add_app(f->st, "app1", T0);
    add_webhook(f->st, "w1", "app1", "g1");
    add_webhook(f->st, "w2", "app1", "g1");
    /* one row per node and minute, set (not added): writing it again changes nothing */
    memset(&m, 0, sizeof(m));
    m.minute = minute;
    m.published = 5;
    m.succeeded = 4;
    m.hist[3] = 4;
    assert_int_equal(stats_add(f->st, "nodeA", &m, NULL, 0), KZ_OK);
    assert_int_equal(stats_add(f->st, "nodeA", &m, NULL, 0), KZ_OK);
    m.published = 2;
    m.succeeded = 1;
    m.hist[3] = 1;
    assert_int_equal(stats_add(f->st, "nodeB", &m, NULL, 0), KZ_OK);
    assert_int_equal(kz_store_stats_minutes(f->st, minute, minsum_add, &ms), KZ_OK);
    assert_int_equal(ms.n, 2);
    assert_int_equal(ms.published, 7);
    assert_int_equal(ms.succeeded, 5);
    assert_int_equal(ms.hist3, 5);
    memset(&ms, 0, sizeof(ms));
    assert_int_equal(kz_store_stats_minutes(f->st, minute + 60000, minsum_add, &ms), KZ_OK);
    assert_int_equal(ms.n, 0);

    /* failing state, merged across nodes: the latest outcome wins; failing since the first
     * failure after the latest success */
    w = wh_outcome("w1", 0, T0 + 100, T0 + 100, "HTTP 500");
    assert_int_equal(stats_add(f->st, "nodeA", NULL, &w, 0), KZ_OK);
    assert_int_equal(kz_store_failing_list(f->st, 10, failsum_add, &fs), KZ_OK);
    assert_int_equal(fs.n, 1);
    assert_string_equal(fs.id, "w1");
    assert_int_equal(fs.since, T0 + 100);
    assert_string_equal(fs.err, "HTTP 500");
    w = wh_outcome("w1", T0 + 150, 0, 0, NULL); /* nodeB: a success after it */
    assert_int_equal(stats_add(f->st, "nodeB", NULL, &w, 0), KZ_OK);
    memset(&fs, 0, sizeof(fs));
    assert_int_equal(kz_store_failing_list(f->st, 10, failsum_add, &fs), KZ_OK);
    assert_int_equal(fs.n, 0);
    w = wh_outcome("w1", 0, T0 + 200, T0 + 200, "timeout");
    assert_int_equal(stats_add(f->st, "nodeA", NULL, &w, 0), KZ_OK);
    w = wh_outcome("w1", T0 + 150, T0 + 180, T0 + 180, "HTTP 502");
    assert_int_equal(stats_add(f->st, "nodeB", NULL, &w, 0), KZ_OK);
    memset(&fs, 0, sizeof(fs));
    assert_int_equal(kz_store_failing_list(f->st, 10, failsum_add, &fs), KZ_OK);
    assert_int_equal(fs.n, 1);
    assert_int_equal(fs.since, T0 + 180);
    assert_string_equal(fs.err, "timeout"); /* of the latest failure */
    assert_int_equal(kz_store_webhook_health(f->st, "w1", w.hour, &h), KZ_OK);
    assert_int_equal(h.succeeded, 1);
    assert_int_equal(h.failed, 2);
    assert_int_equal(h.failing_since, T0 + 180);
    assert_int_equal(h.last_ok_at, T0 + 150);
    assert_string_equal(h.last_error, "timeout");
    kz_webhook_health_cleanup(&h);
    assert_int_equal(kz_store_webhook_health(f->st, "w2", w.hour, &h), KZ_OK);
    assert_int_equal(h.succeeded + h.failed + h.dead + h.failing_since, 0);
    assert_null(h.last_error);
    kz_webhook_health_cleanup(&h);

    /* policy: whole minutes, the failing rule, UTF-8 errors */
    m.minute = minute + 1;
    assert_int_equal(stats_add(f->st, "nodeA", &m, NULL, 0), KZ_ERR_INVALID);
    w = wh_outcome("w2", T0 + 10, T0 + 5, T0 + 5, NULL); /* not failing: no fail_since */
    assert_int_equal(stats_add(f->st, "nodeA", NULL, &w, 0), KZ_ERR_INVALID);
    w = wh_outcome("w2", 0, T0 + 5, 0, NULL); /* failing: fail_since needed */
    assert_int_equal(stats_add(f->st, "nodeA", NULL, &w, 0), KZ_ERR_INVALID);
    w = wh_outcome("w2", 0, T0 + 5, T0 + 5, "\xff bad");
    assert_int_equal(stats_add(f->st, "nodeA", NULL, &w, 0), KZ_ERR_INVALID);
    assert_int_equal(stats_add(f->st, NULL, NULL, NULL, 0), KZ_ERR_INVALID);

    /* a deleted webhook is not listed, and pruning drops its state and the old rows */
    {
        struct kz_op op = {.type = KZ_OP_WEBHOOK_DELETE};

        op.u.del.id = "w1";
        op.u.del.app_id = "";
        assert_int_equal(exec(f->st, &op), KZ_OK);
    }
    memset(&fs, 0, sizeof(fs));
    assert_int_equal(kz_store_failing_list(f->st, 10, failsum_add, &fs), KZ_OK);
    assert_int_equal(fs.n, 0);
    assert_int_equal(stats_add(f->st, "nodeA", NULL, NULL, minute + 60000), KZ_OK);
    assert_int_equal(db_int(f, "SELECT COUNT(*) FROM webhook_state"), 0);
    assert_int_equal(db_int(f, "SELECT COUNT(*) FROM stats_minute"), 0);
}

/* ==== rateLimit and ordered: the claim gates (README.md "Delivery controls") ==== */

static void add_gated_webhook(struct kz_store *st, const char *id, int rate, bool ordered,
                              int64_t validity)
{
    struct kz_op op = {.type = KZ_OP_WEBHOOK_INSERT};

    fill_webhook(&op.u.webhook, id, "app-1", "g1");
    op.u.webhook.rate_limit = rate;
    op.u.webhook.ordered = ordered;
    op.u.webhook.validity_ms = validity;
    assert_int_equal(exec(st, &op), KZ_OK);
}

/* The claimed rows of webhook `wh` (their delivery ids, in claim order) into ids; returns n. */
static size_t claimed_of(const struct kz_op *op, const char *wh, int64_t *ids, size_t max)
{
    size_t i, n = 0;

    for (i = 0; i < op->u.claim.n_out; i++) {
        if (!strcmp(op->u.claim.out[i].wh.id, wh) && n < max)
            ids[n++] = op->u.claim.out[i].delivery_id;
    }
    return n;
}

static void test_claim_ordered_head_only(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wo", "wp"};
    int64_t d[4], got[8];
    struct kz_op op;
    char ev[16];
    int i;

    add_app(f->st, "app-1", T0);
    add_gated_webhook(f->st, "wo", 0, true, T0 + 1000000);
    add_webhook(f->st, "wp", "app-1", "g1");
    for (i = 0; i < 4; i++) {
        snprintf(ev, sizeof(ev), "ev-%d", i);
        publish(f->st, ev, T0 + i, ids, 2, 0);
    }
    /* ids of wo's rows in publish order */
    {
        struct dlist l = list_deliveries(f->st, "wo", -1, 0, 10);

        assert_int_equal(l.n, 4);
        for (i = 0; i < 4; i++)
            d[i] = l.id[3 - i]; /* the log is newest first */
    }
    /* the plain webhook's four rows and only the ordered one's first */
    claim(f->st, &op, T0 + 100, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 5);
    assert_int_equal(claimed_of(&op, "wo", got, 8), 1);
    assert_int_equal(got[0], d[0]);
    assert_int_equal(claimed_of(&op, "wp", got, 8), 4);
    assert_int_equal(op.u.claim.held, 1);
    kz_claim_cleanup(&op);
    /* its head is inflight: nothing more */
    claim(f->st, &op, T0 + 100, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 0);
    assert_int_equal(op.u.claim.held, 1);
    assert_int_equal(op.u.claim.held_until, 0);
    kz_claim_cleanup(&op);
    /* a failed attempt: the head waits for its retry, and the later ones wait for it */
    complete(f->st, d[0], "wo", KZ_D_PENDING, 1, T0 + 5000, 500);
    claim(f->st, &op, T0 + 200, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 0);
    assert_int_equal(op.u.claim.held, 1);
    assert_int_equal(op.u.claim.held_until, T0 + 5000);
    kz_claim_cleanup(&op);
    claim(f->st, &op, T0 + 5000, 10, NULL, 0);
    assert_int_equal(claimed_of(&op, "wo", got, 8), 1);
    assert_int_equal(got[0], d[0]);
    kz_claim_cleanup(&op);
    /* succeeded: the next; dead: the next */
    complete(f->st, d[0], "wo", KZ_D_SUCCEEDED, 2, 0, 200);
    claim(f->st, &op, T0 + 5001, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 1);
    assert_int_equal(op.u.claim.out[0].delivery_id, d[1]);
    kz_claim_cleanup(&op);
    complete(f->st, d[1], "wo", KZ_D_DEAD, 3, 0, 500);
    /* the dead delivery disabled the webhook (nothing succeeded since its first attempt);
     * enabled again, the next one goes */
    db_exec(f, "UPDATE webhooks SET active = 1 WHERE id = 'wo'");
    claim(f->st, &op, T0 + 5002, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 1);
    assert_int_equal(op.u.claim.out[0].delivery_id, d[2]);
    kz_claim_cleanup(&op);
    complete(f->st, d[2], "wo", KZ_D_SUCCEEDED, 1, 0, 200);
    /* a retry of the first (succeeded) delivery puts it in front of the fourth */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_RETRY;
    op.u.retry.webhook_id = "wo";
    op.u.retry.delivery_id = d[0];
    op.u.retry.now = T0 + 5003;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    claim(f->st, &op, T0 + 5003, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 1);
    assert_int_equal(op.u.claim.out[0].delivery_id, d[0]);
    kz_claim_cleanup(&op);
    /* and while it is inflight, a replay of everything (the dead one comes back) waits */
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_REPLAY;
    op.u.replay.webhook_id = "wo";
    op.u.replay.since = 0;
    op.u.replay.now = T0 + 5004;
    assert_int_equal(exec(f->st, &op), KZ_OK);
    claim(f->st, &op, T0 + 5004, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 0);
    kz_claim_cleanup(&op);
    complete(f->st, d[0], "wo", KZ_D_SUCCEEDED, 1, 0, 200);
    for (i = 1; i < 4; i++) { /* then d1 (replayed), d3, in publish order, one at a time */
        if (i == 2)
            continue;
        claim(f->st, &op, T0 + 5005 + i, 10, NULL, 0);
        assert_int_equal(op.u.claim.n_out, 1);
        assert_int_equal(op.u.claim.out[0].delivery_id, d[i]);
        kz_claim_cleanup(&op);
        complete(f->st, d[i], "wo", KZ_D_SUCCEEDED, 1, 0, 200);
    }
    claim(f->st, &op, T0 + 5010, 10, NULL, 0);
    assert_int_equal(op.u.claim.n_out, 0);
    assert_int_equal(op.u.claim.held, 0);
    kz_claim_cleanup(&op);
    /* excluded by the caller: not even looked at */
    publish(f->st, "ev-9", T0 + 5011, ids, 1, 0);
    {
        const char *ex[] = {"wo"};

        claim(f->st, &op, T0 + 5012, 10, ex, 1);
        assert_int_equal(op.u.claim.n_out, 0);
        assert_int_equal(op.u.claim.held, 0);
        kz_claim_cleanup(&op);
    }
    /* the gate goes with its webhook */
    assert_int_equal(db_int(f, "SELECT count(*) FROM webhook_gates"), 1);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_DELETE;
    op.u.del.id = "wo";
    op.u.del.app_id = "";
    assert_int_equal(exec(f->st, &op), KZ_OK);
    assert_int_equal(db_int(f, "SELECT count(*) FROM webhook_gates"), 0);
}

static void test_claim_rate_limit_bucket(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wr", "wp"};
    int64_t far = INT64_C(253402300799999), got[16], now;
    struct kz_op op;
    char ev[16];
    size_t total;
    int i;

    add_app(f->st, "app-1", T0);
    add_gated_webhook(f->st, "wr", 2, false, far);
    add_webhook(f->st, "wp", "app-1", "g1");
    for (i = 0; i < 8; i++) {
        snprintf(ev, sizeof(ev), "ev-%d", i);
        publish(f->st, ev, T0 + i, ids, 2, 0);
    }
    /* a full bucket: 2 rows (the bucket's clock is real time: PostgreSQL's is the server's);
     * the unlimited webhook's rows come in the same claim */
    now = kz_now_ms();
    claim(f->st, &op, now, 20, NULL, 0);
    assert_int_equal(claimed_of(&op, "wr", got, 16), 2);
    assert_int_equal(claimed_of(&op, "wp", got, 16), 8);
    assert_int_equal(op.u.claim.held, 1);
    assert_true(op.u.claim.held_until > 0);
    kz_claim_cleanup(&op);
    /* empty: nothing, and when it holds an attempt again (2 per second: within 500 ms) */
    claim(f->st, &op, kz_now_ms(), 20, NULL, 0);
    total = op.u.claim.n_out;
    assert_true(total <= 1); /* 1 only on a machine that took 500 ms since */
    assert_int_equal(op.u.claim.held, 1);
    assert_true(op.u.claim.held_until >= now && op.u.claim.held_until <= kz_now_ms() + 600);
    kz_claim_cleanup(&op);
    /* the claim's own limit counts too, and only what was taken is paid for */
    usleep(1100 * 1000);
    claim(f->st, &op, kz_now_ms(), 1, NULL, 0);
    assert_int_equal(claimed_of(&op, "wr", got, 16), 1);
    kz_claim_cleanup(&op);
    claim(f->st, &op, kz_now_ms(), 20, NULL, 0);
    total += claimed_of(&op, "wr", got, 16);
    assert_true(claimed_of(&op, "wr", got, 16) >= 1);
    kz_claim_cleanup(&op);
    /* over about 2 s: at most 2 + 2 * elapsed */
    assert_true(2 + 1 + total <= 2 + 2 * (size_t)((kz_now_ms() - now) / 1000 + 1));
    assert_int_equal(db_int(f, "SELECT count(*) FROM deliveries WHERE webhook_id = 'wr'"
                               " AND state = 1"),
                     (int64_t)(2 + 1 + total));
    /* rateLimit 0 again: the rest at once */
    {
        struct kz_op u = {.type = KZ_OP_WEBHOOK_UPDATE};

        fill_webhook(&u.u.webhook, "wr", "app-1", "g1");
        u.u.webhook.validity_ms = far;
        assert_int_equal(exec(f->st, &u), KZ_OK);
    }
    claim(f->st, &op, kz_now_ms(), 20, NULL, 0);
    assert_int_equal(claimed_of(&op, "wr", got, 16), (size_t)(8 - 3 - total));
    assert_int_equal(op.u.claim.held, 0);
    kz_claim_cleanup(&op);
}

#define OT_EVENTS 40

struct ot_arg {
    struct kz_store *st;
    struct fx *f;
    pthread_mutex_t *mu;
    int64_t *seq;
    size_t *n;
    int bad;
};

/* A node's dispatcher in miniature: claim, record the ordered webhook's rows, complete them. */
static void *ot_thread(void *p)
{
    struct ot_arg *a = p;
    int idle = 0;

    while (idle < 200) {
        struct kz_op op;
        size_t i;
        int64_t mine[4];
        size_t k = 0;

        claim(a->st, &op, T0 + 100, 4, NULL, 0);
        for (i = 0; i < op.u.claim.n_out; i++) {
            if (k < 4)
                mine[k++] = op.u.claim.out[i].delivery_id;
        }
        kz_claim_cleanup(&op);
        if (k > 1)
            a->bad++;
        for (i = 0; i < k; i++) {
            pthread_mutex_lock(a->mu);
            a->seq[(*a->n)++] = mine[i];
            pthread_mutex_unlock(a->mu);
            complete(a->st, mine[i], "wo", KZ_D_SUCCEEDED, 1, 0, 200);
        }
        idle = k ? 0 : idle + 1;
        if (!k)
            usleep(2000);
    }
    return NULL;
}

/* Two nodes claiming one ordered webhook at once: one delivery at a time, in publish order. */
static void test_pg_only_ordered_two_nodes(void **state)
{
    struct fx *f = *state;
    const char *ids[] = {"wo"};
    struct kz_store *other = NULL;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    int64_t seq[OT_EVENTS * 2];
    size_t n = 0, i;
    struct ot_arg a[2];
    pthread_t th[2];
    char ev[16];

    add_app(f->st, "app-1", T0);
    add_gated_webhook(f->st, "wo", 0, true, T0 + 1000000);
    for (i = 0; i < OT_EVENTS; i++) {
        snprintf(ev, sizeof(ev), "ev-%zu", i);
        publish(f->st, ev, T0 + (int64_t)i, ids, 1, 0);
    }
    open_store(f, &other, 1000);
    for (i = 0; i < 2; i++) {
        a[i] = (struct ot_arg){.st = i ? other : f->st, .f = f, .mu = &mu, .seq = seq, .n = &n};
        assert_int_equal(pthread_create(&th[i], NULL, ot_thread, &a[i]), 0);
    }
    for (i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    kz_store_close(other);
    assert_int_equal(a[0].bad + a[1].bad, 0);
    assert_int_equal(n, OT_EVENTS);
    for (i = 1; i < n; i++)
        assert_true(seq[i] > seq[i - 1]);
    assert_int_equal(db_int(f, "SELECT count(*) FROM deliveries WHERE state = 2"), OT_EVENTS);
}

static const struct tcase cases[] = {
    T(reopen_idempotent_and_durable, BOTH),
    T(open_errors, BOTH),
    T(concurrent_open_migrates_once, BOTH),
    T(schema_newer_than_binary, BOTH),
    T(meta, BOTH),
    T(stats_rows_and_failing_state, BOTH),
    T(apps, BOTH),
    T(tokens, BOTH),
    T(webhooks_crud, BOTH),
    T(webhook_controls_and_rotate, BOTH),
    T(webhook_delete_cascades, BOTH),
    T(app_delete_cascades, BOTH),
    T(publish_and_idempotency, BOTH),
    T(publish_batch_set, BOTH),
    T(publish_kaizala_fields_and_traceparent, BOTH),
    T(failed_op_rolls_back_alone, BOTH),
    T(claim_order_limit_exclude_lease, BOTH),
    T(node_start_resumes_own_claims, BOTH),
    T(publish_leased, BOTH),
    T(webhooks_generation_moves, BOTH),
    T(pg_only_takeover_of_a_dead_node, B_PG),
    T(claim_with_exclusions_shares_the_limit, BOTH),
    T(complete_retry_success_dead, BOTH),
    T(complete_many, BOTH),
    T(complete_truncates_response, BOTH),
    T(replay, BOTH),
    T(attempt_history, BOTH),
    T(disable_rule, BOTH),
    T(retry_one_delivery, BOTH),
    T(claim_ordered_head_only, BOTH),
    T(claim_rate_limit_bucket, BOTH),
    T(delivery_list_filter_and_cursor, BOTH),
    T(prune, BOTH),
    T(prune_sweep_bounded, BOTH),
    T(backlog_next_due, BOTH),
    T(group_commit_batches, BOTH),
    T(queue_full_busy, BOTH),
    T(close_drains, BOTH),
    T(version_seen_across_processes, BOTH),
    T(concurrent_reads, BOTH),
    T(perf_batches_of_1000, BOTH),
    T(perf_threads, BOTH),
    T(sqlite_only_locked_batch_busy, B_SQLITE),
    T(sqlite_only_query_plans, B_SQLITE),
    T(pg_only_claim_skip_locked_two_nodes, B_PG),
    T(pg_only_ordered_two_nodes, B_PG),
    T(pg_only_lock_timeout_busy_alone, B_PG),
    T(pg_only_notify_other_node, B_PG),
    T(pg_only_reconnect_after_terminate, B_PG),
    T(pg_only_server_down_and_back, B_PG),
    T(pg_only_perf_threads_two_nodes, B_PG),
    T(pg_only_perf_open_loop_two_nodes, B_PG),
    T(both_delivery_log_odd_text, 0),
    T(both_property_same_answers, 0),
};

#define N_RUNS (2 * KZ_ARRAY_LEN(cases))

int main(void)
{
    static struct CMUnitTest tests[N_RUNS];
    static char names[N_RUNS][96];
    static const enum backend order[] = {B_SQLITE, B_PG};
    size_t n = 0, k, i;
    bool have_pg;
    int failed;

    pg_url = getenv("KZ_TEST_PG_URL");
    pg_dir = getenv("KZ_TEST_PG_DIR");
    if (pg_dir && !*pg_dir)
        pg_dir = NULL;
    have_pg = pg_url && *pg_url;
    if (!have_pg)
        fprintf(stderr,
                "test_store: *** KZ_TEST_PG_URL is not set: every [pg] and both_ test is SKIPPED"
                " ***\n"
                "  Start a private server and point the test at it:\n"
                "    D=$(mktemp -d); scripts/pg-test-server.sh start $D\n"
                "    export KZ_TEST_PG_URL=$(scripts/pg-test-server.sh createdb $D kzunit)"
                " KZ_TEST_PG_DIR=$D\n");
    /* every SQLite run, then every PostgreSQL run, then the side-by-side ones */
    for (k = 0; k < 3; k++) {
        for (i = 0; i < KZ_ARRAY_LEN(cases); i++) {
            const struct tcase *c = &cases[i];
            bool pg;

            if (k < 2 && !(c->on & order[k]))
                continue;
            if (k == 2 && c->on)
                continue;
            pg = k > 0;
            snprintf(names[n], sizeof(names[n]), "%s[%s]", c->name,
                     k == 2 ? "sqlite+pg" : be_name(order[k]));
            tests[n].name = names[n];
            tests[n].test_func = pg && !have_pg ? pg_unavailable : c->fn;
            tests[n].setup_func = pg && !have_pg ? NULL
                                  : k == 0       ? setup_sqlite
                                  : k == 1       ? setup_pg
                                                 : setup_both;
            tests[n].teardown_func = pg && !have_pg ? NULL : teardown;
            tests[n].initial_state = NULL;
            n++;
        }
    }
    if (getenv("KZ_TEST_FILTER"))
        cmocka_set_test_filter(getenv("KZ_TEST_FILTER"));
    failed = _cmocka_run_group_tests("test_store", tests, n, NULL, NULL);
    if (!have_pg)
        fprintf(stderr, "test_store: *** the PostgreSQL half was SKIPPED (KZ_TEST_PG_URL unset)"
                        " ***\n");
    return failed;
}
