/* scheduler.h — which claimed delivery to send next: the dispatcher's transfer-slot scheduler.
 *
 * Claimed rows wait here in one queue per endpoint (webhook); endpoints are grouped by
 * application. Transfer slots are shared fairly between applications first, then between the
 * endpoints of each application (README.md, "Fairness"):
 *  - round-robin across applications with startable work, and within one application
 *    round-robin across its endpoints with queued work, so no endpoint is starved;
 *  - an endpoint holds at most `per_endpoint` transfers at once;
 *  - all endpoints together hold at most KZ_SCHED_HARD transfers; past KZ_SCHED_SOFT a transfer
 *    starts only for an endpoint with nothing in flight or an application below its share of
 *    the soft cap (so many slow endpoints cannot starve an idle fast one);
 *  - an application holds at most kz_sched_app_limit() transfers: its fair share of the hard
 *    cap among the applications with work (in flight or queued), never less than
 *    KZ_SCHED_APP_FLOOR, and never more than KZ_SCHED_HARD - KZ_SCHED_RESERVE, so slots always
 *    remain for an application that has none yet.
 * The claim side follows the same rules: kz_sched_exclude() lists the endpoints that must get
 * no more rows (queue full, or their application has work enough for its share) and
 * kz_sched_claim_room() how many rows the next claim may take.
 *
 * Pure: no I/O, no threads; the clock is what the caller last passed to kz_sched_tick(). The
 * dispatcher thread alone owns a struct kz_sched. */
#ifndef KZ_SCHED_H
#define KZ_SCHED_H

#include "store.h"

#define KZ_SCHED_SOFT 512      /* transfers at once before only idle endpoints may start */
#define KZ_SCHED_HARD 2048     /* transfers at once, all endpoints (bounds sockets) */
#define KZ_SCHED_RESERVE 256   /* slots one application alone can never take */
#define KZ_SCHED_APP_FLOOR 64  /* an application's limit is never below this */
#define KZ_SCHED_HEADROOM 32   /* rows claimed past the soft cap, for idle endpoints */
#define KZ_SCHED_CLAIM_MAX 256 /* rows per claim */
#define KZ_SCHED_PARK_MAX 1024 /* rows held for applications at their limit, at most */

struct kz_sched;
/** One endpoint (webhook) as the scheduler sees it; valid while it has a transfer in flight. */
struct kz_sched_ep;

/** A new, empty scheduler; each endpoint holds at most `per_endpoint` (>= 1) transfers. */
struct kz_sched *kz_sched_new(int per_endpoint);
/** Frees the scheduler and every row still queued. Endpoints with transfers in flight must have
 * been given back with kz_sched_done() first (a programmer error otherwise). NULL-safe. */
void kz_sched_free(struct kz_sched *s);

/** Queues a claimed row behind its endpoint (row->wh.id) and application (row->wh.app_id).
 * Takes ownership of the row's contents: `*row` is zeroed. */
void kz_sched_push(struct kz_sched *s, struct kz_claimed *row);

/**
 * Picks the next row to send under the rules above and counts one transfer in flight for its
 * endpoint and application. On true, `*out` receives the row (the caller owns its contents:
 * kz_webhook_cleanup and kz_event_cleanup) and `*ep` the endpoint to give to kz_sched_done()
 * when that transfer ends (or fails to start). False when nothing may start now.
 */
bool kz_sched_next(struct kz_sched *s, struct kz_claimed *out, struct kz_sched_ep **ep);

/** A transfer started by kz_sched_next() for `ep` ended: its slot is free again. `ep` may be
 * freed by this call. */
void kz_sched_done(struct kz_sched *s, struct kz_sched_ep *ep);

/** The webhook id of `ep` (valid as long as `ep`). */
const char *kz_sched_ep_id(const struct kz_sched_ep *ep);

/** Takes any queued row out (for handing rows back to the store); false when none is left.
 * Ownership of the contents moves to `*out`, as for kz_sched_next(). */
bool kz_sched_pop(struct kz_sched *s, struct kz_claimed *out);

/**
 * The webhook ids the next claim must exclude: endpoints with a full queue (kz_sched_queue_target
 * rows), every known endpoint of an application whose transfers in flight plus queued rows
 * reach its limit, paced endpoints (rateLimit) with rows still queued, and ordered endpoints with
 * a row queued or in flight. One allocation (pointers, then the strings) the caller frees with
 * kz_free; NULL when `*n` is 0. The strings are copies, so the list outlives changes to the
 * scheduler.
 */
const char **kz_sched_exclude(const struct kz_sched *s, size_t *n);

/**
 * How many rows the next claim may take: the free slots below the soft cap (at least
 * KZ_SCHED_HEADROOM while below the hard cap, at most KZ_SCHED_CLAIM_MAX), less the rows already
 * queued that could start. Rows queued for applications at their limit or for paced endpoints
 * (parked) do not count, up to KZ_SCHED_PARK_MAX of them, so they cannot stop other applications'
 * rows from being claimed. 0 at the hard cap.
 */
size_t kz_sched_claim_room(const struct kz_sched *s);

/** Rows queued for endpoint (webhook) `id`; 0 when unknown. */
size_t kz_sched_ep_queued(const struct kz_sched *s, const char *id);

/** Rows an endpoint may hold queued: enough to keep its slots busy between claims, few enough
 * that a slow endpoint holds little in memory. */
size_t kz_sched_queue_target(const struct kz_sched *s);

/** Sets the scheduler's clock (epoch ms): call before kz_sched_next(). An endpoint whose webhook
 * has a rateLimit (README.md "Delivery controls") starts at most that many transfers per second
 * (a local bucket of that capacity and refill rate), so over any T seconds at most rateLimit *
 * (T + 1); while over its rate it is passed over and the others are served. */
void kz_sched_tick(struct kz_sched *s, int64_t now_ms);
/** The earliest epoch ms at which a paced endpoint with queued rows and a free slot may start
 * again (the clock of the last tick when one may start now); -1 when none waits for its rate. */
int64_t kz_sched_next_ready(const struct kz_sched *s);

/** True (once) when an endpoint that was excluded from claims has drained to half its queue
 * target since the last call: the caller should claim again soon. */
bool kz_sched_take_refill(struct kz_sched *s);

/** The most transfers application `app_id` may hold now (see above). */
int kz_sched_app_limit(const struct kz_sched *s, const char *app_id);

/** Transfers in flight, all endpoints. */
int kz_sched_inflight(const struct kz_sched *s);
/** Transfers in flight for application `app_id` (0 when unknown). */
int kz_sched_app_inflight(const struct kz_sched *s, const char *app_id);
/** Rows queued, all endpoints. */
size_t kz_sched_queued(const struct kz_sched *s);

#endif
