/* api.c — routing, authentication and the one mapping from enum kz_err to an HTTP answer.
 * The handlers live beside it: api_webhook.c (webhooks, delivery log, replay), api_publish.c
 * (POST /v1/events) and api_admin.c (applications, /healthz, /metrics); what they share is in
 * api_internal.h. */
#include "api.h"
#include "api_internal.h"
#include "alloc.h"
#include "id.h"
#include "json.h"
#include "openapi.h"
#include "sign.h"
#include "ui.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* ==== the api object ==== */

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
    api->rl = kz_ratelimit_new();
    api->hs = kz_handshaker_new(cfg);
    return api;
}

void kz_api_free(struct kz_api *api)
{
    if (!api)
        return;
    kz_handshaker_free(api->hs); /* every handshake's continuation has run */
    kz_ratelimit_free(api->rl);
    kz_free(api);
}

void kz_api_close(struct kz_api *api)
{
    atomic_store(&api->closing, true);
    /* Handshakes still waiting end now (503), so the requests they hold are answered. */
    if (api->hs)
        kz_handshaker_close(api->hs);
}

int kz_api_pending(struct kz_api *api)
{
    return atomic_load(&api->pending);
}

void kz_req_init(struct kz_req *req)
{
    req->status = 0;
    /* a page stops adding items at KZ_API_PAGE_MAX; its closing text fits in the rest */
    kz_buf_init(&req->out, KZ_API_PAGE_MAX + 64 * 1024);
    req->content_type = "application/json";
    req->retry_after[0] = '\0';
    req->allow = NULL;
    req->headers[0] = NULL;
    req->app_id[0] = '\0';
    req->pending = NULL;
    req->err.message[0] = '\0';
    req->err.flavor = KZ_FLAVOR_PLAIN;
    req->err.retry_after_s = 0;
}

void kz_req_cleanup(struct kz_req *req)
{
    kz_buf_cleanup(&req->out);
    if (req->pending)
        req->pending->release(req->pending);
    req->pending = NULL;
}

/* ==== errors: the one mapping to HTTP ==== */

static enum kz_err vreject(struct kz_req *req, enum kz_err e, enum kz_req_flavor flavor,
                           const char *fmt, va_list ap) __attribute__((format(printf, 4, 0)));

static enum kz_err vreject(struct kz_req *req, enum kz_err e, enum kz_req_flavor flavor,
                           const char *fmt, va_list ap)
{
    vsnprintf(req->err.message, sizeof(req->err.message), fmt, ap);
    req->err.flavor = flavor;
    return e;
}

enum kz_err kz_api_reject(struct kz_req *req, enum kz_err e, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreject(req, e, KZ_FLAVOR_PLAIN, fmt, ap);
    va_end(ap);
    return e;
}

enum kz_err kz_api_reject_callback(struct kz_req *req, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreject(req, KZ_ERR_INVALID, KZ_FLAVOR_CALLBACK, fmt, ap);
    va_end(ap);
    return KZ_ERR_INVALID;
}

enum kz_err kz_api_reject_token(struct kz_req *req, const char *reason)
{
    snprintf(req->err.message, sizeof(req->err.message), KZ_API_TOKEN_MSG " (%s)", reason);
    req->err.flavor = KZ_FLAVOR_TOKEN;
    return KZ_ERR_AUTH;
}

enum kz_err kz_api_throttle(struct kz_req *req, int wait_s, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreject(req, KZ_ERR_QUOTA, KZ_FLAVOR_PLAIN, fmt, ap);
    va_end(ap);
    req->err.retry_after_s = wait_s < 1 ? 1 : wait_s;
    return KZ_ERR_QUOTA;
}

enum kz_err kz_api_reject_fanout(struct kz_req *req, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreject(req, KZ_ERR_TOOBIG, KZ_FLAVOR_FANOUT, fmt, ap);
    va_end(ap);
    return KZ_ERR_TOOBIG;
}

enum kz_err kz_api_method_not_allowed(struct kz_req *req, const char *allow)
{
    req->allow = allow;
    return kz_api_reject(req, KZ_ERR_NOTFOUND, "method %s is not allowed here; allowed: %s",
                         req->method, allow);
}

/* The HTTP answer of each error (README.md "Errors"): status, errorCode and the message used
 * when the handler gave none. */
struct answer {
    int status;
    const char *code;
    const char *message;
};

static struct answer answer_for(const struct kz_req *req, enum kz_err e)
{
    if (req->err.flavor == KZ_FLAVOR_INTERNAL) {
        if (e == KZ_ERR_BUSY)
            return (struct answer){503, "Unavailable",
                                   "the service is overloaded or the store is busy; retry later"};
        if (e == KZ_ERR_DB || e == KZ_ERR_IO)
            return (struct answer){503, "Unavailable", "the store is unavailable; retry later"};
        return (struct answer){500, "InternalError", NULL};
    }
    switch (e) {
    case KZ_ERR_INVALID:
    case KZ_ERR_UNSAFE:
        if (req->err.flavor == KZ_FLAVOR_CALLBACK)
            return (struct answer){400, "CallbackValidationFailed",
                                   "callback URL validation failed"};
        return (struct answer){400, "InvalidParameters", "invalid parameters"};
    case KZ_ERR_AUTH:
        if (req->err.flavor == KZ_FLAVOR_TOKEN)
            return (struct answer){401, "InvalidToken", KZ_API_TOKEN_MSG};
        return (struct answer){401, "Unauthenticated", "authentication required"};
    case KZ_ERR_FORBIDDEN:
        return (struct answer){403, "Forbidden", "forbidden"};
    case KZ_ERR_QUOTA:
        if (req->err.retry_after_s > 0)
            return (struct answer){429, "Throttled", "too many requests"};
        return (struct answer){403, "QuotaExceeded", "quota exceeded"};
    case KZ_ERR_NOTFOUND:
        if (req->allow)
            return (struct answer){405, "MethodNotAllowed", "method not allowed"};
        return (struct answer){404, "NotFound", "no such endpoint"};
    case KZ_ERR_CONFLICT:
        return (struct answer){409, "Conflict", "conflict"};
    case KZ_ERR_TOOBIG:
        if (req->err.flavor == KZ_FLAVOR_FANOUT)
            return (struct answer){413, "FanoutTooLarge", "too many deliveries"};
        return (struct answer){413, "PayloadTooLarge", "request body over 1 MiB"};
    case KZ_ERR_BUSY:
        return (struct answer){503, "Unavailable", "the service is busy; retry later"};
    case KZ_ERR_DB:
    case KZ_ERR_IO:
        return (struct answer){503, "Unavailable", "the store is unavailable; retry later"};
    default:
        return (struct answer){500, "InternalError", NULL};
    }
}

static const char *category(int status)
{
    if (status == 401)
        return "AuthException";
    if (status >= 500)
        return "ServerError";
    return "ClientError";
}

void kz_api_error_answer(struct kz_req *req, enum kz_err e)
{
    struct answer a = answer_for(req, e);
    char msg[sizeof(req->err.message)];

    KZ_ASSERT(e != KZ_OK && e != KZ_ERR_PENDING);
    if (req->err.message[0] && !(req->err.flavor == KZ_FLAVOR_INTERNAL && a.message))
        snprintf(msg, sizeof(msg), "%s", req->err.message);
    else if (a.message)
        snprintf(msg, sizeof(msg), "%s", a.message);
    else
        snprintf(msg, sizeof(msg), "internal error: %s", kz_err_str(e));
    /* Messages may quote client bytes (a field name, an id): keep the JSON valid UTF-8. */
    for (size_t i = 0, n = strlen(msg); i < n;) {
        size_t k = kz_utf8_seq((const unsigned char *)msg + i, n - i);

        if (k)
            i += k;
        else
            msg[i++] = '?';
    }
    if (a.status == 429)
        snprintf(req->retry_after, sizeof(req->retry_after), "%d", req->err.retry_after_s);
    if (a.status != 405)
        req->allow = NULL;
    req->status = a.status;
    req->content_type = "application/json";
    kz_buf_reset(&req->out);
    kz_buf_puts(&req->out, "{\"message\":");
    kz_buf_json_str(&req->out, msg, strlen(msg));
    kz_buf_printf(&req->out, ",\"errorCode\":\"%s\",\"errorCategoryKey\":\"%s\"}", a.code,
                  category(a.status));
}

enum kz_err kz_api_reply(struct kz_req *req, int status, json_t *v)
{
    kz_buf_reset(&req->out);
    req->status = status;
    req->content_type = "application/json";
    if (!v || kz_json_dump(v, &req->out)) {
        json_decref(v);
        req->err.flavor = KZ_FLAVOR_INTERNAL;
        snprintf(req->err.message, sizeof(req->err.message), "could not serialise the answer");
        return KZ_ERR_NOMEM;
    }
    json_decref(v);
    return KZ_OK;
}

void kz_api_finish(struct kz_req *req, enum kz_err e)
{
    if (e)
        kz_api_error_answer(req, e);
    req->complete(req);
}

enum kz_err kz_api_internal(struct kz_req *req, enum kz_err e)
{
    req->err.message[0] = '\0';
    req->err.flavor = KZ_FLAVOR_INTERNAL;
    return e;
}

/* ==== pages ==== */

void kz_api_page_begin(struct kz_api_page *pg, struct kz_req *req, const char *name)
{
    memset(pg, 0, sizeof(*pg));
    pg->req = req;
    kz_buf_reset(&req->out);
    kz_buf_puts(&req->out, "{");
    kz_buf_json_str(&req->out, name, strlen(name));
    kz_buf_puts(&req->out, ":[");
}

bool kz_api_page_add(struct kz_api_page *pg, json_t *item)
{
    struct kz_buf *out = &pg->req->out;
    size_t before = out->len;
    enum kz_err e;

    if (pg->cut || pg->fail || !item) {
        pg->fail = pg->fail || !item;
        json_decref(item);
        return false;
    }
    e = pg->n ? kz_buf_puts(out, ",") : KZ_OK;
    if (!e)
        e = kz_json_dump(item, out);
    json_decref(item);
    if (!e && out->len <= KZ_API_PAGE_MAX) {
        pg->n++;
        return true;
    }
    out->len = before;
    if (out->data)
        out->data[before] = '\0';
    if (e && e != KZ_ERR_TOOBIG)
        pg->fail = true;
    else
        pg->cut = true;
    return false;
}

enum kz_err kz_api_page_end(struct kz_api_page *pg, const char *cursor, bool omit_null)
{
    struct kz_req *req = pg->req;
    enum kz_err e;

    if (pg->fail) {
        req->err.flavor = KZ_FLAVOR_INTERNAL;
        snprintf(req->err.message, sizeof(req->err.message), "could not serialise the answer");
        return KZ_ERR_NOMEM;
    }
    e = kz_buf_puts(&req->out, "]");
    if (!e && cursor) {
        e = kz_buf_puts(&req->out, ",\"nextCursor\":");
        if (!e)
            e = kz_buf_json_str(&req->out, cursor, strlen(cursor));
    } else if (!e && !omit_null) {
        e = kz_buf_puts(&req->out, ",\"nextCursor\":null");
    }
    if (!e)
        e = kz_buf_puts(&req->out, "}");
    KZ_ASSERT(!e); /* the room above KZ_API_PAGE_MAX is kept for this */
    req->status = 200;
    req->content_type = "application/json";
    return KZ_OK;
}

/* ==== helpers for request bodies ==== */

json_t *kz_api_parse_body(struct kz_req *req, bool allow_array, bool any_numbers)
{
    char err[200];
    json_t *doc;

    if (!req->body_len) {
        kz_api_reject(req, KZ_ERR_INVALID, "request body required");
        return NULL;
    }
    doc = any_numbers ? kz_json_parse_lenient_numbers(req->body, req->body_len, err, sizeof(err))
                      : kz_json_parse(req->body, req->body_len, err, sizeof(err));
    if (!doc) {
        kz_api_reject(req, KZ_ERR_INVALID, "malformed JSON: %s", err);
        return NULL;
    }
    if (!json_is_object(doc) && !(allow_array && json_is_array(doc))) {
        json_decref(doc);
        kz_api_reject(req, KZ_ERR_INVALID, "%s",
                      allow_array ? "body must be a JSON object or array"
                                  : "body must be a JSON object");
        return NULL;
    }
    return doc;
}

bool kz_api_header_safe(const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c < 0x20 || c > 0x7e)
            return false;
    }
    return true;
}

enum kz_err kz_api_opt_str(struct kz_req *req, const json_t *obj, const char *name, size_t max,
                           bool empty_ok, char **out, bool *present)
{
    json_t *v = kz_json_get(obj, name);
    const char *s;
    size_t len;

    *out = NULL;
    /* null is the same as leaving the field out (typed .NET/Java models send every property) */
    if (present)
        *present = v && !json_is_null(v);
    if (!v || json_is_null(v))
        return KZ_OK;
    if (empty_ok && json_is_string(v) && !json_string_length(v))
        return KZ_OK;
    if (kz_json_str(v, max, &s, &len))
        return kz_api_reject(req, KZ_ERR_INVALID, "%s must be a string of 1..%zu bytes", name, max);
    *out = kz_strndup(s, len);
    return KZ_OK;
}

bool kz_api_app_grants(const struct kz_app *app, const char *object_id)
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

/* ==== authentication ==== */

/* A fixed path segment: matched ignoring ASCII case, as .NET routing did (`/V1/Webhook`). */
static bool seg_is(const char *seg, const char *name)
{
    return !strcasecmp(seg, name);
}

/* Ids in paths are our lower-case UUIDs; a client that upper-cased one (.NET's Guid "X" or "B"
 * formats are upper-case) still names the same webhook or application. */
static void lower_id(char *s)
{
    for (; *s; s++) {
        if (*s >= 'A' && *s <= 'Z')
            *s = (char)(*s - 'A' + 'a');
    }
}

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

/* KZ_OK when the request carries the admin token. Guessing it: after KZ_ADMIN_FAILURES_PER_IP
 * wrong tokens in a minute from one client address, every admin request from it is throttled
 * until the minute ends (a missing header does not count). */
static enum kz_err require_admin(struct kz_api *api, struct kz_req *req)
{
    const char *t = bearer(req);
    char hash[65];
    size_t len;
    int wait = kz_ratelimit_admin(api->rl, req->remote_ip, kz_now_ms(), false);

    if (wait)
        return kz_api_throttle(req, wait, "too many wrong admin tokens; retry after %d s", wait);
    if (!t)
        return kz_api_reject(req, KZ_ERR_AUTH, "missing Authorization: Bearer <admin token>");
    len = strlen(t);
    if (len <= 1024)
        kz_sha256_hex(t, len, hash);
    if (len > 1024 || !kz_ct_equal(hash, api->admin_hash, 64)) {
        kz_ratelimit_admin(api->rl, req->remote_ip, kz_now_ms(), true);
        return kz_api_reject(req, KZ_ERR_AUTH, "invalid admin token");
    }
    return KZ_OK;
}

/* Resolves the access token to its application. */
static enum kz_err require_app(struct kz_api *api, struct kz_req *req, struct kz_app *app)
{
    const char *t = req->header(req->conn, "accessToken");
    char hash[65], app_id[40];
    int64_t expires = 0;
    enum kz_err e;

    if (!t)
        t = bearer(req);
    if (!t || !*t)
        return kz_api_reject(req, KZ_ERR_AUTH, "missing accessToken header");
    if (strlen(t) > 1024)
        return kz_api_reject_token(req, "malformed token");
    kz_sha256_hex(t, strlen(t), hash);
    e = kz_store_token_get(api->st, hash, app_id, &expires);
    if (e == KZ_ERR_NOTFOUND)
        return kz_api_reject_token(req, "unknown token");
    if (e)
        return kz_api_internal(req, e);
    if (expires <= kz_now_ms())
        return kz_api_reject_token(req, "token expired");
    e = kz_store_app_get(api->st, app_id, app);
    if (e == KZ_ERR_NOTFOUND)
        return kz_api_reject_token(req, "application deleted");
    if (e)
        return kz_api_internal(req, e);
    snprintf(req->app_id, sizeof(req->app_id), "%s", app->id);
    return KZ_OK;
}

#define BAD_APP_CREDENTIALS "Dont have correct applicationId and secret in header!"

/* GET|POST /v1/accessToken with applicationId, applicationSecret, refreshToken headers. Brute
 * force: failures are counted per applicationId and per client address (ratelimit.h). */
static enum kz_err access_token(struct kz_api *api, struct kz_req *req)
{
    const char *id = req->header(req->conn, "applicationId");
    const char *secret = req->header(req->conn, "applicationSecret");
    const char *refresh = req->header(req->conn, "refreshToken");
    struct kz_app app;
    char h1[65], h2[65], token[KZ_API_SECRET_CHARS + 1], hash[65], id_lc[65];
    struct kz_op op;
    enum kz_err e;
    bool ok;
    json_t *o;
    struct kz_buf url;
    int64_t expiry;
    int wait;

    memset(&app, 0, sizeof(app));
    wait = kz_ratelimit_auth(api->rl, id && strlen(id) < 64 ? id : "", req->remote_ip, kz_now_ms(),
                             false);
    if (wait)
        return kz_api_throttle(req, wait, "too many failed attempts; retry after %d s", wait);
    if (!id || !secret || !refresh)
        return kz_api_reject(req, KZ_ERR_AUTH,
                             BAD_APP_CREDENTIALS " (applicationId, applicationSecret and "
                                                 "refreshToken are required)");
    if (strlen(id) > 64 || strlen(secret) > 1024 || strlen(refresh) > 1024)
        return kz_api_reject(req, KZ_ERR_AUTH, BAD_APP_CREDENTIALS);
    snprintf(id_lc, sizeof(id_lc), "%s", id); /* a GUID, matched in any case as .NET did */
    lower_id(id_lc);
    id = id_lc;
    e = kz_store_app_get(api->st, id, &app);
    if (e == KZ_ERR_NOTFOUND) {
        kz_ratelimit_auth(api->rl, strlen(id) < 64 ? id : "", req->remote_ip, kz_now_ms(), true);
        return kz_api_reject(req, KZ_ERR_AUTH, BAD_APP_CREDENTIALS);
    }
    if (e)
        return kz_api_internal(req, e);
    kz_sha256_hex(secret, strlen(secret), h1);
    kz_sha256_hex(refresh, strlen(refresh), h2);
    ok = kz_ct_equal(h1, app.secret_hash, 64);
    ok = kz_ct_equal(h2, app.refresh_hash, 64) && ok;
    if (!ok) {
        kz_ratelimit_auth(api->rl, app.id, req->remote_ip, kz_now_ms(), true);
        kz_app_cleanup(&app);
        return kz_api_reject(req, KZ_ERR_AUTH, BAD_APP_CREDENTIALS);
    }
    snprintf(req->app_id, sizeof(req->app_id), "%s", app.id);
    kz_id_token(token, KZ_API_SECRET_CHARS);
    kz_sha256_hex(token, KZ_API_SECRET_CHARS, hash);
    expiry = kz_now_ms() + api->cfg->token_ttl_ms;
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_TOKEN_ADD;
    op.u.token.hash = hash;
    op.u.token.app_id = app.id;
    op.u.token.expires_at = expiry;
    e = kz_store_exec(api->st, &op);
    kz_app_cleanup(&app);
    if (e)
        return kz_api_internal(req, e);
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
    return kz_api_reply(req, 200, o);
}

/* ==== routing ==== */

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

/* GET /openapi.json: the bytes of docs/openapi.json, embedded at build time. */
static enum kz_err openapi(struct kz_req *req)
{
    if (kz_buf_append(&req->out, kz_openapi_json, kz_openapi_json_len))
        return kz_api_internal(req, KZ_ERR_NOMEM);
    req->status = 200;
    req->content_type = "application/json";
    return KZ_OK;
}

/* /v1/webhook...: the method is checked first (so 404/405 are decided before authenticating:
 * the shape of the API is not a secret but nothing else is revealed), then the access token,
 * then --rate-limit. */
static enum kz_err webhook_routes(struct kz_api *api, struct kz_req *req, char **seg, size_t n)
{
    struct kz_app app;
    const char *m = req->method;
    const char *id = n >= 3 ? seg[2] : NULL;
    int wait;
    enum kz_err result;

    if (n == 2) {
        if (!is(m, "GET") && !is(m, "POST"))
            return kz_api_method_not_allowed(req, "GET, POST");
    } else if (n == 3) {
        if (!is(m, "GET") && !is(m, "PUT") && !is(m, "DELETE"))
            return kz_api_method_not_allowed(req, "GET, PUT, DELETE");
    } else if (n == 4 && seg_is(seg[3], "deliveries")) {
        if (!is(m, "GET"))
            return kz_api_method_not_allowed(req, "GET");
    } else if (n == 4 && seg_is(seg[3], "replay")) {
        if (!is(m, "POST"))
            return kz_api_method_not_allowed(req, "POST");
    } else if (n == 4 && seg_is(seg[3], "secret")) {
        if (!is(m, "GET"))
            return kz_api_method_not_allowed(req, "GET");
    } else if (n == 5 && seg_is(seg[3], "secret") && seg_is(seg[4], "rotate")) {
        if (!is(m, "POST"))
            return kz_api_method_not_allowed(req, "POST");
    } else if (n == 4 && seg_is(seg[3], "test")) {
        if (!is(m, "POST"))
            return kz_api_method_not_allowed(req, "POST");
    } else if (n == 5 && seg_is(seg[3], "deliveries")) {
        if (!is(m, "GET"))
            return kz_api_method_not_allowed(req, "GET");
    } else if (n == 6 && seg_is(seg[3], "deliveries") && seg_is(seg[5], "retry")) {
        if (!is(m, "POST"))
            return kz_api_method_not_allowed(req, "POST");
    } else if (n == 4 && seg_is(seg[3], "health")) {
        if (!is(m, "GET"))
            return kz_api_method_not_allowed(req, "GET");
    } else {
        return kz_api_reject(req, KZ_ERR_NOTFOUND, "no such endpoint");
    }
    memset(&app, 0, sizeof(app));
    result = require_app(api, req, &app);
    if (result)
        goto out;
    wait = kz_ratelimit_call(api->rl, app.id, api->cfg->rate_limit, kz_now_ms());
    if (wait) {
        result = kz_api_throttle(req, wait, "more than %d calls per minute; retry after %d s",
                                 api->cfg->rate_limit, wait);
        goto out;
    }
    if (id && !kz_id_is_safe(id, 64)) {
        result = kz_api_reject(req, KZ_ERR_NOTFOUND, "no such webhook");
        goto out;
    }
    if (id)
        lower_id(seg[2]);
    if (n == 2)
        result = is(m, "GET") ? kz_api_webhook_list(api, req, &app)
                              : kz_api_webhook_create(api, req, &app);
    else if (n == 3 && is(m, "GET"))
        result = kz_api_webhook_get(api, req, &app, id);
    else if (n == 3 && is(m, "PUT"))
        result = kz_api_webhook_update(api, req, &app, id);
    else if (n == 3)
        result = kz_api_webhook_delete(api, req, &app, id);
    else if (n == 4 && seg_is(seg[3], "deliveries"))
        result = kz_api_delivery_list(api, req, &app, id);
    else if (n == 4 && seg_is(seg[3], "secret"))
        result = kz_api_secret_get(api, req, &app, id);
    else if (n == 4 && seg_is(seg[3], "test"))
        result = kz_api_webhook_test(api, req, &app, id);
    else if (n == 5 && seg_is(seg[3], "secret"))
        result = kz_api_secret_rotate(api, req, &app, id);
    else if (n == 5)
        result = kz_api_delivery_get(api, req, &app, id, seg[4]);
    else if (n == 6)
        result = kz_api_delivery_retry(api, req, &app, id, seg[4]);
    else if (n == 4 && seg_is(seg[3], "health"))
        result = kz_api_webhook_health(api, req, &app, id);
    else
        result = kz_api_replay(api, req, &app, id);
out:
    kz_app_cleanup(&app);
    return result;
}

/* /admin/v1/applications[/{id}] */
static enum kz_err admin_routes(struct kz_api *api, struct kz_req *req, char **seg, size_t n)
{
    const char *m = req->method;
    enum kz_err e;

    if (n == 3) {
        if (!is(m, "GET") && !is(m, "POST"))
            return kz_api_method_not_allowed(req, "GET, POST");
    } else if (n == 4) {
        if (!is(m, "DELETE"))
            return kz_api_method_not_allowed(req, "DELETE");
    } else {
        return kz_api_reject(req, KZ_ERR_NOTFOUND, "no such endpoint");
    }
    e = require_admin(api, req);
    if (e)
        return e;
    if (n == 3)
        return is(m, "GET") ? kz_api_app_list(api, req) : kz_api_app_create_req(api, req);
    if (!kz_id_is_safe(seg[3], 64))
        return kz_api_reject(req, KZ_ERR_NOTFOUND, "no application with that id");
    lower_id(seg[3]);
    return kz_api_app_delete(api, req, seg[3]);
}

static enum kz_err route(struct kz_api *api, struct kz_req *req)
{
    char copy[1024];
    char *seg[8];
    size_t n, plen = strlen(req->path);
    const char *m = req->method;
    enum kz_err e;

    if (plen >= sizeof(copy))
        return kz_api_reject(req, KZ_ERR_NOTFOUND, "no such endpoint");
    memcpy(copy, req->path, plen + 1);
    n = split(copy, seg, KZ_ARRAY_LEN(seg));
    if (n > KZ_ARRAY_LEN(seg) || !n)
        return kz_api_reject(req, KZ_ERR_NOTFOUND, "no such endpoint");

    if (n == 1 && seg_is(seg[0], "healthz")) {
        if (!is(m, "GET") && !is(m, "HEAD"))
            return kz_api_method_not_allowed(req, "GET");
        return kz_api_healthz(api, req);
    }
    if (n == 1 && seg_is(seg[0], "metrics")) {
        if (!is(m, "GET"))
            return kz_api_method_not_allowed(req, "GET");
        return kz_api_metrics(api, req);
    }
    if (n == 1 && seg_is(seg[0], "openapi.json")) {
        if (!is(m, "GET"))
            return kz_api_method_not_allowed(req, "GET");
        return openapi(req);
    }
    if (seg_is(seg[0], "admin") && n >= 3 && seg_is(seg[1], "v1") && seg_is(seg[2], "applications"))
        return admin_routes(api, req, seg, n);
    if (seg_is(seg[0], "ui"))
        return kz_ui_serve(req); /* the console (ui.h) */
    if (seg_is(seg[0], "admin") && n == 3 && seg_is(seg[1], "v1") &&
        (seg_is(seg[2], "stats") || seg_is(seg[2], "webhooks"))) {
        if (!is(m, "GET"))
            return kz_api_method_not_allowed(req, "GET");
        e = require_admin(api, req);
        if (e)
            return e;
        return seg_is(seg[2], "stats") ? kz_api_stats(api, req) : kz_api_admin_webhooks(api, req);
    }
    if (!seg_is(seg[0], "v1") || n < 2)
        return kz_api_reject(req, KZ_ERR_NOTFOUND, "no such endpoint");
    if (n == 2 && seg_is(seg[1], "accessToken")) {
        if (!is(m, "GET") && !is(m, "POST"))
            return kz_api_method_not_allowed(req, "GET, POST");
        return access_token(api, req);
    }
    if (n == 2 && seg_is(seg[1], "events")) {
        if (!is(m, "POST"))
            return kz_api_method_not_allowed(req, "POST");
        e = require_admin(api, req);
        if (e)
            return e;
        return kz_api_publish(api, req);
    }
    if (seg_is(seg[1], "webhook"))
        return webhook_routes(api, req, seg, n);
    return kz_api_reject(req, KZ_ERR_NOTFOUND, "no such endpoint");
}

enum kz_err kz_api_handle(struct kz_api *api, struct kz_req *req)
{
    enum kz_err e = route(api, req);

    if (e == KZ_OK || e == KZ_ERR_PENDING)
        return e;
    kz_api_error_answer(req, e);
    return KZ_OK;
}
