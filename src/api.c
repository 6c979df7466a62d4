/* api.c — routing, auth, validation and JSON answers for every endpoint. */
#include "api.h"
#include "alloc.h"
#include "callback.h"
#include "id.h"
#include "json.h"
#include "log.h"
#include "sign.h"
#include "url.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_VALIDITY_MS INT64_C(63113852000)
#define MAX_VALIDITY_MS INT64_C(253402300799999) /* 9999-12-31 */
#define PUBLISH_MAX 1000
#define RATE_SLOTS 1024
#define RATE_PROBES 16           /* slots a key may take, from its hash on */
#define SECRET_CHARS 43          /* 258 bits of [A-Za-z0-9_-] */
#define AUTH_FAILURES_PER_APP 10 /* per applicationId per minute */
#define AUTH_FAILURES_PER_IP 60  /* per client address per minute */
#define ADMIN_FAILURES_PER_IP 30 /* wrong admin tokens per client address per minute */

/* ==== rate limiting: fixed one-minute windows per application ==== */

struct rate_slot {
    char app_id[64]; /* the key: an application id or a client address */
    int64_t window;  /* minute number */
    int count;
};

struct kz_api {
    const struct kz_config *cfg;
    struct kz_store *st;
    struct kz_subidx *idx;
    struct kz_metrics *m;
    char admin_hash[65];
    struct kz_api_hooks hooks;
    pthread_mutex_t rate_lock;
    struct rate_slot rate[RATE_SLOTS];
    struct rate_slot fail_app[RATE_SLOTS];   /* bad credentials per applicationId */
    struct rate_slot fail_ip[RATE_SLOTS];    /* bad credentials per client address */
    struct rate_slot fail_admin[RATE_SLOTS]; /* wrong admin tokens per client address */
    atomic_bool closing;
    atomic_int pending; /* publishes submitted, not yet answered */
};

void kz_api_close(struct kz_api *api)
{
    atomic_store(&api->closing, true);
}

int kz_api_pending(struct kz_api *api)
{
    return atomic_load(&api->pending);
}

struct kz_api *kz_api_new(const struct kz_config *cfg, struct kz_store *st, struct kz_subidx *idx,
                          struct kz_metrics *m, const char *admin_hash,
                          const struct kz_api_hooks *hooks)
{
    struct kz_api *api = kz_calloc(1, sizeof(*api));

    api->cfg = cfg;
    api->st = st;
    api->idx = idx;
    api->m = m;
    snprintf(api->admin_hash, sizeof(api->admin_hash), "%s", admin_hash);
    if (hooks)
        api->hooks = *hooks;
    pthread_mutex_init(&api->rate_lock, NULL);
    return api;
}

void kz_api_free(struct kz_api *api)
{
    if (!api)
        return;
    pthread_mutex_destroy(&api->rate_lock);
    kz_free(api);
}

/* Fixed one-minute windows in a fixed-size hash table. Returns 0 when the call is allowed (and,
 * with `count`, counts it), else the seconds until the window resets. Two keys sharing a slot
 * share a budget only while both are active in the same minute. Caller holds api->rate_lock. */
static int window_hit(struct rate_slot *table, const char *key, int limit, int64_t now, bool count)
{
    uint32_t h = kz_hash_str(key);
    struct rate_slot *s = NULL;
    int64_t window = now / 60000;
    size_t i, home;
    int wait;

    home = h % RATE_SLOTS;
    /* The key's slot among RATE_PROBES from its home: its own, else the first one free this
     * minute. Only when all are taken by other keys does it share its home slot's count. */
    for (i = 0; i < RATE_PROBES; i++) {
        struct rate_slot *t = &table[(home + i) % RATE_SLOTS];

        if (t->window == window && t->count && !strcmp(t->app_id, key)) {
            s = t;
            break;
        }
        if (!s && (t->window != window || !t->count))
            s = t;
    }
    if (!s)
        s = &table[home];
    if (s->window != window || (strcmp(s->app_id, key) && !s->count)) {
        snprintf(s->app_id, sizeof(s->app_id), "%s", key);
        s->window = window;
        s->count = 0;
    }
    if (s->count < limit) {
        if (count)
            s->count++;
        return 0;
    }
    wait = (int)(((window + 1) * 60000 - now + 999) / 1000);
    return wait < 1 ? 1 : wait;
}

/* window_hit() on one of the api's tables, under the lock they share. */
static int window_hit_locked(struct kz_api *api, struct rate_slot *table, const char *key,
                             int limit, int64_t now, bool count)
{
    int wait;

    pthread_mutex_lock(&api->rate_lock);
    wait = window_hit(table, key, limit, now, count);
    pthread_mutex_unlock(&api->rate_lock);
    return wait;
}

/* --rate-limit calls per minute per application on /v1/webhook*. */
static int rate_check(struct kz_api *api, const char *app_id, int64_t now)
{
    if (!api->cfg->rate_limit)
        return 0;
    return window_hit_locked(api, api->rate, app_id, api->cfg->rate_limit, now, true);
}

/* Brute force on /v1/accessToken: after AUTH_FAILURES_PER_APP bad credentials in a minute for one
 * applicationId, or AUTH_FAILURES_PER_IP from one client address, further attempts get 429 until
 * the minute ends.
 * `fail` records a failure; otherwise only checks. */
static int auth_throttle(struct kz_api *api, const char *app_id, const char *ip, int64_t now,
                         bool fail)
{
    int w1, w2;

    pthread_mutex_lock(&api->rate_lock);
    w1 = window_hit(api->fail_app, app_id, AUTH_FAILURES_PER_APP, now, fail);
    w2 = window_hit(api->fail_ip, ip, AUTH_FAILURES_PER_IP, now, fail);
    pthread_mutex_unlock(&api->rate_lock);
    return w1 > w2 ? w1 : w2;
}

/* ==== responses ==== */

void kz_req_init(struct kz_req *req)
{
    req->status = 0;
    kz_buf_init(&req->out, 64 * 1024 * 1024);
    req->content_type = "application/json";
    req->retry_after[0] = '\0';
    req->allow = NULL;
    req->app_id[0] = '\0';
    req->pending = NULL;
}

static void pending_free(void *p);

void kz_req_cleanup(struct kz_req *req)
{
    kz_buf_cleanup(&req->out);
    pending_free(req->pending);
    req->pending = NULL;
}

static const char *category(int status)
{
    if (status == 401)
        return "AuthException";
    if (status >= 500)
        return "ServerError";
    return "ClientError";
}

/* Writes the contract's error body (CONTRACT §2). Always returns KZ_OK: the answer is ready. */

static enum kz_err fail(struct kz_req *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static enum kz_err fail(struct kz_req *req, int status, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* Messages may quote client bytes (a field name, an id): keep the JSON valid UTF-8. */
    for (size_t i = 0, n = strlen(msg); i < n;) {
        size_t k = kz_utf8_seq((const unsigned char *)msg + i, n - i);

        if (k) {
            i += k;
        } else {
            msg[i++] = '?';
        }
    }
    req->status = status;
    req->content_type = "application/json";
    kz_buf_reset(&req->out);
    kz_buf_puts(&req->out, "{\"message\":");
    kz_buf_json_str(&req->out, msg, strlen(msg));
    kz_buf_printf(&req->out, ",\"errorCode\":\"%s\",\"errorCategoryKey\":\"%s\"}", code,
                  category(status));
    return KZ_OK;
}

static enum kz_err bad(struct kz_req *req, const char *msg)
{
    return fail(req, 400, "InvalidParameters", "%s", msg);
}

static enum kz_err internal(struct kz_req *req, enum kz_err e)
{
    if (e == KZ_ERR_BUSY)
        return fail(req, 503, "Unavailable",
                    "the service is overloaded or the store is busy; retry later");
    if (e == KZ_ERR_DB || e == KZ_ERR_IO)
        return fail(req, 503, "Unavailable", "the store is unavailable; retry later");
    return fail(req, 500, "InternalError", "internal error: %s", kz_err_str(e));
}

/* Answers `status` with `v` serialised; takes ownership of `v`. */
static enum kz_err reply_json(struct kz_req *req, int status, json_t *v)
{
    kz_buf_reset(&req->out);
    req->status = status;
    req->content_type = "application/json";
    if (!v || kz_json_dump(v, &req->out)) {
        json_decref(v);
        return fail(req, 500, "InternalError", "could not serialise the answer");
    }
    json_decref(v);
    return KZ_OK;
}

static enum kz_err method_not_allowed(struct kz_req *req, const char *allow)
{
    req->allow = allow;
    return fail(req, 405, "MethodNotAllowed", "method %s is not allowed here; allowed: %s",
                req->method, allow);
}

/* ==== auth ==== */

static const char *bearer(struct kz_req *req)
{
    const char *h = req->header(req->conn, "Authorization");

    if (!h || strncasecmp(h, "Bearer ", 7))
        return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    return *h ? h : NULL;
}

/* Guessing the admin token: after ADMIN_FAILURES_PER_IP wrong tokens in a minute from one client
 * address, every admin request from it gets 429 until the minute ends. `fail` records one. */
static int admin_throttle(struct kz_api *api, const char *ip, bool fail)
{
    return window_hit_locked(api, api->fail_admin, ip, ADMIN_FAILURES_PER_IP, kz_now_ms(), fail);
}

/* KZ_OK when the request carries the admin token; otherwise the 401 (or 429) is written. */
static enum kz_err require_admin(struct kz_api *api, struct kz_req *req)
{
    const char *t = bearer(req);
    char hash[65];
    size_t len;
    int wait = admin_throttle(api, req->remote_ip, false);

    if (wait) {
        snprintf(req->retry_after, sizeof(req->retry_after), "%d", wait);
        return fail(req, 429, "Throttled", "too many wrong admin tokens; retry after %d s", wait),
               KZ_ERR_AUTH;
    }
    if (!t)
        return fail(req, 401, "Unauthenticated", "missing Authorization: Bearer <admin token>"),
               KZ_ERR_AUTH;
    len = strlen(t);
    if (len <= 1024)
        kz_sha256_hex(t, len, hash);
    if (len > 1024 || !kz_ct_equal(hash, api->admin_hash, 64)) {
        admin_throttle(api, req->remote_ip, true);
        return fail(req, 401, "Unauthenticated", "invalid admin token"), KZ_ERR_AUTH;
    }
    return KZ_OK;
}

/* Resolves the access token to its application; writes the 401 on failure. */
static enum kz_err require_app(struct kz_api *api, struct kz_req *req, struct kz_app *app)
{
    const char *t = req->header(req->conn, "accessToken");
    char hash[65], app_id[40];
    int64_t expires = 0;
    enum kz_err e;

    if (!t)
        t = bearer(req);
    if (!t || !*t)
        return fail(req, 401, "Unauthenticated", "missing accessToken header"), KZ_ERR_AUTH;
    if (strlen(t) > 1024)
        return fail(req, 401, "InvalidToken", "Invalid token. Failure reason:malformed token"),
               KZ_ERR_AUTH;
    kz_sha256_hex(t, strlen(t), hash);
    e = kz_store_token_get(api->st, hash, app_id, &expires);
    if (e == KZ_ERR_NOTFOUND)
        return fail(req, 401, "InvalidToken", "Invalid token. Failure reason:unknown token"),
               KZ_ERR_AUTH;
    if (e)
        return internal(req, e), e;
    if (expires <= kz_now_ms())
        return fail(req, 401, "InvalidToken", "Invalid token. Failure reason:token expired"),
               KZ_ERR_AUTH;
    e = kz_store_app_get(api->st, app_id, app);
    if (e == KZ_ERR_NOTFOUND)
        return fail(req, 401, "InvalidToken", "Invalid token. Failure reason:application deleted"),
               KZ_ERR_AUTH;
    if (e)
        return internal(req, e), e;
    snprintf(req->app_id, sizeof(req->app_id), "%s", app->id);
    return KZ_OK;
}

static bool app_grants(const struct kz_app *app, const char *object_id)
{
    json_t *ids = json_loads(app->object_ids_json, 0, NULL);
    size_t i;
    json_t *v;
    bool ok = false;

    json_array_foreach(ids, i, v)
    {
        const char *s = json_string_value(v);

        if (s && (!strcmp(s, "*") || !strcmp(s, object_id)))
            ok = true;
    }
    json_decref(ids);
    return ok;
}

/* ==== helpers for request bodies ==== */

/* Parses the body as a JSON object (or array when `allow_array`); writes the 400 on failure. */
static json_t *parse_body(struct kz_req *req, bool allow_array, bool any_numbers)
{
    char err[200];
    json_t *doc;

    if (!req->body_len) {
        bad(req, "request body required");
        return NULL;
    }
    doc = any_numbers ? kz_json_parse_lenient_numbers(req->body, req->body_len, err, sizeof(err))
                      : kz_json_parse(req->body, req->body_len, err, sizeof(err));
    if (!doc) {
        fail(req, 400, "InvalidParameters", "malformed JSON: %s", err);
        return NULL;
    }
    if (!json_is_object(doc) && !(allow_array && json_is_array(doc))) {
        json_decref(doc);
        bad(req,
            allow_array ? "body must be a JSON object or array" : "body must be a JSON object");
        return NULL;
    }
    return doc;
}

/* Printable ASCII only: the value may end up in an HTTP header, so no CR/LF or controls. */
static bool header_safe(const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c < 0x20 || c > 0x7e)
            return false;
    }
    return true;
}

/* Optional string field: absent/null -> *out NULL; present -> copy (1..max bytes). Writes the
 * 400 and returns KZ_ERR_INVALID on a wrong type or size. `empty_ok` turns "" into NULL. */
static enum kz_err opt_str(struct kz_req *req, const json_t *obj, const char *name, size_t max,
                           bool empty_ok, char **out, bool *present)
{
    json_t *v = kz_json_get(obj, name);
    const char *s;
    size_t len;

    *out = NULL;
    if (present)
        *present = v != NULL;
    if (!v || json_is_null(v))
        return KZ_OK;
    if (empty_ok && json_is_string(v) && !json_string_length(v))
        return KZ_OK;
    if (kz_json_str(v, max, &s, &len)) {
        fail(req, 400, "InvalidParameters", "%s must be a string of 1..%zu bytes", name, max);
        return KZ_ERR_INVALID;
    }
    *out = kz_strndup(s, len);
    return KZ_OK;
}

/* ==== applications (CONTRACT §3) ==== */

static json_t *app_json(const struct kz_app *a, bool with_created)
{
    json_t *ids = json_loads(a->object_ids_json, 0, NULL);
    json_t *o = json_object();

    json_object_set_new(o, "applicationId", json_string(a->id));
    json_object_set_new(o, "name", json_string(a->name));
    json_object_set_new(o, "objectIds", ids ? ids : json_array());
    if (with_created)
        json_object_set_new(o, "createdAt", json_integer(a->created_at));
    return o;
}

static enum kz_err app_create(struct kz_api *api, struct kz_req *req)
{
    json_t *doc = parse_body(req, false, false), *ids, *v, *o = NULL;
    char *name = NULL;
    char secret[SECRET_CHARS + 1], refresh[SECRET_CHARS + 1];
    struct kz_op op;
    struct kz_buf idsbuf;
    size_t i;
    enum kz_err e;

    kz_buf_init(&idsbuf, 1024 * 1024);
    if (!doc)
        goto out;
    if (opt_str(req, doc, "name", KZ_NAME_MAX, false, &name, NULL))
        goto out;
    if (!name) {
        bad(req, "name is required");
        goto out;
    }
    ids = kz_json_get(doc, "objectIds");
    if (!json_is_array(ids) || !json_array_size(ids) || json_array_size(ids) > 10000) {
        bad(req, "objectIds must be a non-empty array of strings");
        goto out;
    }
    json_array_foreach(ids, i, v)
    {
        const char *s;
        size_t len;

        if (kz_json_str(v, KZ_ID_MAX, &s, &len)) {
            fail(req, 400, "InvalidParameters", "objectIds[%zu] must be a string of 1..%d bytes", i,
                 KZ_ID_MAX);
            goto out;
        }
    }
    if (kz_json_dump(ids, &idsbuf)) {
        bad(req, "objectIds too large");
        goto out;
    }
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_APP_CREATE;
    kz_id_uuid4(op.u.app.id);
    op.u.app.name = name;
    op.u.app.object_ids_json = idsbuf.data;
    kz_id_token(secret, SECRET_CHARS);
    kz_id_token(refresh, SECRET_CHARS);
    kz_sha256_hex(secret, SECRET_CHARS, op.u.app.secret_hash);
    kz_sha256_hex(refresh, SECRET_CHARS, op.u.app.refresh_hash);
    op.u.app.created_at = kz_now_ms();
    e = kz_store_exec(api->st, &op);
    if (e) {
        internal(req, e);
        goto out;
    }
    o = app_json(&op.u.app, false);
    json_object_set_new(o, "applicationSecret", json_string(secret));
    json_object_set_new(o, "refreshToken", json_string(refresh));
    snprintf(req->app_id, sizeof(req->app_id), "%s", op.u.app.id);
    reply_json(req, 201, o);
out:
    kz_free(name);
    kz_buf_cleanup(&idsbuf);
    json_decref(doc);
    return KZ_OK;
}

static void app_list_one(void *arg, const struct kz_app *a)
{
    json_array_append_new(arg, app_json(a, true));
}

static enum kz_err app_list(struct kz_api *api, struct kz_req *req)
{
    json_t *arr = json_array();
    enum kz_err e = kz_store_app_list(api->st, app_list_one, arr);

    if (e) {
        json_decref(arr);
        return internal(req, e);
    }
    return reply_json(req, 200, json_pack("{s:o}", "applications", arr));
}

static enum kz_err app_delete(struct kz_api *api, struct kz_req *req, const char *id)
{
    struct kz_op op;
    enum kz_err e;

    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_APP_DELETE;
    op.u.id = id;
    e = kz_store_exec(api->st, &op);
    if (e == KZ_ERR_NOTFOUND)
        return fail(req, 404, "NotFound", "no application %s", id);
    if (e)
        return internal(req, e);
    kz_subidx_remove_app(api->idx, id, op.webhooks_version);
    return reply_json(req, 200, json_object());
}

/* GET|POST /v1/accessToken with applicationId, applicationSecret, refreshToken headers. */
static enum kz_err access_token(struct kz_api *api, struct kz_req *req)
{
    const char *id = req->header(req->conn, "applicationId");
    const char *secret = req->header(req->conn, "applicationSecret");
    const char *refresh = req->header(req->conn, "refreshToken");
    struct kz_app app;
    char h1[65], h2[65], token[SECRET_CHARS + 1], hash[65];
    struct kz_op op;
    enum kz_err e;
    bool ok;
    json_t *o;
    struct kz_buf url;
    int64_t expiry;
    int wait;

    memset(&app, 0, sizeof(app));
    wait = auth_throttle(api, id && strlen(id) < 64 ? id : "", req->remote_ip, kz_now_ms(), false);
    if (wait) {
        snprintf(req->retry_after, sizeof(req->retry_after), "%d", wait);
        return fail(req, 429, "Throttled", "too many failed attempts; retry after %d s", wait);
    }
    if (!id || !secret || !refresh)
        return fail(req, 401, "Unauthenticated",
                    "Dont have correct applicationId and secret in header! (applicationId, "
                    "applicationSecret and refreshToken are required)");
    if (strlen(id) > 64 || strlen(secret) > 1024 || strlen(refresh) > 1024)
        return fail(req, 401, "Unauthenticated",
                    "Dont have correct applicationId and secret in header!");
    e = kz_store_app_get(api->st, id, &app);
    if (e == KZ_ERR_NOTFOUND) {
        auth_throttle(api, id, req->remote_ip, kz_now_ms(), true);
        return fail(req, 401, "Unauthenticated",
                    "Dont have correct applicationId and secret in header!");
    }
    if (e)
        return internal(req, e);
    kz_sha256_hex(secret, strlen(secret), h1);
    kz_sha256_hex(refresh, strlen(refresh), h2);
    ok = kz_ct_equal(h1, app.secret_hash, 64);
    ok = kz_ct_equal(h2, app.refresh_hash, 64) && ok;
    if (!ok) {
        auth_throttle(api, app.id, req->remote_ip, kz_now_ms(), true);
        kz_app_cleanup(&app);
        return fail(req, 401, "Unauthenticated",
                    "Dont have correct applicationId and secret in header!");
    }
    snprintf(req->app_id, sizeof(req->app_id), "%s", app.id);
    kz_id_token(token, SECRET_CHARS);
    kz_sha256_hex(token, SECRET_CHARS, hash);
    expiry = kz_now_ms() + api->cfg->token_ttl_ms;
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_TOKEN_ADD;
    op.u.token.hash = hash;
    op.u.token.app_id = app.id;
    op.u.token.expires_at = expiry;
    e = kz_store_exec(api->st, &op);
    kz_app_cleanup(&app);
    if (e)
        return internal(req, e);
    kz_buf_init(&url, 4096);
    if (api->cfg->public_url)
        kz_buf_puts(&url, api->cfg->public_url);
    else
        kz_buf_printf(&url, "%s://%s%s%s:%d", api->cfg->tls_cert ? "https" : "http",
                      strchr(api->cfg->listen_host, ':') ? "[" : "", api->cfg->listen_host,
                      strchr(api->cfg->listen_host, ':') ? "]" : "", api->cfg->listen_port);
    o = json_pack("{s:s, s:s, s:I, s:n, s:s}", "accessToken", token, "endpointUrl",
                  kz_buf_cstr(&url), "accessTokenExpiry", (json_int_t)expiry, "refreshToken",
                  "scope", "webhook.read,webhook.write,webhook.remove,webhook.update");
    kz_buf_cleanup(&url);
    return reply_json(req, 200, o);
}

/* ==== webhooks (CONTRACT §4) ==== */

static json_t *webhook_json(const struct kz_webhook *w, int64_t now)
{
    json_t *o = json_object(), *events = json_array();
    int i;

    for (i = 0; i < KZ_EV__COUNT; i++) {
        if (w->event_mask & (1u << i))
            json_array_append_new(events, json_string(kz_evtype_name(i)));
    }
    json_object_set_new(o, "id", json_string(w->id));
    json_object_set_new(o, "objectId", json_string(w->object_id));
    json_object_set_new(o, "objectType", json_string(kz_objtype_name(w->object_type)));
    json_object_set_new(o, "events", events);
    json_object_set_new(o, "filters", json_array());
    json_object_set_new(o, "callbackUrl", json_string(w->callback_url));
    json_object_set_new(o, "callbackToken",
                        w->callback_token ? json_string(w->callback_token) : json_null());
    json_object_set_new(o, "callBackContext",
                        w->callback_context ? json_string(w->callback_context) : json_null());
    json_object_set_new(o, "ts", json_integer(w->ts_ms));
    json_object_set_new(o, "validity", json_integer(w->validity_ms));
    json_object_set_new(o, "active", json_boolean(w->active && w->validity_ms > now));
    return o;
}

/* Reads the fields of a create (all required ones present) or update (`update`: any subset)
 * body into `w`. Returns KZ_OK, or KZ_ERR_INVALID with the 400 written. Sets *url_changed when
 * a callBackUrl was given. */
static enum kz_err webhook_fields(struct kz_req *req, const json_t *doc, struct kz_webhook *w,
                                  bool update, bool *url_changed, bool *active_given)
{
    json_t *v;
    char *s = NULL;
    bool present;
    int64_t now = kz_now_ms();

    *url_changed = false;
    *active_given = false;
    if (opt_str(req, doc, "objectId", KZ_ID_MAX, false, &s, &present))
        return KZ_ERR_INVALID;
    if (s) {
        kz_free(w->object_id);
        w->object_id = s;
    } else if (!update || present) {
        return bad(req, "objectId is required"), KZ_ERR_INVALID;
    }
    v = kz_json_get(doc, "objectType");
    if (v || !update) {
        int t = json_is_string(v) ? kz_objtype_from_name(json_string_value(v)) : -1;

        if (t < 0)
            return bad(req, "objectType must be one of Group, Action, ActionPackage"),
                   KZ_ERR_INVALID;
        w->object_type = (enum kz_objtype)t;
    }
    v = kz_json_get(doc, "eventTypes");
    if (v || !update) {
        size_t i;
        json_t *e;
        uint32_t mask = 0;

        if (!json_is_array(v) || !json_array_size(v) || json_array_size(v) > 100)
            return bad(req, "eventTypes must be a non-empty array of event type names"),
                   KZ_ERR_INVALID;
        json_array_foreach(v, i, e)
        {
            int t = json_is_string(e) ? kz_evtype_from_name(json_string_value(e)) : -1;

            if (t < 0)
                return fail(req, 400, "InvalidParameters",
                            "eventTypes[%zu] is not a known event type", i),
                       KZ_ERR_INVALID;
            mask |= 1u << t;
        }
        w->event_mask = mask;
    }
    if (opt_str(req, doc, "callBackUrl", KZ_URL_MAX, false, &s, &present))
        return KZ_ERR_INVALID;
    if (s) {
        kz_free(w->callback_url);
        w->callback_url = s;
        *url_changed = true;
    } else if (!update || present) {
        return bad(req, "callBackUrl is required"), KZ_ERR_INVALID;
    }
    if (opt_str(req, doc, "callBackToken", KZ_TOKEN_MAX, true, &s, &present))
        return KZ_ERR_INVALID;
    if (s && !header_safe(s, strlen(s))) {
        kz_free(s);
        return bad(req, "callBackToken must be printable ASCII (it is sent as an HTTP header)"),
               KZ_ERR_INVALID;
    }
    if (present) {
        kz_free(w->callback_token);
        w->callback_token = s;
    }
    if (opt_str(req, doc, "callBackContext", KZ_CONTEXT_MAX, true, &s, &present))
        return KZ_ERR_INVALID;
    if (present) {
        kz_free(w->callback_context);
        w->callback_context = s;
    }
    v = kz_json_get(doc, "validity");
    if (v && !json_is_null(v)) {
        int64_t ms;

        if (kz_json_i64(v, &ms) || ms > MAX_VALIDITY_MS)
            return bad(req, "validity must be epoch milliseconds (number or numeric string)"),
                   KZ_ERR_INVALID;
        if (ms <= now)
            return bad(req, "validity must be in the future"), KZ_ERR_INVALID;
        w->validity_ms = ms;
    } else if (!update) {
        w->validity_ms = w->ts_ms + DEFAULT_VALIDITY_MS;
    }
    v = kz_json_get(doc, "Active");
    if (v && !json_is_null(v)) {
        bool b;

        if (kz_json_bool(v, &b))
            return bad(req, "Active must be true or false"), KZ_ERR_INVALID;
        w->active = b;
        *active_given = true;
    }
    return KZ_OK;
}

/* Checks the callback URL and runs the handshake; writes the 400 on failure. */
static enum kz_err check_callback(struct kz_api *api, struct kz_req *req, const char *url)
{
    struct kz_target t;
    const char *why = NULL;
    char reason[300];
    enum kz_err e = kz_target_check(api->cfg, url, &t, &why);

    if (e)
        return fail(req, 400, "InvalidParameters", "callBackUrl rejected: %s",
                    why ? why : "invalid"),
               KZ_ERR_INVALID;
    if (kz_callback_validate(api->cfg, url, &t, reason, sizeof(reason)))
        return fail(req, 400, "CallbackValidationFailed", "callback URL validation failed: %s",
                    reason),
               KZ_ERR_INVALID;
    return KZ_OK;
}

static enum kz_err webhook_create(struct kz_api *api, struct kz_req *req, const struct kz_app *app)
{
    json_t *doc = parse_body(req, false, false);
    struct kz_webhook w;
    struct kz_op op;
    bool url_changed, active_given;
    enum kz_err e;

    memset(&w, 0, sizeof(w));
    if (!doc)
        return KZ_OK;
    w.ts_ms = kz_now_ms();
    w.active = true;
    if (webhook_fields(req, doc, &w, false, &url_changed, &active_given))
        goto out;
    if (!app_grants(app, w.object_id)) {
        fail(req, 403, "Forbidden", "the application may not subscribe to objectId %s",
             w.object_id);
        goto out;
    }
    if (check_callback(api, req, w.callback_url))
        goto out;
    kz_id_uuid4(w.id);
    snprintf(w.app_id, sizeof(w.app_id), "%s", app->id);
    w.signing_secret = kz_malloc(64);
    if (kz_sign_secret_new(w.signing_secret, 64)) {
        internal(req, KZ_ERR_INVALID);
        goto out;
    }
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_INSERT;
    op.u.webhook = w;
    e = kz_store_exec(api->st, &op);
    if (e) {
        internal(req, e);
        goto out;
    }
    kz_subidx_put(api->idx, &w, op.webhooks_version);
    reply_json(req, 200,
               json_pack("{s:s, s:s}", "webhookId", w.id, "signingSecret", w.signing_secret));
out:
    kz_webhook_cleanup(&w);
    json_decref(doc);
    return KZ_OK;
}

struct list_ctx {
    json_t *arr;
    int64_t now;
};

static void webhook_list_one(void *arg, const struct kz_webhook *w)
{
    struct list_ctx *lc = arg;

    json_array_append_new(lc->arr, webhook_json(w, lc->now));
}

static enum kz_err webhook_list(struct kz_api *api, struct kz_req *req, const struct kz_app *app)
{
    const char *oid = req->query(req->conn, "objectId");
    const char *otype = req->query(req->conn, "objectType");
    int t = -1;
    struct list_ctx lc;
    enum kz_err e;

    if (oid && (!*oid || strlen(oid) > KZ_ID_MAX))
        return bad(req, "objectId must be 1..256 bytes");
    if (otype && *otype) {
        t = kz_objtype_from_name(otype);
        if (t < 0)
            return bad(req, "objectType must be one of Group, Action, ActionPackage");
    }
    lc.arr = json_array();
    lc.now = kz_now_ms();
    e = kz_store_webhook_list(api->st, app->id, t, oid, webhook_list_one, &lc);
    if (e) {
        json_decref(lc.arr);
        return internal(req, e);
    }
    return reply_json(req, 200, json_pack("{s:o}", "webhooks", lc.arr));
}

/* Loads webhook `id` if `app` owns it; writes the 404 otherwise. */
static enum kz_err own_webhook(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                               const char *id, struct kz_webhook *w)
{
    enum kz_err e;

    memset(w, 0, sizeof(*w));
    e = kz_store_webhook_get(api->st, id, w);
    if (!e && strcmp(w->app_id, app->id)) {
        kz_webhook_cleanup(w);
        e = KZ_ERR_NOTFOUND;
    }
    if (e == KZ_ERR_NOTFOUND)
        return fail(req, 404, "NotFound", "no webhook %s", id), e;
    if (e)
        return internal(req, e), e;
    return KZ_OK;
}

static enum kz_err webhook_get(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                               const char *id)
{
    struct kz_webhook w;

    if (own_webhook(api, req, app, id, &w))
        return KZ_OK;
    reply_json(req, 200, webhook_json(&w, kz_now_ms()));
    kz_webhook_cleanup(&w);
    return KZ_OK;
}

static enum kz_err webhook_update(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                  const char *id)
{
    json_t *doc;
    struct kz_webhook w;
    struct kz_op op;
    bool url_changed, active_given, was_active;
    char *old_url = NULL;
    enum kz_err e;

    if (own_webhook(api, req, app, id, &w))
        return KZ_OK;
    doc = parse_body(req, false, false);
    if (!doc)
        goto out;
    was_active = w.active;
    old_url = kz_strdup(w.callback_url);
    if (webhook_fields(req, doc, &w, true, &url_changed, &active_given))
        goto out;
    if (!app_grants(app, w.object_id)) {
        fail(req, 403, "Forbidden", "the application may not subscribe to objectId %s",
             w.object_id);
        goto out;
    }
    if (url_changed && strcmp(old_url, w.callback_url) && check_callback(api, req, w.callback_url))
        goto out;
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_UPDATE;
    op.u.webhook = w;
    e = kz_store_exec(api->st, &op);
    if (e == KZ_ERR_NOTFOUND) {
        fail(req, 404, "NotFound", "no webhook %s", id);
        goto out;
    }
    if (e) {
        internal(req, e);
        goto out;
    }
    kz_subidx_put(api->idx, &w, op.webhooks_version);
    if (active_given && w.active && !was_active && api->hooks.wake_dispatch)
        api->hooks.wake_dispatch(api->hooks.arg);
    reply_json(req, 200, webhook_json(&w, kz_now_ms()));
out:
    kz_free(old_url);
    kz_webhook_cleanup(&w);
    json_decref(doc);
    return KZ_OK;
}

static enum kz_err webhook_delete(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                  const char *id)
{
    struct kz_op op;
    enum kz_err e;

    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_DELETE;
    op.u.del.id = id;
    op.u.del.app_id = app->id;
    e = kz_store_exec(api->st, &op);
    if (e == KZ_ERR_NOTFOUND)
        return fail(req, 404, "NotFound", "no webhook %s", id);
    if (e)
        return internal(req, e);
    kz_subidx_remove(api->idx, id, op.webhooks_version);
    return reply_json(req, 200, json_object());
}

/* ==== delivery log and replay (CONTRACT §7) ==== */

struct dlist_ctx {
    json_t *arr;
    int64_t last_id;
    size_t n;
};

/* A receiver's answer as a JSON string: it may be any bytes, so invalid UTF-8 becomes U+FFFD. */
static json_t *utf8_json(const char *s)
{
    size_t n = strlen(s);
    struct kz_buf b;
    json_t *v;

    kz_buf_init(&b, n * 3 + 1);
    (void)kz_buf_text(&b, s, n);
    v = json_stringn(kz_buf_cstr(&b), b.len);
    kz_buf_cleanup(&b);
    return v ? v : json_string("");
}

static void delivery_one(void *arg, const struct kz_delivery *d)
{
    struct dlist_ctx *dc = arg;
    json_t *o = json_object();
    char id[24];

    snprintf(id, sizeof(id), "%lld", (long long)d->id);
    json_object_set_new(o, "deliveryId", json_string(id));
    json_object_set_new(o, "eventId", json_string(d->event_id));
    json_object_set_new(o, "eventType", json_string(kz_evtype_name(d->event_type)));
    json_object_set_new(o, "status", json_string(kz_dstate_name(d->state)));
    json_object_set_new(o, "attempts", json_integer(d->attempts));
    json_object_set_new(o, "lastStatusCode",
                        d->last_status ? json_integer(d->last_status) : json_null());
    json_object_set_new(o, "lastError", d->last_error ? json_string(d->last_error) : json_null());
    json_object_set_new(o, "lastResponse",
                        d->last_response ? utf8_json(d->last_response) : json_null());
    json_object_set_new(o, "nextAttemptAt",
                        d->state == KZ_D_PENDING ? json_integer(d->next_attempt_at) : json_null());
    json_object_set_new(o, "createdAt", json_integer(d->created_at));
    json_object_set_new(o, "updatedAt", json_integer(d->updated_at));
    json_array_append_new(dc->arr, o);
    dc->last_id = d->id;
    dc->n++;
}

static enum kz_err delivery_list(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                 const char *id)
{
    struct kz_webhook w;
    const char *status = req->query(req->conn, "status");
    const char *limit_s = req->query(req->conn, "limit");
    const char *cursor_s = req->query(req->conn, "cursor");
    int state = -1;
    long long limit = 100, cursor = 0;
    char *end;
    struct dlist_ctx dc;
    enum kz_err e;
    json_t *o;

    if (status && *status) {
        state = kz_dstate_from_name(status);
        if (state < 0)
            return bad(req, "status must be pending, succeeded, dead or skipped");
    }
    if (limit_s) {
        limit = strtoll(limit_s, &end, 10);
        if (*end || end == limit_s || limit < 1 || limit > 1000)
            return bad(req, "limit must be 1..1000");
    }
    if (cursor_s && *cursor_s) {
        cursor = strtoll(cursor_s, &end, 10);
        if (*end || cursor < 1)
            return bad(req, "cursor is not one this service returned");
    }
    if (own_webhook(api, req, app, id, &w))
        return KZ_OK;
    kz_webhook_cleanup(&w);
    dc.arr = json_array();
    dc.n = 0;
    dc.last_id = 0;
    e = kz_store_delivery_list(api->st, id, state, cursor, (size_t)limit, delivery_one, &dc);
    if (e) {
        json_decref(dc.arr);
        return internal(req, e);
    }
    o = json_pack("{s:o}", "deliveries", dc.arr);
    if (dc.n == (size_t)limit) {
        char c[24];

        snprintf(c, sizeof(c), "%lld", (long long)dc.last_id);
        json_object_set_new(o, "nextCursor", json_string(c));
    } else {
        json_object_set_new(o, "nextCursor", json_null());
    }
    return reply_json(req, 200, o);
}

static enum kz_err replay(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                          const char *id)
{
    struct kz_webhook w;
    json_t *doc, *v;
    int64_t since;
    struct kz_op op;
    enum kz_err e;

    if (own_webhook(api, req, app, id, &w))
        return KZ_OK;
    kz_webhook_cleanup(&w);
    doc = parse_body(req, false, false);
    if (!doc)
        return KZ_OK;
    v = kz_json_get(doc, "since");
    if (!v || kz_json_i64(v, &since) || since < 0) {
        json_decref(doc);
        return bad(req, "since must be epoch milliseconds");
    }
    json_decref(doc);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_REPLAY;
    op.u.replay.webhook_id = id;
    op.u.replay.since = since;
    op.u.replay.now = kz_now_ms();
    e = kz_store_exec(api->st, &op);
    if (e)
        return internal(req, e);
    if (op.u.replay.requeued && api->hooks.wake_dispatch)
        api->hooks.wake_dispatch(api->hooks.arg);
    return reply_json(req, 202, json_pack("{s:I}", "requeued", (json_int_t)op.u.replay.requeued));
}

/* ==== publishing (CONTRACT §5) ==== */

struct publish {
    struct kz_api *api;
    struct kz_req *req; /* NULL for the synchronous CLI path */
    struct kz_op op;
    struct kz_publish_item *items;
    size_t n;
    struct kz_match *matches; /* all items' matches, back to back */
    size_t nmatch, capmatch;
    const char **ids; /* pointers into matches */
    bool *active;
    bool array; /* body was an array: answer {"events":[...]} */
    /* synchronous wait */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
};

static void pending_free(void *p)
{
    struct publish *pb = p;
    size_t i;

    if (!pb)
        return;
    for (i = 0; i < pb->n; i++)
        kz_event_cleanup(&pb->items[i].ev);
    kz_free(pb->items);
    kz_free(pb->matches);
    kz_free(pb->ids);
    kz_free(pb->active);
    kz_free(pb);
}

/* Fills one event from a JSON object; writes the 400 (prefixed by `where`) on failure. */
/* `offset`: where the event's object starts in the request body (for `data` as written), or
 * -1 when unknown (then `data` is re-serialised from the parsed tree). */
static enum kz_err event_from_json(struct kz_req *req, const json_t *o, const char *where,
                                   struct kz_event *ev, struct kz_buf *scratch, long offset)
{
    json_t *v;
    int t;
    struct {
        const char *name;
        char **field;
        size_t max;
    } strs[] = {
        {"eventId", &ev->event_id, KZ_ID_MAX},
        {"groupId", &ev->group_id, KZ_ID_MAX},
        {"actionId", &ev->action_id, KZ_ID_MAX},
        {"actionPackageId", &ev->action_package_id, KZ_ID_MAX},
        {"fromUser", &ev->from_user, 1024},
        {"fromUserId", &ev->from_user_id, 1024},
        {"fromUserName", &ev->from_user_name, 1024},
        {"fromUserProfilePic", &ev->from_user_pic, KZ_URL_MAX},
    };
    size_t i;

    if (!json_is_object(o))
        return fail(req, 400, "InvalidParameters", "%sevent must be a JSON object", where),
               KZ_ERR_INVALID;
    v = kz_json_get(o, "eventType");
    t = json_is_string(v) ? kz_evtype_from_name(json_string_value(v)) : -1;
    if (t < 0)
        return fail(req, 400, "InvalidParameters",
                    "%seventType is missing or not a known event type", where),
               KZ_ERR_INVALID;
    ev->event_type = (enum kz_evtype)t;
    for (i = 0; i < KZ_ARRAY_LEN(strs); i++) {
        const char *s;
        size_t len;

        v = kz_json_get(o, strs[i].name);
        if (!v || json_is_null(v) || (json_is_string(v) && !json_string_length(v) && i >= 4))
            continue;
        if (kz_json_str(v, strs[i].max, &s, &len))
            return fail(req, 400, "InvalidParameters", "%s%s must be a string of 1..%zu bytes",
                        where, strs[i].name, strs[i].max),
                   KZ_ERR_INVALID;
        if (i == 0 && !header_safe(s, len))
            return fail(req, 400, "InvalidParameters", "%seventId must be printable ASCII", where),
                   KZ_ERR_INVALID;
        *strs[i].field = kz_strndup(s, len);
    }
    if (!ev->group_id && !ev->action_id && !ev->action_package_id)
        return fail(req, 400, "InvalidParameters",
                    "%sone of groupId, actionId, actionPackageId is required", where),
               KZ_ERR_INVALID;
    v = kz_json_get(o, "data");
    kz_buf_reset(scratch);
    if (!v || json_is_null(v)) {
        kz_buf_puts(scratch, "{}");
    } else {
        struct kz_str raw;

        /* `data` is delivered as published: numbers keep their spelling (no double rounding,
         * no 64-bit limit), strings their escapes, objects their key order; only whitespace
         * between tokens is dropped. */
        if (offset >= 0 &&
            !kz_json_raw_member_at(req->body, req->body_len, (size_t)offset, "data", &raw)) {
            if (kz_json_minify(raw, scratch))
                return fail(req, 400, "InvalidParameters", "%sdata too large", where),
                       KZ_ERR_INVALID;
        } else if (kz_json_dump(v, scratch)) {
            return fail(req, 400, "InvalidParameters", "%sdata too large", where), KZ_ERR_INVALID;
        }
    }
    ev->data_json = kz_strndup(kz_buf_cstr(scratch), scratch->len);
    if (!ev->event_id) {
        char id[37];

        kz_id_uuid4(id);
        ev->event_id = kz_strdup(id);
    }
    ev->created_at = kz_now_ms();
    return KZ_OK;
}

static json_t *publish_result(const struct kz_publish_item *it)
{
    return json_pack("{s:s, s:i}", "eventId", it->ev.event_id, "deliveries", it->deliveries);
}

/* Writer thread, after the commit: build the 202 and hand the request back. */
static void publish_done(struct kz_op *op, void *arg)
{
    struct publish *pb = arg;
    struct kz_api *api = pb->api;
    struct kz_req *req = pb->req;
    size_t i;
    long long fresh = 0, dup = 0, created = 0, skipped = 0;

    (void)op;
    if (!pb->op.result) {
        for (i = 0; i < pb->n; i++) {
            const struct kz_publish_item *it = &pb->items[i];

            if (it->duplicate) {
                dup++;
                continue;
            }
            fresh++;
            created += it->deliveries;
            /* rows recorded `skipped` at once (inactive or expired webhook); the dispatcher
             * counts those it skips later, when the index was behind the store */
            for (size_t k = 0; k < it->n_targets; k++)
                skipped += !it->target_active[k];
        }
        atomic_fetch_add(&api->m->events_accepted, fresh);
        atomic_fetch_add(&api->m->events_duplicate, dup);
        atomic_fetch_add(&api->m->deliveries_created, created);
        atomic_fetch_add(&api->m->deliveries_skipped, skipped);
        if (created && api->hooks.wake_dispatch)
            api->hooks.wake_dispatch(api->hooks.arg);
    }
    if (req) {
        if (pb->op.result) {
            internal(req, pb->op.result);
        } else if (pb->array) {
            json_t *arr = json_array();

            for (i = 0; i < pb->n; i++)
                json_array_append_new(arr, publish_result(&pb->items[i]));
            reply_json(req, 202, json_pack("{s:o}", "events", arr));
        } else {
            reply_json(req, 202, publish_result(&pb->items[0]));
        }
        req->complete(req);
        atomic_fetch_sub(&api->pending, 1);
        return;
    }
    pthread_mutex_lock(&pb->lock);
    pb->done = true;
    pthread_cond_signal(&pb->cond);
    pthread_mutex_unlock(&pb->lock);
}

/* Validates and matches; on success returns a ready-to-submit publish (ownership to caller). */
static struct publish *publish_prepare(struct kz_api *api, struct kz_req *req)
{
    json_t *doc = parse_body(req, true, true);
    struct publish *pb = NULL;
    struct kz_buf scratch;
    size_t i, k, n, *offs = NULL;
    int64_t now = kz_now_ms();

    kz_buf_init(&scratch, KZ_BODY_MAX);
    if (!doc)
        goto fail;
    n = json_is_array(doc) ? json_array_size(doc) : 1;
    if (!n || n > PUBLISH_MAX) {
        bad(req, "an array body holds 1..1000 events");
        goto fail;
    }
    pb = kz_calloc(1, sizeof(*pb));
    pb->api = api;
    pb->array = json_is_array(doc);
    pb->items = kz_calloc(n, sizeof(*pb->items));
    pb->n = n;
    /* Where each event starts in the body, found in one pass (looking each one up by index
     * would make a 1000-event array cost a million element skips). */
    offs = kz_calloc(n, sizeof(*offs));
    if (!pb->array)
        offs[0] = 0;
    else if (kz_json_array_offsets(req->body, req->body_len, offs, n))
        memset(offs, 0xff, n * sizeof(*offs)); /* cannot happen for a parsed array */
    for (i = 0; i < n; i++) {
        char where[40] = "";
        json_t *o = pb->array ? json_array_get(doc, i) : doc;

        if (pb->array)
            snprintf(where, sizeof(where), "events[%zu]: ", i);
        if (event_from_json(req, o, where, &pb->items[i].ev, &scratch,
                            offs[i] == (size_t)-1 ? -1 : (long)offs[i]))
            goto fail;
    }
    for (i = 0; i < n; i++) {
        struct kz_event *ev = &pb->items[i].ev;

        pb->items[i].n_targets =
            kz_subidx_match(api->idx, ev->event_type, ev->group_id, ev->action_id,
                            ev->action_package_id, now, &pb->matches, &pb->nmatch, &pb->capmatch);
    }
    /* The match array may have moved while growing: point into it only now. */
    pb->ids = kz_calloc(pb->nmatch ? pb->nmatch : 1, sizeof(*pb->ids));
    pb->active = kz_calloc(pb->nmatch ? pb->nmatch : 1, sizeof(*pb->active));
    for (i = 0, k = 0; i < n; i++) {
        size_t j;

        pb->items[i].webhook_ids = pb->ids + k;
        pb->items[i].target_active = pb->active + k;
        for (j = 0; j < pb->items[i].n_targets; j++, k++) {
            pb->ids[k] = pb->matches[k].webhook_id;
            pb->active[k] = pb->matches[k].active;
        }
    }
    pb->op.type = KZ_OP_PUBLISH;
    pb->op.u.publish.items = pb->items;
    pb->op.u.publish.n = n;
    pb->op.done = publish_done;
    pb->op.arg = pb;
    kz_free(offs);
    json_decref(doc);
    kz_buf_cleanup(&scratch);
    return pb;
fail:
    pending_free(pb);
    kz_free(offs);
    json_decref(doc);
    kz_buf_cleanup(&scratch);
    return NULL;
}

static enum kz_err publish(struct kz_api *api, struct kz_req *req)
{
    struct publish *pb = publish_prepare(api, req);
    enum kz_err e;

    if (!pb)
        return KZ_OK;
    if (atomic_load(&api->closing)) {
        pending_free(pb);
        return fail(req, 503, "Unavailable", "the service is shutting down");
    }
    pb->req = req;
    req->pending = pb;
    atomic_fetch_add(&api->pending, 1);
    e = kz_store_submit(api->st, &pb->op);
    if (e) {
        atomic_fetch_sub(&api->pending, 1);
        req->pending = NULL;
        pending_free(pb);
        if (e == KZ_ERR_BUSY)
            atomic_fetch_add(&api->m->store_busy, 1);
        return internal(req, e);
    }
    return KZ_ERR_PENDING;
}

static const char *no_header(void *conn, const char *name)
{
    (void)conn;
    (void)name;
    return NULL;
}

void kz_api_publish_sync(struct kz_api *api, const char *body, size_t len, int *status,
                         struct kz_buf *out)
{
    struct kz_req req;
    struct publish *pb;
    enum kz_err e;

    memset(&req, 0, sizeof(req));
    kz_req_init(&req);
    req.method = "POST";
    req.path = "/v1/events";
    req.body = body;
    req.body_len = len;
    req.header = no_header;
    req.query = no_header;
    pb = publish_prepare(api, &req);
    if (pb) {
        pthread_mutex_init(&pb->lock, NULL);
        pthread_cond_init(&pb->cond, NULL);
        e = kz_store_submit(api->st, &pb->op);
        if (!e) {
            pthread_mutex_lock(&pb->lock);
            while (!pb->done)
                pthread_cond_wait(&pb->cond, &pb->lock);
            pthread_mutex_unlock(&pb->lock);
            pb->req = &req;
            req.complete = NULL;
            if (pb->op.result) {
                internal(&req, pb->op.result);
            } else if (pb->array) {
                json_t *arr = json_array();
                size_t i;

                for (i = 0; i < pb->n; i++)
                    json_array_append_new(arr, publish_result(&pb->items[i]));
                reply_json(&req, 202, json_pack("{s:o}", "events", arr));
            } else {
                reply_json(&req, 202, publish_result(&pb->items[0]));
            }
        } else {
            internal(&req, e);
        }
        pthread_cond_destroy(&pb->cond);
        pthread_mutex_destroy(&pb->lock);
        pending_free(pb);
    }
    *status = req.status;
    kz_buf_append(out, req.out.data, req.out.len);
    kz_req_cleanup(&req);
}

void kz_api_app_create(struct kz_api *api, const char *body, size_t len, int *status,
                       struct kz_buf *out)
{
    struct kz_req req;

    memset(&req, 0, sizeof(req));
    kz_req_init(&req);
    req.method = "POST";
    req.path = "/admin/v1/applications";
    req.body = body;
    req.body_len = len;
    req.header = no_header;
    req.query = no_header;
    app_create(api, &req);
    *status = req.status;
    kz_buf_append(out, req.out.data, req.out.len);
    kz_req_cleanup(&req);
}

/* ==== routing ==== */

static enum kz_err metrics(struct kz_api *api, struct kz_req *req)
{
    int64_t due = 0, sched = 0, inflight = 0;
    size_t total, inactive;
    uint64_t batches = 0, ops = 0;

    kz_store_backlog(api->st, kz_now_ms(), &due, &sched, &inflight);
    kz_subidx_counts(api->idx, &total, &inactive);
    kz_store_stats(api->st, &batches, &ops);
    atomic_store(&api->m->store_batches, (long long)batches);
    req->status = 200;
    req->content_type = "text/plain; version=0.0.4";
    kz_buf_reset(&req->out);
    kz_metrics_render(api->m, &req->out, due, sched, total, inactive);
    return KZ_OK;
}

/* Splits a normalised path into at most `max` segments (pointers into `copy`). */
static size_t split(char *copy, char **seg, size_t max)
{
    size_t n = 0;
    char *p = copy;

    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        if (n == max)
            return max + 1;
        seg[n++] = p;
        while (*p && *p != '/')
            p++;
        if (*p)
            *p++ = '\0';
    }
    return n;
}

static bool is(const char *a, const char *b)
{
    return !strcmp(a, b);
}

static enum kz_err webhook_routes(struct kz_api *api, struct kz_req *req, char **seg, size_t n)
{
    struct kz_app app;
    const char *m = req->method;
    int wait;
    enum kz_err result = KZ_OK;

    /* Decide 404/405 before authenticating, so the shape of the API is not a secret but
     * nothing else is revealed. */
    if (n == 2) {
        if (!is(m, "GET") && !is(m, "POST"))
            return method_not_allowed(req, "GET, POST");
    } else if (n == 3) {
        if (!is(m, "GET") && !is(m, "PUT") && !is(m, "DELETE"))
            return method_not_allowed(req, "GET, PUT, DELETE");
    } else if (n == 4 && is(seg[3], "deliveries")) {
        if (!is(m, "GET"))
            return method_not_allowed(req, "GET");
    } else if (n == 4 && is(seg[3], "replay")) {
        if (!is(m, "POST"))
            return method_not_allowed(req, "POST");
    } else {
        return fail(req, 404, "NotFound", "no such endpoint");
    }
    memset(&app, 0, sizeof(app));
    if (require_app(api, req, &app))
        return KZ_OK;
    wait = rate_check(api, app.id, kz_now_ms());
    if (wait) {
        snprintf(req->retry_after, sizeof(req->retry_after), "%d", wait);
        fail(req, 429, "Throttled", "more than %d calls per minute; retry after %d s",
             api->cfg->rate_limit, wait);
        goto out;
    }
    if (n >= 3 && !kz_id_is_safe(seg[2], 64)) {
        fail(req, 404, "NotFound", "no such webhook");
        goto out;
    }
    if (n == 2)
        result = is(m, "GET") ? webhook_list(api, req, &app) : webhook_create(api, req, &app);
    else if (n == 3 && is(m, "GET"))
        result = webhook_get(api, req, &app, seg[2]);
    else if (n == 3 && is(m, "PUT"))
        result = webhook_update(api, req, &app, seg[2]);
    else if (n == 3)
        result = webhook_delete(api, req, &app, seg[2]);
    else if (is(seg[3], "deliveries"))
        result = delivery_list(api, req, &app, seg[2]);
    else
        result = replay(api, req, &app, seg[2]);
out:
    kz_app_cleanup(&app);
    return result;
}

enum kz_err kz_api_handle(struct kz_api *api, struct kz_req *req)
{
    char copy[1024];
    char *seg[8];
    size_t n, plen = strlen(req->path);
    const char *m = req->method;

    if (plen >= sizeof(copy))
        return fail(req, 404, "NotFound", "no such endpoint");
    memcpy(copy, req->path, plen + 1);
    n = split(copy, seg, KZ_ARRAY_LEN(seg));
    if (n > KZ_ARRAY_LEN(seg) || !n)
        return fail(req, 404, "NotFound", "no such endpoint");

    if (n == 1 && is(seg[0], "healthz")) {
        if (!is(m, "GET") && !is(m, "HEAD"))
            return method_not_allowed(req, "GET");
        if (kz_store_ping(api->st))
            return fail(req, 503, "Unavailable", "the store is not reachable");
        return reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
    }
    if (n == 1 && is(seg[0], "metrics")) {
        if (!is(m, "GET"))
            return method_not_allowed(req, "GET");
        return metrics(api, req);
    }
    if (is(seg[0], "admin") && n >= 3 && is(seg[1], "v1") && is(seg[2], "applications")) {
        if (n == 3) {
            if (!is(m, "GET") && !is(m, "POST"))
                return method_not_allowed(req, "GET, POST");
        } else if (n == 4) {
            if (!is(m, "DELETE"))
                return method_not_allowed(req, "DELETE");
        } else {
            return fail(req, 404, "NotFound", "no such endpoint");
        }
        if (require_admin(api, req))
            return KZ_OK;
        if (n == 3)
            return is(m, "GET") ? app_list(api, req) : app_create(api, req);
        if (!kz_id_is_safe(seg[3], 64))
            return fail(req, 404, "NotFound", "no application %s", "with that id");
        return app_delete(api, req, seg[3]);
    }
    if (!is(seg[0], "v1") || n < 2)
        return fail(req, 404, "NotFound", "no such endpoint");
    if (n == 2 && is(seg[1], "accessToken")) {
        if (!is(m, "GET") && !is(m, "POST"))
            return method_not_allowed(req, "GET, POST");
        return access_token(api, req);
    }
    if (n == 2 && is(seg[1], "events")) {
        if (!is(m, "POST"))
            return method_not_allowed(req, "POST");
        if (require_admin(api, req))
            return KZ_OK;
        return publish(api, req);
    }
    if (is(seg[1], "webhook"))
        return webhook_routes(api, req, seg, n);
    return fail(req, 404, "NotFound", "no such endpoint");
}
