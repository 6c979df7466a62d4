/* fuzz_api.c — request routing, authentication and validation through the real api
 * (src/api.h) over a real SQLite store in a temporary directory.
 *
 * Fixture, built once in LLVMFuzzerInitialize and restored after any request that changed it:
 *  - admin token "fuzz-admin-token-123" (the api gets its SHA-256 hex);
 *  - application A (objectIds g1, a1, com.x.form), created through kz_api_app_create(), with an
 *    access token stored as KZ_OP_TOKEN_ADD of its SHA-256 hex, as access_token() does;
 *  - application B (objectIds "*") with a valid token and an expired one;
 *  - webhooks W (A, Group g1, active), W2 (B, Group g2), W3 (A, ActionPackage, inactive),
 *    inserted through the store (creating one through the api needs a live callback).
 * Configuration: allow_private_targets and allow_http_callbacks off, validation_timeout_ms 1,
 * rate limit off (a limit would turn most inputs into 429s after the first minute).
 * The network is unreachable by construction: netguard.c refuses every name lookup and every
 * connect() in this process, so a callBackUrl that passes the SSRF guard fails the handshake
 * at once without a packet being sent.
 *
 * Input: byte 0 picks the method; byte 1 is a set of credential flags (FL_*); then, separated by
 * NULs: the path, the query string (k=v&k=v, not decoded), header lines ("Name: value", one per
 * line), and the body (the rest, NULs included). In the path, query and headers the markers
 * {W} {W2} {W3} {A} {B} become the fixture's webhook and application ids ({WU} and {AU}: W's
 * and A's in upper case).
 *
 * Checked for every request: a status is set and is not 500 (the store is healthy, so a 500 is
 * a bug) or 503; every JSON answer parses; an error answer has message, errorCode and
 * errorCategoryKey, with the errorCode docs/openapi.json gives for the status (405 has Allow, 429 has
 * Retry-After); no answer contains a secret (application secrets, refresh tokens, access
 * tokens, signing secrets: all random per run) unless the request itself carried it; a 2xx
 * without credentials is only /healthz, /metrics or /openapi.json (in any case); a 2xx for
 * /admin/... or /v1/events needs the admin token; a 2xx for one application never shows the other's
 * webhooks; kz_alloc_live() is back to its value before the request once it has been answered (not
 * asserted after a successful change, whose subscription index entries legitimately live on,
 * nor when calibration found the count unstable). */
#include "fuzz_common.h"

#include "alloc.h"
#include "api.h"
#include "config.h"
#include "id.h"
#include "json.h"
#include "metrics.h"
#include "outbound.h"
#include "sign.h"
#include "store.h"
#include "subidx.h"

#include <ctype.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <scheduler.h>
#include <signal.h>
#include <strings.h>
#include <unistd.h>

void kz_fuzz_netguard_check(void);
long kz_fuzz_netguard_refused(void);

#define ADMIN_TOKEN "fuzz-admin-token-123"
/* Access tokens are random per run, like every other secret the leak check looks for. */
static char tok_a[44], tok_b[44], tok_b_expired[44];
#define YEAR_MS INT64_C(31536000000)

enum {
    FL_ADMIN = 1 << 0,         /* Authorization: Bearer <admin token> */
    FL_TOKEN_A = 1 << 1,       /* accessToken: <A's token> */
    FL_TOKEN_B = 1 << 2,       /* accessToken: <B's token> */
    FL_BEARER_A = 1 << 3,      /* Authorization: Bearer <A's token> */
    FL_APPCREDS_A = 1 << 4,    /* applicationId/applicationSecret/refreshToken of A */
    FL_WRONGSECRET_A = 1 << 5, /* A's applicationId with a wrong secret */
    FL_EXPIRED_B = 1 << 6,     /* accessToken: an expired token of B */
    FL_EMPTY_TOKEN = 1 << 7,   /* accessToken: "" */
};

static const char *const methods[] = {"GET",     "POST", "PUT",    "DELETE",  "HEAD", "PATCH",
                                      "OPTIONS", "get",  "TRACE",  "CONNECT", "",     "POST",
                                      "GET",     "PUT",  "DELETE", "GET"};

struct fixture_app {
    struct kz_app row; /* as stored, for re-creation */
    char secret[128], refresh[128];
    const char *token;
};

static struct {
    struct kz_config cfg;
    struct kz_store *st;
    struct kz_subidx *idx;
    struct kz_metrics metrics;
    struct kz_api *api;
    char dir[256], db[300];
    struct fixture_app a, b;
    struct kz_webhook wh[3]; /* W, W2, W3 */
    bool alloc_stable;
    const char *secrets[16];
    size_t nsecrets;
} fx;

/* ==== request plumbing ==== */

#define MAX_PAIRS 32

struct conn {
    const char *hname[MAX_PAIRS], *hval[MAX_PAIRS];
    size_t nh;
    const char *qname[MAX_PAIRS], *qval[MAX_PAIRS];
    size_t nq;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool completed;
};

static const char *header_cb(void *c, const char *name)
{
    struct conn *cn = c;
    size_t i;

    for (i = 0; i < cn->nh; i++) {
        if (!strcasecmp(cn->hname[i], name))
            return cn->hval[i];
    }
    return NULL;
}

static const char *query_cb(void *c, const char *name)
{
    struct conn *cn = c;
    size_t i;

    for (i = 0; i < cn->nq; i++) {
        if (!strcmp(cn->qname[i], name))
            return cn->qval[i];
    }
    return NULL;
}

static void complete_cb(struct kz_req *req)
{
    struct conn *cn = req->conn;

    pthread_mutex_lock(&cn->lock);
    FUZZ_CHECK(!cn->completed, "%s", "complete() called twice");
    cn->completed = true;
    pthread_cond_signal(&cn->cond);
    pthread_mutex_unlock(&cn->lock);
}

static void add_header(struct conn *cn, const char *name, const char *value)
{
    if (cn->nh < MAX_PAIRS) {
        cn->hname[cn->nh] = name;
        cn->hval[cn->nh] = value;
        cn->nh++;
    }
}

/* Runs one request to completion (waiting out a PENDING publish). */
static void run_request(struct kz_req *req, struct conn *cn)
{
    enum kz_err e;

    pthread_mutex_init(&cn->lock, NULL);
    pthread_cond_init(&cn->cond, NULL);
    cn->completed = false;
    req->header = header_cb;
    req->query = query_cb;
    req->conn = cn;
    req->complete = complete_cb;
    snprintf(req->remote_ip, sizeof(req->remote_ip), "127.0.0.1");
    e = kz_api_handle(fx.api, req);
    FUZZ_CHECK(e == KZ_OK || e == KZ_ERR_PENDING, "kz_api_handle returned %d", e);
    if (e == KZ_ERR_PENDING) {
        pthread_mutex_lock(&cn->lock);
        while (!cn->completed)
            pthread_cond_wait(&cn->cond, &cn->lock);
        pthread_mutex_unlock(&cn->lock);
    } else {
        FUZZ_CHECK(!cn->completed, "%s", "complete() called for a request answered at once");
    }
    /* publish_done() still runs on the writer thread after complete(): let it return. */
    while (kz_api_pending(fx.api))
        sched_yield();
    pthread_cond_destroy(&cn->cond);
    pthread_mutex_destroy(&cn->lock);
}

/* ==== fixture ==== */

static void exec_op(struct kz_op *op, const char *what)
{
    enum kz_err e = kz_store_exec(fx.st, op);

    FUZZ_CHECK(!e, "fixture: %s failed: %s", what, kz_err_str(e));
}

static void add_token(const char *token, const char *app_id, int64_t expires)
{
    struct kz_op op;
    char hash[65];

    kz_sha256_hex(token, strlen(token), hash);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_TOKEN_ADD;
    op.u.token.hash = hash;
    op.u.token.app_id = app_id;
    op.u.token.expires_at = expires;
    exec_op(&op, "token add");
}

static bool token_present(const char *token)
{
    char hash[65], app_id[40];
    int64_t exp;

    kz_sha256_hex(token, strlen(token), hash);
    return kz_store_token_get(fx.st, hash, app_id, &exp) == KZ_OK;
}

static void make_app(struct fixture_app *fa, const char *body, const char *token)
{
    struct kz_buf out;
    int status = 0;
    json_t *doc;
    enum kz_err e;

    kz_buf_init(&out, 1 << 20);
    kz_api_app_create(fx.api, body, strlen(body), &status, &out);
    FUZZ_CHECK(status == 201, "fixture: app create answered %d %s", status, kz_buf_cstr(&out));
    doc = json_loadb(out.data, out.len, 0, NULL);
    FUZZ_CHECK(doc, "%s", "fixture: app create answer is not JSON");
    snprintf(fa->secret, sizeof(fa->secret), "%s",
             json_string_value(json_object_get(doc, "applicationSecret")));
    snprintf(fa->refresh, sizeof(fa->refresh), "%s",
             json_string_value(json_object_get(doc, "refreshToken")));
    memset(&fa->row, 0, sizeof(fa->row));
    e = kz_store_app_get(fx.st, json_string_value(json_object_get(doc, "applicationId")), &fa->row);
    FUZZ_CHECK(!e, "fixture: created app not found: %s", kz_err_str(e));
    json_decref(doc);
    kz_buf_cleanup(&out);
    fa->token = token;
    add_token(token, fa->row.id, kz_now_ms() + 10 * YEAR_MS);
}

static void make_webhook(struct kz_webhook *w, const char *id, const struct fixture_app *fa,
                         enum kz_objtype type, const char *object_id, bool active)
{
    memset(w, 0, sizeof(*w));
    snprintf(w->id, sizeof(w->id), "%s", id);
    snprintf(w->app_id, sizeof(w->app_id), "%s", fa->row.id);
    w->object_type = type;
    w->object_id = kz_strdup(object_id);
    w->event_mask = (1u << KZ_EV__COUNT) - 1;
    w->callback_url = kz_strdup("https://hooks.example.org/kz");
    w->callback_token = kz_strdup("s3cret");
    w->callback_context = kz_strdup("tenant-42");
    w->signing_secret = kz_malloc(KZ_SIGN_SECRET_SIZE);
    FUZZ_CHECK(!kz_sign_secret_new(w->signing_secret, KZ_SIGN_SECRET_SIZE), "%s",
               "fixture: secret");
    w->ts_ms = kz_now_ms();
    w->validity_ms = w->ts_ms + 10 * YEAR_MS;
    w->active = active;
}

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static bool webhook_same(const struct kz_webhook *a, const struct kz_webhook *b)
{
    return !strcmp(a->app_id, b->app_id) && a->object_type == b->object_type &&
           same_str(a->object_id, b->object_id) && a->event_mask == b->event_mask &&
           same_str(a->callback_url, b->callback_url) &&
           same_str(a->callback_token, b->callback_token) &&
           same_str(a->callback_context, b->callback_context) && a->validity_ms == b->validity_ms &&
           a->active == b->active;
}

/* Puts the fixture back as built: applications, tokens, webhooks, and their index entries. */
static void restore(void)
{
    struct fixture_app *apps[2] = {&fx.a, &fx.b};
    struct kz_app tmp;
    struct kz_op op;
    size_t i;

    for (i = 0; i < 2; i++) {
        memset(&tmp, 0, sizeof(tmp));
        if (kz_store_app_get(fx.st, apps[i]->row.id, &tmp) == KZ_ERR_NOTFOUND) {
            memset(&op, 0, sizeof(op));
            op.type = KZ_OP_APP_CREATE;
            op.u.app = apps[i]->row;
            exec_op(&op, "app re-create");
        }
        kz_app_cleanup(&tmp);
        if (!token_present(apps[i]->token))
            add_token(apps[i]->token, apps[i]->row.id, kz_now_ms() + 10 * YEAR_MS);
    }
    if (!token_present(tok_b_expired))
        add_token(tok_b_expired, fx.b.row.id, kz_now_ms() - 1000);
    for (i = 0; i < 3; i++) {
        struct kz_webhook cur;
        enum kz_err e;

        memset(&cur, 0, sizeof(cur));
        e = kz_store_webhook_get(fx.st, fx.wh[i].id, &cur);
        FUZZ_CHECK(e == KZ_OK || e == KZ_ERR_NOTFOUND, "fixture: webhook get: %s", kz_err_str(e));
        if (e || !webhook_same(&cur, &fx.wh[i])) {
            memset(&op, 0, sizeof(op));
            op.type = e ? KZ_OP_WEBHOOK_INSERT : KZ_OP_WEBHOOK_UPDATE;
            op.u.webhook = fx.wh[i];
            exec_op(&op, "webhook restore");
            kz_subidx_put(fx.idx, &fx.wh[i], op.webhooks_version);
        }
        kz_webhook_cleanup(&cur);
    }
}

static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[600];

    if (!d)
        return;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        if (unlink(path))
            rm_tree(path);
    }
    closedir(d);
    rmdir(dir);
}

/* Answers seen, by route and status, printed at exit when KZ_FUZZ_STATS is set: shows which
 * handlers the corpus reaches (a harness that only ever earns 401s tests little). */
#define STAT_ROUTES 12
static const char *const stat_route_names[STAT_ROUTES] = {
    "healthz", "metrics", "admin/apps",   "admin/apps/{id}",         "accessToken",
    "events",  "webhook", "webhook/{id}", "webhook/{id}/deliveries", "webhook/{id}/replay",
    "other",   "?"};
static long stat_count[STAT_ROUTES][6];

static int stat_route(size_t n, char seg[8][80])
{
    if (n == 1 && !strcasecmp(seg[0], "healthz"))
        return 0;
    if (n == 1 && !strcasecmp(seg[0], "metrics"))
        return 1;
    if (n >= 3 && !strcasecmp(seg[0], "admin") && !strcasecmp(seg[1], "v1") &&
        !strcasecmp(seg[2], "applications"))
        return n == 3 ? 2 : 3;
    if (n < 2 || strcasecmp(seg[0], "v1"))
        return 10;
    if (n == 2 && !strcasecmp(seg[1], "accessToken"))
        return 4;
    if (n == 2 && !strcasecmp(seg[1], "events"))
        return 5;
    if (strcasecmp(seg[1], "webhook"))
        return 10;
    if (n == 2)
        return 6;
    if (n == 3)
        return 7;
    if (n == 4 && !strcasecmp(seg[3], "deliveries"))
        return 8;
    if (n == 4 && !strcasecmp(seg[3], "replay"))
        return 9;
    return 10;
}

static void print_stats(void)
{
    size_t r;

    fprintf(stderr,
            "fuzz_api: route                     1xx/2xx/3xx/4xx/5xx; netguard refused %ld\n",
            kz_fuzz_netguard_refused());
    for (r = 0; r < STAT_ROUTES; r++)
        fprintf(stderr, "fuzz_api: %-25s %ld/%ld/%ld/%ld/%ld\n", stat_route_names[r],
                stat_count[r][1], stat_count[r][2], stat_count[r][3], stat_count[r][4],
                stat_count[r][5]);
}

/* Removes the store directories of earlier runs that died without reaching teardown() (a crash
 * exits through abort()). Only names of our own pattern whose process is gone are touched. */
static void remove_stale(const char *base)
{
    DIR *d = opendir(base);
    struct dirent *de;
    char path[600];
    long pid;
    char *end;

    if (!d)
        return;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "kzhook-fuzz-api.", 16))
            continue;
        pid = strtol(de->d_name + 16, &end, 10);
        if (end == de->d_name + 16 || *end != '.' || pid <= 0)
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        snprintf(path, sizeof(path), "%s/%s", base, de->d_name);
        rm_tree(path);
    }
    closedir(d);
}

static void teardown(void)
{
    size_t i;

    if (getenv("KZ_FUZZ_STATS"))
        print_stats();

    kz_api_free(fx.api);
    kz_subidx_free(fx.idx);
    kz_store_close(fx.st);
    for (i = 0; i < 3; i++)
        kz_webhook_cleanup(&fx.wh[i]);
    kz_app_cleanup(&fx.a.row);
    kz_app_cleanup(&fx.b.row);
    kz_trust_free(fx.cfg.trust);
    fx.cfg.trust = NULL;
    kz_config_cleanup(&fx.cfg);
    if (fx.dir[0])
        rm_tree(fx.dir);
    curl_global_cleanup();
}

static void handle_fixed(const char *method, const char *path, unsigned flags, const char *body);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    char err[256], admin_hash[65];
    enum kz_err e;
    int64_t l1, l2;
    int round;

    (void)argc;
    (void)argv;
    kz_fuzz_netguard_check();
    json_set_alloc_funcs(kz_malloc, kz_free);
    curl_global_init(CURL_GLOBAL_DEFAULT);

    e = kz_config_load(&fx.cfg, 0, NULL, 0, NULL, err, sizeof(err));
    FUZZ_CHECK(!e, "fixture: config: %s", err);
    fx.cfg.allow_private_targets = false;
    fx.cfg.allow_http_callbacks = false;
    fx.cfg.validation_timeout_ms = 1;
    fx.cfg.rate_limit = 0;
    fx.cfg.trust = kz_trust_new(fx.cfg.ca_file, err, sizeof(err)); /* as main() does */
    FUZZ_CHECK(fx.cfg.trust, "fixture: trust store: %s", err);
    if (!base)
        base = "/tmp";
    remove_stale(base);
    snprintf(fx.dir, sizeof(fx.dir), "%s/kzhook-fuzz-api.%ld.XXXXXX", base, (long)getpid());
    FUZZ_CHECK(mkdtemp(fx.dir), "fixture: mkdtemp %s failed", fx.dir);
    snprintf(fx.db, sizeof(fx.db), "%s/kzhook.db", fx.dir);
    kz_free(fx.cfg.db);
    fx.cfg.db = kz_strdup(fx.db);
    e = kz_store_open(&fx.st, fx.db, 20000, err, sizeof(err));
    FUZZ_CHECK(!e, "fixture: store open: %s", err);
    fx.idx = kz_subidx_new();
    e = kz_subidx_sync(fx.idx, fx.st, true);
    FUZZ_CHECK(!e, "fixture: subidx sync: %s", kz_err_str(e));
    kz_sha256_hex(ADMIN_TOKEN, strlen(ADMIN_TOKEN), admin_hash);
    fx.api = kz_api_new(&fx.cfg, fx.st, fx.idx, &fx.metrics, admin_hash, NULL);
    atexit(teardown);
    kz_id_token(tok_a, 43);
    kz_id_token(tok_b, 43);
    kz_id_token(tok_b_expired, 43);

    make_app(&fx.a, "{\"name\":\"fuzz-a\",\"objectIds\":[\"g1\",\"a1\",\"com.x.form\"]}", tok_a);
    make_app(&fx.b, "{\"name\":\"fuzz-b\",\"objectIds\":[\"*\"]}", tok_b);
    add_token(tok_b_expired, fx.b.row.id, kz_now_ms() - 1000);
    make_webhook(&fx.wh[0], "0f0e0d0c-0000-4000-8000-00000000000a", &fx.a, KZ_OBJ_GROUP, "g1",
                 true);
    make_webhook(&fx.wh[1], "0f0e0d0c-0000-4000-8000-00000000000b", &fx.b, KZ_OBJ_GROUP, "g2",
                 true);
    make_webhook(&fx.wh[2], "0f0e0d0c-0000-4000-8000-00000000000c", &fx.a, KZ_OBJ_ACTIONPACKAGE,
                 "com.x.form", false);
    restore(); /* inserts the webhooks */

    /* Not ADMIN_TOKEN: it is fixed, in the dictionary, and may sit in stored events that
     * later answers echo. Every secret below is random per run. */
    fx.secrets[fx.nsecrets++] = tok_a;
    fx.secrets[fx.nsecrets++] = tok_b;
    fx.secrets[fx.nsecrets++] = tok_b_expired;
    fx.secrets[fx.nsecrets++] = fx.a.secret;
    fx.secrets[fx.nsecrets++] = fx.a.refresh;
    fx.secrets[fx.nsecrets++] = fx.b.secret;
    fx.secrets[fx.nsecrets++] = fx.b.refresh;
    fx.secrets[fx.nsecrets++] = fx.wh[0].signing_secret;
    fx.secrets[fx.nsecrets++] = fx.wh[1].signing_secret;
    fx.secrets[fx.nsecrets++] = fx.wh[2].signing_secret;

    /* Calibration: the same read-only requests twice; the allocation count must not move in
     * the second round (the first may open read connections and the like). */
    l1 = l2 = 0;
    for (round = 0; round < 3; round++) {
        int64_t before = kz_alloc_live();

        handle_fixed("GET", "/healthz", 0, NULL);
        handle_fixed("GET", "/metrics", 0, NULL);
        handle_fixed("GET", "/v1/webhook", FL_TOKEN_A, NULL);
        handle_fixed("GET", "/v1/webhook/{W}", FL_TOKEN_A, NULL);
        handle_fixed("GET", "/v1/webhook/{W}/deliveries", FL_TOKEN_A, NULL);
        handle_fixed("GET", "/admin/v1/applications", FL_ADMIN, NULL);
        handle_fixed("POST", "/v1/webhook", FL_TOKEN_A,
                     "{\"objectId\":\"g1\",\"objectType\":\"Group\",\"eventTypes\":"
                     "[\"TextMessageCreated\"],\"callBackUrl\":\"https://10.0.0.1/kz\"}");
        handle_fixed("POST", "/v1/events", FL_ADMIN,
                     "{\"eventType\":\"TextMessageCreated\",\"groupId\":\"g1\","
                     "\"data\":{\"text\":\"hello\"}}");
        if (round == 1)
            l1 = kz_alloc_live() - before;
        if (round == 2)
            l2 = kz_alloc_live() - before;
    }
    fx.alloc_stable = l1 == 0 && l2 == 0;
    if (!fx.alloc_stable)
        fprintf(stderr,
                "fuzz_api: kz_alloc_live moved by %" PRId64 "/%" PRId64
                " over a round of read-only requests; not asserting it\n",
                l1, l2);
    return 0;
}

/* ==== one request ==== */

struct parsed {
    const char *method;
    unsigned flags;
    char *path, *query, *headers, *body;
    size_t body_len;
    char *query_raw, *headers_raw; /* before splitting (the split writes NULs) */
    size_t query_len, headers_len;
};

/* Copy of `s` (n bytes) with the fixture markers replaced; malloc'ed, NUL-terminated. */
static char *substitute(const char *s, size_t n)
{
    char wu[40], au[40];
    const char *marks[7][2] = {{"{W}", fx.wh[0].id}, {"{W2}", fx.wh[1].id}, {"{W3}", fx.wh[2].id},
                               {"{A}", fx.a.row.id}, {"{B}", fx.b.row.id},  {"{WU}", wu},
                               {"{AU}", au}};
    size_t cap = n * 40 + 1, o = 0, i = 0, k;
    char *out = malloc(cap);

    if (!out)
        abort();
    /* {WU} and {AU}: W's and A's ids in upper case (ids match in any case) */
    for (k = 0; k < sizeof(wu); k++) {
        wu[k] = (char)toupper((unsigned char)fx.wh[0].id[k]);
        au[k] = (char)toupper((unsigned char)fx.a.row.id[k]);
    }
    while (i < n) {
        for (k = 0; k < 7; k++) {
            size_t ml = strlen(marks[k][0]);

            if (n - i >= ml && !memcmp(s + i, marks[k][0], ml)) {
                memcpy(out + o, marks[k][1], strlen(marks[k][1]));
                o += strlen(marks[k][1]);
                i += ml;
                break;
            }
        }
        if (k == 7)
            out[o++] = s[i++];
    }
    out[o] = '\0';
    return out;
}

/* Substring search. Not instrumented and without memcmp(): libFuzzer learns the operands of
 * traced comparisons, and would copy the fixture's secrets into inputs (and from there into
 * stored events, which later answers echo legitimately). */
__attribute__((no_sanitize("coverage"))) static bool contains(const char *hay, size_t n,
                                                              const char *needle)
{
    size_t m = 0, i, j;

    while (needle[m])
        m++;
    if (!hay || !m || m > n)
        return false;
    for (i = 0; i + m <= n; i++) {
        for (j = 0; j < m && hay[i + j] == needle[j]; j++)
            ;
        if (j == m)
            return true;
    }
    return false;
}

static bool in_input(const struct parsed *in, const char *secret)
{
    return contains(in->path, strlen(in->path), secret) ||
           (in->query && contains(in->query_raw, in->query_len, secret)) ||
           (in->headers && contains(in->headers_raw, in->headers_len, secret)) ||
           contains(in->body, in->body_len, secret);
}

static bool is_auth_header(const char *name)
{
    static const char *const names[] = {"accessToken", "Authorization", "applicationId",
                                        "applicationSecret", "refreshToken"};
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!strcasecmp(name, names[i]))
            return true;
    }
    return false;
}

/* Splits "a/b//c" into at most 8 non-empty segments (as the router does) for the checks. */
static size_t segments(const char *path, char seg[8][80])
{
    size_t n = 0, l;
    const char *p = path;

    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        l = strcspn(p, "/");
        if (n < 8)
            snprintf(seg[n], 80, "%.*s", (int)(l < 79 ? l : 79), p);
        n++;
        p += l;
    }
    return n;
}

static void check_response(const struct kz_req *req, const struct parsed *in, bool fuzz_auth)
{
    const char *body = kz_buf_cstr(&req->out);
    int st = req->status;
    char seg[8][80];
    size_t n = segments(in->path, seg), i;
    bool ok2xx = st >= 200 && st < 300;
    unsigned f = in->flags;

    FUZZ_CHECK(st >= 100 && st <= 599, "status %d", st);
    stat_count[stat_route(n, seg)][st / 100]++;
    FUZZ_CHECK(st < 500, "status %d for a client request: %.300s", st, body);
    FUZZ_CHECK(req->content_type, "%s", "no content type");
    if (!strncmp(req->content_type, "application/json", 16)) {
        json_error_t jerr;
        json_t *doc = json_loadb(req->out.data ? req->out.data : "", req->out.len, 0, &jerr);

        FUZZ_CHECK(doc, "status %d answer is not valid JSON (%s at col %d): %.300s", st, jerr.text,
                   jerr.column, body);
        if (st >= 400) {
            const char *code = json_string_value(json_object_get(doc, "errorCode"));
            const char *cat = json_string_value(json_object_get(doc, "errorCategoryKey"));
            const char *want = NULL, *alt = NULL;

            FUZZ_CHECK(json_is_string(json_object_get(doc, "message")) && code && cat,
                       "error answer without message/errorCode/errorCategoryKey: %.300s", body);
            switch (st) {
            case 400:
                want = "InvalidParameters";
                alt = "CallbackValidationFailed";
                break;
            case 401:
                want = "Unauthenticated";
                alt = "InvalidToken";
                break;
            case 403:
                want = "Forbidden";
                break;
            case 404:
                want = "NotFound";
                break;
            case 405:
                want = "MethodNotAllowed";
                break;
            case 413:
                want = "PayloadTooLarge";
                break;
            case 429:
                want = "Throttled";
                break;
            default:
                break;
            }
            FUZZ_CHECK(want && (!strcmp(code, want) || (alt && !strcmp(code, alt))),
                       "status %d with errorCode %s", st, code);
            if (st == 401)
                FUZZ_CHECK(!strcmp(cat, "AuthException"), "401 with category %s", cat);
            if (st == 405)
                FUZZ_CHECK(req->allow && *req->allow, "%s", "405 without Allow");
            if (st == 429)
                FUZZ_CHECK(req->retry_after[0], "%s", "429 without Retry-After");
        }
        json_decref(doc);
    }
    /* A secret the request itself carried may be echoed (e.g. as an unknown id in a 404). */
    for (i = 0; i < fx.nsecrets; i++)
        FUZZ_CHECK(in_input(in, fx.secrets[i]) ||
                       !contains(req->out.data, req->out.len, fx.secrets[i]),
                   "answer %d leaks secret #%zu: %.300s", st, i, body);
    if (!ok2xx)
        return;
    /* fixed path segments match in any ASCII case, as the api routes them; the console's static
     * files (/ui/...) hold no data: the page asks for a token and calls the API with it */
    if (!f && !fuzz_auth)
        FUZZ_CHECK((n == 1 && (!strcasecmp(seg[0], "healthz") || !strcasecmp(seg[0], "metrics") ||
                               !strcasecmp(seg[0], "openapi.json"))) ||
                       (n >= 1 && !strcasecmp(seg[0], "ui")),
                   "%d without credentials for %s %.200s", st, in->method, in->path);
    if (n >= 1 && (!strcasecmp(seg[0], "admin") ||
                   (n == 2 && !strcasecmp(seg[0], "v1") && !strcasecmp(seg[1], "events"))))
        FUZZ_CHECK((f & FL_ADMIN) || fuzz_auth, "%d on an admin route without the admin token: %s",
                   st, in->path);
    if (fuzz_auth || (f & (FL_ADMIN | FL_APPCREDS_A | FL_WRONGSECRET_A)))
        return;
    /* Only one application's credentials: never the other's webhooks. */
    if ((f & (FL_TOKEN_A | FL_BEARER_A)) && !(f & FL_TOKEN_B))
        FUZZ_CHECK(!contains(req->out.data, req->out.len, fx.wh[1].id),
                   "A sees B's webhook: %s %.200s -> %.300s", in->method, in->path, body);
    if ((f & FL_TOKEN_B) && !(f & (FL_TOKEN_A | FL_BEARER_A))) {
        FUZZ_CHECK(!contains(req->out.data, req->out.len, fx.wh[0].id) &&
                       !contains(req->out.data, req->out.len, fx.wh[2].id),
                   "B sees A's webhook: %s %.200s -> %.300s", in->method, in->path, body);
    }
}

static void fill_conn(struct conn *cn, unsigned f)
{
    static const char admin[] = "Bearer " ADMIN_TOKEN;
    static char bearer_a[64];

    if (!bearer_a[0])
        snprintf(bearer_a, sizeof(bearer_a), "Bearer %s", tok_a);

    cn->nh = cn->nq = 0;
    if (f & FL_ADMIN)
        add_header(cn, "Authorization", admin);
    if (f & FL_TOKEN_A)
        add_header(cn, "accessToken", tok_a);
    if (f & FL_TOKEN_B)
        add_header(cn, "accessToken", tok_b);
    if (f & FL_BEARER_A)
        add_header(cn, "Authorization", bearer_a);
    if (f & FL_EXPIRED_B)
        add_header(cn, "accessToken", tok_b_expired);
    if (f & FL_EMPTY_TOKEN)
        add_header(cn, "accessToken", "");
    if (f & (FL_APPCREDS_A | FL_WRONGSECRET_A)) {
        add_header(cn, "applicationId", fx.a.row.id);
        add_header(cn, "applicationSecret", (f & FL_APPCREDS_A) ? fx.a.secret : "nope");
        add_header(cn, "refreshToken", fx.a.refresh);
    }
}

/* Runs one parsed request with every check. */
static void handle(const struct parsed *in, struct conn *cn, bool fuzz_auth)
{
    struct kz_req req;
    int64_t before, after;
    bool changed;

    memset(&req, 0, sizeof(req));
    kz_req_init(&req);
    req.method = in->method;
    req.path = in->path;
    req.body = in->body;
    req.body_len = in->body_len;
    before = kz_alloc_live();
    run_request(&req, cn);
    check_response(&req, in, fuzz_auth);
    changed = req.status >= 200 && req.status < 300 && strcmp(in->method, "GET") &&
              strcmp(in->method, "HEAD");
    kz_req_cleanup(&req);
    after = kz_alloc_live();
    if (fx.alloc_stable && !changed)
        FUZZ_CHECK(after == before,
                   "%s %.200s (status %d): kz_alloc_live %" PRId64 " -> %" PRId64 " (leak)",
                   in->method, in->path, req.status, before, after);
    if (changed)
        restore();
}

static void handle_fixed(const char *method, const char *path, unsigned flags, const char *body)
{
    struct parsed in;
    struct conn cn;

    memset(&in, 0, sizeof(in));
    memset(&cn, 0, sizeof(cn));
    in.method = method;
    in.flags = flags;
    in.path = substitute(path, strlen(path));
    in.body_len = body ? strlen(body) : 0;
    in.body = malloc(in.body_len ? in.body_len : 1);
    if (!in.body)
        abort();
    if (body)
        memcpy(in.body, body, in.body_len);
    fill_conn(&cn, flags);
    handle(&in, &cn, false);
    free(in.path);
    free(in.body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size, *piece;
    struct parsed in;
    struct conn cn;
    size_t len;
    bool fuzz_auth = false;
    char *line, *next;

    if (size < 2)
        return 0;
    memset(&in, 0, sizeof(in));
    memset(&cn, 0, sizeof(cn));
    in.method = methods[data[0] % (sizeof(methods) / sizeof(methods[0]))];
    in.flags = data[1];
    p += 2;
    piece = fuzz_next_piece(&p, end, &len);
    in.path = substitute((const char *)piece, len);
    piece = fuzz_next_piece(&p, end, &len);
    in.query = substitute((const char *)piece, len);
    piece = fuzz_next_piece(&p, end, &len);
    in.headers = substitute((const char *)piece, len);
    in.query_raw = strdup(in.query);
    in.headers_raw = strdup(in.headers);
    if (!in.query_raw || !in.headers_raw)
        abort();
    in.query_len = strlen(in.query_raw);
    in.headers_len = strlen(in.headers_raw);
    in.body_len = (size_t)(end - p);
    in.body = malloc(in.body_len ? in.body_len : 1); /* exact size: ASan sees over-reads */
    if (!in.body)
        abort();
    if (in.body_len)
        memcpy(in.body, p, in.body_len);
    /* The api reads C strings up to the first NUL: cut the path there, as a transport would. */
    fill_conn(&cn, in.flags);

    for (line = in.headers; line && *line; line = next) {
        char *colon, *v;

        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        colon = strchr(line, ':');
        if (!colon || colon == line)
            continue;
        *colon = '\0';
        v = colon + 1;
        while (*v == ' ')
            v++;
        if (is_auth_header(line))
            fuzz_auth = true;
        add_header(&cn, line, v);
    }
    for (line = in.query; line && *line; line = next) {
        char *eq;

        next = strchr(line, '&');
        if (next)
            *next++ = '\0';
        eq = strchr(line, '=');
        if (eq)
            *eq++ = '\0';
        if (cn.nq < MAX_PAIRS) {
            cn.qname[cn.nq] = line;
            cn.qval[cn.nq] = eq ? eq : "";
            cn.nq++;
        }
    }
    handle(&in, &cn, fuzz_auth);
    free(in.path);
    free(in.query);
    free(in.headers);
    free(in.query_raw);
    free(in.headers_raw);
    free(in.body);
    return 0;
}
