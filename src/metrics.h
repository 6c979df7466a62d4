/* metrics.h — process counters for GET /metrics (Prometheus text). All counters are atomics:
 * any thread may bump them without a lock (DESIGN "Hot-path rules"). */
#ifndef KZ_METRICS_H
#define KZ_METRICS_H

#include "buf.h"

#include <stdatomic.h>

#define KZ_LAT_BUCKETS 14

struct kz_metrics {
    atomic_llong http_requests[6]; /* by status class: [1]=1xx .. [5]=5xx */
    atomic_llong events_accepted;  /* new events committed */
    atomic_llong events_duplicate; /* republished event ids */
    atomic_llong deliveries_created;
    atomic_llong attempts_succeeded;
    atomic_llong attempts_failed; /* failed attempts that will be retried */
    atomic_llong deliveries_dead;
    atomic_llong deliveries_skipped;
    atomic_llong webhooks_disabled; /* disabled by dead-lettering since start */
    atomic_llong inflight;
    atomic_llong lat_bucket[KZ_LAT_BUCKETS + 1]; /* attempt latency histogram; last = +Inf */
    atomic_llong lat_sum_us;
    atomic_llong lat_count;
    atomic_llong store_batches;
    atomic_llong store_busy; /* publishes refused with 503 */
};

/** Upper bounds (seconds) of the latency buckets. */
extern const double kz_metrics_lat_bounds[KZ_LAT_BUCKETS];

/** Records one attempt's latency. */
void kz_metrics_observe_latency(struct kz_metrics *m, int64_t us);
/** Appends the Prometheus text of every counter, plus the gauges given by the caller. */
enum kz_err kz_metrics_render(const struct kz_metrics *m, struct kz_buf *out, int64_t due,
                              int64_t scheduled, size_t webhooks, size_t webhooks_inactive);

#endif
