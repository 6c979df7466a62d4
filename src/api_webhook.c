/* api_webhook.c — an application's webhooks (create, list, get, update, delete), their delivery
 * log and replay. Every handler gets the authenticated application; another application's
 * webhook is NotFound, never Forbidden (its existence is not revealed). */
#include "api_internal.h"
#include "alloc.h"
#include "id.h"
#include "json.h"
#include "sign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_VALIDITY_MS INT64_C(63113852000)
#define MAX_VALIDITY_MS INT64_C(253402300799999) /* 9999-12-31 */

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
    if (v || !update) {
        int t = json_is_string(v) ? kz_objtype_from_name(json_string_value(v)) : -1;

        if (t < 0)
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "objectType must be one of Group, Action, ActionPackage");
        w->object_type = (enum kz_objtype)t;
    }
    v = kz_json_get(doc, "eventTypes");
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
    v = kz_json_get(doc, "validity");
    if (v && !json_is_null(v)) {
        int64_t ms;

        if (kz_json_i64(v, &ms) || ms > MAX_VALIDITY_MS)
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "validity must be epoch milliseconds (number or numeric string)");
        if (ms <= now)
            return kz_api_reject(req, KZ_ERR_INVALID, "validity must be in the future");
        w->validity_ms = ms;
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
    return KZ_OK;
}

static enum kz_err check_grant(struct kz_req *req, const struct kz_app *app,
                               const struct kz_webhook *w)
{
    if (!kz_api_app_grants(app, w->object_id))
        return kz_api_reject(req, KZ_ERR_FORBIDDEN,
                             "the application may not subscribe to objectId %s", w->object_id);
    return KZ_OK;
}

/* Checks the callback URL and runs the handshake. */
static enum kz_err check_callback(struct kz_api *api, struct kz_req *req, const char *url)
{
    struct kz_target t;
    const char *why = NULL;
    char reason[300];

    if (kz_target_check(api->cfg, url, &t, &why))
        return kz_api_reject(req, KZ_ERR_INVALID, "callBackUrl rejected: %s",
                             why ? why : "invalid");
    if (kz_callback_validate(api->cfg, url, &t, reason, sizeof(reason)))
        return kz_api_reject_callback(req, "callback URL validation failed: %s", reason);
    return KZ_OK;
}

/* ==== handlers ==== */

enum kz_err kz_api_webhook_create(struct kz_api *api, struct kz_req *req, const struct kz_app *app)
{
    enum kz_err result = KZ_ERR_INVALID;
    json_t *doc = kz_api_parse_body(req, false, false);
    struct kz_webhook w;
    struct kz_op op;
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
    result = check_callback(api, req, w.callback_url);
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
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_WEBHOOK_INSERT;
    op.u.webhook = w;
    result = kz_store_exec(api->st, &op);
    if (result) {
        kz_api_internal(req, result);
        goto out;
    }
    kz_subidx_put(api->idx, &w, op.webhooks_version);
    result = kz_api_reply(
        req, 200, json_pack("{s:s, s:s}", "webhookId", w.id, "signingSecret", w.signing_secret));
out:
    kz_webhook_cleanup(&w);
    json_decref(doc);
    return result;
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

enum kz_err kz_api_webhook_list(struct kz_api *api, struct kz_req *req, const struct kz_app *app)
{
    const char *oid = req->query(req->conn, "objectId");
    const char *otype = req->query(req->conn, "objectType");
    int t = -1;
    struct list_ctx lc;
    enum kz_err e;

    if (oid && (!*oid || strlen(oid) > KZ_ID_MAX))
        return kz_api_reject(req, KZ_ERR_INVALID, "objectId must be 1..256 bytes");
    if (otype && *otype) {
        t = kz_objtype_from_name(otype);
        if (t < 0)
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "objectType must be one of Group, Action, ActionPackage");
    }
    lc.arr = json_array();
    lc.now = kz_now_ms();
    e = kz_store_webhook_list(api->st, app->id, t, oid, webhook_list_one, &lc);
    if (e) {
        json_decref(lc.arr);
        return kz_api_internal(req, e);
    }
    return kz_api_reply(req, 200, json_pack("{s:o}", "webhooks", lc.arr));
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
    e = kz_api_reply(req, 200, webhook_json(&w, kz_now_ms()));
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
    bool url_changed, active_given, was_active;
    char *old_url = NULL;

    result = own_webhook(api, req, app, id, &w);
    if (result)
        return result;
    result = KZ_ERR_INVALID;
    doc = kz_api_parse_body(req, false, false);
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
    if (url_changed && strcmp(old_url, w.callback_url)) {
        result = check_callback(api, req, w.callback_url);
        if (result)
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
    if (active_given && w.active && !was_active && api->hooks.wake_dispatch)
        api->hooks.wake_dispatch(api->hooks.arg);
    result = kz_api_reply(req, 200, webhook_json(&w, kz_now_ms()));
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

    json_array_append_new(dc->arr, delivery_json(d));
    dc->last_id = d->id;
    dc->n++;
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
    json_t *o;

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
    dc.arr = json_array();
    dc.n = 0;
    dc.last_id = 0;
    e = kz_store_delivery_list(api->st, id, state, cursor, (size_t)limit, delivery_one, &dc);
    if (e) {
        json_decref(dc.arr);
        return kz_api_internal(req, e);
    }
    o = json_pack("{s:o}", "deliveries", dc.arr);
    if (dc.n == (size_t)limit) {
        char c[24];

        snprintf(c, sizeof(c), "%lld", (long long)dc.last_id);
        json_object_set_new(o, "nextCursor", json_string(c));
    } else {
        json_object_set_new(o, "nextCursor", json_null());
    }
    return kz_api_reply(req, 200, o);
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
