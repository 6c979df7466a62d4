/* main.c — wires the modules together: `serve`, and the operator commands `app`, `webhook` and
 * `publish`. */
#include "alloc.h"
#include "api.h"
#include "config.h"
#include "dispatch.h"
#include "http.h"
#include "id.h"
#include "log.h"
#include "outbound.h"
#include "sign.h"
#include "listen.h"
#include "stats.h"
#include "store.h"
#include "subidx.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define STORE_QUEUE_MAX 20000

static void usage(FILE *f)
{
    fputs(
        "usage: kzhook serve [options]\n"
        "       kzhook app create --name NAME --object-ids ID[,ID...] [--db PATH]\n"
        "       kzhook app list [--db PATH]\n"
        "       kzhook app delete APPLICATION_ID [--db PATH]\n"
        "       kzhook publish --event-type TYPE [--group ID] [--action ID] [--action-package ID]\n"
        "                      [--event-id ID] [--from-user PHONE] [--from-user-id ID]\n"
        "                      [--from-user-name NAME] [--data JSON] [--db PATH]\n"
        "       kzhook webhook list [--app APPLICATION_ID] [--db PATH]\n"
        "       kzhook webhook get WEBHOOK_ID [--db PATH]\n"
        "       kzhook webhook test WEBHOOK_ID [--event-type TYPE] [--data JSON] [--db PATH]\n"
        "       kzhook webhook retry WEBHOOK_ID DELIVERY_ID [--db PATH]\n"
        "       kzhook webhook delivery WEBHOOK_ID DELIVERY_ID [--db PATH]\n"
        "       kzhook webhook rotate WEBHOOK_ID [--overlap DUR] [--db PATH]\n"
        "       kzhook listen [--host 127.0.0.1] [--port 9000] [--secret whsec_...]\n"
        "       kzhook version\n"
        "serve options (each also an environment variable, see README):\n"
        "  --listen HOST:PORT  --db PATH|postgresql://...  --admin-token T  --public-url URL\n"
        "  --ca-file PEM  --allow-private-targets  --allow-http-callbacks  --retry-schedule LIST\n"
        "  --delivery-timeout DUR  --lease-margin DUR  --validation-timeout DUR  --token-ttl DUR\n"
        "  --rate-limit N\n"
        "  --tls-cert PEM --tls-key PEM  --retention DUR  --threads N  --max-connections N\n"
        "  --max-connections-per-ip N  --per-endpoint-concurrency N  --max-webhooks-per-app N\n"
        "  --max-fanout N  --admin-token-file PATH  --node-id ID\n",
        f);
}

/* Startup failures are log lines too (README "Configuration": logs are JSON lines on stderr). */
static void fatal(const char *what, const char *detail)
{
    char esc[600];

    kz_log("fatal", what, "\"error\":\"%s\"", kz_log_esc(detail, esc, sizeof(esc)));
}

/* The metrics refresher's backlog count (metrics.h): the store's, off the API threads. */
static enum kz_err backlog_count(void *arg, int64_t now, int64_t *due, int64_t *scheduled,
                                 int64_t *inflight)
{
    return kz_store_backlog(arg, now, due, scheduled, inflight);
}

/* Everything a running command holds; one of these per process (docs/STYLE.md rule 10). */
struct kz_ctx {
    struct kz_config cfg;
    struct kz_store *st;
    struct kz_subidx *idx;
    struct kz_metrics metrics;
    struct kz_api *api;
    struct kz_dispatch *dispatch;
    struct kz_http *http;
    char admin_hash[65];
    char node_esc[700]; /* this node's id, escaped for log lines */
};

static void ctx_close(struct kz_ctx *ctx)
{
    kz_trust_free(ctx->cfg.trust);
    ctx->cfg.trust = NULL;
    kz_api_free(ctx->api);
    kz_subidx_free(ctx->idx);
    kz_store_close(ctx->st);
    kz_config_cleanup(&ctx->cfg);
}

/* Opens the store and loads the subscription index. */
static int ctx_open(struct kz_ctx *ctx)
{
    char err[256] = "";
    enum kz_err e = kz_store_open(&ctx->st, ctx->cfg.db, STORE_QUEUE_MAX, err, sizeof(err));

    if (e) {
        fatal("cannot open the store", err[0] ? err : kz_err_str(e));
        return 1;
    }
    ctx->idx = kz_subidx_new();
    e = kz_subidx_sync(ctx->idx, ctx->st, true);
    if (e) {
        fatal("cannot load webhooks", kz_err_str(e));
        return 1;
    }
    return 0;
}

/* The admin token: --admin-token wins; else the hash stored at first start; else generate one,
 * store only its hash, and print the token once. */
static int admin_token(struct kz_ctx *ctx)
{
    struct kz_buf v;
    enum kz_err e;
    char token[44];
    struct kz_op op;

    if (ctx->cfg.admin_token) {
        kz_sha256_hex(ctx->cfg.admin_token, strlen(ctx->cfg.admin_token), ctx->admin_hash);
        return 0;
    }
    kz_buf_init(&v, 128);
    e = kz_store_meta_get(ctx->st, "admin_token_hash", &v);
    if (!e && v.len == 64) {
        memcpy(ctx->admin_hash, v.data, 65);
        kz_buf_cleanup(&v);
        return 0;
    }
    kz_buf_cleanup(&v);
    if (e && e != KZ_ERR_NOTFOUND) {
        fatal("cannot read the admin token", kz_err_str(e));
        return 1;
    }
    kz_id_token(token, 43);
    kz_sha256_hex(token, 43, ctx->admin_hash);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_META_SET;
    op.u.meta.key = "admin_token_hash";
    op.u.meta.value = ctx->admin_hash;
    e = kz_store_exec(ctx->st, &op);
    if (e) {
        fatal("cannot store the admin token", kz_err_str(e));
        return 1;
    }
    printf("admin token: %s\n", token);
    printf("(shown once; only its hash is stored. Pass --admin-token-file, KZHOOK_ADMIN_TOKEN or "
           "--admin-token to set your own.)\n");
    fflush(stdout);
    return 0;
}

/* Connections (--max-connections) and delivery sockets (up to 2048) need more descriptors than
 * the usual soft limit of 1024: take what the hard limit allows, up to 65536. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl))
        return;
    if (rl.rlim_cur < 65536 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max < 65536 ? rl.rlim_max : 65536;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void wake(void *arg)
{
    kz_dispatch_wake(arg);
}

/* Store LISTEN thread (PostgreSQL): another node changed webhooks or made deliveries due. */
static void on_notify(void *arg, int what)
{
    struct kz_ctx *ctx = arg;

    if (what == KZ_NOTIFY_WEBHOOKS) {
        kz_subidx_sync(ctx->idx, ctx->st, false);
        /* the dispatcher checks its queued rows against the change before it starts any */
        kz_dispatch_wake(ctx->dispatch);
    } else if (what == KZ_NOTIFY_DUE)
        kz_dispatch_wake(ctx->dispatch);
}

/* The database URL for logs: a password in postgresql://user:password@host is masked. */
static const char *redact_db(const char *db, char *out, size_t n)
{
    const char *scheme = strstr(db, "://"), *at, *colon;

    snprintf(out, n, "%s", db);
    if (!scheme)
        return out;
    at = strchr(scheme + 3, '@');
    colon = strchr(scheme + 3, ':');
    if (at && colon && colon < at)
        snprintf(out, n, "%.*s:***%s", (int)(colon - db), db, at);
    return out;
}

/* This node's id (README.md "Scaling out"): --node-id, else "<hostname>/<listen host>:<port>",
 * which stays the same across restarts of one node and differs between nodes on one host. */
static int node_start(struct kz_ctx *ctx)
{
    char host[256] = "localhost", id[600], esc[700];
    int64_t resumed = 0;
    enum kz_err e;

    if (ctx->cfg.node_id) {
        snprintf(id, sizeof(id), "%s", ctx->cfg.node_id);
    } else {
        if (gethostname(host, sizeof(host) - 1))
            snprintf(host, sizeof(host), "localhost");
        host[sizeof(host) - 1] = '\0';
        snprintf(id, sizeof(id), "%s/%s:%d", host, ctx->cfg.listen_host, ctx->cfg.listen_port);
    }
    e = kz_store_node_start(ctx->st, id, &resumed);
    if (e == KZ_ERR_INVALID) {
        fatal("invalid configuration",
              "node id: 1 to 128 printable ASCII characters without spaces (--node-id)");
        return 1;
    }
    if (e) {
        fatal("cannot register this node", kz_err_str(e));
        return 1;
    }
    kz_log_esc(id, esc, sizeof(esc));
    if (resumed) {
        atomic_fetch_add(&ctx->metrics.resumed_deliveries, resumed);
        kz_log("info", "took back this node's unfinished claims", "\"node\":\"%s\",\"count\":%lld",
               esc, (long long)resumed);
    }
    snprintf(ctx->node_esc, sizeof(ctx->node_esc), "%s", esc);
    return 0;
}

/* Once a second: release the claims of nodes whose heartbeat stopped (PostgreSQL; a no-op on
 * SQLite), log and count each. */
static void takeover(struct kz_ctx *ctx)
{
    struct kz_op op;
    struct kz_takeover nodes[KZ_TAKEOVER_NODES_MAX];
    char esc[300];
    size_t i;

    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_TAKEOVER;
    op.u.takeover.nodes = nodes;
    op.u.takeover.now = kz_now_ms();
    if (kz_store_exec(ctx->st, &op) || !op.u.takeover.released)
        return;
    for (i = 0; i < op.u.takeover.n_nodes; i++) {
        const struct kz_takeover *t = &op.u.takeover.nodes[i];

        atomic_fetch_add(&ctx->metrics.takeovers, 1);
        atomic_fetch_add(&ctx->metrics.takeover_deliveries, t->deliveries);
        kz_log("warn", "took over the claimed deliveries of a dead node",
               "\"deadNode\":\"%s\",\"count\":%lld,\"node\":\"%s\"",
               kz_log_esc(t->node_id, esc, sizeof(esc)), (long long)t->deliveries, ctx->node_esc);
    }
    kz_dispatch_wake(ctx->dispatch);
}

static int serve(struct kz_ctx *ctx)
{
    char err[256] = "";
    sigset_t sigs;
    struct timespec tick = {1, 0};
    struct kz_api_hooks hooks;
    int sig, rc = 1;
    struct kz_op op;
    int64_t last_prune = 0, last_release = kz_now_ms();
    /* Prune often enough that a short retention is honoured, rarely enough to stay cheap. */
    int64_t prune_every = ctx->cfg.retention_ms / 4 < 1000    ? 1000
                          : ctx->cfg.retention_ms / 4 > 10000 ? 10000
                                                              : ctx->cfg.retention_ms / 4;
    char esc[300], dbname[300];

    /* Every thread inherits this mask; the main thread alone takes the signals. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    raise_fd_limit();
    ctx->cfg.trust = kz_trust_new(ctx->cfg.ca_file, err, sizeof(err));
    if (!ctx->cfg.trust) {
        fatal("cannot set up outbound TLS", err);
        goto out;
    }
    if (ctx_open(ctx) || admin_token(ctx))
        goto out;
    /* What this node had claimed when it last stopped or died goes back (SQLite, one node:
     * whatever was inflight), and its heartbeat starts. */
    if (node_start(ctx))
        goto out;
    ctx->metrics.stats = kz_stats_new(ctx->st);
    if (kz_stats_start(ctx->metrics.stats)) {
        fatal("cannot start the statistics flusher", "out of resources");
        goto out;
    }
    if (kz_dispatch_start(&ctx->dispatch, &ctx->cfg, ctx->st, &ctx->metrics)) {
        fatal("cannot start the delivery engine", "out of resources");
        goto out;
    }
    kz_store_on_notify(ctx->st, on_notify, ctx);
    if (kz_metrics_refresher_start(&ctx->metrics, backlog_count, ctx->st)) {
        fatal("cannot start the metrics refresher", "out of resources");
        goto out;
    }
    hooks.wake_dispatch = wake;
    hooks.reserve = kz_dispatch_reserve;
    hooks.handoff = kz_dispatch_handoff;
    hooks.arg = ctx->dispatch;
    ctx->api = kz_api_new(&ctx->cfg, ctx->st, ctx->idx, &ctx->metrics, ctx->admin_hash, &hooks);
    if (kz_http_start(&ctx->http, &ctx->cfg, ctx->api, &ctx->metrics, err, sizeof(err))) {
        fatal("cannot start the API", err);
        goto out;
    }
    kz_log("info", "listening", "\"listen\":\"%s:%d\",\"db\":\"%s\",\"tls\":%s",
           ctx->cfg.listen_host, ctx->cfg.listen_port,
           kz_log_esc(redact_db(ctx->cfg.db, dbname, sizeof(dbname)), esc, sizeof(esc)),
           ctx->cfg.tls_cert ? "true" : "false");
    for (;;) {
        int64_t now;

        sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT)
            break;
        /* Housekeeping, once a second: pick up webhook changes made by the CLI or another node;
         * prune succeeded deliveries past retention in small batches. */
        kz_subidx_sync(ctx->idx, ctx->st, false);
        takeover(ctx);
        now = kz_now_ms();
        if (now - last_release >= 10000) {
            /* Expired leases of rows no live node holds (claimed by a kzhook without node ids)
             * go back to pending; a dead node's claims are taken over sooner (above). */
            memset(&op, 0, sizeof(op));
            op.type = KZ_OP_RELEASE;
            op.u.release.now = now;
            kz_store_exec(ctx->st, &op);
            last_release = now;
        }
        if (now - last_prune >= prune_every) {
            memset(&op, 0, sizeof(op));
            op.type = KZ_OP_PRUNE;
            op.u.prune.before = now - ctx->cfg.retention_ms;
            op.u.prune.limit = 1000;
            if (!kz_store_exec(ctx->st, &op) && op.u.prune.pruned == 1000)
                continue; /* more to prune: go again next tick */
            last_prune = now;
        }
    }
    kz_log("info", "shutting down", "\"signal\":%d", sig);
    /* Stop taking work, answer every publish already submitted, close the API, then let the
     * deliveries in flight finish (the dispatcher keeps running throughout). */
    kz_http_quiesce(ctx->http);
    kz_api_close(ctx->api);
    for (int i = 0; i < 500 && kz_api_pending(ctx->api); i++)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    /* ... and let the answers of resumed requests reach their clients before the sockets close
     * (idle keep-alive connections hold no request; a slow reader gets at most 2 s more) */
    for (int i = 0; i < 200 && kz_http_active(ctx->http); i++)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    kz_http_stop(ctx->http);
    ctx->http = NULL;
    kz_store_on_notify(ctx->st, NULL, NULL);
    kz_dispatch_stop(ctx->dispatch, 5000);
    ctx->dispatch = NULL;
    rc = 0;
out:
    kz_http_stop(ctx->http);
    ctx->http = NULL;
    if (ctx->st)
        kz_store_on_notify(ctx->st, NULL, NULL);
    kz_dispatch_stop(ctx->dispatch, 0);
    ctx->dispatch = NULL;
    kz_metrics_refresher_stop(&ctx->metrics);
    kz_stats_free(ctx->metrics.stats); /* its last counts, before the store closes */
    ctx->metrics.stats = NULL;
    ctx_close(ctx);
    return rc;
}

/* Pulls "--flag value" / "--flag=value" for the CLI commands; NULL when absent. */
static const char *flag(int argc, char **argv, const char *name, int *used)
{
    size_t n = strlen(name);
    int i;

    for (i = 0; i < argc; i++) {
        if (!strncmp(argv[i], name, n) && argv[i][n] == '=') {
            used[i] = 1;
            return argv[i] + n + 1;
        }
        if (!strcmp(argv[i], name) && i + 1 < argc) {
            used[i] = used[i + 1] = 1;
            return argv[i + 1];
        }
    }
    return NULL;
}

static int cli_prepare(struct kz_ctx *ctx, const char *db)
{
    char err[256];

    if (kz_config_load(&ctx->cfg, 0, NULL, 0, NULL, err, sizeof(err))) {
        fprintf(stderr, "kzhook: %s\n", err);
        return 1;
    }
    if (db) {
        kz_free(ctx->cfg.db);
        ctx->cfg.db = kz_strdup(db);
    }
    if (ctx_open(ctx))
        return 1;
    ctx->api = kz_api_new(&ctx->cfg, ctx->st, ctx->idx, &ctx->metrics, "", NULL);
    return 0;
}

static int leftover(int argc, char **argv, const int *used, int allow_positional, const char **pos)
{
    int i;

    for (i = 0; i < argc; i++) {
        if (used[i])
            continue;
        if (allow_positional && !*pos && strncmp(argv[i], "--", 2)) {
            *pos = argv[i];
            continue;
        }
        fprintf(stderr, "kzhook: unexpected argument \"%s\"\n", argv[i]);
        return 1;
    }
    return 0;
}

static void print_app(void *arg, const struct kz_app *a)
{
    json_t *arr = arg;
    json_t *ids = json_loads(a->object_ids_json, 0, NULL);

    json_array_append_new(arr, json_pack("{s:s, s:s, s:o, s:I}", "applicationId", a->id, "name",
                                         a->name, "objectIds", ids ? ids : json_array(),
                                         "createdAt", (json_int_t)a->created_at));
}

static int cmd_app(struct kz_ctx *ctx, int argc, char **argv)
{
    int used[64] = {0};
    const char *pos = NULL;
    int rc = 1;

    if (argc < 1 || argc > 60) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[0], "create")) {
        const char *name = flag(argc - 1, argv + 1, "--name", used);
        const char *ids = flag(argc - 1, argv + 1, "--object-ids", used);
        const char *db = flag(argc - 1, argv + 1, "--db", used);
        json_t *body, *arr;
        char *text, *copy, *tok, *save = NULL;
        struct kz_buf out;
        int status = 0;

        if (leftover(argc - 1, argv + 1, used, 0, &pos) || !name || !ids) {
            fprintf(stderr, "kzhook: app create needs --name and --object-ids\n");
            return 2;
        }
        if (cli_prepare(ctx, db))
            goto out;
        arr = json_array();
        copy = kz_strdup(ids);
        for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
            json_array_append_new(arr, json_string(tok));
        kz_free(copy);
        body = json_pack("{s:s, s:o}", "name", name, "objectIds", arr);
        text = json_dumps(body, JSON_COMPACT);
        json_decref(body);
        kz_buf_init(&out, 1024 * 1024);
        kz_api_app_create(ctx->api, text ? text : "", text ? strlen(text) : 0, &status, &out);
        kz_free(text); /* jansson allocates through kz_malloc: see json_set_alloc_funcs */
        fprintf(status == 201 ? stdout : stderr, "%s\n", kz_buf_cstr(&out));
        kz_buf_cleanup(&out);
        rc = status == 201 ? 0 : 1;
    } else if (!strcmp(argv[0], "list")) {
        json_t *arr = json_array(), *o;
        const char *db = flag(argc - 1, argv + 1, "--db", used);

        if (leftover(argc - 1, argv + 1, used, 0, &pos) || cli_prepare(ctx, db)) {
            json_decref(arr);
            goto out;
        }
        if (kz_store_app_list(ctx->st, print_app, arr)) {
            json_decref(arr);
            goto out;
        }
        o = json_pack("{s:o}", "applications", arr);
        json_dumpf(o, stdout, JSON_COMPACT);
        putchar('\n');
        json_decref(o);
        rc = 0;
    } else if (!strcmp(argv[0], "delete")) {
        struct kz_op op;
        enum kz_err e;
        const char *db = flag(argc - 1, argv + 1, "--db", used);

        if (leftover(argc - 1, argv + 1, used, 1, &pos) || cli_prepare(ctx, db))
            goto out;
        if (!pos) {
            fprintf(stderr, "kzhook: app delete needs an application id\n");
            goto out;
        }
        memset(&op, 0, sizeof(op));
        op.type = KZ_OP_APP_DELETE;
        op.u.id = pos;
        e = kz_store_exec(ctx->st, &op);
        if (e) {
            fprintf(stderr, "kzhook: cannot delete %s: %s\n", pos, kz_err_str(e));
            goto out;
        }
        printf("{}\n");
        rc = 0;
    } else {
        usage(stderr);
        return 2;
    }
out:
    ctx_close(ctx);
    return rc;
}

/* kzhook webhook list|get|test|retry|delivery|rotate: the operator's view of every application's
 * webhooks, straight on the database (a running server picks up test events and retries: SQLite
 * at its next poll, PostgreSQL at once through NOTIFY). JSON on stdout; errors on stderr. */
static int cmd_webhook(struct kz_ctx *ctx, int argc, char **argv)
{
    int used[64] = {0};
    const char *pos[2] = {NULL, NULL};
    const char *db, *app = NULL, *type = NULL, *data = NULL, *overlap = NULL;
    const char *cmd;
    int want, npos = 0, status = 0, rc = 1, i;
    struct kz_buf out;
    json_t *body = NULL;
    char *text = NULL;

    if (argc < 1 || argc > 60) {
        usage(stderr);
        return 2;
    }
    cmd = argv[0];
    argc--;
    argv++;
    want = !strcmp(cmd, "list")                                                    ? 0
           : !strcmp(cmd, "get") || !strcmp(cmd, "test") || !strcmp(cmd, "rotate") ? 1
                                                                                   : 2;
    if (strcmp(cmd, "list") && strcmp(cmd, "get") && strcmp(cmd, "test") && strcmp(cmd, "retry") &&
        strcmp(cmd, "delivery") && strcmp(cmd, "rotate")) {
        usage(stderr);
        return 2;
    }
    db = flag(argc, argv, "--db", used);
    if (!strcmp(cmd, "list"))
        app = flag(argc, argv, "--app", used);
    if (!strcmp(cmd, "test")) {
        type = flag(argc, argv, "--event-type", used);
        data = flag(argc, argv, "--data", used);
    }
    if (!strcmp(cmd, "rotate"))
        overlap = flag(argc, argv, "--overlap", used);
    for (i = 0; i < argc; i++) {
        if (used[i])
            continue;
        if (npos < want && strncmp(argv[i], "--", 2)) {
            pos[npos++] = argv[i];
            continue;
        }
        fprintf(stderr, "kzhook: unexpected argument \"%s\"\n", argv[i]);
        return 2;
    }
    if (npos < want) {
        fprintf(stderr, "kzhook: webhook %s needs %s\n", cmd,
                want == 1 ? "a webhook id" : "a webhook id and a delivery id");
        return 2;
    }
    if (!strcmp(cmd, "test") && (type || data)) {
        body = json_object();
        if (type)
            json_object_set_new(body, "eventType", json_string(type));
        if (data) {
            json_error_t jerr;
            json_t *d = json_loads(data, JSON_DECODE_ANY, &jerr);

            if (!d) {
                fprintf(stderr, "kzhook: --data is not JSON: %s\n", jerr.text);
                json_decref(body);
                return 2;
            }
            json_object_set_new(body, "data", d);
        }
        text = json_dumps(body, JSON_COMPACT);
        json_decref(body);
    }
    if (overlap) {
        body = json_pack("{s:s}", "overlap", overlap);
        text = body ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
        if (!text) {
            fprintf(stderr, "kzhook: --overlap must be a duration such as 24h\n");
            return 2;
        }
    }
    kz_buf_init(&out, 64 * 1024 * 1024);
    if (cli_prepare(ctx, db))
        goto out;
    kz_api_cli_webhook(ctx->api, cmd, !strcmp(cmd, "list") ? app : pos[0],
                       !strcmp(cmd, "test") || !strcmp(cmd, "rotate") ? text : pos[1], &status,
                       &out);
    rc = status >= 200 && status <= 299 ? 0 : 1;
    fprintf(rc ? stderr : stdout, "%s\n", kz_buf_cstr(&out));
out:
    kz_free(text);
    kz_buf_cleanup(&out);
    ctx_close(ctx);
    return rc;
}

static int cmd_publish(struct kz_ctx *ctx, int argc, char **argv)
{
    static const char *const fields[][2] = {
        {"--event-type", "eventType"},
        {"--group", "groupId"},
        {"--action", "actionId"},
        {"--action-package", "actionPackageId"},
        {"--event-id", "eventId"},
        {"--from-user", "fromUser"},
        {"--from-user-id", "fromUserId"},
        {"--from-user-name", "fromUserName"},
        {"--from-user-pic", "fromUserProfilePic"},
    };
    int used[64] = {0};
    const char *pos = NULL, *data, *db;
    json_t *body = json_object(), *d;
    char *text = NULL;
    struct kz_buf out;
    int status = 0, rc = 1;
    size_t i;

    kz_buf_init(&out, 16 * 1024 * 1024);
    if (argc > 60)
        goto out;
    for (i = 0; i < KZ_ARRAY_LEN(fields); i++) {
        const char *v = flag(argc, argv, fields[i][0], used);

        if (v)
            json_object_set_new(body, fields[i][1], json_string(v));
    }
    data = flag(argc, argv, "--data", used);
    if (data) {
        json_error_t jerr;

        d = json_loads(data, JSON_DECODE_ANY, &jerr);
        if (!d) {
            fprintf(stderr, "kzhook: --data is not JSON: %s\n", jerr.text);
            goto out;
        }
        json_object_set_new(body, "data", d);
    }
    db = flag(argc, argv, "--db", used);
    if (leftover(argc, argv, used, 0, &pos) || cli_prepare(ctx, db))
        goto out;
    text = json_dumps(body, JSON_COMPACT);
    if (!text)
        goto out;
    kz_api_publish_sync(ctx->api, text, strlen(text), &status, &out);
    fprintf(status == 202 ? stdout : stderr, "%s\n", kz_buf_cstr(&out));
    rc = status == 202 ? 0 : 1;
out:
    kz_free(text);
    json_decref(body);
    kz_buf_cleanup(&out);
    ctx_close(ctx);
    return rc;
}

int main(int argc, char **argv)
{
    struct kz_ctx ctx;
    char err[256];
    int rc;

    memset(&ctx, 0, sizeof(ctx));
    /* glibc gives every thread that allocates its own arena (64 MiB of address space, several
     * MiB resident each); our threads allocate little, so two arenas keep RSS small. */
    mallopt(M_ARENA_MAX, 2);
    /* Keep freed memory at the top of the heap instead of giving it back to the kernel after
     * every burst: each trim is a brk() whose TLB shootdown interrupts every CPU, and the next
     * allocation grows the heap again (docs/PERFORMANCE.md, round two). Peaks stay bounded by
     * the backlog living in the store. */
    mallopt(M_TRIM_THRESHOLD, 32 * 1024 * 1024);
    mallopt(M_TOP_PAD, 4 * 1024 * 1024);
    mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);
    json_set_alloc_funcs(kz_malloc, kz_free);
    if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
        fprintf(stderr, "kzhook: curl_global_init failed\n");
        return 1;
    }
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        rc = argc < 2 ? 2 : 0;
    } else if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("kzhook %s\n", KZ_VERSION);
        rc = 0;
    } else if (!strcmp(argv[1], "serve")) {
        if (kz_config_load(&ctx.cfg, argc, argv, 2, NULL, err, sizeof(err))) {
            fatal("invalid configuration", err);
            kz_config_cleanup(&ctx.cfg);
            rc = 2;
        } else {
            rc = serve(&ctx);
        }
    } else if (!strcmp(argv[1], "app")) {
        rc = cmd_app(&ctx, argc - 2, argv + 2);
    } else if (!strcmp(argv[1], "webhook")) {
        rc = cmd_webhook(&ctx, argc - 2, argv + 2);
    } else if (!strcmp(argv[1], "publish")) {
        rc = cmd_publish(&ctx, argc - 2, argv + 2);
    } else if (!strcmp(argv[1], "listen")) {
        rc = kz_listen_main(argc - 2, argv + 2);
    } else {
        usage(stderr);
        rc = 2;
    }
    curl_global_cleanup();
    if (kz_alloc_live() != 0) {
        kz_log("error", "allocations live at exit", "\"count\":%lld", (long long)kz_alloc_live());
        if (getenv("KZHOOK_CHECK_LEAKS"))
            return 3;
    }
    return rc;
}
