/* api_admin.c — the operator's endpoints: applications (admin token), /healthz and /metrics
 * (no auth), and the CLI's `app create`. */
#include "api_internal.h"
#include "alloc.h"
#include "id.h"
#include "json.h"
#include "sign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Checks objectIds (a non-empty array of ids) and writes it compact into `out`. */
static enum kz_err object_ids(struct kz_req *req, const json_t *doc, struct kz_buf *out)
{
    json_t *ids = kz_json_get(doc, "objectIds"), *v;
    size_t i;

    if (!json_is_array(ids) || !json_array_size(ids) || json_array_size(ids) > 10000)
        return kz_api_reject(req, KZ_ERR_INVALID, "objectIds must be a non-empty array of strings");
    json_array_foreach(ids, i, v)
    {
        const char *s;
        size_t len;

        if (kz_json_str(v, KZ_ID_MAX, &s, &len))
            return kz_api_reject(req, KZ_ERR_INVALID,
                                 "objectIds[%zu] must be a string of 1..%d bytes", i, KZ_ID_MAX);
    }
    if (kz_json_dump(ids, out))
        return kz_api_reject(req, KZ_ERR_INVALID, "objectIds too large");
    return KZ_OK;
}

enum kz_err kz_api_app_create_req(struct kz_api *api, struct kz_req *req)
{
    enum kz_err result = KZ_ERR_INVALID;
    json_t *doc = kz_api_parse_body(req, false, false), *o;
    char *name = NULL;
    char secret[KZ_API_SECRET_CHARS + 1], refresh[KZ_API_SECRET_CHARS + 1];
    struct kz_op op;
    struct kz_buf idsbuf;

    kz_buf_init(&idsbuf, 1024 * 1024);
    if (!doc)
        goto out;
    result = kz_api_opt_str(req, doc, "name", KZ_NAME_MAX, false, &name, NULL);
    if (result)
        goto out;
    if (!name) {
        result = kz_api_reject(req, KZ_ERR_INVALID, "name is required");
        goto out;
    }
    result = object_ids(req, doc, &idsbuf);
    if (result)
        goto out;
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_APP_CREATE;
    kz_id_uuid4(op.u.app.id);
    op.u.app.name = name;
    op.u.app.object_ids_json = idsbuf.data;
    kz_id_token(secret, KZ_API_SECRET_CHARS);
    kz_id_token(refresh, KZ_API_SECRET_CHARS);
    kz_sha256_hex(secret, KZ_API_SECRET_CHARS, op.u.app.secret_hash);
    kz_sha256_hex(refresh, KZ_API_SECRET_CHARS, op.u.app.refresh_hash);
    op.u.app.created_at = kz_now_ms();
    result = kz_store_exec(api->st, &op);
    if (result) {
        kz_api_internal(req, result);
        goto out;
    }
    o = app_json(&op.u.app, false);
    json_object_set_new(o, "applicationSecret", json_string(secret));
    json_object_set_new(o, "refreshToken", json_string(refresh));
    snprintf(req->app_id, sizeof(req->app_id), "%s", op.u.app.id);
    result = kz_api_reply(req, 201, o);
out:
    kz_free(name);
    kz_buf_cleanup(&idsbuf);
    json_decref(doc);
    return result;
}

/* GET /admin/v1/applications: in creation order, cut before KZ_API_PAGE_MAX of output; a cut
 * page ends with "nextCursor" (the number of applications before the next page). */
struct app_list_ctx {
    struct kz_api_page pg;
    long long skip, seen;
};

static void app_list_one(void *arg, const struct kz_app *a)
{
    struct app_list_ctx *lc = arg;

    if (lc->seen++ < lc->skip || lc->pg.cut)
        return;
    kz_api_page_add(&lc->pg, app_json(a, true));
}

enum kz_err kz_api_app_list(struct kz_api *api, struct kz_req *req)
{
    const char *cursor_s = req->query(req->conn, "cursor");
    struct app_list_ctx lc;
    char next[24], *end;
    enum kz_err e;

    memset(&lc, 0, sizeof(lc));
    if (cursor_s && *cursor_s) {
        lc.skip = strtoll(cursor_s, &end, 10);
        if (*end || lc.skip < 1)
            return kz_api_reject(req, KZ_ERR_INVALID, "cursor is not one this service returned");
    }
    kz_api_page_begin(&lc.pg, req, "applications");
    e = kz_store_app_list(api->st, app_list_one, &lc);
    if (e)
        return kz_api_internal(req, e);
    snprintf(next, sizeof(next), "%lld", lc.skip + (long long)lc.pg.n);
    return kz_api_page_end(&lc.pg, lc.pg.cut ? next : NULL, true);
}

enum kz_err kz_api_app_delete(struct kz_api *api, struct kz_req *req, const char *id)
{
    struct kz_op op;
    enum kz_err e;

    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_APP_DELETE;
    op.u.id = id;
    e = kz_store_exec(api->st, &op);
    if (e == KZ_ERR_NOTFOUND)
        return kz_api_reject(req, e, "no application %s", id);
    if (e)
        return kz_api_internal(req, e);
    kz_subidx_remove_app(api->idx, id, op.webhooks_version);
    return kz_api_reply(req, 200, json_object());
}

static const char *no_header(void *conn, const char *name)
{
    (void)conn;
    (void)name;
    return NULL;
}

void kz_api_app_create(struct kz_api *api, const char *body, size_t len, int *status,
                       struct kz_buf *out)
{
    struct kz_req req;
    enum kz_err e;

    memset(&req, 0, sizeof(req));
    kz_req_init(&req);
    req.method = "POST";
    req.path = "/admin/v1/applications";
    req.body = body;
    req.body_len = len;
    req.header = no_header;
    req.query = no_header;
    e = kz_api_app_create_req(api, &req);
    if (e)
        kz_api_error_answer(&req, e);
    *status = req.status;
    kz_buf_append(out, req.out.data, req.out.len);
    kz_req_cleanup(&req);
}

enum kz_err kz_api_healthz(struct kz_api *api, struct kz_req *req)
{
    if (kz_store_ping(api->st))
        return kz_api_reject(req, KZ_ERR_DB, "the store is not reachable");
    return kz_api_reply(req, 200, json_pack("{s:s}", "status", "ok"));
}

enum kz_err kz_api_metrics(struct kz_api *api, struct kz_req *req)
{
    int64_t due = 0, sched = 0, inflight = 0;
    size_t total, inactive;
    uint64_t batches = 0, ops = 0;

    kz_metrics_backlog_get(api->m, &due, &sched, &inflight); /* a snapshot: never a count here */
    kz_subidx_counts(api->idx, &total, &inactive);
    kz_store_stats(api->st, &batches, &ops);
    atomic_store(&api->m->store_batches, (long long)batches);
    req->status = 200;
    req->content_type = "text/plain; version=0.0.4";
    kz_buf_reset(&req->out);
    kz_metrics_render(api->m, &req->out, due, sched, total, inactive);
    return KZ_OK;
}
