/* dispatch.c — the delivery engine: claim, send, complete.
 *
 * One thread owns everything here: the CURLM, the easy handles and the scheduler (scheduler.c: the
 * endpoint table, the queues and every cap). Other threads touch only `wake` (an atomic) and the
 * claim/complete hand-offs, which store.c's writer fills in its done() callbacks under `lock`. */
#include "dispatch.h"
#include "stats.h"
#include "alloc.h"
#include "envelope.h"
#include "log.h"
#include "outbound.h"
#include "retry.h"
#include "scheduler.h"
#include "sign.h"

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define RESPONSE_READ_MAX (256 * 1024) /* bytes read from a receiver before we stop listening */
#define IDLE_POLL_MS 1000
#define COMPLETE_RETRY_MS 1000 /* a COMPLETE the store refused is tried again after this */
#define COMPLETE_TRIES 120     /* for an error other than a store fault; then its rows wait */

struct xfer {
    struct kz_dispatch *d;
    CURL *h;
    struct curl_slist *headers;
    struct kz_buf body;
    struct kz_buf resp; /* first KZ_RESPONSE_KEEP bytes of the answer */
    size_t resp_total;
    int64_t retry_after_ms;
    int64_t started_us;
    int64_t started_ms; /* epoch ms: the attempt's `at` in its history */
    int64_t delivery_id;
    int64_t published_at;         /* the event's, for the statistics' latency */
    int attempts;                 /* made before this one */
    bool ordered;                 /* its webhook's next delivery waits for this one's outcome */
    char errbuf[CURL_ERROR_SIZE]; /* libcurl's detailed reason for a failed transfer */
    struct kz_sched_ep *ep;       /* while running */
    struct xfer *next_free;
    struct xfer *prev_active, *next_active; /* list of running transfers */
};

/* One COMPLETE op and the strings it borrows. */
struct cbatch {
    struct kz_op op;
    struct kz_dispatch *d;
    struct kz_attempt *items;
    bool *disabled; /* per item: its dead delivery disabled the webhook (set by the store) */
    size_t n, cap;
    char **strs;
    size_t nstrs, capstrs;
    struct cbatch *next_failed;
    int64_t retry_at;
    int tries;
};

struct kz_dispatch {
    const struct kz_config *cfg;
    struct kz_store *st;
    struct kz_metrics *m;
    CURLM *multi;
    pthread_t thread;
    atomic_bool stop;
    atomic_bool wake;
    /* hand-offs from the store writer, under `lock` */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct kz_op claim; /* at most one claim in flight */
    bool claim_busy, claim_ready;
    int completes_busy;    /* COMPLETE ops submitted, not yet done */
    struct cbatch *failed; /* COMPLETEs the store refused, to submit again */
    /* dispatcher-thread-only state */
    struct kz_sched *sched;
    struct xfer *free_xfers;
    struct xfer *active;  /* running transfers */
    struct cbatch *batch; /* completions being collected */
    int64_t next_poll;
    bool refill; /* an excluded endpoint's queue ran low: claim again right away */
    int64_t drain_deadline;
    /* node liveness (store.h kz_store_node_live): while fenced nothing starts, nothing is
     * claimed, and what was held is dropped; the way back is a RELEASE of our own claims */
    bool fenced, resuming;
    struct kz_op resume;     /* the RELEASE (own) while resuming */
    atomic_bool resume_done; /* set by its done() */
    /* webhook changes (kz_store_webhooks_gen): queued rows are checked against the store
     * whenever the generation moved since the last check */
    int64_t wh_gen_checked;
    int64_t claim_gen; /* the generation when the claim in flight was submitted */
    int64_t verify_retry_at;
    /* hand-off (kz_dispatch_reserve/handoff), under `hlock`: the rows publishers may still
     * lease, those leased and not yet taken in, committed batches waiting, and the endpoints
     * the next claim would exclude (sorted; publishers lease none for them) */
    pthread_mutex_t hlock;
    size_t h_room, h_transit;
    struct hbatch *h_head, *h_tail;
    const char **h_excl;
    size_t h_nexcl;
    /* dispatcher-thread-only: when h_excl was last rebuilt, and the webhooks the taken-in rows
     * are sent with (valid for one webhooks generation) */
    int64_t h_excl_at;
    bool h_back_all; /* a fence ended: give back every batch that waited */
    bool room_wait;  /* a claim waits for room: transfers ending may give it (reap) */
    struct wslot *cache;
    size_t cache_used, cache_slots;
    int64_t cache_gen;
};

/* A committed publish's leased rows, waiting for the dispatcher thread. */
struct hbatch {
    struct hbatch *next;
    struct kz_claimed *rows;
    size_t n;
    int64_t gen;
};

#define CACHE_SLOTS_MIN 256   /* webhooks cached for taken-in rows: the table doubles when */
#define CACHE_SLOTS_MAX 16384 /* half full, up to this many slots, and is emptied beyond */
#define EXCL_EVERY_MS 2       /* the exclusion list publishers see is at most this old */

/* One cached webhook: its row, or that it does not exist. */
struct wslot {
    char id[40]; /* "": free */
    bool absent;
    struct kz_webhook wh;
};

static uint32_t rnd32(void)
{
    uint32_t r = 0;

    if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
        r = (uint32_t)kz_mono_us();
    return r;
}

/* ==== completions ==== */

static void batch_str(struct cbatch *b, const char **dst, const char *s, size_t len)
{
    char *copy;

    if (!s) {
        *dst = NULL;
        return;
    }
    copy = kz_strndup(s, len);
    if (b->nstrs == b->capstrs) {
        b->capstrs = b->capstrs ? b->capstrs * 2 : 64;
        b->strs = kz_realloc(b->strs, b->capstrs * sizeof(*b->strs));
    }
    b->strs[b->nstrs++] = copy;
    *dst = copy;
}

static struct kz_attempt *batch_add(struct kz_dispatch *d)
{
    struct cbatch *b = d->batch;

    if (!b) {
        b = kz_calloc(1, sizeof(*b));
        b->d = d;
        d->batch = b;
    }
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 64;
        b->items = kz_realloc(b->items, b->cap * sizeof(*b->items));
        b->disabled = kz_realloc(b->disabled, b->cap * sizeof(*b->disabled));
    }
    memset(&b->items[b->n], 0, sizeof(b->items[0]));
    return &b->items[b->n++];
}

static void batch_free(struct cbatch *b)
{
    size_t i;

    for (i = 0; i < b->nstrs; i++)
        kz_free(b->strs[i]);
    kz_free(b->strs);
    kz_free(b->items);
    kz_free(b->disabled);
    kz_free(b);
}

/* Writer thread, after the commit of a COMPLETE. */
static void complete_done(struct kz_op *op, void *arg)
{
    struct cbatch *b = arg;
    struct kz_dispatch *d = b->d;
    size_t i;

    if (op->result) {
        /* A store fault (disk full, database restarting): the transaction rolled back, so the
         * same batch is submitted again later (COMPLETE only touches rows still inflight), for
         * as long as the fault lasts: the rows are this live node's claims, which nobody else
         * takes. Another error is tried COMPLETE_TRIES times. When we stop, the rows stay
         * inflight and go back when this node starts again or is taken over: sent again (at
         * least once). */
        bool fault = op->result == KZ_ERR_DB || op->result == KZ_ERR_BUSY;
        bool again = (fault || ++b->tries < COMPLETE_TRIES) && !atomic_load(&d->stop);

        kz_log("error", "could not record delivery outcomes",
               "\"count\":%zu,\"error\":\"%s\",\"retry\":%s", b->n, kz_err_str(op->result),
               again ? "true" : "false");
        if (again) {
            b->retry_at = kz_now_ms() + COMPLETE_RETRY_MS;
            pthread_mutex_lock(&d->lock);
            b->next_failed = d->failed;
            d->failed = b;
            d->completes_busy--;
            pthread_cond_broadcast(&d->cond);
            pthread_mutex_unlock(&d->lock);
            return;
        }
    } else {
        /* A dead delivery disabled its webhook in the same transaction only when nothing to
         * that webhook succeeded since the delivery's first attempt (the store's disable rule),
         * and bumped webhooks_version; the index follows at the next sync, and rows claimed
         * meanwhile see the stored state and are skipped. */
        for (i = 0; i < b->n; i++) {
            if (b->items[i].state != KZ_D_DEAD)
                continue;
            if (b->disabled[i]) {
                atomic_fetch_add(&d->m->webhooks_disabled, 1);
                kz_log("warn", "webhook disabled after its last retry failed",
                       "\"webhookId\":\"%s\",\"deliveryId\":%lld", b->items[i].webhook_id,
                       (long long)b->items[i].delivery_id);
            } else {
                kz_log("warn", "delivery dead; webhook kept active (it succeeded since)",
                       "\"webhookId\":\"%s\",\"deliveryId\":%lld", b->items[i].webhook_id,
                       (long long)b->items[i].delivery_id);
            }
        }
    }
    batch_free(b);
    pthread_mutex_lock(&d->lock);
    d->completes_busy--;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
}

static void submit_batch(struct kz_dispatch *d, struct cbatch *b)
{
    enum kz_err e;

    b->op.type = KZ_OP_COMPLETE;
    b->op.u.complete.items = b->items;
    b->op.u.complete.n = b->n;
    b->op.u.complete.disabled = b->disabled;
    b->op.done = complete_done;
    b->op.arg = b;
    b->op.result = KZ_OK;
    pthread_mutex_lock(&d->lock);
    d->completes_busy++;
    pthread_mutex_unlock(&d->lock);
    e = kz_store_submit(d->st, &b->op);
    if (e) {
        b->op.result = e;
        complete_done(&b->op, b);
    }
}

/* Dispatcher thread: submits again the refused COMPLETEs whose wait is over. */
static void retry_failed(struct kz_dispatch *d, int64_t now)
{
    struct cbatch *list, *b, *keep = NULL;

    pthread_mutex_lock(&d->lock);
    list = d->failed;
    d->failed = NULL;
    pthread_mutex_unlock(&d->lock);
    if (!list)
        return;
    while ((b = list)) {
        list = b->next_failed;
        if (b->retry_at <= now) {
            submit_batch(d, b);
        } else {
            b->next_failed = keep;
            keep = b;
        }
    }
    if (keep) {
        pthread_mutex_lock(&d->lock);
        for (b = keep; b->next_failed; b = b->next_failed)
            ;
        b->next_failed = d->failed;
        d->failed = keep;
        pthread_mutex_unlock(&d->lock);
    }
}

static void flush_completions(struct kz_dispatch *d)
{
    struct cbatch *b = d->batch;

    if (!b)
        return;
    d->batch = NULL;
    submit_batch(d, b);
}

/* ==== transfers ==== */

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * n;

    if (x->resp.len < KZ_RESPONSE_KEEP) {
        size_t keep = KZ_RESPONSE_KEEP - x->resp.len;

        kz_buf_append(&x->resp, p, len < keep ? len : keep);
    }
    x->resp_total += len;
    if (x->resp_total > RESPONSE_READ_MAX)
        return 0; /* enough: stop reading a receiver that never ends */
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * n;

    if (len > 12 && !strncasecmp(p, "Retry-After:", 12)) {
        char v[128];
        size_t vl = len - 12;

        if (vl >= sizeof(v))
            vl = sizeof(v) - 1;
        memcpy(v, p + 12, vl);
        v[vl] = '\0';
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            v[--vl] = '\0';
        x->retry_after_ms = kz_retry_after_parse(v + strspn(v, " \t"), kz_now_ms());
    }
    return len;
}

static void active_link(struct kz_dispatch *d, struct xfer *x)
{
    x->prev_active = NULL;
    x->next_active = d->active;
    if (d->active)
        d->active->prev_active = x;
    d->active = x;
}

static void active_unlink(struct kz_dispatch *d, struct xfer *x)
{
    if (x->prev_active)
        x->prev_active->next_active = x->next_active;
    else
        d->active = x->next_active;
    if (x->next_active)
        x->next_active->prev_active = x->prev_active;
    x->prev_active = x->next_active = NULL;
}

static struct xfer *xfer_get(struct kz_dispatch *d)
{
    struct xfer *x = d->free_xfers;

    if (x) {
        d->free_xfers = x->next_free;
        curl_easy_reset(x->h);
    } else {
        x = kz_calloc(1, sizeof(*x));
        x->d = d;
        x->h = curl_easy_init();
        KZ_ASSERT(x->h);
        kz_buf_init(&x->body, KZ_BODY_MAX * 2);
        kz_buf_init(&x->resp, KZ_RESPONSE_KEEP);
    }
    kz_buf_reset(&x->body);
    kz_buf_reset(&x->resp);
    x->resp_total = 0;
    x->retry_after_ms = -1;
    return x;
}

static void xfer_put(struct kz_dispatch *d, struct xfer *x)
{
    curl_slist_free_all(x->headers);
    x->headers = NULL;
    x->ep = NULL;
    x->next_free = d->free_xfers;
    d->free_xfers = x;
}

static struct curl_slist *add_header(struct curl_slist *l, const char *name, const char *v)
{
    char line[1200];
    struct curl_slist *n;

    if (v)
        snprintf(line, sizeof(line), "%s: %s", name, v);
    else
        snprintf(line, sizeof(line), "%s:", name); /* "Name:" removes a header curl would add */
    n = curl_slist_append(l, line);
    KZ_ASSERT(n);
    return n;
}

/* Appends the webhook's own headers (README.md "Delivery controls"), stored as a JSON object
 * of strings already checked by the API (tokens, printable values, no reserved names). Parsed
 * per attempt: at most 20 small entries, a few microseconds beside a TLS connection. */
static struct curl_slist *add_custom_headers(struct curl_slist *l, const char *headers_json)
{
    json_t *o;
    const char *name;
    json_t *v;

    if (!headers_json)
        return l;
    o = json_loads(headers_json, 0, NULL);
    json_object_foreach(o, name, v)
    {
        char line[KZ_HEADER_NAME_MAX + KZ_HEADER_VALUE_MAX + 4];
        struct curl_slist *n;

        if (!json_is_string(v))
            continue;
        if (json_string_length(v))
            snprintf(line, sizeof(line), "%s: %s", name, json_string_value(v));
        else
            snprintf(line, sizeof(line), "%s;", name); /* "Name;" sends an empty header */
        n = curl_slist_append(l, line);
        KZ_ASSERT(n);
        l = n;
    }
    json_decref(o);
    return l;
}

/* Records the outcome of one attempt of `row`'s delivery, started at epoch ms `at` and lasting
 * `duration_ms` (its entry in the attempt history). */
static void record(struct kz_dispatch *d, int64_t delivery_id, const char *webhook_id,
                   int attempts_before, int64_t at, int64_t duration_ms, int status,
                   const char *error, const struct kz_buf *resp, int64_t retry_after_ms,
                   bool success, int64_t published_at)
{
    struct kz_attempt *a = batch_add(d);
    int64_t delay;

    a->delivery_id = delivery_id;
    a->at = at > 0 ? at : 1;
    a->duration_ms = duration_ms > 0 ? duration_ms : 0;
    snprintf(a->webhook_id, sizeof(a->webhook_id), "%s", webhook_id);
    a->attempts = attempts_before + 1;
    a->status = status;
    batch_str(d->batch, &a->error, error, error ? strlen(error) : 0);
    if (resp && resp->len) {
        batch_str(d->batch, &a->response, resp->data, resp->len);
        a->response_len = resp->len;
    }
    if (success) {
        a->state = KZ_D_SUCCEEDED;
        atomic_fetch_add(&d->m->attempts_succeeded, 1);
        kz_stats_outcome(d->m->stats, webhook_id, a->state, NULL, published_at);
        return;
    }
    delay = kz_retry_honour(d->cfg->retry_schedule, d->cfg->retry_count, (unsigned)a->attempts,
                            rnd32(), (status == 429 || status == 503) ? retry_after_ms : -1);
    if (delay < 0) {
        a->state = KZ_D_DEAD;
        atomic_fetch_add(&d->m->deliveries_dead, 1);
    } else {
        a->state = KZ_D_PENDING;
        a->next_attempt_at = kz_now_ms() + delay;
        atomic_fetch_add(&d->m->attempts_failed, 1);
    }
    kz_stats_outcome(d->m->stats, webhook_id, a->state, error, published_at);
}

static void record_skip(struct kz_dispatch *d, const struct kz_claimed *row, const char *why)
{
    struct kz_attempt *a = batch_add(d);

    a->delivery_id = row->delivery_id;
    snprintf(a->webhook_id, sizeof(a->webhook_id), "%s", row->wh.id);
    a->attempts = row->attempts;
    a->state = KZ_D_SKIPPED;
    batch_str(d->batch, &a->error, why, strlen(why));
    atomic_fetch_add(&d->m->deliveries_skipped, 1);
}

/* Builds and starts the attempt for `row`, whose slot at endpoint `e` kz_sched_next() took: the
 * slot is given back when the transfer ends, or here when it cannot start. Consumes nothing
 * (the caller frees the row). */
static void start(struct kz_dispatch *d, struct kz_sched_ep *e, struct kz_claimed *row)
{
    struct xfer *x = xfer_get(d);
    struct kz_target t;
    struct curl_slist *resolve = NULL;
    char sig[KZ_SIGN_HEADER_SIZE], ts[24];
    int64_t now_ms = kz_now_ms(), now_s = now_ms / 1000;
    /* during a rotation's overlap both secrets sign, the current one first */
    const char *prev = row->wh.prev_expires > now_ms ? row->wh.prev_secret : NULL;

    x->delivery_id = row->delivery_id;
    x->published_at = row->ev.created_at;
    x->attempts = row->attempts;
    x->ordered = row->wh.ordered;
    if (kz_envelope_build(&row->wh, &row->ev, &x->body) ||
        kz_sign_header(row->wh.signing_secret, prev, row->ev.event_id, now_s, x->body.data,
                       x->body.len, sig, sizeof(sig))) {
        record(d, row->delivery_id, row->wh.id, row->attempts, kz_now_ms(), 0, 0,
               "could not build the request", NULL, -1, false, row->ev.created_at);
        xfer_put(d, x);
        kz_sched_done(d->sched, e);
        return;
    }
    memset(&t, 0, sizeof(t)); /* no pinned address: the open-socket guard checks every connect */
    if (kz_outbound_setup(d->cfg, x->h, row->wh.callback_url, &t, &resolve)) {
        record(d, row->delivery_id, row->wh.id, row->attempts, kz_now_ms(), 0, 0,
               "invalid callback URL", NULL, -1, false, row->ev.created_at);
        xfer_put(d, x);
        kz_sched_done(d->sched, e);
        return;
    }
    snprintf(ts, sizeof(ts), "%lld", (long long)now_s);
    x->headers = add_header(NULL, "Content-Type", "application/json");
    x->headers = add_header(x->headers, "Expect", NULL);
    x->headers = add_header(x->headers, "webhook-id", row->ev.event_id);
    x->headers = add_header(x->headers, "webhook-timestamp", ts);
    x->headers = add_header(x->headers, "webhook-signature", sig);
    if (row->wh.callback_token)
        x->headers = add_header(x->headers, "kz-callback-token", row->wh.callback_token);
    if (row->ev.traceparent) /* the publisher's, unchanged on every attempt */
        x->headers = add_header(x->headers, "traceparent", row->ev.traceparent);
    x->headers = add_custom_headers(x->headers, row->wh.headers_json);
    curl_easy_setopt(x->h, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(x->h, CURLOPT_POST, 1L);
    curl_easy_setopt(x->h, CURLOPT_POSTFIELDS, x->body.data);
    curl_easy_setopt(x->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body.len);
    curl_easy_setopt(x->h, CURLOPT_TIMEOUT_MS, (long)d->cfg->delivery_timeout_ms);
    curl_easy_setopt(x->h, CURLOPT_CONNECTTIMEOUT_MS, (long)d->cfg->delivery_timeout_ms);
    curl_easy_setopt(x->h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(x->h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(x->h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(x->h, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(x->h, CURLOPT_PRIVATE, x);
    x->errbuf[0] = '\0';
    curl_easy_setopt(x->h, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(x->h, CURLOPT_TCP_KEEPALIVE, 1L);
    x->ep = e;
    x->started_us = kz_mono_us();
    x->started_ms = kz_now_ms();
    if (!curl_multi_add_handle(d->multi, x->h)) {
        active_link(d, x);
        atomic_fetch_add(&d->m->inflight, 1);
    } else {
        record(d, row->delivery_id, row->wh.id, row->attempts, x->started_ms, 0, 0,
               "could not start the request", NULL, -1, false, row->ev.created_at);
        xfer_put(d, x);
        kz_sched_done(d->sched, e);
    }
}

/* What went wrong, as precisely as libcurl can say ("SSL certificate problem: certificate has
 * expired" rather than the error code's generic text). */
static const char *curl_reason(const struct xfer *x, CURLcode rc)
{
    return x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
}

/* Reads finished transfers and records their outcomes. */
static void reap(struct kz_dispatch *d)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(d->multi, &left))) {
        struct xfer *x = NULL;
        long status = 0;
        CURLcode rc = msg->data.result;
        char err[300] = "";
        int64_t elapsed_us;
        bool ok;

        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
        curl_multi_remove_handle(d->multi, x->h);
        active_unlink(d, x);
        elapsed_us = kz_mono_us() - x->started_us;
        kz_metrics_observe_latency(d->m, elapsed_us);
        /* A 2xx is a success even when we stopped reading an endless answer. */
        ok = status >= 200 && status <= 299 && (rc == CURLE_OK || rc == CURLE_WRITE_ERROR);
        if (!ok) {
            /* A non-2xx whose body we stopped reading (too long) is still that status. */
            if (rc == CURLE_OK || (rc == CURLE_WRITE_ERROR && status > 0))
                snprintf(err, sizeof(err), "HTTP %ld", status);
            else if (rc == CURLE_COULDNT_CONNECT && !d->cfg->allow_private_targets)
                snprintf(err, sizeof(err), "%s (or refused by the SSRF guard)", curl_reason(x, rc));
            else
                snprintf(err, sizeof(err), "%s", curl_reason(x, rc));
        }
        record(d, x->delivery_id, kz_sched_ep_id(x->ep), x->attempts, x->started_ms,
               (elapsed_us + 500) / 1000, (int)status, ok ? NULL : err, &x->resp, x->retry_after_ms,
               ok, x->published_at);
        atomic_fetch_sub(&d->m->inflight, 1);
        if (x->ordered) {
            /* the store hands out its webhook's next delivery once this outcome is recorded:
             * claim right after this COMPLETE (README.md "Delivery controls") */
            d->refill = true;
            d->next_poll = 0;
        }
        kz_sched_done(d->sched, x->ep);
        xfer_put(d, x);
    }
}

/* ==== node liveness ==== */

/* Our heartbeat is too old: other nodes may soon take our claims, so nothing of ours may be
 * attempted from now on. Transfers running are abandoned (their outcome is not recorded: the
 * rows stay inflight, ours) and queued rows are dropped the same way. */
static void fence(struct kz_dispatch *d)
{
    struct kz_claimed row;
    size_t aborted = 0, dropped = 0;

    while (d->active) {
        struct xfer *x = d->active;

        active_unlink(d, x);
        curl_multi_remove_handle(d->multi, x->h);
        atomic_fetch_sub(&d->m->inflight, 1);
        kz_sched_done(d->sched, x->ep);
        xfer_put(d, x);
        aborted++;
    }
    while (kz_sched_pop(d->sched, &row)) {
        kz_webhook_cleanup(&row.wh);
        kz_event_cleanup(&row.ev);
        dropped++;
    }
    d->fenced = true;
    atomic_fetch_add(&d->m->node_fenced, 1);
    kz_log("warn", "node heartbeat too old: delivery attempts stopped until it is written again",
           "\"abortedAttempts\":%zu,\"droppedQueued\":%zu,\"fenceMs\":%d", aborted, dropped,
           KZ_NODE_FENCE_MS);
}

static void resume_done(struct kz_op *op, void *arg)
{
    struct kz_dispatch *d = arg;

    (void)op;
    pthread_mutex_lock(&d->lock);
    atomic_store(&d->resume_done, true);
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    curl_multi_wakeup(d->multi);
}

/* True when this node may start attempts (and claim) now. Fences on a heartbeat too old;
 * after one, once the heartbeat is written again and no claim is in flight, gives our own
 * claims back (RELEASE own: they are due again, for any node) and only then goes on. */
static bool node_ok(struct kz_dispatch *d)
{
    bool live = kz_store_node_live(d->st);

    if (!d->fenced) {
        if (live)
            return true;
        fence(d);
        return false;
    }
    if (d->resuming) {
        if (!atomic_load(&d->resume_done))
            return false;
        d->resuming = false;
        if (d->resume.result) {
            d->next_poll = kz_now_ms() + 500;
            return false;
        }
        kz_log("info", "node heartbeat written again: delivery attempts resume",
               "\"released\":%lld", (long long)d->resume.u.release.released);
        if (!live)
            return false; /* fenced again meanwhile: release again once it comes back */
        d->fenced = false;
        d->h_back_all = true;
        d->next_poll = 0;
        return true;
    }
    if (!live || d->claim_busy || kz_now_ms() < d->next_poll)
        return false;
    memset(&d->resume, 0, sizeof(d->resume));
    d->resume.type = KZ_OP_RELEASE;
    d->resume.u.release.own = true;
    d->resume.u.release.now = kz_now_ms();
    d->resume.done = resume_done;
    d->resume.arg = d;
    atomic_store(&d->resume_done, false);
    if (kz_store_submit(d->st, &d->resume))
        d->next_poll = kz_now_ms() + 100;
    else
        d->resuming = true;
    return false;
}

/* ==== webhook changes ==== */

/* What to do with the queued rows of one webhook. */
enum verdict { V_KEEP, V_SKIP, V_DROP };

struct vslot {
    char id[40]; /* a webhook id; "" : free */
    enum verdict v;
};

/* The webhook generation moved (a webhook was changed here or on another node) since the queue
 * was last checked: every queued row's webhook is read again (one read per webhook with queued
 * rows, only after a change), and the rows of a webhook that is gone are dropped (its
 * deliveries went with it), those of one inactive or expired are recorded as skipped, the rest
 * queued again in their order. So no attempt starts for a webhook deleted or disabled before the
 * generation moved. False when the store could not answer: then nothing may start yet. */
static bool verify_queued(struct kz_dispatch *d)
{
    int64_t gen = kz_store_webhooks_gen(d->st);
    int64_t now = kz_now_ms();
    struct kz_claimed *rows;
    struct vslot *slots;
    size_t n = 0, cap = kz_sched_queued(d->sched), nslots = 16, i;
    size_t skipped = 0, dropped = 0;
    bool ok = true;

    if (gen == d->wh_gen_checked)
        return true;
    if (!cap) {
        d->wh_gen_checked = gen;
        return true;
    }
    if (now < d->verify_retry_at)
        return false;
    rows = kz_calloc(cap, sizeof(*rows));
    while (n < cap && kz_sched_pop(d->sched, &rows[n]))
        n++;
    while (nslots < 2 * n)
        nslots *= 2;
    slots = kz_calloc(nslots, sizeof(*slots));
    for (i = 0; i < n && ok; i++) {
        size_t k = kz_hash_str(rows[i].wh.id) & (nslots - 1);
        struct kz_webhook wh;
        enum kz_err e;

        while (slots[k].id[0] && strcmp(slots[k].id, rows[i].wh.id))
            k = (k + 1) & (nslots - 1);
        if (slots[k].id[0])
            continue;
        memset(&wh, 0, sizeof(wh));
        e = kz_store_webhook_get(d->st, rows[i].wh.id, &wh);
        if (e == KZ_ERR_NOTFOUND) {
            slots[k].v = V_DROP;
        } else if (e) {
            ok = false;
            break;
        } else {
            slots[k].v = wh.active && wh.validity_ms > now ? V_KEEP : V_SKIP;
            kz_webhook_cleanup(&wh);
        }
        memcpy(slots[k].id, rows[i].wh.id, sizeof(slots[k].id));
    }
    for (i = 0; i < n; i++) {
        size_t k = kz_hash_str(rows[i].wh.id) & (nslots - 1);
        enum verdict v = V_KEEP;

        if (ok) {
            while (slots[k].id[0] && strcmp(slots[k].id, rows[i].wh.id))
                k = (k + 1) & (nslots - 1);
            v = slots[k].v;
        }
        if (v == V_SKIP) {
            record_skip(d, &rows[i], rows[i].wh.active ? "webhook disabled" : "webhook inactive");
            skipped++;
        } else if (v == V_DROP) {
            dropped++;
        }
        if (v == V_KEEP) {
            kz_sched_push(d->sched, &rows[i]);
        } else {
            kz_webhook_cleanup(&rows[i].wh);
            kz_event_cleanup(&rows[i].ev);
        }
    }
    kz_free(slots);
    kz_free(rows);
    if (!ok) {
        d->verify_retry_at = now + 100;
        return false;
    }
    d->wh_gen_checked = gen;
    if (skipped || dropped)
        kz_log("info", "queued deliveries of changed webhooks left out",
               "\"skipped\":%zu,\"dropped\":%zu", skipped, dropped);
    return true;
}

/* Starts queued deliveries while the scheduler allows (scheduler.h: round-robin across
 * applications, then their endpoints, within every cap); true when it started any. Nothing
 * starts while this node is fenced, nor before the queue was checked against the latest
 * webhook changes. */
static bool start_queued(struct kz_dispatch *d)
{
    struct kz_claimed row;
    struct kz_sched_ep *e;
    bool started = false;

    if (!node_ok(d) || !verify_queued(d))
        return false;
    kz_sched_tick(d->sched, kz_now_ms());
    while (kz_sched_next(d->sched, &row, &e)) {
        start(d, e, &row);
        kz_webhook_cleanup(&row.wh);
        kz_event_cleanup(&row.ev);
        started = true;
    }
    if (kz_sched_take_refill(d->sched)) {
        /* An endpoint excluded from claims ran low: refill it now. A claim in flight may have
         * been built while it was still excluded, so the request outlives that claim. */
        d->next_poll = 0;
        d->refill = true;
    }
    return started;
}

/* ==== hand-off ==== */

static int cmp_id(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

size_t kz_dispatch_reserve(void *arg, const char *const *webhook_ids, const bool *eligible,
                           bool *leased, size_t n)
{
    struct kz_dispatch *d = arg;
    size_t i, k = 0;

    memset(leased, 0, n * sizeof(*leased));
    if (!d)
        return 0;
    pthread_mutex_lock(&d->hlock);
    for (i = 0; i < n && d->h_room; i++) {
        if (!eligible[i] || (d->h_nexcl && bsearch(&webhook_ids[i], d->h_excl, d->h_nexcl,
                                                   sizeof(*d->h_excl), cmp_id)))
            continue;
        leased[i] = true;
        d->h_room--;
        d->h_transit++;
        k++;
    }
    pthread_mutex_unlock(&d->hlock);
    return k;
}

void kz_dispatch_handoff(void *arg, struct kz_claimed *rows, size_t n, size_t reserved, int64_t gen)
{
    struct kz_dispatch *d = arg;
    struct hbatch *b = NULL;

    if (!d)
        return;
    if (n) {
        b = kz_calloc(1, sizeof(*b));
        b->rows = rows;
        b->n = n;
        b->gen = gen;
    } else {
        kz_free(rows);
    }
    pthread_mutex_lock(&d->hlock);
    d->h_transit -= reserved <= d->h_transit ? reserved : d->h_transit;
    if (b) {
        if (d->h_tail)
            d->h_tail->next = b;
        else
            d->h_head = b;
        d->h_tail = b;
    }
    pthread_mutex_unlock(&d->hlock);
    if (b)
        curl_multi_wakeup(d->multi);
}

static void cache_clear(struct kz_dispatch *d)
{
    size_t i;

    for (i = 0; d->cache && i < d->cache_slots; i++) {
        if (d->cache[i].id[0] && !d->cache[i].absent)
            kz_webhook_cleanup(&d->cache[i].wh);
    }
    if (d->cache)
        memset(d->cache, 0, d->cache_slots * sizeof(*d->cache));
    d->cache_used = 0;
}

/* The slot of `id` in the cache: its entry, or the free slot where it belongs. */
static size_t cache_slot(const struct kz_dispatch *d, const char *id)
{
    size_t mask = d->cache_slots - 1, k = kz_hash_str(id) & mask;

    while (d->cache[k].id[0] && strcmp(d->cache[k].id, id))
        k = (k + 1) & mask;
    return k;
}

/* Doubles the table (entries move, nothing is read again). */
static void cache_grow(struct kz_dispatch *d)
{
    struct wslot *old = d->cache;
    size_t n = d->cache_slots, i;

    d->cache_slots = n * 2;
    d->cache = kz_calloc(d->cache_slots, sizeof(*d->cache));
    for (i = 0; i < n; i++) {
        if (old[i].id[0])
            d->cache[cache_slot(d, old[i].id)] = old[i];
    }
    kz_free(old);
}

/* The webhook `id` as the store has it in generation `gen` (the current one); NULL with *e set
 * when it does not exist (KZ_ERR_NOTFOUND), the store could not answer, or the generation moved
 * while it was read (KZ_ERR_BUSY). One read per webhook and generation. */
static const struct kz_webhook *cache_get(struct kz_dispatch *d, const char *id, int64_t gen,
                                          enum kz_err *e)
{
    size_t k;
    struct kz_webhook wh;

    if (!d->cache) {
        d->cache_slots = CACHE_SLOTS_MIN;
        d->cache = kz_calloc(d->cache_slots, sizeof(*d->cache));
    }
    if (d->cache_gen != gen) {
        cache_clear(d);
        d->cache_gen = gen;
    }
    k = cache_slot(d, id);
    if (d->cache[k].id[0]) {
        *e = d->cache[k].absent ? KZ_ERR_NOTFOUND : KZ_OK;
        return d->cache[k].absent ? NULL : &d->cache[k].wh;
    }
    memset(&wh, 0, sizeof(wh));
    *e = kz_store_webhook_get(d->st, id, &wh);
    if (*e && *e != KZ_ERR_NOTFOUND)
        return NULL;
    if (kz_store_webhooks_gen(d->st) != gen) {
        /* changed while we read: what we read may be newer than the rows' generation */
        if (!*e)
            kz_webhook_cleanup(&wh);
        *e = KZ_ERR_BUSY;
        return NULL;
    }
    if (d->cache_used >= d->cache_slots / 2) {
        if (d->cache_slots < CACHE_SLOTS_MAX)
            cache_grow(d);
        else
            cache_clear(d);
        k = cache_slot(d, id);
    }
    snprintf(d->cache[k].id, sizeof(d->cache[k].id), "%s", id);
    d->cache_used++;
    if (*e) {
        d->cache[k].absent = true;
        return NULL;
    }
    d->cache[k].wh = wh;
    return &d->cache[k].wh;
}

/* Gives a claimed or taken-in row back to the store: pending, due now, no attempt made (a claim, on
 * this or another node, sends it). */
static void give_back(struct kz_dispatch *d, const struct kz_claimed *row)
{
    struct kz_attempt *a = batch_add(d);

    a->delivery_id = row->delivery_id;
    snprintf(a->webhook_id, sizeof(a->webhook_id), "%s", row->wh.id);
    a->attempts = row->attempts;
    a->state = KZ_D_PENDING;
    a->next_attempt_at = kz_now_ms();
}

/* give_back() of a row a publish handed off, counted. */
static void hand_back(struct kz_dispatch *d, const struct kz_claimed *row)
{
    give_back(d, row);
    atomic_fetch_add(&d->m->handoff_returned, 1);
}

/* Takes in the rows of committed publishes: each is queued like a claimed row, with its webhook
 * from the cache, unless that webhook changed since the publish matched it (the row goes back to
 * the store, where a claim reads it with the webhook as the store has it), it is inactive or
 * expired (recorded as skipped), gone (the row went with it), or its endpoint already holds a
 * claim's worth of rows (back to the store: the claim excludes it until it drains). When
 * stopping they go back. While fenced nothing of ours may be recorded (another node may take our
 * claims), so batches wait; the first pass after the fence gives back all that waited (the RELEASE
 * that ended the fence may or may not have covered them: a COMPLETE touches only rows still
 * inflight); stopping while fenced leaves them ours, taken back at the next start. */
static void take_handoffs(struct kz_dispatch *d, bool stopping)
{
    struct hbatch *list, *b;
    int64_t gen = kz_store_webhooks_gen(d->st);
    int64_t now = kz_now_ms();
    bool back = d->h_back_all;

    if (d->fenced && !stopping)
        return;
    d->h_back_all = false;
    pthread_mutex_lock(&d->hlock);
    list = d->h_head;
    d->h_head = d->h_tail = NULL;
    pthread_mutex_unlock(&d->hlock);
    while ((b = list)) {
        size_t i;

        list = b->next;
        for (i = 0; i < b->n; i++) {
            struct kz_claimed *row = &b->rows[i];
            const struct kz_webhook *wh = NULL;
            enum kz_err e = KZ_ERR_BUSY;

            if (!d->fenced && !stopping && !back && b->gen == gen)
                wh = cache_get(d, row->wh.id, gen, &e);
            if (d->fenced || e == KZ_ERR_NOTFOUND) {
                /* fenced: ours until the next start; not found: deleted with its webhook */
            } else if (!wh || kz_sched_ep_queued(d->sched, row->wh.id) >= KZ_SCHED_CLAIM_MAX) {
                hand_back(d, row);
            } else if (!wh->active || wh->validity_ms <= now) {
                row->wh.active = wh->active;
                record_skip(d, row, wh->active ? "webhook expired" : "webhook inactive");
            } else {
                kz_webhook_copy(&row->wh, wh);
                kz_sched_push(d->sched, row); /* takes the row's contents */
                atomic_fetch_add(&d->m->handoff_taken, 1);
                continue;
            }
            kz_webhook_cleanup(&row->wh);
            kz_event_cleanup(&row->ev);
        }
        kz_free(b->rows);
        kz_free(b);
    }
}

/* What publishers may lease now: the rows a claim could take (less those leased and not yet
 * here), never for an endpoint a claim would exclude. Nothing while fenced, resuming or stopping.
 * A claim in flight is not subtracted (the idle poll's claim would stop every hand-off while it
 * runs): its rows and the leased ones together stay within two claims' worth. */
static void handoff_room(struct kz_dispatch *d, bool stopping)
{
    size_t room = 0, n = 0;
    const char **excl = NULL, **old = NULL;
    bool rebuild = false;
    int64_t now = kz_now_ms();

    if (!stopping && !d->fenced && !d->resuming)
        room = kz_sched_claim_room(d->sched);
    if (room && now - d->h_excl_at >= EXCL_EVERY_MS) {
        excl = kz_sched_exclude(d->sched, &n);
        if (n)
            qsort(excl, n, sizeof(*excl), cmp_id);
        d->h_excl_at = now;
        rebuild = true;
    }
    pthread_mutex_lock(&d->hlock);
    d->h_room = room > d->h_transit ? room - d->h_transit : 0;
    if (rebuild) {
        old = d->h_excl;
        d->h_excl = excl;
        d->h_nexcl = n;
    }
    pthread_mutex_unlock(&d->hlock);
    kz_free((void *)old);
}

/* ==== claiming ==== */

static void claim_done(struct kz_op *op, void *arg)
{
    struct kz_dispatch *d = arg;

    (void)op;
    pthread_mutex_lock(&d->lock);
    d->claim_ready = true;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    curl_multi_wakeup(d->multi);
}

static void claim_start(struct kz_dispatch *d)
{
    int64_t now = kz_now_ms();
    size_t room = kz_sched_claim_room(d->sched);
    enum kz_err e;

    /* rows publishers leased and have not handed over yet take room too */
    pthread_mutex_lock(&d->hlock);
    room = room > d->h_transit ? room - d->h_transit : 0;
    pthread_mutex_unlock(&d->hlock);
    if (!room) {
        /* No room (queues full): claim again once transfers have made some (reap), not in a
         * loop that polls nothing and spins the thread meanwhile. */
        d->room_wait = true;
        d->next_poll = now + IDLE_POLL_MS;
        return;
    }
    d->room_wait = false;
    d->refill = false; /* this claim's exclude list is built from the queues as they are now */
    memset(&d->claim, 0, sizeof(d->claim));
    d->claim.type = KZ_OP_CLAIM;
    d->claim.u.claim.now = now;
    d->claim.u.claim.lease_until = now + d->cfg->delivery_timeout_ms + d->cfg->lease_margin_ms;
    d->claim.u.claim.limit = room;
    /* Endpoints with a full queue, and those of applications with work enough for their share
     * of the slots: claiming more for them would only hold rows in memory while others wait.
     * The list is a copy: the claim runs on the writer thread while this one changes. */
    d->claim.u.claim.exclude = kz_sched_exclude(d->sched, &d->claim.u.claim.n_exclude);
    d->claim.done = claim_done;
    d->claim.arg = d;
    d->claim_gen = kz_store_webhooks_gen(d->st);
    d->claim_busy = true;
    d->claim_ready = false;
    e = kz_store_submit(d->st, &d->claim);
    if (e) {
        kz_free((void *)d->claim.u.claim.exclude);
        d->claim_busy = false;
        d->next_poll = now + 100;
    }
}

/* Takes the claimed rows: skip those of inactive or expired webhooks, queue the rest. */
static void claim_finish(struct kz_dispatch *d)
{
    struct kz_op *op = &d->claim;
    size_t i, n = op->u.claim.n_out;
    int64_t now = kz_now_ms();

    kz_free((void *)op->u.claim.exclude);
    op->u.claim.exclude = NULL;
    d->claim_busy = false;
    if (getenv("KZ_DISPATCH_DEBUG"))
        kz_log("debug", "claimed", "\"rows\":%zu,\"limit\":%zu,\"inflight\":%d,\"queued\":%zu", n,
               op->u.claim.limit, kz_sched_inflight(d->sched), kz_sched_queued(d->sched));
    if (op->result) {
        kz_log("error", "claim failed", "\"error\":\"%s\"", kz_err_str(op->result));
        d->next_poll = now + 500;
        kz_claim_cleanup(op);
        return;
    }
    if (d->fenced) {
        /* Claimed while we could still claim, returned after we were fenced: the rows stay
         * ours (inflight) and the RELEASE that ends the fence gives them back. */
        kz_claim_cleanup(op);
        return;
    }
    /* A webhook changed while the claim ran: its rows may be of a webhook deleted or disabled
     * since, so the queue is checked again before anything starts. */
    if (kz_store_webhooks_gen(d->st) != d->claim_gen)
        d->wh_gen_checked = INT64_MIN;
    for (i = 0; i < n; i++) {
        struct kz_claimed *row = &op->u.claim.out[i];

        if (!row->wh.active || row->wh.validity_ms <= now) {
            record_skip(d, row, row->wh.active ? "webhook expired" : "webhook inactive");
            if (row->wh.ordered)
                d->refill = true; /* its next delivery follows once the skip is recorded */
            continue;
        }
        kz_sched_push(d->sched, row); /* takes the row's contents */
    }
    if (n == op->u.claim.limit || d->refill) {
        d->next_poll = 0; /* a full batch (there is probably more), or a queue asked for more */
    } else if (op->u.claim.n_exclude || op->u.claim.held) {
        /* Rows due now may all belong to excluded endpoints: next_due would say "now" forever.
         * Their queues ask for a claim when they drain; new work arrives with a wake. What is
         * left is retries of other endpoints falling due, so after an empty claim (which may
         * have walked a large backlog of excluded rows: ~0.4 s at 1M) wait longer. */
        d->next_poll = now + (n ? 200 : IDLE_POLL_MS);
        /* Gated webhooks (rateLimit, ordered) held rows back: due ones too, so next_due would
         * say "now". Claim again when the first of their buckets holds an attempt; an ordered
         * webhook's next delivery comes with the outcome of the one in flight (reap). */
        if (op->u.claim.held_until > 0 && op->u.claim.held_until < d->next_poll)
            d->next_poll = op->u.claim.held_until > now ? op->u.claim.held_until : now + 10;
    } else {
        int64_t due = -1;

        d->next_poll = now + IDLE_POLL_MS;
        if (!kz_store_next_due(d->st, &due) && due >= 0 && due < d->next_poll)
            d->next_poll = due > now ? due : now + 10;
    }
    kz_claim_cleanup(op);
}

/* Hands every queued (claimed, unsent) delivery back to the store as due now. */
static void hand_back_queued(struct kz_dispatch *d)
{
    struct kz_claimed row;

    while (kz_sched_pop(d->sched, &row)) {
        give_back(d, &row);
        kz_webhook_cleanup(&row.wh);
        kz_event_cleanup(&row.ev);
    }
}

static void *run(void *arg)
{
    struct kz_dispatch *d = arg;
    int running = 0;

    for (;;) {
        bool ready;
        int64_t now = kz_now_ms();
        long timeout;
        bool stopping = atomic_load(&d->stop);

        pthread_mutex_lock(&d->lock);
        ready = d->claim_ready;
        d->claim_ready = false;
        pthread_mutex_unlock(&d->lock);
        if (ready)
            claim_finish(d);
        take_handoffs(d, stopping);
        if (stopping) {
            hand_back_queued(d);
            if (!kz_sched_inflight(d->sched) || now >= d->drain_deadline)
                break;
        } else {
            start_queued(d);
            /* A wake during a claim stays pending: that claim may have read the store before
             * the rows that caused the wake were committed. */
            if (!d->claim_busy && atomic_exchange(&d->wake, false))
                d->next_poll = 0;
            if (!d->claim_busy && !d->fenced && now >= d->next_poll)
                claim_start(d);
        }
        curl_multi_perform(d->multi, &running);
        reap(d);
        /* Slots freed by finished transfers go to queued work before we sleep; transfers that
         * finish meanwhile are reaped too, so nothing waits for the next poll. */
        while (!stopping && start_queued(d)) {
            curl_multi_perform(d->multi, &running);
            reap(d);
        }
        if (d->room_wait && !d->claim_busy && kz_sched_claim_room(d->sched)) {
            d->room_wait = false;
            d->next_poll = 0;
        }
        handoff_room(d, stopping);
        flush_completions(d);
        if (!stopping)
            retry_failed(d, now);
        if (stopping || (d->fenced && !d->resuming))
            timeout = 50; /* a fence ends as soon as the heartbeat is back */
        else if (d->claim_busy)
            timeout = 1000;
        else
            timeout = d->next_poll > now ? (long)(d->next_poll - now) : 0;
        if (timeout > IDLE_POLL_MS)
            timeout = IDLE_POLL_MS;
        if (!stopping && timeout) {
            /* a paced endpoint's next start (rateLimit) */
            int64_t paced = kz_sched_next_ready(d->sched);

            if (paced >= 0 && paced - now < timeout)
                timeout = paced > now ? (long)(paced - now) : 1;
        }
        if (timeout)
            curl_multi_poll(d->multi, NULL, 0, (int)timeout, NULL);
    }
    return NULL;
}

void kz_dispatch_wake(void *arg)
{
    struct kz_dispatch *d = arg;

    if (!d)
        return;
    atomic_store(&d->wake, true);
    curl_multi_wakeup(d->multi);
}

enum kz_err kz_dispatch_start(struct kz_dispatch **out, const struct kz_config *cfg,
                              struct kz_store *st, struct kz_metrics *m)
{
    struct kz_dispatch *d = kz_calloc(1, sizeof(*d));

    d->cfg = cfg;
    d->st = st;
    d->m = m;
    d->multi = curl_multi_init();
    if (!d->multi) {
        kz_free(d);
        return KZ_ERR_NOMEM;
    }
    d->sched = kz_sched_new(cfg->per_endpoint_concurrency);
    curl_multi_setopt(d->multi, CURLMOPT_MAXCONNECTS, (long)KZ_SCHED_SOFT);
    curl_multi_setopt(d->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->cond, NULL);
    pthread_mutex_init(&d->hlock, NULL);
    if (pthread_create(&d->thread, NULL, run, d)) {
        pthread_mutex_destroy(&d->hlock);
        kz_sched_free(d->sched);
        curl_multi_cleanup(d->multi);
        kz_free(d);
        return KZ_ERR_NOMEM;
    }
    *out = d;
    return KZ_OK;
}

void kz_dispatch_stop(struct kz_dispatch *d, int64_t drain_ms)
{
    if (!d)
        return;
    d->drain_deadline = kz_now_ms() + drain_ms;
    atomic_store(&d->stop, true);
    curl_multi_wakeup(d->multi);
    pthread_join(d->thread, NULL);
    /* The thread is gone: finish its hand-offs here. A claim still in the writer's queue is
     * waited for, and what it leased goes straight back. */
    pthread_mutex_lock(&d->lock);
    while ((d->claim_busy && !d->claim_ready) || (d->resuming && !atomic_load(&d->resume_done)))
        pthread_cond_wait(&d->cond, &d->lock);
    pthread_mutex_unlock(&d->lock);
    if (d->claim_busy)
        claim_finish(d);
    take_handoffs(d, true);
    hand_back_queued(d);
    /* Transfers still running after the drain time are abandoned and handed back unchanged. */
    while (d->active) {
        struct xfer *x = d->active;
        struct kz_attempt *a = batch_add(d);

        active_unlink(d, x);
        curl_multi_remove_handle(d->multi, x->h);
        a->delivery_id = x->delivery_id;
        snprintf(a->webhook_id, sizeof(a->webhook_id), "%s", kz_sched_ep_id(x->ep));
        a->attempts = x->attempts;
        a->state = KZ_D_PENDING;
        a->next_attempt_at = kz_now_ms();
        atomic_fetch_sub(&d->m->inflight, 1);
        kz_sched_done(d->sched, x->ep);
        xfer_put(d, x);
    }
    flush_completions(d);
    pthread_mutex_lock(&d->lock);
    while (d->completes_busy)
        pthread_cond_wait(&d->cond, &d->lock);
    pthread_mutex_unlock(&d->lock);
    /* Outcomes the store still refuses: their rows stay inflight until the lease expires. */
    while (d->failed) {
        struct cbatch *b = d->failed;

        d->failed = b->next_failed;
        kz_log("error", "delivery outcomes not recorded at shutdown; sent again after restart",
               "\"count\":%zu", b->n);
        batch_free(b);
    }
    kz_sched_free(d->sched);
    while (d->free_xfers) {
        struct xfer *x = d->free_xfers;

        d->free_xfers = x->next_free;
        curl_easy_cleanup(x->h);
        kz_buf_cleanup(&x->body);
        kz_buf_cleanup(&x->resp);
        kz_free(x);
    }
    curl_multi_cleanup(d->multi);
    cache_clear(d);
    kz_free(d->cache);
    kz_free((void *)d->h_excl);
    pthread_mutex_destroy(&d->hlock);
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->lock);
    kz_free(d);
}
