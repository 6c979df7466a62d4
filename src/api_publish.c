/* api_publish.c — POST /v1/events (and the CLI's `publish`): validate every event, match it
 * against the subscription index, submit one PUBLISH op and answer 202 once it is committed.
 * The request is PENDING meanwhile; publish_done() answers it from the store writer thread. */
#include "api_internal.h"
#include "stats.h"
#include "alloc.h"
#include "envelope.h"
#include "id.h"
#include "json.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

struct publish {
    struct kz_api_pending base; /* first: req->pending points here */
    struct kz_api *api;
    struct kz_req *req; /* NULL for the synchronous CLI path */
    struct kz_op op;
    struct kz_publish_item *items;
    size_t n;
    struct kz_match *matches; /* all items' matches, back to back */
    size_t nmatch, capmatch;
    const char **ids; /* pointers into matches */
    bool *active;
    bool *leased;    /* per match: handed to the dispatcher (kz_api_hooks.reserve) */
    int64_t *dids;   /* per match: the leased delivery's id, set by the store */
    size_t reserved; /* leased, not yet handed off or given back */
    int64_t gen;     /* webhooks generation before matching */
    bool array;      /* body was an array: answer {"events":[...]} */
    /* synchronous wait */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
};

static void publish_free(struct publish *pb)
{
    size_t i;

    if (!pb)
        return;
    if (pb->reserved && pb->api->hooks.handoff) /* never submitted, or nothing committed */
        pb->api->hooks.handoff(pb->api->hooks.arg, NULL, 0, pb->reserved, pb->gen);
    for (i = 0; i < pb->n; i++)
        kz_event_cleanup(&pb->items[i].ev);
    kz_free(pb->items);
    kz_free(pb->matches);
    kz_free(pb->ids);
    kz_free(pb->active);
    kz_free(pb->leased);
    kz_free(pb->dids);
    kz_free(pb);
}

/* The request is answered (publish_done ran before req->complete): nothing else holds pb. */
static void publish_release(struct kz_api_pending *p)
{
    publish_free((struct publish *)p);
}

/* Fills one event from a JSON object; the error names the field, prefixed by `where`.
 * `offset`: where the event's object starts in the request body (for `data` as written), or
 * -1 when unknown (then `data` is re-serialised from the parsed tree). `traceparent`: the
 * request's valid traceparent header, or NULL. */
static enum kz_err event_from_json(struct kz_req *req, const json_t *o, const char *where,
                                   struct kz_event *ev, struct kz_buf *scratch, long offset,
                                   const char *traceparent)
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
        {"sourceGroupId", &ev->source_group_id, KZ_ID_MAX},
    };
    size_t i;

    if (!json_is_object(o))
        return kz_api_reject(req, KZ_ERR_INVALID, "%sevent must be a JSON object", where);
    v = kz_json_get(o, "eventType");
    t = json_is_string(v) ? kz_evtype_from_name(json_string_value(v)) : -1;
    if (t < 0)
        return kz_api_reject(req, KZ_ERR_INVALID,
                             "%seventType is missing or not a known event type", where);
    ev->event_type = (enum kz_evtype)t;
    for (i = 0; i < KZ_ARRAY_LEN(strs); i++) {
        const char *s;
        size_t len;

        v = kz_json_get(o, strs[i].name);
        if (!v || json_is_null(v) || (json_is_string(v) && !json_string_length(v) && i >= 4))
            continue;
        if (kz_json_str(v, strs[i].max, &s, &len))
            return kz_api_reject(req, KZ_ERR_INVALID, "%s%s must be a string of 1..%zu bytes",
                                 where, strs[i].name, strs[i].max);
        if (i == 0 && !kz_api_header_safe(s, len))
            return kz_api_reject(req, KZ_ERR_INVALID, "%seventId must be printable ASCII", where);
        *strs[i].field = kz_strndup(s, len);
    }
    if (!ev->group_id && !ev->action_id && !ev->action_package_id)
        return kz_api_reject(req, KZ_ERR_INVALID,
                             "%sone of groupId, actionId, actionPackageId is required", where);
    /* Kaizala's callbacks carry both; a publisher that knows no sub-groups gives neither. */
    if (!ev->source_group_id && ev->group_id)
        ev->source_group_id = kz_strdup(ev->group_id);
    v = kz_json_get(o, "isBotfromUser");
    if (v && !json_is_null(v) && kz_json_bool(v, &ev->is_bot))
        return kz_api_reject(req, KZ_ERR_INVALID, "%sisBotfromUser must be true or false", where);
    if (traceparent)
        ev->traceparent = kz_strdup(traceparent);
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
                return kz_api_reject(req, KZ_ERR_INVALID, "%sdata too large", where);
        } else if (kz_json_dump(v, scratch)) {
            return kz_api_reject(req, KZ_ERR_INVALID, "%sdata too large", where);
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

/* The 202 of a committed publish, or the error of a failed one. */
static enum kz_err publish_answer(struct publish *pb, struct kz_req *req)
{
    size_t i;

    if (pb->op.result)
        return kz_api_internal(req, pb->op.result);
    if (pb->array) {
        json_t *arr = json_array();

        for (i = 0; i < pb->n; i++)
            json_array_append_new(arr, publish_result(&pb->items[i]));
        return kz_api_reply(req, 202, json_pack("{s:o}", "events", arr));
    }
    return kz_api_reply(req, 202, publish_result(&pb->items[0]));
}

/* Writer thread, after the commit and after the answer is written: the leased deliveries go to
 * the dispatcher with their event. The first row of an event takes the request's copy (only its
 * id stays, for a synchronous caller's answer); further rows copy it. */
static void publish_handoff(struct publish *pb)
{
    struct kz_claimed *rows = NULL;
    size_t i, k, n = 0;

    if (!pb->reserved)
        return;
    for (i = 0; i < pb->n; i++) {
        const struct kz_publish_item *it = &pb->items[i];

        for (k = 0; k < it->n_targets && !it->duplicate; k++)
            n += it->delivery_ids[k] != 0;
    }
    if (n)
        rows = kz_calloc(n, sizeof(*rows));
    for (i = 0, n = 0; i < pb->n; i++) {
        struct kz_publish_item *it = &pb->items[i];
        const struct kz_event *first = NULL;

        for (k = 0; k < it->n_targets && !it->duplicate; k++) {
            struct kz_claimed *r;

            if (!it->delivery_ids[k])
                continue;
            r = &rows[n++];
            r->delivery_id = it->delivery_ids[k];
            r->created_at = it->ev.created_at;
            snprintf(r->wh.id, sizeof(r->wh.id), "%s", it->webhook_ids[k]);
            if (first) {
                kz_event_copy(&r->ev, first);
            } else {
                kz_event_take(&r->ev, &it->ev);
                first = &r->ev;
            }
            r->ev.seq = it->seq;
        }
    }
    pb->api->hooks.handoff(pb->api->hooks.arg, rows, n, pb->reserved, pb->gen);
    pb->reserved = 0;
}

/* Writer thread, after the commit: count, hand off, wake the dispatcher, answer the request. */
static void publish_done(struct kz_op *op, void *arg)
{
    struct publish *pb = arg;
    struct kz_api *api = pb->api;
    struct kz_req *req = pb->req;
    size_t i;
    long long fresh = 0, dup = 0, created = 0, skipped = 0, leased = 0;

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
            for (size_t k = 0; k < it->n_targets; k++) {
                skipped += !it->target_active[k];
                leased += it->delivery_ids && it->delivery_ids[k];
            }
        }
        atomic_fetch_add(&api->m->events_accepted, fresh);
        kz_stats_published(api->m->stats, (int64_t)fresh);
        atomic_fetch_add(&api->m->events_duplicate, dup);
        atomic_fetch_add(&api->m->deliveries_created, created);
        atomic_fetch_add(&api->m->deliveries_skipped, skipped);
        if (created - skipped > leased && api->hooks.wake_dispatch)
            api->hooks.wake_dispatch(api->hooks.arg); /* rows pending: claim them */
    }
    if (req) {
        enum kz_err e = publish_answer(pb, req);

        /* the answer first (it reads the events); once finished, req and pb are the HTTP
         * thread's to free */
        if (!pb->op.result)
            publish_handoff(pb);
        kz_api_finish(req, e);
        atomic_fetch_sub(&api->pending, 1);
        return;
    }
    if (!pb->op.result)
        publish_handoff(pb);
    pthread_mutex_lock(&pb->lock);
    pb->done = true;
    pthread_cond_signal(&pb->cond);
    pthread_mutex_unlock(&pb->lock);
}

/* Validates and matches every event; on success *out is a ready-to-submit publish (ownership
 * to the caller). */
static enum kz_err publish_prepare(struct kz_api *api, struct kz_req *req, struct publish **out)
{
    enum kz_err result = KZ_ERR_INVALID;
    json_t *doc = kz_api_parse_body(req, true, true);
    struct publish *pb = NULL;
    struct kz_buf scratch;
    size_t i, k, n, *offs = NULL;
    int64_t now = kz_now_ms(), gen;
    const char *tp = req->header(req->conn, "traceparent");

    *out = NULL;
    /* W3C Trace Context: a malformed traceparent is dropped (the trace restarts downstream),
     * never a reason to refuse the events. */
    if (tp && !kz_traceparent_valid(tp, strlen(tp)))
        tp = NULL;
    kz_buf_init(&scratch, KZ_BODY_MAX);
    /* read before matching: the dispatcher sends leased rows only when no webhook changed since */
    gen = kz_store_webhooks_gen(api->st);
    if (!doc)
        goto out;
    n = json_is_array(doc) ? json_array_size(doc) : 1;
    if (!n || n > KZ_API_PUBLISH_MAX) {
        result = kz_api_reject(req, KZ_ERR_INVALID, "an array body holds 1..1000 events");
        goto out;
    }
    pb = kz_calloc(1, sizeof(*pb));
    pb->base.release = publish_release;
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
        result = event_from_json(req, o, where, &pb->items[i].ev, &scratch,
                                 offs[i] == (size_t)-1 ? -1 : (long)offs[i], tp);
        if (result)
            goto out;
    }
    for (i = 0; i < n; i++) {
        struct kz_event *ev = &pb->items[i].ev;

        pb->items[i].n_targets =
            kz_subidx_match(api->idx, ev, now, &pb->matches, &pb->nmatch, &pb->capmatch);
        /* Checked as the matches grow, so a refused request never holds more than one
         * event's matches beyond the limit. */
        if (pb->nmatch > (size_t)api->cfg->max_fanout) {
            result = kz_api_reject_fanout(
                req,
                "the request would create more than %d deliveries (--max-fanout); publish "
                "fewer events at once",
                api->cfg->max_fanout);
            goto out;
        }
    }
    /* The match array may have moved while growing: point into it only now. */
    pb->ids = kz_calloc(pb->nmatch ? pb->nmatch : 1, sizeof(*pb->ids));
    pb->active = kz_calloc(pb->nmatch ? pb->nmatch : 1, sizeof(*pb->active));
    pb->leased = kz_calloc(pb->nmatch ? pb->nmatch : 1, sizeof(*pb->leased));
    pb->dids = kz_calloc(pb->nmatch ? pb->nmatch : 1, sizeof(*pb->dids));
    pb->gen = gen;
    for (i = 0, k = 0; i < n; i++) {
        size_t j;

        pb->items[i].webhook_ids = pb->ids + k;
        pb->items[i].target_active = pb->active + k;
        for (j = 0; j < pb->items[i].n_targets; j++, k++) {
            pb->ids[k] = pb->matches[k].webhook_id;
            pb->active[k] = pb->matches[k].active;
        }
    }
    /* Hand-off: deliveries to active, ungated webhooks are inserted leased to this node when its
     * dispatcher has room for them, and given to it after the commit (docs/ARCHITECTURE.md). A
     * duplicate event gets no delivery ids: its part of the reservation goes back. */
    if (api->hooks.reserve && pb->nmatch) {
        bool *eligible = kz_calloc(pb->nmatch, sizeof(*eligible));

        for (k = 0; k < pb->nmatch; k++)
            eligible[k] = pb->matches[k].active && !pb->matches[k].gated;
        pb->reserved =
            api->hooks.reserve(api->hooks.arg, pb->ids, eligible, pb->leased, pb->nmatch);
        kz_free(eligible);
        for (i = 0, k = 0; i < n; i++) {
            pb->items[i].target_leased = pb->reserved ? pb->leased + k : NULL;
            pb->items[i].delivery_ids = pb->reserved ? pb->dids + k : NULL;
            k += pb->items[i].n_targets;
        }
    }
    pb->op.type = KZ_OP_PUBLISH;
    pb->op.u.publish.items = pb->items;
    pb->op.u.publish.n = n;
    pb->op.u.publish.lease_until = now + api->cfg->delivery_timeout_ms + api->cfg->lease_margin_ms;
    pb->op.done = publish_done;
    pb->op.arg = pb;
    *out = pb;
    pb = NULL;
    result = KZ_OK;
out:
    publish_free(pb);
    kz_free(offs);
    json_decref(doc);
    kz_buf_cleanup(&scratch);
    return result;
}

enum kz_err kz_api_publish(struct kz_api *api, struct kz_req *req)
{
    struct publish *pb;
    enum kz_err e = publish_prepare(api, req, &pb);

    if (e)
        return e;
    if (atomic_load(&api->closing)) {
        publish_free(pb);
        return kz_api_reject(req, KZ_ERR_BUSY, "the service is shutting down");
    }
    pb->req = req;
    req->pending = &pb->base;
    atomic_fetch_add(&api->pending, 1);
    e = kz_store_submit(api->st, &pb->op);
    if (e) {
        atomic_fetch_sub(&api->pending, 1);
        req->pending = NULL;
        publish_free(pb);
        if (e == KZ_ERR_BUSY)
            atomic_fetch_add(&api->m->store_busy, 1);
        return kz_api_internal(req, e);
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
    e = publish_prepare(api, &req, &pb);
    if (!e) {
        pthread_mutex_init(&pb->lock, NULL);
        pthread_cond_init(&pb->cond, NULL);
        e = kz_store_submit(api->st, &pb->op);
        if (!e) {
            pthread_mutex_lock(&pb->lock);
            while (!pb->done)
                pthread_cond_wait(&pb->cond, &pb->lock);
            pthread_mutex_unlock(&pb->lock);
            e = publish_answer(pb, &req);
        } else {
            kz_api_internal(&req, e);
        }
        pthread_cond_destroy(&pb->cond);
        pthread_mutex_destroy(&pb->lock);
        publish_free(pb);
    }
    if (e)
        kz_api_error_answer(&req, e);
    *status = req.status;
    kz_buf_append(out, req.out.data, req.out.len);
    kz_req_cleanup(&req);
}
