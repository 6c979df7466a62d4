/* metrics.c — Prometheus text rendering of struct kz_metrics. */
#include "metrics.h"
#include "alloc.h"

#include <errno.h>
#include <time.h>

struct kz_metrics_refresher {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* signalled by stop */
    bool stop;
    kz_metrics_backlog_fn fn;
    void *arg;
    struct kz_metrics *m;
};

/* The refresher thread. The wait uses CLOCK_MONOTONIC so a wall-clock step neither stalls nor
 * hurries it. */
static void *refresher_main(void *p)
{
    struct kz_metrics_refresher *r = p;
    struct kz_metrics *m = r->m;

    pthread_mutex_lock(&r->lock);
    while (!r->stop) {
        int64_t due = 0, sched = 0, inflight = 0, t0, took, interval;
        struct timespec until;
        enum kz_err e;

        pthread_mutex_unlock(&r->lock);
        t0 = kz_mono_us();
        e = r->fn(r->arg, kz_now_ms(), &due, &sched, &inflight);
        took = kz_mono_us() - t0;
        if (!e) {
            atomic_store(&m->backlog_due, (long long)due);
            atomic_store(&m->backlog_scheduled, (long long)sched);
            atomic_store(&m->backlog_inflight, (long long)inflight);
            atomic_store(&m->backlog_at_ms, (long long)kz_now_ms());
        }
        atomic_store(&m->backlog_query_us, (long long)took);
        interval = took / 100; /* 10 x the duration, in ms */
        if (interval < 1000)
            interval = 1000;
        if (interval > 300000)
            interval = 300000;
        atomic_store(&m->backlog_interval_ms, (long long)interval);
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += interval / 1000;
        until.tv_nsec += (interval % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&r->lock);
        while (!r->stop && pthread_cond_timedwait(&r->cond, &r->lock, &until) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

enum kz_err kz_metrics_refresher_start(struct kz_metrics *m, kz_metrics_backlog_fn fn, void *arg)
{
    struct kz_metrics_refresher *r = kz_calloc(1, sizeof(*r));
    pthread_condattr_t ca;

    KZ_ASSERT(!m->refresher);
    r->fn = fn;
    r->arg = arg;
    r->m = m;
    pthread_mutex_init(&r->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&r->thread, NULL, refresher_main, r)) {
        pthread_cond_destroy(&r->cond);
        pthread_mutex_destroy(&r->lock);
        kz_free(r);
        return KZ_ERR_NOMEM;
    }
    m->refresher = r;
    return KZ_OK;
}

void kz_metrics_refresher_stop(struct kz_metrics *m)
{
    struct kz_metrics_refresher *r = m ? m->refresher : NULL;

    if (!r)
        return;
    pthread_mutex_lock(&r->lock);
    r->stop = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    kz_free(r);
    m->refresher = NULL;
}

int64_t kz_metrics_backlog_get(struct kz_metrics *m, int64_t *due, int64_t *scheduled,
                               int64_t *inflight)
{
    int64_t at = atomic_load(&m->backlog_at_ms);

    *due = atomic_load(&m->backlog_due);
    *scheduled = atomic_load(&m->backlog_scheduled);
    *inflight = atomic_load(&m->backlog_inflight);
    return at ? kz_now_ms() - at : -1;
}

const double kz_metrics_lat_bounds[KZ_LAT_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                      0.25,  0.5,    1,     2.5,  5,     10,   30};

void kz_metrics_observe_latency(struct kz_metrics *m, int64_t us)
{
    size_t i;

    for (i = 0; i < KZ_LAT_BUCKETS; i++) {
        if ((double)us / 1e6 <= kz_metrics_lat_bounds[i])
            break;
    }
    atomic_fetch_add(&m->lat_bucket[i], 1);
    atomic_fetch_add(&m->lat_sum_us, us);
    atomic_fetch_add(&m->lat_count, 1);
}

#define LD(x) ((long long)atomic_load(&(x)))

enum kz_err kz_metrics_render(const struct kz_metrics *m, struct kz_buf *out, int64_t due,
                              int64_t scheduled, size_t webhooks, size_t webhooks_inactive)
{
    enum kz_err r = KZ_OK;
    long long cum = 0;
    size_t i;
    int c;

    r |= kz_buf_puts(out,
                     "# HELP kzhook_http_requests_total API requests answered, by status class.\n"
                     "# TYPE kzhook_http_requests_total counter\n");
    for (c = 1; c <= 5; c++)
        r |= kz_buf_printf(out, "kzhook_http_requests_total{code=\"%dxx\"} %lld\n", c,
                           LD(m->http_requests[c]));
    r |= kz_buf_printf(out,
                       "# HELP kzhook_events_accepted_total Events committed by POST /v1/events.\n"
                       "# TYPE kzhook_events_accepted_total counter\n"
                       "kzhook_events_accepted_total %lld\n"
                       "# TYPE kzhook_events_duplicate_total counter\n"
                       "kzhook_events_duplicate_total %lld\n"
                       "# TYPE kzhook_deliveries_created_total counter\n"
                       "kzhook_deliveries_created_total %lld\n"
                       "# HELP kzhook_deliveries_total Delivery attempt outcomes.\n"
                       "# TYPE kzhook_deliveries_total counter\n"
                       "kzhook_deliveries_total{outcome=\"succeeded\"} %lld\n"
                       "kzhook_deliveries_total{outcome=\"failed\"} %lld\n"
                       "kzhook_deliveries_total{outcome=\"dead\"} %lld\n"
                       "kzhook_deliveries_total{outcome=\"skipped\"} %lld\n"
                       "# TYPE kzhook_webhooks_disabled_total counter\n"
                       "kzhook_webhooks_disabled_total %lld\n"
                       "# TYPE kzhook_inflight gauge\n"
                       "kzhook_inflight %lld\n"
                       "# HELP kzhook_backlog Pending deliveries: due now, or scheduled later.\n"
                       "# TYPE kzhook_backlog gauge\n"
                       "kzhook_backlog{state=\"due\"} %lld\n"
                       "kzhook_backlog{state=\"scheduled\"} %lld\n"
                       "# HELP kzhook_backlog_age_seconds Age of the backlog snapshot (refreshed "
                       "off the API threads).\n"
                       "# TYPE kzhook_backlog_age_seconds gauge\n"
                       "kzhook_backlog_age_seconds %.3f\n"
                       "# TYPE kzhook_backlog_query_seconds gauge\n"
                       "kzhook_backlog_query_seconds %.6f\n"
                       "# TYPE kzhook_webhooks gauge\n"
                       "kzhook_webhooks{state=\"active\"} %zu\n"
                       "kzhook_webhooks{state=\"inactive\"} %zu\n"
                       "# TYPE kzhook_store_batches_total counter\n"
                       "kzhook_store_batches_total %lld\n"
                       "# TYPE kzhook_store_busy_total counter\n"
                       "kzhook_store_busy_total %lld\n"
                       "# HELP kzhook_attempt_duration_seconds Delivery attempt latency.\n"
                       "# TYPE kzhook_attempt_duration_seconds histogram\n",
                       LD(m->events_accepted), LD(m->events_duplicate), LD(m->deliveries_created),
                       LD(m->attempts_succeeded), LD(m->attempts_failed), LD(m->deliveries_dead),
                       LD(m->deliveries_skipped), LD(m->webhooks_disabled), LD(m->inflight),
                       (long long)due, (long long)scheduled,
                       LD(m->backlog_at_ms) ? (double)(kz_now_ms() - LD(m->backlog_at_ms)) / 1e3
                                            : 0.0,
                       (double)LD(m->backlog_query_us) / 1e6, webhooks - webhooks_inactive,
                       webhooks_inactive, LD(m->store_batches), LD(m->store_busy));
    for (i = 0; i < KZ_LAT_BUCKETS; i++) {
        cum += LD(m->lat_bucket[i]);
        r |= kz_buf_printf(out, "kzhook_attempt_duration_seconds_bucket{le=\"%g\"} %lld\n",
                           kz_metrics_lat_bounds[i], cum);
    }
    cum += LD(m->lat_bucket[KZ_LAT_BUCKETS]);
    r |= kz_buf_printf(out,
                       "kzhook_attempt_duration_seconds_bucket{le=\"+Inf\"} %lld\n"
                       "kzhook_attempt_duration_seconds_sum %.6f\n"
                       "kzhook_attempt_duration_seconds_count %lld\n",
                       cum, (double)LD(m->lat_sum_us) / 1e6, LD(m->lat_count));
    r |= kz_buf_printf(
        out,
        "# HELP kzhook_takeovers_total Dead nodes whose claimed deliveries this node released.\n"
        "# TYPE kzhook_takeovers_total counter\n"
        "kzhook_takeovers_total %lld\n"
        "# HELP kzhook_takeover_deliveries_total Deliveries released from dead nodes by this "
        "node.\n"
        "# TYPE kzhook_takeover_deliveries_total counter\n"
        "kzhook_takeover_deliveries_total %lld\n"
        "# HELP kzhook_resumed_deliveries_total This node's own unfinished claims taken back at "
        "start.\n"
        "# TYPE kzhook_resumed_deliveries_total counter\n"
        "kzhook_resumed_deliveries_total %lld\n"
        "# HELP kzhook_node_fenced_total Times this node stopped attempts: its heartbeat was too "
        "old.\n"
        "# TYPE kzhook_node_fenced_total counter\n"
        "kzhook_node_fenced_total %lld\n"
        "# HELP kzhook_handoff_total Deliveries a publish leased to this node's dispatcher "
        "(taken: queued without a claim; returned: given back to the store to be claimed).\n"
        "# TYPE kzhook_handoff_total counter\n"
        "kzhook_handoff_total{result=\"taken\"} %lld\n"
        "kzhook_handoff_total{result=\"returned\"} %lld\n",
        LD(m->takeovers), LD(m->takeover_deliveries), LD(m->resumed_deliveries), LD(m->node_fenced),
        LD(m->handoff_taken), LD(m->handoff_returned));
    return r ? KZ_ERR_TOOBIG : KZ_OK;
}
