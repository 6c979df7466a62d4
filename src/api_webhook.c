/* api_webhook.c — an application's webhooks (create, list, get, update, delete), their delivery
 * log and replay. Every handler gets the authenticated application; another application's
 * webhook is NotFound, never Forbidden (its existence is not revealed). */
#include "api_internal.h"
#include "alloc.h"
#include "dur.h"
#include "envelope.h"
#include "filter.h"
#include "id.h"
#include "json.h"
#include "sign.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_VALIDITY_MS INT64_C(63113852000)
#define MAX_VALIDITY_MS INT64_C(253402300799999) /* 9999-12-31 */
#define DEFAULT_OVERLAP_MS INT64_C(86400000)     /* a rotation's overlap: 24h */
#define MAX_OVERLAP_MS INT64_C(604800000)        /* 7d */

/* "headers": the stored object, {} when none. */
static void o_headers(json_t *o, const struct kz_webhook *w)
{
    json_t *h = w->headers_json ? json_loads(w->headers_json, 0, NULL) : NULL;

    json_object_set_new(o, "headers", h ? h : json_object());
}

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
    o_headers(o, w);
    json_object_set_new(o, "rateLimit", json_integer(w->rate_limit));
    json_object_set_new(o, "ordered", json_boolean(w->ordered));
    /* Last, and null when set: filter_splice() writes the stored text in its place, so numbers
     * come back exactly as written (1e400, 21-digit integers) rather than as doubles. */
    json_object_set_new(o, "filter", w->filter_json ? json_null() : json_object());
    return o;
}

/* The serialised webhook_json(w) ends the text in `out`: put w's filter in place of the null
 * written for it. */
static enum kz_err filter_splice(struct kz_buf *out, const struct kz_webhook *w)
{
    static const char tail[] = "\"filter\":null}";
    size_t n = sizeof(tail) - 1;

    if (!w->filter_json)
        return KZ_OK;
    KZ_ASSERT(out->len >= n && !memcmp(out->data + out->len - n, tail, n));
    out->len -= 5;
    out->data[out->len] = '\0';
    if (kz_buf_puts(out, w->filter_json) || kz_buf_puts(out, "}"))
        return KZ_ERR_TOOBIG;
    return KZ_OK;
}

/* kz_api_reply of webhook_json(w). */
static enum kz_err reply_webhook(struct kz_req *req, const struct kz_webhook *w, int64_t now)
{
    enum kz_err e = kz_api_reply(req, 200, webhook_json(w, now));

    if (!e && filter_splice(&req->out, w)) {
        req->err.flavor = KZ_FLAVOR_INTERNAL;
        snprintf(req->err.message, sizeof(req->err.message), "could not serialise the answer");
        return KZ_ERR_NOMEM;
    }
    return e;
}

/* ==== reading a create or update body ==== */

static enum kz_err field_event_types(struct kz_req *req, const json_t *v, uint32_t *mask)
{
    size_t i;
    json_t *e;

    *mask = 0;
    if (!json_is_array(v) || !json_array_size(v) || json_array_size(v) > 100)
        return kz_api_reject(req, KZ_ERR_INVALID,
                             "eventTypes must be a non-empty array of event type names");
    json_array_foreach(v, i, e)
    {
        int t = json_is_string(e) ? kz_evtype_from_name(json_string_value(e)) : -1;

        if (t < 0)
            return kz_api_reject(req, KZ_ERR_INVALID, "eventTypes[%zu] is not a known event type",
                                 i);
        *mask |= 1u << t;
    }
    return KZ_OK;
}

/* ==== delivery controls: headers and filter (README.md "Delivery controls") ==== */

/* Header names a webhook may not set: the transport's own, the signature's, the trace's. */
static bool header_reserved(const char *name)
{
    static const char *const reserved[] = {
        "host",       "content-type", "content-length", "transfer-encoding",
        "connection", "user-agent",   "traceparent",    "kz-callback-token",
    };
    size_t i;

    if (!strncasecmp(name, "webhook-", 8))
        return true;
    for (i = 0; i < KZ_ARRAY_LEN(reserved); i++) {
        if (!strcasecmp(name, reserved[i]))
            return true;
    }
    return false;
}

/* An HTTP token (RFC 9110 tchar). */
static bool header_token(const char *s, size_t n)
{
    size_t i;

    if (!n)
        return false;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", c)))
            return false;
    }
    return true;
}

/* "headers": absent or null = unchanged, {} = none, else up to KZ_HEADERS_MAX name: value. */
static enum kz_err field_headers(struct kz_req *req, const json_t *doc, struct kz_webhook *w)
{
    json_t *v = kz_json_get(doc, "headers"), *val;
    const char *name, *seen[KZ_HEADERS_MAX];
    size_t n = 0, i;
    struct kz_buf b;

    if (!v || json_is_null(v))
        return KZ_OK;
    if (!json_is_object(v))
        return kz_api_reject(req, KZ_ERR_INVALID, "headers must be an object of name: value");
    if (json_object_size(v) > KZ_HEADERS_MAX)
        return kz_api_reject(req, KZ_ERR_INVALID, "headers: at most %d entries", KZ_HEADERS_MAX);
    json_object_foreach(v, name, val)
    {
        size_t nl = strlen(name);

        if (nl > KZ_HEADER_NAME_MAX || !header_token(name, nl))
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "headers: \"%.64s\" is not an HTTP header name of 1..%d token "
                                 "characters",
                                 header_token(name, nl) ? name : "(invalid name)",
                                 KZ_HEADER_NAME_MAX);
        if (header_reserved(name))
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "headers: %s is set by kzhook and may not be overridden", name);
        for (i = 0; i < n; i++) {
            if (!strcasecmp(seen[i], name))
                return kz_api_reject(req, KZ_ERR_INVALID,
                                     "headers: %s is given twice (names are case-insensitive)",
                                     name);
        }
        seen[n++] = name;
        if (!json_is_string(val) || json_string_length(val) > KZ_HEADER_VALUE_MAX ||
            !kz_api_header_safe(json_string_value(val), json_string_length(val)))
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "headers: the value of %s must be a string of printable ASCII, "
                                 "at most %d bytes",
                                 name, KZ_HEADER_VALUE_MAX);
    }
    kz_free(w->headers_json);
    w->headers_json = NULL;
    if (!n)
        return KZ_OK;
    kz_buf_init(&b, KZ_HEADERS_JSON_MAX);
    if (kz_json_dump(v, &b)) {
        kz_buf_cleanup(&b);
        return kz_api_reject(req, KZ_ERR_INVALID, "headers: too large");
    }
    w->headers_json = kz_strndup(kz_buf_cstr(&b), b.len);
    kz_buf_cleanup(&b);
    return KZ_OK;
}

/* "filter": absent or null = unchanged, {} = none. Read from the body's text, not the parsed
 * tree, so that its numbers keep their spelling; compiled here only to refuse a bad one (the
 * subscription index compiles it again when it takes the webhook). */
static enum kz_err field_filter(struct kz_req *req, const json_t *doc, struct kz_webhook *w)
{
    json_t *v = kz_json_get(doc, "filter");
    struct kz_str raw;
    struct kz_buf b;
    struct kz_filter *f = NULL;
    char err[300];
    enum kz_err e;

    if (!v || json_is_null(v))
        return KZ_OK;
    if (!json_is_object(v))
        return kz_api_reject(req, KZ_ERR_INVALID, "filter must be a JSON object");
    if (kz_json_raw_member(req->body, req->body_len, -1, "filter", &raw))
        return kz_api_reject(req, KZ_ERR_INVALID, "filter must be a JSON object");
    kz_buf_init(&b, KZ_FILTER_MAX);
    if (kz_json_minify(raw, &b)) {
        kz_buf_cleanup(&b);
        return kz_api_reject(req, KZ_ERR_INVALID, "filter: more than %d bytes", KZ_FILTER_MAX);
    }
    e = kz_filter_compile(kz_buf_cstr(&b), b.len, &f, err, sizeof(err));
    if (e) {
        kz_buf_cleanup(&b);
        return kz_api_reject(req, KZ_ERR_INVALID, "%s", err);
    }
    kz_free(w->filter_json);
    w->filter_json = f ? kz_strndup(kz_buf_cstr(&b), b.len) : NULL;
    kz_filter_free(f);
    kz_buf_cleanup(&b);
    return KZ_OK;
}

/* "rateLimit" (an integer 0..KZ_RATE_LIMIT_MAX, 0 = none) and "ordered" (a bool, or "true" /
 * "false"): absent or null = unchanged (README.md "Delivery controls"). */
static enum kz_err field_rate_order(struct kz_req *req, const json_t *doc, struct kz_webhook *w)
{
    json_t *v = kz_json_get(doc, "rateLimit");

    if (v && !json_is_null(v)) {
        int64_t n = -1;

        /* a JSON number with no fraction (the body may parse any number as a double) */
        if (!json_is_number(v) || kz_json_i64(v, &n) || n < 0 || n > KZ_RATE_LIMIT_MAX)
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "rateLimit must be an integer from 0 (no limit) to %d",
                                 KZ_RATE_LIMIT_MAX);
        w->rate_limit = (int)n;
    }
    v = kz_json_get(doc, "ordered");
    if (v && !json_is_null(v)) {
        bool b;

        if (kz_json_bool(v, &b))
            return kz_api_reject(req, KZ_ERR_INVALID, "ordered must be true or false");
        w->ordered = b;
    }
    return KZ_OK;
}

/* Reads the fields of a create (all required ones present) or update (`update`: any subset)
 * body into `w`; the error names the field. Sets *url_changed when a callBackUrl was given. */
static enum kz_err webhook_fields(struct kz_req *req, const json_t *doc, struct kz_webhook *w,
                                  bool update, bool *url_changed, bool *active_given)
{
    json_t *v;
    char *s = NULL;
    bool present;
    int64_t now = kz_now_ms();
    enum kz_err e;

    *url_changed = false;
    *active_given = false;
    e = kz_api_opt_str(req, doc, "objectId", KZ_ID_MAX, false, &s, &present);
    if (e)
        return e;
    if (s) {
        kz_free(w->object_id);
        w->object_id = s;
    } else if (!update || present) {
        return kz_api_reject(req, KZ_ERR_INVALID, "objectId is required");
    }
    v = kz_json_get(doc, "objectType");
    if (json_is_null(v))
        v = NULL; /* null = left out: required on create, unchanged in a PUT */
    if (v || !update) {
        int t = json_is_string(v) ? kz_objtype_from_name(json_string_value(v)) : -1;

        if (t < 0)
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "objectType must be one of Group, Action, ActionPackage");
        w->object_type = (enum kz_objtype)t;
    }
    v = kz_json_get(doc, "eventTypes");
    if (json_is_null(v))
        v = NULL;
    if (v || !update) {
        e = field_event_types(req, v, &w->event_mask);
        if (e)
            return e;
    }
    e = kz_api_opt_str(req, doc, "callBackUrl", KZ_URL_MAX, false, &s, &present);
    if (e)
        return e;
    if (s) {
        kz_free(w->callback_url);
        w->callback_url = s;
        *url_changed = true;
    } else if (!update || present) {
        return kz_api_reject(req, KZ_ERR_INVALID, "callBackUrl is required");
    }
    e = kz_api_opt_str(req, doc, "callBackToken", KZ_TOKEN_MAX, true, &s, &present);
    if (e)
        return e;
    if (s && !kz_api_header_safe(s, strlen(s))) {
        kz_free(s);
        return kz_api_reject(req, KZ_ERR_INVALID,
                             "callBackToken must be printable ASCII (it is sent as an HTTP "
                             "header)");
    }
    if (present) {
        kz_free(w->callback_token);
        w->callback_token = s;
    }
    e = kz_api_opt_str(req, doc, "callBackContext", KZ_CONTEXT_MAX, true, &s, &present);
    if (e)
        return e;
    if (present) {
        kz_free(w->callback_context);
        w->callback_context = s;
    }
    /* validity: 0, "0", "" and null mean the default, as a typed .NET/Java model sends an unset
     * long as 0: now + two years on create, unchanged in a PUT. */
    v = kz_json_get(doc, "validity");
    if (v && json_is_string(v) && !json_string_length(v))
        v = NULL;
    if (v && !json_is_null(v)) {
        int64_t ms;

        if (kz_json_i64(v, &ms) || ms < 0 || ms > MAX_VALIDITY_MS)
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "validity must be epoch milliseconds (number or numeric string)");
        if (ms && ms <= now)
            return kz_api_reject(req, KZ_ERR_INVALID, "validity must be in the future");
        if (ms)
            w->validity_ms = ms;
        else if (!update)
            w->validity_ms = w->ts_ms + DEFAULT_VALIDITY_MS;
    } else if (!update) {
        w->validity_ms = w->ts_ms + DEFAULT_VALIDITY_MS;
    }
    v = kz_json_get(doc, "Active");
    if (v && !json_is_null(v)) {
        bool b;

        if (kz_json_bool(v, &b))
            return kz_api_reject(req, KZ_ERR_INVALID, "Active must be true or false");
        w->active = b;
        *active_given = true;
    }
    e = field_headers(req, doc, w);
    if (e)
        return e;
    e = field_rate_order(req, doc, w);
    if (e)
        return e;
    return field_filter(req, doc, w);
}

static enum kz_err check_grant(struct kz_req *req, const struct kz_app *app,
                               const struct kz_webhook *w)
{
    if (!kz_api_app_grants(app, w->object_id))
        return kz_api_reject(req, KZ_ERR_FORBIDDEN,
                             "the application may not subscribe to objectId %s", w->object_id);
    return KZ_OK;
}

/* ==== writes that wait for a handshake ====
 *
 * A create, or a PUT that changes callBackUrl, runs the handshake first. It does not wait on
 * the API worker: the handler queues the handshake (callback.h) and returns KZ_ERR_PENDING;
 * handshake_done() then submits the store op on the handshaker thread, and write_done()
 * answers on the store writer thread. `struct hook_write` carries the request through; its lock
 * orders the answer against the transport giving the request up (kz_req_cleanup), so whichever
 * comes second frees it. */

struct hook_write {
    struct kz_api_pending base; /* first: req->pending points here */
    struct kz_api *api;
    struct kz_req *req;
    pthread_mutex_t lock;
    bool req_gone; /* the transport released req: nobody is waiting for the answer */
    bool finished; /* the answer was given: the transport frees this */
    bool update;   /* PUT: KZ_OP_WEBHOOK_UPDATE, else KZ_OP_WEBHOOK_INSERT */
    bool wake;     /* the PUT re-enabled the webhook: deliveries may be due */
    struct kz_webhook w;
    struct kz_op op;
    /* the error answer, prepared off the lock */
    enum kz_err e;
    enum kz_req_flavor flavor;
    char message[512];
};

static void hook_write_free(struct hook_write *hw)
{
    kz_webhook_cleanup(&hw->w);
    pthread_mutex_destroy(&hw->lock);
    kz_free(hw);
}

/* kz_req_cleanup: the transport is done with req. */
static void hook_write_release(struct kz_api_pending *p)
{
    struct hook_write *hw = (struct hook_write *)p;
    bool finished;

    pthread_mutex_lock(&hw->lock);
    finished = hw->finished;
    hw->req_gone = true;
    pthread_mutex_unlock(&hw->lock);
    if (finished)
        hook_write_free(hw);
}

/* Records the error answer (written by hook_write_end). Returns `e`. */
static enum kz_err hook_write_fail(struct hook_write *hw, enum kz_err e, enum kz_req_flavor flavor,
                                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static enum kz_err hook_write_fail(struct hook_write *hw, enum kz_err e, enum kz_req_flavor flavor,
                                   const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(hw->message, sizeof(hw->message), fmt, ap);
    va_end(ap);
    hw->e = e;
    hw->flavor = flavor;
    return e;
}

/* Answers the request: hw->e's error, or the 200 of the write. Any thread; last touch of hw
 * unless the transport already let go of req (then hw is freed here). */
static void hook_write_end(struct hook_write *hw)
{
    struct kz_api *api = hw->api;
    struct kz_req *req = hw->req;
    enum kz_err e = hw->e;

    pthread_mutex_lock(&hw->lock);
    if (hw->req_gone) {
        pthread_mutex_unlock(&hw->lock);
        hook_write_free(hw);
        atomic_fetch_sub(&api->pending, 1);
        return;
    }
    if (e) {
        snprintf(req->err.message, sizeof(req->err.message), "%s", hw->message);
        req->err.flavor = hw->flavor;
    } else if (hw->update) {
        e = reply_webhook(req, &hw->w, kz_now_ms());
    } else {
        e = kz_api_reply(
            req, 200,
            json_pack("{s:s, s:s}", "webhookId", hw->w.id, "signingSecret", hw->w.signing_secret));
    }
    hw->finished = true;
    kz_api_finish(req, e); /* the transport may free hw as soon as the lock is released */
    pthread_mutex_unlock(&hw->lock);
    atomic_fetch_sub(&api->pending, 1);
}

/* Store writer thread: the insert or update is committed (or refused). */
static void write_done(struct kz_op *op, void *arg)
{
    struct hook_write *hw = arg;
    struct kz_api *api = hw->api;
    enum kz_err e = op->result;

    if (e == KZ_ERR_QUOTA)
        hook_write_fail(hw, e, KZ_FLAVOR_PLAIN,
                        "the application already has %d webhooks (--max-webhooks-per-app)",
                        api->cfg->max_webhooks_per_app);
    else if (e == KZ_ERR_AUTH)
        hook_write_fail(hw, e, KZ_FLAVOR_TOKEN, KZ_API_TOKEN_MSG " (application deleted)");
    else if (e == KZ_ERR_NOTFOUND && hw->update)
        hook_write_fail(hw, e, KZ_FLAVOR_PLAIN, "no webhook %s", hw->w.id);
    else if (e)
        hook_write_fail(hw, e, KZ_FLAVOR_INTERNAL, "%s", "");
    if (!e) {
        kz_subidx_put(api->idx, &hw->w, op->webhooks_version);
        if (hw->wake && api->hooks.wake_dispatch)
            api->hooks.wake_dispatch(api->hooks.arg);
    }
    hook_write_end(hw);
}

/* Handshaker thread: the handshake ended. On success the write goes to the store. */
static void handshake_done(void *arg, const struct kz_handshake_result *r)
{
    struct hook_write *hw = arg;
    struct kz_api *api = hw->api;
    struct kz_app app;
    enum kz_err e;

    kz_ratelimit_release(api->rl, hw->w.app_id);
    if (r->e == KZ_ERR_BUSY) {
        hook_write_fail(hw, r->e, KZ_FLAVOR_PLAIN, "%s", r->why);
        hook_write_end(hw);
        return;
    }
    if (r->e) {
        if (r->bad_url)
            hook_write_fail(hw, KZ_ERR_INVALID, KZ_FLAVOR_PLAIN, "callBackUrl rejected: %s",
                            r->why);
        else
            hook_write_fail(hw, KZ_ERR_INVALID, KZ_FLAVOR_CALLBACK,
                            "callback URL validation failed: %s", r->why);
        hook_write_end(hw);
        return;
    }
    /* The application may have been deleted while the handshake ran. (The store refuses such
     * an insert too; this answers the common case before writing anything.) */
    memset(&app, 0, sizeof(app));
    e = kz_store_app_get(api->st, hw->w.app_id, &app);
    kz_app_cleanup(&app);
    if (e == KZ_ERR_NOTFOUND) {
        hook_write_fail(hw, KZ_ERR_AUTH, KZ_FLAVOR_TOKEN,
                        KZ_API_TOKEN_MSG " (application deleted)");
        hook_write_end(hw);
        return;
    }
    memset(&hw->op, 0, sizeof(hw->op));
    hw->op.type = hw->update ? KZ_OP_WEBHOOK_UPDATE : KZ_OP_WEBHOOK_INSERT;
    hw->op.u.webhook = hw->w;
    hw->op.u.max_per_app = hw->update ? 0 : api->cfg->max_webhooks_per_app;
    hw->op.done = write_done;
    hw->op.arg = hw;
    e = e ? e : kz_store_submit(api->st, &hw->op);
    if (e) {
        if (e == KZ_ERR_BUSY)
            atomic_fetch_add(&api->m->store_busy, 1);
        hook_write_fail(hw, e, KZ_FLAVOR_INTERNAL, "%s", "");
        hook_write_end(hw);
    }
}

/* Takes `w` (left empty) and starts its handshake; KZ_ERR_PENDING when the answer will come
 * through hook_write_end. At most KZ_API_HANDSHAKES_PER_APP per application at once. */
static enum kz_err write_after_handshake(struct kz_api *api, struct kz_req *req,
                                         struct kz_webhook *w, bool update, bool wake)
{
    struct hook_write *hw;
    enum kz_err e;
    int wait = (int)((api->cfg->validation_timeout_ms + 999) / 1000);

    if (!api->hs)
        return kz_api_reject(req, KZ_ERR_BUSY, "the callback handshake is not available");
    if (atomic_load(&api->closing))
        return kz_api_reject(req, KZ_ERR_BUSY, "the service is shutting down");
    if (!kz_ratelimit_acquire(api->rl, w->app_id, KZ_API_HANDSHAKES_PER_APP))
        return kz_api_throttle(req, wait,
                               "more than %d callback handshakes of this application in progress; "
                               "retry after %d s",
                               KZ_API_HANDSHAKES_PER_APP, wait);
    hw = kz_calloc(1, sizeof(*hw));
    hw->base.release = hook_write_release;
    hw->api = api;
    hw->req = req;
    hw->update = update;
    hw->wake = wake;
    pthread_mutex_init(&hw->lock, NULL);
    hw->w = *w;
    memset(w, 0, sizeof(*w));
    req->pending = &hw->base;
    atomic_fetch_add(&api->pending, 1);
    e = kz_handshake_start(api->hs, hw->w.callback_url, handshake_done, hw);
    if (e) {
        atomic_fetch_sub(&api->pending, 1);
        req->pending = NULL;
        kz_ratelimit_release(api->rl, hw->w.app_id);
        hook_write_free(hw);
        return kz_api_reject(req, KZ_ERR_BUSY,
                             "too many callback handshakes in progress; retry later");
    }
    return KZ_ERR_PENDING;
}

struct count_ctx {
    int n;
};

static void count_one(void *arg, const struct kz_webhook *w)
{
    (void)w;
    ((struct count_ctx *)arg)->n++;
}

/* --max-webhooks-per-app, checked before the handshake so a full application wastes no
 * receiver's time. (The store checks again in the insert's transaction, race-free.) */
static enum kz_err check_quota(struct kz_api *api, struct kz_req *req, const struct kz_app *app)
{
    struct count_ctx cc = {0};
    enum kz_err e = kz_store_webhook_list(api->st, app->id, -1, NULL, count_one, &cc);

    if (e)
        return kz_api_internal(req, e);
    if (cc.n >= api->cfg->max_webhooks_per_app)
        return kz_api_reject(req, KZ_ERR_QUOTA,
                             "the application already has %d webhooks (--max-webhooks-per-app)",
                             api->cfg->max_webhooks_per_app);
    return KZ_OK;
}

/* ==== handlers ==== */

enum kz_err kz_api_webhook_create(struct kz_api *api, struct kz_req *req, const struct kz_app *app)
{
    enum kz_err result = KZ_ERR_INVALID;
    json_t *doc = kz_api_parse_body(req, false, true); /* a filter may hold any number */
    struct kz_webhook w;
    bool url_changed, active_given;

    memset(&w, 0, sizeof(w));
    if (!doc)
        goto out;
    w.ts_ms = kz_now_ms();
    w.active = true;
    result = webhook_fields(req, doc, &w, false, &url_changed, &active_given);
    if (result)
        goto out;
    result = check_grant(req, app, &w);
    if (result)
        goto out;
    result = check_quota(api, req, app);
    if (result)
        goto out;
    kz_id_uuid4(w.id);
    snprintf(w.app_id, sizeof(w.app_id), "%s", app->id);
    w.signing_secret = kz_malloc(64);
    result = kz_sign_secret_new(w.signing_secret, 64);
    if (result) {
        kz_api_internal(req, result);
        goto out;
    }
    result = write_after_handshake(api, req, &w, false, false);
out:
    kz_webhook_cleanup(&w);
    json_decref(doc);
    return result;
}

/* GET /v1/webhook: in creation order, cut before KZ_API_PAGE_MAX of output; a cut page ends
 * with "nextCursor" (the number of webhooks before the next page), absent otherwise. */
struct list_ctx {
    struct kz_api_page pg;
    struct kz_req *req;
    int64_t now;
    long long skip, seen;
};

static void webhook_list_one(void *arg, const struct kz_webhook *w)
{
    struct list_ctx *lc = arg;

    if (lc->seen++ < lc->skip || lc->pg.cut)
        return;
    if (kz_api_page_add(&lc->pg, webhook_json(w, lc->now)) && filter_splice(&lc->req->out, w))
        lc->pg.fail = true;
}

enum kz_err kz_api_webhook_list(struct kz_api *api, struct kz_req *req, const struct kz_app *app)
{
    const char *oid = req->query(req->conn, "objectId");
    const char *otype = req->query(req->conn, "objectType");
    const char *cursor_s = req->query(req->conn, "cursor");
    int t = -1;
    struct list_ctx lc;
    char next[24];
    char *end;
    enum kz_err e;

    memset(&lc, 0, sizeof(lc));
    if (oid && (!*oid || strlen(oid) > KZ_ID_MAX))
        return kz_api_reject(req, KZ_ERR_INVALID, "objectId must be 1..256 bytes");
    if (otype && *otype) {
        t = kz_objtype_from_name(otype);
        if (t < 0)
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "objectType must be one of Group, Action, ActionPackage");
    }
    if (cursor_s && *cursor_s) {
        lc.skip = strtoll(cursor_s, &end, 10);
        if (*end || lc.skip < 1)
            return kz_api_reject(req, KZ_ERR_INVALID, "cursor is not one this service returned");
    }
    lc.now = kz_now_ms();
    lc.req = req;
    kz_api_page_begin(&lc.pg, req, "webhooks");
    e = kz_store_webhook_list(api->st, app->id, t, oid, webhook_list_one, &lc);
    if (e)
        return kz_api_internal(req, e);
    snprintf(next, sizeof(next), "%lld", lc.skip + (long long)lc.pg.n);
    return kz_api_page_end(&lc.pg, lc.pg.cut ? next : NULL, true);
}

/* Loads webhook `id` if `app` owns it; NotFound otherwise. */
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
        return kz_api_reject(req, e, "no webhook %s", id);
    if (e)
        return kz_api_internal(req, e);
    return KZ_OK;
}

enum kz_err kz_api_webhook_get(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                               const char *id)
{
    struct kz_webhook w;
    enum kz_err e = own_webhook(api, req, app, id, &w);

    if (e)
        return e;
    e = reply_webhook(req, &w, kz_now_ms());
    kz_webhook_cleanup(&w);
    return e;
}

enum kz_err kz_api_webhook_update(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                  const char *id)
{
    enum kz_err result;
    json_t *doc = NULL;
    struct kz_webhook w;
    struct kz_op op;
    bool url_changed, active_given, was_active, wake;
    char *old_url = NULL;

    result = own_webhook(api, req, app, id, &w);
    if (result)
        return result;
    result = KZ_ERR_INVALID;
    /* The update leaves the secret alone (NULL keeps the stored one), so a rotation committed
     * between our read and our write is not undone. */
    kz_free(w.signing_secret);
    w.signing_secret = NULL;
    doc = kz_api_parse_body(req, false, true);
    if (!doc)
        goto out;
    was_active = w.active;
    old_url = kz_strdup(w.callback_url);
    result = webhook_fields(req, doc, &w, true, &url_changed, &active_given);
    if (result)
        goto out;
    result = check_grant(req, app, &w);
    if (result)
        goto out;
    wake = active_given && w.active && !was_active;
    if (url_changed && strcmp(old_url, w.callback_url)) {
        result = write_after_handshake(api, req, &w, true, wake);
        goto out;
    }
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_UPDATE;
    op.u.webhook = w;
    result = kz_store_exec(api->st, &op);
    if (result == KZ_ERR_NOTFOUND) {
        kz_api_reject(req, result, "no webhook %s", id);
        goto out;
    }
    if (result) {
        kz_api_internal(req, result);
        goto out;
    }
    kz_subidx_put(api->idx, &w, op.webhooks_version);
    if (wake && api->hooks.wake_dispatch)
        api->hooks.wake_dispatch(api->hooks.arg);
    result = reply_webhook(req, &w, kz_now_ms());
out:
    kz_free(old_url);
    kz_webhook_cleanup(&w);
    json_decref(doc);
    return result;
}

enum kz_err kz_api_webhook_delete(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
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
        return kz_api_reject(req, e, "no webhook %s", id);
    if (e)
        return kz_api_internal(req, e);
    kz_subidx_remove(api->idx, id, op.webhooks_version);
    return kz_api_reply(req, 200, json_object());
}

/* ==== delivery log and replay ==== */

struct dlist_ctx {
    struct kz_api_page pg;
    int64_t last_id; /* of the last delivery on the page */
    size_t rows;     /* rows the store returned */
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

static json_t *delivery_json(const struct kz_delivery *d)
{
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
    return o;
}

static void delivery_one(void *arg, const struct kz_delivery *d)
{
    struct dlist_ctx *dc = arg;

    dc->rows++;
    if (dc->pg.cut)
        return;
    if (kz_api_page_add(&dc->pg, delivery_json(d)))
        dc->last_id = d->id;
}

enum kz_err kz_api_delivery_list(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
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
    char next[24];

    if (status && *status) {
        state = kz_dstate_from_name(status);
        if (state < 0)
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "status must be pending, succeeded, dead or skipped");
    }
    if (limit_s) {
        limit = strtoll(limit_s, &end, 10);
        if (*end || end == limit_s || limit < 1 || limit > 1000)
            return kz_api_reject(req, KZ_ERR_INVALID, "limit must be 1..1000");
    }
    if (cursor_s && *cursor_s) {
        cursor = strtoll(cursor_s, &end, 10);
        if (*end || cursor < 1)
            return kz_api_reject(req, KZ_ERR_INVALID, "cursor is not one this service returned");
    }
    e = own_webhook(api, req, app, id, &w);
    if (e)
        return e;
    kz_webhook_cleanup(&w);
    memset(&dc, 0, sizeof(dc));
    kz_api_page_begin(&dc.pg, req, "deliveries");
    /* Each row is serialised as it arrives; past KZ_API_PAGE_MAX the page is cut there and its
     * nextCursor continues after its last row. */
    e = kz_store_delivery_list(api->st, id, state, cursor, (size_t)limit, delivery_one, &dc);
    if (e)
        return kz_api_internal(req, e);
    snprintf(next, sizeof(next), "%lld", (long long)dc.last_id);
    return kz_api_page_end(&dc.pg, dc.pg.n && (dc.pg.cut || dc.rows == (size_t)limit) ? next : NULL,
                           false);
}

enum kz_err kz_api_replay(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                          const char *id)
{
    struct kz_webhook w;
    json_t *doc, *v;
    int64_t since;
    struct kz_op op;
    enum kz_err e;

    e = own_webhook(api, req, app, id, &w);
    if (e)
        return e;
    kz_webhook_cleanup(&w);
    doc = kz_api_parse_body(req, false, false);
    if (!doc)
        return KZ_ERR_INVALID;
    v = kz_json_get(doc, "since");
    if (!v || kz_json_i64(v, &since) || since < 0) {
        json_decref(doc);
        return kz_api_reject(req, KZ_ERR_INVALID, "since must be epoch milliseconds");
    }
    json_decref(doc);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_REPLAY;
    op.u.replay.webhook_id = id;
    op.u.replay.since = since;
    op.u.replay.now = kz_now_ms();
    e = kz_store_exec(api->st, &op);
    if (e)
        return kz_api_internal(req, e);
    if (op.u.replay.requeued && api->hooks.wake_dispatch)
        api->hooks.wake_dispatch(api->hooks.arg);
    return kz_api_reply(req, 202, json_pack("{s:I}", "requeued", (json_int_t)op.u.replay.requeued));
}

/* ==== signing secret (README.md "Delivery controls") ==== */

enum kz_err kz_api_secret_get(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                              const char *id)
{
    struct kz_webhook w;
    enum kz_err e = own_webhook(api, req, app, id, &w);

    if (e)
        return e;
    e = kz_api_reply(req, 200, json_pack("{s:s}", "signingSecret", w.signing_secret));
    kz_webhook_cleanup(&w);
    return e;
}

static enum kz_err load_webhook(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                const char *id, struct kz_webhook *w);

/* A new secret; the one it replaces keeps signing (second) for `overlap`, so receivers can
 * switch at their pace. A rotation during an overlap drops the older previous secret. */
enum kz_err kz_api_secret_rotate(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                 const char *id)
{
    struct kz_webhook w;
    json_t *doc = NULL, *v;
    int64_t overlap = DEFAULT_OVERLAP_MS, now;
    char secret[KZ_SIGN_SECRET_SIZE];
    struct kz_op op;
    enum kz_err e = load_webhook(api, req, app, id, &w); /* app NULL: the operator (CLI) */

    if (e)
        return e;
    kz_webhook_cleanup(&w);
    if (req->body_len) {
        doc = kz_api_parse_body(req, false, false);
        if (!doc)
            return KZ_ERR_INVALID;
        v = kz_json_get(doc, "overlap");
        if (v && !json_is_null(v) &&
            (!json_is_string(v) || kz_dur_parse(json_string_value(v), &overlap) ||
             overlap > MAX_OVERLAP_MS)) {
            json_decref(doc);
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "overlap must be a duration from \"0s\" to \"7d\" (e.g. "
                                 "\"24h\")");
        }
        json_decref(doc);
    }
    e = kz_sign_secret_new(secret, sizeof(secret));
    if (e)
        return kz_api_internal(req, e);
    now = kz_now_ms();
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_ROTATE;
    op.u.rotate.id = id;
    op.u.rotate.app_id = app ? app->id : "";
    op.u.rotate.secret = secret;
    op.u.rotate.now = now;
    op.u.rotate.expires = now + overlap;
    e = kz_store_exec(api->st, &op);
    if (e == KZ_ERR_NOTFOUND)
        return kz_api_reject(req, e, "no webhook %s", id);
    if (e)
        return kz_api_internal(req, e);
    return kz_api_reply(req, 200,
                        json_pack("{s:s, s:I}", "signingSecret", secret, "previousExpiresAt",
                                  (json_int_t)(now + overlap)));
}

/* ==== one delivery with its attempts; retry; test events (README, "Attempt history, retry and
 * test events"). `app` NULL: the operator (the CLI), who may act on any webhook. ==== */

/* A deliveryId path segment: the decimal id this service returned; 0 when it is not one. */
static int64_t delivery_id_of(const char *s)
{
    int64_t v = 0;
    size_t i;

    for (i = 0; s[i]; i++) {
        if (s[i] < '0' || s[i] > '9' || i >= 18)
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* Loads webhook `id` for `app` (any owner when NULL). */
static enum kz_err load_webhook(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                const char *id, struct kz_webhook *w)
{
    enum kz_err e;

    if (app)
        return own_webhook(api, req, app, id, w);
    memset(w, 0, sizeof(*w));
    e = kz_store_webhook_get(api->st, id, w);
    if (e == KZ_ERR_NOTFOUND)
        return kz_api_reject(req, e, "no webhook %s", id);
    if (e)
        return kz_api_internal(req, e);
    return KZ_OK;
}

static void set_str(json_t *o, const char *name, const char *v)
{
    if (v)
        json_object_set_new(o, name, json_string(v));
}

/* The event as published: its fields and its data. */
static json_t *event_json(const struct kz_event *ev)
{
    json_t *o = json_object();
    json_t *data;

    json_object_set_new(o, "eventType", json_string(kz_evtype_name(ev->event_type)));
    set_str(o, "eventId", ev->event_id);
    set_str(o, "groupId", ev->group_id);
    set_str(o, "actionId", ev->action_id);
    set_str(o, "actionPackageId", ev->action_package_id);
    set_str(o, "fromUser", ev->from_user);
    set_str(o, "fromUserId", ev->from_user_id);
    set_str(o, "fromUserName", ev->from_user_name);
    set_str(o, "fromUserProfilePic", ev->from_user_pic);
    /* an integer beyond 64 bits (kept as published in "body") is shown as a number here */
    data = ev->data_json ? json_loads(ev->data_json, JSON_DECODE_ANY, NULL) : NULL;
    if (!data && ev->data_json)
        data = json_loads(ev->data_json, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, NULL);
    json_object_set_new(o, "data", data ? data : json_object());
    json_object_set_new(o, "createdAt", json_integer(ev->created_at));
    return o;
}

static json_t *attempt_json(const struct kz_attempt_row *a)
{
    json_t *o = json_object();

    json_object_set_new(o, "at", json_integer(a->at));
    json_object_set_new(o, "durationMs", json_integer(a->duration_ms));
    json_object_set_new(o, "statusCode", a->status ? json_integer(a->status) : json_null());
    json_object_set_new(o, "error", a->error ? utf8_json(a->error) : json_null());
    json_object_set_new(o, "response", a->response ? utf8_json(a->response) : json_null());
    return o;
}

static enum kz_err delivery_get(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                const char *id, const char *delivery)
{
    struct kz_delivery_detail dd;
    struct kz_webhook w;
    struct kz_buf body;
    json_t *o, *arr;
    int64_t did = delivery_id_of(delivery);
    enum kz_err e;
    size_t i;

    e = load_webhook(api, req, app, id, &w);
    if (e)
        return e;
    kz_webhook_cleanup(&w);
    e = did ? kz_store_delivery_get(api->st, id, did, &dd) : KZ_ERR_NOTFOUND;
    if (e == KZ_ERR_NOTFOUND)
        return kz_api_reject(req, e, "webhook %s has no delivery %s", id, delivery);
    if (e)
        return kz_api_internal(req, e);
    /* the bytes every attempt sends: the dispatcher's own function on the same stored rows */
    kz_buf_init(&body, KZ_BODY_MAX * 2);
    e = kz_envelope_build(&dd.wh, &dd.ev, &body);
    if (e) {
        kz_buf_cleanup(&body);
        kz_delivery_detail_cleanup(&dd);
        return kz_api_internal(req, e);
    }
    o = delivery_json(&dd.d);
    json_object_set_new(o, "event", event_json(&dd.ev));
    json_object_set_new(o, "body", json_stringn(body.data ? body.data : "", body.len));
    arr = json_array();
    for (i = 0; i < dd.n_attempts; i++)
        json_array_append_new(arr, attempt_json(&dd.attempts[i]));
    json_object_set_new(o, "attempts", arr);
    kz_buf_cleanup(&body);
    kz_delivery_detail_cleanup(&dd);
    return kz_api_reply(req, 200, o);
}

enum kz_err kz_api_delivery_get(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                const char *id, const char *delivery)
{
    return delivery_get(api, req, app, id, delivery);
}

/* A webhook that is off or past its validity takes no retry and no test event (409). */
static enum kz_err require_active(struct kz_req *req, const struct kz_webhook *w)
{
    if (w->active && w->validity_ms > kz_now_ms())
        return KZ_OK;
    return kz_api_reject(req, KZ_ERR_CONFLICT,
                         "webhook %s is %s: enable it first (PUT {\"Active\": true})", w->id,
                         w->active ? "expired" : "inactive");
}

static enum kz_err delivery_retry(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                  const char *id, const char *delivery)
{
    struct kz_webhook w;
    struct kz_op op;
    int64_t did = delivery_id_of(delivery);
    enum kz_err e;

    e = load_webhook(api, req, app, id, &w);
    if (e)
        return e;
    e = require_active(req, &w);
    kz_webhook_cleanup(&w);
    if (e)
        return e;
    if (!did)
        return kz_api_reject(req, KZ_ERR_NOTFOUND, "webhook %s has no delivery %s", id, delivery);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_RETRY;
    op.u.retry.webhook_id = id;
    op.u.retry.delivery_id = did;
    op.u.retry.now = kz_now_ms();
    e = kz_store_exec(api->st, &op);
    if (e == KZ_ERR_NOTFOUND)
        return kz_api_reject(req, e, "webhook %s has no delivery %s", id, delivery);
    if (e == KZ_ERR_CONFLICT) /* disabled between the read above and the op */
        return kz_api_reject(req, e, "webhook %s is inactive: enable it first", id);
    if (e)
        return kz_api_internal(req, e);
    if (op.u.retry.requeued && api->hooks.wake_dispatch)
        api->hooks.wake_dispatch(api->hooks.arg);
    return kz_api_reply(req, 202, json_object());
}

enum kz_err kz_api_delivery_retry(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                  const char *id, const char *delivery)
{
    return delivery_retry(api, req, app, id, delivery);
}

/* The first event type the webhook lists. */
static enum kz_evtype first_event(uint32_t mask)
{
    int i;

    for (i = 0; i < KZ_EV__COUNT; i++) {
        if (mask & (1u << i))
            return (enum kz_evtype)i;
    }
    return KZ_EV_ACTIONCREATED;
}

/* Reads a test request's body (empty = every default) into `ev`'s type and data. */
static enum kz_err test_fields(struct kz_req *req, const struct kz_webhook *w, struct kz_event *ev,
                               struct kz_buf *scratch)
{
    json_t *doc = NULL, *v;
    enum kz_err e = KZ_OK;
    int t;

    ev->event_type = first_event(w->event_mask);
    kz_buf_reset(scratch);
    kz_buf_puts(scratch, "{}");
    if (!req->body_len)
        goto out;
    doc = kz_api_parse_body(req, false, false);
    if (!doc)
        return KZ_ERR_INVALID;
    v = kz_json_get(doc, "eventType");
    if (v && !json_is_null(v)) {
        t = json_is_string(v) ? kz_evtype_from_name(json_string_value(v)) : -1;
        if (t < 0 || !(w->event_mask & (1u << t))) {
            e = kz_api_reject(req, KZ_ERR_INVALID,
                              "eventType must be one of the event types this webhook lists");
            goto out;
        }
        ev->event_type = (enum kz_evtype)t;
    }
    v = kz_json_get(doc, "data");
    if (v && !json_is_null(v)) {
        if (!json_is_object(v)) {
            e = kz_api_reject(req, KZ_ERR_INVALID, "data must be a JSON object");
            goto out;
        }
        kz_buf_reset(scratch);
        if (kz_json_dump(v, scratch)) {
            e = kz_api_reject(req, KZ_ERR_INVALID, "data too large");
            goto out;
        }
    }
out:
    json_decref(doc);
    return e;
}

static enum kz_err webhook_test(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                const char *id)
{
    struct kz_webhook w;
    struct kz_event ev;
    struct kz_publish_item it;
    struct kz_buf scratch;
    struct kz_op op;
    const char *target;
    bool active = true;
    char uuid[37], eid[48];
    int64_t did = 0;
    enum kz_err e;

    memset(&ev, 0, sizeof(ev));
    kz_buf_init(&scratch, KZ_BODY_MAX);
    e = load_webhook(api, req, app, id, &w);
    if (e)
        goto done;
    e = require_active(req, &w);
    if (!e)
        e = test_fields(req, &w, &ev, &scratch);
    if (e)
        goto out;
    /* a synthetic event for this webhook only: it goes through the normal pipeline (stored,
     * claimed, signed, retried, logged) but matches nothing else, whatever its fields */
    kz_id_uuid4(uuid);
    snprintf(eid, sizeof(eid), "test_%s", uuid);
    ev.event_id = kz_strdup(eid);
    ev.data_json = kz_strndup(kz_buf_cstr(&scratch), scratch.len);
    ev.created_at = kz_now_ms();
    if (w.object_type == KZ_OBJ_GROUP)
        ev.group_id = kz_strdup(w.object_id);
    else if (w.object_type == KZ_OBJ_ACTION)
        ev.action_id = kz_strdup(w.object_id);
    else
        ev.action_package_id = kz_strdup(w.object_id);
    memset(&it, 0, sizeof(it));
    it.ev = ev;
    target = w.id;
    it.webhook_ids = &target;
    it.target_active = &active;
    it.n_targets = 1;
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_PUBLISH;
    op.u.publish.items = &it;
    op.u.publish.n = 1;
    e = kz_store_exec(api->st, &op);
    if (!e && it.deliveries != 1)
        e = KZ_ERR_NOTFOUND; /* the webhook was deleted meanwhile */
    if (!e)
        e = kz_store_delivery_of_event(api->st, w.id, eid, &did);
    if (e == KZ_ERR_NOTFOUND) {
        e = kz_api_reject(req, e, "no webhook %s", id);
        goto out;
    }
    if (e) {
        e = kz_api_internal(req, e);
        goto out;
    }
    if (api->hooks.wake_dispatch)
        api->hooks.wake_dispatch(api->hooks.arg);
    snprintf(uuid, sizeof(uuid), "%lld", (long long)did);
    e = kz_api_reply(req, 202, json_pack("{s:s, s:s}", "eventId", eid, "deliveryId", uuid));
out:
    kz_webhook_cleanup(&w);
done:
    kz_event_cleanup(&ev);
    kz_buf_cleanup(&scratch);
    return e;
}

enum kz_err kz_api_webhook_test(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                const char *id)
{
    return webhook_test(api, req, app, id);
}

/* ==== the same, for the CLI (the operator: any application's webhooks) ==== */

static const char *cli_no_header(void *conn, const char *name)
{
    (void)conn;
    (void)name;
    return NULL;
}

/* Runs one of the handlers above on a request made up here; fills status and body. */
static void cli_run(struct kz_api *api, const char *method, const char *body, size_t len,
                    const char *id, const char *delivery, int *status, struct kz_buf *out)
{
    struct kz_req req;
    enum kz_err e;

    memset(&req, 0, sizeof(req));
    kz_req_init(&req);
    req.method = method;
    req.path = "/v1/webhook";
    req.body = body;
    req.body_len = len;
    req.header = cli_no_header;
    req.query = cli_no_header;
    if (!strcmp(method, "ROTATE")) {
        req.method = "POST";
        e = kz_api_secret_rotate(api, &req, NULL, id);
    } else if (!strcmp(method, "GET"))
        e = delivery_get(api, &req, NULL, id, delivery);
    else if (delivery)
        e = delivery_retry(api, &req, NULL, id, delivery);
    else
        e = webhook_test(api, &req, NULL, id);
    if (e)
        kz_api_error_answer(&req, e);
    *status = req.status;
    kz_buf_append(out, req.out.data, req.out.len);
    kz_req_cleanup(&req);
}

struct cli_list {
    json_t *arr;
    int64_t now;
};

static void cli_list_one(void *arg, const struct kz_webhook *w)
{
    struct cli_list *cl = arg;
    json_t *o = webhook_json(w, cl->now);

    json_object_set_new(o, "applicationId", json_string(w->app_id));
    json_array_append_new(cl->arr, o);
}

void kz_api_cli_webhook(struct kz_api *api, const char *cmd, const char *id, const char *arg,
                        int *status, struct kz_buf *out)
{
    struct cli_list cl;
    struct kz_webhook w;
    json_t *o;
    char *text;
    enum kz_err e;

    *status = 500;
    if (!strcmp(cmd, "list") || !strcmp(cmd, "get")) {
        cl.arr = json_array();
        cl.now = kz_now_ms();
        if (!strcmp(cmd, "list")) {
            e = kz_store_webhook_list(api->st, id, -1, NULL, cli_list_one, &cl);
        } else {
            memset(&w, 0, sizeof(w));
            e = kz_store_webhook_get(api->st, id, &w);
            if (!e)
                cli_list_one(&cl, &w);
            kz_webhook_cleanup(&w);
        }
        if (e) {
            json_decref(cl.arr);
            *status = e == KZ_ERR_NOTFOUND ? 404 : 503;
            kz_buf_puts(out, e == KZ_ERR_NOTFOUND ? "{\"message\":\"no such webhook\"}"
                                                  : "{\"message\":\"the store failed\"}");
            return;
        }
        o = !strcmp(cmd, "list") ? json_pack("{s:o}", "webhooks", cl.arr)
                                 : json_incref(json_array_get(cl.arr, 0));
        if (strcmp(cmd, "list"))
            json_decref(cl.arr);
        text = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (text)
            kz_buf_puts(out, text);
        kz_free(text);
        *status = text ? 200 : 500;
    } else if (!strcmp(cmd, "test")) {
        cli_run(api, "POST", arg, arg ? strlen(arg) : 0, id, NULL, status, out);
    } else if (!strcmp(cmd, "retry")) {
        cli_run(api, "POST", NULL, 0, id, arg, status, out);
    } else if (!strcmp(cmd, "delivery")) {
        cli_run(api, "GET", NULL, 0, id, arg, status, out);
    } else if (!strcmp(cmd, "rotate")) {
        cli_run(api, "ROTATE", arg, arg ? strlen(arg) : 0, id, NULL, status, out);
    }
}
