/* metrics.h — process counters for GET /metrics (Prometheus text). All counters are atomics:
 * any thread may bump them without a lock (DESIGN "Hot-path rules"). */
#ifndef KZ_METRICS_H
#define KZ_METRICS_H

#include "buf.h"

#include <pthread.h>
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
    atomic_llong webhooks_disabled;   /* disabled by dead-lettering since start */
    atomic_llong takeovers;           /* dead nodes whose claims this node released */
    atomic_llong takeover_deliveries; /* deliveries those takeovers released */
    atomic_llong resumed_deliveries;  /* this node's own claims taken back at start */
    atomic_llong node_fenced;         /* times attempts stopped: own heartbeat too old */
    atomic_llong handoff_taken;       /* leased by a publish, queued by the dispatcher */
    atomic_llong handoff_returned;    /* leased by a publish, given back to be claimed */
    atomic_llong inflight;
    atomic_llong lat_bucket[KZ_LAT_BUCKETS + 1]; /* attempt latency histogram; last = +Inf */
    atomic_llong lat_sum_us;
    atomic_llong lat_count;
    atomic_llong store_batches;
    atomic_llong store_busy; /* publishes refused with 503 */
    /* The backlog snapshot the refresher keeps (kz_metrics_backlog_get). */
    atomic_llong backlog_due, backlog_scheduled, backlog_inflight;
    atomic_llong backlog_at_ms;             /* epoch ms of the snapshot; 0: none yet */
    atomic_llong backlog_query_us;          /* duration of the last backlog query */
    atomic_llong backlog_interval_ms;       /* current refresh interval */
    struct kz_metrics_refresher *refresher; /* owned by kz_metrics_refresher_start/stop */
    struct kz_stats *stats;                 /* per-minute statistics (stats.h); NULL: not counted */
};

/** Counts the backlog (as kz_store_backlog): `now` in epoch ms. */
typedef enum kz_err (*kz_metrics_backlog_fn)(void *arg, int64_t now, int64_t *due,
                                             int64_t *scheduled, int64_t *inflight);

/** Upper bounds (seconds) of the latency buckets. */
extern const double kz_metrics_lat_bounds[KZ_LAT_BUCKETS];

/** Records one attempt's latency. */
void kz_metrics_observe_latency(struct kz_metrics *m, int64_t us);
/**
 * Starts the refresher thread: it calls `fn(arg, …)` at once, then every
 * max(1 s, 10 x the last call's duration), and stores the result for kz_metrics_backlog_get.
 * The backlog counts are linear in the deliveries table (0.37 s at 850k rows on SQLite), so
 * they are never computed on an API thread: a /metrics scrape costs the same at 10 rows and
 * at 10M, and however many scrapers loop on it, at most one count runs at a time and it takes
 * at most a tenth of one core. Main thread only. KZ_ERR_NOMEM when the thread cannot start.
 */
enum kz_err kz_metrics_refresher_start(struct kz_metrics *m, kz_metrics_backlog_fn fn, void *arg);
/** Stops and joins the refresher (waits for a count in progress). NULL-safe, idempotent. */
void kz_metrics_refresher_stop(struct kz_metrics *m);
/**
 * The last backlog snapshot: never touches the store, any thread. Returns its age in ms
 * (-1 and zeros before the first count finished).
 */
int64_t kz_metrics_backlog_get(struct kz_metrics *m, int64_t *due, int64_t *scheduled,
                               int64_t *inflight);

/** Appends the Prometheus text of every counter, plus the gauges given by the caller. */
enum kz_err kz_metrics_render(const struct kz_metrics *m, struct kz_buf *out, int64_t due,
                              int64_t scheduled, size_t webhooks, size_t webhooks_inactive);

#endif
