/* stats.h — operator statistics (README "Console and statistics", docs/openapi.json
 * /admin/v1/stats): this node counts publishes and delivery outcomes in memory, per minute and per
 * webhook, and writes its counts to the store every few seconds (KZ_OP_STATS_ADD: one row per node
 * and minute, so nodes never contend). The report sums every node's rows: it never reads the
 * deliveries table, so it costs the same at 10 deliveries and at 10 million.
 *
 * Threads: kz_stats_published/kz_stats_outcome from any thread (one short mutex); the flusher is
 * its own thread; kz_stats_report and kz_stats_health from any thread (store reads). */
#ifndef KZ_STATS_H
#define KZ_STATS_H

#include "metrics.h"
#include "model.h"
#include "store.h"

#include <jansson.h>

struct kz_stats;

/** Milliseconds between two writes of this node's counts. */
#define KZ_STATS_FLUSH_MS 2000
/** How long the statistics rows are kept. */
#define KZ_STATS_KEEP_MS (24LL * 3600 * 1000)

/** A new counter over `st` (borrowed), with a fresh node id. */
struct kz_stats *kz_stats_new(struct kz_store *st);
/** Starts the flusher thread. KZ_ERR_NOMEM when it cannot start. */
enum kz_err kz_stats_start(struct kz_stats *s);
/** Stops the flusher, writes what is left (the store must still be open) and frees. NULL-safe. */
void kz_stats_free(struct kz_stats *s);

/** `n` new events were accepted. NULL-safe. */
void kz_stats_published(struct kz_stats *s, int64_t n);
/** One attempt of a delivery to `webhook_id` ended: SUCCEEDED (latency from `published_at`, the
 * event's epoch ms), PENDING (failed, will retry) or DEAD; `error` is its error text (borrowed).
 * Other states are not counted. NULL-safe. */
void kz_stats_outcome(struct kz_stats *s, const char *webhook_id, enum kz_dstate state,
                      const char *error, int64_t published_at);
/** Writes this node's counts now and waits for the commit (tests, shutdown). */
enum kz_err kz_stats_flush(struct kz_stats *s);

/** Histogram bucket of a latency in ms, and a bucket's upper bound in ms. */
int kz_stats_bucket(int64_t ms);
int64_t kz_stats_bucket_upper(int bucket);
/** The value at quantile q (0..1] of histogram `h`, as its bucket's upper bound; -1 when empty. */
int64_t kz_stats_quantile(const int64_t *h, double q);

/** The body of GET /admin/v1/stats for the last `minutes` minutes (1..1440) at `now`. */
enum kz_err kz_stats_report(struct kz_store *st, struct kz_metrics *m, int minutes, int64_t now,
                            json_t **out);
/** A webhook's health object (docs/openapi.json WebhookHealth): attempts of the last 24 h and
 * its failing state. */
enum kz_err kz_stats_health(struct kz_store *st, const char *webhook_id, int64_t now, json_t **out);

#endif
