/* api_console.c — the endpoints the console needs beyond the Kaizala API (docs/openapi.json):
 * GET /admin/v1/stats, GET /admin/v1/webhooks (every webhook, a page at a time, with its health)
 * and GET /v1/webhook/{id}/health. None of them reads the deliveries table. */
#include "api_internal.h"
#include "stats.h"
#include "alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ADMIN_WEBHOOKS_DEFAULT 50
#define ADMIN_WEBHOOKS_MAX 200

/* A query integer in lo..hi; `def` when absent. */
static enum kz_err query_int(struct kz_req *req, const char *name, long long lo, long long hi,
                             long long def, long long *out)
{
    const char *s = req->query(req->conn, name);
    char *end;

    *out = def;
    if (!s)
        return KZ_OK;
    *out = strtoll(s, &end, 10);
    if (end == s || *end || *out < lo || *out > hi)
        return kz_api_reject(req, KZ_ERR_INVALID, "%s must be an integer %lld..%lld", name, lo, hi);
    return KZ_OK;
}

enum kz_err kz_api_stats(struct kz_api *api, struct kz_req *req)
{
    long long minutes;
    json_t *o;
    enum kz_err e = query_int(req, "minutes", 1, 1440, 60, &minutes);

    if (e)
        return e;
    e = kz_stats_report(api->st, api->m, (int)minutes, kz_now_ms(), &o);
    if (e)
        return kz_api_internal(req, e);
    return kz_api_reply(req, 200, o);
}

struct wh_page {
    long long skip, seen, limit;
    size_t cap, n;
    struct kz_webhook *rows;
    bool more;
};

static void wh_page_one(void *arg, const struct kz_webhook *w)
{
    struct wh_page *p = arg;

    if (p->seen++ < p->skip)
        return;
    if ((long long)p->n == p->limit) {
        p->more = true;
        return;
    }
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        p->rows = kz_realloc(p->rows, p->cap * sizeof(*p->rows));
    }
    kz_webhook_copy(&p->rows[p->n++], w);
}

/* GET /admin/v1/webhooks?applicationId=&cursor=&limit=: webhooks in creation order, each with
 * its application and health; "nextCursor" (the number of webhooks before the next page) when
 * more follow. */
enum kz_err kz_api_admin_webhooks(struct kz_api *api, struct kz_req *req)
{
    const char *app = req->query(req->conn, "applicationId");
    struct wh_page p;
    struct kz_api_page pg;
    char next[24];
    int64_t now = kz_now_ms();
    enum kz_err e;
    long long cursor;
    size_t i;

    memset(&p, 0, sizeof(p));
    e = query_int(req, "limit", 1, ADMIN_WEBHOOKS_MAX, ADMIN_WEBHOOKS_DEFAULT, &p.limit);
    if (!e)
        e = query_int(req, "cursor", 0, INT64_MAX / 2, 0, &cursor);
    if (e)
        return e;
    if (app && (!*app || strlen(app) > 64))
        return kz_api_reject(req, KZ_ERR_INVALID, "applicationId must be 1..64 characters");
    p.skip = cursor;
    e = kz_store_webhook_list(api->st, app, -1, NULL, wh_page_one, &p);
    kz_api_page_begin(&pg, req, "webhooks");
    for (i = 0; i < p.n && !e; i++) {
        const struct kz_webhook *w = &p.rows[i];
        json_t *health = NULL;

        e = kz_stats_health(api->st, w->id, now, &health);
        if (e)
            break;
        kz_api_page_add(&pg,
                        json_pack("{s:s, s:s, s:s, s:s, s:s, s:b, s:I, s:I, s:o}", "id", w->id,
                                  "applicationId", w->app_id, "objectType",
                                  kz_objtype_name(w->object_type), "objectId",
                                  w->object_id ? w->object_id : "", "callbackUrl",
                                  w->callback_url ? w->callback_url : "", "active",
                                  w->active && w->validity_ms > now, "ts", (json_int_t)w->ts_ms,
                                  "validity", (json_int_t)w->validity_ms, "health", health));
    }
    for (i = 0; i < p.n; i++)
        kz_webhook_cleanup(&p.rows[i]);
    kz_free(p.rows);
    if (e)
        return kz_api_internal(req, e);
    snprintf(next, sizeof(next), "%lld", p.skip + (long long)pg.n);
    return kz_api_page_end(&pg, p.more || pg.cut ? next : NULL, false);
}

/* GET /v1/webhook/{id}/health: the caller's own webhook only. */
enum kz_err kz_api_webhook_health(struct kz_api *api, struct kz_req *req, const struct kz_app *app,
                                  const char *id)
{
    struct kz_webhook w;
    json_t *o;
    enum kz_err e;

    memset(&w, 0, sizeof(w));
    e = kz_store_webhook_get(api->st, id, &w);
    if (e == KZ_ERR_NOTFOUND || (!e && strcmp(w.app_id, app->id))) {
        kz_webhook_cleanup(&w);
        return kz_api_reject(req, KZ_ERR_NOTFOUND, "no such webhook");
    }
    if (e)
        return kz_api_internal(req, e);
    e = kz_stats_health(api->st, w.id, kz_now_ms(), &o);
    kz_webhook_cleanup(&w);
    if (e)
        return kz_api_internal(req, e);
    return kz_api_reply(req, 200, o);
}
