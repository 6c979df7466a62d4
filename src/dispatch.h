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
/** Stops claiming, lets in-flight attempts finish for up to `drain_ms`, hands the rest back to
 * the store as pending, joins the thread. NULL-safe. */
void kz_dispatch_stop(struct kz_dispatch *d, int64_t drain_ms);

#endif
