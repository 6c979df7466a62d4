/* stats.c — this node's statistics counters, their flusher, and the reports built from the store
 * (stats.h). */
#include "stats.h"
#include "alloc.h"
#include "buf.h"
#include "id.h"
#include "log.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MINUTE_MS 60000LL
#define HOUR_MS 3600000LL
#define SLOTS 4         /* minutes kept in memory: the current one and three not yet written */
#define WH_BUCKETS 4096 /* hash chains of the per-webhook counters */
#define WH_IDLE_MS (2 * HOUR_MS) /* a webhook's counters unused that long are dropped */
#define FAILING_MAX 100          /* failing webhooks listed by the report */

/* One webhook's counts of the current hour and what this node saw of it last. */
struct wh {
    struct kz_stats_webhook v; /* v.last_error points at `err` */
    char *err;
    bool dirty;
    int64_t touched; /* epoch ms */
    struct wh *next;
};

struct slot {
    struct kz_stats_minute v;
    bool dirty;
};

struct kz_stats {
    struct kz_store *st;
    char node_id[40];
    pthread_mutex_t mu;
    struct slot slots[SLOTS];
    struct wh *wh[WH_BUCKETS];
    int64_t last_prune;
    /* flusher */
    pthread_t thread;
    bool started, stop;
    pthread_cond_t cond;
    pthread_mutex_t flush_mu; /* one flush at a time */
};

int kz_stats_bucket(int64_t ms)
{
    int b = 0;

    while (b < KZ_STATS_HIST - 1 && ms > kz_stats_bucket_upper(b))
        b++;
    return b;
}

int64_t kz_stats_bucket_upper(int bucket)
{
    return (int64_t)llround(pow(2.0, bucket / 2.0));
}

int64_t kz_stats_quantile(const int64_t *h, double q)
{
    int64_t total = 0, seen = 0, rank;
    int b;

    for (b = 0; b < KZ_STATS_HIST; b++)
        total += h[b];
    if (!total)
        return -1;
    rank = (int64_t)ceil(q * (double)total);
    if (rank < 1)
        rank = 1;
    for (b = 0; b < KZ_STATS_HIST; b++) {
        seen += h[b];
        if (seen >= rank)
            return kz_stats_bucket_upper(b);
    }
    return kz_stats_bucket_upper(KZ_STATS_HIST - 1);
}

struct kz_stats *kz_stats_new(struct kz_store *st)
{
    struct kz_stats *s = kz_calloc(1, sizeof(*s));
    pthread_condattr_t ca;

    s->st = st;
    kz_id_uuid4(s->node_id);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->flush_mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
    return s;
}

/* The slot of the minute of `now`, under s->mu. A slot still unwritten three minutes later (the
 * store was down all that time) is reused: those counts are lost, never mixed. */
static struct slot *slot_for(struct kz_stats *s, int64_t now)
{
    int64_t minute = now - now % MINUTE_MS;
    struct slot *oldest = &s->slots[0];
    int i;

    for (i = 0; i < SLOTS; i++) {
        if (s->slots[i].v.minute == minute)
            return &s->slots[i];
        if (s->slots[i].v.minute < oldest->v.minute)
            oldest = &s->slots[i];
    }
    memset(oldest, 0, sizeof(*oldest));
    oldest->v.minute = minute;
    return oldest;
}

void kz_stats_published(struct kz_stats *s, int64_t n)
{
    struct slot *sl;

    if (!s || n <= 0)
        return;
    pthread_mutex_lock(&s->mu);
    sl = slot_for(s, kz_now_ms());
    sl->v.published += n;
    sl->dirty = true;
    pthread_mutex_unlock(&s->mu);
}

/* The counters of `id`, created when missing, under s->mu. */
static struct wh *wh_for(struct kz_stats *s, const char *id, int64_t now)
{
    uint32_t b = kz_hash_str(id) % WH_BUCKETS;
    int64_t hour = now - now % HOUR_MS;
    struct wh *w;

    for (w = s->wh[b]; w; w = w->next) {
        if (!strcmp(w->v.webhook_id, id))
            break;
    }
    if (!w) {
        w = kz_calloc(1, sizeof(*w));
        snprintf(w->v.webhook_id, sizeof(w->v.webhook_id), "%s", id);
        w->v.hour = hour;
        w->next = s->wh[b];
        s->wh[b] = w;
    }
    if (w->v.hour != hour) {
        /* a new hour: its row starts from zero (the last flush wrote the old one) */
        w->v.hour = hour;
        w->v.succeeded = w->v.failed = w->v.dead = 0;
    }
    w->touched = now;
    return w;
}

void kz_stats_outcome(struct kz_stats *s, const char *webhook_id, enum kz_dstate state,
                      const char *error, int64_t published_at)
{
    int64_t now;
    struct slot *sl;
    struct wh *w;

    if (!s || !webhook_id || strlen(webhook_id) >= sizeof(w->v.webhook_id) ||
        (state != KZ_D_SUCCEEDED && state != KZ_D_PENDING && state != KZ_D_DEAD))
        return;
    now = kz_now_ms();
    pthread_mutex_lock(&s->mu);
    sl = slot_for(s, now);
    w = wh_for(s, webhook_id, now);
    sl->dirty = w->dirty = true;
    if (state == KZ_D_SUCCEEDED) {
        int64_t lat = published_at > 0 && now > published_at ? now - published_at : 0;

        sl->v.succeeded++;
        sl->v.hist[kz_stats_bucket(lat)]++;
        w->v.succeeded++;
        if (now > w->v.last_ok_at)
            w->v.last_ok_at = now;
        w->v.fail_since = 0;
    } else {
        struct kz_buf b;

        if (state == KZ_D_DEAD) {
            sl->v.dead++;
            w->v.dead++;
        } else {
            sl->v.failed++;
            w->v.failed++;
        }
        if (now <= w->v.last_ok_at)
            now = w->v.last_ok_at + 1; /* same millisecond: the failure came last */
        if (!w->v.fail_since)
            w->v.fail_since = now;
        w->v.last_fail_at = now;
        /* stored as a COMPLETE stores an attempt's error: valid UTF-8, at most KZ_ERROR_KEEP */
        kz_buf_init(&b, KZ_ERROR_KEEP + 8);
        if (error && !kz_buf_text(&b, error, strnlen(error, KZ_ERROR_KEEP))) {
            size_t n = b.len < KZ_ERROR_KEEP ? b.len : KZ_ERROR_KEEP;

            while (n && n < b.len && ((unsigned char)b.data[n] & 0xC0) == 0x80)
                n--; /* cut at a character boundary */
            kz_free(w->err);
            w->err = kz_strndup(b.data, n);
        } else {
            kz_free(w->err);
            w->err = NULL;
        }
        kz_buf_cleanup(&b);
    }
    w->v.last_error = w->err;
    pthread_mutex_unlock(&s->mu);
}

static int cmp_wh(const void *a, const void *b)
{
    return strcmp(((const struct kz_stats_webhook *)a)->webhook_id,
                  ((const struct kz_stats_webhook *)b)->webhook_id);
}

enum kz_err kz_stats_flush(struct kz_stats *s)
{
    struct kz_stats_minute mins[SLOTS];
    struct kz_stats_webhook *whs = NULL;
    char **errs = NULL;
    size_t nm = 0, nw = 0, cap = 0, i;
    int64_t now = kz_now_ms(), cur = now - now % MINUTE_MS;
    struct kz_op op;
    enum kz_err e;
    int k;

    pthread_mutex_lock(&s->flush_mu);
    pthread_mutex_lock(&s->mu);
    for (k = 0; k < SLOTS; k++) {
        struct slot *sl = &s->slots[k];

        if (!sl->dirty)
            continue;
        mins[nm++] = sl->v;
        sl->dirty = false;
    }
    for (k = 0; k < WH_BUCKETS; k++) {
        struct wh **pp = &s->wh[k], *w;

        while ((w = *pp)) {
            if (!w->dirty && now - w->touched > WH_IDLE_MS) {
                *pp = w->next;
                kz_free(w->err);
                kz_free(w);
                continue;
            }
            if (w->dirty) {
                if (nw == cap) {
                    cap = cap ? 2 * cap : 64;
                    whs = kz_realloc(whs, cap * sizeof(*whs));
                    errs = kz_realloc(errs, cap * sizeof(*errs));
                }
                whs[nw] = w->v;
                errs[nw] = w->err ? kz_strdup(w->err) : NULL;
                whs[nw].last_error = errs[nw];
                nw++;
                w->dirty = false;
            }
            pp = &w->next;
        }
    }
    pthread_mutex_unlock(&s->mu);
    /* the same order on every node: two nodes' batches lock webhook_state rows in one order */
    if (nw)
        qsort(whs, nw, sizeof(*whs), cmp_wh);
    memset(&op, 0, sizeof(op));
    op.type = KZ_OP_STATS_ADD;
    op.u.stats.node_id = s->node_id;
    op.u.stats.minutes = mins;
    op.u.stats.n_minutes = nm;
    op.u.stats.webhooks = whs;
    op.u.stats.n_webhooks = nw;
    if (cur != s->last_prune)
        op.u.stats.prune_before = cur - KZ_STATS_KEEP_MS;
    e = nm || nw || op.u.stats.prune_before ? kz_store_exec(s->st, &op) : KZ_OK;
    if (e) {
        /* written again at the next flush (rows are set, not added) */
        pthread_mutex_lock(&s->mu);
        for (i = 0; i < nm; i++) {
            for (k = 0; k < SLOTS; k++) {
                if (s->slots[k].v.minute == mins[i].minute)
                    s->slots[k].dirty = true;
            }
        }
        for (i = 0; i < nw; i++) {
            struct wh *w;

            for (w = s->wh[kz_hash_str(whs[i].webhook_id) % WH_BUCKETS]; w; w = w->next) {
                if (!strcmp(w->v.webhook_id, whs[i].webhook_id))
                    w->dirty = true;
            }
        }
        pthread_mutex_unlock(&s->mu);
        kz_log("warn", "statistics not written; retrying at the next flush", "\"error\":\"%s\"",
               kz_err_str(e));
    } else if (op.u.stats.prune_before) {
        s->last_prune = cur;
    }
    for (i = 0; i < nw; i++)
        kz_free(errs[i]);
    kz_free(errs);
    kz_free(whs);
    pthread_mutex_unlock(&s->flush_mu);
    return e;
}

static void *flusher_main(void *arg)
{
    struct kz_stats *s = arg;

    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        struct timespec until;

        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += KZ_STATS_FLUSH_MS / 1000;
        until.tv_nsec += (KZ_STATS_FLUSH_MS % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (!s->stop && pthread_cond_timedwait(&s->cond, &s->mu, &until) != ETIMEDOUT)
            ;
        if (s->stop)
            break;
        pthread_mutex_unlock(&s->mu);
        kz_stats_flush(s);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

enum kz_err kz_stats_start(struct kz_stats *s)
{
    if (pthread_create(&s->thread, NULL, flusher_main, s))
        return KZ_ERR_NOMEM;
    s->started = true;
    return KZ_OK;
}

void kz_stats_free(struct kz_stats *s)
{
    int k;

    if (!s)
        return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    kz_stats_flush(s);
    for (k = 0; k < WH_BUCKETS; k++) {
        while (s->wh[k]) {
            struct wh *w = s->wh[k];

            s->wh[k] = w->next;
            kz_free(w->err);
            kz_free(w);
        }
    }
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->flush_mu);
    pthread_mutex_destroy(&s->mu);
    kz_free(s);
}

/* ==== reports ==== */

struct sum {
    int64_t since;
    int n;
    struct kz_stats_minute *b;
};

static void sum_row(void *arg, const struct kz_stats_minute *m)
{
    struct sum *sm = arg;
    int64_t i = (m->minute - sm->since) / MINUTE_MS;
    int k;

    if (m->minute < sm->since || i >= sm->n)
        return;
    sm->b[i].published += m->published;
    sm->b[i].succeeded += m->succeeded;
    sm->b[i].failed += m->failed;
    sm->b[i].dead += m->dead;
    for (k = 0; k < KZ_STATS_HIST; k++)
        sm->b[i].hist[k] += m->hist[k];
}

static json_t *ms_or_null(int64_t v)
{
    return v > 0 ? json_integer(v) : json_null();
}

static void failing_one(void *arg, const struct kz_failing *f)
{
    json_array_append_new(
        arg,
        json_pack("{s:s, s:s, s:o, s:I, s:o}", "id", f->id, "applicationId", f->app_id,
                  "callbackUrl", f->callback_url ? json_string(f->callback_url) : json_string(""),
                  "failingSince", (json_int_t)f->failing_since, "lastError",
                  f->last_error ? json_string(f->last_error) : json_null()));
}

enum kz_err kz_stats_report(struct kz_store *st, struct kz_metrics *m, int minutes, int64_t now,
                            json_t **out)
{
    struct sum sm;
    json_t *buckets, *failing;
    int64_t due = 0, sched = 0, inflight = 0;
    enum kz_err e;
    int i;

    *out = NULL;
    sm.n = minutes;
    sm.since = now - now % MINUTE_MS - (int64_t)(minutes - 1) * MINUTE_MS;
    sm.b = kz_calloc((size_t)minutes, sizeof(*sm.b));
    e = kz_store_stats_minutes(st, sm.since, sum_row, &sm);
    if (e) {
        kz_free(sm.b);
        return e;
    }
    buckets = json_array();
    for (i = 0; i < minutes; i++) {
        const struct kz_stats_minute *b = &sm.b[i];

        json_array_append_new(
            buckets, json_pack("{s:I, s:I, s:I, s:I, s:I, s:o, s:o}", "t",
                               (json_int_t)(sm.since + i * MINUTE_MS), "published",
                               (json_int_t)b->published, "succeeded", (json_int_t)b->succeeded,
                               "failed", (json_int_t)b->failed, "dead", (json_int_t)b->dead,
                               "p50Ms", ms_or_null(kz_stats_quantile(b->hist, 0.50)), "p99Ms",
                               ms_or_null(kz_stats_quantile(b->hist, 0.99))));
    }
    kz_free(sm.b);
    failing = json_array();
    e = kz_store_failing_list(st, FAILING_MAX, failing_one, failing);
    if (e) {
        json_decref(buckets);
        json_decref(failing);
        return e;
    }
    kz_metrics_backlog_get(m, &due, &sched, &inflight); /* a snapshot: never a count here */
    *out = json_pack("{s:o, s:{s:I, s:I, s:I}, s:o}", "buckets", buckets, "backlog", "due",
                     (json_int_t)due, "scheduled", (json_int_t)sched, "inflight",
                     (json_int_t)inflight, "failingWebhooks", failing);
    return *out ? KZ_OK : KZ_ERR_NOMEM;
}

enum kz_err kz_stats_health(struct kz_store *st, const char *webhook_id, int64_t now, json_t **out)
{
    struct kz_webhook_health h;
    int64_t since = now - now % HOUR_MS - 23 * HOUR_MS, total;
    enum kz_err e = kz_store_webhook_health(st, webhook_id, since, &h);

    *out = NULL;
    if (e)
        return e;
    total = h.succeeded + h.failed + h.dead;
    *out =
        json_pack("{s:I, s:I, s:I, s:o, s:o, s:o, s:o, s:o}", "succeeded", (json_int_t)h.succeeded,
                  "failed", (json_int_t)h.failed, "dead", (json_int_t)h.dead, "successRate",
                  total ? json_real((double)h.succeeded / (double)total) : json_null(),
                  "failingSince", ms_or_null(h.failing_since), "lastSuccessAt",
                  ms_or_null(h.last_ok_at), "lastFailureAt", ms_or_null(h.last_fail_at),
                  "lastError", h.last_error ? json_string(h.last_error) : json_null());
    kz_webhook_health_cleanup(&h);
    return *out ? KZ_OK : KZ_ERR_NOMEM;
}
