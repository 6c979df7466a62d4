/* dispatch.h — the delivery engine (README.md, "Publishing and delivery"): one thread that
 * owns a libcurl multi handle, claims due deliveries from the store in batches (with a lease),
 * sends them with keep-alive connection reuse under the scheduler's caps (scheduler.h: slots shared
 * fairly between applications, then their endpoints), and hands completions back to the store
 * in batches. The backlog lives in the store; memory is bounded by the claim size.
 *
 * Threads: kz_dispatch_start/stop from main only; kz_dispatch_wake from any thread. */
#ifndef KZ_DISPATCH_H
#define KZ_DISPATCH_H

#include "config.h"
#include "metrics.h"
#include "store.h"

struct kz_dispatch;

/** Starts the dispatcher thread on `st`. Borrows `cfg`, `st` and `m`, which must outlive
 * kz_dispatch_stop(). */
enum kz_err kz_dispatch_start(struct kz_dispatch **out, const struct kz_config *cfg,
                              struct kz_store *st, struct kz_metrics *m);
/** Deliveries may have become due: claim now rather than at the next poll. `d` is a
 * struct kz_dispatch *, typed void * to serve as a hook. */
void kz_dispatch_wake(void *d);
/**
 * Hand-off (docs/ARCHITECTURE.md "Hand-off"): a publish may insert deliveries of its new events
 * already leased to this node and give them to the dispatcher after its commit, so that no CLAIM
 * has to find them. kz_dispatch_reserve() sets leased[i] for the targets i < n with eligible[i]
 * (active, no rateLimit, not ordered) that may be leased now: within the room the scheduler has
 * for more rows, never for an endpoint the next claim would exclude. Returns how many. `d` is a
 * struct kz_dispatch * (NULL: none). Any thread.
 */
size_t kz_dispatch_reserve(void *d, const char *const *webhook_ids, const bool *eligible,
                           bool *leased, size_t n);
/**
 * The leased deliveries of a committed publish: `rows` (kz_calloc'd; ownership of the array and
 * the rows' contents moves here) carry delivery_id, created_at, wh.id, wh.app_id and the event;
 * `reserved` is what kz_dispatch_reserve() gave that publish (n may be less: duplicates, webhooks
 * deleted meanwhile, a failed publish with rows NULL and n 0), `gen` the webhooks generation
 * read before the publish matched its webhooks (rows of a webhook changed since go back to the
 * store, to be claimed). Called on the store's writer thread; never blocks on I/O.
 */
void kz_dispatch_handoff(void *d, struct kz_claimed *rows, size_t n, size_t reserved, int64_t gen);

/** Stops claiming, lets in-flight attempts finish for up to `drain_ms`, hands the rest back to
 * the store as pending, joins the thread. NULL-safe. */
void kz_dispatch_stop(struct kz_dispatch *d, int64_t drain_ms);

#endif
