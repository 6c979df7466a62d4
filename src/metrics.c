/* metrics.c — Prometheus text rendering of struct kz_metrics. */
#include "metrics.h"

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
                       (long long)due, (long long)scheduled, webhooks - webhooks_inactive,
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
    return r ? KZ_ERR_TOOBIG : KZ_OK;
}
